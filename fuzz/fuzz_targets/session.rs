//! A whole `Session` driven by arbitrary client bytes, through every state, with a small fake
//! I/O layer shaped like the server's connection loop.
//!
//! Input: byte 0 is the length of an "oracle" that follows it; the rest is what the client
//! sends. The fake I/O layer takes its answers from the oracle, one byte each (0 once it runs
//! out): the connection's settings, the size of each read, whether a login succeeds (by the
//! real password check against a fixed users file, or a refusal: in use, too many sessions,
//! too soon, server trouble), the maildrop it opens, whether a message opens and in what
//! pieces it is read, and how QUIT's update goes. SASL lookups use the same users file.
//!
//! A line `!apop NAME`, `!cram NAME` or `!scram` is replaced by the right answer (the APOP
//! command, the CRAM-MD5 response, the SCRAM client-final-message) for the last challenge,
//! so the fuzzer reaches successful logins by every mechanism.
//!
//! Checked after every line: exactly one reply was written; it is a `+OK`/`-ERR` status line
//! (or a `+ ` continuation with base64 during AUTH) of one CRLF-ended line; multi-line
//! replies (CAPA, AUTH, LIST, UIDL, RETR, TOP) end with ".\r\n" and stuff their dots;
//! STAT/LIST/UIDL/DELE/RSET/RETR/TOP/QUIT agree with the maildrop the session was given and
//! what was marked; RETR sends as many octets as it announced; a failed SASL exchange never
//! logs in, and only a known user can be "verified"; the connection closes after the
//! configured number of failed logins.
#![no_main]

use std::borrow::Cow;
use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use libfuzzer_sys::fuzz_target;
use md5::Md5;
use pop3d::auth::{self, Users};
use pop3d::protocol::body::{BodyEncoder, WireSize};
use pop3d::protocol::command::{self, Command, MsgNum};
use pop3d::protocol::lines::{Line, LineReader, MAX_SASL_LINE};
use pop3d::session::{
    Credential, Effect, LoginFailure, Message, Mode, Session, Settings, UpdateReport,
};
use sha2::{Digest, Sha256};

fuzz_target!(|data: &[u8]| run(data));

/// alice and bob have plaintext passwords (every mechanism), `user` Dovecot's SCRAM keys for
/// "pencil" (PASS, PLAIN, LOGIN, SCRAM), `nopass` no password at all.
const USERS: &str = "\
alice:{PLAIN}secret::::::
bob:{PLAIN}hunter2:::::: mode=keep
user:{SCRAM-SHA-256}4096,/DaWi4cvau/FTipTrmo2zQ==,BfTsqKdh3zlqiARk1ik3ZH1J6bJr1GtyjPARWDu1/Nk=,2RXfb/674NIEC5cT4rftkOlkfnMRpf1TW0lUlycLrVU=::::::
nopass:::::::
";

const BANNER: &str = "<1896.697170952@dbc.mtview.ca.us>";

/// Message files a maildrop is made of: CRLF and LF ends, dots to stuff, no header/body
/// separator, a last line without a line end, a bare CR, nothing at all.
const FILES: [&[u8]; 7] = [
    b"Subject: one\r\nFrom: a@b\r\n\r\nhello\r\n.\r\n..two dots\r\nend\r\n",
    b"Subject: two\n\nline 1\n.\nline 3\nline 4",
    b"",
    b"From: x\r\n\r\n\r\n.\r",
    b"no blank line\n.x\n",
    b"a\rb\r\r\n\n.\n\n.",
    b"Subject: big\n\n.........\n",
];

fn users() -> &'static Users {
    static USERS_FILE: OnceLock<Users> = OnceLock::new();
    USERS_FILE.get_or_init(|| Users::parse(USERS).expect("the fixed users file parses"))
}

/// The password a well-behaved client of `login` knows.
/// `POP3D_FUZZ_TRACE=1` prints the conversation, to see what an input does.
fn trace() -> bool {
    static TRACE: OnceLock<bool> = OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("POP3D_FUZZ_TRACE").is_some())
}

fn password_of(login: &str) -> &'static str {
    match users().resolve(login).map(|r| r.entry.name.as_str()) {
        Some("alice") => "secret",
        Some("bob") => "hunter2",
        Some("user") => "pencil",
        _ => "guess",
    }
}

struct Oracle<'a>(&'a [u8]);

impl Oracle<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
}

/// What the fake I/O layer handed the session at login, and what the client marked since.
struct Maildrop {
    files: Vec<&'static [u8]>,
    sizes: Vec<u64>,
    uids: Vec<String>,
    deleted: Vec<bool>,
    mode: Mode,
}

impl Maildrop {
    fn live(&self, n: MsgNum) -> Option<usize> {
        let index = usize::try_from(n).ok()?.checked_sub(1)?;
        (index < self.files.len() && !self.deleted[index]).then_some(index)
    }

    fn live_count(&self) -> usize {
        self.deleted.iter().filter(|d| !**d).count()
    }

    fn live_octets(&self) -> u64 {
        (0..self.files.len())
            .filter(|&i| !self.deleted[i])
            .map(|i| self.sizes[i])
            .sum()
    }

    fn marked(&self) -> Vec<usize> {
        (0..self.files.len()).filter(|&i| self.deleted[i]).collect()
    }
}

/// What comes after a line.
#[derive(PartialEq, Eq)]
enum Flow {
    Go,
    /// STLS accepted: the reader's buffer is dropped (RFC 2595 §2.2).
    Tls,
    End,
}

struct Harness<'a> {
    oracle: Oracle<'a>,
    settings: Settings,
    session: Session,
    out: Vec<u8>,
    drop: Option<Maildrop>,
    auth_failures: u32,
    /// The last `+ ` challenge, decoded.
    challenge: Option<Vec<u8>>,
    /// The last SASL message from the client, decoded.
    client: Option<Vec<u8>>,
    /// Set by `Effect::Send` when the message went out, so its reply is multi-line.
    sent: Option<(usize, Option<u64>)>,
}

fn run(data: &[u8]) {
    let [len, rest @ ..] = data else {
        return;
    };
    let (oracle, mut stream) = rest.split_at(usize::from(*len).min(rest.len()));
    let mut oracle = Oracle(oracle);
    let flags = oracle.byte();
    let mut settings = Settings {
        plaintext_auth: flags & 1 == 0,
        stls: flags & 2 != 0,
        apop_banner: (flags & 4 != 0).then(|| BANNER.to_owned()),
        login_delay: (flags & 8 != 0).then_some(300),
        ..Settings::default()
    };
    if flags & 16 != 0 {
        settings.max_auth_failures = 1 + u32::from(oracle.byte() % 4);
        settings.max_bad_commands = 1 + u32::from(oracle.byte() % 25);
    }

    let mut out = Vec::new();
    let session = Session::new(settings.clone(), &mut out);
    let greeting = match &settings.apop_banner {
        Some(banner) => format!("+OK POP3 server ready {banner}\r\n"),
        None => "+OK POP3 server ready\r\n".to_owned(),
    };
    assert_eq!(out, greeting.as_bytes());
    let mut h = Harness {
        oracle,
        settings,
        session,
        out,
        drop: None,
        auth_failures: 0,
        challenge: None,
        client: None,
        sent: None,
    };

    // The server's loop (src/server/connection.rs, `run`): every complete line under the
    // limit the session sets for it, then read more. The limit is set per line, as AUTH and
    // its answer may share a read; setting it once per read let a 4 KB command line through
    // after a SASL answer and echoed it in a reply of over 512 octets, which this target
    // found (fixed in the server in c41120b; tests/model.rs holds the regression tests).
    let mut reader = LineReader::new();
    'session: loop {
        loop {
            reader.set_limit(h.session.line_limit());
            let Some(line) = reader.next_line() else {
                break;
            };
            let flow = match line {
                Line::Command(line) => {
                    let line = line.to_vec();
                    h.line(&line)
                }
                Line::TooLong => h.too_long(),
            };
            match flow {
                Flow::Go => {}
                Flow::End => break 'session,
                Flow::Tls => {
                    reader = LineReader::new();
                    break;
                }
            }
        }
        if stream.is_empty() {
            break;
        }
        let room = reader.unfilled();
        let n = match h.oracle.byte() {
            0 => room.len(),
            n => usize::from(n),
        }
        .min(room.len())
        .min(stream.len());
        room[..n].copy_from_slice(&stream[..n]);
        reader.filled(n);
        stream = &stream[n..];
    }
}

impl Harness<'_> {
    fn line(&mut self, line: &[u8]) -> Flow {
        let line = self.magic(line);
        if trace() {
            eprintln!("C: {}", String::from_utf8_lossy(&line));
        }
        let in_sasl = self.session.line_limit() == MAX_SASL_LINE;
        let parsed = if in_sasl {
            if let Ok(decoded) = BASE64.decode(&*line) {
                self.client = Some(decoded);
            }
            None
        } else {
            command::parse(&line).ok()
        };
        if let Some(Command::Auth(Some((_, initial)))) = &parsed {
            self.client = initial.and_then(|i| BASE64.decode(i).ok());
        }
        let logged_in = self.drop.is_some();
        assert_eq!(self.session.is_logged_in(), logged_in);
        self.out.clear();
        self.sent = None;
        let effect = self.session.command(&line, &mut self.out);
        let effect_kind = format!("{effect:?}");
        let flow = self.apply(effect, parsed.as_ref());

        let multi_if_ok = self.sent.is_some()
            || matches!(
                parsed,
                Some(
                    Command::Capa | Command::Auth(None) | Command::List(None) | Command::Uidl(None)
                )
            );
        let (status, lines) = self.reply(multi_if_ok);
        if logged_in && let Some(cmd) = &parsed {
            self.check_transaction(cmd, &status, &lines, &effect_kind);
        }
        if !logged_in
            && !in_sasl
            && let Some(
                Command::Stat
                | Command::List(_)
                | Command::Uidl(_)
                | Command::Retr(_)
                | Command::Top { .. }
                | Command::Dele(_)
                | Command::Rset
                | Command::Noop,
            ) = &parsed
        {
            assert!(status.starts_with("-ERR"), "{status:?} before login");
        }
        flow
    }

    fn too_long(&mut self) -> Flow {
        self.out.clear();
        let effect = self.session.line_too_long(&mut self.out);
        assert!(matches!(effect, Effect::None | Effect::Close), "{effect:?}");
        let flow = self.apply(effect, None);
        let (status, _) = self.reply(false);
        assert!(status.starts_with("-ERR "), "{status:?}");
        flow
    }

    /// Carries out an effect as the server would, answering from the oracle.
    fn apply(&mut self, effect: Effect, cmd: Option<&Command<'_>>) -> Flow {
        match effect {
            Effect::None => Flow::Go,
            Effect::Close => Flow::End,
            Effect::StartTls => {
                assert!(self.settings.stls, "STLS accepted where not offered");
                assert!(self.drop.is_none());
                self.session.tls_started();
                self.settings.stls = false;
                self.settings.plaintext_auth = true;
                Flow::Tls
            }
            Effect::Authenticate { user, credential } => {
                assert!(self.drop.is_none(), "a login while logged in");
                let b = self.oracle.byte();
                let result = match b % 8 {
                    0..=3 => match self.verify(&user, &credential) {
                        true => Ok(()),
                        false => Err(LoginFailure::BadCredentials),
                    },
                    4 => Err(LoginFailure::InUse),
                    5 => Err(LoginFailure::TooManySessions),
                    6 => Err(LoginFailure::TooSoon(u64::from(b))),
                    _ if b & 8 == 0 => Err(LoginFailure::System("Cannot open the mailbox".into())),
                    _ => Err(LoginFailure::Misconfigured(
                        "Mailbox is not available; contact the administrator".into(),
                    )),
                };
                match result {
                    Ok(()) => {
                        let drop = self.open_maildrop();
                        let messages = (0..drop.files.len())
                            .map(|i| Message {
                                uid: drop.uids[i].as_str().into(),
                                size: drop.sizes[i],
                            })
                            .collect();
                        self.session.logged_in(messages, drop.mode, &mut self.out);
                        assert_eq!(self.session.mode(), Some(drop.mode));
                        for (i, &size) in drop.sizes.iter().enumerate() {
                            assert_eq!(self.session.message_size(i), size);
                        }
                        self.drop = Some(drop);
                        Flow::Go
                    }
                    Err(failure) => {
                        let bad = failure == LoginFailure::BadCredentials;
                        self.auth_failures += u32::from(bad);
                        let effect = self.session.login_failed(failure, &mut self.out);
                        assert!(!self.session.is_logged_in());
                        if bad && self.auth_failures >= self.settings.max_auth_failures {
                            assert_eq!(effect, Effect::Close, "too many failures, not closed");
                            Flow::End
                        } else {
                            assert_eq!(effect, Effect::None);
                            Flow::Go
                        }
                    }
                }
            }
            Effect::SaslLookup { authcid } => {
                let mut exchange = self
                    .session
                    .take_sasl_exchange()
                    .expect("a lookup comes with its exchange");
                assert!(self.session.take_sasl_exchange().is_none());
                let step = exchange.credentials(users().sasl_credentials(&authcid));
                let next = self.session.sasl_resume(exchange, step, &mut self.out);
                assert!(
                    !matches!(next, Effect::SaslLookup { .. }),
                    "a second lookup in a row"
                );
                self.apply(next, cmd)
            }
            Effect::Send { index, top_lines } => {
                let drop = self.drop.as_ref().expect("Send while not logged in");
                let n = index as u64 + 1;
                match cmd {
                    Some(Command::Retr(m)) => assert_eq!((*m, top_lines), (n, None)),
                    Some(Command::Top { msg, lines }) => {
                        assert_eq!((*msg, top_lines), (n, Some(*lines)))
                    }
                    other => panic!("Send {index} for {other:?}"),
                }
                assert_eq!(drop.live(n), Some(index), "Send of a marked message");
                let file = drop.files[index];
                let b = self.oracle.byte();
                if b % 8 == 7 {
                    self.session.send_failed(index, b & 8 != 0, &mut self.out);
                } else {
                    self.session.send_started(index, top_lines, &mut self.out);
                    let mut encoder = BodyEncoder::new(top_lines);
                    for piece in file.chunks(1 + usize::from(b)) {
                        encoder.push(piece, &mut self.out);
                        if encoder.is_done() {
                            break;
                        }
                    }
                    encoder.finish(&mut self.out);
                    self.sent = Some((index, top_lines));
                }
                Flow::Go
            }
            Effect::Update { marked, mode } => {
                let drop = self.drop.as_ref().expect("Update while not logged in");
                assert!(matches!(cmd, Some(Command::Quit)));
                assert_eq!(mode, drop.mode);
                assert!(!marked.is_empty(), "an update with nothing marked");
                assert_eq!(marked, drop.marked());
                let b = self.oracle.byte();
                let result = match b % 4 {
                    0 | 1 => Ok(UpdateReport {
                        done: marked.len(),
                        failed: 0,
                    }),
                    2 => {
                        let failed = 1 + usize::from(b) % marked.len();
                        Ok(UpdateReport {
                            done: marked.len() - failed,
                            failed,
                        })
                    }
                    _ => Err("Cannot record the messages to hide".into()),
                };
                self.session.update_finished(result, &mut self.out);
                Flow::End
            }
        }
    }

    /// The real password check (cheap: plaintext and SCRAM keys only) for the fixed users.
    fn verify(&self, user: &str, credential: &Credential) -> bool {
        let entry = users().resolve(user).map(|r| r.entry);
        match credential {
            // No password at all: refused without the deliberately slow stand-in hashing.
            _ if entry.is_some_and(|e| e.password.is_none()) => false,
            Credential::Password(password) => {
                entry.is_some() && auth::verify_password(entry, password.as_bytes())
            }
            Credential::Apop { banner, digest } => {
                assert_eq!(Some(banner), self.settings.apop_banner.as_ref());
                auth::verify_apop(entry, banner, digest)
            }
            Credential::Verified => {
                assert!(
                    entry.is_some(),
                    "a SASL proof verified for unknown {user:?}"
                );
                assert!(self.client.is_some(), "verified without a client message");
                true
            }
            Credential::Rejected(_) => false,
        }
    }

    fn open_maildrop(&mut self) -> Maildrop {
        let b = self.oracle.byte();
        let count = usize::from(b % 6);
        let mode = if b & 0x40 != 0 {
            Mode::Keep
        } else {
            Mode::Delete
        };
        let files: Vec<&'static [u8]> = (0..count)
            .map(|i| FILES[(i * 3 + usize::from(b >> 3)) % FILES.len()])
            .collect();
        let sizes = files
            .iter()
            .map(|file| {
                let mut size = WireSize::default();
                size.push(file);
                size.total()
            })
            .collect();
        Maildrop {
            uids: (0..count)
                .map(|i| format!("{}.M{i}P1.host", 1_700_000_000 + i))
                .collect(),
            deleted: vec![false; count],
            files,
            sizes,
            mode,
        }
    }

    /// Reads the one reply the last line produced; checks its form and that nothing follows.
    fn reply(&mut self, multi_if_ok: bool) -> (String, Vec<Vec<u8>>) {
        let out = std::mem::take(&mut self.out);
        if trace() {
            eprint!("S: {}", String::from_utf8_lossy(&out));
        }
        let mut lines = out.split_inclusive(|&b| b == b'\n');
        let status = lines.next().expect("no reply at all");
        let status = status
            .strip_suffix(b"\r\n")
            .unwrap_or_else(|| panic!("status line without CRLF: {status:?}"));
        assert!(!status.contains(&b'\r'), "CR inside {status:?}");
        let status = String::from_utf8(status.to_vec()).expect("status lines are UTF-8");
        let in_sasl = self.session.line_limit() == MAX_SASL_LINE;
        let mut body = Vec::new();
        if let Some(challenge) = status.strip_prefix("+ ") {
            assert!(in_sasl, "a continuation outside AUTH: {status:?}");
            self.challenge = Some(BASE64.decode(challenge).expect("challenges are base64"));
        } else if status == "+" {
            panic!("a continuation without its space");
        } else {
            assert!(!in_sasl, "{status:?} while waiting for a SASL answer");
            assert!(
                status == "+OK" || status.starts_with("+OK ") || status.starts_with("-ERR "),
                "bad status line {status:?}"
            );
            // RFC 2449 §4: responses are at most 512 octets with CRLF.
            assert!(status.len() + 2 <= 512, "status line too long: {status:?}");
            if multi_if_ok && status.starts_with("+OK") {
                loop {
                    let line = lines
                        .next()
                        .expect("multi-line reply without its terminator");
                    assert!(line.ends_with(b"\r\n"), "line without CRLF: {line:?}");
                    if line == b".\r\n" {
                        break;
                    }
                    assert!(
                        !line.starts_with(b".") || line.starts_with(b".."),
                        "unstuffed dot: {line:?}"
                    );
                    body.push(line.to_vec());
                }
            }
        }
        let rest: Vec<&[u8]> = lines.collect();
        assert!(
            rest.is_empty(),
            "more than one reply: {status:?} then {rest:?}"
        );
        (status, body)
    }

    /// The replies of TRANSACTION against the maildrop and the marks.
    fn check_transaction(
        &mut self,
        cmd: &Command<'_>,
        status: &str,
        lines: &[Vec<u8>],
        effect: &str,
    ) {
        let Some(drop) = self.drop.as_mut() else {
            return;
        };
        let ok = status.starts_with("+OK");
        let text = |lines: &[Vec<u8>]| -> Vec<String> {
            lines
                .iter()
                .map(|l| String::from_utf8_lossy(&l[..l.len() - 2]).into_owned())
                .collect()
        };
        match *cmd {
            Command::Stat => assert_eq!(
                status,
                format!("+OK {} {}", drop.live_count(), drop.live_octets())
            ),
            Command::List(Some(n)) => match drop.live(n) {
                Some(i) => assert_eq!(status, format!("+OK {n} {}", drop.sizes[i])),
                None => assert!(!ok, "LIST {n}: {status:?}"),
            },
            Command::Uidl(Some(n)) => match drop.live(n) {
                Some(i) => assert_eq!(status, format!("+OK {n} {}", drop.uids[i])),
                None => assert!(!ok, "UIDL {n}: {status:?}"),
            },
            Command::List(None) | Command::Uidl(None) => {
                assert!(ok);
                let listing = matches!(cmd, Command::List(None));
                let expected: Vec<String> = (0..drop.files.len())
                    .filter(|&i| !drop.deleted[i])
                    .map(|i| match listing {
                        true => format!("{} {}", i + 1, drop.sizes[i]),
                        false => format!("{} {}", i + 1, drop.uids[i]),
                    })
                    .collect();
                assert_eq!(text(lines), expected);
            }
            Command::Dele(n) => match drop.live(n) {
                Some(i) => {
                    assert!(ok, "DELE {n}: {status:?}");
                    drop.deleted[i] = true;
                }
                None => assert!(!ok, "DELE {n}: {status:?}"),
            },
            Command::Rset => {
                assert!(ok);
                drop.deleted.fill(false);
                assert_eq!(
                    status,
                    format!(
                        "+OK {} messages ({} octets)",
                        drop.live_count(),
                        drop.live_octets()
                    )
                );
            }
            Command::Noop => assert_eq!(status, "+OK"),
            Command::Retr(n) | Command::Top { msg: n, .. } => match drop.live(n) {
                Some(i) => match self.sent {
                    Some((index, top)) => {
                        assert_eq!(index, i);
                        if top.is_none() {
                            assert_eq!(status, format!("+OK {} octets", drop.sizes[i]));
                            let unstuffed: usize = lines
                                .iter()
                                .map(|l| l.len() - usize::from(l.starts_with(b".")))
                                .sum();
                            assert_eq!(unstuffed as u64, drop.sizes[i], "RETR {n} size");
                        }
                    }
                    None => assert!(!ok, "{status:?} for a message that failed to open"),
                },
                None => assert!(!ok && effect == "None", "RETR/TOP {n}: {status:?} {effect}"),
            },
            Command::Quit => {
                if drop.marked().is_empty() {
                    assert_eq!(effect, "Close");
                    assert_eq!(status, "+OK Logging out, no messages marked");
                } else {
                    assert!(effect.starts_with("Update"), "{effect}");
                }
            }
            Command::Capa => assert!(ok),
            Command::User(_)
            | Command::Pass(_)
            | Command::Apop { .. }
            | Command::Auth(_)
            | Command::Stls => assert!(!ok, "{cmd:?} after login: {status:?}"),
        }
    }

    /// The line a client that knows the password would send at this point, for `!` lines.
    fn magic<'l>(&self, line: &'l [u8]) -> Cow<'l, [u8]> {
        let computed = match line {
            [b'!', b'a', b'p', b'o', b'p', b' ', name @ ..] => {
                let name = String::from_utf8_lossy(name);
                self.settings.apop_banner.as_ref().map(|banner| {
                    let digest = Md5::digest(format!("{banner}{}", password_of(&name)));
                    format!("APOP {name} {}", hex(&digest)).into_bytes()
                })
            }
            [b'!', b'c', b'r', b'a', b'm', b' ', name @ ..] => {
                let name = String::from_utf8_lossy(name);
                self.challenge.as_ref().map(|challenge| {
                    let mut mac = Hmac::<Md5>::new_from_slice(password_of(&name).as_bytes())
                        .expect("HMAC takes any key");
                    mac.update(challenge);
                    let digest = hex(&mac.finalize().into_bytes());
                    BASE64.encode(format!("{name} {digest}")).into_bytes()
                })
            }
            b"!scram" => self.scram_final(),
            _ => None,
        };
        computed.map_or(Cow::Borrowed(line), Cow::Owned)
    }

    /// RFC 5802's client-final-message for the last client-first and server-first messages.
    fn scram_final(&self) -> Option<Vec<u8>> {
        let client_first = std::str::from_utf8(self.client.as_ref()?).ok()?;
        let server_first = std::str::from_utf8(self.challenge.as_ref()?).ok()?;
        let gs2_end = client_first.match_indices(',').nth(1)?.0 + 1;
        let (gs2_header, bare) = client_first.split_at(gs2_end);
        let name = bare
            .split(',')
            .find_map(|f| f.strip_prefix("n="))?
            .replace("=2C", ",")
            .replace("=3D", "=");
        let mut fields = server_first.split(',');
        let nonce = fields.next()?.strip_prefix("r=")?;
        let salt = BASE64.decode(fields.next()?.strip_prefix("s=")?).ok()?;
        let iterations: u32 = fields.next()?.strip_prefix("i=")?.parse().ok()?;
        if iterations > 10_000 {
            return None;
        }
        let salted = pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(
            password_of(&name).as_bytes(),
            &salt,
            iterations,
        );
        let client_key = hmac_sha256(&salted, b"Client Key");
        let stored_key = Sha256::digest(client_key);
        let without_proof = format!("c={},r={nonce}", BASE64.encode(gs2_header));
        let auth_message = format!("{bare},{server_first},{without_proof}");
        let signature = hmac_sha256(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature)
            .map(|(k, s)| k ^ s)
            .collect();
        let client_final = format!("{without_proof},p={}", BASE64.encode(proof));
        Some(BASE64.encode(client_final).into_bytes())
    }
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
