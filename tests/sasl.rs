//! SASL (RFC 5034 AUTH) against the real daemon over loopback TCP: PLAIN, LOGIN and `*`
//! by hand; SCRAM-SHA-256 and CRAM-MD5 by a client written here in python3 (hashlib and hmac,
//! an implementation independent of the server's); then real clients: curl, python3 poplib
//! (APOP), mpop and fetchmail, byte for byte against the Maildir.
//!
//! The clients must be installed (`apt-get install -y python3 curl mpop fetchmail`); a missing
//! one fails the test rather than skipping it.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use common::{BIN, Client, Server, assert_bytes, crlf, deliver, files_in, lf, messages_on_disk};

/// Longest any client process may run before the test kills it and fails.
const CLIENT_DEADLINE: Duration = Duration::from_secs(40);

const AUTH_FAILED: &str = "-ERR [AUTH] Authentication failed";

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn b64(bytes: impl AsRef<[u8]>) -> String {
    BASE64.encode(bytes)
}

/// Runs a process to completion with `input` on its standard input, killing it (and
/// failing) after `CLIENT_DEADLINE`.
fn run_bounded(cmd: &mut Command, input: &[u8], what: &str) -> Output {
    common::run_bounded(cmd, input, CLIENT_DEADLINE, what)
}

/// Fails with an install hint unless `program args` runs and succeeds.
fn require(program: &str, args: &[&str]) -> String {
    common::require_program(program, args, common::package_of(program))
}

/// `pop3d hash-password --scheme SCHEME` for `password`, as an administrator would run it.
fn hash_password(scheme: &str, password: &str) -> String {
    let out = run_bounded(
        Command::new(BIN).args(["hash-password", "--scheme", scheme]),
        format!("{password}\n").as_bytes(),
        "pop3d hash-password",
    );
    assert!(
        out.status.success(),
        "hash-password: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let field = String::from_utf8(out.stdout).unwrap().trim_end().to_owned();
    assert!(field.starts_with(&format!("{{{scheme}}}")), "{field}");
    field
}

/// alice's password is stored in clear, bob's as SCRAM keys made by `pop3d hash-password`,
/// carol's as SHA512-CRYPT. All three are "secret".
fn users_file() -> String {
    format!(
        "alice:{{PLAIN}}secret::::::\nbob:{}::::::\ncarol:{}::::::\n",
        hash_password("SCRAM-SHA-256", "secret"),
        hash_password("SHA512-CRYPT", "secret"),
    )
}

/// A few awkward messages, as stored (LF, CRLF, dots, no final newline, UTF-8, a long line,
/// something large).
fn corpus() -> Vec<Vec<u8>> {
    let long_line: String = (0..1200).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    let mut big = b"Subject: big\n\n".to_vec();
    for i in 0..3000 {
        big.extend_from_slice(format!("line {i:05} of a largish message\n").as_bytes());
        if i % 100 == 0 {
            big.extend_from_slice(b".a line that starts with a dot\n");
        }
    }
    vec![
        b"From: Alice <alice@example.org>\nTo: Bob <bob@example.org>\nSubject: plain\n\
          Message-ID: <plain@example.org>\n\nHello Bob.\n-- \nAlice\n"
            .to_vec(),
        b"Subject: dots\n\n.leading dot\n.\n..\n...\nend\n".to_vec(),
        b"Subject: crlf\r\nX-Test: crlf\r\n\r\nline one\r\n.\r\nline three\r\n".to_vec(),
        b"Subject: no final newline\n\nfirst line\nlast line".to_vec(),
        "Subject: =?UTF-8?B?R3LDvMOfZQ==?=\nContent-Type: text/plain; charset=utf-8\n\n\
         Grüße aus Köln ✓ 日本語\n.ünïcödé after a dot\n"
            .as_bytes()
            .to_vec(),
        format!("Subject: long line\n\n{long_line}\n.{long_line}\nshort\n").into_bytes(),
        big,
    ]
}

/// One message of the corpus in the Maildir.
struct Stored {
    original: Vec<u8>,
}

impl Stored {
    /// What RETR sends, de-stuffed: CRLF line ends, the last line completed.
    fn wire(&self) -> Vec<u8> {
        crlf(&self.original)
    }

    /// The same with LF line ends, as mpop and fetchmail hand messages to a Maildir or MDA.
    fn unix(&self) -> Vec<u8> {
        lf(&self.wire())
    }
}

/// Delivers the corpus into `maildir`, in listing order.
fn populate(maildir: &Path) -> Vec<Stored> {
    corpus()
        .into_iter()
        .enumerate()
        .map(|(i, original)| {
            deliver(maildir, 1_700_000_000 + i as u64, &original);
            Stored { original }
        })
        .collect()
}

fn total_octets(messages: &[Stored]) -> usize {
    messages.iter().map(|m| m.wire().len()).sum()
}

/// Compares delivered messages with the expected ones, in any order.
#[track_caller]
fn assert_same_messages(mut got: Vec<Vec<u8>>, mut want: Vec<Vec<u8>>, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: message count");
    got.sort();
    want.sort();
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_bytes(g, w, &format!("{what}, message {i}"));
    }
}

/// Starts a daemon over the three users, alice's Maildir holding the corpus.
fn server_with_corpus(extra: &[&str]) -> (Server, Vec<Stored>) {
    let server = Server::start(&users_file(), extra);
    let stored = populate(&server.maildir("alice"));
    (server, stored)
}

/// The `+OK` reply to a login into the corpus.
fn logged_in_reply(stored: &[Stored], mode: &str) -> String {
    format!(
        "+OK Logged in, {} messages ({} octets), {mode} mode",
        stored.len(),
        total_octets(stored)
    )
}

/// CAPA's capability lines.
fn capa(c: &mut Client) -> Vec<String> {
    assert_eq!(c.cmd("CAPA"), "+OK Capability list follows");
    c.multiline()
}

// ---------------------------------------------------------------------------------------
// PLAIN, LOGIN, cancel, by hand
// ---------------------------------------------------------------------------------------

#[test]
fn capa_and_auth_list_the_mechanisms() {
    let server = Server::start(&users_file(), &[]);
    let mut c = server.connect();
    let caps = capa(&mut c);
    assert!(
        caps.contains(&"SASL SCRAM-SHA-256 PLAIN LOGIN".to_owned()),
        "{caps:?}"
    );
    assert!(
        !caps.iter().any(|l| l.starts_with("LOGIN-DELAY")),
        "{caps:?}"
    );
    assert_eq!(c.cmd("AUTH"), "+OK Supported mechanisms follow");
    assert_eq!(c.multiline(), ["SCRAM-SHA-256", "PLAIN", "LOGIN"]);
    assert_eq!(
        c.cmd("AUTH CRAM-MD5"),
        "-ERR Authentication mechanism CRAM-MD5 is not enabled"
    );
    assert_eq!(
        c.cmd("AUTH DIGEST-MD5"),
        "-ERR Unsupported authentication mechanism DIGEST-MD5"
    );
    assert_eq!(c.cmd("QUIT"), "+OK Logging out");

    let server = Server::start(&users_file(), &["--enable-apop", "--login-delay", "5m"]);
    let mut c = server.connect();
    let caps = capa(&mut c);
    assert!(
        caps.contains(&"SASL SCRAM-SHA-256 PLAIN LOGIN CRAM-MD5".to_owned()),
        "{caps:?}"
    );
    assert!(caps.contains(&"LOGIN-DELAY 300".to_owned()), "{caps:?}");
    assert_eq!(c.cmd("AUTH"), "+OK Supported mechanisms follow");
    assert_eq!(
        c.multiline(),
        ["SCRAM-SHA-256", "PLAIN", "LOGIN", "CRAM-MD5"]
    );
}

#[test]
fn auth_plain_with_and_without_an_initial_response() {
    let (server, stored) = server_with_corpus(&[]);
    let logged_in = logged_in_reply(&stored, "delete");
    // Every scheme works with PLAIN: the password is checked as for PASS.
    for user in ["alice", "bob", "carol"] {
        let mut c = server.connect();
        let ir = b64(format!("\0{user}\0secret"));
        let expected = if user == "alice" {
            logged_in.clone()
        } else {
            "+OK Logged in, 0 messages (0 octets), delete mode".to_owned()
        };
        assert_eq!(c.cmd(&format!("AUTH PLAIN {ir}")), expected, "{user}");
        assert!(c.ok("STAT").starts_with("+OK "));
        assert_eq!(c.cmd("QUIT"), "+OK Logging out, no messages marked");
    }
    let mut c = server.connect();
    assert_eq!(c.cmd("AUTH PLAIN"), "+ ");
    assert_eq!(c.cmd(&b64("alice\0alice\0secret")), logged_in);
    let wire = c.fetch("RETR 3");
    assert_bytes(&wire, &stored[2].wire(), "RETR 3 after AUTH PLAIN");
    assert_eq!(c.cmd("AUTH PLAIN"), "-ERR Already logged in");
    c.ok("QUIT");
    // `=` is the empty initial response, which PLAIN cannot use: a failed login.
    let mut c = server.connect();
    assert_eq!(c.cmd("AUTH PLAIN ="), AUTH_FAILED);
    assert_eq!(c.cmd("AUTH plain"), "+ ");
    assert_eq!(c.cmd(""), AUTH_FAILED);
    // Acting as another user is refused.
    assert_eq!(
        c.cmd(&format!("AUTH PLAIN {}", b64("bob\0alice\0secret"))),
        "-ERR [AUTH] Authentication failed; too many failures, closing"
    );
    assert!(c.read_to_end().is_empty());
}

#[test]
fn auth_login_asks_for_user_and_password() {
    let (server, stored) = server_with_corpus(&[]);
    let mut c = server.connect();
    assert_eq!(c.cmd("AUTH LOGIN"), "+ VXNlcm5hbWU6");
    assert_eq!(c.cmd(&b64("alice")), "+ UGFzc3dvcmQ6");
    assert_eq!(c.cmd(&b64("secret")), logged_in_reply(&stored, "delete"));
    c.ok("QUIT");
    // The user name as initial response.
    let mut c = server.connect();
    assert_eq!(
        c.cmd(&format!("AUTH LOGIN {}", b64("bob"))),
        "+ UGFzc3dvcmQ6"
    );
    assert_eq!(
        c.cmd(&b64("secret")),
        "+OK Logged in, 0 messages (0 octets), delete mode"
    );
    c.ok("QUIT");
    let mut c = server.connect();
    assert_eq!(c.cmd("AUTH LOGIN"), "+ VXNlcm5hbWU6");
    assert_eq!(c.cmd(&b64("alice")), "+ UGFzc3dvcmQ6");
    assert_eq!(c.cmd(&b64("Secret")), AUTH_FAILED);
}

#[test]
fn a_star_cancels_and_the_session_goes_on() {
    let (server, stored) = server_with_corpus(&[]);
    let mut c = server.connect();
    // Three cancels: not failed logins, which would close the connection at the third.
    assert_eq!(c.cmd("AUTH PLAIN"), "+ ");
    assert_eq!(c.cmd("*"), "-ERR Authentication cancelled");
    assert_eq!(c.cmd("AUTH LOGIN"), "+ VXNlcm5hbWU6");
    assert_eq!(c.cmd(&b64("alice")), "+ UGFzc3dvcmQ6");
    assert_eq!(c.cmd("*"), "-ERR Authentication cancelled");
    assert_eq!(c.cmd("AUTH SCRAM-SHA-256"), "+ ");
    assert_eq!(c.cmd("*"), "-ERR Authentication cancelled");
    // A bad base64 answer cancels too.
    assert_eq!(c.cmd("AUTH PLAIN"), "+ ");
    assert_eq!(
        c.cmd("not base64"),
        "-ERR Response is not valid base64; authentication cancelled"
    );
    assert_eq!(
        c.cmd("AUTH PLAIN !!!!"),
        "-ERR Initial response is not valid base64"
    );
    // The next line is a command again.
    assert_eq!(c.cmd("USER alice"), "+OK Send PASS");
    assert_eq!(c.cmd("PASS secret"), logged_in_reply(&stored, "delete"));
    c.ok("QUIT");
    assert!(!server.log().contains("login failed"), "{}", server.log());
}

#[test]
fn unknown_user_and_wrong_password_get_identical_replies() {
    let server = Server::start(&users_file(), &["--auth-failure-delay-max", "20ms"]);
    let transcript = |user: &str, password: &str| -> Vec<String> {
        let mut c = server.connect();
        let mut replies = vec![c.cmd(&format!(
            "AUTH PLAIN {}",
            b64(format!("\0{user}\0{password}"))
        ))];
        replies.push(c.cmd("AUTH LOGIN"));
        replies.push(c.cmd(&b64(user)));
        replies.push(c.cmd(&b64(password)));
        replies.push(c.cmd("QUIT"));
        let mut c = server.connect();
        replies.push(c.cmd(&format!("USER {user}")));
        replies.push(c.cmd(&format!("PASS {password}")));
        replies.push(c.cmd("QUIT"));
        replies
    };
    let wrong = transcript("alice", "wrong");
    assert_eq!(wrong[0], AUTH_FAILED);
    assert_eq!(wrong[3], AUTH_FAILED);
    assert_eq!(wrong[6], AUTH_FAILED);
    for (user, password) in [("nobody", "secret"), ("bob", "wrong"), ("carol", "wrong")] {
        assert_eq!(transcript(user, password), wrong, "{user}");
    }
    assert!(server.wait_for_log("login failed: user=\"nobody\" addr=127.0.0.1"));
    assert!(
        server
            .log()
            .contains("login failed: user=\"alice\" addr=127.0.0.1")
    );
    assert!(!server.log().contains("wrong"), "a password in the log");
}

// ---------------------------------------------------------------------------------------
// SCRAM-SHA-256 and CRAM-MD5, by a python3 client
// ---------------------------------------------------------------------------------------

/// A SASL client in python3 over a raw socket: `scram USER PASSWORD ir|noir` or
/// `cram USER PASSWORD`. After a successful login it sends STAT; it always ends with QUIT.
/// Prints one `key value` line per step; the server's SCRAM signature is checked here, in
/// the client, with hashlib and hmac.
const SASL_CLIENT: &str = r#"
import base64, hashlib, hmac, os, socket, sys

host, port, mode, user, password = sys.argv[1:6]
sock = socket.create_connection((host, int(port)), timeout=20)
reader = sock.makefile("rb")
out = []

def line():
    raw = reader.readline()
    if not raw.endswith(b"\r\n"):
        out.append("unterminated %r" % raw)
        finish()
    return raw[:-2].decode()

def cmd(text):
    sock.sendall(text.encode() + b"\r\n")
    return line()

def b64(data):
    return base64.b64encode(data).decode()

def finish():
    print("\n".join(out))
    sys.exit(0)

def challenge(reply, key):
    if not reply.startswith("+ "):
        out.append("failed " + reply)
        out.append("quit " + cmd("QUIT"))
        finish()
    data = base64.b64decode(reply[2:], validate=True).decode()
    out.append(key + " " + data)
    return data

out.append("greeting " + line())
if mode == "scram":
    initial = sys.argv[6] == "ir"
    nonce = b64(os.urandom(18))
    name = user.replace("=", "=3D").replace(",", "=2C")
    bare = "n=%s,r=%s" % (name, nonce)
    client_first = b64(("n,," + bare).encode())
    if initial:
        reply = cmd("AUTH SCRAM-SHA-256 " + client_first)
    else:
        out.append("empty-challenge %r" % cmd("AUTH SCRAM-SHA-256"))
        reply = cmd(client_first)
    server_first = challenge(reply, "server-first")
    attrs = dict(field.split("=", 1) for field in server_first.split(","))
    assert attrs["r"].startswith(nonce) and len(attrs["r"]) > len(nonce), server_first
    salt = base64.b64decode(attrs["s"], validate=True)
    out.append("salt-octets %d" % len(salt))
    out.append("iterations " + attrs["i"])
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, int(attrs["i"]))
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    without_proof = "c=" + b64(b"n,,") + ",r=" + attrs["r"]
    auth_message = ",".join([bare, server_first, without_proof]).encode()
    signature = hmac.new(stored_key, auth_message, "sha256").digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature))
    server_final = challenge(cmd(b64((without_proof + ",p=" + b64(proof)).encode())), "server-final")
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    expected = "v=" + b64(hmac.new(server_key, auth_message, "sha256").digest())
    if server_final != expected:
        out.append("signature BAD, expected " + expected)
        out.append("cancel " + cmd("*"))
        out.append("quit " + cmd("QUIT"))
        finish()
    out.append("signature good")
    out.append("login " + cmd(""))
elif mode == "cram":
    text = challenge(cmd("AUTH CRAM-MD5"), "challenge")
    digest = hmac.new(password.encode(), text.encode(), "md5").hexdigest()
    out.append("login " + cmd(b64(("%s %s" % (user, digest)).encode())))
else:
    raise SystemExit("unknown mode " + mode)
if out[-1].startswith("login +OK"):
    out.append("stat " + cmd("STAT"))
out.append("quit " + cmd("QUIT"))
finish()
"#;

/// What the python client printed, in order.
struct Transcript(Vec<(String, String)>);

impl Transcript {
    /// One `key value` pair a line, as the scripts print them.
    fn parse(stdout: Vec<u8>) -> Transcript {
        Transcript(common::key_value_lines(&stdout))
    }

    #[track_caller]
    fn get(&self, key: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {key:?} in {:?}", self.0))
    }

    fn has(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| k == key)
    }
}

fn sasl_client(server: &Server, args: &[&str]) -> Transcript {
    require("python3", &["-c", "import hashlib, hmac, base64, socket"]);
    let port = server.addr.port().to_string();
    let args: Vec<&str> = ["127.0.0.1", &port]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    let out = common::python_script(
        server,
        SASL_CLIENT,
        &args,
        CLIENT_DEADLINE,
        "python3 SASL client",
    );
    Transcript::parse(out.stdout)
}

#[test]
fn scram_sha_256_with_stored_keys_and_with_a_plain_password() {
    let server = Server::start(&users_file(), &[]);
    let stored = populate(&server.maildir("alice"));
    let bobs = [Stored {
        original: b"Subject: for bob\n\nhi\n".to_vec(),
    }];
    deliver(&server.maildir("bob"), 1_700_000_000, &bobs[0].original);
    let stat = |messages: &[Stored]| format!("+OK {} {}", messages.len(), total_octets(messages));
    // bob's keys come from hash-password; alice's are derived from her {PLAIN} password.
    for (user, initial, login, stat) in [
        ("bob", "ir", logged_in_reply(&bobs, "delete"), stat(&bobs)),
        ("bob", "noir", logged_in_reply(&bobs, "delete"), stat(&bobs)),
        (
            "alice",
            "ir",
            logged_in_reply(&stored, "delete"),
            stat(&stored),
        ),
        (
            "alice",
            "noir",
            logged_in_reply(&stored, "delete"),
            stat(&stored),
        ),
    ] {
        let t = sasl_client(&server, &["scram", user, "secret", initial]);
        if initial == "noir" {
            assert_eq!(t.get("empty-challenge"), "'+ '");
        }
        assert_eq!(t.get("iterations"), "4096", "{user}");
        assert_eq!(t.get("salt-octets"), "16", "{user}");
        assert_eq!(t.get("signature"), "good", "{user} {initial}");
        assert_eq!(t.get("login"), login, "{user} {initial}");
        assert_eq!(t.get("stat"), stat, "{user} {initial}");
        assert_eq!(t.get("quit"), "+OK Logging out, no messages marked");
    }
    assert!(server.log().contains("login: user=\"bob\""));
}

#[test]
fn scram_sha_256_wrong_password_and_unknown_user_fail_alike() {
    let server = Server::start(&users_file(), &["--auth-failure-delay-max", "20ms"]);
    let mut shapes = Vec::new();
    for (user, password) in [
        ("bob", "wrong"),
        ("alice", "Secret"),
        ("nobody", "secret"),
        // A hash SCRAM cannot use: the exchange runs to its end and fails.
        ("carol", "secret"),
    ] {
        let t = sasl_client(&server, &["scram", user, password, "ir"]);
        assert_eq!(t.get("failed"), AUTH_FAILED, "{user}");
        assert!(!t.has("server-final") && !t.has("login"), "{user}");
        assert_eq!(t.get("quit"), "+OK Logging out");
        shapes.push((
            t.get("server-first").len(),
            t.get("salt-octets").to_owned(),
            t.get("iterations").to_owned(),
        ));
    }
    assert!(shapes.windows(2).all(|w| w[0] == w[1]), "{shapes:?}");
    assert!(server.wait_for_log("login failed: user=\"nobody\" addr=127.0.0.1"));
    assert!(
        server
            .log()
            .contains("login failed: user=\"carol\" addr=127.0.0.1")
    );
}

/// A SCRAM login of a device: keep mode, as for USER.
#[test]
fn scram_sha_256_device_login_gets_keep_mode() {
    let server = Server::start(&users_file(), &[]);
    let stored = populate(&server.maildir("alice"));
    let t = sasl_client(&server, &["scram", "alice+tablet", "secret", "noir"]);
    assert_eq!(t.get("signature"), "good");
    assert_eq!(t.get("login"), logged_in_reply(&stored, "keep"));
}

#[test]
fn cram_md5_with_enable_apop_and_not_without() {
    let server = Server::start(
        &users_file(),
        &["--enable-apop", "--auth-failure-delay-max", "20ms"],
    );
    let stored = populate(&server.maildir("alice"));
    let t = sasl_client(&server, &["cram", "alice", "secret"]);
    let challenge = t.get("challenge");
    assert!(
        challenge.starts_with('<') && challenge.ends_with('>') && challenge.contains('@'),
        "{challenge}"
    );
    assert_eq!(t.get("login"), logged_in_reply(&stored, "delete"));
    assert_eq!(
        t.get("stat"),
        format!("+OK {} {}", stored.len(), total_octets(&stored))
    );
    let t = sasl_client(&server, &["cram", "alice+phone", "secret"]);
    assert_eq!(t.get("login"), logged_in_reply(&stored, "keep"));
    // A wrong password, an unknown user, and users without a stored plaintext all fail alike.
    for (user, password) in [
        ("alice", "wrong"),
        ("nobody", "secret"),
        ("bob", "secret"),
        ("carol", "secret"),
    ] {
        let t = sasl_client(&server, &["cram", user, password]);
        assert_eq!(t.get("login"), AUTH_FAILED, "{user}");
    }

    let server = Server::start(&users_file(), &[]);
    let mut c = server.connect();
    assert!(!capa(&mut c).iter().any(|l| l.contains("CRAM-MD5")));
    assert_eq!(
        c.cmd("AUTH CRAM-MD5"),
        "-ERR Authentication mechanism CRAM-MD5 is not enabled"
    );
}

// ---------------------------------------------------------------------------------------
// Devices, limits
// ---------------------------------------------------------------------------------------

#[test]
fn a_device_login_through_auth_plain_gets_keep_mode() {
    let (server, stored) = server_with_corpus(&[]);
    let maildir = server.maildir("alice");
    let on_disk = messages_on_disk(&maildir);
    let mut c = server.connect();
    assert_eq!(
        c.cmd(&format!("AUTH PLAIN {}", b64("\0alice+phone\0secret"))),
        logged_in_reply(&stored, "keep")
    );
    assert!(capa(&mut c).contains(&"X-POP3D-MODE keep".to_owned()));
    for n in 1..=stored.len() {
        let wire = c.fetch(&format!("RETR {n}"));
        assert_bytes(&wire, &stored[n - 1].wire(), &format!("RETR {n}"));
    }
    c.ok("DELE 1");
    c.ok("DELE 2");
    assert_eq!(
        c.cmd("QUIT"),
        "+OK Logging out, 2 messages kept on the server and hidden from this device"
    );
    assert_eq!(messages_on_disk(&maildir), on_disk);
    // The phone no longer sees them; alice herself (delete mode) still does.
    let mut c = server.connect();
    assert_eq!(c.cmd("AUTH LOGIN"), "+ VXNlcm5hbWU6");
    assert_eq!(c.cmd(&b64("alice+phone")), "+ UGFzc3dvcmQ6");
    let rest = &stored[2..];
    assert_eq!(c.cmd(&b64("secret")), logged_in_reply(rest, "keep"));
    c.ok("QUIT");
    let mut c = server.connect();
    assert_eq!(
        c.cmd(&format!("AUTH PLAIN {}", b64("\0alice\0secret"))),
        logged_in_reply(&stored, "delete")
    );
}

#[test]
fn login_delay_and_session_limits_apply_to_sasl_logins() {
    let server = Server::start(&users_file(), &["--login-delay", "5m"]);
    let plain = format!("AUTH PLAIN {}", b64("\0alice\0secret"));
    let mut c = server.connect();
    c.ok(&plain);
    c.ok("QUIT");
    let mut c = server.connect();
    let reply = c.cmd(&plain);
    assert!(
        reply.starts_with("-ERR [LOGIN-DELAY] Logged in too recently; wait "),
        "{reply}"
    );
    // Not a failed login: the connection stays open, and another device may log in.
    let reply = c.cmd(&format!("AUTH PLAIN {}", b64("\0alice+laptop\0secret")));
    assert_eq!(reply, "+OK Logged in, 0 messages (0 octets), keep mode");

    let server = Server::start(&users_file(), &["--max-sessions-per-user-ip", "1"]);
    let mut first = server.connect();
    first.ok(&format!("AUTH PLAIN {}", b64("\0alice+a\0secret")));
    let t = sasl_client(&server, &["scram", "alice+b", "secret", "ir"]);
    assert_eq!(t.get("signature"), "good");
    assert_eq!(
        t.get("login"),
        "-ERR [IN-USE] Too many sessions for this user from your address"
    );
    first.ok("QUIT");
}

// ---------------------------------------------------------------------------------------
// Long responses (RFC 5034 section 4)
// ---------------------------------------------------------------------------------------

/// A 250-character password makes a PLAIN response of 344 base64 characters: too long for
/// an AUTH command line (255 octets), so clients send it as the answer to the `+ `
/// challenge, which RFC 5034 section 4 does not limit to 255 octets ("servers MUST be able to
/// handle the maximum encoded size of ... responses generated by their supported
/// authentication mechanisms").
#[test]
fn a_plain_response_longer_than_a_command_line_is_accepted() {
    let password = "p".repeat(250);
    let server = Server::start(&format!("long:{{PLAIN}}{password}::::::\n"), &[]);
    let mut c = server.connect();
    assert_eq!(c.cmd("AUTH PLAIN"), "+ ");
    let response = b64(format!("\0long\0{password}"));
    assert!(response.len() > 255);
    assert_eq!(
        c.cmd(&response),
        "+OK Logged in, 0 messages (0 octets), delete mode"
    );
}

/// Whatever the limit, a response over it is answered with -ERR, after which the client
/// takes the exchange as over: the server must too, and read the next line as a command.
#[test]
fn an_overlong_response_ends_the_exchange() {
    let server = Server::start(&users_file(), &[]);
    let mut c = server.connect();
    assert_eq!(c.cmd("AUTH PLAIN"), "+ ");
    let reply = c.cmd(&"A".repeat(64 * 1024));
    assert!(reply.starts_with("-ERR "), "{reply}");
    assert_eq!(
        c.cmd("USER alice"),
        "+OK Send PASS",
        "the command after the -ERR was taken as a SASL response"
    );
}

// ---------------------------------------------------------------------------------------
// curl
// ---------------------------------------------------------------------------------------

fn require_curl() {
    let version = require("curl", &["-V"]);
    let protocols = version
        .lines()
        .find(|l| l.starts_with("Protocols:"))
        .unwrap_or("");
    assert!(
        protocols.split_whitespace().any(|p| p == "pop3"),
        "this curl has no POP3 support ({version}); apt-get install -y curl"
    );
}

/// curl as `login` with `--login-options AUTH=mechanism` and `-v`.
fn curl(login: &str, mechanism: &str, args: &[&str]) -> Output {
    require_curl();
    run_bounded(
        Command::new("curl")
            .args([
                "--verbose",
                "--silent",
                "--show-error",
                "--max-time",
                "20",
                "--user",
                login,
                "--login-options",
                &format!("AUTH={mechanism}"),
            ])
            .args(args),
        b"",
        "curl",
    )
}

#[test]
fn curl_auth_plain_and_login_download_byte_exact() {
    let (server, stored) = server_with_corpus(&[]);
    for mechanism in ["PLAIN", "LOGIN"] {
        let dir = tempfile::tempdir_in(server.root.path()).unwrap();
        let mut args = Vec::new();
        for n in 1..=stored.len() {
            args.push(format!("pop3://{}/{n}", server.addr));
            args.push("--output".into());
            args.push(dir.path().join(format!("{n}.eml")).display().to_string());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = curl("alice:secret", mechanism, &args);
        let verbose = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "curl AUTH={mechanism} failed ({}): {verbose}\nserver log:\n{}",
            out.status,
            server.log()
        );
        assert!(
            verbose.contains(&format!("> AUTH {mechanism}")),
            "curl did not use AUTH {mechanism}: {verbose}"
        );
        assert!(!verbose.contains("> USER"), "{verbose}");
        assert!(
            verbose.contains(&format!("< {}", logged_in_reply(&stored, "delete"))),
            "{verbose}"
        );
        for (n, m) in stored.iter().enumerate() {
            let got = std::fs::read(dir.path().join(format!("{}.eml", n + 1))).unwrap();
            assert_bytes(
                &got,
                &m.wire(),
                &format!("curl AUTH={mechanism} RETR {}", n + 1),
            );
        }
        // A wrong password: curl's "login denied" (67).
        let out = curl(
            "alice:wrong",
            mechanism,
            &[&format!("pop3://{}/", server.addr)],
        );
        assert_eq!(
            out.status.code(),
            Some(67),
            "AUTH={mechanism} wrong password"
        );
    }
    // A device login through curl: keep mode.
    let out = curl(
        "alice+curl:secret",
        "PLAIN",
        &[&format!("pop3://{}/", server.addr)],
    );
    assert!(out.status.success());
    let verbose = String::from_utf8_lossy(&out.stderr);
    assert!(
        verbose.contains(&format!("< {}", logged_in_reply(&stored, "keep"))),
        "{verbose}"
    );
}

/// curl sends a PLAIN response too long for the AUTH line as a continuation (RFC 5034
/// section 4; curl's pop3.c checks the 255-octet limit).
#[test]
fn curl_auth_plain_with_a_long_password() {
    let password = "p".repeat(250);
    let server = Server::start(&format!("long:{{PLAIN}}{password}::::::\n"), &[]);
    let out = curl(
        &format!("long:{password}"),
        "PLAIN",
        &[&format!("pop3://{}/", server.addr)],
    );
    assert!(
        out.status.success(),
        "curl failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------
// python3 poplib: APOP
// ---------------------------------------------------------------------------------------

const POPLIB_APOP: &str = r#"
import poplib, sys
host, port, user, password = sys.argv[1:5]
p = poplib.POP3(host, int(port), timeout=20)
print("welcome " + p.getwelcome().decode())
try:
    print("apop " + p.apop(user, password).decode())
    count, size = p.stat()
    print("stat %d %d" % (count, size))
    for n in range(1, count + 1):
        resp, lines, octets = p.retr(n)
        with open("%s/%d.eml" % (sys.argv[5], n), "wb") as f:
            f.write(b"".join(line + b"\r\n" for line in lines))
except poplib.error_proto as e:
    print("error " + (e.args[0].decode() if isinstance(e.args[0], bytes) else str(e.args[0])))
print("quit " + p.quit().decode())
"#;

fn poplib_apop(server: &Server, user: &str, password: &str, outdir: &Path) -> Transcript {
    require("python3", &["-c", "import poplib"]);
    let port = server.addr.port().to_string();
    let out = common::python_script(
        server,
        POPLIB_APOP,
        &["127.0.0.1", &port, user, password, outdir.to_str().unwrap()],
        CLIENT_DEADLINE,
        "python3 poplib APOP",
    );
    Transcript::parse(out.stdout)
}

#[test]
fn poplib_apop_with_enable_apop() {
    let (server, stored) =
        server_with_corpus(&["--enable-apop", "--auth-failure-delay-max", "20ms"]);
    let dir = tempfile::tempdir_in(server.root.path()).unwrap();
    let t = poplib_apop(&server, "alice", "secret", dir.path());
    assert!(t.get("welcome").starts_with("+OK POP3 server ready <"));
    assert_eq!(t.get("apop"), logged_in_reply(&stored, "delete"));
    assert_eq!(
        t.get("stat"),
        format!("{} {}", stored.len(), total_octets(&stored))
    );
    for (n, m) in stored.iter().enumerate() {
        let got = std::fs::read(dir.path().join(format!("{}.eml", n + 1))).unwrap();
        assert_bytes(&got, &m.wire(), &format!("poplib RETR {}", n + 1));
    }
    // APOP needs the plaintext: bob's SCRAM keys and carol's hash cannot serve it.
    for (user, password) in [("alice", "wrong"), ("bob", "secret"), ("carol", "secret")] {
        let t = poplib_apop(&server, user, password, dir.path());
        assert_eq!(t.get("error"), AUTH_FAILED, "{user}");
    }
    // Without --enable-apop the greeting has no timestamp, so poplib refuses APOP itself.
    let server = Server::start(&users_file(), &[]);
    let t = poplib_apop(&server, "alice", "secret", dir.path());
    assert_eq!(t.get("welcome"), "+OK POP3 server ready");
    assert!(t.get("error").contains("APOP not supported"), "{:?}", t.0);
}

// ---------------------------------------------------------------------------------------
// mpop
// ---------------------------------------------------------------------------------------

/// mpop's SASL mechanisms, from `mpop --version`.
fn mpop_mechanisms() -> Vec<String> {
    let version = require("mpop", &["--version"]);
    let methods = version
        .lines()
        .skip_while(|l| !l.starts_with("Supported authentication methods"))
        .nth(1)
        .unwrap_or("");
    methods.split_whitespace().map(str::to_owned).collect()
}

/// Runs mpop once with a config for alice (`auth`, `keep`) delivering into `maildir`;
/// returns its `--debug` output (the whole conversation).
fn mpop(server: &Server, auth: &str, keep: bool, maildir: &Path) -> String {
    for sub in ["new", "cur", "tmp"] {
        std::fs::create_dir_all(maildir.join(sub)).unwrap();
    }
    let dir = tempfile::tempdir_in(server.root.path()).unwrap();
    let config = dir.path().join("mpoprc");
    std::fs::write(
        &config,
        format!(
            "defaults\n\
             tls off\n\
             account test\n\
             host 127.0.0.1\n\
             port {port}\n\
             user alice\n\
             auth {auth}\n\
             passwordeval echo secret\n\
             delivery maildir {maildir}\n\
             received_header off\n\
             keep {keep}\n\
             uidls_file {uidls}\n\
             timeout 20\n",
            port = server.addr.port(),
            maildir = maildir.display(),
            keep = if keep { "on" } else { "off" },
            uidls = server.root.path().join("mpop-uidls").display(),
        ),
    )
    .unwrap();
    // mpop refuses a config file others may read.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = run_bounded(
        Command::new("mpop")
            .arg(format!("--file={}", config.display()))
            .args(["--debug", "--all-accounts"])
            .env("HOME", dir.path()),
        b"",
        "mpop",
    );
    let transcript = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "mpop ({auth}) failed ({}): {transcript}\nserver log:\n{}",
        out.status,
        server.log()
    );
    transcript
}

#[test]
fn mpop_downloads_every_message_byte_exact() {
    let auth = if mpop_mechanisms().iter().any(|m| m == "scram-sha-256") {
        "scram-sha-256"
    } else {
        "plain"
    };
    let (server, stored) = server_with_corpus(&[]);
    let maildir = server.maildir("alice");
    let on_disk = messages_on_disk(&maildir);
    let inbox = server.root.path().join("mpop-inbox");
    let transcript = mpop(&server, auth, true, &inbox);
    let expected_auth = format!("--> AUTH {}", auth.to_ascii_uppercase());
    assert!(
        transcript.contains(&expected_auth),
        "mpop did not use {auth}: {transcript}"
    );
    assert!(!transcript.contains("--> USER"), "{transcript}");
    assert!(
        transcript.contains(&format!("<-- {}", logged_in_reply(&stored, "delete"))),
        "{transcript}"
    );
    let want: Vec<Vec<u8>> = stored.iter().map(Stored::unix).collect();
    assert_same_messages(files_in(&inbox.join("new")), want.clone(), "mpop");
    // keep on: nothing left the server, and a second run fetches nothing new.
    assert_eq!(messages_on_disk(&maildir), on_disk);
    mpop(&server, auth, true, &inbox);
    assert_eq!(files_in(&inbox.join("new")).len(), stored.len());
    // keep off: a fresh inbox gets everything again (only_new knows them, so start over),
    // and the server's Maildir is emptied.
    std::fs::remove_file(server.root.path().join("mpop-uidls")).unwrap();
    let inbox = server.root.path().join("mpop-inbox-2");
    mpop(&server, "plain", false, &inbox);
    assert_same_messages(files_in(&inbox.join("new")), want, "mpop keep off");
    assert!(
        messages_on_disk(&maildir).is_empty(),
        "{:?}",
        messages_on_disk(&maildir)
    );
}

// ---------------------------------------------------------------------------------------
// fetchmail
// ---------------------------------------------------------------------------------------

/// Runs fetchmail once for alice with this `auth` and `keep`, handing each message to an
/// MDA that writes it to its own file in `inbox`. Returns fetchmail's `-v -v` output (the
/// POP3 conversation) and its exit code.
fn fetchmail(
    server: &Server,
    auth: &str,
    password: &str,
    keep: bool,
    inbox: &Path,
) -> (String, i32) {
    require("fetchmail", &["--version"]);
    std::fs::create_dir_all(inbox).unwrap();
    let home = tempfile::tempdir_in(server.root.path()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let rc = home.path().join("fetchmailrc");
    std::fs::write(
        &rc,
        format!(
            "set no syslog\n\
             poll 127.0.0.1 with proto POP3 port {port} auth {auth} timeout 20\n\
             \x20 user \"alice\" there with password \"{password}\" is \"root\" here\n\
             \x20 options {keep} fetchall no rewrite sslproto '' no sslcertck\n\
             \x20 mda \"/bin/sh -c 'cat > {inbox}/msg.$$'\"\n",
            port = server.addr.port(),
            keep = if keep { "keep" } else { "no keep" },
            inbox = inbox.display(),
        ),
    )
    .unwrap();
    // fetchmail refuses an rcfile others may read.
    std::fs::set_permissions(&rc, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = run_bounded(
        Command::new("fetchmail")
            .arg("--fetchmailrc")
            .arg(&rc)
            .args(["-v", "-v", "--nodetach"])
            .env("HOME", home.path())
            .env("FETCHMAILHOME", home.path()),
        b"",
        "fetchmail",
    );
    let transcript = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (transcript, out.status.code().unwrap_or(-1))
}

/// A message as fetchmail's MDA got it, without the Received: header fetchmail puts first.
fn without_received(message: &[u8]) -> Vec<u8> {
    assert!(
        message.starts_with(b"Received: from 127.0.0.1"),
        "{:?}",
        String::from_utf8_lossy(&message[..message.len().min(200)])
    );
    let mut rest = message;
    loop {
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .expect("a header line")
            + 1;
        rest = &rest[end..];
        if !rest.starts_with(b" ") && !rest.starts_with(b"\t") {
            return rest.to_vec();
        }
    }
}

#[test]
fn fetchmail_password_auth_downloads_every_message() {
    let (server, stored) = server_with_corpus(&[]);
    let maildir = server.maildir("alice");
    let on_disk = messages_on_disk(&maildir);
    let inbox = server.root.path().join("fetchmail-keep");
    let (transcript, code) = fetchmail(&server, "password", "secret", true, &inbox);
    assert_eq!(code, 0, "{transcript}\nserver log:\n{}", server.log());
    // `auth password` is USER/PASS, without asking CAPA first.
    assert!(transcript.contains("POP3> USER alice"), "{transcript}");
    assert!(transcript.contains("POP3> PASS *"), "{transcript}");
    assert!(
        transcript.contains(&format!("POP3< {}", logged_in_reply(&stored, "delete"))),
        "{transcript}"
    );
    assert!(
        server
            .log()
            .contains("login: user=\"alice\" addr=127.0.0.1")
    );
    let want: Vec<Vec<u8>> = stored.iter().map(Stored::unix).collect();
    let got = files_in(&inbox)
        .iter()
        .map(|m| without_received(m))
        .collect();
    assert_same_messages(got, want.clone(), "fetchmail keep");
    assert_eq!(messages_on_disk(&maildir), on_disk);

    // no keep: everything again, then the server's Maildir is empty.
    let inbox = server.root.path().join("fetchmail-nokeep");
    let (transcript, code) = fetchmail(&server, "password", "secret", false, &inbox);
    assert_eq!(code, 0, "{transcript}");
    for n in 1..=stored.len() {
        assert!(
            transcript.contains(&format!("POP3> DELE {n}")),
            "{transcript}"
        );
    }
    let got = files_in(&inbox)
        .iter()
        .map(|m| without_received(m))
        .collect();
    assert_same_messages(got, want, "fetchmail no keep");
    assert!(messages_on_disk(&maildir).is_empty());
    // A wrong password: fetchmail's authentication failure (3).
    let (transcript, code) = fetchmail(&server, "password", "wrong", true, &inbox);
    assert_eq!(code, 3, "{transcript}");
    assert!(
        transcript.contains(&format!("POP3< {AUTH_FAILED}")),
        "{transcript}"
    );
}

#[test]
fn fetchmail_auth_any_picks_cram_md5_when_offered() {
    let (server, stored) = server_with_corpus(&["--enable-apop"]);
    let inbox = server.root.path().join("fetchmail-cram");
    for auth in ["any", "cram-md5"] {
        let dir = inbox.join(auth);
        let (transcript, code) = fetchmail(&server, auth, "secret", true, &dir);
        assert_eq!(code, 0, "{transcript}\nserver log:\n{}", server.log());
        assert!(transcript.contains("POP3> CAPA"), "{transcript}");
        assert!(
            transcript.contains("POP3< SASL SCRAM-SHA-256 PLAIN LOGIN CRAM-MD5"),
            "{transcript}"
        );
        assert!(transcript.contains("POP3> AUTH CRAM-MD5"), "{transcript}");
        assert!(!transcript.contains("POP3> USER"), "{transcript}");
        assert!(
            transcript.contains(&format!("POP3< {}", logged_in_reply(&stored, "delete"))),
            "{transcript}"
        );
        let want: Vec<Vec<u8>> = stored.iter().map(Stored::unix).collect();
        let got = files_in(&dir).iter().map(|m| without_received(m)).collect();
        assert_same_messages(got, want, &format!("fetchmail auth {auth}"));
    }
    let (transcript, code) = fetchmail(&server, "cram-md5", "wrong", true, &inbox.join("x"));
    assert_eq!(code, 3, "{transcript}");
    assert!(
        transcript.contains(&format!("POP3< {AUTH_FAILED}")),
        "{transcript}"
    );

    // Without CRAM-MD5 on offer, `auth any` falls back to USER/PASS after CAPA.
    let (server, stored) = server_with_corpus(&[]);
    let dir = server.root.path().join("fetchmail-any");
    let (transcript, code) = fetchmail(&server, "any", "secret", true, &dir);
    assert_eq!(code, 0, "{transcript}");
    assert!(transcript.contains("POP3> CAPA"), "{transcript}");
    assert!(transcript.contains("POP3> USER alice"), "{transcript}");
    assert!(!transcript.contains("POP3> AUTH"), "{transcript}");
    assert_eq!(files_in(&dir).len(), stored.len());
}
