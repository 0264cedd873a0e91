//! Abuse resistance over real TCP: failed-login penalties that grow per address, connection
//! and session limits, LOGIN-DELAY, and log lines fail2ban can match.

mod common;

use std::time::{Duration, Instant};

use common::{Client, Server, deliver};

const USERS: &str = "alice:{PLAIN}secret::::::\nbob:{PLAIN}pw::::::\n";

/// One failed PASS; returns how long the -ERR took.
fn failed_login(c: &mut Client) -> Duration {
    c.ok("USER alice");
    let start = Instant::now();
    let reply = c.err("PASS guess");
    assert!(reply.starts_with("-ERR [AUTH]"), "{reply}");
    start.elapsed()
}

#[test]
fn the_failure_delay_grows_for_a_guessing_address_and_caps() {
    let server = Server::start(
        USERS,
        &[
            "--auth-failure-delay",
            "100ms",
            "--auth-failure-delay-max",
            "400ms",
        ],
    );
    // A bounded brute force: 6 guesses over 3 connections (3 failures close a connection).
    let mut delays = Vec::new();
    for _ in 0..3 {
        let mut c = server.connect();
        delays.push(failed_login(&mut c));
        delays.push(failed_login(&mut c));
    }
    let ms: Vec<u128> = delays.iter().map(Duration::as_millis).collect();
    assert!(ms[0] >= 100 && ms[0] < 350, "{ms:?}");
    assert!(ms[1] >= 200, "{ms:?}");
    assert!(
        ms[2] >= 400 && ms[5] >= 400,
        "capped at the maximum: {ms:?}"
    );
    assert!(
        ms.iter().all(|&d| d < 1500),
        "never past the cap by much: {ms:?}"
    );
    // A correct login is answered at once, and forgives the address.
    let mut c = server.connect();
    c.ok("USER bob");
    let start = Instant::now();
    c.ok("PASS pw");
    assert!(start.elapsed() < Duration::from_millis(300));
    let mut c = server.connect();
    assert!(
        failed_login(&mut c) < Duration::from_millis(350),
        "forgiven after success"
    );
}

#[test]
fn a_guessing_client_does_not_slow_other_clients() {
    let server = Server::start(
        USERS,
        &[
            "--auth-failure-delay",
            "2s",
            "--auth-failure-delay-max",
            "2s",
        ],
    );
    deliver(&server.maildir("bob"), 1, b"Subject: x\n\nx\n");
    let mut attacker = server.connect();
    attacker.ok("USER alice");
    attacker.send(b"PASS guess\r\n");
    // While the attacker waits for its answer, another client logs in and reads mail.
    std::thread::sleep(Duration::from_millis(100));
    let start = Instant::now();
    let mut c = server.login("bob", "pw");
    assert_eq!(c.fetch("RETR 1"), b"Subject: x\r\n\r\nx\r\n");
    assert!(
        start.elapsed() < Duration::from_millis(1000),
        "{:?}",
        start.elapsed()
    );
    assert!(attacker.line().starts_with("-ERR [AUTH]"));
}

#[test]
fn failed_logins_are_logged_for_fail2ban_without_the_password() {
    let server = Server::start(USERS, &[]);
    let mut c = server.connect();
    c.ok("USER nosuchuser");
    c.err("PASS hunter2");
    assert!(server.wait_for_log("login failed: user=\"nosuchuser\" addr=127.0.0.1"));
    assert!(!server.log().contains("hunter2"));
    // The README's fail2ban failregex matches the line.
    let line = server
        .log()
        .lines()
        .find(|l| l.contains("login failed"))
        .unwrap()
        .to_owned();
    assert!(line.contains(" addr=127.0.0.1"), "{line}");
}

#[test]
fn connections_per_address_are_limited() {
    let server = Server::start(USERS, &["--max-connections-per-ip", "3"]);
    let held: Vec<Client> = (0..3).map(|_| server.connect()).collect();
    let mut extra = std::net::TcpStream::connect(server.addr).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reply = String::new();
    std::io::Read::read_to_string(&mut extra, &mut reply).unwrap();
    assert!(
        reply.starts_with("-ERR [SYS/TEMP] Too many connections from your address"),
        "{reply}"
    );
    drop(held);
    // Places come back when connections close.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut c = std::net::TcpStream::connect(server.addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 3];
        std::io::Read::read_exact(&mut c, &mut buf).unwrap();
        if &buf == b"+OK" {
            break;
        }
        assert!(Instant::now() < deadline, "places never came back");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sessions_per_user_and_address_are_limited() {
    let server = Server::start(
        USERS,
        &["--max-sessions-per-user-ip", "2", "--mode", "keep"],
    );
    let _a = server.login("alice", "secret");
    let _b = server.login("alice+phone", "secret");
    let mut c = server.connect();
    c.ok("USER alice+tablet");
    let reply = c.err("PASS secret");
    assert!(
        reply.starts_with("-ERR [IN-USE] Too many sessions"),
        "{reply}"
    );
    // Another user from the same address is not affected.
    server.login("bob", "pw");
}

#[test]
fn login_delay_is_announced_and_enforced() {
    let server = Server::start(USERS, &["--login-delay", "60s"]);
    let mut c = server.connect();
    c.ok("CAPA");
    assert!(c.multiline().contains(&"LOGIN-DELAY 60".to_owned()));
    c.ok("USER alice");
    c.ok("PASS secret");
    c.ok("QUIT");
    let mut again = server.connect();
    again.ok("USER alice");
    let reply = again.err("PASS secret");
    assert!(reply.starts_with("-ERR [LOGIN-DELAY]"), "{reply}");
    // Another device has its own clock.
    server.login("alice+phone", "secret");
}

#[test]
fn three_failed_logins_close_the_connection() {
    let server = Server::start(USERS, &[]);
    let mut c = server.connect();
    for _ in 0..3 {
        failed_login(&mut c);
    }
    assert_eq!(c.read_to_end(), b"");
}

/// A client that keeps the connection busy without logging in (a CAPA every 200 ms, well
/// within the idle timeout) is closed once the login time limit is up; one that logged in
/// in time is not.
#[test]
fn a_busy_client_that_never_logs_in_is_closed_at_the_login_time_limit() {
    let server = Server::start(USERS, &["--login-time-limit", "2s"]);
    let started = Instant::now();
    let mut busy = server.connect();
    let mut member = server.connect();
    member.ok("USER alice");
    member.ok("PASS secret");
    let closed = loop {
        assert!(started.elapsed() < Duration::from_secs(15), "never closed");
        std::thread::sleep(Duration::from_millis(200));
        busy.send(b"CAPA\r\n");
        let status = busy.line();
        if status.starts_with("-ERR") {
            assert!(status.contains("Login time limit"), "{status}");
            assert_eq!(busy.read_to_end(), b"", "closed after the -ERR");
            break started.elapsed();
        }
        assert!(status.starts_with("+OK"), "{status}");
        busy.multiline();
    };
    assert!(
        closed >= Duration::from_millis(1900),
        "closed after {closed:?}"
    );
    // The logged-in session outlives the limit.
    member.ok("NOOP");
    member.ok("QUIT");
}
