//! Operations, against the real binary on loopback: SIGTERM (idle sessions told goodbye,
//! busy ones given the grace period, no pending deletion applied), SIGHUP reloads of the
//! users file and the config file (a broken one is kept out), the privilege drop and the
//! refusal to serve as root, `pop3d check`, the OpenMetrics endpoint, the journald log
//! format, systemd socket activation and sd_notify.
//!
//! Needs `openssl` (certificates for `pop3d check` and a TLS socket) and `systemd`
//! (`systemd-socket-activate`): `apt-get install -y openssl systemd`. A missing one fails
//! the test that needs it. The privilege tests need root (as CI runs); as another user they
//! say so on standard error and return.

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, User, geteuid};

use common::{BIN, Client, Server, crlf, deliver, messages_on_disk, read_message, settle};

const USERS: &str = "alice:{PLAIN}secret::::::\n";
/// The grace period the SIGTERM tests give busy sessions.
const GRACE: Duration = Duration::from_secs(2);
/// The grace period under load: the held clients of that test need a fraction of it.
const LOAD_GRACE: Duration = Duration::from_secs(4);
/// Beyond the grace period: what a daemon may take to notice, log and exit.
const EXIT_SLACK: Duration = Duration::from_secs(5);
/// The goodbye a session waiting for a command gets on SIGTERM.
const GOODBYE: &str = "-ERR [SYS/TEMP] Server is shutting down";

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn signal(pid: u32, sig: Signal) {
    let raw = i32::try_from(pid).expect("a pid fits in i32");
    kill(Pid::from_raw(raw), sig).unwrap_or_else(|e| panic!("kill -{sig} {pid}: {e}"));
}

/// Polls `done` every 20 ms until it holds or `limit` has passed; whether it held.
fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (bounded) until `needle` occurs at least `n` times in the server's log.
#[track_caller]
fn wait_for_count(server: &Server, needle: &str, n: usize) {
    assert!(
        wait_until(Duration::from_secs(10), || server
            .log()
            .matches(needle)
            .count()
            >= n),
        "{needle:?} not logged {n} times:\n{}",
        server.log()
    );
}

/// The last non-empty line of a log.
fn last_line(log: &str) -> &str {
    log.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
}

/// Sends SIGTERM and waits for the daemon's exit: its status and how long it took.
#[track_caller]
fn terminate(server: &mut Server) -> (ExitStatus, Duration) {
    let sent = Instant::now();
    signal(server.pid(), Signal::SIGTERM);
    let status = server.wait_exit(GRACE + EXIT_SLACK).unwrap_or_else(|| {
        panic!(
            "pop3d still running {:?} after SIGTERM:\n{}",
            GRACE + EXIT_SLACK,
            server.log()
        )
    });
    (status, sent.elapsed())
}

/// After the daemon exited: its log, once the reader has caught up with "stopped", which
/// must be the last line.
#[track_caller]
fn assert_stopped_last(server: &Server) -> String {
    assert!(
        server.wait_for_log("] stopped"),
        "no \"stopped\" in the log:\n{}",
        server.log()
    );
    let log = server.log();
    assert!(
        last_line(&log).ends_with("] stopped"),
        "the log does not end with \"stopped\":\n{log}"
    );
    log
}

/// A process started directly (with an environment or a wrapper the harness does not give),
/// its standard output and error collected as they come; killed when dropped.
struct Daemon {
    child: Child,
    stderr: Arc<Mutex<String>>,
    stdout: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl Daemon {
    fn spawn(cmd: &mut Command) -> Daemon {
        Self::spawn_with_input(cmd, None)
    }

    /// Starts `cmd` with `input` (then end of file) as its standard input, if given.
    fn spawn_with_input(cmd: &mut Command, input: Option<&[u8]>) -> Daemon {
        let mut child = cmd
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
            let input = input.to_vec();
            std::thread::spawn(move || {
                let _ = stdin.write_all(&input);
            });
        }
        let (stderr, err_reader) = collect(child.stderr.take().unwrap());
        let (stdout, out_reader) = collect(child.stdout.take().unwrap());
        Daemon {
            child,
            stderr,
            stdout,
            readers: vec![err_reader, out_reader],
        }
    }

    /// Standard error so far.
    fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// Waits (bounded) for standard error to contain `needle`.
    fn wait_for_log(&self, needle: &str) -> bool {
        wait_until(Duration::from_secs(10), || self.log().contains(needle))
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (bounded) for the process to exit, then for its output to be read to the end.
    fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                break status;
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        // The pipes close with the process (unless it left a child holding them).
        wait_until(Duration::from_secs(5), || {
            self.readers.iter().all(JoinHandle::is_finished)
        });
        Some(status)
    }

    /// The address of the first `listening on ADDR (KIND` line.
    #[track_caller]
    fn listening(&self, kind: &str) -> SocketAddr {
        let marker = format!(" ({kind}");
        let mut found = None;
        wait_until(Duration::from_secs(10), || {
            found = self.log().lines().find_map(|line| {
                let rest = line.split("listening on ").nth(1)?;
                rest.contains(&marker)
                    .then(|| rest.split_whitespace().next()?.parse().ok())?
            });
            found.is_some()
        });
        found.unwrap_or_else(|| panic!("no \"listening on ... ({kind}\" line:\n{}", self.log()))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect(from: impl Read + Send + 'static) -> (Arc<Mutex<String>>, JoinHandle<()>) {
    let sink = Arc::new(Mutex::new(String::new()));
    let writer = sink.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            let mut text = writer.lock().unwrap();
            text.push_str(&line);
            text.push('\n');
        }
    });
    (sink, reader)
}

/// Runs a command that must end by itself within 20 s: (status, stdout, stderr).
#[track_caller]
fn run(cmd: &mut Command) -> (ExitStatus, String, String) {
    run_with_input(cmd, None)
}

#[track_caller]
fn run_with_input(cmd: &mut Command, input: Option<&[u8]>) -> (ExitStatus, String, String) {
    let what = format!("{cmd:?}");
    let mut process = Daemon::spawn_with_input(cmd, input);
    let status = process
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("{what} still running after 20 s:\n{}", process.log()));
    (status, process.stdout(), process.log())
}

/// `pop3d serve` arguments for a daemon on an ephemeral loopback port over `root`, as the
/// harness gives them, for daemons started directly.
fn serve_args(root: &Path) -> Vec<String> {
    let users = root.join("users");
    if !users.exists() {
        std::fs::write(&users, USERS).unwrap();
    }
    vec![
        "serve".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--users".into(),
        users.display().to_string(),
        "--maildir".into(),
        format!("{}/mail/%u/Maildir", root.display()),
        "--auth-failure-delay".into(),
        "10ms".into(),
        "--allow-root".into(),
    ]
}

/// `daemon` as systemd starts it with StandardError=journal: JOURNAL_STREAM names the
/// device and inode of its standard error (here the test's pipe), set by a shell just
/// before it execs the daemon, so the PID stays the daemon's.
fn under_journal(daemon: &Command) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) exec "$0" "$@""#)
        .arg(daemon.get_program())
        .args(daemon.get_args());
    for (key, value) in daemon.get_envs() {
        match value {
            Some(value) => cmd.env(key, value),
            None => cmd.env_remove(key),
        };
    }
    cmd
}

/// The daemon binary with `args`, logging at info unless told otherwise, with none of the
/// systemd variables the test process might carry.
fn pop3d(args: &[String]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("RUST_LOG", "info")
        .env_remove("JOURNAL_STREAM")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID");
    cmd
}

/// Waits for a started daemon's "ready" line, in either log format.
#[track_caller]
fn wait_ready(daemon: &Daemon) {
    assert!(
        wait_until(Duration::from_secs(20), || daemon
            .log()
            .lines()
            .any(|l| l.ends_with("] ready") || l.ends_with(">ready"))),
        "pop3d did not start:\n{}",
        daemon.log()
    );
}

/// A self-signed certificate for localhost with its PKCS#8 key: `DIR/NAME.crt`, `DIR/NAME.key`.
fn make_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    common::make_rsa_cert(dir, name, "localhost")
}

// ---------------------------------------------------------------------------------------
// SIGTERM
// ---------------------------------------------------------------------------------------

#[test]
fn sigterm_says_goodbye_to_idle_sessions_and_applies_no_pending_deletion() {
    let mut server = Server::start(USERS, &["--shutdown-grace", "2s"]);
    let maildir = server.maildir("alice");
    let names: Vec<String> = (0..3)
        .map(|i| deliver(&maildir, 1_700_000_000 + i, b"Subject: x\n\nbody\n"))
        .collect();
    let mut session = server.login("alice", "secret");
    session.ok("DELE 1");
    session.ok("DELE 2");
    // A connection that has not logged in yet is told goodbye as well.
    let mut greeted = server.connect();

    let (status, took) = terminate(&mut server);

    let reply = session.line();
    assert!(
        reply.starts_with(GOODBYE),
        "a logged-in session waiting for a command, on SIGTERM: {reply:?}"
    );
    assert_eq!(session.read_to_end(), b"", "the connection closes after it");
    let reply = greeted.line();
    assert!(reply.starts_with(GOODBYE), "before login: {reply:?}");
    assert_eq!(greeted.read_to_end(), b"");
    assert!(status.success(), "exit status after SIGTERM: {status}");
    assert!(
        took < GRACE,
        "idle sessions must not hold the daemon for the grace period: exited after {took:?}"
    );
    let mut expected = names.clone();
    expected.sort();
    assert_eq!(
        messages_on_disk(&maildir),
        expected,
        "no QUIT came, so DELE 1 and DELE 2 must not be applied"
    );
    let log = assert_stopped_last(&server);
    assert!(log.contains("shutting down (signal 15)"), "{log}");
    assert!(
        log.contains("marked=2 applied=0 end=shutdown"),
        "the session's end line: {log}"
    );
    assert!(
        !log.contains("still busy"),
        "idle sessions are not busy ones: {log}"
    );
}

#[test]
fn sigterm_after_quit_keeps_what_quit_deleted() {
    let mut server = Server::start(USERS, &["--shutdown-grace", "2s"]);
    let maildir = server.maildir("alice");
    let names: Vec<String> = (0..3)
        .map(|i| deliver(&maildir, 1_700_000_000 + i, b"Subject: x\n\nbody\n"))
        .collect();
    let mut session = server.login("alice", "secret");
    session.ok("DELE 1");
    session.ok("DELE 3");
    session.ok("QUIT");
    assert_eq!(session.read_to_end(), b"");
    assert!(server.wait_for_log("end=quit"), "{}", server.log());

    let (status, _) = terminate(&mut server);

    assert!(status.success(), "exit status after SIGTERM: {status}");
    assert_eq!(messages_on_disk(&maildir), vec![names[1].clone()]);
    let log = assert_stopped_last(&server);
    assert!(log.contains("marked=2 applied=2 end=quit"), "{log}");
}

/// A message of about `size` octets with LF line ends (some CRLF), lines that start with a
/// dot (stuffed on the wire), lone-dot lines and empty lines; the same for the same seed.
fn big_message(seed: u64, size: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut out = format!("Subject: big {seed}\nFrom: load@example.com\n\n").into_bytes();
    while out.len() < size {
        let r = next();
        match r % 16 {
            0 => out.extend_from_slice(b".\n"),
            1 => out.extend_from_slice(b"..double dot\n"),
            2 => out.extend_from_slice(b"\n"),
            3 => out.extend_from_slice(b".leading dot, CRLF\r\n"),
            _ => {
                let len = (r >> 8) as usize % 120;
                out.extend((0..len).map(|i| b'a' + ((r >> (i % 50)) % 26) as u8));
                out.push(b'\n');
            }
        }
    }
    out
}

/// The octets RETR sends after its status line: CRLF lines, dot-stuffed, then ".".
fn wire_body(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 20 + 3);
    for line in crlf(message).split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// A client connection that reads 8 KiB per 10 ms until `go` is set, then as fast as it can.
struct Wire {
    stream: TcpStream,
    buf: Vec<u8>,
    go: Arc<AtomicBool>,
    received: Arc<AtomicUsize>,
}

impl Wire {
    /// Reads more; false at the end of the stream (or a reset: the peer went away).
    fn more(&mut self) -> bool {
        let chunk = if !self.go.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
            8 * 1024
        } else {
            256 * 1024
        };
        let mut tmp = vec![0u8; chunk];
        match self.stream.read(&mut tmp) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                self.received.fetch_add(n, Ordering::SeqCst);
                true
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => false,
            Err(e) => panic!("read: {e}"),
        }
    }

    /// A line with its CRLF, or what came before the stream ended.
    fn line(&mut self) -> Result<Vec<u8>, Vec<u8>> {
        let mut searched = 0;
        loop {
            if let Some(i) = self.buf[searched..].iter().position(|&b| b == b'\n') {
                return Ok(self.buf.drain(..searched + i + 1).collect());
            }
            searched = self.buf.len();
            if !self.more() {
                return Err(std::mem::take(&mut self.buf));
            }
        }
    }

    /// Exactly `n` octets, or what came before the stream ended.
    fn take(&mut self, n: usize) -> Result<Vec<u8>, Vec<u8>> {
        while self.buf.len() < n {
            if !self.more() {
                return Err(std::mem::take(&mut self.buf));
            }
        }
        Ok(self.buf.drain(..n).collect())
    }
}

/// How a client of the SIGTERM-under-load test ended.
#[derive(Debug, PartialEq)]
enum Ending {
    /// The goodbye, then the close: the client had nothing in progress.
    Goodbye,
    /// The connection closed between replies.
    Closed,
    /// The connection closed inside a reply, at the end of the grace period.
    Cut,
}

#[derive(Clone, Copy, Debug)]
enum Cmd {
    Retr(usize),
    Dele(usize),
}

/// Where the first difference is, for a readable failure.
#[track_caller]
fn assert_same(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let at = got
            .iter()
            .zip(want)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        panic!(
            "{what}: {} octets, expected {}; first difference at {at}: got {:?}, expected {:?}",
            got.len(),
            want.len(),
            String::from_utf8_lossy(&got[at..got.len().min(at + 40)]),
            String::from_utf8_lossy(&want[at..want.len().min(at + 40)]),
        );
    }
}

/// Logs in, pipelines `commands`, and reads every reply, checking each octet; returns how
/// many messages came whole, and how the connection ended.
fn load_client(
    login: &str,
    commands: &[Cmd],
    messages: &[(Vec<u8>, Vec<u8>)],
    mut wire: Wire,
) -> (usize, Ending) {
    let who = login.to_owned();
    let mut greeting_and_login = |command: Option<String>| {
        if let Some(command) = command {
            wire.stream.write_all(command.as_bytes()).unwrap();
        }
        let line = wire.line().expect("the daemon is up during login");
        assert!(line.starts_with(b"+OK"), "{who}: {line:?}");
    };
    greeting_and_login(None);
    greeting_and_login(Some(format!("USER {login}\r\n")));
    greeting_and_login(Some("PASS pw\r\n".into()));
    let mut pipelined = String::new();
    for command in commands {
        match command {
            Cmd::Retr(k) => pipelined.push_str(&format!("RETR {k}\r\n")),
            Cmd::Dele(k) => pipelined.push_str(&format!("DELE {k}\r\n")),
        }
    }
    wire.stream.write_all(pipelined.as_bytes()).unwrap();
    let goodbye_or_close = |wire: &mut Wire, first: Result<Vec<u8>, Vec<u8>>| -> Ending {
        match first {
            Ok(line) if line.starts_with(GOODBYE.as_bytes()) => {
                let rest = wire.line();
                assert_eq!(rest, Err(vec![]), "{login}: after the goodbye");
                Ending::Goodbye
            }
            Ok(line) => panic!("{login}: unexpected {:?}", String::from_utf8_lossy(&line)),
            Err(partial) if partial.is_empty() => Ending::Closed,
            Err(partial) => {
                assert!(
                    GOODBYE.as_bytes().starts_with(&partial),
                    "{login}: stream ended in {partial:?}"
                );
                Ending::Cut
            }
        }
    };
    let mut complete = 0;
    for &command in commands {
        let status = wire.line();
        if let Ok(line) = &status
            && line.starts_with(GOODBYE.as_bytes())
        {
            return (complete, goodbye_or_close(&mut wire, status));
        }
        match command {
            Cmd::Dele(_) => match status {
                Ok(line) => assert!(line.starts_with(b"+OK"), "{login}: DELE: {line:?}"),
                other => return (complete, goodbye_or_close(&mut wire, other)),
            },
            Cmd::Retr(k) => {
                let (message, body) = &messages[k - 1];
                let expected_status = format!("+OK {} octets\r\n", crlf(message).len());
                match status {
                    Ok(line) => assert_same(&line, expected_status.as_bytes(), login),
                    Err(partial) if partial.is_empty() => return (complete, Ending::Closed),
                    Err(partial) => {
                        assert!(
                            expected_status.as_bytes().starts_with(&partial),
                            "{login}: stream ended in {partial:?}"
                        );
                        return (complete, Ending::Cut);
                    }
                }
                match wire.take(body.len()) {
                    Ok(got) => {
                        assert_same(&got, body, &format!("{login}: RETR {k}"));
                        complete += 1;
                    }
                    Err(partial) => {
                        assert_same(
                            &partial,
                            &body[..partial.len()],
                            &format!("{login}: the part of RETR {k} that came"),
                        );
                        return (complete, Ending::Cut);
                    }
                }
            }
        }
    }
    let next = wire.line();
    (complete, goodbye_or_close(&mut wire, next))
}

#[test]
fn sigterm_during_many_retrs_never_garbles_a_reply_or_touches_a_message() {
    // 4 delete-mode users with a mailbox each, and 4 keep-mode devices sharing alice's.
    let mut users = String::from("alice:{PLAIN}pw::::::\n");
    for i in 0..4 {
        users.push_str(&format!("u{i}:{{PLAIN}}pw::::::\n"));
    }
    let mut server = Server::start(&users, &["--shutdown-grace", "4s"]);
    let sizes = [64 * 1024, 1 << 20, 2 << 20, 5 << 20, 3 << 20];
    let messages: Arc<Vec<(Vec<u8>, Vec<u8>)>> = Arc::new(
        sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| {
                let message = big_message(i as u64 + 1, size);
                let body = wire_body(&message);
                (message, body)
            })
            .collect(),
    );
    let mailboxes = ["u0", "u1", "u2", "u3", "alice"];
    let mut stored = Vec::new();
    for user in mailboxes {
        let maildir = server.maildir(user);
        for (i, (message, _)) in messages.iter().enumerate() {
            let name = deliver(&maildir, 1_700_000_000 + i as u64, message);
            stored.push((maildir.clone(), name, i));
        }
    }

    // Every client reads slowly at first. The "held" ones speed up at SIGTERM: they are in
    // the middle of a reply then, and must get it, and the rest they pipelined, whole. The
    // slow ones asked for more than they can read within the grace period, and speed up only
    // once the daemon is gone: they must see a correct beginning, then the close.
    let term_sent = Arc::new(AtomicBool::new(false));
    let gone = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    let mut received = Vec::new();
    for i in 0..8 {
        let login = if i < 4 {
            format!("u{i}")
        } else {
            format!("alice+dev{i}")
        };
        // Every client pipelines a DELE (never applied: no QUIT comes) and RETRs.
        let slow = i % 2 == 1;
        let mut commands = vec![Cmd::Dele(1)];
        for _ in 0..if slow { 3 } else { 1 } {
            commands.extend((2..=sizes.len()).map(Cmd::Retr));
        }
        let stream = TcpStream::connect(server.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let counter = Arc::new(AtomicUsize::new(0));
        received.push(counter.clone());
        let wire = Wire {
            stream,
            buf: Vec::new(),
            go: if slow {
                gone.clone()
            } else {
                term_sent.clone()
            },
            received: counter,
        };
        let messages = messages.clone();
        clients.push(std::thread::spawn(move || {
            let ending = load_client(&login, &commands, &messages, wire);
            (login, slow, ending, Instant::now())
        }));
    }
    // SIGTERM once every client is into its replies.
    assert!(
        wait_until(Duration::from_secs(60), || received
            .iter()
            .all(|r| r.load(Ordering::SeqCst) > 256 * 1024)),
        "the clients did not get going: {:?}",
        received
            .iter()
            .map(|r| r.load(Ordering::SeqCst))
            .collect::<Vec<_>>()
    );
    let sent = Instant::now();
    signal(server.pid(), Signal::SIGTERM);
    term_sent.store(true, Ordering::SeqCst);
    // Every client was in the middle of its replies: far from all of them had come.
    let one_round: usize = messages[1..].iter().map(|(_, body)| body.len()).sum();
    for (i, counter) in received.iter().enumerate() {
        let got = counter.load(Ordering::SeqCst);
        assert!(
            got < one_round / 2,
            "client {i} had {got} octets at SIGTERM"
        );
    }
    let status = server.wait_exit(LOAD_GRACE + EXIT_SLACK);
    let took = sent.elapsed();
    gone.store(true, Ordering::SeqCst);
    let status = status.unwrap_or_else(|| panic!("still running after SIGTERM:\n{}", server.log()));

    let mut endings = Vec::new();
    for client in clients {
        match client.join() {
            Ok(ending) => endings.push(ending),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
    assert!(status.success(), "exit status after SIGTERM: {status}");
    assert!(
        took >= LOAD_GRACE - Duration::from_millis(200) && took <= LOAD_GRACE + EXIT_SLACK,
        "busy sessions get the grace period and no more, but the daemon exited after {took:?}"
    );
    let log = assert_stopped_last(&server);
    for (login, slow, (complete, ending), at) in &endings {
        eprintln!(
            "{login}: {complete} whole messages, then {ending:?}, {:?} after SIGTERM",
            at.saturating_duration_since(sent)
        );
        if *slow {
            assert_eq!(
                *ending,
                Ending::Cut,
                "{login} was still reading past the grace period"
            );
        } else {
            assert_eq!(
                (*complete, ending),
                (sizes.len() - 1, &Ending::Goodbye),
                "{login} was in the middle of its replies at SIGTERM and read on at once: \
                 it gets them all, then the goodbye"
            );
        }
    }
    assert!(
        log.contains("4 sessions still busy after 4s"),
        "the sessions cut at the end of the grace period are logged: {log}"
    );
    for (maildir, name, i) in &stored {
        let on_disk = read_message(maildir, name)
            .unwrap_or_else(|| panic!("{name} is gone from {}", maildir.display()));
        assert_same(&on_disk, &messages[*i].0, name);
    }
    for user in mailboxes {
        assert_eq!(
            messages_on_disk(&server.maildir(user)).len(),
            sizes.len(),
            "{user}: no message removed, none added"
        );
    }
}

// ---------------------------------------------------------------------------------------
// SIGHUP
// ---------------------------------------------------------------------------------------

/// `pop3d hash-password` as an administrator runs it: the users-file field for `password`.
fn hash_password(password: &str) -> String {
    let mut child = Command::new(BIN)
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(format!("{password}\n").as_bytes()).unwrap();
    drop(stdin);
    assert!(
        wait_until(Duration::from_secs(20), || matches!(
            child.try_wait(),
            Ok(Some(_))
        )),
        "hash-password did not finish"
    );
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(child.wait().unwrap().success(), "hash-password: {out}");
    out.trim().to_owned()
}

/// USER/PASS on a new connection: the reply to PASS.
fn try_login(server: &Server, user: &str, pass: &str) -> String {
    let mut c = server.connect();
    c.ok(&format!("USER {user}"));
    c.cmd(&format!("PASS {pass}"))
}

#[test]
fn sighup_reloads_the_users_file_and_open_sessions_go_on() {
    // Keep mode, so alice's new login shares the mailbox with the session already open.
    let mut server = Server::start(
        "alice:{PLAIN}old::::::\nbob:{PLAIN}bob::::::\n",
        &["--mode", "keep"],
    );
    let maildir = server.maildir("alice");
    let first = b"Subject: one\n\nfirst\n".to_vec();
    deliver(&maildir, 1_700_000_000, &first);
    deliver(&maildir, 1_700_000_001, b"Subject: two\n\nsecond\n");
    let mut before = server.login("alice", "old");
    let stat = before.ok("STAT");

    let users = server.root.path().join("users");
    let hashed = hash_password("n3w pass");
    assert!(hashed.starts_with("{SHA512-CRYPT}$6$"), "{hashed}");
    std::fs::write(
        &users,
        format!("alice:{hashed}::::::\ncarol:{{PLAIN}}carol::::::\n"),
    )
    .unwrap();
    signal(server.pid(), Signal::SIGHUP);
    wait_for_count(&server, "reloaded 2 users from", 1);

    let reply = try_login(&server, "alice", "n3w pass");
    assert!(reply.starts_with("+OK"), "the new password: {reply}");
    let reply = try_login(&server, "alice", "old");
    assert!(
        reply.starts_with("-ERR [AUTH]"),
        "the old password: {reply}"
    );
    let reply = try_login(&server, "carol", "carol");
    assert!(reply.starts_with("+OK"), "a user added: {reply}");
    let reply = try_login(&server, "bob", "bob");
    assert!(reply.starts_with("-ERR [AUTH]"), "a user removed: {reply}");
    // The session opened before the reload goes on as it was.
    assert_eq!(before.ok("STAT"), stat);
    assert_eq!(before.fetch("RETR 1"), crlf(&first));
    before.ok("QUIT");
    assert!(server.is_running());
}

#[test]
fn sighup_with_a_broken_users_file_keeps_the_old_users() {
    let mut server = Server::start(USERS, &[]);
    let users = server.root.path().join("users");
    std::fs::write(
        &users,
        "alice:{PLAIN}changed::::::\n# a comment\nbob:{NOPE}xyz::::::\n",
    )
    .unwrap();
    signal(server.pid(), Signal::SIGHUP);
    wait_for_count(&server, "users file not reloaded, keeping the old one", 1);
    let log = server.log();
    assert!(
        log.contains(&format!(
            "users file {} line 3: unknown password scheme {{NOPE}}",
            users.display()
        )),
        "the error names the file and line: {log}"
    );
    assert!(!log.contains("reloaded 2 users"), "{log}");
    server.login("alice", "secret").ok("QUIT");
    let reply = try_login(&server, "alice", "changed");
    assert!(reply.starts_with("-ERR [AUTH]"), "{reply}");

    // A users file that is gone: the same.
    std::fs::remove_file(&users).unwrap();
    signal(server.pid(), Signal::SIGHUP);
    wait_for_count(&server, "users file not reloaded, keeping the old one", 2);
    server.login("alice", "secret").ok("QUIT");

    // Fixed: reloaded.
    std::fs::write(&users, "alice:{PLAIN}changed::::::\n").unwrap();
    signal(server.pid(), Signal::SIGHUP);
    wait_for_count(&server, "reloaded 1 users from", 1);
    server.login("alice", "changed").ok("QUIT");
    assert!(server.is_running());
}

#[test]
fn sighup_reloads_the_config_file_for_new_sessions_and_keeps_a_broken_one_out() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pop3d.toml");
    std::fs::write(&config, "mode = \"delete\"\n").unwrap();
    let mut server = Server::start(USERS, &["--config", config.to_str().unwrap()]);
    let maildir = server.maildir("alice");
    let names: Vec<String> = (0..3)
        .map(|i| deliver(&maildir, 1_700_000_000 + i, b"Subject: x\n\nbody\n"))
        .collect();
    let mut before = server.login("alice", "secret");

    std::fs::write(&config, "mode = \"keep\"\n").unwrap();
    signal(server.pid(), Signal::SIGHUP);
    wait_for_count(&server, "reloaded the configuration", 1);

    // The session that was open keeps the mode it started with: its QUIT deletes.
    before.ok("DELE 1");
    before.ok("QUIT");
    assert_eq!(messages_on_disk(&maildir), names[1..].to_vec());
    // New sessions are in keep mode: their QUIT removes nothing.
    let mut after = server.connect();
    after.ok("USER alice");
    let reply = after.ok("PASS secret");
    assert!(reply.ends_with("keep mode"), "after the reload: {reply}");
    after.ok("DELE 1");
    after.ok("QUIT");
    assert_eq!(messages_on_disk(&maildir), names[1..].to_vec());

    // A broken config: an error logged, the old one stays in service.
    std::fs::write(&config, "mode = \"archive\"\n").unwrap();
    signal(server.pid(), Signal::SIGHUP);
    wait_for_count(
        &server,
        "configuration not reloaded, keeping the old one",
        1,
    );
    let log = server.log();
    assert!(
        log.contains(&format!("config {}", config.display())) && log.contains("archive"),
        "the error names the file and the bad value: {log}"
    );
    let mut again = server.connect();
    again.ok("USER alice");
    let reply = again.ok("PASS secret");
    assert!(
        reply.ends_with("keep mode"),
        "after a failed reload: {reply}"
    );
    again.ok("QUIT");
    // A TOML syntax error, too.
    std::fs::write(&config, "mode = \n").unwrap();
    signal(server.pid(), Signal::SIGHUP);
    wait_for_count(
        &server,
        "configuration not reloaded, keeping the old one",
        2,
    );
    let mut again = server.connect();
    again.ok("USER alice");
    let reply = again.ok("PASS secret");
    assert!(
        reply.ends_with("keep mode"),
        "after a failed reload: {reply}"
    );
    again.ok("QUIT");
    assert!(server.is_running());
}

// ---------------------------------------------------------------------------------------
// Privileges
// ---------------------------------------------------------------------------------------

/// The `Uid:`/`Gid:` fields (real, effective, saved, filesystem) and `Groups:` of a task.
fn ids_of(status_file: &Path) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    let status = std::fs::read_to_string(status_file)
        .unwrap_or_else(|e| panic!("{}: {e}", status_file.display()));
    let field = |name: &str| -> Vec<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {status}"))
            .split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect()
    };
    (field("Uid:"), field("Gid:"), field("Groups:"))
}

/// Makes `path` and everything under it `nobody`'s.
fn chown_tree(path: &Path, owner: &User) {
    nix::unistd::chown(path, Some(owner.uid), Some(owner.gid)).unwrap();
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            chown_tree(&entry.unwrap().path(), owner);
        }
    }
}

/// Every file and folder under `path` with an owner other than `owner`.
fn not_owned_by(path: &Path, owner: &User) -> Vec<String> {
    let mut wrong = Vec::new();
    let meta = std::fs::symlink_metadata(path).unwrap();
    if meta.uid() != owner.uid.as_raw() || meta.gid() != owner.gid.as_raw() {
        wrong.push(format!(
            "{} ({}:{})",
            path.display(),
            meta.uid(),
            meta.gid()
        ));
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            wrong.extend(not_owned_by(&entry.unwrap().path(), owner));
        }
    }
    wrong
}

#[test]
fn drops_root_for_the_user_given_with_user() {
    if !geteuid().is_root() {
        eprintln!(
            "SKIPPED drops_root_for_the_user_given_with_user: switching users needs root \
             (CI runs as root); running as uid {}",
            geteuid()
        );
        return;
    }
    let nobody = User::from_name("nobody")
        .unwrap()
        .expect("a `nobody` user in /etc/passwd");
    // The whole tree is nobody's, folders 0700: the daemon must reach it as nobody only.
    let root = tempfile::tempdir().unwrap();
    let users = root.path().join("users");
    std::fs::write(&users, USERS).unwrap();
    std::fs::set_permissions(&users, std::fs::Permissions::from_mode(0o600)).unwrap();
    let maildir = root.path().join("mail/alice/Maildir");
    let message = b"Subject: hi\n\nhello\n".to_vec();
    let name = deliver(&maildir, 1_700_000_000, &message);
    deliver(&maildir, 1_700_000_001, b"Subject: two\n\nbye\n");
    for dir in [
        root.path(),
        &root.path().join("mail"),
        &root.path().join("mail/alice"),
        &maildir,
        &maildir.join("new"),
        &maildir.join("cur"),
        &maildir.join("tmp"),
    ] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    chown_tree(root.path(), &nobody);
    let template = format!("{}/mail/%u/Maildir", root.path().display());
    let mut server = Server::start_in(
        root,
        &["--users", users.to_str().unwrap(), "--maildir", &template],
        &["--user", "nobody"],
    );

    let cmdline = std::fs::read(format!("/proc/{}/cmdline", server.pid())).unwrap();
    assert!(
        !cmdline.split(|&b| b == 0).any(|arg| arg == b"--allow-root"),
        "started without --allow-root: {:?}",
        String::from_utf8_lossy(&cmdline)
    );
    let (uid, gid) = (nobody.uid.as_raw(), nobody.gid.as_raw());
    assert!(
        server
            .log()
            .contains(&format!("running as user nobody (uid {uid}, gid {gid})")),
        "{}",
        server.log()
    );
    // Every thread, not just the main one, runs as nobody, with no supplementary group left.
    let tasks: Vec<PathBuf> = std::fs::read_dir(format!("/proc/{}/task", server.pid()))
        .unwrap()
        .map(|t| t.unwrap().path().join("status"))
        .collect();
    assert!(!tasks.is_empty());
    for status in
        std::iter::once(PathBuf::from(format!("/proc/{}/status", server.pid()))).chain(tasks)
    {
        let (uids, gids, groups) = ids_of(&status);
        assert_eq!(uids, vec![uid; 4], "Uid: in {}", status.display());
        assert_eq!(gids, vec![gid; 4], "Gid: in {}", status.display());
        assert_eq!(groups, vec![gid], "Groups: in {}", status.display());
    }

    let mut session = server.login("alice", "secret");
    assert_eq!(session.fetch("RETR 1"), crlf(&message));
    session.ok("DELE 2");
    let lock = std::fs::metadata(maildir.join("pop3d.lock")).expect("pop3d.lock");
    assert_eq!((lock.uid(), lock.gid()), (uid, gid), "pop3d.lock's owner");
    session.ok("QUIT");
    assert_eq!(messages_on_disk(&maildir), vec![name]);
    assert_eq!(
        not_owned_by(&maildir, &nobody),
        Vec::<String>::new(),
        "files the daemon made (lock, sizes cache, renamed messages) must be nobody's"
    );

    // SIGHUP re-reads the users file as nobody: it works while nobody may read it...
    std::fs::write(&users, "alice:{PLAIN}again::::::\n").unwrap();
    signal(server.pid(), Signal::SIGHUP);
    wait_for_count(&server, "reloaded 1 users from", 1);
    server.login("alice", "again").ok("QUIT");
    // ...and fails, keeping the old users, once only root may: the daemon is not root now.
    std::fs::write(&users, "alice:{PLAIN}root-only::::::\n").unwrap();
    nix::unistd::chown(
        &users,
        Some(nix::unistd::Uid::from_raw(0)),
        Some(nix::unistd::Gid::from_raw(0)),
    )
    .unwrap();
    signal(server.pid(), Signal::SIGHUP);
    wait_for_count(&server, "users file not reloaded, keeping the old one", 1);
    assert!(
        server.log().contains("Permission denied"),
        "{}",
        server.log()
    );
    server.login("alice", "again").ok("QUIT");

    let (status, _) = terminate(&mut server);
    assert!(status.success(), "{status}");
}

#[test]
fn refuses_to_serve_mail_as_root_without_user_or_allow_root() {
    if !geteuid().is_root() {
        eprintln!(
            "SKIPPED refuses_to_serve_mail_as_root_without_user_or_allow_root: it is about \
             starting as root (CI runs as root); running as uid {}",
            geteuid()
        );
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let mut args = serve_args(root.path());
    args.retain(|a| a != "--allow-root");
    let (status, _, stderr) = run(&mut pop3d(&args));
    assert!(!status.success(), "served as root: {stderr}");
    assert!(
        stderr.contains(
            "pop3d: refusing to serve mail as root: pass --user USER (the owner of the \
             Maildirs) to switch after binding the ports, or --allow-root"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("] ready"), "{stderr}");

    let mut unknown = args.clone();
    unknown.extend(["--user".into(), "pop3d-no-such-user".into()]);
    let (status, _, stderr) = run(&mut pop3d(&unknown));
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("pop3d: no such user: pop3d-no-such-user"),
        "{stderr}"
    );

    let mut group_alone = args.clone();
    group_alone.extend(["--group".into(), "nogroup".into()]);
    let (status, _, stderr) = run(&mut pop3d(&group_alone));
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("pop3d: --group needs --user"), "{stderr}");
}

// ---------------------------------------------------------------------------------------
// pop3d check
// ---------------------------------------------------------------------------------------

/// A folder with a users file, two certificates, and configs to check in it.
struct CheckDir {
    dir: tempfile::TempDir,
}

impl CheckDir {
    fn new() -> CheckDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("users"),
            "alice:{PLAIN}secret::::/home/alice::\nbob:{PLAIN}bob::::::\n",
        )
        .unwrap();
        make_cert(dir.path(), "one");
        make_cert(dir.path(), "two");
        CheckDir { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// A good config with `line` replacing (by its key) or added to it, as `NAME.toml`.
    fn config(&self, name: &str, changes: &[&str]) -> String {
        let mut lines = vec![
            "listen = [\"127.0.0.1:1110\"]".to_owned(),
            format!("users = {:?}", self.path("users")),
            format!("maildir = {:?}", format!("{}/mail/%d/%n", self.path(""))),
            format!("tls_cert = {:?}", self.path("one.crt")),
            format!("tls_key = {:?}", self.path("one.key")),
            "mode = \"keep\"".to_owned(),
        ];
        for change in changes {
            let key = change.split('=').next().unwrap().trim();
            lines.retain(|l| l.split('=').next().unwrap().trim() != key);
            if !change.ends_with('=') {
                lines.push((*change).to_owned());
            }
        }
        let file = self.path(&format!("{name}.toml"));
        std::fs::write(&file, lines.join("\n") + "\n").unwrap();
        file
    }
}

fn check(config: &str) -> (ExitStatus, String, String) {
    run(Command::new(BIN).args(["check", "--config", config]))
}

#[test]
fn check_accepts_a_good_config() {
    let dir = CheckDir::new();
    let config = dir.config("good", &[]);
    let (status, stdout, stderr) = check(&config);
    assert!(status.success(), "{stdout}{stderr}");
    for line in [
        format!("config {config}: parsed"),
        format!("users file {}: 2 users", dir.path("users")),
        format!(
            "certificate {}: loads and fits its key",
            dir.path("one.crt")
        ),
        "configuration OK".to_owned(),
    ] {
        assert!(stdout.contains(&line), "{line:?} in {stdout}");
    }
    // Without TLS, it says what that means; with a user to run as, that it exists.
    let config = dir.config("plain", &["tls_cert =", "tls_key =", "user = \"nobody\""]);
    let (status, stdout, stderr) = check(&config);
    assert!(status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("TLS: off"), "{stdout}");
    assert!(stdout.contains("runs as user nobody"), "{stdout}");
    assert!(stdout.contains("configuration OK"), "{stdout}");
}

#[test]
fn check_reports_each_problem_precisely() {
    let dir = CheckDir::new();
    let bad_users = dir.path("bad-users");
    std::fs::write(
        &bad_users,
        "# users\nalice:{PLAIN}secret::::::\nbob:{MD9}abc::::::\n",
    )
    .unwrap();
    let homeless = dir.path("homeless");
    std::fs::write(
        &homeless,
        "alice:{PLAIN}x::::/home/alice::\ncarol:{PLAIN}x::::::\n",
    )
    .unwrap();
    let users_line = format!("users = {bad_users:?}");
    let homeless_line = format!("users = {homeless:?}");
    let mismatched = format!("tls_key = {:?}", dir.path("two.key"));
    let missing_cert = format!("tls_cert = {:?}", dir.path("gone.crt"));
    let cases: Vec<(&str, Vec<&str>, Vec<String>)> = vec![
        (
            "unknown-key",
            vec!["lisen = [\"127.0.0.1:110\"]"],
            vec![
                format!(
                    "config {}: TOML parse error at line 7, column 1",
                    dir.path("unknown-key.toml")
                ),
                "unknown field `lisen`".into(),
            ],
        ),
        (
            "bad-template",
            vec!["maildir = \"/var/mail/%x/Maildir\""],
            vec!["unknown variable %x in Maildir template".into()],
        ),
        (
            "bad-users-line",
            vec![users_line.as_str()],
            vec![format!(
                "users file {bad_users} line 3: unknown password scheme {{MD9}}"
            )],
        ),
        (
            "mismatched-key",
            vec![mismatched.as_str()],
            vec![
                format!(
                    "certificate {} / key {}",
                    dir.path("one.crt"),
                    dir.path("two.key")
                ),
                "certificate and key do not fit".into(),
            ],
        ),
        (
            "missing-cert",
            vec![missing_cert.as_str()],
            vec![format!("cannot read certificate {}", dir.path("gone.crt"))],
        ),
        (
            "homeless-user",
            vec![homeless_line.as_str(), "maildir = \"~/Maildir\""],
            vec![
                "users without a usable Maildir: carol (the Maildir template needs a home but \
                 the user has none)"
                    .into(),
            ],
        ),
        (
            "homeless-no-template",
            vec![homeless_line.as_str(), "maildir ="],
            vec![
                "users without a usable Maildir: carol (no Maildir template and no home for \
                 this user)"
                    .into(),
            ],
        ),
        (
            "unknown-user",
            vec!["user = \"pop3d-no-such-user\""],
            vec!["no such user: pop3d-no-such-user".into()],
        ),
        (
            "unknown-group",
            vec!["user = \"nobody\"", "group = \"pop3d-no-such-group\""],
            vec!["no such group: pop3d-no-such-group".into()],
        ),
        (
            "cert-without-key",
            vec!["tls_key ="],
            vec!["tls_cert and tls_key go together".into()],
        ),
        (
            // Every problem is reported, not just the first.
            "two-problems",
            vec![users_line.as_str(), missing_cert.as_str()],
            vec![
                format!("users file {bad_users} line 3"),
                format!("cannot read certificate {}", dir.path("gone.crt")),
            ],
        ),
    ];
    for (name, changes, expected) in cases {
        let config = dir.config(name, &changes);
        let (status, stdout, stderr) = check(&config);
        assert!(!status.success(), "{name}: accepted:\n{stdout}{stderr}");
        assert!(!stdout.contains("configuration OK"), "{name}: {stdout}");
        for message in expected {
            assert!(
                stderr.contains(&message),
                "{name}: expected {message:?} in:\n{stderr}"
            );
        }
        assert!(stderr.starts_with("pop3d: "), "{name}: {stderr}");
    }
    let (status, _, stderr) = check(&dir.path("absent.toml"));
    assert!(!status.success());
    assert!(
        stderr.contains(&format!("cannot read config {}", dir.path("absent.toml"))),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------

/// `GET path` over a raw connection: (status line, headers, body).
fn http_get(addr: SocketAddr, path: &str) -> (String, String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers: {response:?}"));
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_owned(), headers.to_owned(), body.to_owned())
}

/// The address the server's log says the metrics endpoint listens on.
fn metrics_addr(server: &Server) -> SocketAddr {
    server
        .log()
        .lines()
        .find_map(|l| {
            let rest = l.split("listening on ").nth(1)?;
            rest.ends_with(" (metrics)")
                .then(|| rest.split_whitespace().next()?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no metrics address in the log:\n{}", server.log()))
}

/// Two logins to an unchanged Maildir: the second reuses the listing kept in memory, which
/// the metrics show; with `--listing-cache-messages 0` both read the folders.
#[test]
fn listings_kept_in_memory_show_in_the_metrics_and_can_be_turned_off() {
    for (extra, hits, misses, used) in [(None, 1, 1, 3), (Some("0"), 0, 2, 0)] {
        let mut args = vec!["--metrics", "127.0.0.1:0"];
        args.extend(extra.iter().flat_map(|n| ["--listing-cache-messages", n]));
        let server = Server::start(USERS, &args);
        let maildir = server.maildir("alice");
        deliver(&maildir, 1_700_000_000, b"Subject: one\n\n1\n");
        deliver(&maildir, 1_700_000_001, b"Subject: two\n\n2\n");
        settle(&maildir);
        for _ in 0..2 {
            let mut session = server.login("alice", "secret");
            assert!(session.ok("STAT").starts_with("+OK 2 "));
            session.ok("QUIT");
        }
        let body = http_get(metrics_addr(&server), "/metrics").2;
        for line in [
            format!("pop3d_listing_cache_hits_total {hits}"),
            format!("pop3d_listing_cache_misses_total {misses}"),
            format!("pop3d_listing_cache_used {used}"),
        ] {
            assert!(
                body.lines().any(|l| l == line),
                "{extra:?}: {line:?} in the metrics:\n{body}"
            );
        }
    }
}

#[test]
fn metrics_count_logins_retrievals_updates_and_connections() {
    let server = Server::start(USERS, &["--metrics", "127.0.0.1:0"]);
    let metrics = metrics_addr(&server);
    assert!(
        metrics.ip().is_loopback() && metrics.port() != 0,
        "{metrics}"
    );
    let maildir = server.maildir("alice");
    let first = b"Subject: one\n\nfirst message\n".to_vec();
    deliver(&maildir, 1_700_000_000, &first);
    deliver(&maildir, 1_700_000_001, b"Subject: two\n\nsecond\n");

    let reply = try_login(&server, "alice", "wrong");
    assert!(reply.starts_with("-ERR [AUTH]"), "{reply}");
    let mut session = server.login("alice", "secret");
    assert_eq!(session.fetch("RETR 1"), crlf(&first));
    session.ok("DELE 2");
    session.ok("QUIT");
    assert_eq!(session.read_to_end(), b"");
    // Both connections are over once their gauge is back to 0.
    let plain = format!("{} plain", server.addr);
    let open_line = format!("pop3d_connections_open{{listener=\"{plain}\"}} 0");
    let mut body = String::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            body = http_get(metrics, "/metrics").2;
            body.contains(&open_line)
        }),
        "{open_line:?} in:\n{body}"
    );

    let (status, headers, body) = http_get(metrics, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{headers}"
    );
    assert!(
        headers.contains(&format!("Content-Length: {}", body.len())),
        "{headers}"
    );
    let octets = crlf(&first).len();
    for line in [
        "# TYPE pop3d_logins counter".to_owned(),
        "pop3d_logins_total{result=\"ok\"} 1".to_owned(),
        "pop3d_logins_total{result=\"failed\"} 1".to_owned(),
        "# TYPE pop3d_messages_retrieved counter".to_owned(),
        "pop3d_messages_retrieved_total 1".to_owned(),
        format!("pop3d_octets_retrieved_total {octets}"),
        "pop3d_updates_applied_total{mode=\"delete\"} 1".to_owned(),
        format!("pop3d_connections_total{{listener=\"{plain}\"}} 2"),
        format!("pop3d_connections_open{{listener=\"{plain}\"}} 0"),
        "pop3d_sessions_open{mode=\"delete\"} 0".to_owned(),
    ] {
        assert!(
            body.lines().any(|l| l == line),
            "{line:?} in the metrics:\n{body}"
        );
    }
    assert_eq!(last_line(&body), "# EOF", "OpenMetrics ends with # EOF");

    // A session open now shows in the gauges.
    let _open = server.login("alice", "secret");
    let body = http_get(metrics, "/metrics").2;
    assert!(
        body.contains("pop3d_sessions_open{mode=\"delete\"} 1")
            && body.contains(&format!("pop3d_connections_open{{listener=\"{plain}\"}} 1")),
        "{body}"
    );

    let (status, _, body) = http_get(metrics, "/other");
    assert_eq!(status, "HTTP/1.1 404 Not Found", "{body}");
    assert!(!body.contains("pop3d_"), "{body}");
    let (status, _, _) = http_get(metrics, "/metricsfoo");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
}

// ---------------------------------------------------------------------------------------
// Log formats
// ---------------------------------------------------------------------------------------

#[test]
fn under_journald_lines_carry_a_priority_and_no_timestamp() {
    let root = tempfile::tempdir().unwrap();
    let users = root.path().join("users");
    // No Maildir template: alice's is in her home; carol, without one, can't log in.
    std::fs::write(
        &users,
        format!(
            "alice:{{PLAIN}}secret::::{}/home/alice::\ncarol:{{PLAIN}}carol::::::\n",
            root.path().display()
        ),
    )
    .unwrap();
    deliver(
        &root.path().join("home/alice/Maildir"),
        1_700_000_000,
        b"Subject: x\n\nx\n",
    );
    let mut cmd = under_journal(&pop3d(&[
        "serve".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--users".into(),
        users.display().to_string(),
        "--auth-failure-delay".into(),
        "10ms".into(),
        "--allow-root".into(),
    ]));
    let mut daemon = Daemon::spawn(&mut cmd);
    wait_ready(&daemon);
    let addr = daemon.listening("plain POP3");

    let mut c = Client::connect(addr);
    c.ok("USER alice");
    c.err("PASS wrong");
    c.ok("USER alice");
    c.ok("PASS secret");
    c.ok("QUIT");
    let mut c = Client::connect(addr);
    c.ok("USER carol");
    let reply = c.err("PASS carol");
    assert!(reply.starts_with("-ERR [SYS/PERM]"), "{reply}");
    signal(daemon.pid(), Signal::SIGTERM);
    let status = daemon
        .wait_exit(GRACE + EXIT_SLACK)
        .expect("exits after SIGTERM");
    assert!(status.success(), "{status}");

    let log = daemon.log();
    for line in [
        format!("<6>listening on {addr} (plain POP3)"),
        "<6>ready".into(),
        "<4>login failed: user=\"alice\" addr=127.0.0.1".into(),
        "<3>user \"carol\": no Maildir template and no home for this user".into(),
        "<6>shutting down (signal 15)".into(),
        "<6>stopped".into(),
    ] {
        assert!(log.lines().any(|l| l == line), "{line:?} in:\n{log}");
    }
    assert!(
        log.lines()
            .any(|l| l.starts_with("<6>login: user=\"alice\" addr=127.0.0.1 mode=delete")),
        "{log}"
    );
    for line in log.lines() {
        let priority = line.get(..3).unwrap_or("");
        assert!(
            ["<3>", "<4>", "<6>", "<7>"].contains(&priority),
            "a line without a syslog priority: {line:?}"
        );
        assert!(
            !line.contains("[20") && !line.contains(" INFO ") && !line.contains("pop3d::"),
            "journald adds its own timestamp; the line must not: {line:?}"
        );
    }
    assert_eq!(last_line(&log), "<6>stopped");
}

/// `[YYYY-MM-DDTHH:MM:SSZ LEVEL target] message`, env_logger's default.
fn is_env_logger_line(line: &str) -> bool {
    let b = line.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        range
            .clone()
            .all(|i| b.get(i).is_some_and(u8::is_ascii_digit))
    };
    b.first() == Some(&b'[')
        && digits(1..5)
        && b.get(5) == Some(&b'-')
        && digits(6..8)
        && b.get(8) == Some(&b'-')
        && digits(9..11)
        && b.get(11) == Some(&b'T')
        && digits(12..14)
        && b.get(14) == Some(&b':')
        && digits(15..17)
        && b.get(17) == Some(&b':')
        && digits(18..20)
        && line.get(20..22) == Some("Z ")
        && line.contains("] ")
}

#[test]
fn an_inherited_journal_stream_that_is_not_stderr_is_ignored() {
    // A daemon started from a shell inside a systemd unit inherits JOURNAL_STREAM while its
    // standard error goes elsewhere (here a pipe): it must keep env_logger's format.
    let root = tempfile::tempdir().unwrap();
    let users = root.path().join("users");
    std::fs::write(&users, "alice:{PLAIN}secret::::::\n").unwrap();
    // A port in use makes the daemon log its start-up, then exit.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cmd = pop3d(&[
        "serve".into(),
        "--listen".into(),
        taken.local_addr().unwrap().to_string(),
        "--users".into(),
        users.display().to_string(),
        "--allow-root".into(),
    ]);
    cmd.env("JOURNAL_STREAM", "1:1");
    let out = cmd.stdin(Stdio::null()).output().expect("run pop3d");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let loaded = err
        .lines()
        .find(|l| l.contains("loaded 1 users"))
        .expect(&err);
    assert!(is_env_logger_line(loaded), "{loaded:?}");
}

#[test]
fn without_journald_lines_have_env_loggers_timestamps_and_levels() {
    let server = Server::start(USERS, &[]);
    let reply = try_login(&server, "alice", "wrong");
    assert!(reply.starts_with("-ERR"), "{reply}");
    assert!(server.wait_for_log("login failed"), "{}", server.log());
    let log = server.log();
    for line in log.lines() {
        assert!(
            is_env_logger_line(line),
            "not env_logger's format: {line:?}"
        );
        assert!(!line.starts_with('<'), "{line:?}");
    }
    assert!(
        log.lines()
            .any(|l| l.contains(" INFO  pop3d::server] ready")),
        "{log}"
    );
    assert!(
        log.lines().any(|l| l.contains(
            " WARN  pop3d::server::connection] login failed: user=\"alice\" addr=127.0.0.1"
        )),
        "{log}"
    );
}

// ---------------------------------------------------------------------------------------
// systemd: socket activation, sd_notify
// ---------------------------------------------------------------------------------------

/// A loopback port free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `systemd-socket-activate` listening on `sockets` (address, name), ready to exec pop3d with
/// `args` at the first connection.
fn socket_activate(sockets: &[(SocketAddr, &str)], args: &[String]) -> Daemon {
    let probe = Command::new("systemd-socket-activate")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    assert!(
        probe.is_ok_and(|s| s.success()),
        "systemd-socket-activate is needed: apt-get install -y systemd"
    );
    let mut cmd = Command::new("systemd-socket-activate");
    for (addr, _) in sockets {
        cmd.args(["-l", &addr.to_string()]);
    }
    let names: Vec<&str> = sockets.iter().map(|(_, name)| *name).collect();
    cmd.arg(format!("--fdname={}", names.join(":")))
        .args(["-E", "RUST_LOG=info", BIN])
        .args(args)
        .env_remove("JOURNAL_STREAM")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES");
    let activator = Daemon::spawn(&mut cmd);
    for (addr, _) in sockets {
        assert!(
            activator.wait_for_log(&format!("Listening on {addr}")),
            "systemd-socket-activate did not listen on {addr}:\n{}",
            activator.log()
        );
    }
    activator
}

#[test]
fn socket_activated_it_serves_systemds_socket_and_binds_nothing_else() {
    let root = tempfile::tempdir().unwrap();
    let args = serve_args(root.path());
    let message = b"Subject: activated\n\nhello\n".to_vec();
    let maildir = root.path().join("mail/alice/Maildir");
    deliver(&maildir, 1_700_000_000, &message);
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut daemon = socket_activate(&[(addr, "pop3")], &args);

    // The first connection starts pop3d, in the activator's place (same pid).
    let mut c = Client::connect(addr);
    wait_ready(&daemon);
    let exe = std::fs::read_link(format!("/proc/{}/exe", daemon.pid())).unwrap();
    assert_eq!(
        exe,
        std::fs::canonicalize(BIN).unwrap(),
        "pop3d runs as that pid"
    );
    let log = daemon.log();
    assert!(
        log.contains(&format!("listening on {addr} (plain POP3, from systemd)")),
        "{log}"
    );
    assert_eq!(
        log.matches("] listening on ").count(),
        1,
        "--listen 127.0.0.1:0 is ignored when systemd passes sockets: {log}"
    );
    c.ok("USER alice");
    c.ok("PASS secret");
    assert_eq!(c.ok("STAT"), format!("+OK 1 {}", crlf(&message).len()));
    assert_eq!(c.fetch("RETR 1"), crlf(&message));
    c.ok("DELE 1");
    c.ok("QUIT");
    assert_eq!(messages_on_disk(&maildir), Vec::<String>::new());
    // The socket stays in service for the next client.
    let mut again = Client::connect(addr);
    again.ok("USER alice");
    assert!(again.ok("PASS secret").contains("0 messages"));
    again.ok("QUIT");

    signal(daemon.pid(), Signal::SIGTERM);
    let status = daemon
        .wait_exit(GRACE + EXIT_SLACK)
        .expect("exits after SIGTERM");
    assert!(status.success(), "{status}");
    assert_eq!(last_line(&daemon.log()).split("] ").nth(1), Some("stopped"));
}

#[test]
fn socket_activated_pop3s_is_implicit_tls() {
    let root = tempfile::tempdir().unwrap();
    let (cert, key) = make_cert(root.path(), "server");
    let mut args = serve_args(root.path());
    args.extend([
        "--tls-cert".into(),
        cert.display().to_string(),
        "--tls-key".into(),
        key.display().to_string(),
    ]);
    deliver(
        &root.path().join("mail/alice/Maildir"),
        1_700_000_000,
        b"Subject: x\n\nx\n",
    );
    let plain: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let tls: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let daemon = socket_activate(&[(plain, "pop3"), (tls, "pop3s")], &args);

    let mut c = Client::connect(plain);
    wait_ready(&daemon);
    let log = daemon.log();
    assert!(
        log.contains(&format!("listening on {plain} (plain POP3, from systemd)"))
            && log.contains(&format!("listening on {tls} (implicit TLS, from systemd)")),
        "{log}"
    );
    c.send(b"CAPA\r\n");
    assert!(c.line().starts_with("+OK"));
    assert!(
        c.multiline().iter().any(|l| l == "STLS"),
        "the plain socket offers STLS"
    );
    c.ok("QUIT");

    let (status, stdout, stderr) = run_with_input(
        Command::new("openssl").args(["s_client", "-connect", &tls.to_string(), "-quiet"]),
        Some(b"USER alice\r\nPASS secret\r\nSTAT\r\nQUIT\r\n"),
    );
    assert!(
        status.success(),
        "openssl s_client (apt-get install -y openssl): {stdout}{stderr}"
    );
    let replies: Vec<&str> = stdout.lines().map(|l| l.trim_end_matches('\r')).collect();
    assert_eq!(replies.len(), 5, "{stdout}");
    assert!(replies[0].starts_with("+OK"), "greeting over TLS: {stdout}");
    assert!(
        replies[2].starts_with("+OK Logged in, 1 messages"),
        "{stdout}"
    );
    assert_eq!(replies[3], "+OK 1 17", "{stdout}");
}

#[test]
fn a_pop3s_socket_without_a_certificate_is_refused_at_start() {
    let root = tempfile::tempdir().unwrap();
    let args = serve_args(root.path());
    let tls: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut daemon = socket_activate(&[(tls, "pop3s")], &args);
    // The connection starts pop3d, which must give up with a reason.
    let _ = TcpStream::connect(tls);
    let status = daemon
        .wait_exit(Duration::from_secs(10))
        .expect("pop3d exits by itself");
    assert!(!status.success());
    assert!(
        daemon
            .log()
            .contains("pop3d: an implicit-TLS socket needs --tls-cert and --tls-key"),
        "{}",
        daemon.log()
    );
}

/// The next sd_notify datagram; fails after 10 s.
#[track_caller]
fn notice(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = socket
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no sd_notify message within 10 s: {e}"));
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

/// `RELOADING=1` with `MONOTONIC_USEC=`, as Type=notify-reload wants: the timestamp.
#[track_caller]
fn reloading(message: &str) -> u64 {
    let usec = message
        .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
        .and_then(|rest| rest.strip_suffix('\n'))
        .unwrap_or_else(|| panic!("expected RELOADING=1 and MONOTONIC_USEC=: {message:?}"));
    let usec: u64 = usec.parse().unwrap();
    assert!(usec > 0);
    usec
}

fn notify_daemon(dir: &Path, env: &[(&str, &str)]) -> (Daemon, UnixDatagram) {
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut cmd = pop3d(&serve_args(dir));
    cmd.env("NOTIFY_SOCKET", &path);
    for (name, value) in env {
        cmd.env(name, value);
    }
    (Daemon::spawn(&mut cmd), socket)
}

#[test]
fn sd_notify_says_ready_reloading_and_stopping() {
    let root = tempfile::tempdir().unwrap();
    let (mut daemon, socket) = notify_daemon(root.path(), &[]);
    assert_eq!(notice(&socket), "READY=1\n", "{}", daemon.log());
    wait_ready(&daemon);
    let addr = daemon.listening("plain POP3");
    let mut c = Client::connect(addr);
    c.ok("USER alice");
    c.ok("PASS secret");

    let first_sent = Instant::now();
    signal(daemon.pid(), Signal::SIGHUP);
    let first = reloading(&notice(&socket));
    assert_eq!(notice(&socket), "READY=1\n", "after the reload");
    assert!(daemon.wait_for_log("reloaded 1 users"), "{}", daemon.log());
    std::thread::sleep(Duration::from_millis(300));
    signal(daemon.pid(), Signal::SIGHUP);
    let between = first_sent.elapsed();
    let second = reloading(&notice(&socket));
    assert_eq!(notice(&socket), "READY=1\n", "after the second reload");
    let step = Duration::from_micros(second - first);
    assert!(
        step >= Duration::from_millis(300) && step <= between + Duration::from_secs(1),
        "MONOTONIC_USEC is the monotonic clock in µs: {first} then {second}, {between:?} apart"
    );
    c.ok("NOOP");

    signal(daemon.pid(), Signal::SIGTERM);
    assert_eq!(notice(&socket), "STOPPING=1\n");
    let status = daemon
        .wait_exit(GRACE + EXIT_SLACK)
        .expect("exits after SIGTERM");
    assert!(status.success(), "{status}");
    // Without WatchdogSec= (WATCHDOG_USEC), nothing else was sent.
    socket.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 256];
    let extra = socket.recv(&mut buf);
    assert!(
        extra
            .as_ref()
            .is_err_and(|e| e.kind() == ErrorKind::WouldBlock),
        "an unexpected notice: {:?}",
        extra.map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
    );
}

#[test]
fn sd_notify_pings_the_watchdog_at_half_its_interval() {
    let root = tempfile::tempdir().unwrap();
    let (daemon, socket) = notify_daemon(root.path(), &[("WATCHDOG_USEC", "400000")]);
    let mut ready = false;
    let mut pings = 0;
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1500) {
        match notice(&socket).as_str() {
            "READY=1\n" => ready = true,
            "WATCHDOG=1\n" => pings += 1,
            other => panic!("unexpected notice {other:?}"),
        }
    }
    assert!(ready, "{}", daemon.log());
    // Every 200 ms: about 7 in 1.5 s; a loaded machine may delay some.
    assert!((4..=10).contains(&pings), "{pings} WATCHDOG=1 in 1.5 s");
    drop(daemon);

    // WATCHDOG_PID names another process: the watchdog is not ours, no pings.
    let other = tempfile::tempdir().unwrap();
    let (daemon, socket) = notify_daemon(
        other.path(),
        &[("WATCHDOG_USEC", "400000"), ("WATCHDOG_PID", "1")],
    );
    assert_eq!(notice(&socket), "READY=1\n", "{}", daemon.log());
    socket
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let mut buf = [0u8; 256];
    let extra = socket.recv(&mut buf);
    assert!(
        extra.is_err(),
        "a ping for someone else's watchdog: {:?}",
        extra.map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
    );
}

// ---------------------------------------------------------------------------------------
// More of the same: SIGINT, flags over a reloaded file, --user root, port 995, keep-mode
// metrics, and sessions that wait without being busy at SIGTERM
// ---------------------------------------------------------------------------------------

#[test]
fn sigint_drains_as_sigterm_does() {
    let mut server = Server::start(USERS, &["--shutdown-grace", "2s"]);
    let mut session = server.login("alice", "secret");
    signal(server.pid(), Signal::SIGINT);
    let reply = session.line();
    assert!(reply.starts_with(GOODBYE), "{reply}");
    let status = server
        .wait_exit(GRACE + EXIT_SLACK)
        .expect("exits after SIGINT");
    assert!(status.success(), "{status}");
    let log = assert_stopped_last(&server);
    assert!(log.contains("shutting down (signal 2)"), "{log}");
}

#[test]
fn flags_still_win_over_a_reloaded_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pop3d.toml");
    std::fs::write(&config, "mode = \"keep\"\n").unwrap();
    let server = Server::start(
        USERS,
        &["--config", config.to_str().unwrap(), "--mode", "delete"],
    );
    let reply = try_login(&server, "alice", "secret");
    assert!(reply.ends_with("delete mode"), "{reply}");
    std::fs::write(&config, "mode = \"keep\"\nlogin_delay = \"1h\"\n").unwrap();
    signal(server.pid(), Signal::SIGHUP);
    wait_for_count(&server, "reloaded the configuration", 1);
    let mut c = server.connect();
    c.send(b"CAPA\r\n");
    assert!(c.line().starts_with("+OK"));
    let capa = c.multiline();
    assert!(
        capa.iter().any(|l| l == "LOGIN-DELAY 3600"),
        "the reloaded file's new setting applies: {capa:?}"
    );
    c.ok("USER alice");
    let reply = c.ok("PASS secret");
    assert!(
        reply.ends_with("delete mode"),
        "--mode delete still wins over the file's keep: {reply}"
    );
}

#[test]
fn refuses_user_root_without_allow_root() {
    if !geteuid().is_root() {
        eprintln!(
            "SKIPPED refuses_user_root_without_allow_root: starting as root needs root (CI \
             runs as root); running as uid {}",
            geteuid()
        );
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let mut args = serve_args(root.path());
    args.retain(|a| a != "--allow-root");
    args.extend(["--user".into(), "root".into()]);
    let (status, _, stderr) = run(&mut pop3d(&args));
    assert!(!status.success(), "served as root: {stderr}");
    assert!(
        stderr.contains("pop3d: refusing to serve mail as root"),
        "{stderr}"
    );
}

#[test]
fn socket_activated_by_pop3d_socket_port_995_is_implicit_tls() {
    if !geteuid().is_root() {
        eprintln!(
            "SKIPPED socket_activated_by_pop3d_socket_port_995_is_implicit_tls: binding port \
             995 needs root (CI runs as root); running as uid {}",
            geteuid()
        );
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let (cert, key) = make_cert(root.path(), "server");
    let mut args = serve_args(root.path());
    args.extend([
        "--tls-cert".into(),
        cert.display().to_string(),
        "--tls-key".into(),
        key.display().to_string(),
    ]);
    // As systemd names them for pop3d.socket's two ListenStream= lines: after the unit.
    let plain: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let tls: SocketAddr = "127.0.0.1:995".parse().unwrap();
    let daemon = socket_activate(&[(plain, "pop3d.socket"), (tls, "pop3d.socket")], &args);
    let mut c = Client::connect(plain);
    wait_ready(&daemon);
    let log = daemon.log();
    assert!(
        log.contains(&format!("listening on {plain} (plain POP3, from systemd)"))
            && log.contains(&format!("listening on {tls} (implicit TLS, from systemd)")),
        "{log}"
    );
    c.ok("QUIT");
    let (status, stdout, stderr) = run_with_input(
        Command::new("openssl").args(["s_client", "-connect", &tls.to_string(), "-quiet"]),
        Some(b"QUIT\r\n"),
    );
    assert!(status.success(), "{stdout}{stderr}");
    assert!(
        stdout.starts_with("+OK"),
        "greeting over TLS on 995: {stdout}"
    );
}

#[test]
fn metrics_count_keep_mode_updates_by_mode() {
    let server = Server::start(USERS, &["--metrics", "127.0.0.1:0"]);
    let metrics = metrics_addr(&server);
    let maildir = server.maildir("alice");
    for i in 0..3 {
        deliver(&maildir, 1_700_000_000 + i, b"Subject: x\n\nx\n");
    }
    let mut phone = server.login("alice+phone", "secret");
    phone.ok("DELE 1");
    phone.ok("DELE 2");
    let body = http_get(metrics, "/metrics").2;
    assert!(
        body.lines()
            .any(|l| l == "pop3d_sessions_open{mode=\"keep\"} 1"),
        "{body}"
    );
    phone.ok("QUIT");
    assert!(server.wait_for_log("end=quit"));
    let body = http_get(metrics, "/metrics").2;
    for line in [
        "pop3d_updates_applied_total{mode=\"keep\"} 2",
        "pop3d_sessions_open{mode=\"keep\"} 0",
    ] {
        assert!(body.lines().any(|l| l == line), "{line:?} in:\n{body}");
    }
    assert_eq!(
        messages_on_disk(&maildir).len(),
        3,
        "keep mode removes nothing"
    );
}

/// Reads until the peer closes (or resets); what came meanwhile.
fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("read: {e} (after {got:?})"),
        }
    }
}

// BUG: a session waiting out the pause after a failed login is not busy (README: busy is "a
// RETR, a QUIT being applied"), yet SIGTERM waits for the pause to end: the pause is slept
// without watching for shutdown. With the defaults (pauses up to 15 s, grace 10 s) one
// password guesser makes every `systemctl stop` or restart take the whole grace period.
#[test]
fn sigterm_does_not_wait_for_a_session_sitting_out_a_failed_login_pause() {
    let mut server = Server::start(
        USERS,
        &["--auth-failure-delay", "8s", "--shutdown-grace", "10s"],
    );
    let mut guesser = server.connect();
    guesser.ok("USER alice");
    guesser.send(b"PASS wrong\r\n");
    assert!(server.wait_for_log("login failed"), "{}", server.log());
    let sent = Instant::now();
    signal(server.pid(), Signal::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(15));
    let took = sent.elapsed();
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let rest = String::from_utf8_lossy(&guesser.read_to_end()).into_owned();
    assert!(
        rest.is_empty() || rest.starts_with("-ERR"),
        "only an -ERR, if anything: {rest:?}"
    );
    assert!(
        took < Duration::from_secs(2),
        "SIGTERM waited {took:?} for a connection that was only sitting out its 8 s \
         failed-login pause:\n{}",
        server.log()
    );
}

// BUG: a connection to the implicit-TLS port that has not sent its ClientHello is not busy
// either, yet SIGTERM waits for it for the whole grace period (the handshake waits up to the
// login timeout without watching for shutdown), then logs it as "still busy". Any idle
// client or scanner on port 995 makes every stop take the whole grace period.
#[test]
fn sigterm_does_not_wait_for_a_tls_handshake_that_never_starts() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = make_cert(dir.path(), "server");
    let mut server = Server::start(
        USERS,
        &[
            "--listen-tls",
            "127.0.0.1:0",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--shutdown-grace",
            "6s",
        ],
    );
    let mut idle = TcpStream::connect(server.tls_addr.unwrap()).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // An idle plain connection that sent STLS and then nothing is the same case.
    let mut stls = server.connect();
    stls.ok("STLS");
    std::thread::sleep(Duration::from_millis(200));
    let sent = Instant::now();
    signal(server.pid(), Signal::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(15));
    let took = sent.elapsed();
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert_eq!(read_until_closed(&mut idle), b"", "closed, nothing sent");
    assert!(
        took < Duration::from_secs(2),
        "SIGTERM waited {took:?} for connections that never started their TLS handshake:\n{}",
        server.log()
    );
    assert!(!server.log().contains("still busy"), "{}", server.log());
}
