//! Hostile input against the real daemon, with its memory watched: overlong lines (1 KB,
//! 64 KB, 10 MB without a line end), NUL bytes, bare CR and LF, binary garbage, a client that
//! never reads its replies, slowloris clients, 1,000 idle connections, garbage on the TLS
//! port, and user names that try to climb out of the Maildir template. Through all of it
//! the daemon stays up, serves other clients normally, and its resident memory (VmRSS in
//! /proc/PID/status) stays bounded.
//!
//! Every loop is bounded in count and in time; garbage comes from a seeded xorshift.
//!
//! `a_device_named_like_a_temporary_state_file_keeps_its_hidden_set` fails until the daemon
//! keeps device hidden-set files and temporary state files apart (see the test).

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use common::{Client, Rng, Server, TestCert, crlf, deliver, run_with_limit};

const USERS: &str = "alice:{PLAIN}secret::::::\nbob:{PLAIN}pw::::::\n";

// ---------------------------------------------------------------------------------------
// Helpers: garbage, memory, the daemon's file descriptors, a client that measures
// ---------------------------------------------------------------------------------------

/// The daemon's resident memory in KiB.
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// How many files (sockets included) the daemon has open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Samples the daemon's RSS every 10 ms in the background; `stop` returns the peak.
struct RssPeak {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl RssPeak {
    fn start(pid: u32) -> RssPeak {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            // Bounded: at most a minute of samples, whatever the test does.
            for _ in 0..6000 {
                peak = peak.max(rss_kb(pid));
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            peak
        });
        RssPeak { stop, thread }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// Waits (bounded) until the daemon has at most `fds` files open: closed connections are
/// really gone. Returns how many it has.
fn wait_for_fds(pid: u32, fds: usize, limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    loop {
        let now = open_fds(pid);
        if now <= fds || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The daemon's open files once the connections of earlier sessions are gone: the lowest of
/// a few samples.
fn settled_fds(pid: u32) -> usize {
    let mut low = open_fds(pid);
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(20));
        low = low.min(open_fds(pid));
    }
    low
}

/// The RSS after the daemon settles: the lowest of a few samples over `over`.
fn settled_rss(pid: u32, over: Duration) -> u64 {
    let deadline = Instant::now() + over;
    let mut low = rss_kb(pid);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        low = low.min(rss_kb(pid));
    }
    low
}

/// One ordinary session of `user` (delete mode, its own Maildir holding one message
/// `body`): log in, STAT, RETR, QUIT. Returns how long it took.
fn ordinary_session(server: &Server, user: &str, pass: &str, body: &[u8]) -> Duration {
    let start = Instant::now();
    let mut c = server.login(user, pass);
    assert!(c.ok("STAT").starts_with("+OK 1 "));
    assert_eq!(c.fetch("RETR 1"), crlf(body));
    c.ok("QUIT");
    start.elapsed()
}

/// Runs ordinary sessions on a thread, one every `every`, until stopped; their durations.
struct Bystander {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Duration>>,
}

const BYSTANDER_BODY: &[u8] = b"Subject: ordinary\n\nstill served\n";

impl Bystander {
    /// The daemon at `addr` must have user bob (password pw) with `BYSTANDER_BODY` delivered.
    fn start(addr: SocketAddr, every: Duration) -> Bystander {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut times = Vec::new();
            // Bounded: at most 600 sessions.
            for _ in 0..600 {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                let start = Instant::now();
                let mut c = Client::connect(addr);
                c.ok("USER bob");
                c.ok("PASS pw");
                assert!(c.ok("STAT").starts_with("+OK 1 "));
                assert_eq!(c.fetch("RETR 1"), crlf(BYSTANDER_BODY));
                c.ok("QUIT");
                times.push(start.elapsed());
                std::thread::sleep(every);
            }
            times
        });
        Bystander { stop, thread }
    }

    /// Stops it; (sessions, slowest).
    fn stop(self) -> (usize, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        let times = self.thread.join().expect("an ordinary client failed");
        (times.len(), times.iter().max().copied().unwrap_or_default())
    }
}

/// A server with bob's one message for the bystander and two messages for alice.
fn hostile_server(extra: &[&str]) -> Server {
    let server = Server::start(USERS, extra);
    deliver(&server.maildir("bob"), 1, BYSTANDER_BODY);
    deliver(&server.maildir("alice"), 1, b"Subject: one\n\n1\n");
    deliver(&server.maildir("alice"), 2, b"Subject: two\n\n2\n");
    // A first session, so the pools and caches a normal day uses exist before measuring.
    ordinary_session(&server, "bob", "pw", BYSTANDER_BODY);
    server
}

/// The slowest ordinary session allowed while the daemon is under attack (generous: this
/// machine is shared with builds).
const SLOWEST: Duration = Duration::from_secs(3);

// ---------------------------------------------------------------------------------------
// Lines
// ---------------------------------------------------------------------------------------

/// Sends `data` on a thread of its own (the daemon replies while we write), returns the
/// thread; its result is how much was written before the daemon closed.
fn send_in_background(stream: &TcpStream, data: Vec<u8>) -> std::thread::JoinHandle<usize> {
    let mut stream = stream.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut sent = 0;
        for chunk in data.chunks(64 * 1024) {
            if stream.write_all(chunk).is_err() {
                break;
            }
            sent += chunk.len();
        }
        sent
    })
}

#[test]
fn overlong_lines_nul_bytes_bare_line_ends_and_garbage_get_err_with_bounded_memory() {
    let started = Instant::now();
    let mut server = hostile_server(&[]);
    let pid = server.pid();
    let rss_before = rss_kb(pid);
    let peak = RssPeak::start(pid);
    let bystander = Bystander::start(server.addr, Duration::from_millis(10));

    for logged_in in [false, true] {
        let mut c = if logged_in {
            server.login("alice", "secret")
        } else {
            server.connect()
        };
        // A command that works in this state, to show the session goes on.
        let probe = |c: &mut Client| {
            if logged_in {
                assert!(c.ok("STAT").starts_with("+OK 2 "));
            } else {
                c.ok("CAPA");
                c.multiline();
            }
        };
        // Overlong lines: one -ERR each, then normal service.
        for len in [1 << 10, 64 << 10] {
            let mut line = vec![b'A'; len];
            line.extend_from_slice(b"\r\n");
            c.send(&line);
            let reply = c.line();
            assert!(reply.starts_with("-ERR"), "{len}-byte line: {reply}");
            probe(&mut c);
        }
        // 10 MB without a line end: the -ERR comes early, the rest is skipped unbuffered.
        let writer = send_in_background(&c.stream, vec![b'B'; 10 << 20]);
        let reply = c.line();
        assert!(reply.starts_with("-ERR"), "10 MB line: {reply}");
        assert_eq!(writer.join().unwrap(), 10 << 20);
        c.send(b"\r\n");
        probe(&mut c);

        // NUL bytes, bare CRs, empty lines: -ERR each. A bare LF ends a line (lenient).
        let cases: [(&[u8], &[&str]); 8] = [
            (b"NOOP\0\r\n", &["-ERR"]),
            (b"\0\0\0\0\r\n", &["-ERR"]),
            (b"USER al\0ice\r\n", &["-ERR"]),
            (b"NOOP\rSTAT\r\n", &["-ERR"]),
            (b"\r\r\r\n", &["-ERR"]),
            (b"\n", &["-ERR"]),
            (b"CAPA\n", &["+OK"]),
            (b"\xc3\x28\xa0\xa1\r\n", &["-ERR"]),
        ];
        for (input, want) in cases {
            c.send(input);
            for prefix in want {
                let reply = c.line();
                assert!(reply.starts_with(prefix), "{input:?}: {reply}");
                if reply.starts_with("+OK Capa") {
                    c.multiline();
                }
            }
            probe(&mut c);
        }

        // Binary garbage: -ERR per line, then the connection is closed after 20 bad
        // commands in a row, whatever is still coming (up to 32 MB: more than socket
        // buffers hold, so the writer sees the close).
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(logged_in));
        let block = rng.bytes(64 << 10);
        let writer = send_in_background(&c.stream, block.repeat(512));
        c.stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let rest = String::from_utf8_lossy(&c.read_to_end()).into_owned();
        let errs = rest.matches("-ERR").count();
        assert!(
            !rest.contains("+OK") && errs <= 20 && rest.contains("too many bad commands"),
            "garbage (logged in: {logged_in}): {errs} -ERR: {rest}"
        );
        let sent = writer.join().unwrap();
        assert!(
            sent < 32 << 20,
            "the daemon read all the garbage, {sent} bytes"
        );
        // Its lock was released with the connection: alice can log in again.
        if logged_in {
            let mut again = server.login("alice", "secret");
            again.ok("QUIT");
        }
    }

    let (sessions, slowest) = bystander.stop();
    let peak = peak.stop();
    let rss_after = settled_rss(pid, Duration::from_millis(300));
    println!(
        "lines: RSS {rss_before} KiB before, {peak} KiB peak, {rss_after} KiB after; \
         {sessions} ordinary sessions meanwhile, slowest {slowest:?}; {:?}",
        started.elapsed()
    );
    assert!(server.is_running());
    assert!(
        sessions >= 3 && slowest < SLOWEST,
        "{sessions} sessions, {slowest:?}"
    );
    assert!(
        peak < rss_before + 8 * 1024,
        "10 MB lines must not be buffered: {peak} KiB peak"
    );
    assert!(rss_after < rss_before + 4 * 1024, "{rss_after} KiB after");
}

#[test]
fn a_client_that_never_reads_its_replies_costs_bounded_memory() {
    let mut server = hostile_server(&[]);
    let pid = server.pid();
    let maildir = server.maildir("alice");
    for i in 0..300 {
        deliver(&maildir, 10 + i, b"Subject: s\n\nx\n");
    }
    let rss_before = rss_kb(pid);
    let mut c = server.login("alice", "secret");
    // 3,000 pipelined LISTs: 18 KB asked, about 10 MB of replies owed, none read for now.
    let commands = "LIST\r\n".repeat(3000);
    let writer = send_in_background(&c.stream, commands.into_bytes());
    let peak = RssPeak::start(pid);
    std::thread::sleep(Duration::from_millis(800));
    // Meanwhile others are served.
    let took = ordinary_session(&server, "bob", "pw", BYSTANDER_BODY);
    let peak_kb = peak.stop();
    // Now read it all: every reply arrives, complete and in order.
    for i in 0..3000 {
        let status = c.line();
        assert!(status.starts_with("+OK 302 messages"), "LIST {i}: {status}");
        assert_eq!(c.multiline().len(), 302, "LIST {i}");
    }
    assert_eq!(writer.join().unwrap(), 18_000);
    c.ok("QUIT");
    let rss_after = settled_rss(pid, Duration::from_millis(300));
    println!(
        "unread replies: RSS {rss_before} KiB before, {peak_kb} KiB while 10 MB of replies \
         were owed, {rss_after} KiB after; an ordinary session meanwhile took {took:?}"
    );
    assert!(server.is_running());
    assert!(took < SLOWEST);
    assert!(
        peak_kb < rss_before + 4 * 1024,
        "replies to an unread client are buffered: {peak_kb} KiB"
    );
}

// ---------------------------------------------------------------------------------------
// Slowloris
// ---------------------------------------------------------------------------------------

/// A raw connection past its greeting.
fn raw_connect(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut greeting = Vec::new();
    let mut byte = [0u8];
    while !greeting.ends_with(b"\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "greeting cut short");
        greeting.push(byte[0]);
        assert!(greeting.len() < 512);
    }
    assert!(greeting.starts_with(b"+OK"));
    s
}

#[test]
fn slowloris_clients_do_not_hold_up_others() {
    let started = Instant::now();
    let mut server = hostile_server(&[]);
    let pid = server.pid();
    let big: Vec<u8> = b"Subject: big\n\n"
        .iter()
        .copied()
        .chain(std::iter::repeat_n(b'y', 8 << 20))
        .chain(*b"\n")
        .collect();
    deliver(&server.maildir("alice"), 100, &big);
    let rss_before = rss_kb(pid);
    let peak = RssPeak::start(pid);

    // Five before login dribbling "CAPA\r\n", five logged-in keep devices dribbling
    // "STAT\r\n", one byte a second; one that asks for 8 MB and reads none of it.
    let mut slow: Vec<(TcpStream, &[u8])> = (0..5)
        .map(|_| (raw_connect(server.addr), &b"CAPA\r\n"[..]))
        .collect();
    for i in 0..5 {
        let c = server.login(&format!("alice+slow{i}"), "secret");
        let s = c.stream.try_clone().unwrap();
        drop(c);
        slow.push((s, &b"STAT\r\n"[..]));
    }
    let mut stuck = server.login("alice+stuck", "secret");
    stuck.send(b"RETR 3\r\n");

    let bystander = Bystander::start(server.addr, Duration::from_millis(100));
    // Six bytes, one a second: five seconds.
    for step in 0..6 {
        if step > 0 {
            std::thread::sleep(Duration::from_secs(1));
        }
        for (stream, text) in &mut slow {
            stream.write_all(&text[step..=step]).unwrap();
        }
    }
    for (stream, text) in &mut slow {
        let mut reply = [0u8; 3];
        stream.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"+OK", "{:?}", String::from_utf8_lossy(text));
    }
    let (sessions, slowest) = bystander.stop();
    // The reader that never read is still served once it reads.
    let _ = stuck.stream.set_read_timeout(Some(Duration::from_secs(10)));
    assert_eq!(stuck.line(), format!("+OK {} octets", crlf(&big).len()));
    drop(stuck);
    drop(slow);
    let peak = peak.stop();
    let rss_after = settled_rss(pid, Duration::from_millis(300));
    println!(
        "slowloris: 10 clients at one byte a second for 5 s and one stuck 8 MB RETR: \
         {sessions} ordinary sessions meanwhile, slowest {slowest:?}; RSS {rss_before} KiB \
         before, {peak} KiB peak, {rss_after} KiB after; {:?}",
        started.elapsed()
    );
    assert!(server.is_running());
    assert!(
        sessions >= 20 && slowest < SLOWEST,
        "{sessions}, {slowest:?}"
    );
    assert!(peak < rss_before + 8 * 1024, "{peak} KiB");
}

// ---------------------------------------------------------------------------------------
// 1,000 idle connections
// ---------------------------------------------------------------------------------------

/// The soft limit on open files of this process (the daemon inherits it).
fn open_file_limit() -> usize {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

/// One wave of idle connections: opened (each greeted), checked, closed. Returns the RSS
/// with them open, the open files with them, and the RSS once they are gone.
fn idle_wave(server: &Server, count: usize, fds_before: usize) -> (u64, usize, u64, usize) {
    let pid = server.pid();
    let mut idle = Vec::with_capacity(count);
    for _ in 0..count {
        idle.push(raw_connect(server.addr));
    }
    let fds_peak = open_fds(pid);
    assert!(
        fds_peak >= fds_before + count,
        "{fds_peak} fds: not all {count} accepted"
    );
    let rss_peak = rss_kb(pid);
    // Others are served, and idle clients still get answers.
    let took = ordinary_session(server, "bob", "pw", BYSTANDER_BODY);
    assert!(took < SLOWEST, "an ordinary session took {took:?}");
    for s in idle.iter_mut().step_by(100) {
        s.write_all(b"CAPA\r\n").unwrap();
        let mut reply = [0u8; 3];
        s.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"+OK");
    }
    drop(idle);
    let fds_after = wait_for_fds(pid, fds_before, Duration::from_secs(10));
    assert!(
        fds_after <= fds_before,
        "connections not closed: {fds_after} fds"
    );
    (
        rss_peak,
        fds_peak,
        settled_rss(pid, Duration::from_millis(300)),
        fds_after,
    )
}

#[test]
fn a_thousand_idle_connections_cost_little_and_their_memory_is_reused() {
    let started = Instant::now();
    let limit = open_file_limit();
    // Room for the test's own files and the other tests of this binary running beside it.
    let count = 1000.min(limit.saturating_sub(200));
    if count < 1000 {
        println!("idle: open-file limit {limit}: {count} connections instead of 1,000");
    }
    let mut server = hostile_server(&[
        "--max-connections-per-ip",
        "2000",
        "--max-connections",
        "3000",
    ]);
    let pid = server.pid();
    let fds_before = settled_fds(pid);
    let rss_before = rss_kb(pid);
    let (peak1, fds_peak, after1, fds_after) = idle_wave(&server, count, fds_before);
    // A second wave: freed memory is reused, so a burst costs its peak once, not again.
    let (peak2, _, after2, _) = idle_wave(&server, count, fds_before);
    let per_connection = peak1.saturating_sub(rss_before) * 1024 / count as u64;
    println!(
        "idle: {count} connections: RSS {rss_before} KiB before, {peak1} KiB with them \
         ({per_connection} bytes each), {after1} KiB after they closed; a second wave: \
         {peak2} KiB, then {after2} KiB; fds {fds_before} -> {fds_peak} -> {fds_after}; {:?}",
        started.elapsed()
    );
    assert!(server.is_running());
    assert!(
        per_connection < 64 * 1024,
        "{per_connection} bytes per idle connection"
    );
    // Not "back to where it was": glibc keeps the freed heap of a burst for reuse (the heap
    // itself is freed; malloc_trim would return it). What must hold is that it is reused.
    assert!(
        peak2 <= peak1 + 2048 && after2 <= after1 + 2048,
        "memory of closed connections is not reused: {rss_before} -> {peak1} -> {after1} \
         -> {peak2} -> {after2} KiB"
    );
    assert!(
        after1 <= peak1 + 1024,
        "memory grows after the connections close: {peak1} -> {after1} KiB"
    );
}

// ---------------------------------------------------------------------------------------
// Garbage on the TLS port
// ---------------------------------------------------------------------------------------

/// Sends `data` (write errors ignored: the daemon may close first), then waits for the
/// daemon to close; how long that took from the connect.
fn attack(addr: SocketAddr, data: &[u8], then_stall: bool) -> Duration {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let _ = s.write_all(data);
    if !then_stall {
        let _ = s.shutdown(Shutdown::Write);
    }
    let mut sink = [0u8; 4096];
    loop {
        match s.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                assert!(
                    !matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ),
                    "the daemon never closed a garbage connection"
                );
                break;
            }
        }
    }
    start.elapsed()
}

#[test]
fn garbage_on_the_tls_port_costs_bounded_memory_and_others_are_served() {
    let started = Instant::now();
    let certs = TestCert::new();
    let (cert, key) = (certs.cert(), certs.key());
    let mut server = hostile_server(&[
        "--tls-cert",
        cert,
        "--tls-key",
        key,
        "--listen-tls",
        "127.0.0.1:0",
        "--login-timeout",
        "2s",
    ]);
    let pid = server.pid();
    let tls = server.tls_addr.unwrap();
    let rss_before = rss_kb(pid);
    let peak = RssPeak::start(pid);
    let bystander = Bystander::start(server.addr, Duration::from_millis(50));

    let mut rng = Rng(0x7157_6a7b_a9e0_0001);
    let mut attacks: Vec<(&str, Vec<u8>, bool)> = Vec::new();
    for _ in 0..40 {
        attacks.push(("64 KB of random bytes", rng.bytes(64 << 10), false));
    }
    attacks.push(("10 MB of random bytes", rng.bytes(10 << 20), false));
    for _ in 0..20 {
        // A handshake record promising 16 KB, a little of it, then silence.
        let mut hello = vec![
            0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0x3f, 0xfc, 0x03, 0x03,
        ];
        hello.extend(rng.bytes(100));
        attacks.push(("a stalled 16 KB ClientHello", hello, true));
    }
    for _ in 0..20 {
        // A record longer than TLS allows.
        let mut record = vec![0x16, 0x03, 0x03, 0xff, 0xff];
        record.extend(rng.bytes(4096));
        attacks.push(("an oversized record", record, false));
    }
    for _ in 0..10 {
        attacks.push((
            "plaintext POP3",
            b"USER alice\r\nPASS secret\r\nSTAT\r\n".to_vec(),
            false,
        ));
    }
    // All at once, a thread each.
    let closed: Vec<(&str, bool, Duration)> = std::thread::scope(|s| {
        let threads: Vec<_> = attacks
            .iter()
            .map(|(what, data, stall)| s.spawn(move || (*what, *stall, attack(tls, data, *stall))))
            .collect();
        // A real TLS client meanwhile.
        let out = run_with_limit(
            common::s_client_command(tls, cert).arg("-quiet"),
            b"USER alice\r\nPASS secret\r\nSTAT\r\nQUIT\r\n",
            Duration::from_secs(20),
            "openssl",
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            text.contains("+OK 2 ") && text.contains("+OK Logging out"),
            "TLS client during the attack: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let (sessions, slowest) = bystander.stop();
    let peak = peak.stop();
    let rss_after = settled_rss(pid, Duration::from_millis(300));
    let longest_stall = closed
        .iter()
        .filter(|c| c.1)
        .map(|c| c.2)
        .max()
        .unwrap_or_default();
    let longest_other = closed
        .iter()
        .filter(|c| !c.1)
        .map(|c| c.2)
        .max()
        .unwrap_or_default();
    println!(
        "tls garbage: {} connections ({} kinds) closed by the daemon, stalled ones after at \
         most {longest_stall:?} (login timeout 2 s), others after at most {longest_other:?}; \
         {sessions} ordinary sessions meanwhile, slowest {slowest:?}; RSS {rss_before} KiB \
         before, {peak} KiB peak, {rss_after} KiB after; {:?}",
        closed.len(),
        closed.iter().map(|c| c.0).collect::<BTreeSet<_>>().len(),
        started.elapsed()
    );
    assert!(server.is_running());
    assert!(
        sessions >= 5 && slowest < SLOWEST,
        "{sessions}, {slowest:?}"
    );
    assert!(
        longest_stall >= Duration::from_millis(1500) && longest_stall < Duration::from_secs(8),
        "stalled handshakes closed after {longest_stall:?}"
    );
    assert!(peak < rss_before + 16 * 1024, "{peak} KiB");
    assert!(rss_after < rss_before + 4 * 1024, "{rss_after} KiB");
}

// ---------------------------------------------------------------------------------------
// User names that try to escape the Maildir template
// ---------------------------------------------------------------------------------------

/// Every path under `dir`, symlinks not followed.
fn walk(dir: &Path) -> BTreeSet<PathBuf> {
    let mut found = BTreeSet::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let e = e.unwrap();
            let path = e.path();
            if e.file_type().unwrap().is_dir() {
                todo.push(path.clone());
            }
            found.insert(path);
        }
    }
    found
}

/// Whether a name is one a path can hold as it is (what the daemon must insist on).
fn harmless(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.contains("..")
        && !name.starts_with('.')
        && !name.contains('/')
        && !name.contains('\\')
        && !name.chars().any(char::is_control)
}

/// One login attempt on a fresh connection (three failures would close it): the reply.
fn try_login(server: &Server, how: &str, name: &str, pass: &str) -> String {
    let mut c = server.connect();
    match how {
        "USER" => {
            let mut line = b"USER ".to_vec();
            line.extend_from_slice(name.as_bytes());
            line.extend_from_slice(b"\r\n");
            c.send(&line);
            let reply = c.line();
            if !reply.starts_with("+OK") {
                return reply;
            }
            c.cmd(&format!("PASS {pass}"))
        }
        "AUTH PLAIN" => {
            let reply = c.cmd("AUTH PLAIN");
            assert_eq!(reply, "+ ");
            let answer = BASE64.encode(format!("\0{name}\0{pass}"));
            c.cmd(&answer)
        }
        "AUTH PLAIN authzid" => {
            let reply = c.cmd("AUTH PLAIN");
            assert_eq!(reply, "+ ");
            c.cmd(&BASE64.encode(format!("{name}\0alice\0secret")))
        }
        other => panic!("{other}"),
    }
}

#[test]
fn user_names_that_try_to_escape_the_maildir_are_refused_and_create_nothing_outside() {
    let escape = format!("pop3d-escape-{}", std::process::id());
    let long = "L".repeat(300);
    let in_file: Vec<String> = vec![
        format!("../{escape}"),
        format!("../../{escape}"),
        format!("x/../../../{escape}"),
        "a/b".into(),
        "..".into(),
        ".hidden".into(),
        "a\\b".into(),
        "%2e%2e".into(),
        format!("%2e%2e%2f%2e%2e%2f{escape}"),
        "%u%n%d%h".into(),
        long.clone(),
    ];
    let mut users = String::from("alice:{PLAIN}secret::::::\n");
    for name in &in_file {
        users.push_str(&format!("{name}:{{PLAIN}}pw::::::\n"));
    }
    let mut server = Server::start(&users, &["--auth-failure-delay-max", "20ms"]);
    let root = server.root.path().to_owned();
    let mail = root.join("mail");
    let before = walk(&root);

    let mut accepted = Vec::new();
    let mut refused = 0;
    // Names in the users file, with the right password: only the path rules stand between
    // them and the file system.
    for name in &in_file {
        for how in ["USER", "AUTH PLAIN"] {
            if how == "USER" && name.len() > 240 {
                continue; // over the 255-octet command line; AUTH PLAIN carries it
            }
            let reply = try_login(&server, how, name, "pw");
            if harmless(name) {
                // A literal name: no percent-decoding, no template expansion inside it.
                assert!(reply.starts_with("+OK"), "{how} {name:?}: {reply}");
                accepted.push(name.clone());
            } else {
                assert!(
                    reply.starts_with("-ERR [SYS/PERM]"),
                    "{how} {name:?}: {reply}"
                );
                refused += 1;
            }
        }
    }
    // Names not in the file: devices that try to climb, NUL bytes, very long names.
    let tricks: Vec<(&str, String)> = vec![
        ("USER", format!("alice+../{escape}")),
        ("USER", "alice+a/b".into()),
        ("USER", "alice+%2e%2e".into()),
        ("USER", "alice+.".into()),
        ("USER", format!("alice+{}", "d".repeat(65))),
        ("USER", "al\0ice".into()),
        ("USER", "alice\0../x".into()),
        ("USER", "A".repeat(250)),
        ("AUTH PLAIN", format!("alice+../{escape}")),
        ("AUTH PLAIN", "al\0ice".into()),
        ("AUTH PLAIN", "N".repeat(2900)),
        ("AUTH PLAIN authzid", format!("../{escape}")),
        ("AUTH PLAIN authzid", "alice+../x".into()),
    ];
    for (how, name) in &tricks {
        let pass = if name.starts_with("alice") {
            "secret"
        } else {
            "pw"
        };
        let reply = try_login(&server, how, name, pass);
        assert!(reply.starts_with("-ERR"), "{how} {name:?}: {reply}");
        refused += 1;
    }
    // A SASL answer longer than the 4 KB SASL line: the exchange ends.
    let mut c = server.connect();
    assert_eq!(c.cmd("AUTH PLAIN"), "+ ");
    let answer = BASE64.encode(format!("\0{}\0pw", "M".repeat(6000)));
    assert!(c.cmd(&answer).starts_with("-ERR"));
    refused += 1;

    let created: Vec<PathBuf> = walk(&root).difference(&before).cloned().collect();
    let allowed: BTreeSet<PathBuf> = accepted.iter().map(|n| mail.join(n)).collect();
    for path in created.iter().filter(|p| **p != mail) {
        let top = path
            .strip_prefix(&mail)
            .ok()
            .and_then(|p| p.components().next());
        let ok = top.is_some_and(|t| allowed.contains(&mail.join(t)));
        assert!(
            ok,
            "created outside an accepted user's folder: {}",
            path.display()
        );
    }
    for name in &accepted {
        assert!(mail.join(name).join("Maildir/cur").is_dir(), "{name}");
    }
    let outside = root.parent().unwrap();
    assert!(!outside.join(&escape).exists(), "escaped the temp dir");
    assert!(!root.join(&escape).exists(), "escaped the mail root");
    assert!(!Path::new("/tmp").join(&escape).exists());
    accepted.dedup();
    println!(
        "names: {refused} attempts refused, {} literal names accepted inside the mail root \
         ({accepted:?}), {} paths created, none outside",
        accepted.len(),
        created.len()
    );
    assert!(server.is_running());
    let mut c = server.login("alice", "secret");
    c.ok("QUIT");
}

/// A device name is free text within `[A-Za-z0-9._-]`, and a device's hidden set lives in
/// `pop3d-hidden.DEVICE`; the primary login's hidden set is written through the temporary
/// `pop3d-hidden.tmp.PID`. A device named `tmp.PID` therefore shares its file with that
/// temporary one, and the primary login's QUIT takes the device's hidden set away.
#[test]
fn a_device_named_like_a_temporary_state_file_keeps_its_hidden_set() {
    let server = Server::start("carol:{PLAIN}pw::::::mode=keep\n", &[]);
    for i in 0..3 {
        deliver(&server.maildir("carol"), 1 + i, b"Subject: c\n\nc\n");
    }
    let device = format!("carol+tmp.{}", server.pid());
    let mut c = server.login(&device, "pw");
    c.ok("DELE 1");
    c.ok("QUIT");
    let mut c = server.login(&device, "pw");
    assert!(c.ok("STAT").starts_with("+OK 2 "), "{device} hid message 1");
    c.ok("QUIT");
    // The primary login hides another message.
    let mut c = server.login("carol", "pw");
    c.ok("DELE 2");
    c.ok("QUIT");
    let mut c = server.login(&device, "pw");
    let stat = c.ok("STAT");
    assert!(
        stat.starts_with("+OK 2 "),
        "{device}: {stat}: its hidden set was taken by the primary login's QUIT \
         (pop3d-hidden.{} is also that login's temporary file)",
        device.split_once('+').unwrap().1
    );
}
