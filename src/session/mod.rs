//! The POP3 session state machine (RFC 1939 §3): AUTHORIZATION → TRANSACTION → UPDATE.
//!
//! Sans-IO: `Session::command` takes one command line and appends the reply to an output
//! buffer; when a command needs the outside world (checking a password, reading a message,
//! applying the update) it returns an `Effect`, and the I/O layer reports back through
//! `logged_in`/`login_failed`, `send_started`/`send_failed` and `update_finished`.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::auth::sasl::{self, Exchange, Mechanism, Outcome, Seed, Step};
use crate::protocol::command::{self, Command, MsgNum};
use crate::protocol::lines;
use crate::protocol::response::{self, Code};

/// What QUIT does with the messages a session marked with DELE.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// RFC 1939: marked messages are removed from the Maildir at QUIT.
    #[default]
    Delete,
    /// Marked messages stay on the server, hidden from this login's later sessions.
    Keep,
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "delete" => Ok(Mode::Delete),
            "keep" => Ok(Mode::Keep),
            _ => Err(format!("unknown mode {s:?} (expected delete or keep)")),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Delete => "delete",
            Mode::Keep => "keep",
        })
    }
}

/// What the session learns about one message of the maildrop when the user logs in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The UIDL (RFC 1939 §7): stable across sessions, 1 to 70 characters 0x21..=0x7E.
    pub uid: Box<str>,
    /// Octets RETR sends before byte-stuffing, with CRLF line ends.
    pub size: u64,
}

/// Per-connection facts the session needs to answer truthfully.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Whether USER/PASS and APOP may be used on this connection (TLS, loopback, or allowed).
    pub plaintext_auth: bool,
    /// Whether STLS is offered: a certificate is configured and the connection is plain.
    pub stls: bool,
    /// The LOGIN-DELAY announced in CAPA, in seconds, when the server enforces one.
    pub login_delay: Option<u64>,
    /// The `<timestamp@host>` of the greeting when APOP is enabled; the MD5 mechanisms
    /// (APOP, AUTH CRAM-MD5) are offered only then.
    pub apop_banner: Option<String>,
    /// This server's name, for the CRAM-MD5 challenge.
    pub hostname: String,
    /// Failed logins before the connection is closed.
    pub max_auth_failures: u32,
    /// Consecutive bad commands before the connection is closed.
    pub max_bad_commands: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            plaintext_auth: true,
            stls: false,
            login_delay: None,
            apop_banner: None,
            hostname: "localhost".into(),
            max_auth_failures: 3,
            max_bad_commands: 20,
        }
    }
}

/// Credentials for the I/O layer to check.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    Password(String),
    Apop {
        banner: String,
        digest: String,
    },
    /// A SASL mechanism (SCRAM-SHA-256, CRAM-MD5) already checked the proof.
    Verified,
    /// A SASL exchange failed: answered exactly as a wrong password.
    Rejected(sasl::FailReason),
}

impl fmt::Debug for Credential {
    /// Never print a password, not even in a debug log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Password(_) => f.write_str("Password(..)"),
            Credential::Apop { .. } => f.write_str("Apop(..)"),
            Credential::Verified => f.write_str("Verified"),
            Credential::Rejected(reason) => write!(f, "Rejected({reason})"),
        }
    }
}

/// What the I/O layer must do after a command.
#[derive(Debug, PartialEq, Eq)]
pub enum Effect {
    /// Nothing: the reply is in the output buffer.
    None,
    /// Write the output buffer, then close the connection.
    Close,
    /// Check the credentials, open the maildrop, then call `logged_in` or `login_failed`.
    Authenticate {
        user: String,
        credential: Credential,
    },
    /// A SASL exchange needs `authcid`'s stored secret: take the exchange with
    /// `take_sasl_exchange`, call its `credentials` with `Users::sasl_credentials` (off the
    /// async threads: it may run PBKDF2), and hand it back with its step to `sasl_resume`.
    SaslLookup { authcid: String },
    /// Open message `index` (0-based), then call `send_started` and stream its body
    /// (`top_lines` body lines for TOP, all of it for RETR), or call `send_failed`.
    Send {
        index: usize,
        top_lines: Option<u64>,
    },
    /// STLS was accepted: write the output, run the TLS handshake, drop any plaintext the
    /// client sent after STLS (RFC 2595 §2.2), then call `tls_started`.
    StartTls,
    /// QUIT: apply the update for these 0-based indices, then call `update_finished`.
    Update { marked: Vec<usize>, mode: Mode },
}

/// Why a login did not succeed, as the I/O layer found out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoginFailure {
    /// Wrong user name or password: the same reply for both, so names cannot be probed.
    BadCredentials,
    /// Another session holds the maildrop (RFC 2449 [IN-USE]).
    InUse,
    /// This user has too many sessions from the client's address.
    TooManySessions,
    /// LOGIN-DELAY: the login came this many seconds too soon (RFC 2449 §8.1.2).
    TooSoon(u64),
    /// A server-side failure that may pass (RFC 3206 [SYS/TEMP]); the text is for the client.
    System(String),
    /// A server-side failure that needs an administrator (RFC 3206 [SYS/PERM]), such as a
    /// user whose Maildir location can't be worked out.
    Misconfigured(String),
}

/// What QUIT's update achieved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpdateReport {
    /// Messages removed (delete mode) or hidden from this login (keep mode).
    pub done: usize,
    /// Marked messages that could not be removed or hidden; they are still on the server.
    pub failed: usize,
}

/// Counters for the end-of-session log line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub retrieved: u64,
    pub retrieved_octets: u64,
    pub marked: usize,
    pub done: usize,
}

/// The messages of a logged-in session and what it marked.
#[derive(Debug)]
struct Maildrop {
    /// Shared with the store's listing cache: a login to a big mailbox copies nothing.
    messages: Arc<[Message]>,
    deleted: Vec<bool>,
    live_count: usize,
    live_octets: u64,
    mode: Mode,
}

#[derive(Debug)]
enum State {
    Authorization {
        user: Option<String>,
    },
    /// In a SASL exchange: the next line is the client's answer to a challenge.
    Sasl(Box<Exchange>),
    /// Waiting for the I/O layer to look up SASL credentials.
    SaslLookup(Box<Exchange>),
    /// Waiting for the I/O layer's verdict on credentials.
    Authenticating,
    Transaction(Maildrop),
    /// QUIT received; waiting for the update to be applied in this mode.
    Update(Mode),
    Closed,
}

/// One POP3 session, from greeting to close.
#[derive(Debug)]
pub struct Session {
    state: State,
    settings: Settings,
    auth_failures: u32,
    bad_commands: u32,
    stats: Stats,
}

/// Why a message number was refused, written as the `-ERR` reply.
enum BadMessage {
    NoSuch(MsgNum),
    Deleted(MsgNum),
}

impl fmt::Display for BadMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadMessage::NoSuch(n) => write!(f, "There is no message {n}"),
            BadMessage::Deleted(n) => write!(f, "Message {n} is marked as deleted"),
        }
    }
}

impl Maildrop {
    fn new(messages: Arc<[Message]>, mode: Mode) -> Self {
        let live_octets = messages.iter().map(|m| m.size).sum();
        Maildrop {
            deleted: vec![false; messages.len()],
            live_count: messages.len(),
            live_octets,
            messages,
            mode,
        }
    }

    /// Maps a client's 1-based number to an index of a message that is not marked.
    fn live(&self, n: MsgNum) -> Result<usize, BadMessage> {
        let index = usize::try_from(n)
            .ok()
            .and_then(|n| n.checked_sub(1))
            .filter(|&i| i < self.messages.len())
            .ok_or(BadMessage::NoSuch(n))?;
        if self.deleted[index] {
            Err(BadMessage::Deleted(n))
        } else {
            Ok(index)
        }
    }

    fn marked(&self) -> Vec<usize> {
        (0..self.messages.len())
            .filter(|&i| self.deleted[i])
            .collect()
    }
}

impl Session {
    /// Starts a session and appends the greeting.
    pub fn new(settings: Settings, out: &mut Vec<u8>) -> Self {
        match &settings.apop_banner {
            Some(banner) => response::ok(out, format_args!("POP3 server ready {banner}")),
            None => response::ok(out, "POP3 server ready"),
        }
        Session {
            state: State::Authorization { user: None },
            settings,
            auth_failures: 0,
            bad_commands: 0,
            stats: Stats::default(),
        }
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The mode of a logged-in session.
    pub fn mode(&self) -> Option<Mode> {
        match &self.state {
            State::Transaction(drop) => Some(drop.mode),
            State::Update(mode) => Some(*mode),
            _ => None,
        }
    }

    /// The size of message `index` (0-based) of a logged-in session; 0 otherwise.
    pub fn message_size(&self, index: usize) -> u64 {
        match &self.state {
            State::Transaction(drop) => drop.messages.get(index).map_or(0, |m| m.size),
            _ => 0,
        }
    }

    pub fn is_logged_in(&self) -> bool {
        matches!(self.state, State::Transaction(_) | State::Update(_))
    }

    /// Handles one command line (without its line end).
    pub fn command(&mut self, line: &[u8], out: &mut Vec<u8>) -> Effect {
        if let State::Sasl(_) = self.state {
            return self.sasl_answer(line, out);
        }
        let effect = match command::parse(line) {
            Ok(cmd) => self.dispatch(cmd, out),
            Err(e) => Err(e.to_string()),
        };
        match effect {
            Ok(effect) => {
                self.bad_commands = 0;
                effect
            }
            Err(text) => self.bad_command(&text, out),
        }
    }

    /// Reports a line over the limit; during a SASL exchange that ends the exchange.
    pub fn line_too_long(&mut self, out: &mut Vec<u8>) -> Effect {
        if let State::Sasl(_) = self.state {
            self.state = State::Authorization { user: None };
            return self.bad_command("Response too long; authentication cancelled", out);
        }
        self.bad_command("Command line too long (255 octets at most)", out)
    }

    /// The longest line the session takes next: a SASL answer may be longer than a command.
    pub fn line_limit(&self) -> usize {
        match self.state {
            State::Sasl(_) => lines::MAX_SASL_LINE,
            _ => lines::MAX_LINE,
        }
    }

    fn bad_command(&mut self, text: &str, out: &mut Vec<u8>) -> Effect {
        self.bad_commands += 1;
        if self.bad_commands >= self.settings.max_bad_commands {
            response::err(
                out,
                None,
                format_args!("{text}; too many bad commands, closing"),
            );
            self.state = State::Closed;
            return Effect::Close;
        }
        response::err(out, None, text);
        Effect::None
    }

    /// Runs a parsed command; `Err` is a command that makes no sense in this state.
    fn dispatch(&mut self, cmd: Command<'_>, out: &mut Vec<u8>) -> Result<Effect, String> {
        match &mut self.state {
            State::Authorization { .. } if matches!(cmd, Command::Auth(Some(_))) => {
                let Command::Auth(Some((name, initial))) = cmd else {
                    unreachable!("matched above")
                };
                self.sasl_start(name, initial, out)
            }
            State::Authorization { user } => {
                let effect = authorization(user, &self.settings, cmd, out)?;
                if let Effect::Authenticate { .. } = effect {
                    self.state = State::Authenticating;
                } else if effect == Effect::Close {
                    self.state = State::Closed;
                }
                Ok(effect)
            }
            State::Transaction(drop) => {
                let effect = transaction(drop, &self.settings, &mut self.stats, cmd, out)?;
                match effect {
                    Effect::Update { mode, .. } => self.state = State::Update(mode),
                    Effect::Close => self.state = State::Closed,
                    _ => {}
                }
                Ok(effect)
            }
            // The I/O layer runs one command at a time, so these are only reached on misuse.
            State::Sasl(_)
            | State::SaslLookup(_)
            | State::Authenticating
            | State::Update(_)
            | State::Closed => Err("Command not allowed now".into()),
        }
    }

    /// The exchange an `Effect::SaslLookup` asked credentials for.
    pub fn take_sasl_exchange(&mut self) -> Option<Box<Exchange>> {
        match std::mem::replace(&mut self.state, State::Authenticating) {
            State::SaslLookup(exchange) => Some(exchange),
            other => {
                self.state = other;
                None
            }
        }
    }

    /// `AUTH MECH [initial-response]` (RFC 5034).
    fn sasl_start(
        &mut self,
        name: &str,
        initial: Option<&str>,
        out: &mut Vec<u8>,
    ) -> Result<Effect, String> {
        let Ok(mechanism) = name.parse::<Mechanism>() else {
            return Err(format!("Unsupported authentication mechanism {name}"));
        };
        if !mechanisms(&self.settings).contains(&mechanism) {
            if !self.settings.plaintext_auth && mechanism != Mechanism::ScramSha256 {
                refuse_plaintext(&self.settings, out);
                return Ok(Effect::None);
            }
            return Err(format!(
                "Authentication mechanism {mechanism} is not enabled"
            ));
        }
        let initial = match initial.map(sasl::decode_response) {
            Some(None) => return Err("Initial response is not valid base64".into()),
            Some(Some(bytes)) => Some(bytes),
            None => None,
        };
        let Some(seed) = Seed::new(&self.settings.hostname) else {
            response::err(
                out,
                Some(Code::SysTemp),
                "No randomness available for authentication",
            );
            return Ok(Effect::None);
        };
        let (exchange, step) = Exchange::start(mechanism, initial.as_deref(), seed);
        Ok(self.sasl_resume(Box::new(exchange), step, out))
    }

    /// A line sent in answer to a `+ ` challenge: `*` cancels, anything else is base64.
    fn sasl_answer(&mut self, line: &[u8], out: &mut Vec<u8>) -> Effect {
        let State::Sasl(exchange) =
            std::mem::replace(&mut self.state, State::Authorization { user: None })
        else {
            return Effect::None;
        };
        if line == b"*" {
            response::err(out, None, "Authentication cancelled");
            return Effect::None;
        }
        match sasl::decode_response(line) {
            Some(answer) => {
                let mut exchange = exchange;
                let step = exchange.step(&answer);
                self.sasl_resume(exchange, step, out)
            }
            None => self.bad_command(
                "Response is not valid base64; authentication cancelled",
                out,
            ),
        }
    }

    /// Moves a SASL exchange on by one step: a challenge to send, a lookup for the I/O layer,
    /// or the outcome, which goes through `Effect::Authenticate` like USER/PASS.
    pub fn sasl_resume(
        &mut self,
        exchange: Box<Exchange>,
        step: Step,
        out: &mut Vec<u8>,
    ) -> Effect {
        let (user, credential) = match step {
            Step::Challenge(challenge) => {
                response::line(
                    out,
                    format_args!("+ {}", sasl::encode_challenge(&challenge)),
                );
                self.state = State::Sasl(exchange);
                return Effect::None;
            }
            Step::NeedCredentials { authcid } => {
                self.state = State::SaslLookup(exchange);
                return Effect::SaslLookup { authcid };
            }
            Step::Done(Outcome::Password { authcid, password }) => {
                (authcid, Credential::Password(password))
            }
            Step::Done(Outcome::Verified { authcid }) => (authcid, Credential::Verified),
            Step::Done(Outcome::Failed { authcid, reason }) => {
                (authcid.unwrap_or_default(), Credential::Rejected(reason))
            }
        };
        self.state = State::Authenticating;
        Effect::Authenticate { user, credential }
    }

    /// The TLS handshake after STLS succeeded: the session starts over in AUTHORIZATION, and
    /// plaintext logins are now safe (RFC 2595 §4).
    pub fn tls_started(&mut self) {
        self.settings.stls = false;
        self.settings.plaintext_auth = true;
        self.state = State::Authorization { user: None };
    }

    /// The credentials were good and the maildrop is open: enter TRANSACTION.
    pub fn logged_in(&mut self, messages: Arc<[Message]>, mode: Mode, out: &mut Vec<u8>) {
        let drop = Maildrop::new(messages, mode);
        response::ok(
            out,
            format_args!(
                "Logged in, {} messages ({} octets), {mode} mode",
                drop.live_count, drop.live_octets
            ),
        );
        self.state = State::Transaction(drop);
    }

    /// The login did not succeed; after too many failures the connection closes.
    pub fn login_failed(&mut self, failure: LoginFailure, out: &mut Vec<u8>) -> Effect {
        self.state = State::Authorization { user: None };
        match failure {
            LoginFailure::BadCredentials => {
                self.auth_failures += 1;
                if self.auth_failures >= self.settings.max_auth_failures {
                    response::err(
                        out,
                        Some(Code::Auth),
                        "Authentication failed; too many failures, closing",
                    );
                    self.state = State::Closed;
                    return Effect::Close;
                }
                response::err(out, Some(Code::Auth), "Authentication failed");
            }
            LoginFailure::InUse => response::err(
                out,
                Some(Code::InUse),
                "Mailbox is in use by another session; try again later",
            ),
            LoginFailure::TooManySessions => response::err(
                out,
                Some(Code::InUse),
                "Too many sessions for this user from your address",
            ),
            LoginFailure::TooSoon(seconds) => response::err(
                out,
                Some(Code::LoginDelay),
                format_args!("Logged in too recently; wait {seconds} more seconds"),
            ),
            LoginFailure::System(text) => response::err(out, Some(Code::SysTemp), text),
            LoginFailure::Misconfigured(text) => response::err(out, Some(Code::SysPerm), text),
        }
        Effect::None
    }

    /// The message for an `Effect::Send` is open: writes the status line before its body.
    pub fn send_started(&mut self, index: usize, top_lines: Option<u64>, out: &mut Vec<u8>) {
        let State::Transaction(drop) = &self.state else {
            return;
        };
        let size = drop.messages.get(index).map_or(0, |m| m.size);
        match top_lines {
            Some(_) => response::ok(out, "Top of message follows"),
            None => {
                self.stats.retrieved += 1;
                self.stats.retrieved_octets += size;
                response::ok(out, format_args!("{size} octets"));
            }
        }
    }

    /// The message for an `Effect::Send` could not be opened (gone, or unreadable).
    pub fn send_failed(&mut self, index: usize, vanished: bool, out: &mut Vec<u8>) {
        let n = index + 1;
        if vanished {
            response::err(
                out,
                None,
                format_args!("Message {n} was removed by another client"),
            );
        } else {
            response::err(
                out,
                Some(Code::SysTemp),
                format_args!("Cannot read message {n}"),
            );
        }
    }

    /// QUIT's update is done (or failed): the final reply; the connection then closes.
    pub fn update_finished(&mut self, result: Result<UpdateReport, String>, out: &mut Vec<u8>) {
        let mode = match self.state {
            State::Update(mode) => mode,
            _ => Mode::Delete,
        };
        self.state = State::Closed;
        match result {
            Ok(report) if report.failed == 0 => {
                self.stats.done = report.done;
                let verb = match mode {
                    Mode::Delete => "deleted",
                    Mode::Keep => "kept on the server and hidden from this device",
                };
                response::ok(
                    out,
                    format_args!("Logging out, {} messages {verb}", report.done),
                );
            }
            Ok(report) => {
                self.stats.done = report.done;
                response::err(
                    out,
                    Some(Code::SysTemp),
                    format_args!(
                        "{} of {} marked messages could not be removed; they are still on the server",
                        report.failed,
                        report.failed + report.done
                    ),
                );
            }
            Err(text) => response::err(
                out,
                Some(Code::SysTemp),
                format_args!("{text}; every message stays on the server"),
            ),
        }
    }
}

/// An AUTHORIZATION-state command; `Err` is a command not allowed before login.
fn authorization(
    user: &mut Option<String>,
    settings: &Settings,
    cmd: Command<'_>,
    out: &mut Vec<u8>,
) -> Result<Effect, String> {
    let login = |name: &str, credential| Effect::Authenticate {
        user: name.to_owned(),
        credential,
    };
    match cmd {
        Command::Capa => capa(settings, None, out),
        Command::Auth(_) => {
            // AUTH with no mechanism lists them, as Outlook asks (RFC 1734's form).
            response::ok(out, "Supported mechanisms follow");
            for mechanism in mechanisms(settings) {
                response::line(out, mechanism);
            }
            response::end(out);
        }
        Command::Quit => {
            response::ok(out, "Logging out");
            return Ok(Effect::Close);
        }
        Command::Stls if settings.stls => {
            *user = None;
            response::ok(out, "Begin TLS negotiation");
            return Ok(Effect::StartTls);
        }
        Command::Stls => return Err("STLS is not available on this connection".into()),
        Command::User(_) | Command::Pass(_) | Command::Apop { .. } if !settings.plaintext_auth => {
            refuse_plaintext(settings, out)
        }
        Command::User(name) => {
            *user = Some(name.to_owned());
            response::ok(out, "Send PASS");
        }
        Command::Pass(password) => {
            let name = user.take().ok_or("Send USER first")?;
            return Ok(login(&name, Credential::Password(password.to_owned())));
        }
        Command::Apop { user: name, digest } => {
            let banner = settings
                .apop_banner
                .clone()
                .ok_or("APOP is not enabled on this server")?;
            return Ok(login(
                name,
                Credential::Apop {
                    banner,
                    digest: digest.to_owned(),
                },
            ));
        }
        _ => return Err("Not allowed before login: log in with USER and PASS".into()),
    }
    Ok(Effect::None)
}

/// The SASL mechanisms this connection may use, strongest first: the ones that send the
/// password only where plaintext logins are allowed, CRAM-MD5 only with APOP.
fn mechanisms(settings: &Settings) -> Vec<Mechanism> {
    Mechanism::ALL
        .into_iter()
        .filter(|m| match m {
            Mechanism::ScramSha256 => true,
            Mechanism::Plain | Mechanism::Login => settings.plaintext_auth,
            Mechanism::CramMd5 => settings.plaintext_auth && settings.apop_banner.is_some(),
        })
        .collect()
}

/// The capabilities of this session (RFC 2449 §5), truthfully for its state.
fn capa(settings: &Settings, mode: Option<Mode>, out: &mut Vec<u8>) {
    response::ok(out, "Capability list follows");
    for cap in ["TOP", "UIDL", "RESP-CODES", "PIPELINING", "AUTH-RESP-CODE"] {
        response::line(out, cap);
    }
    if settings.stls && mode.is_none() {
        response::line(out, "STLS");
    }
    if settings.plaintext_auth && mode.is_none() {
        response::line(out, "USER");
    }
    let offered = mechanisms(settings);
    if mode.is_none() && !offered.is_empty() {
        let names: Vec<&str> = offered.iter().map(|m| m.name()).collect();
        response::line(out, format_args!("SASL {}", names.join(" ")));
    }
    // The server itself never removes a message the client did not DELE.
    response::line(out, "EXPIRE NEVER");
    if let Some(seconds) = settings.login_delay {
        response::line(out, format_args!("LOGIN-DELAY {seconds}"));
    }
    if let Some(mode) = mode {
        response::line(out, format_args!("X-POP3D-MODE {mode}"));
    }
    response::line(out, "IMPLEMENTATION pop3d");
    response::end(out);
}

fn refuse_plaintext(settings: &Settings, out: &mut Vec<u8>) {
    let advice = if settings.stls {
        "; use STLS first"
    } else {
        "; connect with TLS"
    };
    response::err(
        out,
        Some(Code::Auth),
        format_args!(
            "Plaintext authentication is not allowed on an unencrypted connection{advice}"
        ),
    );
}

/// A TRANSACTION-state command; `Err` is a command not allowed after login.
fn transaction(
    drop: &mut Maildrop,
    settings: &Settings,
    stats: &mut Stats,
    cmd: Command<'_>,
    out: &mut Vec<u8>,
) -> Result<Effect, String> {
    match message_command(drop, stats, cmd, out) {
        Ok(effect) => Ok(effect),
        Err(Refused::Message(bad)) => {
            response::err(out, None, bad);
            Ok(Effect::None)
        }
        Err(Refused::Command(Command::Capa)) => {
            capa(settings, Some(drop.mode), out);
            Ok(Effect::None)
        }
        Err(Refused::Command(_)) => Err("Already logged in".into()),
    }
}

/// Why `message_command` did not run a command.
enum Refused<'a> {
    Message(BadMessage),
    /// Not a maildrop command: left to the caller.
    Command(Command<'a>),
}

impl From<BadMessage> for Refused<'_> {
    fn from(bad: BadMessage) -> Self {
        Refused::Message(bad)
    }
}

/// The maildrop commands of TRANSACTION state.
fn message_command<'a>(
    drop: &mut Maildrop,
    stats: &mut Stats,
    cmd: Command<'a>,
    out: &mut Vec<u8>,
) -> Result<Effect, Refused<'a>> {
    match cmd {
        Command::Stat => response::ok(
            out,
            format_args!("{} {}", drop.live_count, drop.live_octets),
        ),
        Command::List(None) => {
            response::ok(
                out,
                format_args!("{} messages ({} octets)", drop.live_count, drop.live_octets),
            );
            for (i, m) in drop
                .messages
                .iter()
                .enumerate()
                .filter(|(i, _)| !drop.deleted[*i])
            {
                response::list_line(out, i + 1, m.size);
            }
            response::end(out);
        }
        Command::List(Some(n)) => {
            let i = drop.live(n)?;
            response::ok(out, format_args!("{n} {}", drop.messages[i].size));
        }
        Command::Uidl(None) => {
            response::ok(out, "Unique-ID listing follows");
            for (i, m) in drop
                .messages
                .iter()
                .enumerate()
                .filter(|(i, _)| !drop.deleted[*i])
            {
                response::uidl_line(out, i + 1, &m.uid);
            }
            response::end(out);
        }
        Command::Uidl(Some(n)) => {
            let i = drop.live(n)?;
            response::ok(out, format_args!("{n} {}", drop.messages[i].uid));
        }
        Command::Retr(n) => {
            return Ok(Effect::Send {
                index: drop.live(n)?,
                top_lines: None,
            });
        }
        Command::Top { msg, lines } => {
            return Ok(Effect::Send {
                index: drop.live(msg)?,
                top_lines: Some(lines),
            });
        }
        Command::Dele(n) => {
            let i = drop.live(n)?;
            drop.deleted[i] = true;
            drop.live_count -= 1;
            drop.live_octets -= drop.messages[i].size;
            stats.marked += 1;
            response::ok(out, format_args!("Message {n} marked as deleted"));
        }
        Command::Rset => {
            drop.deleted.fill(false);
            drop.live_count = drop.messages.len();
            drop.live_octets = drop.messages.iter().map(|m| m.size).sum();
            stats.marked = 0;
            response::ok(
                out,
                format_args!("{} messages ({} octets)", drop.live_count, drop.live_octets),
            );
        }
        Command::Noop => response::ok_bare(out),
        Command::Quit => {
            let marked = drop.marked();
            if marked.is_empty() {
                response::ok(out, "Logging out, no messages marked");
                return Ok(Effect::Close);
            }
            return Ok(Effect::Update {
                marked,
                mode: drop.mode,
            });
        }
        other => return Err(Refused::Command(other)),
    }
    Ok(Effect::None)
}

#[cfg(test)]
mod tests;
