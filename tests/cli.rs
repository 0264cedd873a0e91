//! The `pop3d` command as an administrator uses it: the demo, hash-password, config files,
//! and clear failures for bad flags, unreadable files and ports in use.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use common::{BIN, Client, Server, deliver};

/// Runs `pop3d ARGS` to completion (it must exit by itself) and returns (status, stderr).
fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run pop3d");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_demo_serves_its_sample_mailbox_to_curl() {
    // The demo's folder goes in TMPDIR, so this test's temp dir takes it away.
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["demo", "--listen", "127.0.0.1:0"])
        .env("TMPDIR", tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut url = None;
    for _ in 0..20 {
        let mut line = String::new();
        if stdout.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if let Some(start) = line.find("pop3://") {
            url = line[start..].split_whitespace().next().map(str::to_owned);
            break;
        }
    }
    let url = url.expect("the demo prints a curl line");
    let list = Command::new("curl")
        .args(["-s", "--max-time", "20", &url, "-u", "demo:demo"])
        .output()
        .expect("curl is installed (apt-get install curl)");
    let listing = String::from_utf8(list.stdout).unwrap();
    assert_eq!(listing.lines().count(), 3, "{listing}");
    let third = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "20",
            &format!("{url}3"),
            "-u",
            "demo:demo",
        ])
        .output()
        .unwrap();
    let parsed = mailparse::parse_mail(&third.stdout).unwrap();
    assert_eq!(
        parsed
            .headers
            .iter()
            .find(|h| h.get_key() == "Subject")
            .unwrap()
            .get_value(),
        "Grüße"
    );
    assert_eq!(
        parsed.get_body().unwrap().trim_end(),
        "Viele Grüße aus dem Maildir!"
    );
    // Ctrl-C stops the demo and takes its folder away.
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "demo did not stop on SIGINT"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "demo left {left:?}");
}

#[test]
fn a_hashed_password_from_hash_password_logs_in() {
    let mut child = Command::new(BIN)
        .args(["hash-password"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"correct horse\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let hash = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(hash.starts_with("{SHA512-CRYPT}$6$"), "{hash}");
    let server = Server::start(&format!("carol:{hash}::::::\n"), &[]);
    deliver(&server.maildir("carol"), 1, b"Subject: hi\n\nhi\n");
    let mut c = server.login("carol", "correct horse");
    assert!(c.ok("STAT").starts_with("+OK 1 "));
    let mut wrong = server.connect();
    wrong.ok("USER carol");
    assert!(wrong.err("PASS correct horse ").starts_with("-ERR [AUTH]"));
}

#[test]
fn a_config_file_sets_what_flags_do_and_flags_win() {
    let root = tempfile::tempdir().unwrap();
    let users = root.path().join("users");
    std::fs::write(&users, "dave:{PLAIN}pw::::::\n").unwrap();
    let config = root.path().join("pop3d.toml");
    std::fs::write(
        &config,
        format!(
            "listen = [\"127.0.0.1:1\"]\nusers = {:?}\nmaildir = \"{}/mail/%u/Maildir\"\nmode = \"keep\"\n",
            users.display(),
            root.path().display()
        ),
    )
    .unwrap();
    // --listen from the harness replaces the file's listener; mode comes from the file.
    let server = Server::start_in(root, &["--config", config.to_str().unwrap()], &[]);
    deliver(&server.maildir("dave"), 1, b"Subject: x\n\nx\n");
    let mut c = server.login("dave", "pw");
    c.ok("DELE 1");
    assert!(c.ok("QUIT").contains("kept on the server"));
}

#[test]
fn startup_errors_are_clear_and_exit_non_zero() {
    let root = tempfile::tempdir().unwrap();
    let users = root.path().join("users");
    std::fs::write(&users, "erin:{PLAIN}pw::::::\n").unwrap();
    let users = users.to_str().unwrap();

    let (code, err) = run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--users",
        "/nonexistent/users",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("/nonexistent/users"), "{err}");

    let (code, err) = run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--users",
        users,
        "--mode",
        "archive",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("archive"), "{err}");

    let (code, err) = run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--users",
        users,
        "--maildir",
        "/var/mail/%x",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("%x"), "{err}");

    let (code, err) = run(&["serve", "--listen", "127.0.0.1:0"]);
    assert_ne!(code, 0);
    assert!(err.contains("no users file"), "{err}");

    let bad_users = root.path().join("bad-users");
    std::fs::write(&bad_users, "x:{NOPE}abc::::::\n").unwrap();
    let (code, err) = run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--users",
        bad_users.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("line 1") && err.contains("NOPE"), "{err}");

    let bad_config = root.path().join("bad.toml");
    std::fs::write(&bad_config, "lissen = 1\n").unwrap();
    let (code, err) = run(&["serve", "--config", bad_config.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("lissen"), "{err}");
}

#[test]
fn a_port_in_use_is_reported() {
    let server = Server::start("x:{PLAIN}y::::::\n", &[]);
    let users = server.root.path().join("users");
    let port = server.addr.to_string();
    let (code, err) = run(&[
        "serve",
        "--listen",
        &port,
        "--users",
        users.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains(&format!("cannot listen on {port}")), "{err}");
    // The first daemon is unaffected.
    let mut c = Client::connect(server.addr);
    assert!(c.ok("CAPA").starts_with("+OK"));
    assert!(c.multiline().contains(&"UIDL".to_owned()));
}
