//! The daemon over real TLS, with certificates the `openssl` CLI makes for each test: implicit
//! TLS and STLS (RFC 2595) driven by `openssl s_client`, Python's `poplib`/`ssl` and `curl`,
//! STARTTLS command injection, garbage handshakes, protocol versions, SIGHUP reloads of the
//! certificate, key formats and startup errors. Everything runs on loopback.
//!
//! Runs under both TLS backends:
//! `cargo test --test tls` (rustls) and
//! `cargo test --no-default-features --features native-tls --test tls` (the system OpenSSL).
//!
//! The clients must be installed (`apt-get install -y openssl python3 curl procps`); a missing
//! one fails the test rather than skipping it.
//!
//! Not tested here: the refusal of USER/PASS on a plaintext connection from another host,
//! which needs a non-loopback peer (the session unit tests cover it).

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{
    BIN, Client, Server, assert_bytes, crlf, deliver, make_rsa_cert, messages_on_disk, package_of,
    text_of,
};

/// Longest any client process may run before the test kills it and fails.
const CLIENT_DEADLINE: Duration = Duration::from_secs(15);

const USERS: &str = "alice:{PLAIN}secret::::::\n";

/// A one-line message for the short sessions; STAT says `+OK 1 17`.
const SHORT: &[u8] = b"Subject: x\n\nx\n";

// ---------------------------------------------------------------------------------------
// Client processes, bounded
// ---------------------------------------------------------------------------------------

/// A client process whose standard input we write and whose output we collect as it comes.
/// Killed when dropped.
struct Proc {
    child: Child,
    what: String,
    stdin: Option<ChildStdin>,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

impl Proc {
    fn spawn(cmd: &mut Command, what: &str) -> Proc {
        let program = cmd.get_program().to_string_lossy().into_owned();
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "{what}: cannot run {program} ({e}): apt-get install -y {}",
                    package_of(&program)
                )
            });
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        for (mut pipe, sink) in [
            (Box::new(out) as Box<dyn Read + Send>, stdout.clone()),
            (Box::new(err), stderr.clone()),
        ] {
            readers.push(std::thread::spawn(move || {
                let mut buf = [0u8; 16 * 1024];
                loop {
                    match pipe.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => sink.lock().unwrap().extend_from_slice(&buf[..n]),
                    }
                }
            }));
        }
        Proc {
            stdin: child.stdin.take(),
            child,
            what: what.to_owned(),
            stdout,
            stderr,
            readers,
        }
    }

    fn send(&mut self, data: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        // A client that has already exited shows in its output; the write error says less.
        let _ = stdin.write_all(data).and_then(|()| stdin.flush());
    }

    fn stdout(&self) -> Vec<u8> {
        self.stdout.lock().unwrap().clone()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Waits (bounded) until standard output contains `needle`.
    fn wait_for_stdout(&self, needle: &str) -> bool {
        let deadline = Instant::now() + CLIENT_DEADLINE;
        while Instant::now() < deadline {
            if String::from_utf8_lossy(&self.stdout()).contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Closes standard input and waits for the process to exit, killing it (and failing)
    /// after `CLIENT_DEADLINE`.
    fn finish(&mut self) -> Output {
        drop(self.stdin.take());
        let deadline = Instant::now() + CLIENT_DEADLINE;
        let status = loop {
            match self.child.try_wait().expect("wait for client") {
                Some(status) => break status,
                None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                None => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    panic!(
                        "{}: still running after {CLIENT_DEADLINE:?}, killed\nstdout: {}\nstderr: {}",
                        self.what,
                        String::from_utf8_lossy(&self.stdout()),
                        self.stderr()
                    );
                }
            }
        };
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        Output {
            status,
            stdout: self.stdout(),
            stderr: self.stderr().into_bytes(),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a client to completion with `input` on its standard input, bounded in time.
fn run(cmd: &mut Command, input: &[u8], what: &str) -> Output {
    common::run_bounded(cmd, input, CLIENT_DEADLINE, what)
}

fn require_openssl() {
    common::require_program("openssl", &["version"], "openssl");
}

fn require_python() {
    common::require_program("python3", &["-c", "import poplib, socket, ssl"], "python3");
}

fn require_curl() {
    let out = run(Command::new("curl").arg("-V"), b"", "curl -V");
    let version = String::from_utf8_lossy(&out.stdout);
    let protocols: Vec<&str> = version
        .lines()
        .find(|l| l.starts_with("Protocols:"))
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert!(
        protocols.contains(&"pop3") && protocols.contains(&"pop3s"),
        "this curl has no POP3 over TLS ({version}): apt-get install -y curl"
    );
}

// ---------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------

/// Runs the openssl CLI, which must succeed.
#[track_caller]
fn openssl(args: &[&str]) {
    require_openssl();
    let out = run(Command::new("openssl").args(args), b"", "openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        text_of(&out)
    );
}

/// A certificate and its key in a folder of their own, removed with it.
struct Cert {
    dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
}

impl Cert {
    fn new(cn: &str) -> Cert {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = make_rsa_cert(dir.path(), "server", cn);
        Cert { dir, cert, key }
    }

    fn cert(&self) -> &str {
        self.cert.to_str().unwrap()
    }

    fn key(&self) -> &str {
        self.key.to_str().unwrap()
    }
}

/// A daemon with a fresh certificate for localhost: STLS on the plain listener and, when
/// `implicit`, an implicit-TLS listener too.
fn tls_server(users: &str, implicit: bool, extra: &[&str]) -> (Server, Cert) {
    let cert = Cert::new("localhost");
    let mut args = vec!["--tls-cert", cert.cert(), "--tls-key", cert.key()];
    if implicit {
        args.extend(["--listen-tls", "127.0.0.1:0"]);
    }
    args.extend(extra);
    let server = Server::start(users, &args);
    assert_eq!(server.tls_addr.is_some(), implicit);
    (server, cert)
}

// ---------------------------------------------------------------------------------------
// Mail
// ---------------------------------------------------------------------------------------

/// One message as stored in the Maildir.
struct Stored {
    unique: String,
    original: Vec<u8>,
}

impl Stored {
    /// What RETR sends for it, de-stuffed.
    fn wire(&self) -> Vec<u8> {
        crlf(&self.original)
    }
}

/// About 400 KB over many TLS records and several of the server's write batches, with
/// lines that need dot-stuffing.
fn big_message() -> Vec<u8> {
    let mut m = b"Subject: big\n\n".to_vec();
    let mut state: u32 = 12345;
    for i in 0..5000 {
        if i % 7 == 0 {
            m.push(b'.');
        }
        m.extend_from_slice(format!("line {i:05} ").as_bytes());
        for _ in 0..64 {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
            m.push(b'a' + ((state >> 16) % 26) as u8);
        }
        m.push(b'\n');
    }
    m
}

/// Delivers a small corpus and returns it in listing order.
fn populate(maildir: &Path) -> Vec<Stored> {
    let corpus: Vec<Vec<u8>> = vec![
        b"From: Bob <bob@example.org>\nSubject: plain\n\nHello over TLS.\n".to_vec(),
        b"Subject: dots\n\n.\n..two dots\n.leading dot\n. \nend\n".to_vec(),
        b"Subject: crlf\r\n\r\nCRLF line\r\nno final newline".to_vec(),
        "Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\n\n\u{c4}pfel, \u{d6}l, \u{fc}n\u{ef}c\u{f6}d\u{e9} \u{2713}\n"
            .as_bytes()
            .to_vec(),
        big_message(),
    ];
    corpus
        .into_iter()
        .enumerate()
        .map(|(i, original)| Stored {
            unique: deliver(maildir, 1_700_000_000 + i as u64, &original),
            original,
        })
        .collect()
}

fn uniques<'a>(messages: impl IntoIterator<Item = &'a Stored>) -> Vec<String> {
    let mut names: Vec<String> = messages.into_iter().map(|m| m.unique.clone()).collect();
    names.sort();
    names
}

fn all_but<'a>(stored: &'a [Stored], gone: &[usize]) -> Vec<&'a Stored> {
    stored
        .iter()
        .enumerate()
        .filter(|(i, _)| !gone.contains(&(i + 1)))
        .map(|(_, m)| m)
        .collect()
}

// ---------------------------------------------------------------------------------------
// One POP3 session, as any client saw it
// ---------------------------------------------------------------------------------------

/// What a client saw in a session of CAPA, USER, PASS, STAT, LIST, UIDL, RETR of every
/// message, DELE of some, STAT, QUIT.
#[derive(Debug, Default)]
struct Seen {
    /// None when the client consumed it (s_client -starttls).
    greeting: Option<String>,
    capa: Vec<String>,
    user: String,
    pass: String,
    /// "count octets"
    stat: String,
    list: Vec<String>,
    uidl: Vec<String>,
    /// Status line and de-stuffed body (CRLF line ends) of each RETR.
    retr: Vec<(String, Vec<u8>)>,
    dele: Vec<String>,
    stat_after: String,
    quit: String,
}

/// Checks a session that downloaded all of `stored`, DELE'd `dele` and quit, in `mode`.
#[track_caller]
fn check_session(seen: &Seen, stored: &[Stored], dele: &[usize], mode: &str, what: &str) {
    if let Some(greeting) = &seen.greeting {
        assert_eq!(greeting, "+OK POP3 server ready", "{what}: greeting");
    }
    for cap in ["TOP", "UIDL", "USER", "PIPELINING", "RESP-CODES"] {
        assert!(
            seen.capa.iter().any(|c| c == cap),
            "{what}: CAPA lacks {cap}: {:?}",
            seen.capa
        );
    }
    assert!(
        !seen.capa.iter().any(|c| c == "STLS"),
        "{what}: CAPA over TLS offers STLS: {:?}",
        seen.capa
    );
    assert_eq!(seen.user, "+OK Send PASS", "{what}: USER");
    let n = stored.len();
    let total: usize = stored.iter().map(|m| m.wire().len()).sum();
    assert_eq!(
        seen.pass,
        format!("+OK Logged in, {n} messages ({total} octets), {mode} mode"),
        "{what}: PASS"
    );
    assert_eq!(seen.stat, format!("{n} {total}"), "{what}: STAT");
    let list: Vec<String> = stored
        .iter()
        .enumerate()
        .map(|(i, m)| format!("{} {}", i + 1, m.wire().len()))
        .collect();
    assert_eq!(seen.list, list, "{what}: LIST");
    let uidl: Vec<String> = stored
        .iter()
        .enumerate()
        .map(|(i, m)| format!("{} {}", i + 1, m.unique))
        .collect();
    assert_eq!(seen.uidl, uidl, "{what}: UIDL");
    assert_eq!(seen.retr.len(), n, "{what}: one RETR per message");
    for (i, (m, (status, body))) in stored.iter().zip(&seen.retr).enumerate() {
        assert_eq!(
            status,
            &format!("+OK {} octets", m.wire().len()),
            "{what}: RETR {}",
            i + 1
        );
        assert_bytes(body, &m.wire(), &format!("{what}: RETR {}", i + 1));
    }
    let deles: Vec<String> = dele
        .iter()
        .map(|d| format!("+OK Message {d} marked as deleted"))
        .collect();
    assert_eq!(seen.dele, deles, "{what}: DELE");
    let left = all_but(stored, dele);
    let left_total: usize = left.iter().map(|m| m.wire().len()).sum();
    assert_eq!(
        seen.stat_after,
        format!("{} {left_total}", left.len()),
        "{what}: STAT after DELE"
    );
    let quit = match mode {
        _ if dele.is_empty() => "+OK Logging out, no messages marked".to_owned(),
        "delete" => format!("+OK Logging out, {} messages deleted", dele.len()),
        _ => format!(
            "+OK Logging out, {} messages kept on the server and hidden from this device",
            dele.len()
        ),
    };
    assert_eq!(seen.quit, quit, "{what}: QUIT");
}

/// After a session that DELE'd `dele`: delete mode removed them, keep mode removed nothing.
#[track_caller]
fn check_disk(server: &Server, stored: &[Stored], dele: &[usize], mode: &str) {
    let want = if mode == "delete" {
        uniques(all_but(stored, dele))
    } else {
        uniques(stored)
    };
    assert_eq!(
        messages_on_disk(&server.maildir("alice")),
        want,
        "{mode} mode: the files after QUIT"
    );
}

/// The commands of the session `Seen` describes, as one pipelined input. `probe_stls` adds
/// an STLS after CAPA, which an implicit-TLS connection must refuse.
fn session_input(n: usize, dele: &[usize], probe_stls: bool) -> Vec<u8> {
    let mut commands = vec!["CAPA".to_owned()];
    if probe_stls {
        commands.push("STLS".into());
    }
    commands.extend(["USER alice", "PASS secret", "STAT", "LIST", "UIDL"].map(String::from));
    commands.extend((1..=n).map(|i| format!("RETR {i}")));
    commands.extend(dele.iter().map(|d| format!("DELE {d}")));
    commands.extend(["STAT", "QUIT"].map(String::from));
    commands
        .iter()
        .flat_map(|c| format!("{c}\r\n").into_bytes())
        .collect()
}

/// Reads a raw POP3 transcript (what the server sent) reply by reply.
struct Transcript<'a> {
    raw: &'a [u8],
    at: usize,
}

impl Transcript<'_> {
    fn new(raw: &[u8]) -> Transcript<'_> {
        Transcript { raw, at: 0 }
    }

    /// The next line, which must end in CRLF, without it.
    fn line(&mut self) -> String {
        let rest = &self.raw[self.at..];
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            panic!(
                "the transcript ends early after {} octets; the rest: {:?}\nwhole: {}",
                self.at,
                String::from_utf8_lossy(rest),
                String::from_utf8_lossy(&self.raw[..self.at.min(4000)])
            );
        };
        assert!(
            end > 0 && rest[end - 1] == b'\r',
            "line without CRLF: {:?}",
            String::from_utf8_lossy(&rest[..=end])
        );
        self.at += end + 1;
        String::from_utf8_lossy(&rest[..end - 1]).into_owned()
    }

    /// The body of a multi-line reply, de-stuffed, every line ended by CRLF.
    fn body(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let rest = &self.raw[self.at..];
            let end = rest
                .iter()
                .position(|&b| b == b'\n')
                .unwrap_or_else(|| panic!("the transcript ends inside a multi-line reply"));
            let line = &rest[..=end];
            assert!(line.ends_with(b"\r\n"), "line without CRLF: {line:?}");
            self.at += end + 1;
            if line == b".\r\n" {
                return body;
            }
            body.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
        }
    }

    fn lines(&mut self) -> Vec<String> {
        String::from_utf8(self.body())
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// A +OK status line, then a multi-line body.
    fn ok_lines(&mut self, what: &str) -> Vec<String> {
        let status = self.line();
        assert!(status.starts_with("+OK"), "{what}: {status}");
        self.lines()
    }

    fn rest(&self) -> &[u8] {
        &self.raw[self.at..]
    }
}

/// Parses what the server sent for `session_input(n, dele, probe_stls)`.
fn parse_session(raw: &[u8], n: usize, dele: &[usize], greeting: bool, probe_stls: bool) -> Seen {
    let mut t = Transcript::new(raw);
    let mut seen = Seen {
        greeting: greeting.then(|| t.line()),
        capa: t.ok_lines("CAPA"),
        ..Seen::default()
    };
    if probe_stls {
        let reply = t.line();
        assert!(
            reply.starts_with("-ERR"),
            "STLS on a TLS connection: {reply}"
        );
    }
    seen.user = t.line();
    seen.pass = t.line();
    seen.stat = t.line().trim_start_matches("+OK ").to_owned();
    seen.list = t.ok_lines("LIST");
    seen.uidl = t.ok_lines("UIDL");
    for _ in 0..n {
        let status = t.line();
        let body = if status.starts_with("+OK") {
            t.body()
        } else {
            Vec::new()
        };
        seen.retr.push((status, body));
    }
    seen.dele = dele.iter().map(|_| t.line()).collect();
    seen.stat_after = t.line().trim_start_matches("+OK ").to_owned();
    seen.quit = t.line();
    assert!(
        t.rest().is_empty(),
        "the server sent more after QUIT: {:?}",
        String::from_utf8_lossy(t.rest())
    );
    seen
}

// ---------------------------------------------------------------------------------------
// openssl s_client
// ---------------------------------------------------------------------------------------

/// `openssl s_client` against `addr`, verifying the certificate against `cafile` for the
/// name localhost, with `extra` options and `input` on standard input. With `-quiet`
/// standard output is exactly what the server sent after the handshake.
///
/// Its exit status is not checked: the daemon closes TLS connections without close_notify
/// (see `quit_over_tls_ends_with_close_notify`), which OpenSSL 3 reports as an error.
fn s_client(addr: SocketAddr, cafile: &str, extra: &[&str], input: &[u8]) -> Output {
    require_openssl();
    run(
        common::s_client_command(addr, cafile).args(extra),
        input,
        "openssl s_client",
    )
}

/// The peer certificate's CN and the protocol version a new `s_client -brief` connection
/// gets (`starttls`: over STLS on the plain listener). No verification: the CN is the point.
fn probe(
    addr: SocketAddr,
    starttls: bool,
    extra: &[&str],
) -> (Option<String>, Option<String>, Output) {
    require_openssl();
    let connect = addr.to_string();
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-brief", "-connect", &connect]);
    if starttls {
        cmd.args(["-starttls", "pop3"]);
    }
    let out = run(cmd.args(extra), b"", "openssl s_client -brief");
    let text = text_of(&out);
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .map(|v| v.trim().to_owned())
    };
    (
        field("Peer certificate: CN = "),
        field("Protocol version: "),
        out,
    )
}

fn s_client_session(server: &Server, cert: &Cert, stored: &[Stored], dele: &[usize], mode: &str) {
    let out = s_client(
        server.tls_addr.unwrap(),
        cert.cert(),
        &["-quiet"],
        &session_input(stored.len(), dele, true),
    );
    let seen = parse_session(&out.stdout, stored.len(), dele, true, true);
    check_session(&seen, stored, dele, mode, "s_client (implicit TLS)");
}

#[test]
fn implicit_tls_s_client_delete_mode() {
    let (server, cert) = tls_server(USERS, true, &[]);
    let stored = populate(&server.maildir("alice"));
    let dele = [2, 5];
    s_client_session(&server, &cert, &stored, &dele, "delete");
    check_disk(&server, &stored, &dele, "delete");
}

#[test]
fn implicit_tls_s_client_keep_mode() {
    let (server, cert) = tls_server(USERS, true, &["--mode", "keep"]);
    let stored = populate(&server.maildir("alice"));
    let dele = [1, 3];
    s_client_session(&server, &cert, &stored, &dele, "keep");
    check_disk(&server, &stored, &dele, "keep");
}

#[test]
fn stls_s_client_starttls_pop3() {
    let (server, cert) = tls_server(USERS, false, &[]);
    let stored = populate(&server.maildir("alice"));
    let dele = [1, 4];
    // s_client reads the greeting and does STLS itself; what we pipe goes over TLS.
    let out = s_client(
        server.addr,
        cert.cert(),
        &["-quiet", "-starttls", "pop3"],
        &session_input(stored.len(), &dele, false),
    );
    let seen = parse_session(&out.stdout, stored.len(), &dele, false, false);
    check_session(&seen, &stored, &dele, "delete", "s_client -starttls pop3");
    check_disk(&server, &stored, &dele, "delete");
}

// ---------------------------------------------------------------------------------------
// Python poplib
// ---------------------------------------------------------------------------------------

/// One poplib session over TLS: `implicit` (POP3_SSL) or `stls` (POP3, then stls()), with a
/// context that trusts only the test's certificate and checks the host name. Prints one
/// `key value` line per result; RETR bodies go to OUTDIR/n.eml.
const POPLIB_SCRIPT: &str = r#"
import os, poplib, ssl, sys

how, host, port, cafile, user, password, outdir, dele = sys.argv[1:9]
dele = [int(x) for x in dele.split(",") if x]
ctx = ssl.create_default_context(cafile=cafile)

def text(b):
    return b.decode("utf-8", "backslashreplace")

def capa(p, key):
    return [key + " " + " ".join([k] + v) for k, v in sorted(p.capa().items())]

out = []
if how == "implicit":
    p = poplib.POP3_SSL(host, int(port), context=ctx, timeout=10)
else:
    p = poplib.POP3(host, int(port), timeout=10)
out.append("welcome " + text(p.getwelcome()))
if how == "stls":
    out += capa(p, "capa-before")
    out.append("stls " + text(p.stls(ctx)))
out.append("version " + p.sock.version())
out += capa(p, "capa")
out.append("user " + text(p.user(user)))
out.append("pass " + text(p.pass_(password)))
count, size = p.stat()
out.append("stat %d %d" % (count, size))
resp, listing, _ = p.list()
for line in listing:
    out.append("list " + text(line))
resp, uids, _ = p.uidl()
for line in uids:
    out.append("uidl " + text(line))
for line in listing:
    n = int(line.split()[0])
    resp, lines, octets = p.retr(n)
    with open(os.path.join(outdir, "%d.eml" % n), "wb") as f:
        f.write(b"".join(l + b"\r\n" for l in lines))
    out.append("retr " + text(resp))
for n in dele:
    out.append("dele " + text(p.dele(n)))
count, size = p.stat()
out.append("stat-after %d %d" % (count, size))
out.append("quit " + text(p.quit()))
print("\n".join(out))
"#;

/// What a poplib session saw, beside the common part.
struct PoplibRun {
    seen: Seen,
    capa_before: Vec<String>,
    stls: Option<String>,
    version: String,
}

fn poplib_session(server: &Server, cert: &Cert, how: &str, dele: &[usize]) -> PoplibRun {
    require_python();
    let port = match how {
        "implicit" => server.tls_addr.unwrap().port(),
        _ => server.addr.port(),
    };
    let outdir = tempfile::tempdir_in(server.root.path()).unwrap();
    let dele: Vec<String> = dele.iter().map(ToString::to_string).collect();
    let out = common::python_script(
        server,
        POPLIB_SCRIPT,
        &[
            how,
            "127.0.0.1",
            &port.to_string(),
            cert.cert(),
            "alice",
            "secret",
            outdir.path().to_str().unwrap(),
            &dele.join(","),
        ],
        CLIENT_DEADLINE,
        &format!("python3 poplib ({how})"),
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let all = |key: &str| -> Vec<String> {
        stdout
            .lines()
            .filter_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
            .map(str::to_owned)
            .collect()
    };
    let one = |key: &str| -> String {
        let mut values = all(key);
        assert_eq!(values.len(), 1, "poplib printed {key} once: {stdout}");
        values.pop().unwrap()
    };
    let retr = all("retr")
        .into_iter()
        .enumerate()
        .map(|(i, status)| {
            let body = std::fs::read(outdir.path().join(format!("{}.eml", i + 1))).unwrap();
            (status, body)
        })
        .collect();
    PoplibRun {
        seen: Seen {
            greeting: Some(one("welcome")),
            capa: all("capa"),
            user: one("user"),
            pass: one("pass"),
            stat: one("stat"),
            list: all("list"),
            uidl: all("uidl"),
            retr,
            dele: all("dele"),
            stat_after: one("stat-after"),
            quit: one("quit"),
        },
        capa_before: all("capa-before"),
        stls: all("stls").pop(),
        version: one("version"),
    }
}

/// The protocol version this backend negotiates with a client that offers everything.
fn default_version() -> &'static str {
    if cfg!(feature = "rustls") {
        "TLSv1.3"
    } else {
        "TLSv1.2"
    }
}

#[test]
fn implicit_tls_poplib_delete_mode() {
    let (server, cert) = tls_server(USERS, true, &[]);
    let stored = populate(&server.maildir("alice"));
    let dele = [1, 2];
    let run = poplib_session(&server, &cert, "implicit", &dele);
    check_session(&run.seen, &stored, &dele, "delete", "poplib POP3_SSL");
    assert_eq!(run.version, default_version());
    check_disk(&server, &stored, &dele, "delete");
}

#[test]
fn implicit_tls_poplib_keep_mode_from_the_users_file() {
    let (server, cert) = tls_server("alice:{PLAIN}secret::::::mode=keep\n", true, &[]);
    let stored = populate(&server.maildir("alice"));
    let dele = [3, 5];
    let run = poplib_session(&server, &cert, "implicit", &dele);
    check_session(&run.seen, &stored, &dele, "keep", "poplib POP3_SSL");
    check_disk(&server, &stored, &dele, "keep");
    // The same login no longer lists what it DELE'd; the files are all still there.
    let again = poplib_session(&server, &cert, "implicit", &[]);
    let left: Vec<Stored> = all_but(&stored, &dele)
        .into_iter()
        .map(|m| Stored {
            unique: m.unique.clone(),
            original: m.original.clone(),
        })
        .collect();
    check_session(&again.seen, &left, &[], "keep", "poplib POP3_SSL, again");
    check_disk(&server, &stored, &[], "keep");
}

#[test]
fn stls_poplib() {
    let (server, cert) = tls_server(USERS, false, &[]);
    let stored = populate(&server.maildir("alice"));
    let dele = [2, 4];
    let run = poplib_session(&server, &cert, "stls", &dele);
    // Before STLS: offered (and USER, as this is loopback). After: not offered, USER is.
    for cap in ["STLS", "USER", "UIDL"] {
        assert!(
            run.capa_before.iter().any(|c| c == cap),
            "CAPA before STLS lacks {cap}: {:?}",
            run.capa_before
        );
    }
    assert_eq!(run.stls.as_deref(), Some("+OK Begin TLS negotiation"));
    assert_eq!(run.version, default_version());
    check_session(&run.seen, &stored, &dele, "delete", "poplib stls()");
    check_disk(&server, &stored, &dele, "delete");
}

// ---------------------------------------------------------------------------------------
// curl
// ---------------------------------------------------------------------------------------

/// curl as alice against localhost:PORT (resolved to 127.0.0.1 only), trusting `cert`.
fn curl(cert: &Cert, port: u16, args: &[&str]) -> Output {
    require_curl();
    run(
        Command::new("curl")
            .args(["--silent", "--show-error", "--max-time", "10"])
            .args(["--user", "alice:secret", "--cacert", cert.cert()])
            .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
            .args(args),
        b"",
        "curl",
    )
}

#[track_caller]
fn curl_ok(server: &Server, cert: &Cert, port: u16, args: &[&str]) -> Output {
    let out = curl(cert, port, args);
    assert!(
        out.status.success(),
        "curl {args:?} failed ({}): {}\nserver log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    out
}

fn list_text<'a>(messages: impl IntoIterator<Item = &'a Stored>) -> String {
    messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| format!("{} {}\r\n", i + 1, m.wire().len()))
        .collect()
}

/// Every message with one curl run (one session), each compared with the Maildir.
#[track_caller]
fn curl_retr_all(server: &Server, cert: &Cert, scheme: &str, port: u16, stored: &[&Stored]) {
    let dir = tempfile::tempdir_in(server.root.path()).unwrap();
    let mut args: Vec<String> = Vec::new();
    if scheme == "pop3" {
        args.push("--ssl-reqd".into());
    }
    for n in 1..=stored.len() {
        args.push(format!("{scheme}://localhost:{port}/{n}"));
        args.push("--output".into());
        args.push(dir.path().join(format!("{n}.eml")).to_str().unwrap().into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    curl_ok(server, cert, port, &args);
    for (i, m) in stored.iter().enumerate() {
        let got = std::fs::read(dir.path().join(format!("{}.eml", i + 1))).unwrap();
        assert_bytes(&got, &m.wire(), &format!("curl {scheme} RETR {}", i + 1));
    }
}

#[test]
fn curl_stls_and_implicit_tls() {
    let (server, cert) = tls_server(USERS, true, &[]);
    let stored = populate(&server.maildir("alice"));
    let everything: Vec<&Stored> = stored.iter().collect();
    let plain = server.addr.port();
    let implicit = server.tls_addr.unwrap().port();

    // STLS: --ssl-reqd makes curl upgrade or fail; the trace shows it did.
    let list = curl_ok(
        &server,
        &cert,
        plain,
        &[
            "--ssl-reqd",
            "--verbose",
            &format!("pop3://localhost:{plain}/"),
        ],
    );
    assert_eq!(String::from_utf8(list.stdout).unwrap(), list_text(&stored));
    let trace = String::from_utf8_lossy(&list.stderr);
    assert!(
        trace.contains("> STLS") && trace.contains("< +OK Begin TLS negotiation"),
        "curl did not use STLS:\n{trace}"
    );
    curl_retr_all(&server, &cert, "pop3", plain, &everything);
    let uidl = curl_ok(
        &server,
        &cert,
        plain,
        &[
            "--ssl-reqd",
            "--request",
            "UIDL",
            &format!("pop3://localhost:{plain}/"),
        ],
    );
    let want: String = stored
        .iter()
        .enumerate()
        .map(|(i, m)| format!("{} {}\r\n", i + 1, m.unique))
        .collect();
    assert_eq!(String::from_utf8(uidl.stdout).unwrap(), want, "curl UIDL");

    // Implicit TLS.
    let list = curl_ok(
        &server,
        &cert,
        implicit,
        &[&format!("pop3s://localhost:{implicit}/")],
    );
    assert_eq!(String::from_utf8(list.stdout).unwrap(), list_text(&stored));
    curl_retr_all(&server, &cert, "pop3s", implicit, &everything);
    // DELE over pop3s (no body: --head), removed at curl's QUIT.
    curl_ok(
        &server,
        &cert,
        implicit,
        &[
            "--request",
            "DELE",
            "--head",
            &format!("pop3s://localhost:{implicit}/2"),
        ],
    );
    check_disk(&server, &stored, &[2], "delete");
    let list = curl_ok(
        &server,
        &cert,
        implicit,
        &[&format!("pop3s://localhost:{implicit}/")],
    );
    assert_eq!(
        String::from_utf8(list.stdout).unwrap(),
        list_text(all_but(&stored, &[2]))
    );
}

// ---------------------------------------------------------------------------------------
// CAPA and STLS availability
// ---------------------------------------------------------------------------------------

fn capa(c: &mut Client) -> Vec<String> {
    c.ok("CAPA");
    c.multiline()
}

#[test]
fn stls_is_offered_only_where_it_can_be_used() {
    // No certificate: no STLS.
    let server = Server::start(USERS, &[]);
    let mut c = server.connect();
    assert!(!capa(&mut c).contains(&"STLS".to_owned()));
    c.err("STLS");
    drop(c);
    drop(server);

    // A certificate: STLS before login, not after.
    let (server, _cert) = tls_server(USERS, false, &[]);
    let mut c = server.connect();
    let caps = capa(&mut c);
    assert!(caps.contains(&"STLS".to_owned()), "{caps:?}");
    assert!(caps.contains(&"USER".to_owned()), "{caps:?}");
    c.ok("USER alice");
    c.ok("PASS secret");
    assert!(!capa(&mut c).contains(&"STLS".to_owned()));
    c.err("STLS");
    c.ok("QUIT");
}

// ---------------------------------------------------------------------------------------
// STARTTLS command injection (RFC 2595 §2.2, CVE-2011-0411 class)
// ---------------------------------------------------------------------------------------

/// Over a raw socket: commands sent in the same write as STLS (or before it) must not act
/// after the handshake. For each case prints `NAME plain|unasked|answer HEX`.
const INJECTION_SCRIPT: &str = r#"
import socket, ssl, sys

port, cafile = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=cafile)

def raw_line(sock):
    # One octet at a time, so nothing after the line is taken from the socket.
    buf = b""
    while not buf.endswith(b"\n"):
        b = sock.recv(1)
        if not b:
            break
        buf += b
    return buf

def case(name, before, injected, after):
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    plain = [raw_line(sock)]
    for command in before:
        sock.sendall(command)
        plain.append(raw_line(sock))
    # STLS and the injected commands in ONE write.
    sock.sendall(b"STLS\r\n" + injected)
    plain.append(raw_line(sock))
    tls = ctx.wrap_socket(sock, server_hostname="localhost")
    # Anything the server sends now, before we ask, answers the injected plaintext.
    tls.settimeout(0.3)
    try:
        unasked = tls.recv(65536)
    except (socket.timeout, TimeoutError):
        unasked = b""
    tls.settimeout(10)
    tls.sendall(after)
    answer = b""
    while True:
        chunk = tls.recv(65536)
        if not chunk:
            break
        answer += chunk
    for key, value in [("plain", b"".join(plain)), ("unasked", unasked), ("answer", answer)]:
        print(name, key, value.hex())

case("capa", [], b"CAPA\r\n", b"CAPA\r\nQUIT\r\n")
case("login", [], b"USER alice\r\nPASS secret\r\n", b"PASS secret\r\nSTAT\r\nQUIT\r\n")
case("user-before-stls", [b"USER alice\r\n"], b"", b"PASS secret\r\nSTAT\r\nQUIT\r\n")
"#;

fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn stls_injection_plaintext_after_stls_is_discarded() {
    require_python();
    let (server, cert) = tls_server(USERS, false, &[]);
    deliver(&server.maildir("alice"), 1, SHORT);
    let out = common::python_script(
        &server,
        INJECTION_SCRIPT,
        &[&server.addr.port().to_string(), cert.cert()],
        CLIENT_DEADLINE,
        "python3 STLS injection",
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let get = |case: &str, key: &str| -> String {
        let prefix = format!("{case} {key} ");
        let hex = stdout
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {case} {key} in {stdout}"));
        String::from_utf8_lossy(&unhex(hex)).into_owned()
    };
    for case in ["capa", "login", "user-before-stls"] {
        let want_plain = if case == "user-before-stls" {
            "+OK POP3 server ready\r\n+OK Send PASS\r\n+OK Begin TLS negotiation\r\n"
        } else {
            "+OK POP3 server ready\r\n+OK Begin TLS negotiation\r\n"
        };
        assert_eq!(get(case, "plain"), want_plain, "{case}: before TLS");
        assert_eq!(
            get(case, "unasked"),
            "",
            "{case}: the server answered plaintext injected after STLS, over TLS"
        );
    }
    // Exactly one CAPA reply: the one asked for over TLS.
    let answer = get("capa", "answer");
    assert_eq!(
        answer.matches("+OK Capability list follows").count(),
        1,
        "{answer}"
    );
    assert!(
        answer.starts_with("+OK Capability list follows\r\n")
            && answer.ends_with("\r\n.\r\n+OK Logging out\r\n"),
        "{answer}"
    );
    assert!(
        answer.contains("\r\nUSER\r\n") && !answer.contains("STLS"),
        "{answer}"
    );
    // Neither the injected login nor a USER from before STLS carries over: PASS alone
    // fails, and STAT is refused before login.
    for case in ["login", "user-before-stls"] {
        let answer = get(case, "answer");
        let lines: Vec<&str> = answer.split_terminator("\r\n").collect();
        assert_eq!(lines.len(), 3, "{case}: {answer}");
        assert!(lines[0].starts_with("-ERR"), "{case}: PASS: {answer}");
        assert!(lines[1].starts_with("-ERR"), "{case}: STAT: {answer}");
        assert_eq!(lines[2], "+OK Logging out", "{case}");
    }
    assert!(
        !server.log().contains("login: user="),
        "nobody logged in:\n{}",
        server.log()
    );
}

// ---------------------------------------------------------------------------------------
// Bad handshakes
// ---------------------------------------------------------------------------------------

/// Sends `data`, closes our side, and waits (bounded) for the server to close.
fn send_and_drain(mut stream: TcpStream, data: &[u8], what: &str) {
    let _ = stream.write_all(data);
    let _ = stream.shutdown(Shutdown::Write);
    drain(stream, what);
}

/// Waits (bounded) for the server to close the connection; a reset counts as closed.
fn drain(mut stream: TcpStream, what: &str) {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut rest = Vec::new();
    if let Err(e) = stream.read_to_end(&mut rest) {
        assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{what}: the server did not close the connection: {e}"
        );
    }
}

fn handshake_failures(server: &Server) -> Vec<String> {
    server
        .log()
        .lines()
        .filter(|l| l.contains("TLS handshake with"))
        .map(str::to_owned)
        .collect()
}

/// Waits (bounded) for `n` failed-handshake lines in the log.
fn wait_for_handshake_failures(server: &Server, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = handshake_failures(server);
        if lines.len() >= n || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn garbage_instead_of_a_handshake_costs_one_connection() {
    let (mut server, cert) = tls_server(USERS, true, &[]);
    deliver(&server.maildir("alice"), 1, SHORT);
    let tls_addr = server.tls_addr.unwrap();
    let mut state: u64 = 0x0123_4567_89ab_cdef;
    let junk: Vec<u8> = (0..4096)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 56) as u8
        })
        .collect();
    let attempts: [(&str, &[u8]); 4] = [
        ("junk", &junk),
        ("http", b"GET / HTTP/1.0\r\n\r\n"),
        ("nothing", b""),
        // A handshake record header promising more than comes.
        (
            "truncated hello",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        ),
    ];
    for (what, data) in attempts {
        send_and_drain(TcpStream::connect(tls_addr).unwrap(), data, what);
    }
    // The same after STLS on the plain listener.
    let mut c = server.connect();
    assert_eq!(c.ok("STLS"), "+OK Begin TLS negotiation");
    send_and_drain(c.stream.try_clone().unwrap(), &junk, "junk after STLS");
    drop(c);

    assert!(server.is_running(), "the daemon died:\n{}", server.log());
    let failures = wait_for_handshake_failures(&server, 5);
    assert_eq!(
        failures.len(),
        5,
        "one line per bad handshake:\n{}",
        server.log()
    );
    for line in &failures {
        assert!(line.contains(" DEBUG "), "not at debug level: {line}");
    }
    // A good client right after.
    let out = s_client(
        tls_addr,
        cert.cert(),
        &["-quiet"],
        b"USER alice\r\nPASS secret\r\nSTAT\r\nQUIT\r\n",
    );
    let mut t = Transcript::new(&out.stdout);
    assert_eq!(t.line(), "+OK POP3 server ready");
    assert_eq!(t.line(), "+OK Send PASS");
    assert!(t.line().starts_with("+OK Logged in"));
    assert_eq!(t.line(), "+OK 1 17");
    assert!(t.line().starts_with("+OK Logging out"));
    assert!(server.is_running());
    let log = server.log();
    let loud: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" ERROR ") || l.contains(" WARN "))
        .collect();
    assert!(loud.is_empty(), "bad handshakes flood the log: {loud:#?}");
}

#[test]
fn a_silent_client_is_dropped_by_the_login_timeout_during_the_handshake() {
    let (server, _cert) = tls_server(USERS, true, &["--login-timeout", "1s"]);
    // Both at once: one silent on the implicit-TLS listener, one silent after STLS.
    let implicit = TcpStream::connect(server.tls_addr.unwrap()).unwrap();
    let implicit_start = Instant::now();
    let mut c = server.connect();
    c.ok("STLS");
    let stls_start = Instant::now();
    for (stream, start, what) in [
        (implicit, implicit_start, "silent, implicit TLS"),
        (
            c.stream.try_clone().unwrap(),
            stls_start,
            "silent after STLS",
        ),
    ] {
        drain(stream, what);
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(8),
            "{what}: closed after {took:?}"
        );
    }
    assert_eq!(wait_for_handshake_failures(&server, 2).len(), 2);
}

// ---------------------------------------------------------------------------------------
// Protocol versions
// ---------------------------------------------------------------------------------------

#[test]
fn tls_1_1_and_1_0_are_refused() {
    let (mut server, _cert) = tls_server(USERS, true, &[]);
    let tls_addr = server.tls_addr.unwrap();
    for (addr, starttls) in [(tls_addr, false), (server.addr, true)] {
        for version in ["-tls1_1", "-tls1"] {
            // SECLEVEL=0: OpenSSL 3 would otherwise refuse these versions itself.
            let (_, negotiated, out) =
                probe(addr, starttls, &[version, "-cipher", "DEFAULT:@SECLEVEL=0"]);
            let text = text_of(&out);
            assert!(
                !out.status.success() && negotiated.is_none(),
                "{version} (starttls: {starttls}) was accepted:\n{text}"
            );
            // The refusal is the server's: its alert (protocol version from OpenSSL,
            // handshake failure from rustls), not the client giving up.
            assert!(
                text.contains("SSL alert number"),
                "{version} (starttls: {starttls}): no alert from the server:\n{text}"
            );
        }
    }
    assert!(server.is_running());
}

#[test]
fn protocol_versions_per_backend() {
    let (server, _cert) = tls_server(USERS, true, &[]);
    let tls_addr = server.tls_addr.unwrap();
    for (addr, starttls) in [(tls_addr, false), (server.addr, true)] {
        // Everything offered: 1.3 under rustls, 1.2 under native-tls.
        let (cn, version, out) = probe(addr, starttls, &[]);
        assert_eq!(cn.as_deref(), Some("localhost"), "{}", text_of(&out));
        assert_eq!(
            version.as_deref(),
            Some(default_version()),
            "{}",
            text_of(&out)
        );
        // TLS 1.2 is served by both.
        let (_, version, out) = probe(addr, starttls, &["-tls1_2"]);
        assert_eq!(version.as_deref(), Some("TLSv1.2"), "{}", text_of(&out));
        // TLS 1.3 only by rustls.
        let (_, version, out) = probe(addr, starttls, &["-tls1_3"]);
        if cfg!(feature = "rustls") {
            assert_eq!(version.as_deref(), Some("TLSv1.3"), "{}", text_of(&out));
        } else {
            assert!(
                version.is_none() && !out.status.success(),
                "native-tls served TLS 1.3: {}",
                text_of(&out)
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// close_notify
// ---------------------------------------------------------------------------------------

/// QUIT over implicit TLS and over STLS, then reads to the end with ragged EOFs reported:
/// prints `HOW clean` when the server sent close_notify, `HOW ragged ERROR` otherwise.
const CLOSE_NOTIFY_SCRIPT: &str = r#"
import socket, ssl, sys

plain, implicit, cafile = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
ctx = ssl.create_default_context(cafile=cafile)

def raw_line(sock):
    buf = b""
    while not buf.endswith(b"\n"):
        b = sock.recv(1)
        if not b:
            break
        buf += b
    return buf

def finish(how, tls):
    tls.sendall(b"QUIT\r\n")
    data = b""
    try:
        while True:
            chunk = tls.recv(65536)
            if not chunk:
                break
            data += chunk
        print(how, "clean", data.hex())
    except OSError as e:
        print(how, "ragged", str(e).replace(" ", "_"), data.hex())

sock = socket.create_connection(("127.0.0.1", implicit), timeout=10)
tls = ctx.wrap_socket(sock, server_hostname="localhost", suppress_ragged_eofs=False)
tls.recv(65536)  # the greeting
finish("implicit", tls)

sock = socket.create_connection(("127.0.0.1", plain), timeout=10)
raw_line(sock)
sock.sendall(b"STLS\r\n")
raw_line(sock)
tls = ctx.wrap_socket(sock, server_hostname="localhost", suppress_ragged_eofs=False)
finish("stls", tls)
"#;

/// RFC 8446 §6.1 (and RFC 5246 §7.2.1): each party MUST send close_notify before closing
/// its write side. Without it a client can't tell the end of the session from a truncation
/// (OpenSSL 3 reports "unexpected eof while reading").
#[test]
fn quit_over_tls_ends_with_close_notify() {
    require_python();
    let (server, cert) = tls_server(USERS, true, &[]);
    let out = common::python_script(
        &server,
        CLOSE_NOTIFY_SCRIPT,
        &[
            &server.addr.port().to_string(),
            &server.tls_addr.unwrap().port().to_string(),
            cert.cert(),
        ],
        CLIENT_DEADLINE,
        "python3 close_notify",
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    for how in ["implicit", "stls"] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("{how} ")))
            .unwrap_or_else(|| panic!("no {how} line: {stdout}"));
        let fields: Vec<&str> = line.split(' ').collect();
        let data = String::from_utf8(unhex(fields.last().unwrap())).unwrap();
        assert_eq!(data, "+OK Logging out\r\n", "{how}: QUIT reply");
        assert_eq!(
            fields[1], "clean",
            "{how}: the server closed the TLS connection after QUIT without close_notify ({})",
            fields[2]
        );
    }
}

// ---------------------------------------------------------------------------------------
// SIGHUP: reloading the certificate
// ---------------------------------------------------------------------------------------

fn sighup(server: &Server) {
    let out = run(
        Command::new("kill").args(["-HUP", &server.pid().to_string()]),
        b"",
        "kill -HUP",
    );
    assert!(out.status.success(), "kill -HUP: {}", text_of(&out));
}

/// Waits (bounded) until the log has `n` lines containing `needle`.
#[track_caller]
fn wait_for_log_count(server: &Server, needle: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.log().matches(needle).count() < n {
        assert!(
            Instant::now() < deadline,
            "no {n}× {needle:?} in the log:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls (bounded) until a new connection gets the certificate of `cn`.
#[track_caller]
fn wait_for_cn(addr: SocketAddr, starttls: bool, cn: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (got, _, out) = probe(addr, starttls, &[]);
        if got.as_deref() == Some(cn) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "new connections still get {got:?}, not {cn}: {}",
            text_of(&out)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn install(from_cert: &Path, from_key: &Path, live: &Cert) {
    std::fs::copy(from_cert, &live.cert).unwrap();
    std::fs::copy(from_key, &live.key).unwrap();
}

#[test]
fn sighup_reloads_the_certificate_and_keeps_sessions() {
    let live = Cert::new("pop3d-a");
    let (b_cert, b_key) = make_rsa_cert(live.dir.path(), "b", "pop3d-b");
    let server = Server::start(
        USERS,
        &[
            "--listen-tls",
            "127.0.0.1:0",
            "--tls-cert",
            live.cert(),
            "--tls-key",
            live.key(),
        ],
    );
    let stored = populate(&server.maildir("alice"));
    let tls_addr = server.tls_addr.unwrap();
    assert_eq!(probe(tls_addr, false, &[]).0.as_deref(), Some("pop3d-a"));

    // A session opened with certificate A, logged in, left open over the reload.
    require_openssl();
    let connect = tls_addr.to_string();
    let mut old = Proc::spawn(
        Command::new("openssl").args(["s_client", "-quiet", "-connect", &connect]),
        "openssl s_client (the old session)",
    );
    old.send(b"USER alice\r\nPASS secret\r\n");
    assert!(
        old.wait_for_stdout("+OK Logged in"),
        "old session: {:?} {}",
        String::from_utf8_lossy(&old.stdout()),
        old.stderr()
    );
    assert!(old.stderr().contains("CN = pop3d-a"), "{}", old.stderr());

    install(&b_cert, &b_key, &live);
    sighup(&server);
    wait_for_log_count(&server, "reloaded certificate", 1);
    // The log line comes just before the swap: poll, bounded.
    wait_for_cn(tls_addr, false, "pop3d-b");
    assert_eq!(
        probe(server.addr, true, &[]).0.as_deref(),
        Some("pop3d-b"),
        "STLS after the reload"
    );

    // The old session goes on.
    old.send(b"STAT\r\nRETR 2\r\nQUIT\r\n");
    let out = old.finish();
    let mut t = Transcript::new(&out.stdout);
    assert_eq!(t.line(), "+OK POP3 server ready");
    assert_eq!(t.line(), "+OK Send PASS");
    assert!(t.line().starts_with("+OK Logged in"));
    let total: usize = stored.iter().map(|m| m.wire().len()).sum();
    assert_eq!(t.line(), format!("+OK {} {total}", stored.len()));
    assert_eq!(t.line(), format!("+OK {} octets", stored[1].wire().len()));
    assert_bytes(&t.body(), &stored[1].wire(), "RETR on the old session");
    assert!(t.line().starts_with("+OK Logging out"));

    // A broken certificate: reported, and B stays in service.
    std::fs::write(
        &live.cert,
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    sighup(&server);
    wait_for_log_count(&server, "certificate not reloaded", 1);
    let log = server.log();
    let line = log
        .lines()
        .find(|l| l.contains("certificate not reloaded"))
        .unwrap();
    assert!(line.contains(" ERROR "), "{line}");
    assert!(line.contains(live.cert()), "names the file: {line}");
    assert_eq!(log.matches("reloaded certificate").count(), 1);
    assert_eq!(
        probe(tls_addr, false, &[]).0.as_deref(),
        Some("pop3d-b"),
        "after a failed reload"
    );
    assert_eq!(probe(server.addr, true, &[]).0.as_deref(), Some("pop3d-b"));
}

#[test]
fn sighup_with_a_key_that_does_not_match_keeps_the_old_certificate() {
    let live = Cert::new("pop3d-a");
    let (b_cert, _b_key) = make_rsa_cert(live.dir.path(), "b", "pop3d-b");
    let server = Server::start(
        USERS,
        &[
            "--listen-tls",
            "127.0.0.1:0",
            "--tls-cert",
            live.cert(),
            "--tls-key",
            live.key(),
        ],
    );
    let tls_addr = server.tls_addr.unwrap();
    // Certificate B, key still A's: a half-finished renewal.
    std::fs::copy(&b_cert, &live.cert).unwrap();
    sighup(&server);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.log().contains("certificate not reloaded")
        && !server.log().contains("reloaded certificate")
    {
        assert!(Instant::now() < deadline, "no reload:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let (cn, _, out) = probe(tls_addr, false, &[]);
    assert!(
        server.log().contains("certificate not reloaded"),
        "a certificate with a key that does not match was loaded on SIGHUP; a new \
         connection now gets {cn:?}: {}\nlog:\n{}",
        text_of(&out),
        server.log()
    );
    assert_eq!(cn.as_deref(), Some("pop3d-a"), "{}", text_of(&out));
}

// ---------------------------------------------------------------------------------------
// Key formats
// ---------------------------------------------------------------------------------------

/// Runs `pop3d serve ARGS`, which must exit by itself: (status, stderr). A daemon that
/// starts instead is killed and the test fails.
fn run_daemon(args: &[&str]) -> (i32, String) {
    let out = run(
        Command::new(BIN).args(args).env("RUST_LOG", "info"),
        b"",
        "pop3d (expected to refuse to start)",
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Like `run_daemon`, but a daemon still running after a short while has started: killed,
/// and reported as None.
fn start_or_exit(args: &[&str]) -> Option<(i32, String)> {
    let mut proc = Proc::spawn(
        Command::new(BIN).args(args).env("RUST_LOG", "info"),
        "pop3d",
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = proc.child.try_wait().unwrap() {
            let out = proc.finish();
            return Some((
                status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ));
        }
        if proc.stderr().contains("] ready") || Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn serve_args<'a>(users: &'a str, cert: &'a str, key: &'a str) -> Vec<&'a str> {
    vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--listen-tls",
        "127.0.0.1:0",
        "--users",
        users,
        "--tls-cert",
        cert,
        "--tls-key",
        key,
    ]
}

#[test]
fn ec_sec1_and_rsa_pkcs1_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let users = path("users");
    std::fs::write(&users, USERS).unwrap();
    // An EC key in SEC1 form ("BEGIN EC PRIVATE KEY") and its certificate.
    let (ec_key, ec_cert) = (path("ec.key"), path("ec.crt"));
    openssl(&[
        "ecparam",
        "-genkey",
        "-name",
        "prime256v1",
        "-noout",
        "-out",
        &ec_key,
    ]);
    openssl(&[
        "req",
        "-x509",
        "-key",
        &ec_key,
        "-out",
        &ec_cert,
        "-days",
        "2",
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=DNS:localhost,IP:127.0.0.1",
    ]);
    // An RSA key in PKCS#1 form ("BEGIN RSA PRIVATE KEY") for an RSA certificate.
    let (rsa_cert, rsa_pkcs8) = make_rsa_cert(dir.path(), "rsa", "localhost");
    let rsa_key = path("rsa-pkcs1.key");
    openssl(&[
        "rsa",
        "-in",
        rsa_pkcs8.to_str().unwrap(),
        "-traditional",
        "-out",
        &rsa_key,
    ]);
    // The EC key in PKCS#8, which both backends read.
    let ec_pkcs8 = path("ec-pkcs8.key");
    openssl(&[
        "pkcs8", "-topk8", "-nocrypt", "-in", &ec_key, "-out", &ec_pkcs8,
    ]);
    let first_line = |p: &str| {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .to_owned()
    };
    assert_eq!(first_line(&ec_key), "-----BEGIN EC PRIVATE KEY-----");
    assert_eq!(first_line(&rsa_key), "-----BEGIN RSA PRIVATE KEY-----");
    assert_eq!(first_line(&ec_pkcs8), "-----BEGIN PRIVATE KEY-----");

    let rsa_cert = rsa_cert.to_str().unwrap().to_owned();
    let works = |cert: &str, key: &str, what: &str| {
        let server = Server::start(
            USERS,
            &[
                "--listen-tls",
                "127.0.0.1:0",
                "--tls-cert",
                cert,
                "--tls-key",
                key,
            ],
        );
        deliver(&server.maildir("alice"), 1, SHORT);
        let out = s_client(
            server.tls_addr.unwrap(),
            cert,
            &["-quiet"],
            b"USER alice\r\nPASS secret\r\nSTAT\r\nQUIT\r\n",
        );
        let mut t = Transcript::new(&out.stdout);
        assert_eq!(t.line(), "+OK POP3 server ready", "{what}");
        assert_eq!(t.line(), "+OK Send PASS", "{what}");
        assert!(t.line().starts_with("+OK Logged in"), "{what}");
        assert_eq!(t.line(), "+OK 1 17", "{what}");
    };
    works(&ec_cert, &ec_pkcs8, "EC key in PKCS#8");
    for (cert, key, what) in [
        (&ec_cert, &ec_key, "EC key in SEC1 form"),
        (&rsa_cert, &rsa_key, "RSA key in PKCS#1 form"),
    ] {
        if cfg!(feature = "rustls") {
            works(cert, key, what);
        } else {
            let (code, err) = run_daemon(&serve_args(&users, cert, key));
            assert_ne!(code, 0, "native-tls: {what} accepted");
            assert!(
                err.contains(key.as_str()) && err.contains("PKCS#8"),
                "native-tls: {what}: the error should name the key and ask for PKCS#8: {err}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Startup errors
// ---------------------------------------------------------------------------------------

#[test]
fn startup_errors_are_clear_and_exit_non_zero() {
    let cert = Cert::new("localhost");
    let dir = cert.dir.path();
    let users = dir.join("users");
    std::fs::write(&users, USERS).unwrap();
    let users = users.to_str().unwrap();

    // --listen-tls without a certificate.
    let (code, err) = run_daemon(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--listen-tls",
        "127.0.0.1:0",
        "--users",
        users,
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("--listen-tls needs --tls-cert and --tls-key"),
        "{err}"
    );

    // A certificate without its key.
    let (code, err) = run_daemon(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--users",
        users,
        "--tls-cert",
        cert.cert(),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("tls_cert and tls_key go together"), "{err}");

    // Missing files.
    let missing = dir.join("missing.pem");
    let missing = missing.to_str().unwrap();
    let (code, err) = run_daemon(&serve_args(users, missing, cert.key()));
    assert_ne!(code, 0);
    assert!(
        err.contains("cannot read certificate") && err.contains(missing),
        "{err}"
    );
    let (code, err) = run_daemon(&serve_args(users, cert.cert(), missing));
    assert_ne!(code, 0);
    assert!(
        err.contains("cannot read key") && err.contains(missing),
        "{err}"
    );

    // Files that are not what they should be.
    let (code, err) = run_daemon(&serve_args(users, users, cert.key()));
    assert_ne!(code, 0);
    assert!(err.contains(&format!("certificate {users}")), "{err}");
    let (code, err) = run_daemon(&serve_args(users, cert.cert(), users));
    assert_ne!(code, 0);
    assert!(err.contains(&format!("key {users}")), "{err}");
    // Certificate and key swapped.
    let (code, err) = run_daemon(&serve_args(users, cert.key(), cert.cert()));
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains(cert.cert()) && err.contains(cert.key()),
        "{err}"
    );
}

#[test]
fn startup_refuses_a_key_that_does_not_match_the_certificate() {
    let cert = Cert::new("localhost");
    let (_, other_key) = make_rsa_cert(cert.dir.path(), "other", "other");
    let users = cert.dir.path().join("users");
    std::fs::write(&users, USERS).unwrap();
    let other_key = other_key.to_str().unwrap();
    match start_or_exit(&serve_args(users.to_str().unwrap(), cert.cert(), other_key)) {
        None => panic!(
            "pop3d started with a key that does not match the certificate; every TLS \
             handshake will fail"
        ),
        Some((code, err)) => {
            assert_ne!(code, 0);
            assert!(
                err.contains(cert.cert()) && err.contains(other_key),
                "names both files: {err}"
            );
            assert!(
                err.to_lowercase().contains("match") || err.contains("do not fit"),
                "says they do not match: {err}"
            );
        }
    }
}

/// A TLS client that vanishes without close_notify (a phone losing signal, a killed app)
/// ended its session as a disconnect, not as a server error in the log.
#[test]
fn a_tls_client_gone_without_close_notify_is_logged_as_disconnected() {
    require_python();
    let (server, cert) = tls_server(USERS, true, &[]);
    let script = r#"
import os, socket, ssl, sys
host, port, cafile = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ctx = ssl.create_default_context(cafile=cafile)
s = ctx.wrap_socket(socket.create_connection((host, port)), server_hostname="localhost")
f = s.makefile("rb")
assert f.readline().startswith(b"+OK")
for line in (b"USER alice\r\n", b"PASS secret\r\n"):
    s.sendall(line)
    assert f.readline().startswith(b"+OK")
os.close(s.detach())
print("vanished")
"#;
    let port = server.tls_addr.unwrap().port().to_string();
    let out = common::python_script(
        &server,
        script,
        &["127.0.0.1", &port, cert.cert()],
        CLIENT_DEADLINE,
        "python3 ssl",
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "vanished");
    assert!(
        server.wait_for_log("session end: user=\"alice\""),
        "{}",
        server.log()
    );
    let log = server.log();
    let end = log
        .lines()
        .find(|l| l.contains("session end: user=\"alice\""))
        .unwrap();
    assert!(end.ends_with("end=disconnected"), "{end}");
}
