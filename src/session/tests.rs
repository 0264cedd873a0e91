//! Unit tests of the session state machine: every state, every command, exact bytes.

use super::*;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The maildrop most tests use: three messages, 600 octets.
const SIZES: [u64; 3] = [100, 200, 300];

const PLAINTEXT_REFUSED: &str = "-ERR [AUTH] Plaintext authentication is not allowed on an \
                                 unencrypted connection; connect with TLS\r\n";
const PLAINTEXT_REFUSED_USE_STLS: &str = "-ERR [AUTH] Plaintext authentication is not allowed on \
                                          an unencrypted connection; use STLS first\r\n";
const NOT_BEFORE_LOGIN: &str = "-ERR Not allowed before login: log in with USER and PASS\r\n";
const NOT_NOW: &str = "-ERR Command not allowed now\r\n";
const ALREADY_LOGGED_IN: &str = "-ERR Already logged in\r\n";

fn text(out: &[u8]) -> String {
    String::from_utf8(out.to_vec()).expect("replies are UTF-8")
}

/// Runs one command line; returns its effect and everything it wrote.
fn run(session: &mut Session, line: impl AsRef<[u8]>) -> (Effect, String) {
    let mut out = Vec::new();
    let effect = session.command(line.as_ref(), &mut out);
    (effect, text(&out))
}

/// Runs a command that must not ask for outside work nor close; returns what it wrote.
fn reply(session: &mut Session, line: impl AsRef<[u8]>) -> String {
    let line = line.as_ref();
    let (effect, out) = run(session, line);
    assert_eq!(effect, Effect::None, "{:?}", String::from_utf8_lossy(line));
    out
}

/// Calls one of the I/O layer's report-back methods; returns its result and what it wrote.
fn capture<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> (R, String) {
    let mut out = Vec::new();
    let result = f(&mut out);
    (result, text(&out))
}

/// A new session and its greeting.
fn start_with_greeting(settings: Settings) -> (Session, String) {
    let mut out = Vec::new();
    let session = Session::new(settings, &mut out);
    (session, text(&out))
}

fn start(settings: Settings) -> Session {
    start_with_greeting(settings).0
}

fn no_plaintext() -> Settings {
    Settings {
        plaintext_auth: false,
        ..Settings::default()
    }
}

/// A plain connection on a server with a certificate: STLS offered, plaintext logins refused.
fn stls_offered() -> Settings {
    Settings {
        plaintext_auth: false,
        stls: true,
        ..Settings::default()
    }
}

fn with_apop() -> Settings {
    Settings {
        apop_banner: Some("<1896.697170952@dbc.mtview.ca.us>".into()),
        ..Settings::default()
    }
}

/// Messages of these sizes, with UIDs `uid-1`, `uid-2`, ...
fn messages(sizes: &[u64]) -> Arc<[Message]> {
    sizes
        .iter()
        .enumerate()
        .map(|(i, &size)| Message {
            uid: format!("uid-{}", i + 1).into(),
            size,
        })
        .collect()
}

fn password_login(user: &str, password: &str) -> Effect {
    Effect::Authenticate {
        user: user.into(),
        credential: Credential::Password(password.into()),
    }
}

/// A session that sent USER and PASS and waits for the I/O layer's verdict.
fn authenticating(settings: Settings) -> Session {
    let mut session = start(settings);
    assert_eq!(reply(&mut session, "USER alice"), "+OK Send PASS\r\n");
    assert_eq!(
        run(&mut session, "PASS secret"),
        (password_login("alice", "secret"), String::new())
    );
    session
}

fn logged_in_with(settings: Settings, sizes: &[u64], mode: Mode) -> Session {
    let mut session = authenticating(settings);
    let ((), out) = capture(|out| session.logged_in(messages(sizes), mode, out));
    assert!(out.starts_with("+OK Logged in, "), "{out:?}");
    session
}

/// A session in TRANSACTION state over messages of these sizes.
fn logged_in_session(sizes: &[u64], mode: Mode) -> Session {
    logged_in_with(Settings::default(), sizes, mode)
}

/// A session that got QUIT after DELE 1 and DELE 3, waiting for the update.
fn updating(mode: Mode) -> Session {
    let mut session = logged_in_session(&SIZES, mode);
    reply(&mut session, "DELE 3");
    reply(&mut session, "DELE 1");
    assert_eq!(
        run(&mut session, "QUIT"),
        (
            Effect::Update {
                marked: vec![0, 2],
                mode
            },
            String::new()
        )
    );
    session
}

// ---------------------------------------------------------------------------------------------
// Greeting
// ---------------------------------------------------------------------------------------------

#[test]
fn greeting_without_apop_banner() {
    let (session, greeting) = start_with_greeting(Settings::default());
    assert_eq!(greeting, "+OK POP3 server ready\r\n");
    assert!(!session.is_logged_in());
    assert_eq!(session.mode(), None);
    assert_eq!(session.stats(), &Stats::default());
}

#[test]
fn greeting_with_apop_banner_ends_with_the_timestamp() {
    let (_, greeting) = start_with_greeting(with_apop());
    assert_eq!(
        greeting,
        "+OK POP3 server ready <1896.697170952@dbc.mtview.ca.us>\r\n"
    );
}

// ---------------------------------------------------------------------------------------------
// CAPA
// ---------------------------------------------------------------------------------------------

#[test]
fn capa_before_login_lists_user_when_plaintext_is_allowed() {
    let mut session = start(Settings::default());
    assert_eq!(
        reply(&mut session, "CAPA"),
        "+OK Capability list follows\r\n\
         TOP\r\n\
         UIDL\r\n\
         RESP-CODES\r\n\
         PIPELINING\r\n\
         AUTH-RESP-CODE\r\n\
         USER\r\n\
         SASL SCRAM-SHA-256 PLAIN LOGIN\r\n\
         EXPIRE NEVER\r\n\
         IMPLEMENTATION pop3d\r\n\
         .\r\n"
    );
    // CAPA does not disturb the login that follows.
    assert_eq!(reply(&mut session, "capa"), reply(&mut session, "CAPA"));
    reply(&mut session, "USER alice");
    assert_eq!(
        run(&mut session, "PASS secret").0,
        password_login("alice", "secret")
    );
}

#[test]
fn capa_before_login_omits_user_when_plaintext_is_refused() {
    let mut session = start(no_plaintext());
    assert_eq!(
        reply(&mut session, "CAPA"),
        "+OK Capability list follows\r\n\
         TOP\r\n\
         UIDL\r\n\
         RESP-CODES\r\n\
         PIPELINING\r\n\
         AUTH-RESP-CODE\r\n\
         SASL SCRAM-SHA-256\r\n\
         EXPIRE NEVER\r\n\
         IMPLEMENTATION pop3d\r\n\
         .\r\n"
    );
}

#[test]
fn capa_after_login_shows_the_mode_and_not_user() {
    for mode in [Mode::Delete, Mode::Keep] {
        let mut session = logged_in_session(&SIZES, mode);
        assert_eq!(
            reply(&mut session, "CAPA"),
            format!(
                "+OK Capability list follows\r\n\
                 TOP\r\n\
                 UIDL\r\n\
                 RESP-CODES\r\n\
                 PIPELINING\r\n\
                 AUTH-RESP-CODE\r\n\
                 EXPIRE NEVER\r\n\
                 X-POP3D-MODE {mode}\r\n\
                 IMPLEMENTATION pop3d\r\n\
                 .\r\n"
            )
        );
    }
}

/// The lines of a CAPA reply that start with `prefix`.
fn capa_lines(capa: &str, prefix: &str) -> Vec<String> {
    assert!(capa.ends_with("\r\n.\r\n"), "{capa:?}");
    capa.split("\r\n")
        .filter(|line| line.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

#[test]
fn capa_offers_stls_only_when_enabled_and_sasl_only_before_login() {
    let apop_without_plaintext = Settings {
        plaintext_auth: false,
        ..with_apop()
    };
    // Before login: the mechanisms this connection may use, strongest first. SCRAM sends no
    // password, so it is offered everywhere; the rest only where USER would be.
    let before_login = [
        (Settings::default(), "SASL SCRAM-SHA-256 PLAIN LOGIN"),
        (no_plaintext(), "SASL SCRAM-SHA-256"),
        (with_apop(), "SASL SCRAM-SHA-256 PLAIN LOGIN CRAM-MD5"),
        (apop_without_plaintext, "SASL SCRAM-SHA-256"),
    ];
    for (settings, sasl) in before_login {
        let context = format!("{settings:?}");
        let capa = reply(&mut start(settings), "CAPA");
        assert_eq!(capa_lines(&capa, "SASL"), [sasl], "{context}");
        assert!(capa_lines(&capa, "STLS").is_empty(), "{context}");
        assert!(capa_lines(&capa, "LOGIN-DELAY").is_empty(), "{context}");
    }
    let logged_in = [
        logged_in_session(&SIZES, Mode::Delete),
        logged_in_session(&[], Mode::Keep),
        logged_in_with(with_apop(), &SIZES, Mode::Delete),
        // Once logged in, STLS is no longer offered even where it was before.
        logged_in_with(
            Settings {
                stls: true,
                ..Settings::default()
            },
            &SIZES,
            Mode::Delete,
        ),
    ];
    for mut session in logged_in {
        let capa = reply(&mut session, "CAPA");
        for prefix in ["STLS", "SASL", "USER", "LOGIN-DELAY"] {
            assert!(capa_lines(&capa, prefix).is_empty(), "{capa:?}");
        }
    }
}

#[test]
fn capa_announces_login_delay_before_and_after_login() {
    let settings = Settings {
        login_delay: Some(300),
        ..Settings::default()
    };
    let mut session = start(settings.clone());
    assert_eq!(
        reply(&mut session, "CAPA"),
        "+OK Capability list follows\r\n\
         TOP\r\n\
         UIDL\r\n\
         RESP-CODES\r\n\
         PIPELINING\r\n\
         AUTH-RESP-CODE\r\n\
         USER\r\n\
         SASL SCRAM-SHA-256 PLAIN LOGIN\r\n\
         EXPIRE NEVER\r\n\
         LOGIN-DELAY 300\r\n\
         IMPLEMENTATION pop3d\r\n\
         .\r\n"
    );
    let mut session = logged_in_with(settings, &SIZES, Mode::Keep);
    assert_eq!(
        reply(&mut session, "CAPA"),
        "+OK Capability list follows\r\n\
         TOP\r\n\
         UIDL\r\n\
         RESP-CODES\r\n\
         PIPELINING\r\n\
         AUTH-RESP-CODE\r\n\
         EXPIRE NEVER\r\n\
         LOGIN-DELAY 300\r\n\
         X-POP3D-MODE keep\r\n\
         IMPLEMENTATION pop3d\r\n\
         .\r\n"
    );
}

#[test]
fn capa_before_login_lists_stls_when_offered() {
    let mut session = start(stls_offered());
    assert_eq!(
        reply(&mut session, "CAPA"),
        "+OK Capability list follows\r\n\
         TOP\r\n\
         UIDL\r\n\
         RESP-CODES\r\n\
         PIPELINING\r\n\
         AUTH-RESP-CODE\r\n\
         STLS\r\n\
         SASL SCRAM-SHA-256\r\n\
         EXPIRE NEVER\r\n\
         IMPLEMENTATION pop3d\r\n\
         .\r\n"
    );
    // Both where plaintext is allowed anyway (e.g. loopback).
    let mut session = start(Settings {
        stls: true,
        ..Settings::default()
    });
    let capa = reply(&mut session, "CAPA");
    assert!(capa.contains("\r\nSTLS\r\nUSER\r\n"), "{capa:?}");
}

#[test]
fn capa_takes_no_argument() {
    let mut session = start(Settings::default());
    assert_eq!(
        reply(&mut session, "CAPA X"),
        "-ERR Too many arguments for CAPA\r\n"
    );
    let mut session = logged_in_session(&SIZES, Mode::Delete);
    assert_eq!(
        reply(&mut session, "CAPA X"),
        "-ERR Too many arguments for CAPA\r\n"
    );
}

// ---------------------------------------------------------------------------------------------
// AUTHORIZATION: USER, PASS, APOP, QUIT
// ---------------------------------------------------------------------------------------------

#[test]
fn user_then_pass_asks_to_authenticate_with_the_password() {
    let mut session = start(Settings::default());
    assert_eq!(reply(&mut session, "USER alice"), "+OK Send PASS\r\n");
    assert_eq!(
        run(&mut session, "PASS secret"),
        (password_login("alice", "secret"), String::new())
    );
    assert!(!session.is_logged_in());
    assert_eq!(session.mode(), None);
}

#[test]
fn keywords_are_case_insensitive_and_pass_keeps_its_spaces() {
    let mut session = start(Settings::default());
    assert_eq!(reply(&mut session, "user bob"), "+OK Send PASS\r\n");
    assert_eq!(
        run(&mut session, "pAsS  two words "),
        (password_login("bob", " two words "), String::new())
    );
}

#[test]
fn a_second_user_replaces_the_first() {
    let mut session = start(Settings::default());
    reply(&mut session, "USER alice");
    assert_eq!(reply(&mut session, "USER bob"), "+OK Send PASS\r\n");
    assert_eq!(run(&mut session, "PASS pw").0, password_login("bob", "pw"));
}

#[test]
fn pass_without_user_is_refused() {
    let mut session = start(Settings::default());
    assert_eq!(
        reply(&mut session, "PASS secret"),
        "-ERR Send USER first\r\n"
    );
    // Still in AUTHORIZATION: a proper login works.
    reply(&mut session, "USER alice");
    assert_eq!(
        run(&mut session, "PASS secret").0,
        password_login("alice", "secret")
    );
}

#[test]
fn user_and_pass_need_an_argument() {
    let mut session = start(Settings::default());
    assert_eq!(
        reply(&mut session, "USER"),
        "-ERR Missing argument: user name\r\n"
    );
    assert_eq!(
        reply(&mut session, "USER "),
        "-ERR Missing argument: user name\r\n"
    );
    reply(&mut session, "USER alice");
    assert_eq!(
        reply(&mut session, "PASS"),
        "-ERR Missing argument: password\r\n"
    );
    // The USER is still remembered after the malformed PASS.
    assert_eq!(run(&mut session, "PASS x").0, password_login("alice", "x"));
}

#[test]
fn plaintext_logins_are_refused_with_auth_code_when_not_allowed() {
    let mut session = start(no_plaintext());
    assert_eq!(reply(&mut session, "USER alice"), PLAINTEXT_REFUSED);
    assert_eq!(reply(&mut session, "PASS secret"), PLAINTEXT_REFUSED);
    assert_eq!(
        reply(&mut session, "APOP alice 0123abcd"),
        PLAINTEXT_REFUSED
    );
    // Even with an APOP banner, APOP is refused on such a connection.
    let mut session = start(Settings {
        plaintext_auth: false,
        ..with_apop()
    });
    assert_eq!(
        reply(&mut session, "APOP alice 0123abcd"),
        PLAINTEXT_REFUSED
    );
    assert!(!session.is_logged_in());
}

#[test]
fn apop_is_refused_when_not_enabled() {
    let mut session = start(Settings::default());
    assert_eq!(
        reply(&mut session, "APOP alice c4c9334bac560ecc979e58001b3e22fb"),
        "-ERR APOP is not enabled on this server\r\n"
    );
}

#[test]
fn apop_authenticates_with_the_greeting_banner_when_enabled() {
    let mut session = start(with_apop());
    assert_eq!(
        run(&mut session, "APOP mrose c4c9334bac560ecc979e58001b3e22fb"),
        (
            Effect::Authenticate {
                user: "mrose".into(),
                credential: Credential::Apop {
                    banner: "<1896.697170952@dbc.mtview.ca.us>".into(),
                    digest: "c4c9334bac560ecc979e58001b3e22fb".into(),
                },
            },
            String::new()
        )
    );
}

#[test]
fn apop_needs_exactly_two_arguments() {
    let mut session = start(with_apop());
    assert_eq!(
        reply(&mut session, "APOP"),
        "-ERR Missing argument: user name\r\n"
    );
    assert_eq!(
        reply(&mut session, "APOP mrose"),
        "-ERR Missing argument: digest\r\n"
    );
    assert_eq!(
        reply(&mut session, "APOP mrose abc def"),
        "-ERR Too many arguments for APOP\r\n"
    );
}

#[test]
fn credentials_never_show_in_debug_output() {
    let mut session = start(with_apop());
    reply(&mut session, "USER alice");
    let effect = run(&mut session, "PASS hunter2-secret").0;
    let debug = format!("{effect:?}");
    assert!(!debug.contains("hunter2"), "{debug}");
    assert!(debug.contains("Password(..)"), "{debug}");

    let mut session = start(with_apop());
    let effect = run(&mut session, "APOP alice deadbeefdigest").0;
    let debug = format!("{effect:?}");
    assert!(!debug.contains("deadbeef"), "{debug}");
    assert!(!debug.contains("1896.697170952"), "{debug}");
    assert!(debug.contains("Apop(..)"), "{debug}");
}

#[test]
fn quit_before_login_closes_without_update() {
    let mut session = start(Settings::default());
    reply(&mut session, "USER alice");
    assert_eq!(
        run(&mut session, "QUIT"),
        (Effect::Close, "+OK Logging out\r\n".into())
    );
    assert!(!session.is_logged_in());
    assert_eq!(session.stats(), &Stats::default());
    // Closed: nothing more is accepted, not even the PASS for the earlier USER.
    assert_eq!(reply(&mut session, "PASS secret"), NOT_NOW);
    assert_eq!(reply(&mut session, "QUIT"), NOT_NOW);
}

#[test]
fn quit_takes_no_argument() {
    let mut session = start(Settings::default());
    assert_eq!(
        reply(&mut session, "QUIT now"),
        "-ERR Too many arguments for QUIT\r\n"
    );
    let mut session = logged_in_session(&SIZES, Mode::Delete);
    reply(&mut session, "DELE 1");
    assert_eq!(
        reply(&mut session, "QUIT now"),
        "-ERR Too many arguments for QUIT\r\n"
    );
    assert!(session.is_logged_in());
}

#[test]
fn transaction_commands_are_refused_before_login() {
    let mut session = start(Settings::default());
    for line in [
        "STAT", "LIST", "LIST 1", "UIDL", "UIDL 1", "RETR 1", "DELE 1", "TOP 1 5", "NOOP", "RSET",
    ] {
        assert_eq!(reply(&mut session, line), NOT_BEFORE_LOGIN, "{line}");
    }
    // Also after USER, and USER is still remembered.
    reply(&mut session, "USER alice");
    assert_eq!(reply(&mut session, "STAT"), NOT_BEFORE_LOGIN);
    assert_eq!(
        run(&mut session, "PASS secret").0,
        password_login("alice", "secret")
    );
}

// ---------------------------------------------------------------------------------------------
// STLS (RFC 2595 §4)
// ---------------------------------------------------------------------------------------------

#[test]
fn stls_is_refused_when_not_offered() {
    for settings in [Settings::default(), no_plaintext(), with_apop()] {
        let mut session = start(settings);
        assert_eq!(
            reply(&mut session, "STLS"),
            "-ERR STLS is not available on this connection\r\n"
        );
    }
}

#[test]
fn plaintext_refusal_points_to_stls_when_offered() {
    let mut session = start(stls_offered());
    assert_eq!(
        reply(&mut session, "USER alice"),
        PLAINTEXT_REFUSED_USE_STLS
    );
    assert_eq!(
        reply(&mut session, "PASS secret"),
        PLAINTEXT_REFUSED_USE_STLS
    );
    assert_eq!(
        reply(&mut session, "APOP alice 0123abcd"),
        PLAINTEXT_REFUSED_USE_STLS
    );
}

#[test]
fn stls_starts_tls_then_plaintext_logins_are_allowed() {
    let mut session = start(stls_offered());
    assert_eq!(
        run(&mut session, "stls"),
        (Effect::StartTls, "+OK Begin TLS negotiation\r\n".into())
    );
    assert!(!session.is_logged_in());
    session.tls_started();
    // Over TLS: USER is offered, STLS is not, and a second STLS is refused.
    assert_eq!(
        reply(&mut session, "CAPA"),
        "+OK Capability list follows\r\n\
         TOP\r\n\
         UIDL\r\n\
         RESP-CODES\r\n\
         PIPELINING\r\n\
         AUTH-RESP-CODE\r\n\
         USER\r\n\
         SASL SCRAM-SHA-256 PLAIN LOGIN\r\n\
         EXPIRE NEVER\r\n\
         IMPLEMENTATION pop3d\r\n\
         .\r\n"
    );
    assert_eq!(
        reply(&mut session, "STLS"),
        "-ERR STLS is not available on this connection\r\n"
    );
    assert_eq!(reply(&mut session, "USER alice"), "+OK Send PASS\r\n");
    assert_eq!(
        run(&mut session, "PASS secret"),
        (password_login("alice", "secret"), String::new())
    );
    let ((), out) = capture(|out| session.logged_in(messages(&SIZES), Mode::Keep, out));
    assert_eq!(out, "+OK Logged in, 3 messages (600 octets), keep mode\r\n");
}

#[test]
fn stls_forgets_a_user_sent_in_plaintext() {
    let mut session = start(Settings {
        stls: true,
        ..Settings::default()
    });
    assert_eq!(reply(&mut session, "USER alice"), "+OK Send PASS\r\n");
    assert_eq!(run(&mut session, "STLS").0, Effect::StartTls);
    session.tls_started();
    assert_eq!(
        reply(&mut session, "PASS secret"),
        "-ERR Send USER first\r\n"
    );
}

#[test]
fn stls_takes_no_argument_and_is_refused_after_login() {
    let mut session = start(stls_offered());
    assert_eq!(
        reply(&mut session, "STLS now"),
        "-ERR Too many arguments for STLS\r\n"
    );
    let mut session = logged_in_with(
        Settings {
            stls: true,
            ..Settings::default()
        },
        &SIZES,
        Mode::Delete,
    );
    assert_eq!(reply(&mut session, "STLS"), ALREADY_LOGGED_IN);
    assert!(session.is_logged_in());
}

// ---------------------------------------------------------------------------------------------
// login_failed
// ---------------------------------------------------------------------------------------------

#[test]
fn bad_credentials_get_auth_code_and_the_client_can_retry() {
    let mut session = authenticating(Settings::default());
    assert_eq!(
        capture(|out| session.login_failed(LoginFailure::BadCredentials, out)),
        (Effect::None, "-ERR [AUTH] Authentication failed\r\n".into())
    );
    assert!(!session.is_logged_in());
    // The USER was forgotten: PASS alone is refused.
    assert_eq!(
        reply(&mut session, "PASS secret"),
        "-ERR Send USER first\r\n"
    );
    // A fresh USER/PASS is accepted.
    assert_eq!(reply(&mut session, "USER alice"), "+OK Send PASS\r\n");
    assert_eq!(
        run(&mut session, "PASS right"),
        (password_login("alice", "right"), String::new())
    );
    let ((), out) = capture(|out| session.logged_in(messages(&SIZES), Mode::Delete, out));
    assert_eq!(
        out,
        "+OK Logged in, 3 messages (600 octets), delete mode\r\n"
    );
    assert!(session.is_logged_in());
}

#[test]
fn too_many_bad_credentials_close_the_connection() {
    let mut session = authenticating(Settings::default()); // max_auth_failures: 3
    for _ in 0..2 {
        assert_eq!(
            capture(|out| session.login_failed(LoginFailure::BadCredentials, out)),
            (Effect::None, "-ERR [AUTH] Authentication failed\r\n".into())
        );
        reply(&mut session, "USER alice");
        assert!(matches!(
            run(&mut session, "PASS wrong").0,
            Effect::Authenticate { .. }
        ));
    }
    assert_eq!(
        capture(|out| session.login_failed(LoginFailure::BadCredentials, out)),
        (
            Effect::Close,
            "-ERR [AUTH] Authentication failed; too many failures, closing\r\n".into()
        )
    );
    assert_eq!(reply(&mut session, "USER alice"), NOT_NOW);
    assert_eq!(reply(&mut session, "CAPA"), NOT_NOW);
}

#[test]
fn one_allowed_failure_closes_at_once() {
    let mut session = authenticating(Settings {
        max_auth_failures: 1,
        ..Settings::default()
    });
    assert_eq!(
        capture(|out| session.login_failed(LoginFailure::BadCredentials, out)).0,
        Effect::Close
    );
}

#[test]
fn failed_apop_counts_like_a_failed_pass() {
    let mut session = start(Settings {
        max_auth_failures: 2,
        ..with_apop()
    });
    for expected in [Effect::None, Effect::Close] {
        assert!(matches!(
            run(&mut session, "APOP alice 0000").0,
            Effect::Authenticate { .. }
        ));
        assert_eq!(
            capture(|out| session.login_failed(LoginFailure::BadCredentials, out)).0,
            expected
        );
    }
}

#[test]
fn mailbox_in_use_gets_in_use_code_and_does_not_count_as_a_failure() {
    let mut session = start(Settings::default());
    for _ in 0..5 {
        reply(&mut session, "USER alice");
        assert!(matches!(
            run(&mut session, "PASS secret").0,
            Effect::Authenticate { .. }
        ));
        assert_eq!(
            capture(|out| session.login_failed(LoginFailure::InUse, out)),
            (
                Effect::None,
                "-ERR [IN-USE] Mailbox is in use by another session; try again later\r\n".into()
            )
        );
    }
    assert!(!session.is_logged_in());
    assert_eq!(reply(&mut session, "USER alice"), "+OK Send PASS\r\n");
}

#[test]
fn system_failure_gets_sys_temp_code_and_does_not_count_as_a_failure() {
    let mut session = start(Settings {
        max_auth_failures: 1,
        ..Settings::default()
    });
    for _ in 0..3 {
        reply(&mut session, "USER alice");
        run(&mut session, "PASS secret");
        assert_eq!(
            capture(|out| session
                .login_failed(LoginFailure::System("Cannot open the mailbox".into()), out)),
            (
                Effect::None,
                "-ERR [SYS/TEMP] Cannot open the mailbox\r\n".into()
            )
        );
        reply(&mut session, "USER alice");
        run(&mut session, "PASS secret");
        assert_eq!(
            capture(
                |out| session.login_failed(LoginFailure::Misconfigured("No Maildir".into()), out)
            ),
            (Effect::None, "-ERR [SYS/PERM] No Maildir\r\n".into())
        );
    }
    // The first real bad password still closes (max_auth_failures is 1).
    reply(&mut session, "USER alice");
    run(&mut session, "PASS wrong");
    assert_eq!(
        capture(|out| session.login_failed(LoginFailure::BadCredentials, out)).0,
        Effect::Close
    );
}

#[test]
fn misconfiguration_gets_sys_perm_code_and_does_not_count_as_a_failure() {
    let mut session = authenticating(Settings {
        max_auth_failures: 1,
        ..Settings::default()
    });
    let failure = LoginFailure::Misconfigured("Mailbox is not available".into());
    assert_eq!(
        capture(|out| session.login_failed(failure, out)),
        (
            Effect::None,
            "-ERR [SYS/PERM] Mailbox is not available\r\n".into()
        )
    );
    assert_eq!(reply(&mut session, "USER alice"), "+OK Send PASS\r\n");
}

// ---------------------------------------------------------------------------------------------
// logged_in
// ---------------------------------------------------------------------------------------------

#[test]
fn logged_in_reports_count_octets_and_mode() {
    for (mode, expected) in [
        (
            Mode::Keep,
            "+OK Logged in, 3 messages (600 octets), keep mode\r\n",
        ),
        (
            Mode::Delete,
            "+OK Logged in, 3 messages (600 octets), delete mode\r\n",
        ),
    ] {
        let mut session = authenticating(Settings::default());
        let ((), out) = capture(|out| session.logged_in(messages(&SIZES), mode, out));
        assert_eq!(out, expected);
        assert!(session.is_logged_in());
        assert_eq!(session.mode(), Some(mode));
    }
}

#[test]
fn logged_in_to_an_empty_maildrop() {
    let mut session = authenticating(Settings::default());
    let ((), out) = capture(|out| session.logged_in(Arc::default(), Mode::Delete, out));
    assert_eq!(out, "+OK Logged in, 0 messages (0 octets), delete mode\r\n");
    assert_eq!(reply(&mut session, "STAT"), "+OK 0 0\r\n");
    assert_eq!(
        reply(&mut session, "LIST"),
        "+OK 0 messages (0 octets)\r\n.\r\n"
    );
    assert_eq!(
        reply(&mut session, "UIDL"),
        "+OK Unique-ID listing follows\r\n.\r\n"
    );
    assert_eq!(
        reply(&mut session, "LIST 1"),
        "-ERR There is no message 1\r\n"
    );
    assert_eq!(
        reply(&mut session, "RETR 1"),
        "-ERR There is no message 1\r\n"
    );
    assert_eq!(
        run(&mut session, "QUIT"),
        (
            Effect::Close,
            "+OK Logging out, no messages marked\r\n".into()
        )
    );
}

// ---------------------------------------------------------------------------------------------
// TRANSACTION: STAT, LIST, UIDL, NOOP, RSET
// ---------------------------------------------------------------------------------------------

#[test]
fn stat_counts_messages_and_octets() {
    let mut session = logged_in_session(&SIZES, Mode::Delete);
    assert_eq!(reply(&mut session, "STAT"), "+OK 3 600\r\n");
    assert_eq!(
        reply(&mut session, "STAT 1"),
        "-ERR Too many arguments for STAT\r\n"
    );
}

#[test]
fn list_all_is_a_multi_line_scan_listing() {
    let mut session = logged_in_session(&SIZES, Mode::Delete);
    assert_eq!(
        reply(&mut session, "LIST"),
        "+OK 3 messages (600 octets)\r\n1 100\r\n2 200\r\n3 300\r\n.\r\n"
    );
}

#[test]
fn list_one_is_a_single_scan_line() {
    let mut session = logged_in_session(&SIZES, Mode::Delete);
    assert_eq!(reply(&mut session, "LIST 2"), "+OK 2 200\r\n");
    assert_eq!(reply(&mut session, "list 3"), "+OK 3 300\r\n");
    assert_eq!(
        reply(&mut session, "LIST 1 2"),
        "-ERR Too many arguments for LIST\r\n"
    );
}

#[test]
fn uidl_all_and_uidl_one() {
    let mut session = logged_in_session(&SIZES, Mode::Keep);
    assert_eq!(
        reply(&mut session, "UIDL"),
        "+OK Unique-ID listing follows\r\n1 uid-1\r\n2 uid-2\r\n3 uid-3\r\n.\r\n"
    );
    assert_eq!(reply(&mut session, "UIDL 3"), "+OK 3 uid-3\r\n");
    assert_eq!(
        reply(&mut session, "UIDL 1 2"),
        "-ERR Too many arguments for UIDL\r\n"
    );
}

#[test]
fn noop_says_ok() {
    let mut session = logged_in_session(&SIZES, Mode::Delete);
    // Empty text after the status (RFC 2449 allows `+OK SP` with empty text).
    assert_eq!(reply(&mut session, "NOOP"), "+OK\r\n");
    assert_eq!(
        reply(&mut session, "NOOP 1"),
        "-ERR Too many arguments for NOOP\r\n"
    );
}

#[test]
fn rset_with_nothing_marked_reports_the_maildrop() {
    let mut session = logged_in_session(&SIZES, Mode::Delete);
    assert_eq!(
        reply(&mut session, "RSET"),
        "+OK 3 messages (600 octets)\r\n"
    );
    assert_eq!(
        reply(&mut session, "RSET 1"),
        "-ERR Too many arguments for RSET\r\n"
    );
}

// ---------------------------------------------------------------------------------------------
// TRANSACTION: DELE and RSET
// ---------------------------------------------------------------------------------------------

#[test]
fn deleted_messages_disappear_from_stat_list_and_uidl() {
    let mut session = logged_in_session(&SIZES, Mode::Delete);
    assert_eq!(
        reply(&mut session, "DELE 2"),
        "+OK Message 2 marked as deleted\r\n"
    );
    assert_eq!(session.stats().marked, 1);
    assert_eq!(reply(&mut session, "STAT"), "+OK 2 400\r\n");
    assert_eq!(
        reply(&mut session, "LIST"),
        "+OK 2 messages (400 octets)\r\n1 100\r\n3 300\r\n.\r\n"
    );
    assert_eq!(
        reply(&mut session, "UIDL"),
        "+OK Unique-ID listing follows\r\n1 uid-1\r\n3 uid-3\r\n.\r\n"
    );
    // The other messages keep their numbers.
    assert_eq!(reply(&mut session, "LIST 3"), "+OK 3 300\r\n");
    assert_eq!(reply(&mut session, "UIDL 1"), "+OK 1 uid-1\r\n");
    assert_eq!(
        run(&mut session, "RETR 3").0,
        Effect::Send {
            index: 2,
            top_lines: None
        }
    );
}

#[test]
fn a_deleted_message_is_refused_by_every_message_command() {
    let mut session = logged_in_session(&SIZES, Mode::Delete);
    reply(&mut session, "DELE 2");
    for line in ["LIST 2", "UIDL 2", "RETR 2", "TOP 2 0", "DELE 2"] {
        assert_eq!(
            reply(&mut session, line),
            "-ERR Message 2 is marked as deleted\r\n",
            "{line}"
        );
    }
    // A second DELE did not count twice.
    assert_eq!(session.stats().marked, 1);
    assert_eq!(reply(&mut session, "STAT"), "+OK 2 400\r\n");
}

#[test]
fn deleting_everything_leaves_an_empty_listing() {
    let mut session = logged_in_session(&SIZES, Mode::Delete);
    for n in 1..=3 {
        reply(&mut session, format!("DELE {n}"));
    }
    assert_eq!(reply(&mut session, "STAT"), "+OK 0 0\r\n");
    assert_eq!(
        reply(&mut session, "LIST"),
        "+OK 0 messages (0 octets)\r\n.\r\n"
    );
    assert_eq!(
        reply(&mut session, "UIDL"),
        "+OK Unique-ID listing follows\r\n.\r\n"
    );
    assert_eq!(session.stats().marked, 3);
}

#[test]
fn rset_undeletes_everything() {
    let mut session = logged_in_session(&SIZES, Mode::Delete);
    reply(&mut session, "DELE 1");
    reply(&mut session, "DELE 3");
    assert_eq!(reply(&mut session, "STAT"), "+OK 1 200\r\n");
    assert_eq!(
        reply(&mut session, "RSET"),
        "+OK 3 messages (600 octets)\r\n"
    );
    assert_eq!(session.stats().marked, 0);
    assert_eq!(reply(&mut session, "STAT"), "+OK 3 600\r\n");
    assert_eq!(reply(&mut session, "LIST 1"), "+OK 1 100\r\n");
    assert_eq!(reply(&mut session, "UIDL 3"), "+OK 3 uid-3\r\n");
    // Marking again after RSET works and counts again.
    assert_eq!(
        reply(&mut session, "DELE 3"),
        "+OK Message 3 marked as deleted\r\n"
    );
    assert_eq!(session.stats().marked, 1);
    assert_eq!(
        run(&mut session, "QUIT").0,
        Effect::Update {
            marked: vec![2],
            mode: Mode::Delete
        }
    );
}

// ---------------------------------------------------------------------------------------------
// TRANSACTION: message numbers
// ---------------------------------------------------------------------------------------------

#[test]
fn numbers_outside_the_maildrop_are_refused() {
    let mut session = logged_in_session(&SIZES, Mode::Delete);
    for n in ["0", "4", "00", "1000", "18446744073709551615"] {
        let expected = format!("-ERR There is no message {}\r\n", n.parse::<u64>().unwrap());
        for cmd in ["LIST", "UIDL", "RETR", "DELE"] {
            assert_eq!(reply(&mut session, format!("{cmd} {n}")), expected);
        }
        assert_eq!(reply(&mut session, format!("TOP {n} 1")), expected);
    }
    // Nothing was marked on the way.
    assert_eq!(reply(&mut session, "STAT"), "+OK 3 600\r\n");
    assert_eq!(session.stats().marked, 0);
}

#[test]
fn leading_zeros_name_the_same_message() {
    let mut session = logged_in_session(&SIZES, Mode::Delete);
    assert_eq!(reply(&mut session, "LIST 002"), "+OK 2 200\r\n");
}

#[test]
fn malformed_numbers_are_refused() {
    let settings = Settings {
        max_bad_commands: 1000,
        ..Settings::default()
    };
    let mut session = logged_in_with(settings, &SIZES, Mode::Delete);
    for (arg, shown) in [
        ("x", "x"),
        ("-1", "-1"),
        ("+1", "+1"),
        ("1.0", "1.0"),
        ("0x1", "0x1"),
        ("١", "١"), // an Arabic-Indic digit is not an ASCII digit
        ("18446744073709551616", "1844674407370955"),
        ("99999999999999999999999999999", "9999999999999999"),
    ] {
        let expected = format!("-ERR Invalid number: {shown}\r\n");
        for cmd in ["LIST", "UIDL", "RETR", "DELE"] {
            assert_eq!(reply(&mut session, format!("{cmd} {arg}")), expected);
        }
        assert_eq!(reply(&mut session, format!("TOP {arg} 1")), expected);
    }
    assert_eq!(reply(&mut session, "STAT"), "+OK 3 600\r\n");
}

#[test]
fn missing_and_extra_arguments_are_refused() {
    let mut session = logged_in_session(&SIZES, Mode::Delete);
    for cmd in ["RETR", "DELE", "TOP"] {
        assert_eq!(
            reply(&mut session, cmd),
            "-ERR Missing argument: message number\r\n"
        );
    }
    assert_eq!(
        reply(&mut session, "TOP 1"),
        "-ERR Missing argument: line count\r\n"
    );
    assert_eq!(reply(&mut session, "TOP 1 x"), "-ERR Invalid number: x\r\n");
    assert_eq!(
        reply(&mut session, "TOP 1 2 3"),
        "-ERR Too many arguments for TOP\r\n"
    );
    assert_eq!(
        reply(&mut session, "RETR 1 2"),
        "-ERR Too many arguments for RETR\r\n"
    );
    assert_eq!(
        reply(&mut session, "DELE 1 2"),
        "-ERR Too many arguments for DELE\r\n"
    );
    assert_eq!(reply(&mut session, "STAT"), "+OK 3 600\r\n");
}

// ---------------------------------------------------------------------------------------------
// TRANSACTION: RETR and TOP
// ---------------------------------------------------------------------------------------------

#[test]
fn retr_asks_to_send_then_send_started_writes_the_size() {
    let mut session = logged_in_session(&SIZES, Mode::Delete);
    assert_eq!(
        run(&mut session, "RETR 2"),
        (
            Effect::Send {
                index: 1,
                top_lines: None
            },
            String::new()
        )
    );
    let ((), out) = capture(|out| session.send_started(1, None, out));
    assert_eq!(out, "+OK 200 octets\r\n");
    assert_eq!(
        session.stats(),
        &Stats {
            retrieved: 1,
            retrieved_octets: 200,
            marked: 0,
            done: 0
        }
    );
    // RETR marks nothing and the session goes on.
    assert_eq!(reply(&mut session, "STAT"), "+OK 3 600\r\n");
    assert_eq!(
        run(&mut session, "retr 3").0,
        Effect::Send {
            index: 2,
            top_lines: None
        }
    );
    let ((), out) = capture(|out| session.send_started(2, None, out));
    assert_eq!(out, "+OK 300 octets\r\n");
    assert_eq!(session.stats().retrieved, 2);
    assert_eq!(session.stats().retrieved_octets, 500);
}

#[test]
fn top_asks_to_send_some_lines_and_does_not_count_as_retrieved() {
    let mut session = logged_in_session(&SIZES, Mode::Delete);
    assert_eq!(
        run(&mut session, "TOP 1 10"),
        (
            Effect::Send {
                index: 0,
                top_lines: Some(10)
            },
            String::new()
        )
    );
    let ((), out) = capture(|out| session.send_started(0, Some(10), out));
    assert_eq!(out, "+OK Top of message follows\r\n");
    assert_eq!(session.stats(), &Stats::default());

    assert_eq!(
        run(&mut session, "top 3 0").0,
        Effect::Send {
            index: 2,
            top_lines: Some(0)
        }
    );
    // A line count past u64 means the whole message.
    assert_eq!(
        run(&mut session, "TOP 2 99999999999999999999999").0,
        Effect::Send {
            index: 1,
            top_lines: Some(u64::MAX)
        }
    );
}

#[test]
fn send_failed_for_a_vanished_or_unreadable_message() {
    let mut session = logged_in_session(&SIZES, Mode::Delete);
    run(&mut session, "RETR 2");
    let ((), out) = capture(|out| session.send_failed(1, true, out));
    assert_eq!(out, "-ERR Message 2 was removed by another client\r\n");
    run(&mut session, "TOP 3 5");
    let ((), out) = capture(|out| session.send_failed(2, false, out));
    assert_eq!(out, "-ERR [SYS/TEMP] Cannot read message 3\r\n");
    // Nothing was counted and the session goes on.
    assert_eq!(session.stats(), &Stats::default());
    assert_eq!(reply(&mut session, "STAT"), "+OK 3 600\r\n");
    assert_eq!(
        reply(&mut session, "DELE 2"),
        "+OK Message 2 marked as deleted\r\n"
    );
}

#[test]
fn login_commands_are_refused_after_login() {
    let mut session = logged_in_with(with_apop(), &SIZES, Mode::Delete);
    for line in ["USER alice", "PASS secret", "APOP alice 0123abcd"] {
        assert_eq!(reply(&mut session, line), ALREADY_LOGGED_IN, "{line}");
    }
    assert!(session.is_logged_in());
    assert_eq!(reply(&mut session, "STAT"), "+OK 3 600\r\n");
}

// ---------------------------------------------------------------------------------------------
// QUIT and UPDATE
// ---------------------------------------------------------------------------------------------

#[test]
fn quit_with_nothing_marked_closes_without_update() {
    let mut session = logged_in_session(&SIZES, Mode::Delete);
    run(&mut session, "RETR 1");
    capture(|out| session.send_started(0, None, out));
    assert_eq!(
        run(&mut session, "QUIT"),
        (
            Effect::Close,
            "+OK Logging out, no messages marked\r\n".into()
        )
    );
    assert!(!session.is_logged_in());
    assert_eq!(session.stats().done, 0);
    assert_eq!(reply(&mut session, "STAT"), NOT_NOW);
}

#[test]
fn quit_after_rset_closes_without_update() {
    let mut session = logged_in_session(&SIZES, Mode::Keep);
    reply(&mut session, "DELE 1");
    reply(&mut session, "RSET");
    assert_eq!(
        run(&mut session, "quit"),
        (
            Effect::Close,
            "+OK Logging out, no messages marked\r\n".into()
        )
    );
}

#[test]
fn quit_with_marked_messages_asks_for_the_update_in_index_order() {
    for mode in [Mode::Delete, Mode::Keep] {
        let session = updating(mode); // DELE 3, DELE 1, QUIT: marked [0, 2]
        assert!(session.is_logged_in());
        assert_eq!(session.stats().marked, 2);
    }
}

#[test]
fn update_finished_in_delete_mode() {
    let mut session = updating(Mode::Delete);
    let ((), out) =
        capture(|out| session.update_finished(Ok(UpdateReport { done: 2, failed: 0 }), out));
    assert_eq!(out, "+OK Logging out, 2 messages deleted\r\n");
    assert!(!session.is_logged_in());
    assert_eq!(
        session.stats(),
        &Stats {
            retrieved: 0,
            retrieved_octets: 0,
            marked: 2,
            done: 2
        }
    );
}

#[test]
fn update_finished_in_keep_mode() {
    let mut session = updating(Mode::Keep);
    let ((), out) =
        capture(|out| session.update_finished(Ok(UpdateReport { done: 2, failed: 0 }), out));
    assert_eq!(
        out,
        "+OK Logging out, 2 messages kept on the server and hidden from this device\r\n"
    );
    assert_eq!(session.stats().done, 2);
}

#[test]
fn update_finished_with_some_failures_is_an_error() {
    let mut session = updating(Mode::Delete);
    let ((), out) =
        capture(|out| session.update_finished(Ok(UpdateReport { done: 1, failed: 1 }), out));
    assert_eq!(
        out,
        "-ERR [SYS/TEMP] 1 of 2 marked messages could not be removed; they are still on the server\r\n"
    );
    assert_eq!(session.stats().done, 1);
    assert!(!session.is_logged_in());
}

#[test]
fn update_finished_with_an_error() {
    let mut session = updating(Mode::Delete);
    let ((), out) = capture(|out| session.update_finished(Err("Maildir is read-only".into()), out));
    assert_eq!(
        out,
        "-ERR [SYS/TEMP] Maildir is read-only; every message stays on the server\r\n"
    );
    assert_eq!(session.stats().done, 0);
    assert_eq!(session.stats().marked, 2);
    assert!(!session.is_logged_in());
}

#[test]
fn nothing_is_accepted_after_the_update() {
    let mut session = updating(Mode::Delete);
    capture(|out| session.update_finished(Ok(UpdateReport { done: 2, failed: 0 }), out));
    for line in ["STAT", "QUIT", "CAPA", "USER alice", "RSET"] {
        assert_eq!(reply(&mut session, line), NOT_NOW, "{line}");
    }
}

#[test]
fn stats_follow_a_whole_session() {
    let mut session = logged_in_session(&SIZES, Mode::Delete);
    for (line, index, size) in [("RETR 1", 0, 100), ("RETR 3", 2, 300), ("RETR 1", 0, 100)] {
        assert_eq!(
            run(&mut session, line).0,
            Effect::Send {
                index,
                top_lines: None
            }
        );
        let ((), out) = capture(|out| session.send_started(index, None, out));
        assert_eq!(out, format!("+OK {size} octets\r\n"));
    }
    run(&mut session, "TOP 2 1");
    capture(|out| session.send_started(1, Some(1), out));
    reply(&mut session, "DELE 1");
    reply(&mut session, "DELE 3");
    assert_eq!(
        run(&mut session, "QUIT").0,
        Effect::Update {
            marked: vec![0, 2],
            mode: Mode::Delete
        }
    );
    capture(|out| session.update_finished(Ok(UpdateReport { done: 2, failed: 0 }), out));
    assert_eq!(
        session.stats(),
        &Stats {
            retrieved: 3,
            retrieved_octets: 500,
            marked: 2,
            done: 2
        }
    );
}

// ---------------------------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------------------------

#[test]
fn malformed_lines_are_refused_in_every_state() {
    let cases: [(&[u8], &str); 8] = [
        (b"", "-ERR Empty command line\r\n"),
        (b"   ", "-ERR Empty command line\r\n"),
        (b" STAT", "-ERR Empty command line\r\n"),
        (b"ST\0AT", "-ERR NUL byte in command line\r\n"),
        (b"STAT\rX", "-ERR Bare CR in command line\r\n"),
        (b"\xff\xfeSTAT", "-ERR Command line is not valid UTF-8\r\n"),
        (b"HELO example.com", "-ERR Unknown command: HELO\r\n"),
        (b"XTND XLST", "-ERR Unknown command: XTND\r\n"),
    ];
    let sessions = [
        start(Settings::default()),
        logged_in_session(&SIZES, Mode::Delete),
    ];
    for mut session in sessions {
        for (line, expected) in cases {
            assert_eq!(reply(&mut session, line), expected);
        }
        let long = "X".repeat(100);
        assert_eq!(
            reply(&mut session, &long),
            format!("-ERR Unknown command: {}\r\n", "X".repeat(16))
        );
        assert_eq!(
            capture(|out| session.line_too_long(out)),
            (
                Effect::None,
                "-ERR Command line too long (255 octets at most)\r\n".into()
            )
        );
    }
}

#[test]
fn too_many_consecutive_bad_commands_close_the_connection() {
    let settings = Settings {
        max_bad_commands: 3,
        ..Settings::default()
    };
    let mut session = start(settings.clone());
    assert_eq!(
        reply(&mut session, "HELO"),
        "-ERR Unknown command: HELO\r\n"
    );
    assert_eq!(reply(&mut session, ""), "-ERR Empty command line\r\n");
    assert_eq!(
        run(&mut session, "EHLO"),
        (
            Effect::Close,
            "-ERR Unknown command: EHLO; too many bad commands, closing\r\n".into()
        )
    );
    // Closed: anything more is refused (and, still too many, closes again).
    assert_eq!(
        run(&mut session, "USER alice"),
        (
            Effect::Close,
            "-ERR Command not allowed now; too many bad commands, closing\r\n".into()
        )
    );

    // The same after login.
    let mut session = logged_in_with(settings, &SIZES, Mode::Delete);
    reply(&mut session, "DELE 1");
    reply(&mut session, "HELO");
    reply(&mut session, "HELO");
    assert_eq!(
        run(&mut session, "RETR x"),
        (
            Effect::Close,
            "-ERR Invalid number: x; too many bad commands, closing\r\n".into()
        )
    );
    assert!(!session.is_logged_in());
    // Closed without UPDATE: a later QUIT does not apply the DELE.
    assert_eq!(
        run(&mut session, "QUIT"),
        (
            Effect::Close,
            "-ERR Command not allowed now; too many bad commands, closing\r\n".into()
        )
    );
}

#[test]
fn the_default_allows_twenty_bad_commands() {
    let mut session = start(Settings::default());
    for _ in 0..19 {
        assert_eq!(
            reply(&mut session, "HELO"),
            "-ERR Unknown command: HELO\r\n"
        );
    }
    assert_eq!(
        run(&mut session, "HELO"),
        (
            Effect::Close,
            "-ERR Unknown command: HELO; too many bad commands, closing\r\n".into()
        )
    );
}

#[test]
fn a_good_command_resets_the_bad_command_count() {
    let settings = Settings {
        max_bad_commands: 3,
        ..Settings::default()
    };
    let mut session = start(settings.clone());
    for good in ["CAPA", "USER alice", "CAPA", "USER bob"] {
        reply(&mut session, "HELO");
        reply(&mut session, "HELO");
        assert!(reply(&mut session, good).starts_with("+OK "), "{good}");
    }
    reply(&mut session, "HELO");
    reply(&mut session, "HELO");
    // A malformed known command is bad too: the third in a row.
    assert_eq!(run(&mut session, "CAPA x").0, Effect::Close);

    let mut session = logged_in_with(settings, &SIZES, Mode::Delete);
    for _ in 0..5 {
        reply(&mut session, "HELO");
        reply(&mut session, "HELO");
        assert_eq!(reply(&mut session, "STAT"), "+OK 3 600\r\n");
    }
    assert!(session.is_logged_in());
}

#[test]
fn wrong_state_commands_and_long_lines_count_as_bad() {
    let settings = Settings {
        max_bad_commands: 3,
        ..Settings::default()
    };
    let mut session = start(settings.clone());
    assert_eq!(reply(&mut session, "STAT"), NOT_BEFORE_LOGIN);
    assert_eq!(capture(|out| session.line_too_long(out)).0, Effect::None);
    assert_eq!(
        run(&mut session, "DELE 1"),
        (
            Effect::Close,
            "-ERR Not allowed before login: log in with USER and PASS; too many bad commands, closing\r\n"
                .into()
        )
    );

    let mut session = logged_in_with(settings, &SIZES, Mode::Delete);
    assert_eq!(reply(&mut session, "USER bob"), ALREADY_LOGGED_IN);
    assert_eq!(reply(&mut session, "PASS pw"), ALREADY_LOGGED_IN);
    assert_eq!(
        capture(|out| session.line_too_long(out)),
        (
            Effect::Close,
            "-ERR Command line too long (255 octets at most); too many bad commands, closing\r\n"
                .into()
        )
    );
}

#[test]
fn a_refused_message_number_is_not_a_bad_command() {
    // The command itself was well-formed: the count of bad commands starts again.
    let mut session = logged_in_with(
        Settings {
            max_bad_commands: 2,
            ..Settings::default()
        },
        &SIZES,
        Mode::Delete,
    );
    for _ in 0..5 {
        reply(&mut session, "HELO");
        assert_eq!(
            reply(&mut session, "RETR 9"),
            "-ERR There is no message 9\r\n"
        );
    }
    assert!(session.is_logged_in());
}

#[test]
fn plaintext_refusals_are_not_bad_commands() {
    let mut session = start(Settings {
        max_bad_commands: 2,
        ..no_plaintext()
    });
    for _ in 0..5 {
        reply(&mut session, "HELO");
        assert_eq!(reply(&mut session, "USER alice"), PLAINTEXT_REFUSED);
    }
}

// ---------------------------------------------------------------------------------------------
// AUTH (RFC 5034): listing, PLAIN, LOGIN, SCRAM-SHA-256, CRAM-MD5, cancel, failures
// ---------------------------------------------------------------------------------------------

const CANCELLED: &str = "-ERR Authentication cancelled\r\n";
const AUTH_FAILED: &str = "-ERR [AUTH] Authentication failed\r\n";
const LOGGED_IN_DELETE: &str = "+OK Logged in, 3 messages (600 octets), delete mode\r\n";

fn b64(bytes: impl AsRef<[u8]>) -> String {
    BASE64.encode(bytes)
}

/// The decoded bytes of a `+ ` continuation, which must be the whole of `out`.
#[track_caller]
fn continuation(out: &str) -> Vec<u8> {
    let encoded = out
        .strip_prefix("+ ")
        .and_then(|rest| rest.strip_suffix("\r\n"))
        .unwrap_or_else(|| panic!("not one continuation line: {out:?}"));
    assert!(!encoded.contains(['\r', '\n']), "{out:?}");
    BASE64.decode(encoded).expect("a base64 challenge")
}

/// `+ ` continuation as text.
#[track_caller]
fn continuation_text(out: &str) -> String {
    String::from_utf8(continuation(out)).expect("a UTF-8 challenge")
}

fn sasl_login(user: &str, credential: Credential) -> Effect {
    Effect::Authenticate {
        user: user.into(),
        credential,
    }
}

fn rejected(user: &str, reason: sasl::FailReason) -> Effect {
    sasl_login(user, Credential::Rejected(reason))
}

/// alice's password is stored in clear, bob's as SCRAM keys (`pop3d hash-password --scheme
/// SCRAM-SHA-256`), carol's as a hash SCRAM cannot use; all three are "secret".
fn sasl_users() -> crate::auth::Users {
    let scram = crate::auth::hash_password(crate::auth::Scheme::ScramSha256, b"secret")
        .expect("SCRAM keys");
    assert!(scram.starts_with("{SCRAM-SHA-256}4096,"), "{scram}");
    crate::auth::Users::parse(&format!(
        "alice:{{PLAIN}}secret\n\
         bob:{scram}\n\
         carol:{{SHA256-CRYPT}}$5$y/r94uo8vWGdUlsX$fc4dWJxZ9azC0UObRpIzQx0DB/72b/OxDaCdrO7t8f0\n"
    ))
    .expect("a valid users file")
}

/// Does what the I/O layer does for `Effect::SaslLookup`: takes the exchange, gives it the
/// user's credentials and resumes the session with the step that came of it.
#[track_caller]
fn look_up(session: &mut Session, effect: Effect, users: &crate::auth::Users) -> (Effect, String) {
    let Effect::SaslLookup { authcid } = effect else {
        panic!("expected a credential lookup, got {effect:?}");
    };
    let mut exchange = session
        .take_sasl_exchange()
        .expect("the exchange to look up");
    // The exchange is handed out once.
    assert!(session.take_sasl_exchange().is_none());
    let step = exchange.credentials(users.sasl_credentials(&authcid));
    capture(|out| session.sasl_resume(exchange, step, out))
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// An RFC 5802 client's side of one exchange after the server-first-message.
struct ScramClient {
    client_final: String,
    server_final: String,
}

impl ScramClient {
    /// Answers `server_first` for `client_first_bare` (sent after the `n,,` header).
    #[track_caller]
    fn answer(password: &str, client_first_bare: &str, server_first: &str) -> ScramClient {
        let client_nonce = client_first_bare.split_once(",r=").expect("a nonce").1;
        let mut fields = server_first.split(',');
        let nonce = fields
            .next()
            .and_then(|f| f.strip_prefix("r="))
            .expect("r=");
        let salt = fields
            .next()
            .and_then(|f| f.strip_prefix("s="))
            .expect("s=");
        let iterations = fields
            .next()
            .and_then(|f| f.strip_prefix("i="))
            .expect("i=");
        assert_eq!(fields.next(), None, "{server_first}");
        assert!(
            nonce.starts_with(client_nonce) && nonce.len() > client_nonce.len(),
            "the server nonce extends ours: {server_first}"
        );
        let salt = BASE64.decode(salt).expect("base64 salt");
        let iterations: u32 = iterations.parse().expect("iterations");
        let salted =
            pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(password.as_bytes(), &salt, iterations);
        let client_key = hmac_sha256(&salted, b"Client Key");
        let stored_key = Sha256::digest(&client_key);
        let without_proof = format!("c={},r={nonce}", b64("n,,"));
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let signature = hmac_sha256(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature)
            .map(|(k, s)| k ^ s)
            .collect();
        let server_key = hmac_sha256(&salted, b"Server Key");
        ScramClient {
            client_final: format!("{without_proof},p={}", b64(proof)),
            server_final: format!(
                "v={}",
                b64(hmac_sha256(&server_key, auth_message.as_bytes()))
            ),
        }
    }
}

/// Runs AUTH SCRAM-SHA-256 as `login` with `password` up to the server-first-message, with
/// or without an initial response. Returns the client-first-message-bare and the
/// server-first-message.
fn scram_to_server_first(
    session: &mut Session,
    users: &crate::auth::Users,
    login: &str,
    initial_response: bool,
) -> (String, String) {
    let bare = format!("n={login},r=fyko+d2lbbFgONRv9qkxdawL");
    let client_first = b64(format!("n,,{bare}"));
    let effect = if initial_response {
        let (effect, out) = run(session, format!("AUTH SCRAM-SHA-256 {client_first}"));
        assert_eq!(out, "");
        effect
    } else {
        // SCRAM is client-first: the first challenge is empty.
        assert_eq!(reply(session, "AUTH SCRAM-SHA-256"), "+ \r\n");
        let (effect, out) = run(session, &client_first);
        assert_eq!(out, "");
        effect
    };
    assert_eq!(
        effect,
        Effect::SaslLookup {
            authcid: login.into()
        }
    );
    let (effect, out) = look_up(session, effect, users);
    assert_eq!(effect, Effect::None);
    (bare, continuation_text(&out))
}

#[test]
fn auth_alone_lists_the_mechanisms_of_the_connection() {
    let cases = [
        (Settings::default(), "SCRAM-SHA-256\r\nPLAIN\r\nLOGIN\r\n"),
        (no_plaintext(), "SCRAM-SHA-256\r\n"),
        (stls_offered(), "SCRAM-SHA-256\r\n"),
        (
            with_apop(),
            "SCRAM-SHA-256\r\nPLAIN\r\nLOGIN\r\nCRAM-MD5\r\n",
        ),
        (
            Settings {
                plaintext_auth: false,
                ..with_apop()
            },
            "SCRAM-SHA-256\r\n",
        ),
    ];
    for (settings, mechanisms) in cases {
        let mut session = start(settings);
        let listing = format!("+OK Supported mechanisms follow\r\n{mechanisms}.\r\n");
        assert_eq!(reply(&mut session, "AUTH"), listing);
        assert_eq!(reply(&mut session, "auth"), listing);
    }
    // After STLS the plaintext mechanisms join.
    let mut session = start(stls_offered());
    assert_eq!(run(&mut session, "STLS").0, Effect::StartTls);
    session.tls_started();
    assert_eq!(
        reply(&mut session, "AUTH"),
        "+OK Supported mechanisms follow\r\nSCRAM-SHA-256\r\nPLAIN\r\nLOGIN\r\n.\r\n"
    );
    // Listing does not disturb a USER already sent.
    let mut session = start(Settings::default());
    assert_eq!(reply(&mut session, "USER alice"), "+OK Send PASS\r\n");
    reply(&mut session, "AUTH");
    assert_eq!(
        run(&mut session, "PASS secret").0,
        password_login("alice", "secret")
    );
}

#[test]
fn auth_plain_with_an_initial_response_checks_the_password() {
    for line in [
        format!("AUTH PLAIN {}", b64("\0alice\0secret")),
        format!("auth plain {}", b64("\0alice\0secret")),
        format!("AUTH Plain {}", b64("alice\0alice\0secret")),
    ] {
        let mut session = start(Settings::default());
        assert_eq!(
            run(&mut session, &line),
            (password_login("alice", "secret"), String::new()),
            "{line}"
        );
        assert_eq!(reply(&mut session, "STAT"), NOT_NOW);
        let ((), out) = capture(|out| session.logged_in(messages(&SIZES), Mode::Delete, out));
        assert_eq!(out, LOGGED_IN_DELETE);
        assert_eq!(reply(&mut session, "STAT"), "+OK 3 600\r\n");
    }
    // A password may hold spaces and any UTF-8; a device login is just a login name.
    let mut session = start(Settings::default());
    assert_eq!(
        run(
            &mut session,
            format!("AUTH PLAIN {}", b64("\0alice+phone\0 p ä ss "))
        ),
        (password_login("alice+phone", " p ä ss "), String::new())
    );
}

#[test]
fn auth_plain_without_an_initial_response_sends_an_empty_challenge() {
    let mut session = start(Settings::default());
    assert_eq!(reply(&mut session, "AUTH PLAIN"), "+ \r\n");
    assert_eq!(
        run(&mut session, b64("\0alice\0secret")),
        (password_login("alice", "secret"), String::new())
    );
}

#[test]
fn auth_plain_empty_or_malformed_responses_fail_like_a_wrong_password() {
    use sasl::FailReason::{AuthzidRefused, Malformed};
    // `=` is the empty initial response (RFC 5034); PLAIN cannot be empty.
    let cases = [
        ("AUTH PLAIN =".to_string(), rejected("", Malformed)),
        (
            format!("AUTH PLAIN {}", b64("alice\0secret")),
            rejected("", Malformed),
        ),
        (
            format!("AUTH PLAIN {}", b64("\0alice\0")),
            rejected("", Malformed),
        ),
        (
            format!("AUTH PLAIN {}", b64("\0alice\0secret\0")),
            rejected("", Malformed),
        ),
        (
            format!("AUTH PLAIN {}", b64(b"\0ali\xffce\0secret")),
            rejected("", Malformed),
        ),
        // No master users: acting as someone else is refused.
        (
            format!("AUTH PLAIN {}", b64("admin\0alice\0secret")),
            rejected("alice", AuthzidRefused),
        ),
    ];
    for (line, expected) in cases {
        let mut session = start(Settings::default());
        assert_eq!(
            run(&mut session, &line),
            (expected, String::new()),
            "{line}"
        );
        let (effect, out) = capture(|out| session.login_failed(LoginFailure::BadCredentials, out));
        assert_eq!(
            (effect, out.as_str()),
            (Effect::None, AUTH_FAILED),
            "{line}"
        );
    }
    // The same through a continuation: an empty line is an empty response.
    for answer in ["", "="] {
        let mut session = start(Settings::default());
        assert_eq!(reply(&mut session, "AUTH PLAIN"), "+ \r\n");
        assert_eq!(
            run(&mut session, answer),
            (rejected("", Malformed), String::new())
        );
    }
}

#[test]
fn auth_login_asks_for_the_user_then_the_password() {
    let mut session = start(Settings::default());
    let out = reply(&mut session, "AUTH LOGIN");
    assert_eq!(out, "+ VXNlcm5hbWU6\r\n");
    assert_eq!(continuation_text(&out), "Username:");
    let out = reply(&mut session, b64("alice"));
    assert_eq!(out, "+ UGFzc3dvcmQ6\r\n");
    assert_eq!(continuation_text(&out), "Password:");
    assert_eq!(
        run(&mut session, b64("secret")),
        (password_login("alice", "secret"), String::new())
    );
    // With the user name as initial response, the password is asked for at once.
    let mut session = start(Settings::default());
    assert_eq!(
        reply(&mut session, format!("AUTH LOGIN {}", b64("alice+laptop"))),
        "+ UGFzc3dvcmQ6\r\n"
    );
    assert_eq!(
        run(&mut session, b64("secret")),
        (password_login("alice+laptop", "secret"), String::new())
    );
    // An empty user name or password fails the exchange.
    let mut session = start(Settings::default());
    assert_eq!(
        run(&mut session, "AUTH LOGIN ="),
        (rejected("", sasl::FailReason::Malformed), String::new())
    );
    let mut session = start(Settings::default());
    reply(&mut session, "AUTH LOGIN");
    reply(&mut session, b64("alice"));
    assert_eq!(
        run(&mut session, ""),
        (
            rejected("alice", sasl::FailReason::Malformed),
            String::new()
        )
    );
}

#[test]
fn scram_sha_256_logs_in_through_a_credential_lookup() {
    let users = sasl_users();
    // bob's keys are stored; alice's are derived from her plaintext password.
    for (login, initial_response) in [
        ("bob", false),
        ("bob", true),
        ("alice", false),
        ("alice+phone", true),
    ] {
        let context = format!("{login}, initial response {initial_response}");
        let mut session = start(Settings::default());
        let (bare, server_first) =
            scram_to_server_first(&mut session, &users, login, initial_response);
        assert!(server_first.ends_with(",i=4096"), "{server_first}");
        let client = ScramClient::answer("secret", &bare, &server_first);
        // The server proves it holds the keys: its signature comes as a last challenge.
        let out = reply(&mut session, b64(&client.client_final));
        assert_eq!(continuation_text(&out), client.server_final, "{context}");
        assert_eq!(
            run(&mut session, ""),
            (sasl_login(login, Credential::Verified), String::new()),
            "{context}"
        );
        let ((), out) = capture(|out| session.logged_in(messages(&SIZES), Mode::Delete, out));
        assert_eq!(out, LOGGED_IN_DELETE);
        assert!(capa_lines(&reply(&mut session, "CAPA"), "SASL").is_empty());
    }
}

#[test]
fn scram_sha_256_is_offered_where_plaintext_logins_are_not() {
    let users = sasl_users();
    let mut session = start(stls_offered());
    let (bare, server_first) = scram_to_server_first(&mut session, &users, "bob", false);
    let client = ScramClient::answer("secret", &bare, &server_first);
    let out = reply(&mut session, b64(&client.client_final));
    assert_eq!(continuation_text(&out), client.server_final);
    assert_eq!(
        run(&mut session, "="),
        (sasl_login("bob", Credential::Verified), String::new())
    );
}

#[test]
fn scram_sha_256_wrong_password_and_unknown_user_fail_alike() {
    use sasl::FailReason::{Malformed, WrongCredentials};
    let users = sasl_users();
    let mut shapes = Vec::new();
    for (login, password) in [
        ("bob", "wrong"),
        ("alice", "Secret"),
        ("nobody", "secret"),
        ("carol", "secret"),
    ] {
        let mut session = start(Settings {
            max_auth_failures: 1,
            ..Settings::default()
        });
        let (bare, server_first) = scram_to_server_first(&mut session, &users, login, true);
        // The server-first-message looks the same for every kind of user.
        let salt = server_first.split(",s=").nth(1).expect("salt");
        shapes.push((server_first.len(), salt.len()));
        let client = ScramClient::answer(password, &bare, &server_first);
        assert_eq!(
            run(&mut session, b64(&client.client_final)),
            (rejected(login, WrongCredentials), String::new()),
            "{login}"
        );
        let (effect, out) = capture(|out| session.login_failed(LoginFailure::BadCredentials, out));
        assert_eq!(effect, Effect::Close);
        assert_eq!(
            out,
            "-ERR [AUTH] Authentication failed; too many failures, closing\r\n"
        );
    }
    assert!(shapes.windows(2).all(|w| w[0] == w[1]), "{shapes:?}");
    // After the server's signature, only an empty response completes the login.
    let mut session = start(Settings::default());
    let (bare, server_first) = scram_to_server_first(&mut session, &users, "bob", false);
    let client = ScramClient::answer("secret", &bare, &server_first);
    reply(&mut session, b64(&client.client_final));
    assert_eq!(
        run(&mut session, b64("v=")),
        (rejected("bob", Malformed), String::new())
    );
}

#[test]
fn cram_md5_is_offered_with_apop_and_checks_the_digest() {
    let users = sasl_users();
    let settings = Settings {
        hostname: "mail.example.org".into(),
        ..with_apop()
    };
    for (password, credential) in [
        ("secret", Credential::Verified),
        (
            "wrong",
            Credential::Rejected(sasl::FailReason::WrongCredentials),
        ),
    ] {
        let mut session = start(settings.clone());
        let challenge = continuation_text(&reply(&mut session, "AUTH CRAM-MD5"));
        // RFC 2195: a unique `<...@host>` message id.
        assert!(
            challenge.starts_with('<') && challenge.ends_with("@mail.example.org>"),
            "{challenge}"
        );
        let mut mac = Hmac::<md5::Md5>::new_from_slice(password.as_bytes()).expect("any key");
        mac.update(challenge.as_bytes());
        let digest: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let (effect, out) = run(&mut session, b64(format!("alice {digest}")));
        assert_eq!(out, "");
        assert_eq!(
            look_up(&mut session, effect, &users),
            (sasl_login("alice", credential), String::new())
        );
    }
    // Each exchange has its own challenge.
    let first = reply(&mut start(settings.clone()), "AUTH CRAM-MD5");
    let second = reply(&mut start(settings), "AUTH CRAM-MD5");
    assert_ne!(first, second);
    // CRAM-MD5 is server-first: an initial response fails the exchange.
    let mut session = start(with_apop());
    assert_eq!(
        run(&mut session, format!("AUTH CRAM-MD5 {}", b64("alice 0123"))),
        (rejected("", sasl::FailReason::Malformed), String::new())
    );
}

#[test]
fn cram_md5_is_not_offered_without_apop() {
    let mut session = start(Settings::default());
    assert_eq!(
        reply(&mut session, "AUTH CRAM-MD5"),
        "-ERR Authentication mechanism CRAM-MD5 is not enabled\r\n"
    );
    assert_eq!(reply(&mut session, "USER alice"), "+OK Send PASS\r\n");
}

#[test]
fn a_star_cancels_the_exchange_at_every_step() {
    let users = sasl_users();
    // Each case: the lines that lead to a challenge.
    let scram_first = b64("n,,n=bob,r=abc");
    let cases: [(Settings, Vec<String>); 6] = [
        (Settings::default(), vec!["AUTH PLAIN".into()]),
        (Settings::default(), vec!["AUTH LOGIN".into()]),
        (Settings::default(), vec!["AUTH LOGIN".into(), b64("alice")]),
        (Settings::default(), vec!["AUTH SCRAM-SHA-256".into()]),
        (
            Settings::default(),
            vec![format!("AUTH SCRAM-SHA-256 {scram_first}")],
        ),
        (with_apop(), vec!["AUTH CRAM-MD5".into()]),
    ];
    for (settings, lines) in cases {
        let context = format!("{lines:?}");
        let mut session = start(Settings {
            max_auth_failures: 1,
            max_bad_commands: 1,
            ..settings
        });
        for _ in 0..3 {
            for line in &lines {
                let (effect, out) = run(&mut session, line);
                let (effect, out) = match effect {
                    Effect::SaslLookup { .. } => look_up(&mut session, effect, &users),
                    _ => (effect, out),
                };
                assert_eq!(effect, Effect::None, "{context}");
                continuation(&out);
            }
            // Cancelling is neither a failed login nor a bad command: nothing closes.
            assert_eq!(run(&mut session, "*"), (Effect::None, CANCELLED.into()));
            assert!(session.take_sasl_exchange().is_none());
        }
        // Back in AUTHORIZATION: the next line is a command again.
        assert_eq!(reply(&mut session, "USER alice"), "+OK Send PASS\r\n");
        assert_eq!(
            run(&mut session, "PASS secret").0,
            password_login("alice", "secret")
        );
    }
    // Cancelled after the server's signature too, though the proof was good.
    let mut session = start(Settings::default());
    let (bare, server_first) = scram_to_server_first(&mut session, &users, "bob", true);
    let client = ScramClient::answer("secret", &bare, &server_first);
    reply(&mut session, b64(&client.client_final));
    assert_eq!(reply(&mut session, "*"), CANCELLED);
    assert_eq!(reply(&mut session, "STAT"), NOT_BEFORE_LOGIN);
}

#[test]
fn an_exchange_forgets_a_user_sent_before_it() {
    let mut session = start(Settings::default());
    reply(&mut session, "USER alice");
    reply(&mut session, "AUTH PLAIN");
    assert_eq!(reply(&mut session, "*"), CANCELLED);
    assert_eq!(
        reply(&mut session, "PASS secret"),
        "-ERR Send USER first\r\n"
    );
}

#[test]
fn bad_base64_in_the_initial_response_is_a_bad_command() {
    for initial in [
        "!!!!",
        "AGFsaWNlAHNlY3JldA",
        "AGFsaWNl=AHNlY3JldA==",
        "*",
        "==",
    ] {
        let line = format!("AUTH PLAIN {initial}");
        let mut session = start(Settings::default());
        assert_eq!(
            reply(&mut session, &line),
            "-ERR Initial response is not valid base64\r\n",
            "{line}"
        );
        // Still in AUTHORIZATION, with no exchange running.
        assert_eq!(reply(&mut session, "USER alice"), "+OK Send PASS\r\n");
        let mut session = start(Settings {
            max_bad_commands: 1,
            ..Settings::default()
        });
        assert_eq!(
            run(&mut session, &line),
            (
                Effect::Close,
                "-ERR Initial response is not valid base64; too many bad commands, closing\r\n"
                    .into()
            )
        );
    }
}

#[test]
fn bad_base64_in_a_continuation_cancels_the_exchange() {
    for answer in ["not base64", "YWxpY2U", "YW=xpY2U=", "\u{e4}", "**"] {
        let mut session = start(Settings::default());
        reply(&mut session, "AUTH LOGIN");
        assert_eq!(
            reply(&mut session, answer),
            "-ERR Response is not valid base64; authentication cancelled\r\n",
            "{answer:?}"
        );
        assert_eq!(reply(&mut session, "USER alice"), "+OK Send PASS\r\n");
        // It counts as a bad command.
        let mut session = start(Settings {
            max_bad_commands: 1,
            ..Settings::default()
        });
        reply(&mut session, "AUTH PLAIN");
        assert_eq!(run(&mut session, answer).0, Effect::Close, "{answer:?}");
    }
}

#[test]
fn unknown_mechanisms_are_refused() {
    let mut session = start(with_apop());
    for (line, name) in [
        ("AUTH DIGEST-MD5", "DIGEST-MD5"),
        ("AUTH GSSAPI =", "GSSAPI"),
        ("AUTH XOAUTH2 dXNlcj1hbGljZQ==", "XOAUTH2"),
        ("AUTH SCRAM-SHA-1", "SCRAM-SHA-1"),
        ("AUTH SCRAM-SHA-256-PLUS", "SCRAM-SHA-256-PLUS"),
        ("AUTH =", "="),
    ] {
        assert_eq!(
            reply(&mut session, line),
            format!("-ERR Unsupported authentication mechanism {name}\r\n")
        );
    }
    assert_eq!(
        reply(&mut session, "AUTH PLAIN AAAA BBBB"),
        "-ERR Too many arguments for AUTH\r\n"
    );
    // Unknown mechanisms are bad commands.
    let mut session = start(Settings {
        max_bad_commands: 2,
        ..Settings::default()
    });
    reply(&mut session, "AUTH KERBEROS_V4");
    assert_eq!(run(&mut session, "AUTH NTLM").0, Effect::Close);
}

#[test]
fn plaintext_mechanisms_are_refused_with_auth_code_where_plaintext_is_not_allowed() {
    let plain = format!("AUTH PLAIN {}", b64("\0alice\0secret"));
    let lines = ["AUTH PLAIN", &plain, "AUTH LOGIN", "auth login YWxpY2U="];
    let mut session = start(Settings {
        max_bad_commands: 1,
        ..no_plaintext()
    });
    for line in lines {
        assert_eq!(reply(&mut session, line), PLAINTEXT_REFUSED, "{line}");
    }
    let mut session = start(Settings {
        max_bad_commands: 1,
        plaintext_auth: false,
        ..with_apop()
    });
    assert_eq!(reply(&mut session, "AUTH CRAM-MD5"), PLAINTEXT_REFUSED);
    let mut session = start(stls_offered());
    for line in lines {
        assert_eq!(
            reply(&mut session, line),
            PLAINTEXT_REFUSED_USE_STLS,
            "{line}"
        );
    }
    // Inside TLS they work.
    assert_eq!(run(&mut session, "STLS").0, Effect::StartTls);
    session.tls_started();
    assert_eq!(
        run(&mut session, &plain),
        (password_login("alice", "secret"), String::new())
    );
}

#[test]
fn auth_is_refused_after_login() {
    let scram = format!("AUTH SCRAM-SHA-256 {}", b64("n,,n=bob,r=abc"));
    let mut session = logged_in_with(with_apop(), &SIZES, Mode::Delete);
    for line in [
        "AUTH",
        "AUTH PLAIN",
        "AUTH LOGIN",
        "AUTH CRAM-MD5",
        &scram,
        "AUTH X",
    ] {
        assert_eq!(reply(&mut session, line), ALREADY_LOGGED_IN, "{line}");
        assert!(session.take_sasl_exchange().is_none());
    }
    assert_eq!(reply(&mut session, "STAT"), "+OK 3 600\r\n");
}

#[test]
fn a_failed_exchange_counts_as_a_failed_login() {
    let mut session = start(Settings {
        max_auth_failures: 3,
        ..Settings::default()
    });
    // A SASL failure, a wrong password and another SASL failure: three failed logins.
    let garbage = format!("AUTH PLAIN {}", b64("garbage"));
    assert_eq!(
        run(&mut session, &garbage),
        (rejected("", sasl::FailReason::Malformed), String::new())
    );
    let (effect, out) = capture(|out| session.login_failed(LoginFailure::BadCredentials, out));
    assert_eq!((effect, out.as_str()), (Effect::None, AUTH_FAILED));
    reply(&mut session, "USER alice");
    run(&mut session, "PASS wrong");
    let (effect, out) = capture(|out| session.login_failed(LoginFailure::BadCredentials, out));
    assert_eq!((effect, out.as_str()), (Effect::None, AUTH_FAILED));
    reply(&mut session, "AUTH LOGIN");
    reply(&mut session, b64("alice"));
    assert_eq!(
        run(&mut session, b64("wrong")),
        (password_login("alice", "wrong"), String::new())
    );
    let (effect, out) = capture(|out| session.login_failed(LoginFailure::BadCredentials, out));
    assert_eq!(
        (effect, out.as_str()),
        (
            Effect::Close,
            "-ERR [AUTH] Authentication failed; too many failures, closing\r\n"
        )
    );
    assert!(reply(&mut session, "AUTH").starts_with("-ERR "));
}

#[test]
fn too_many_sessions_and_login_delay_are_refused_without_counting_as_failures() {
    let cases = [
        (
            LoginFailure::TooManySessions,
            "-ERR [IN-USE] Too many sessions for this user from your address\r\n",
        ),
        (
            LoginFailure::TooSoon(42),
            "-ERR [LOGIN-DELAY] Logged in too recently; wait 42 more seconds\r\n",
        ),
    ];
    let plain = format!("AUTH PLAIN {}", b64("\0alice\0secret"));
    for (failure, text) in cases {
        let mut session = start(Settings {
            max_auth_failures: 1,
            login_delay: Some(60),
            ..Settings::default()
        });
        for _ in 0..3 {
            // The same reply whichever way the client logged in.
            reply(&mut session, "USER alice");
            assert_eq!(
                run(&mut session, "PASS secret").0,
                password_login("alice", "secret")
            );
            let (effect, out) = capture(|out| session.login_failed(failure.clone(), out));
            assert_eq!((effect, out.as_str()), (Effect::None, text));
            assert_eq!(
                run(&mut session, &plain).0,
                password_login("alice", "secret")
            );
            let (effect, out) = capture(|out| session.login_failed(failure.clone(), out));
            assert_eq!((effect, out.as_str()), (Effect::None, text));
            assert!(!session.is_logged_in());
        }
        // A later attempt still logs in.
        run(&mut session, &plain);
        let ((), out) = capture(|out| session.logged_in(messages(&SIZES), Mode::Delete, out));
        assert_eq!(out, LOGGED_IN_DELETE);
    }
}

#[test]
fn no_exchange_is_handed_out_unless_a_lookup_is_pending() {
    let mut session = start(Settings {
        max_bad_commands: 100,
        ..Settings::default()
    });
    assert!(session.take_sasl_exchange().is_none());
    reply(&mut session, "AUTH SCRAM-SHA-256");
    // Waiting for the client, not for a lookup: the exchange stays in the session.
    assert!(session.take_sasl_exchange().is_none());
    let (effect, _) = run(&mut session, b64("n,,n=bob,r=abc"));
    assert_eq!(
        effect,
        Effect::SaslLookup {
            authcid: "bob".into()
        }
    );
    // While the lookup runs, no command does.
    for line in ALL_COMMANDS {
        assert_eq!(reply(&mut session, line), NOT_NOW, "{line}");
    }
    let mut exchange = session.take_sasl_exchange().expect("the exchange");
    assert!(session.take_sasl_exchange().is_none());
    for line in ALL_COMMANDS {
        assert_eq!(reply(&mut session, line), NOT_NOW, "{line}");
    }
    // The lookup's result still lands normally.
    let step = exchange.credentials(sasl_users().sasl_credentials("bob"));
    let (effect, out) = capture(|out| session.sasl_resume(exchange, step, out));
    assert_eq!(effect, Effect::None);
    assert!(continuation_text(&out).starts_with("r=abc"), "{out:?}");
    let mut session = authenticating(Settings::default());
    assert!(session.take_sasl_exchange().is_none());
}

#[test]
fn sasl_credentials_never_show_in_debug_output() {
    let mut session = start(Settings::default());
    let (effect, _) = run(
        &mut session,
        format!("AUTH PLAIN {}", b64("\0alice\0hunter2")),
    );
    let debug = format!("{effect:?} {session:?}");
    assert!(!debug.contains("hunter2"), "{debug}");
    assert_eq!(
        format!(
            "{:?}",
            Credential::Rejected(sasl::FailReason::WrongCredentials)
        ),
        "Rejected(wrong credentials)"
    );
    assert_eq!(format!("{:?}", Credential::Verified), "Verified");
    let mut session = start(Settings::default());
    reply(&mut session, "AUTH LOGIN");
    reply(&mut session, b64("alice"));
    let (effect, _) = run(&mut session, b64("hunter2"));
    let debug = format!("{effect:?} {session:?}");
    assert!(!debug.contains("hunter2"), "{debug}");
}

/// A line over the limit in the middle of an exchange is answered with -ERR, so the client
/// takes the exchange as over: the session must too, and read the next line as a command.
#[test]
fn a_long_line_during_an_exchange_ends_it() {
    let mut session = start(Settings::default());
    assert_eq!(reply(&mut session, "AUTH PLAIN"), "+ \r\n");
    let (effect, out) = capture(|out| session.line_too_long(out));
    assert_eq!(effect, Effect::None);
    assert!(out.starts_with("-ERR "), "{out:?}");
    assert!(!out.starts_with("+ "), "{out:?}");
    assert_eq!(
        reply(&mut session, "USER alice"),
        "+OK Send PASS\r\n",
        "the line after the -ERR was taken as a SASL response"
    );
}

// ---------------------------------------------------------------------------------------------
// Pending effects
// ---------------------------------------------------------------------------------------------

const ALL_COMMANDS: [&str; 19] = [
    "AUTH",
    "AUTH PLAIN",
    "AUTH PLAIN AGJvYgBwdw==",
    "AUTH SCRAM-SHA-256 biwsbj1ib2Iscj1hYmM=",
    "USER bob",
    "PASS pw",
    "APOP bob 0123",
    "QUIT",
    "STAT",
    "LIST",
    "LIST 1",
    "RETR 1",
    "DELE 1",
    "NOOP",
    "RSET",
    "TOP 1 1",
    "UIDL",
    "CAPA",
    "STLS",
];

#[test]
fn no_command_runs_while_authenticating() {
    let mut session = authenticating(Settings {
        stls: true,
        ..with_apop()
    });
    for line in ALL_COMMANDS {
        assert_eq!(reply(&mut session, line), NOT_NOW, "{line}");
    }
    assert!(!session.is_logged_in());
    // The verdict still lands normally.
    let ((), out) = capture(|out| session.logged_in(messages(&SIZES), Mode::Keep, out));
    assert_eq!(out, "+OK Logged in, 3 messages (600 octets), keep mode\r\n");
    assert_eq!(reply(&mut session, "STAT"), "+OK 3 600\r\n");
}

#[test]
fn no_command_runs_while_the_update_is_pending() {
    let mut session = updating(Mode::Delete);
    for line in ALL_COMMANDS {
        assert_eq!(reply(&mut session, line), NOT_NOW, "{line}");
    }
    let ((), out) =
        capture(|out| session.update_finished(Ok(UpdateReport { done: 2, failed: 0 }), out));
    assert_eq!(out, "+OK Logging out, 2 messages deleted\r\n");
}

// ---------------------------------------------------------------------------------------------
// Mode
// ---------------------------------------------------------------------------------------------

#[test]
fn mode_parses_case_insensitively_and_displays_lowercase() {
    assert_eq!("delete".parse(), Ok(Mode::Delete));
    assert_eq!("KEEP".parse(), Ok(Mode::Keep));
    assert!("kept".parse::<Mode>().unwrap_err().contains("\"kept\""));
    assert_eq!(Mode::Delete.to_string(), "delete");
    assert_eq!(Mode::Keep.to_string(), "keep");
    assert_eq!(Mode::default(), Mode::Delete);
}

// ---------------------------------------------------------------------------------------------
// Property-style: random command lines never break the protocol
// ---------------------------------------------------------------------------------------------

/// xorshift64: small, deterministic, good enough to shuffle command lines.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

const KEYWORDS: [&str; 20] = [
    "USER", "PASS", "APOP", "QUIT", "STAT", "LIST", "RETR", "DELE", "NOOP", "RSET", "TOP", "UIDL",
    "CAPA", "STLS", "AUTH", "HELO", "XTND", "", "LIS", "QUITX",
];

const ARGS: [&str; 16] = [
    "1",
    "2",
    "3",
    "4",
    "0",
    "5",
    "18446744073709551615",
    "18446744073709551616",
    "-1",
    "+1",
    "x",
    "alice",
    "c4c9334bac560ecc979e58001b3e22fb",
    "",
    "\t",
    "ä",
];

/// Bytes a hostile client might send; never LF, which the line reader splits on.
const JUNK: &[u8] = b"\0\r\t \x7f\x80\xc3\xa4\xff.:[]AZaz09";

fn random_line(rng: &mut XorShift, logged_out: bool) -> Vec<u8> {
    if rng.percent(8) {
        let len = rng.below(300);
        return (0..len).map(|_| *rng.pick(JUNK)).collect();
    }
    // Half the time a plausible command, so sessions get logged in and do real work.
    if rng.percent(50) {
        if logged_out {
            let line = *rng.pick(&[
                "USER alice",
                "PASS secret",
                "APOP alice 0123abcd",
                "STLS",
                "AUTH",
                "AUTH PLAIN",
                "AUTH PLAIN AGFsaWNlAHNlY3JldA==",
                "AUTH PLAIN =",
                "AUTH LOGIN",
                "AUTH LOGIN YWxpY2U=",
                "AUTH SCRAM-SHA-256",
                "AUTH SCRAM-SHA-256 biwsbj1hbGljZSxyPWFiYw==",
                "AUTH CRAM-MD5",
                "AUTH XOAUTH2",
            ]);
            return line.as_bytes().to_vec();
        }
        let n = rng.below(7);
        let m = rng.below(20);
        let line = match rng.below(12) {
            0 => format!("RETR {n}"),
            1 => format!("TOP {n} {m}"),
            2 => format!("DELE {n}"),
            3 => format!("LIST {n}"),
            4 => format!("UIDL {n}"),
            5 => "STAT".into(),
            6 => "LIST".into(),
            7 => "UIDL".into(),
            8 => "RSET".into(),
            9 => "NOOP".into(),
            10 => "CAPA".into(),
            _ => "QUIT".into(),
        };
        return line.into_bytes();
    }
    let mut line: Vec<u8> = rng
        .pick(&KEYWORDS)
        .bytes()
        .map(|b| {
            if rng.percent(30) {
                b.to_ascii_lowercase()
            } else {
                b
            }
        })
        .collect();
    for _ in 0..rng.below(4) {
        line.extend_from_slice(if rng.percent(90) { b" " } else { b"  " });
        if rng.percent(5) {
            line.push(*rng.pick(JUNK));
        } else {
            line.extend_from_slice(rng.pick(&ARGS).as_bytes());
        }
    }
    line
}

/// A line sent in answer to a `+ ` challenge: half the time one that suits some mechanism,
/// otherwise anything (which the session must take as a base64 response).
fn random_sasl_answer(rng: &mut XorShift) -> Vec<u8> {
    if rng.percent(50) {
        return random_line(rng, true);
    }
    let answer = *rng.pick(&[
        "*",
        "",
        "=",
        "AGFsaWNlAHNlY3JldA==",     // \0alice\0secret
        "YWxpY2U=",                 // alice
        "c2VjcmV0",                 // secret
        "biwsbj1hbGljZSxyPWFiYw==", // n,,n=alice,r=abc
        "YWxpY2UgMDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=", // alice 0123...cdef
        "Yz1iaXdzLHI9YWJjLHA9QUFBQQ==", // c=biws,r=abc,p=AAAA
        "!!!",
        "YWxpY2U",
    ]);
    answer.as_bytes().to_vec()
}

/// Checks `out` is exactly one well-formed reply: a status line of at most 512 octets and,
/// when `multi_line` and positive, body lines that never start with '.' and the ".\r\n" end.
/// Returns whether the reply was positive.
fn check_reply(out: &[u8], multi_line: bool, context: &str) -> bool {
    let out = std::str::from_utf8(out).unwrap_or_else(|_| panic!("{context}: not UTF-8"));
    let body = out
        .strip_suffix("\r\n")
        .unwrap_or_else(|| panic!("{context}: no CRLF at the end: {out:?}"));
    let lines: Vec<&str> = body.split("\r\n").collect();
    for line in &lines {
        assert!(
            !line.contains(['\r', '\n', '\0']),
            "{context}: stray CR, LF or NUL: {out:?}"
        );
    }
    let status = lines[0];
    assert!(status.len() + 2 <= 512, "{context}: status too long");
    let ok = match status.split_once(' ').map_or(status, |(s, _)| s) {
        "+OK" => true,
        "-ERR" => false,
        _ => panic!("{context}: bad status line {out:?}"),
    };
    if ok && multi_line {
        assert!(lines.len() >= 2, "{context}: unterminated {out:?}");
        assert_eq!(lines[lines.len() - 1], ".", "{context}: {out:?}");
        for line in &lines[1..lines.len() - 1] {
            assert!(
                !line.is_empty() && !line.starts_with('.'),
                "{context}: {out:?}"
            );
        }
    } else {
        assert_eq!(lines.len(), 1, "{context}: more than one line {out:?}");
    }
    ok
}

/// What the test believes about a session, to check the session's replies against.
#[derive(Debug, PartialEq)]
enum Phase {
    LoggedOut,
    LoggedIn,
}

#[test]
fn random_command_lines_never_break_the_protocol() {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut lines_sent = 0;
    let mut logins = 0;
    let mut sends = 0;
    let mut updates = 0;
    let mut starttls = 0;
    let mut challenges = 0;
    let mut lookups = 0;
    let mut sasl_logins = 0;
    let users = sasl_users();
    for session_no in 0..700 {
        let settings = Settings {
            plaintext_auth: rng.percent(85),
            login_delay: rng.percent(30).then(|| 1 + rng.below(600)),
            stls: rng.percent(50),
            apop_banner: rng.percent(50).then(|| "<1.2@test>".to_string()),
            max_auth_failures: 1 + rng.below(4) as u32,
            max_bad_commands: 1 + rng.below(40) as u32,
            ..Settings::default()
        };
        let (mut session, greeting) = start_with_greeting(settings);
        check_reply(greeting.as_bytes(), false, "greeting");
        let mut phase = Phase::LoggedOut;
        let mut sizes: Vec<u64> = Vec::new();
        let mut deleted: Vec<bool> = Vec::new();
        let mut login_mode = Mode::Delete;
        // Whether the last reply was a `+ ` challenge, so the next line is its answer.
        let mut in_sasl = false;

        'session: for _ in 0..60 {
            assert_eq!(session.is_logged_in(), phase == Phase::LoggedIn);
            if rng.percent(5) {
                // Misuse: no exchange is handed out unless a lookup is pending.
                assert!(session.take_sasl_exchange().is_none());
            }
            let mut out = Vec::new();
            // A long line inside an exchange is left to a_long_line_during_an_exchange_ends_it.
            let (line, mut effect) = if rng.percent(3) && !in_sasl {
                (b"<too long>".to_vec(), session.line_too_long(&mut out))
            } else {
                let line = if in_sasl {
                    random_sasl_answer(&mut rng)
                } else {
                    random_line(&mut rng, phase == Phase::LoggedOut)
                };
                let effect = session.command(&line, &mut out);
                (line, effect)
            };
            lines_sent += 1;
            let context = format!("session {session_no}, {:?}", String::from_utf8_lossy(&line));
            let answered_challenge = std::mem::take(&mut in_sasl);
            // An answer to a challenge is not a command, whatever it looks like.
            let cmd = if answered_challenge || line == b"<too long>" {
                None
            } else {
                command::parse(&line).ok()
            };
            let from_sasl = answered_challenge || matches!(cmd, Some(Command::Auth(Some(_))));
            if let Effect::SaslLookup { authcid } = effect {
                assert_eq!(phase, Phase::LoggedOut, "{context}");
                assert!(from_sasl, "{context}");
                assert!(out.is_empty(), "{context}: {out:?}");
                let mut exchange = session.take_sasl_exchange().expect("the exchange");
                let step = exchange.credentials(users.sasl_credentials(&authcid));
                effect = session.sasl_resume(exchange, step, &mut out);
                assert!(
                    !matches!(effect, Effect::SaslLookup { .. }),
                    "{context}: a second lookup"
                );
                lookups += 1;
            }
            if effect == Effect::None && out.starts_with(b"+ ") {
                assert_eq!(phase, Phase::LoggedOut, "{context}");
                assert!(from_sasl, "{context}: a challenge for {out:?}");
                continuation(&text(&out));
                in_sasl = true;
                challenges += 1;
                continue;
            }
            let multi_line = matches!(
                cmd,
                Some(
                    Command::Capa | Command::List(None) | Command::Uidl(None) | Command::Auth(None)
                )
            );
            // For a command naming one message: whether the model says it may be used.
            let target = match cmd {
                Some(
                    Command::List(Some(n))
                    | Command::Uidl(Some(n))
                    | Command::Dele(n)
                    | Command::Retr(n)
                    | Command::Top { msg: n, .. },
                ) if phase == Phase::LoggedIn => {
                    Some((1..=sizes.len() as u64).contains(&n) && !deleted[n as usize - 1])
                }
                _ => None,
            };

            match effect {
                Effect::None => {
                    let ok = check_reply(&out, multi_line, &context);
                    match (target, &cmd) {
                        // A message that may be sent is sent.
                        (Some(live), Some(Command::Retr(_) | Command::Top { .. })) => {
                            assert!(!live && !ok, "{context}")
                        }
                        (Some(live), _) => assert_eq!(ok, live, "{context}"),
                        (None, _) => {}
                    }
                    if ok && phase == Phase::LoggedIn {
                        match cmd {
                            Some(Command::Dele(n)) => {
                                deleted[n as usize - 1] = true;
                                let marked = deleted.iter().filter(|&&d| d).count();
                                assert_eq!(session.stats().marked, marked, "{context}");
                            }
                            Some(Command::List(Some(n))) => assert_eq!(
                                text(&out),
                                format!("+OK {n} {}\r\n", sizes[n as usize - 1])
                            ),
                            Some(Command::Rset) => deleted.fill(false),
                            Some(Command::Stat) => {
                                let live = (0..sizes.len()).filter(|&i| !deleted[i]);
                                let count = live.clone().count();
                                let octets: u64 = live.map(|i| sizes[i]).sum();
                                assert_eq!(text(&out), format!("+OK {count} {octets}\r\n"));
                            }
                            _ => {}
                        }
                    }
                }
                Effect::Close => {
                    check_reply(&out, false, &context);
                    // A closed session refuses everything, without panicking.
                    let (effect, out) = run(&mut session, b"QUIT");
                    assert!(out.starts_with("-ERR "), "{context}: {out:?}");
                    assert!(matches!(effect, Effect::None | Effect::Close));
                    break 'session;
                }
                Effect::Authenticate { credential, .. } => {
                    assert_eq!(phase, Phase::LoggedOut, "{context}");
                    assert!(out.is_empty(), "{context}: {out:?}");
                    assert!(
                        from_sasl || matches!(cmd, Some(Command::Pass(_) | Command::Apop { .. })),
                        "{context}"
                    );
                    if from_sasl {
                        sasl_logins += 1;
                    }
                    // A failed exchange never logs in.
                    let rejected = matches!(credential, Credential::Rejected(_));
                    if rng.percent(20) {
                        // Misuse: a command before the verdict is refused.
                        let (effect, out) = run(&mut session, random_line(&mut rng, true));
                        assert!(out.starts_with("-ERR "), "{context}: {out:?}");
                        check_reply(out.as_bytes(), false, &context);
                        match effect {
                            Effect::None => {}
                            Effect::Close => break 'session,
                            other => panic!("{context}: effect while authenticating: {other:?}"),
                        }
                        assert!(!session.is_logged_in());
                    }
                    let mut out = Vec::new();
                    if rng.percent(60) && !rejected {
                        sizes = (0..rng.below(6)).map(|_| rng.below(100_000)).collect();
                        deleted = vec![false; sizes.len()];
                        let mode = *rng.pick(&[Mode::Delete, Mode::Keep]);
                        session.logged_in(messages(&sizes), mode, &mut out);
                        assert!(check_reply(&out, false, &context));
                        assert_eq!(session.mode(), Some(mode));
                        login_mode = mode;
                        phase = Phase::LoggedIn;
                        logins += 1;
                    } else {
                        let wait = 1 + rng.below(300);
                        let failure = if rejected {
                            LoginFailure::BadCredentials
                        } else {
                            rng.pick(&[
                                LoginFailure::BadCredentials,
                                LoginFailure::InUse,
                                LoginFailure::TooManySessions,
                                LoginFailure::TooSoon(wait),
                                LoginFailure::System("Cannot open the mailbox".into()),
                                LoginFailure::Misconfigured("Mailbox is not available".into()),
                            ])
                            .clone()
                        };
                        let effect = session.login_failed(failure, &mut out);
                        assert!(!check_reply(&out, false, &context));
                        match effect {
                            Effect::None => {}
                            Effect::Close => break 'session,
                            other => panic!("{context}: login_failed gave {other:?}"),
                        }
                    }
                }
                Effect::Send { index, top_lines } => {
                    assert_eq!(phase, Phase::LoggedIn, "{context}");
                    assert!(out.is_empty(), "{context}: {out:?}");
                    assert!(index < sizes.len() && !deleted[index], "{context}");
                    assert_eq!(target, Some(true), "{context}");
                    match cmd {
                        Some(Command::Retr(n)) => {
                            assert_eq!((n, top_lines), (index as u64 + 1, None), "{context}")
                        }
                        Some(Command::Top { msg, lines }) => {
                            assert_eq!((msg, top_lines), (index as u64 + 1, Some(lines)))
                        }
                        other => panic!("{context}: Send from {other:?}"),
                    }
                    let mut out = Vec::new();
                    if rng.percent(80) {
                        let before = session.stats().retrieved_octets;
                        session.send_started(index, top_lines, &mut out);
                        assert!(check_reply(&out, false, &context));
                        if top_lines.is_none() {
                            assert_eq!(text(&out), format!("+OK {} octets\r\n", sizes[index]));
                            assert_eq!(session.stats().retrieved_octets, before + sizes[index]);
                        }
                    } else {
                        session.send_failed(index, rng.percent(50), &mut out);
                        assert!(!check_reply(&out, false, &context));
                    }
                    sends += 1;
                }
                Effect::Update { marked, mode } => {
                    assert_eq!(phase, Phase::LoggedIn, "{context}");
                    assert!(out.is_empty(), "{context}: {out:?}");
                    let expected: Vec<usize> = (0..sizes.len()).filter(|&i| deleted[i]).collect();
                    assert!(!marked.is_empty(), "{context}");
                    assert_eq!(marked, expected, "{context}");
                    assert_eq!(mode, login_mode, "{context}");
                    assert_eq!(session.stats().marked, marked.len(), "{context}");
                    if rng.percent(20) {
                        let (effect, out) = run(&mut session, random_line(&mut rng, false));
                        check_reply(out.as_bytes(), false, &context);
                        assert!(out.starts_with("-ERR "), "{context}: {out:?}");
                        match effect {
                            Effect::None => {}
                            Effect::Close => break 'session,
                            other => panic!("{context}: effect while updating: {other:?}"),
                        }
                    }
                    let mut out = Vec::new();
                    let result = match rng.below(3) {
                        0 => Ok(UpdateReport {
                            done: marked.len(),
                            failed: 0,
                        }),
                        1 => Ok(UpdateReport {
                            done: marked.len() - 1,
                            failed: 1,
                        }),
                        _ => Err("Maildir is gone".into()),
                    };
                    let expect_ok = matches!(result, Ok(UpdateReport { failed: 0, .. }));
                    session.update_finished(result, &mut out);
                    assert_eq!(check_reply(&out, false, &context), expect_ok);
                    updates += 1;
                    assert!(!session.is_logged_in());
                    break 'session;
                }
                Effect::SaslLookup { .. } => unreachable!("resolved above"),
                Effect::StartTls => {
                    assert_eq!(phase, Phase::LoggedOut, "{context}");
                    assert_eq!(text(&out), "+OK Begin TLS negotiation\r\n", "{context}");
                    starttls += 1;
                    session.tls_started();
                    phase = Phase::LoggedOut;
                }
            }
        }
    }
    // The walk went everywhere it should have.
    assert!(lines_sent > 5_000, "{lines_sent}");
    assert!(logins > 100, "{logins}");
    assert!(sends > 50, "{sends}");
    assert!(updates > 10, "{updates}");
    assert!(starttls > 10, "{starttls}");
    assert!(challenges > 200, "{challenges}");
    assert!(lookups > 20, "{lookups}");
    assert!(sasl_logins > 50, "{sasl_logins}");
}
