//! The daemon over real TCP and real Maildirs: sessions in both modes, pipelining, locks,
//! drops, concurrent delivery, sizes, UIDLs and bad input.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::{Server, crlf, deliver, messages_on_disk, settle};

const USERS: &str = "alice:{PLAIN}secret::::::\nbob:{PLAIN}pw::::::mode=keep\n";

fn sample(i: usize) -> Vec<u8> {
    format!(
        "From: a@example.com\nSubject: message {i}\n\nbody {i}\n.dot line\n..two dots\n.\nend\n"
    )
    .into_bytes()
}

/// Delivers `n` sample messages to `user` and returns their unique names in order.
fn fill(server: &Server, user: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| deliver(&server.maildir(user), 1_700_000_000 + i as u64, &sample(i)))
        .collect()
}

#[test]
fn delete_mode_session_removes_exactly_the_deleted_messages_at_quit() {
    let server = Server::start(USERS, &[]);
    let names = fill(&server, "alice", 3);
    let mut c = server.login("alice", "secret");
    let total: usize = (0..3).map(|i| crlf(&sample(i)).len()).sum();
    assert_eq!(c.ok("STAT"), format!("+OK 3 {total}"));
    for i in 0..3 {
        assert_eq!(c.fetch(&format!("RETR {}", i + 1)), crlf(&sample(i)));
    }
    c.ok("DELE 2");
    c.err("RETR 2");
    c.err("DELE 2");
    assert_eq!(
        c.ok("STAT"),
        format!("+OK 2 {}", total - crlf(&sample(1)).len())
    );
    // Before QUIT nothing is gone.
    assert_eq!(messages_on_disk(&server.maildir("alice")).len(), 3);
    assert!(c.ok("QUIT").contains("1 messages deleted"));
    assert_eq!(c.read_to_end(), b"");
    let mut expected = vec![names[0].clone(), names[2].clone()];
    expected.sort();
    assert_eq!(messages_on_disk(&server.maildir("alice")), expected);
    assert!(server.wait_for_log("session end: user=\"alice\""));
}

#[test]
fn rset_unmarks_and_a_dropped_connection_deletes_nothing() {
    let server = Server::start(USERS, &[]);
    fill(&server, "alice", 3);
    let mut c = server.login("alice", "secret");
    c.ok("DELE 1");
    c.ok("DELE 2");
    assert!(c.ok("RSET").contains("3 messages"));
    c.ok("DELE 3");
    drop(c);
    // The lock goes when the server notices the drop; a login before that is [IN-USE].
    assert!(server.wait_for_log_count("end=disconnected", 1));
    let mut c = server.login("alice", "secret");
    c.ok("DELE 1");
    c.ok("DELE 2");
    c.ok("DELE 3");
    drop(c); // no QUIT: RFC 1939 §6, no UPDATE
    assert!(server.wait_for_log_count("end=disconnected", 2));
    assert_eq!(messages_on_disk(&server.maildir("alice")).len(), 3);
    let mut c = server.login("alice", "secret");
    assert!(c.ok("STAT").starts_with("+OK 3 "));
}

#[test]
fn keep_mode_hides_from_this_login_only_and_deletes_nothing() {
    let server = Server::start(USERS, &[]);
    let names = fill(&server, "bob", 4);
    let mut c = server.login("bob", "pw");
    assert_eq!(c.ok("CAPA"), "+OK Capability list follows");
    assert!(c.multiline().contains(&"X-POP3D-MODE keep".to_owned()));
    c.fetch("RETR 1");
    c.ok("DELE 1");
    c.ok("DELE 3");
    assert!(c.ok("QUIT").contains("2 messages kept"));
    c.read_to_end();
    // Nothing removed from disk; the hidden ones are marked seen for IMAP.
    assert_eq!(messages_on_disk(&server.maildir("bob")).len(), 4);
    for name in [&names[0], &names[2]] {
        let seen = std::fs::read_dir(server.maildir("bob").join("cur"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .any(|n| n.starts_with(name.as_str()) && n.ends_with(":2,S"));
        assert!(seen, "{name} marked seen");
    }
    // The same login no longer sees them, with stable UIDLs for the rest.
    let mut c = server.login("bob", "pw");
    c.ok("UIDL");
    let uidls = c.multiline();
    assert_eq!(
        uidls,
        vec![format!("1 {}", names[1]), format!("2 {}", names[3])]
    );
    c.ok("QUIT");
    // Another device of bob sees everything, and hides independently.
    let mut phone = server.login("bob+phone", "pw");
    assert!(phone.ok("STAT").starts_with("+OK 4 "));
    phone.ok("DELE 4");
    phone.ok("QUIT");
    let mut phone = server.login("bob+phone", "pw");
    assert!(phone.ok("STAT").starts_with("+OK 3 "));
    let mut c = server.login("bob", "pw");
    assert!(c.ok("STAT").starts_with("+OK 2 "));
    // A delete-mode login would see all four: the hidden sets are per login, not on disk.
    assert_eq!(messages_on_disk(&server.maildir("bob")).len(), 4);
}

#[test]
fn a_device_login_is_keep_mode_even_for_a_delete_mode_user() {
    let server = Server::start(USERS, &[]);
    fill(&server, "alice", 2);
    let mut laptop = server.login("alice+laptop", "secret");
    assert!(laptop.ok("STAT").starts_with("+OK 2 "));
    laptop.ok("DELE 1");
    assert!(laptop.ok("QUIT").contains("kept on the server"));
    assert_eq!(messages_on_disk(&server.maildir("alice")).len(), 2);
    // The primary login deletes for real.
    let mut c = server.login("alice", "secret");
    assert!(c.cmd("STAT").starts_with("+OK 2 "));
    c.ok("DELE 1");
    c.ok("QUIT");
    assert_eq!(messages_on_disk(&server.maildir("alice")).len(), 1);
    // The laptop's hidden set forgets the message that is gone.
    let hidden =
        std::fs::read_to_string(server.maildir("alice").join("pop3d-hidden.laptop")).unwrap();
    assert!(!hidden.is_empty());
    let mut laptop = server.login("alice+laptop", "secret");
    assert!(laptop.ok("STAT").starts_with("+OK 1 "));
    laptop.ok("DELE 1");
    laptop.ok("QUIT");
    laptop.read_to_end();
    let hidden =
        std::fs::read_to_string(server.maildir("alice").join("pop3d-hidden.laptop")).unwrap();
    assert_eq!(hidden.lines().count(), 1, "stale id forgotten: {hidden}");
}

#[test]
fn an_exact_user_entry_wins_over_the_device_split() {
    let server = Server::start("a+b:{PLAIN}x::::::\na:{PLAIN}y::::::\n", &[]);
    deliver(&server.maildir("a+b"), 1, b"to a+b\n");
    let mut c = server.login("a+b", "x");
    assert!(c.ok("STAT").starts_with("+OK 1 "));
    assert!(c.ok("CAPA").starts_with("+OK"));
    assert!(c.multiline().contains(&"X-POP3D-MODE delete".to_owned()));
}

#[test]
fn pipelined_commands_are_answered_in_order_in_one_batch() {
    let server = Server::start(USERS, &[]);
    fill(&server, "alice", 3);
    let mut c = server.connect();
    let mut batch = String::from("USER alice\r\nPASS secret\r\nSTAT\r\n");
    for i in 1..=3 {
        batch.push_str(&format!(
            "LIST {i}\r\nUIDL {i}\r\nTOP {i} 0\r\nRETR {i}\r\n"
        ));
    }
    batch.push_str("NOOP\r\nQUIT\r\n");
    c.send(batch.as_bytes());
    let reply = c.read_to_end();
    let text = String::from_utf8(reply).unwrap();
    let statuses: Vec<&str> = text
        .split("\r\n")
        .filter(|l| l.starts_with("+OK") || l.starts_with("-ERR"))
        .collect();
    assert_eq!(statuses.len(), 3 + 3 * 4 + 2, "{text}");
    assert!(statuses.iter().all(|s| s.starts_with("+OK")), "{text}");
    assert!(statuses[2].starts_with("+OK 3 "));
    for i in 0..3 {
        assert!(statuses[3 + i * 4].starts_with(&format!("+OK {} ", i + 1)));
        assert!(text.contains(&format!("Subject: message {i}\r\n")));
    }
}

#[test]
fn a_second_delete_session_gets_in_use_but_keep_sessions_share() {
    let server = Server::start(USERS, &[]);
    fill(&server, "alice", 1);
    let mut first = server.login("alice", "secret");
    let mut second = server.connect();
    second.ok("USER alice");
    assert!(second.err("PASS secret").starts_with("-ERR [IN-USE]"));
    // Keep devices can't share with a delete session either...
    let mut laptop = server.connect();
    laptop.ok("USER alice+laptop");
    assert!(laptop.err("PASS secret").starts_with("-ERR [IN-USE]"));
    first.ok("QUIT");
    first.read_to_end();
    // ...but share with each other.
    let mut laptop = server.login("alice+laptop", "secret");
    let mut phone = server.login("alice+phone", "secret");
    laptop.ok("STAT");
    phone.ok("STAT");
    let mut primary = server.connect();
    primary.ok("USER alice");
    assert!(primary.err("PASS secret").starts_with("-ERR [IN-USE]"));
    // After a failed login because of the lock, the client may try again later.
    laptop.ok("QUIT");
    phone.ok("QUIT");
    laptop.read_to_end();
    phone.read_to_end();
    primary.ok("USER alice");
    primary.ok("PASS secret");
}

#[test]
fn the_lock_dies_with_the_process() {
    let mut server = Server::start(USERS, &[]);
    fill(&server, "alice", 1);
    let mut c = server.login("alice", "secret");
    c.ok("DELE 1");
    // A crash mid-session (SIGKILL) must neither lock the user out nor apply the DELE.
    server.crash_and_restart();
    let mut c2 = server.login("alice", "secret");
    assert!(
        c2.ok("STAT").starts_with("+OK 1 "),
        "lock released, message kept"
    );
    assert_eq!(c.read_to_end(), b"");
}

#[test]
fn mail_delivered_during_a_session_is_not_listed_nor_touched() {
    let server = Server::start(USERS, &[]);
    fill(&server, "alice", 2);
    let mut c = server.login("alice", "secret");
    let late = deliver(
        &server.maildir("alice"),
        1_600_000_000,
        b"Subject: late\n\nlate\n",
    );
    assert!(c.ok("STAT").starts_with("+OK 2 "));
    c.err("RETR 3");
    c.ok("DELE 1");
    c.ok("DELE 2");
    c.ok("QUIT");
    c.read_to_end();
    assert_eq!(
        messages_on_disk(&server.maildir("alice")),
        vec![late.clone()]
    );
    let mut c = server.login("alice", "secret");
    assert_eq!(c.fetch("RETR 1"), b"Subject: late\r\n\r\nlate\r\n");
}

#[test]
fn sizes_are_the_octets_retr_sends_whatever_the_line_ends() {
    let server = Server::start(USERS, &[]);
    let maildir = server.maildir("alice");
    let bodies: Vec<&[u8]> = vec![
        b"Subject: lf\n\nline\n",
        b"Subject: crlf\r\n\r\nline\r\n",
        b"Subject: no newline at end\n\nlast line",
        b"Subject: mixed\r\n\nline\r\nline\n",
        b"Subject: empty body\n",
        b"",
    ];
    for (i, body) in bodies.iter().enumerate() {
        deliver(&maildir, 1_700_000_000 + i as u64, body);
    }
    // A Dovecot-style name with ,W= is trusted without reading the file.
    std::fs::write(
        maildir.join("cur/1800000000.M1P1.host,S=5,W=7:2,S"),
        b"a\nb\nc",
    )
    .unwrap();
    let mut c = server.login("alice", "secret");
    c.ok("LIST");
    let list = c.multiline();
    assert_eq!(list.len(), bodies.len() + 1);
    for (i, body) in bodies.iter().enumerate() {
        let sent = c.fetch(&format!("RETR {}", i + 1));
        assert_eq!(sent, crlf(body));
        assert_eq!(list[i], format!("{} {}", i + 1, sent.len()));
    }
    assert_eq!(list[bodies.len()], format!("{} 7", bodies.len() + 1));
    // Sizes computed once are cached for the next login.
    assert!(maildir.join("pop3d-sizes").exists());
}

#[test]
fn top_sends_the_header_and_n_body_lines_without_marking_seen() {
    let server = Server::start(USERS, &[]);
    let name = deliver(
        &server.maildir("alice"),
        1,
        b"Subject: t\nX: y\n\n.first\nsecond\nthird\n",
    );
    let mut c = server.login("alice", "secret");
    assert_eq!(c.fetch("TOP 1 0"), b"Subject: t\r\nX: y\r\n\r\n");
    assert_eq!(
        c.fetch("TOP 1 2"),
        b"Subject: t\r\nX: y\r\n\r\n.first\r\nsecond\r\n"
    );
    assert_eq!(
        c.fetch("TOP 1 99999999999999999999999"),
        crlf(b"Subject: t\nX: y\n\n.first\nsecond\nthird\n")
    );
    c.err("TOP 1");
    c.err("TOP 1 x");
    c.ok("QUIT");
    c.read_to_end();
    assert!(
        server.maildir("alice").join("new").join(&name).exists(),
        "TOP leaves it unseen"
    );
}

#[test]
fn retr_marks_seen_and_keeps_serving_the_moved_message() {
    let server = Server::start(USERS, &[]);
    let name = deliver(&server.maildir("alice"), 1, b"Subject: s\n\nbody\n");
    let mut c = server.login("alice", "secret");
    c.fetch("RETR 1");
    // The flag is set with the session's next file operation (here the next RETR).
    assert_eq!(c.fetch("RETR 1"), b"Subject: s\r\n\r\nbody\r\n");
    let seen = server
        .maildir("alice")
        .join("cur")
        .join(format!("{name}:2,S"));
    assert!(seen.exists());
    // An IMAP server changing flags renames it again: still found, then deleted at QUIT.
    std::fs::rename(
        &seen,
        server
            .maildir("alice")
            .join("cur")
            .join(format!("{name}:2,FS")),
    )
    .unwrap();
    assert_eq!(c.fetch("TOP 1 0"), b"Subject: s\r\n\r\n");
    c.ok("DELE 1");
    c.ok("QUIT");
    c.read_to_end();
    assert!(messages_on_disk(&server.maildir("alice")).is_empty());
}

#[test]
fn a_message_removed_by_another_client_gets_err_and_the_session_goes_on() {
    let server = Server::start(USERS, &[]);
    let names = fill(&server, "alice", 2);
    let mut c = server.login("alice", "secret");
    std::fs::remove_file(server.maildir("alice").join("new").join(&names[0])).unwrap();
    assert!(c.err("RETR 1").contains("removed by another client"));
    assert_eq!(c.fetch("RETR 2"), crlf(&sample(1)));
    c.ok("DELE 1");
    assert!(c.ok("QUIT").contains("1 messages deleted"));
}

#[test]
fn uidls_are_stable_across_sessions_and_moves() {
    let server = Server::start(USERS, &[]);
    let names = fill(&server, "alice", 3);
    let odd = "1700000100.name with spaces";
    std::fs::write(
        server
            .maildir("alice")
            .join("cur")
            .join(format!("{odd}:2,")),
        b"x\n",
    )
    .unwrap();
    let listing = |server: &Server| {
        let mut c = server.login("alice", "secret");
        c.ok("UIDL");
        let l = c.multiline();
        c.fetch("RETR 1");
        c.ok("QUIT");
        l
    };
    let first = listing(&server);
    let second = listing(&server);
    assert_eq!(first, second);
    for (i, name) in names.iter().enumerate() {
        assert_eq!(first[i], format!("{} {name}", i + 1));
    }
    let derived = first[3].split(' ').nth(1).unwrap();
    assert!(derived.len() <= 70 && derived.bytes().all(|b| (0x21..=0x7e).contains(&b)));
    let mut c = server.login("alice", "secret");
    assert_eq!(c.ok("UIDL 4"), format!("+OK 4 {derived}"));
}

#[test]
fn bad_logins_get_the_same_reply_for_unknown_users_and_wrong_passwords() {
    let server = Server::start(USERS, &[]);
    let mut c = server.connect();
    c.ok("USER nobody");
    let unknown = c.err("PASS secret");
    c.ok("USER alice");
    let wrong = c.err("PASS wrong");
    assert_eq!(unknown, wrong);
    assert!(unknown.starts_with("-ERR [AUTH]"));
    c.ok("USER alice");
    // Third failure closes the connection.
    c.err("PASS again");
    assert_eq!(c.read_to_end(), b"");
    assert!(server.wait_for_log("login failed: user=\"nobody\" addr=127.0.0.1"));
    assert!(!server.log().contains("wrong"), "passwords never logged");
}

#[test]
fn user_names_that_could_escape_the_template_are_refused() {
    let server = Server::start("../evil:{PLAIN}x::::::\n", &[]);
    let mut c = server.connect();
    c.ok("USER ../evil");
    let reply = c.err("PASS x");
    assert!(reply.starts_with("-ERR [SYS/PERM]"), "{reply}");
    assert!(!server.root.path().join("evil").exists());
    assert!(!server.root.path().join("mail/evil").exists());
}

#[test]
fn an_unreadable_maildir_is_a_temporary_server_error_not_an_empty_mailbox() {
    let server = Server::start(USERS, &[]);
    fill(&server, "alice", 1);
    // Replacing cur/ with a file makes listing fail even for root.
    let cur = server.maildir("alice").join("cur");
    std::fs::remove_dir_all(&cur).unwrap();
    std::fs::write(&cur, b"not a directory").unwrap();
    let mut c = server.connect();
    c.ok("USER alice");
    assert!(c.err("PASS secret").starts_with("-ERR [SYS/TEMP]"));
    assert_eq!(messages_on_disk(&server.maildir("alice")).len(), 1);
}

#[test]
fn bad_input_gets_err_and_the_session_survives() {
    let server = Server::start(USERS, &[]);
    fill(&server, "alice", 1);
    let mut c = server.login("alice", "secret");
    for bad in [
        &b"\r\n"[..],
        b"FOO\r\n",
        b"RE\0TR 1\r\n",
        b"\xff\xfe\r\n",
        b"STAT\rX\r\n",
        b"RETR 0\r\n",
        b"RETR 2\r\n",
        b"RETR -1\r\n",
        b"RETR 99999999999999999999999\r\n",
        b"LIST 1 2\r\n",
        b"USER alice\r\n",
    ] {
        c.send(bad);
        let reply = c.line();
        assert!(reply.starts_with("-ERR"), "{bad:?}: {reply}");
    }
    // Overlong lines: one -ERR each, however long, then normal service.
    let mut long = vec![b'A'; 300];
    long.extend_from_slice(b"\r\n");
    c.send(&long);
    assert!(c.line().starts_with("-ERR"));
    let mut huge = vec![b'B'; 4 << 20];
    huge.extend_from_slice(b"\r\nNOOP\r\n");
    c.send(&huge);
    assert!(c.line().starts_with("-ERR"));
    assert!(c.line().starts_with("+OK"));
    assert!(c.ok("STAT").starts_with("+OK 1 "));
}

#[test]
fn too_many_bad_commands_close_the_connection() {
    let server = Server::start(USERS, &[]);
    let mut c = server.connect();
    let mut junk = Vec::new();
    for _ in 0..25 {
        junk.extend_from_slice(b"JUNK\r\n");
    }
    c.send(&junk);
    let rest = String::from_utf8(c.read_to_end()).unwrap();
    assert_eq!(rest.matches("-ERR").count(), 20, "{rest}");
    assert!(rest.contains("too many bad commands"));
}

#[test]
fn idle_clients_are_logged_out_without_update() {
    let server = Server::start(
        USERS,
        &["--login-timeout", "300ms", "--idle-timeout", "700ms"],
    );
    fill(&server, "alice", 1);
    let mut idle = server.connect();
    let start = Instant::now();
    assert!(idle.line().starts_with("-ERR"));
    assert_eq!(idle.read_to_end(), b"");
    assert!(start.elapsed() < Duration::from_secs(5));
    let mut c = server.login("alice", "secret");
    c.ok("DELE 1");
    assert!(
        c.line().starts_with("-ERR"),
        "autologout after the idle timeout"
    );
    assert_eq!(
        messages_on_disk(&server.maildir("alice")).len(),
        1,
        "no UPDATE on timeout"
    );
}

#[test]
fn plaintext_login_is_allowed_on_loopback() {
    // Loopback is as safe as TLS (RFC 8314 leaves it to policy); other hosts need TLS or a flag.
    let server = Server::start(USERS, &[]);
    let mut c = server.connect();
    assert!(c.ok("CAPA").starts_with("+OK"));
    assert!(c.multiline().contains(&"USER".to_owned()));
    c.ok("USER alice");
    c.ok("PASS secret");
}

#[test]
fn apop_works_only_when_enabled_and_with_the_greeting_banner() {
    let server = Server::start(USERS, &["--enable-apop"]);
    let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
    let mut greeting = String::new();
    std::io::BufRead::read_line(&mut reader, &mut greeting).unwrap();
    let banner = &greeting[greeting.find('<').unwrap()..=greeting.rfind('>').unwrap()];
    let digest = md5_hex(format!("{banner}secret").as_bytes());
    stream
        .write_all(format!("APOP alice {digest}\r\n").as_bytes())
        .unwrap();
    let mut reply = String::new();
    std::io::BufRead::read_line(&mut reader, &mut reply).unwrap();
    assert!(reply.starts_with("+OK"), "{reply}");

    let plain = Server::start(USERS, &[]);
    let mut c = plain.connect();
    c.err("APOP alice 0123456789abcdef0123456789abcdef");
}

/// MD5 via the system tool, so the test does not trust the daemon's own implementation.
fn md5_hex(data: &[u8]) -> String {
    let mut child = std::process::Command::new("md5sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("md5sum");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn a_hidden_set_that_cannot_be_written_is_reported_and_loses_nothing() {
    let server = Server::start(USERS, &[]);
    fill(&server, "bob", 2);
    let mut c = server.login("bob", "pw");
    c.ok("DELE 1");
    // A directory where the state file should go makes the atomic rename fail, even as root.
    std::fs::create_dir_all(server.maildir("bob").join("pop3d-hidden/blocker")).unwrap();
    let reply = c.err("QUIT");
    assert!(reply.starts_with("-ERR [SYS/TEMP]"), "{reply}");
    assert_eq!(messages_on_disk(&server.maildir("bob")).len(), 2);
    assert!(server.wait_for_log("cannot record hidden messages"));
    // Nothing was hidden: the next session offers both again.
    std::fs::remove_dir_all(server.maildir("bob").join("pop3d-hidden")).unwrap();
    let mut c = server.login("bob", "pw");
    assert!(c.ok("STAT").starts_with("+OK 2 "));
}

#[test]
fn concurrent_sessions_of_one_device_merge_their_hidden_sets() {
    let server = Server::start(USERS, &[]);
    fill(&server, "bob", 3);
    let mut a = server.login("bob+tablet", "pw");
    let mut b = server.login("bob+tablet", "pw");
    a.ok("DELE 1");
    b.ok("DELE 2");
    a.ok("QUIT");
    b.ok("QUIT");
    a.read_to_end();
    b.read_to_end();
    let mut c = server.login("bob+tablet", "pw");
    assert!(
        c.ok("STAT").starts_with("+OK 1 "),
        "both sessions' DELEs are remembered"
    );
    assert_eq!(messages_on_disk(&server.maildir("bob")).len(), 3);
}

#[test]
fn new_maildirs_and_state_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let server = Server::start(USERS, &[]);
    let mut c = server.login("bob", "pw");
    c.ok("QUIT");
    c.read_to_end();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    for sub in ["", "cur", "new", "tmp"] {
        assert_eq!(mode(&server.maildir("bob").join(sub)), 0o700, "{sub}");
    }
    assert_eq!(mode(&server.maildir("bob").join("pop3d.lock")), 0o600);
}

#[test]
fn retrieved_messages_are_marked_seen_however_the_session_ends() {
    let server = Server::start(USERS, &[]);
    let names = fill(&server, "alice", 3);
    let seen = |name: &str| {
        server
            .maildir("alice")
            .join("cur")
            .join(format!("{name}:2,S"))
            .exists()
    };
    // QUIT without DELE.
    let mut c = server.login("alice", "secret");
    c.fetch("RETR 1");
    c.ok("QUIT");
    assert!(seen(&names[0]));
    // A dropped connection.
    let mut c = server.login("alice", "secret");
    c.fetch("RETR 2");
    drop(c);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen(&names[1]) {
        assert!(Instant::now() < deadline, "Seen never set after a drop");
        std::thread::sleep(Duration::from_millis(20));
    }
    // TOP does not mark.
    let mut c = server.login("alice", "secret");
    c.fetch("TOP 3 0");
    c.ok("QUIT");
    assert!(!seen(&names[2]));
    // A session that stays open: set once the client pauses, so an IMAP client of the same
    // Maildir shows the message read without waiting for the POP3 session to end.
    let mut c = server.login("alice", "secret");
    c.fetch("RETR 3");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen(&names[2]) {
        assert!(
            Instant::now() < deadline,
            "Seen not set while the session is open"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // And the session goes on serving the message under its new name.
    assert_eq!(c.fetch("RETR 3"), crlf(&sample(2)));
    c.ok("QUIT");
}

#[test]
fn a_client_may_log_in_again_as_soon_as_quit_is_answered() {
    let server = Server::start(USERS, &[]);
    fill(&server, "alice", 2);
    for round in 0..30 {
        let mut c = server.login("alice", "secret");
        if round % 2 == 0 {
            c.ok("DELE 1");
            c.ok("RSET");
        } else {
            c.ok("DELE 2");
        }
        // No wait for the close: the lock must already be free when +OK arrives.
        let quit = c.cmd("QUIT");
        assert!(quit.starts_with("+OK"), "round {round}: {quit}");
        if round % 2 == 1 {
            deliver(
                &server.maildir("alice"),
                1_700_000_100 + round,
                &sample(round as usize),
            );
        }
    }
}

fn uidls(c: &mut common::Client) -> Vec<String> {
    c.ok("UIDL");
    c.multiline()
        .iter()
        .map(|l| l.split_once(' ').unwrap().1.to_owned())
        .collect()
}

#[test]
fn a_listing_kept_between_sessions_sees_every_change_made_by_others() {
    let server = Server::start(USERS, &[]);
    let maildir = server.maildir("bob");
    let names = fill(&server, "bob", 3);
    let session = |expected: &[&String]| {
        let mut c = server.login("bob", "pw");
        assert_eq!(
            uidls(&mut c),
            expected.iter().map(|s| s.to_string()).collect::<Vec<_>>()
        );
        c
    };
    let quit = |mut c: common::Client| {
        c.ok("QUIT");
        c.read_to_end();
    };
    settle(&maildir);
    // Twice: the second login is served from the kept listing.
    quit(session(&[&names[0], &names[1], &names[2]]));
    quit(session(&[&names[0], &names[1], &names[2]]));

    // A delivery.
    let late = deliver(&maildir, 1_700_000_100, b"Subject: late\n\nlate\n");
    quit(session(&[&names[0], &names[1], &names[2], &late]));

    // An IMAP server flags a message (new/ to cur/ with flags): same UIDL, still readable.
    settle(&maildir);
    quit(session(&[&names[0], &names[1], &names[2], &late]));
    std::fs::rename(
        maildir.join("new").join(&names[1]),
        maildir.join("cur").join(format!("{}:2,F", names[1])),
    )
    .unwrap();
    let mut c = session(&[&names[0], &names[1], &names[2], &late]);
    assert_eq!(c.fetch("RETR 2"), crlf(&sample(1)));
    quit(c);

    // Another client deletes one.
    settle(&maildir);
    quit(session(&[&names[0], &names[1], &names[2], &late]));
    std::fs::remove_file(maildir.join("new").join(&names[0])).unwrap();
    quit(session(&[&names[1], &names[2], &late]));

    // This login hides one in keep mode: the kept listing is filtered, not reused as is.
    settle(&maildir);
    let mut c = session(&[&names[1], &names[2], &late]);
    c.ok("DELE 2");
    quit(c);
    settle(&maildir);
    quit(session(&[&names[1], &late]));
    quit(session(&[&names[1], &late]));
    let mut laptop = server.login("bob+laptop", "pw");
    assert_eq!(uidls(&mut laptop).len(), 3, "other devices still see it");
    quit(laptop);
}
