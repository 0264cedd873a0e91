//! Shared by the integration tests: the real `pop3d` binary on an ephemeral loopback port
//! over a temporary folder, a raw POP3 client over TCP, and MDA-style delivery.
#![allow(dead_code)] // each test crate uses a different part of this module

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_pop3d");

/// A running `pop3d serve`, killed and cleaned up when dropped.
pub struct Server {
    child: Child,
    /// The plain POP3 listener.
    pub addr: SocketAddr,
    /// The implicit-TLS listener, when started with `--listen-tls 127.0.0.1:0`.
    pub tls_addr: Option<SocketAddr>,
    pub root: tempfile::TempDir,
    log: Arc<Mutex<String>>,
    args: Vec<String>,
}

impl Server {
    /// Starts the daemon with `users` as its users file and Maildirs under `root/mail/%u`.
    pub fn start(users: &str, extra: &[&str]) -> Server {
        let root = tempfile::tempdir().expect("temp dir");
        let users_file = root.path().join("users");
        std::fs::write(&users_file, users).unwrap();
        let template = format!("{}/mail/%u/Maildir", root.path().display());
        Self::start_in(
            root,
            &[
                "--users",
                users_file.to_str().unwrap(),
                "--maildir",
                &template,
            ],
            extra,
        )
    }

    /// Starts the daemon with exactly these arguments after `serve --listen 127.0.0.1:0`.
    pub fn start_in(root: tempfile::TempDir, base: &[&str], extra: &[&str]) -> Server {
        let mut args: Vec<String> = ["serve", "--listen", "127.0.0.1:0"]
            .iter()
            .chain(base)
            .chain(extra)
            .map(|s| s.to_string())
            .collect();
        // Tests are not brute-force attacks: no real pause after a wrong password, unless
        // the test is about that pause.
        if !args.iter().any(|a| a == "--auth-failure-delay") {
            args.extend(["--auth-failure-delay".into(), "10ms".into()]);
        }
        // CI runs as root; the daemon refuses that unless told (or told to switch user).
        if nix::unistd::geteuid().is_root() && !args.iter().any(|a| a == "--user") {
            args.push("--allow-root".into());
        }
        let (child, (addr, tls_addr), log) = spawn(&args);
        Server {
            child,
            addr,
            tls_addr,
            root,
            log,
            args,
        }
    }

    /// Kills the daemon with SIGKILL, as a crash would, and starts it again on the same folder.
    pub fn crash_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (child, (addr, tls_addr), log) = spawn(&self.args);
        self.child = child;
        self.addr = addr;
        self.tls_addr = tls_addr;
        self.log = log;
    }
}

/// The plain and the implicit-TLS address a daemon listens on.
type Listening = (SocketAddr, Option<SocketAddr>);

/// Starts `pop3d ARGS` and waits until it logs "ready", collecting its listeners.
fn spawn(args: &[String]) -> (Child, Listening, Arc<Mutex<String>>) {
    let mut child = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pop3d");
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = log.clone();
    std::thread::spawn(move || {
        let (mut plain, mut tls) = (None, None);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on ").nth(1) {
                let addr: SocketAddr = rest.split_whitespace().next().unwrap().parse().unwrap();
                if rest.contains("implicit TLS") {
                    tls.get_or_insert(addr);
                } else if rest.contains("plain POP3") {
                    plain.get_or_insert(addr);
                }
            }
            if line.ends_with("] ready") {
                let _ = tx.send((plain.expect("a plain listener"), tls));
            }
            let mut log = sink.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    let listening = match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(listening) => listening,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("pop3d did not start: {}", log.lock().unwrap());
        }
    };
    (child, listening, log)
}

impl Server {
    pub fn maildir(&self, user: &str) -> PathBuf {
        self.root.path().join("mail").join(user).join("Maildir")
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.addr)
    }

    /// Logs in as `user` and returns the client after the +OK.
    pub fn login(&self, user: &str, pass: &str) -> Client {
        let mut c = self.connect();
        c.ok(&format!("USER {user}"));
        c.ok(&format!("PASS {pass}"));
        c
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits (bounded) for the log to contain `needle`.
    pub fn wait_for_log(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Waits (bounded) for the log to contain `needle` at least `count` times.
    pub fn wait_for_log_count(&self, needle: &str, count: usize) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.log().matches(needle).count() >= count {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw POP3 client that checks every status line it reads.
pub struct Client {
    pub stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        let mut c = Client { stream, reader };
        let greeting = c.line();
        assert!(greeting.starts_with("+OK"), "greeting: {greeting}");
        c
    }

    pub fn send(&mut self, raw: &[u8]) {
        self.stream.write_all(raw).unwrap();
    }

    /// Reads one line, without its CRLF; "" at end of stream.
    pub fn line(&mut self) -> String {
        let mut buf = Vec::new();
        self.reader.read_until(b'\n', &mut buf).expect("read");
        assert!(
            buf.is_empty() || buf.ends_with(b"\r\n"),
            "line not ended by CRLF: {buf:?}"
        );
        String::from_utf8_lossy(&buf)
            .trim_end_matches("\r\n")
            .to_owned()
    }

    /// Sends a command and returns its status line.
    pub fn cmd(&mut self, command: &str) -> String {
        self.send(format!("{command}\r\n").as_bytes());
        self.line()
    }

    /// Sends a command and asserts +OK.
    pub fn ok(&mut self, command: &str) -> String {
        let reply = self.cmd(command);
        assert!(reply.starts_with("+OK"), "{command}: {reply}");
        reply
    }

    /// Sends a command and asserts -ERR.
    pub fn err(&mut self, command: &str) -> String {
        let reply = self.cmd(command);
        assert!(reply.starts_with("-ERR"), "{command}: {reply}");
        reply
    }

    /// Reads the lines of a multi-line reply up to the terminating ".", still byte-stuffed.
    pub fn multiline(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let line = self.line();
            if line == "." {
                return lines;
            }
            assert!(
                !line.is_empty() || lines.len() < 10_000_000,
                "stream ended in a multi-line reply"
            );
            lines.push(line);
        }
    }

    /// RETR or TOP: the message as sent, de-stuffed, with CRLF line ends.
    pub fn fetch(&mut self, command: &str) -> Vec<u8> {
        self.ok(command);
        let mut body = Vec::new();
        loop {
            let mut buf = Vec::new();
            let n = self.reader.read_until(b'\n', &mut buf).expect("read");
            assert!(n > 0, "stream ended inside {command}");
            assert!(
                buf.ends_with(b"\r\n"),
                "{command}: line without CRLF: {buf:?}"
            );
            if buf == b".\r\n" {
                return body;
            }
            let line = if buf.starts_with(b"..") {
                &buf[1..]
            } else {
                &buf[..]
            };
            body.extend_from_slice(line);
        }
    }

    /// Reads until the server closes; what it sent meanwhile.
    pub fn read_to_end(&mut self) -> Vec<u8> {
        let mut rest = Vec::new();
        let _ = self.reader.read_to_end(&mut rest);
        rest
    }
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Delivers a message as an MDA does: written in tmp/, then renamed into new/. `time` is the
/// delivery second at the start of the unique name, which orders the listing.
pub fn deliver(maildir: &Path, time: u64, body: &[u8]) -> String {
    for sub in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(maildir.join(sub)).unwrap();
    }
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!("{time}.P{}Q{n}.testhost", std::process::id());
    let tmp = maildir.join("tmp").join(&name);
    std::fs::write(&tmp, body).unwrap();
    std::fs::rename(&tmp, maildir.join("new").join(&name)).unwrap();
    name
}

/// The same message with CRLF line ends (and a completed last line), as RETR sends it.
pub fn crlf(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 64);
    let mut prev = 0u8;
    for &b in body {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        if out.ends_with(b"\r") {
            out.push(b'\n');
        } else {
            out.extend_from_slice(b"\r\n");
        }
    }
    out
}

/// Every message file in new/ and cur/, by unique name (without flags).
pub fn messages_on_disk(maildir: &Path) -> Vec<String> {
    let mut names = Vec::new();
    for sub in ["new", "cur"] {
        if let Ok(dir) = std::fs::read_dir(maildir.join(sub)) {
            for entry in dir {
                let name = entry.unwrap().file_name().into_string().unwrap();
                names.push(name.split(':').next().unwrap().to_owned());
            }
        }
    }
    names.sort();
    names
}

/// Reads a whole message file by unique name, wherever it is now.
pub fn read_message(maildir: &Path, unique: &str) -> Option<Vec<u8>> {
    for sub in ["new", "cur"] {
        for entry in std::fs::read_dir(maildir.join(sub)).ok()? {
            let entry = entry.ok()?;
            let name = entry.file_name().into_string().ok()?;
            if name.split(':').next() == Some(unique) {
                let mut data = Vec::new();
                std::fs::File::open(entry.path())
                    .ok()?
                    .read_to_end(&mut data)
                    .ok()?;
                return Some(data);
            }
        }
    }
    None
}

impl Server {
    /// The daemon's process id, to send it signals (SIGHUP reloads).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Server {
    /// Waits (bounded) for the daemon to exit by itself, as after SIGTERM: its exit status,
    /// or None if it is still running once `limit` has passed.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

// ---------------------------------------------------------------------------------------
// For tests that drive real client programs (tests/matrix.rs): bounded subprocesses, a
// certificate made with the openssl CLI, byte comparisons, line ends and generated mail.
// ---------------------------------------------------------------------------------------

/// Runs `cmd` to completion with `input` on its standard input. Kills it and panics once it
/// has run for `limit`; a program that cannot be started panics with the `apt-get install`
/// that brings it (`package`).
pub fn run_with_limit(
    cmd: &mut Command,
    input: &[u8],
    limit: Duration,
    package: &str,
) -> std::process::Output {
    let program = cmd.get_program().to_string_lossy().into_owned();
    run_bounded_as(cmd, input, limit, &program, package)
}

/// Runs `cmd` to completion with `input` on its standard input, killing it (and failing,
/// naming `what`) once it has run for `limit`. A program that cannot be started fails with
/// an `apt-get install` of the package of the same name.
pub fn run_bounded(
    cmd: &mut Command,
    input: &[u8],
    limit: Duration,
    what: &str,
) -> std::process::Output {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let package = package_of(&program).to_owned();
    run_bounded_as(cmd, input, limit, what, &package)
}

/// What to `apt-get install` for a program.
pub fn package_of(program: &str) -> &str {
    match program.rsplit('/').next().unwrap_or(program) {
        "kill" => "procps",
        name => name,
    }
}

/// [`run_bounded`] with the package to install named explicitly.
pub fn run_bounded_as(
    cmd: &mut Command,
    input: &[u8],
    limit: Duration,
    what: &str,
    package: &str,
) -> std::process::Output {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{what}: cannot run {program} ({e}): apt-get install -y {package}")
        });
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    // Writing and reading on threads of their own: a client that talks a lot before it
    // reads all its input must not dead-lock with us.
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let collect = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = pipe.read_to_end(&mut v);
            v
        })
    };
    let out = collect(Box::new(child.stdout.take().unwrap()));
    let err = collect(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait().expect("wait for a client process") {
            Some(status) => break status,
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what}: {program} still running after {limit:?}: killed");
            }
        }
    };
    let _ = feeder.join();
    std::process::Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// A byte-exact comparison that prints something readable when it fails.
#[track_caller]
pub fn assert_bytes(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let at = got
            .iter()
            .zip(want)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        let from = at.saturating_sub(40);
        panic!(
            "{what}: {} octets, expected {}; first difference at {at}:\n got  {:?}\n want {:?}",
            got.len(),
            want.len(),
            String::from_utf8_lossy(&got[from..(at + 40).min(got.len())]),
            String::from_utf8_lossy(&want[from..(at + 40).min(want.len())]),
        );
    }
}

/// Fails, naming the package to `apt-get install`, unless `program args` runs and exits 0.
/// Returns what it printed.
pub fn require_program(program: &str, args: &[&str], package: &str) -> String {
    let out = run_with_limit(
        Command::new(program).args(args),
        b"",
        Duration::from_secs(60),
        package,
    );
    let text = text_of(&out);
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}): {text}\napt-get install -y {package}",
        out.status
    );
    text
}

/// CRLF line ends to LF (as clients that deliver to a Maildir or an MDA store messages).
pub fn lf(wire: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(wire.len());
    for (i, &b) in wire.iter().enumerate() {
        if !(b == b'\r' && wire.get(i + 1) == Some(&b'\n')) {
            out.push(b);
        }
    }
    out
}

/// None when equal; otherwise both lengths and the text around the first difference.
pub fn first_difference(got: &[u8], want: &[u8]) -> Option<String> {
    if got == want {
        return None;
    }
    let at = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let from = at.saturating_sub(30);
    Some(format!(
        "{} octets, expected {}; first difference at {at}: got {:?}, want {:?}",
        got.len(),
        want.len(),
        String::from_utf8_lossy(&got[from..(at + 30).min(got.len())]),
        String::from_utf8_lossy(&want[from..(at + 30).min(want.len())]),
    ))
}

/// A self-signed ECDSA P-256 certificate for localhost and 127.0.0.1 with its PKCS#8 key
/// (which both TLS backends load), made by the openssl CLI in a folder removed on drop.
pub struct TestCert {
    pub dir: tempfile::TempDir,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCert {
    pub fn new() -> TestCert {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("server.crt");
        let key = dir.path().join("server.key");
        let (c, k) = (cert.to_str().unwrap(), key.to_str().unwrap());
        require_program(
            "openssl",
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                k,
                "-out",
                c,
                "-days",
                "2",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=DNS:localhost,IP:127.0.0.1",
            ],
            "openssl",
        );
        TestCert { dir, cert, key }
    }

    pub fn cert(&self) -> &str {
        self.cert.to_str().unwrap()
    }

    pub fn key(&self) -> &str {
        self.key.to_str().unwrap()
    }
}

/// Makes a self-signed RSA certificate for `cn` (valid for localhost and 127.0.0.1) with a
/// PKCS#8 key, as `DIR/NAME.crt` and `DIR/NAME.key`, with the openssl CLI.
#[track_caller]
pub fn make_rsa_cert(dir: &Path, name: &str, cn: &str) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    require_program(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
            "-days",
            "2",
            "-subj",
            &format!("/CN={cn}"),
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        "openssl",
    );
    let pem = std::fs::read_to_string(&key).unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8");
    (cert, key)
}

/// xorshift64, seeded: reproducible choices and garbage.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// `n` bytes, each from the high half of a step.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| (self.next() >> 32) as u8).collect()
    }
}

/// A multipart/mixed message with a text part and a base64 attachment of `attachment`
/// (in lines of 76 characters), LF line ends.
pub fn multipart_with_attachment(attachment: &[u8]) -> Vec<u8> {
    let mut m = b"From: Alice <alice@example.org>\n\
To: Bob <bob@example.org>\n\
Subject: multipart with a big attachment\n\
Message-ID: <multipart@example.org>\n\
MIME-Version: 1.0\n\
Content-Type: multipart/mixed; boundary=\"=-=boundary=-=\"\n\
\n\
This is a multi-part message in MIME format.\n\
\n\
--=-=boundary=-=\n\
Content-Type: text/plain; charset=us-ascii\n\
\n\
The attachment follows.\n\
.\n\
\n\
--=-=boundary=-=\n\
Content-Type: application/octet-stream; name=\"blob.bin\"\n\
Content-Transfer-Encoding: base64\n\
Content-Disposition: attachment; filename=\"blob.bin\"\n\
\n"
    .to_vec();
    m.extend_from_slice(&base64_lines(attachment));
    m.extend_from_slice(b"\n--=-=boundary=-=--\n");
    m
}

/// Standard output and standard error together, as text.
pub fn text_of(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The contents of the files in `dir`, in the order of their names.
pub fn files_in(dir: &Path) -> Vec<Vec<u8>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    paths.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// `openssl s_client` to `addr` for the name localhost, verifying the certificate against
/// `cafile` (a failed verification ends the connection). Add options, then run it.
pub fn s_client_command(addr: SocketAddr, cafile: &str) -> Command {
    let mut cmd = Command::new("openssl");
    cmd.args([
        "s_client",
        "-connect",
        &addr.to_string(),
        "-servername",
        "localhost",
    ])
    .args(["-CAfile", cafile, "-verify_hostname", "localhost"])
    .arg("-verify_return_error");
    cmd
}

/// Runs `python3 -c SCRIPT ARGS...` against `server`, bounded by `limit`, and fails unless
/// it succeeds, showing what it printed and the daemon's log.
#[track_caller]
pub fn python_script(
    server: &Server,
    script: &str,
    args: &[&str],
    limit: Duration,
    what: &str,
) -> std::process::Output {
    let out = run_bounded(
        Command::new("python3").arg("-c").arg(script).args(args),
        b"",
        limit,
        what,
    );
    assert!(
        out.status.success(),
        "{what} {args:?} failed ({}): {}\nstdout: {}\nserver log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout),
        server.log()
    );
    out
}

/// `key value` lines (as the python scripts print them) split at the first space.
pub fn key_value_lines(stdout: &[u8]) -> Vec<(String, String)> {
    std::str::from_utf8(stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (k, v) = l.split_once(' ').unwrap_or((l, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// Deterministic pseudo-random bytes (a 64-bit LCG, top byte of each step).
pub fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 56) as u8
        })
        .collect()
}

/// Standard base64 with padding in lines of 76 characters, each ended by LF (RFC 2045).
pub fn base64_lines(data: &[u8]) -> Vec<u8> {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(data);
    let mut out = Vec::with_capacity(encoded.len() + encoded.len() / 76 + 1);
    for line in encoded.as_bytes().chunks(76) {
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out
}

/// Puts a message straight into cur/ with these Maildir flags (`"S"`, `"FR"`), as an IMAP
/// server that has seen it would. Returns its unique name.
pub fn deliver_to_cur(maildir: &Path, time: u64, flags: &str, body: &[u8]) -> String {
    for sub in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(maildir.join(sub)).unwrap();
    }
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!("{time}.P{}Q{n}.testhost", std::process::id());
    let tmp = maildir.join("tmp").join(&name);
    std::fs::write(&tmp, body).unwrap();
    std::fs::rename(&tmp, maildir.join("cur").join(format!("{name}:2,{flags}"))).unwrap();
    name
}

/// Splits the first `names.len()` header fields off a message, checking that they are these
/// fields in this order (case-insensitive names; continuation lines belong to their field).
/// Returns the fields, as they were, and the rest of the message.
pub fn split_leading_fields<'a>(
    message: &'a [u8],
    names: &[&str],
) -> Result<(Vec<String>, &'a [u8]), String> {
    let mut rest = message;
    let mut fields = Vec::new();
    for name in names {
        let prefix = format!("{}:", name.to_ascii_lowercase());
        if !rest.to_ascii_lowercase().starts_with(prefix.as_bytes()) {
            return Err(format!(
                "expected a {name}: field here, found {:?}",
                String::from_utf8_lossy(&rest[..rest.len().min(80)])
            ));
        }
        let mut end = 0;
        loop {
            let Some(nl) = rest[end..].iter().position(|&b| b == b'\n') else {
                return Err(format!("the {name}: field does not end"));
            };
            end += nl + 1;
            if !matches!(rest.get(end), Some(b' ' | b'\t')) {
                break;
            }
        }
        fields.push(String::from_utf8_lossy(&rest[..end]).into_owned());
        rest = &rest[end..];
    }
    Ok((fields, rest))
}

/// Sets new/ and cur/ back in time, as if nothing had changed there for a while: the server
/// then keeps the listing it reads in memory (it waits for a second of quiet before it does).
pub fn settle(maildir: &Path) {
    for sub in ["new", "cur"] {
        let folder = std::fs::File::open(maildir.join(sub)).unwrap();
        folder
            .set_modified(std::time::SystemTime::now() - Duration::from_secs(10))
            .unwrap();
    }
}
