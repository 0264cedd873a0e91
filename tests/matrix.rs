//! The full client matrix: for each real client — fetchmail, mpop, getmail6, curl, Python's
//! `poplib`, `openssl s_client` — every transport it supports (plain, STLS, implicit TLS) ×
//! both modes (delete, keep), each cell on a daemon of its own over a corpus of awkward
//! messages made here. Run with `cargo test --test matrix -- --nocapture` to see the table.
//!
//! Each cell is three sessions against a model of what the server must do:
//! - delete mode: (1) download everything, delete nothing; a message is delivered; (2) the
//!   same client state again, deleting: only the new message is downloaded (the client
//!   recognised the rest by UIDL), and the files removed are exactly those it DELE'd;
//!   (3) a fresh client state: exactly what is left is offered, byte for byte.
//! - keep mode: (1) download everything and delete; nothing leaves the disk; a message is
//!   delivered; (2) the same login with a fresh client state is offered only what it did not
//!   delete; (3) another device, `alice+phone`, still gets everything.
//!
//! Every session checks: the UIDL listing (order, unique names, so stable across sessions and
//! devices), LIST sizes where the client shows them, every message byte-identical to the
//! Maildir file in RETR form (CRLF, last line completed) modulo the client's own line ends
//! and exactly the header fields it documents adding, the octets received against LIST, what
//! it DELE'd, and the Maildir afterwards.
//!
//! The clients must be installed (`apt-get install -y fetchmail mpop getmail6 curl python3
//! openssl`); a missing one fails its test, saying what to install.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    Server, TestCert, crlf, deliver, deliver_to_cur, files_in, first_difference, lf,
    messages_on_disk, pseudo_random_bytes, read_message, require_program, run_with_limit,
    split_leading_fields, text_of,
};

/// Longest any one client process may run before it is killed and its cell fails.
const LIMIT: Duration = Duration::from_secs(60);

const USERS: &str = "alice:{PLAIN}secret::::::\n";
const PASSWORD: &str = "secret";

// ---------------------------------------------------------------------------------------
// The matrix
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Transport {
    Plain,
    Stls,
    Implicit,
}

impl Transport {
    const ALL: [Transport; 3] = [Transport::Plain, Transport::Stls, Transport::Implicit];

    fn name(self) -> &'static str {
        match self {
            Transport::Plain => "plain",
            Transport::Stls => "STLS",
            Transport::Implicit => "implicit TLS",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Delete,
    Keep,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Delete => "delete",
            Mode::Keep => "keep",
        }
    }
}

/// How a client stores a message it downloaded.
#[derive(Clone, Copy, PartialEq, Eq)]
enum LineEnds {
    /// As RETR sends it (de-stuffed): curl, poplib, s_client.
    Crlf,
    /// With LF line ends: what the Maildir and MDA deliveries of fetchmail, mpop, getmail hold.
    Lf,
}

impl LineEnds {
    fn form(self, wire: &[u8]) -> Vec<u8> {
        match self {
            LineEnds::Crlf => wire.to_vec(),
            LineEnds::Lf => lf(wire),
        }
    }

    /// The octets RETR sent for a message the client stored as `stored`.
    fn wire_len(self, stored: &[u8]) -> u64 {
        let extra = match self {
            LineEnds::Crlf => 0,
            LineEnds::Lf => stored.iter().filter(|&&b| b == b'\n').count(),
        };
        (stored.len() + extra) as u64
    }
}

/// What a session DELEs.
#[derive(Clone, Debug)]
enum Dele {
    /// Nothing: the client leaves mail on the server.
    No,
    /// What the client's own delete setting removes: at least every message it downloaded.
    Retrieved,
    /// Exactly these unique-ids (clients we script).
    Chosen(Vec<String>),
}

/// One session a cell asks of a client.
struct Ask<'a> {
    login: &'a str,
    /// Sessions with the same state share the client's memory of what it downloaded (its
    /// UIDL list); a new state is a fresh client.
    state: &'a str,
    /// The unique-ids downloaded in earlier sessions of this state: the clients we script
    /// skip them, as stateful clients skip what their UIDL list has.
    known: &'a BTreeSet<String>,
    dele: &'a Dele,
}

/// What a session saw, as the client reports it.
#[derive(Default)]
struct Outcome {
    /// The unique-ids offered, in order, with the LIST size where the client shows it.
    listing: Vec<(String, Option<u64>)>,
    /// STAT, where the client shows it.
    stat: Option<(usize, u64)>,
    fetched: Vec<Fetched>,
    /// Unique-ids DELE'd, in order.
    deleted: Vec<String>,
    /// The client's own account of the session (its trace, log or our parse of it).
    log: String,
}

/// One downloaded message as the client stored it, the header fields it adds removed.
struct Fetched {
    /// Its unique-id, when the client tells which message it is.
    uid: Option<String>,
    bytes: Vec<u8>,
    /// The size the RETR reply announced, where the client shows it.
    octets: Option<u64>,
}

/// Where a session runs.
struct Ctx<'a> {
    server: &'a Server,
    cert: &'a TestCert,
    transport: Transport,
    /// Scratch space of this cell (client state, inboxes, configuration files).
    dir: PathBuf,
    /// Sessions run so far in this cell, to name their folders.
    serial: std::cell::Cell<usize>,
}

impl Ctx<'_> {
    /// A new folder for one session's output.
    fn session_dir(&self, what: &str) -> PathBuf {
        let n = self.serial.get() + 1;
        self.serial.set(n);
        let dir = self.dir.join(format!("{what}-{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// The folder holding a client state, created on first use.
    fn state_dir(&self, client: &str, state: &str) -> PathBuf {
        let dir = self.dir.join(format!("{client}-state-{state}"));
        std::fs::create_dir_all(&dir).unwrap();
        set_mode(&dir, 0o700);
        dir
    }

    /// The port of the listener this transport uses.
    fn port(&self) -> u16 {
        match self.transport {
            Transport::Implicit => self.server.tls_addr.unwrap().port(),
            _ => self.server.addr.port(),
        }
    }
}

trait PopClient {
    fn name(&self) -> &'static str;
    /// Fails (naming the package) unless the client is installed.
    fn require(&self);
    /// Err(why) for a transport the client cannot use.
    fn supports(&self, transport: Transport) -> Result<(), &'static str>;
    fn line_ends(&self) -> LineEnds;
    /// Whether we script it, command by command: it can DELE a chosen set, and it skips the
    /// `known` unique-ids. Otherwise it has its own UIDL memory and delete policy.
    fn scripted(&self) -> bool;
    /// Runs one session; panics (failing the cell) if the client fails.
    fn session(&self, ctx: &Ctx, ask: &Ask) -> Outcome;
}

/// One row of the table.
struct Row {
    client: &'static str,
    transport: Transport,
    mode: Mode,
    /// The cell's report, or the panic that ended it.
    result: Result<Report, String>,
    /// Some(why) when the client cannot use this transport.
    na: Option<&'static str>,
    secs: f64,
}

#[derive(Default)]
struct Report {
    sessions: usize,
    messages: usize,
    octets: u64,
    failures: Vec<String>,
}

impl Row {
    fn ok(&self) -> bool {
        self.na.is_some() || matches!(&self.result, Ok(r) if r.failures.is_empty())
    }

    fn line(&self) -> String {
        let (result, sessions, messages, octets) = match (&self.na, &self.result) {
            (Some(why), _) => (
                format!("n/a: {why}"),
                String::new(),
                String::new(),
                String::new(),
            ),
            (None, Ok(r)) => (
                if r.failures.is_empty() {
                    "OK".to_owned()
                } else {
                    format!("FAILED: {}", r.failures.join(" | "))
                },
                r.sessions.to_string(),
                r.messages.to_string(),
                r.octets.to_string(),
            ),
            (None, Err(panic)) => (
                format!("FAILED: {panic}"),
                String::new(),
                String::new(),
                String::new(),
            ),
        };
        // One line per row: the whole story is on standard error.
        let mut result = result.replace('\n', " ");
        if result.len() > 400 {
            let mut end = 400;
            while !result.is_char_boundary(end) {
                end -= 1;
            }
            result.truncate(end);
            result.push_str(" ...");
        }
        let secs = if self.na.is_some() {
            String::new()
        } else {
            format!("{:.1} s", self.secs)
        };
        format!(
            "| {:<10} | {:<12} | {:<6} | {:>8} | {:>8} | {:>10} | {:>6} | {}",
            self.client,
            self.transport.name(),
            self.mode.name(),
            sessions,
            messages,
            octets,
            secs,
            result
        )
    }
}

const HEADER: &str =
    "| client     | transport    | mode   | sessions | messages |     octets |   time | result";

/// Runs the whole matrix for one client, prints a row per cell as it finishes and the table
/// at the end, and fails if any cell did.
fn run_matrix(client: &dyn PopClient) {
    client.require();
    let started = Instant::now();
    let cert = TestCert::new();
    let mut rows = Vec::new();
    println!("{HEADER}");
    for transport in Transport::ALL {
        for mode in [Mode::Delete, Mode::Keep] {
            let cell_started = Instant::now();
            let (result, na) = match client.supports(transport) {
                Err(why) => (Ok(Report::default()), Some(why)),
                Ok(()) => {
                    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        run_cell(client, &cert, transport, mode)
                    }))
                    .map_err(|panic| {
                        panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_else(|| "panicked".into())
                    });
                    (result, None)
                }
            };
            let row = Row {
                client: client.name(),
                transport,
                mode,
                result,
                na,
                secs: cell_started.elapsed().as_secs_f64(),
            };
            match &row.result {
                Err(panic) if row.na.is_none() => {
                    eprintln!(
                        "{} {} {}: {panic}",
                        client.name(),
                        transport.name(),
                        mode.name()
                    )
                }
                _ => {}
            }
            println!("{}", row.line());
            rows.push(row);
        }
    }
    let mut table = format!(
        "\n{} matrix ({:.1} s):\n{HEADER}\n",
        client.name(),
        started.elapsed().as_secs_f64()
    );
    for row in &rows {
        table.push_str(&row.line());
        table.push('\n');
    }
    println!("{table}");
    assert!(
        rows.iter().all(Row::ok),
        "{} matrix failed:{table}",
        client.name()
    );
}

// ---------------------------------------------------------------------------------------
// The corpus
// ---------------------------------------------------------------------------------------

/// One message in the Maildir.
#[derive(Clone)]
struct Msg {
    label: &'static str,
    unique: String,
    original: Vec<u8>,
}

impl Msg {
    /// What RETR sends for it, de-stuffed: CRLF line ends, the last line completed.
    fn wire(&self) -> Vec<u8> {
        crlf(&self.original)
    }
}

/// The attachment of the big message: 2 MiB, about 2.8 MB in base64.
const ATTACHMENT_LEN: usize = 2 * 1024 * 1024;

fn multipart() -> Vec<u8> {
    common::multipart_with_attachment(&pseudo_random_bytes(ATTACHMENT_LEN, 0x5eed))
}

/// A line of `len` letters, starting with `first`.
fn long_line(first: u8, len: usize) -> String {
    std::iter::once(first as char)
        .chain((1..len).map(|i| char::from(b'a' + (i % 26) as u8)))
        .collect()
}

/// The corpus in delivery order: (label, bytes, Maildir flags if it sits in cur/).
///
/// Two limits are the clients' own, not the server's, so the corpus stays inside them:
/// - header lines of at most 78 octets, and no message without a header/body separator:
///   getmail parses each message with Python's `email` package and writes it out again with
///   its generator, which refolds longer header lines and adds the blank line (fetchmail adds
///   that blank line too, warning "not the expected length"); tests/clients.rs has the
///   headers-only message for the clients that pass it through;
/// - lines under 8192 octets: fetchmail reads lines into a buffer of that size and garbles
///   longer ones (it wrote `\0$` and a line break into one of 10,001 octets). A line of 5000
///   octets is still well past poplib's own limit of 2048 (`_MAXLINE`, which the poplib
///   script raises; getmail raises it itself).
fn corpus() -> Vec<(&'static str, Vec<u8>, Option<&'static str>)> {
    vec![
        (
            "plain",
            b"From: Alice <alice@example.org>\n\
To: Bob <bob@example.org>\n\
Subject: plain ASCII\n\
Date: Tue, 14 Nov 2023 22:13:20 +0000\n\
Message-ID: <plain@example.org>\n\
\n\
Hello Bob,\n\
\n\
plain ASCII text with LF line ends.\n\
From the start of a line, as mbox would mangle it.\n\
-- \n\
Alice\n"
                .to_vec(),
            None,
        ),
        (
            "rfc2047-utf8",
            "From: =?UTF-8?Q?J=C3=BCrgen_M=C3=BCller?= <juergen@example.org>\n\
To: =?ISO-8859-1?Q?Andr=E9?= <andre@example.org>\n\
Subject: =?UTF-8?B?R3LDvMOfZSBhdXMgS8O2bG4g4pyT?=\n\
MIME-Version: 1.0\n\
Content-Type: text/plain; charset=utf-8\n\
Content-Transfer-Encoding: 8bit\n\
\n\
Grüße aus Köln — ½ € ✓ 日本語 🙂\n\
.ünïcödé after a dot\n\
Ünïcödé\n"
                .as_bytes()
                .to_vec(),
            Some("S"),
        ),
        ("multipart", multipart(), None),
        (
            "dots",
            b"Subject: dots\n\
\n\
.leading dot\n\
.\n\
..\n\
...\n\
. space after a dot\n\
..double leading dot\n\
a line with a dot . inside\n\
\n\
.\n"
            .to_vec(),
            None,
        ),
        (
            "crlf",
            b"Subject: CRLF line ends\r\n\
X-Test: crlf\r\n\
\r\n\
line one\r\n\
.\r\n\
..two dots\r\n\
\r\n\
line four\r\n"
                .to_vec(),
            Some("FR"),
        ),
        (
            "no-final-newline",
            b"Subject: no final newline\n\
\n\
first line\n\
last line without newline"
                .to_vec(),
            None,
        ),
        (
            "crlf-no-final-newline",
            b"Subject: CRLF, no final newline\r\n\r\nfirst line\r\nlast line".to_vec(),
            None,
        ),
        (
            "dot-last-no-newline",
            b"Subject: the last line is a lone dot without newline\n\nabove\n.".to_vec(),
            None,
        ),
        (
            "long-lines",
            format!(
                "Subject: lines over 1000 octets\n\n{}\n{}\n{}\nshort\n",
                long_line(b'a', 1001),
                long_line(b'.', 2100),
                long_line(b'b', 5000),
            )
            .into_bytes(),
            None,
        ),
        (
            "empty-body",
            b"From: Alice <alice@example.org>\nSubject: empty body\n\n".to_vec(),
            None,
        ),
    ]
}

/// The message delivered in the middle of each cell.
const LATE: &[u8] = b"Subject: delivered during the test\n\n.a dot\nnew mail\n";

/// Puts the corpus in a Maildir; the messages in listing order.
fn populate(maildir: &Path) -> Vec<Msg> {
    corpus()
        .into_iter()
        .enumerate()
        .map(|(i, (label, original, flags))| {
            let time = 1_700_000_000 + i as u64;
            let unique = match flags {
                Some(flags) => deliver_to_cur(maildir, time, flags, &original),
                None => deliver(maildir, time, &original),
            };
            Msg {
                label,
                unique,
                original,
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// The model the sessions are checked against
// ---------------------------------------------------------------------------------------

struct Model {
    mode: Mode,
    maildir: PathBuf,
    /// On disk, in listing order.
    present: Vec<Msg>,
    /// Keep-mode logins: the unique-ids each has hidden.
    hidden: BTreeMap<String, BTreeSet<String>>,
    /// Client states: the unique-ids downloaded in them.
    known: BTreeMap<String, BTreeSet<String>>,
}

impl Model {
    /// `alice+phone` is a device: keep mode whatever the server's mode.
    fn mode_of(&self, login: &str) -> Mode {
        if login.contains('+') {
            Mode::Keep
        } else {
            self.mode
        }
    }

    fn listing(&self, login: &str) -> Vec<&Msg> {
        let hidden = self.hidden.get(login);
        self.present
            .iter()
            .filter(|m| hidden.is_none_or(|h| !h.contains(&m.unique)))
            .collect()
    }

    fn uid(&self, label: &str) -> String {
        self.present
            .iter()
            .find(|m| m.label == label)
            .unwrap_or_else(|| panic!("no {label} in the model"))
            .unique
            .clone()
    }

    fn deliver_late(&mut self) {
        let unique = deliver(&self.maildir, 1_700_001_000, LATE);
        self.present.push(Msg {
            label: "late",
            unique,
            original: LATE.to_vec(),
        });
    }

    /// What the server must do with a session's DELEs at QUIT.
    fn apply(&mut self, login: &str, state: &str, fetched: &[String], deleted: &[String]) {
        self.known
            .entry(state.to_owned())
            .or_default()
            .extend(fetched.iter().cloned());
        match self.mode_of(login) {
            Mode::Delete => self.present.retain(|m| !deleted.contains(&m.unique)),
            Mode::Keep => self
                .hidden
                .entry(login.to_owned())
                .or_default()
                .extend(deleted.iter().cloned()),
        }
    }

    /// The Maildir holds exactly the messages present, each file unchanged.
    fn check_disk(&self, errors: &mut Vec<String>) {
        let mut want: Vec<String> = self.present.iter().map(|m| m.unique.clone()).collect();
        want.sort();
        let on_disk = messages_on_disk(&self.maildir);
        if on_disk != want {
            let label = |u: &String| {
                self.present
                    .iter()
                    .find(|m| &m.unique == u)
                    .map_or(u.clone(), |m| m.label.to_owned())
            };
            let gone: Vec<String> = want
                .iter()
                .filter(|u| !on_disk.contains(u))
                .map(label)
                .collect();
            let extra: Vec<&String> = on_disk.iter().filter(|u| !want.contains(u)).collect();
            errors.push(format!(
                "{} mode: Maildir wrong after QUIT: removed {gone:?}, unexpected {extra:?}",
                self.mode.name()
            ));
            return;
        }
        for m in &self.present {
            if read_message(&self.maildir, &m.unique).as_deref() != Some(&m.original[..]) {
                errors.push(format!("the file of {} changed on disk", m.label));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// One cell
// ---------------------------------------------------------------------------------------

fn run_cell(client: &dyn PopClient, cert: &TestCert, transport: Transport, mode: Mode) -> Report {
    let server = Server::start(
        USERS,
        &[
            "--mode",
            mode.name(),
            "--tls-cert",
            cert.cert(),
            "--tls-key",
            cert.key(),
            "--listen-tls",
            "127.0.0.1:0",
        ],
    );
    let maildir = server.maildir("alice");
    let present = populate(&maildir);
    // The scratch folder must be open to getmail's delivery user when run as root.
    let scratch = tempfile::tempdir().unwrap();
    set_mode(scratch.path(), 0o755);
    let ctx = Ctx {
        server: &server,
        cert,
        transport,
        dir: scratch.path().to_owned(),
        serial: std::cell::Cell::new(0),
    };
    let mut model = Model {
        mode,
        maildir,
        present,
        hidden: BTreeMap::new(),
        known: BTreeMap::new(),
    };
    let mut report = Report::default();
    let scripted = client.scripted();
    let chosen = |model: &Model, labels: &[&str]| {
        Dele::Chosen(labels.iter().map(|l| model.uid(l)).collect())
    };
    match mode {
        Mode::Delete => {
            session(
                &ctx,
                client,
                &mut model,
                &mut report,
                "alice",
                "a",
                Dele::No,
            );
            model.deliver_late();
            let dele = if scripted {
                chosen(&model, &["late", "dots", "multipart"])
            } else {
                Dele::Retrieved
            };
            session(&ctx, client, &mut model, &mut report, "alice", "a", dele);
            session(
                &ctx,
                client,
                &mut model,
                &mut report,
                "alice",
                "b",
                Dele::No,
            );
        }
        Mode::Keep => {
            let dele = if scripted {
                chosen(&model, &["dots", "rfc2047-utf8", "multipart", "crlf"])
            } else {
                Dele::Retrieved
            };
            session(&ctx, client, &mut model, &mut report, "alice", "a", dele);
            model.deliver_late();
            let dele = if scripted { Dele::No } else { Dele::Retrieved };
            session(&ctx, client, &mut model, &mut report, "alice", "b", dele);
            let phone = "alice+phone";
            session(
                &ctx,
                client,
                &mut model,
                &mut report,
                phone,
                "c",
                Dele::Retrieved,
            );
        }
    }
    report
}

/// Runs one session and checks it against the model, then applies it to the model.
fn session(
    ctx: &Ctx,
    client: &dyn PopClient,
    model: &mut Model,
    report: &mut Report,
    login: &str,
    state: &str,
    dele: Dele,
) {
    let n = report.sessions + 1;
    let asked = match &dele {
        Dele::No => "keep on server".to_owned(),
        Dele::Retrieved => "delete what it downloads".to_owned(),
        Dele::Chosen(uids) => format!("DELE {:?}", labels_of_strings(uids, model)),
    };
    let what = format!("session {n} ({login}, client state {state}, {asked})");
    let known = model.known.get(state).cloned().unwrap_or_default();
    let offered: Vec<Msg> = model.listing(login).into_iter().cloned().collect();
    let by_uid: BTreeMap<&str, &Msg> = offered.iter().map(|m| (m.unique.as_str(), m)).collect();
    let to_fetch: Vec<&Msg> = offered
        .iter()
        .filter(|m| !known.contains(&m.unique))
        .collect();
    let ask = Ask {
        login,
        state,
        known: &known,
        dele: &dele,
    };
    let outcome = client.session(ctx, &ask);
    report.sessions += 1;
    let mut errors = Vec::new();

    // The listing: the same unique-ids in the same order as the Maildir, sizes as sent.
    let listed: Vec<&str> = outcome.listing.iter().map(|(u, _)| u.as_str()).collect();
    let want: Vec<&str> = offered.iter().map(|m| m.unique.as_str()).collect();
    if listed != want {
        errors.push(format!(
            "UIDL listing {:?}, expected {:?}",
            labels_of(&listed, model),
            labels_of(&want, model)
        ));
    }
    for (uid, size) in &outcome.listing {
        if let (Some(size), Some(m)) = (size, by_uid.get(uid.as_str()))
            && *size != m.wire().len() as u64
        {
            errors.push(format!(
                "LIST size of {} is {size}, RETR form is {}",
                m.label,
                m.wire().len()
            ));
        }
    }
    if let Some((count, total)) = outcome.stat {
        let want_total: u64 = offered.iter().map(|m| m.wire().len() as u64).sum();
        if (count, total) != (offered.len(), want_total) {
            errors.push(format!(
                "STAT {count} {total}, expected {} {want_total}",
                offered.len()
            ));
        }
    }

    // The downloads: the right messages, byte for byte, as many octets as LIST said.
    let line_ends = client.line_ends();
    let mut unmatched: Vec<&Msg> = to_fetch.clone();
    let mut fetched_uids = Vec::new();
    for f in &outcome.fetched {
        let m = match &f.uid {
            Some(uid) => match unmatched.iter().position(|m| &m.unique == uid) {
                Some(i) => unmatched.remove(i),
                None => {
                    errors.push(format!(
                        "downloaded {} which it should not have (or twice)",
                        labels_of(&[uid.as_str()], model)[0]
                    ));
                    continue;
                }
            },
            None => match unmatched
                .iter()
                .position(|m| line_ends.form(&m.wire()) == f.bytes)
            {
                Some(i) => unmatched.remove(i),
                None => {
                    // Report it against the expected message it shares the longest start with.
                    let closest = to_fetch.iter().max_by_key(|m| {
                        let want = line_ends.form(&m.wire());
                        want.iter()
                            .zip(&f.bytes)
                            .take_while(|(a, b)| a == b)
                            .count()
                    });
                    errors.push(match closest {
                        Some(m) => format!(
                            "a download matches no expected message; against {}: {}",
                            m.label,
                            first_difference(&f.bytes, &line_ends.form(&m.wire())).unwrap()
                        ),
                        None => "downloaded a message when none was expected".into(),
                    });
                    continue;
                }
            },
        };
        fetched_uids.push(m.unique.clone());
        let wire = m.wire();
        if let Some(diff) = first_difference(&f.bytes, &line_ends.form(&wire)) {
            errors.push(format!("{} differs: {diff}", m.label));
        }
        let received = line_ends.wire_len(&f.bytes);
        let listed_size = outcome
            .listing
            .iter()
            .find(|(u, _)| u == &m.unique)
            .and_then(|(_, s)| *s)
            .unwrap_or(wire.len() as u64);
        if received != listed_size {
            errors.push(format!(
                "{}: LIST said {listed_size} octets, received {received}",
                m.label
            ));
        }
        if let Some(octets) = f.octets
            && octets != listed_size
        {
            errors.push(format!(
                "{}: RETR said {octets} octets, LIST {listed_size}",
                m.label
            ));
        }
        report.messages += 1;
        report.octets += received;
    }
    if !unmatched.is_empty() {
        let missing: Vec<&str> = unmatched.iter().map(|m| m.label).collect();
        errors.push(format!("not downloaded: {missing:?}"));
    }

    // The DELEs: what was asked, among what was offered.
    let mut deleted = outcome.deleted.clone();
    deleted.sort();
    let before = deleted.len();
    deleted.dedup();
    if deleted.len() != before {
        errors.push("DELE'd a message twice".into());
    }
    if deleted.iter().any(|u| !by_uid.contains_key(u.as_str())) {
        errors.push(format!(
            "DELE'd something not offered: {:?}",
            outcome.deleted
        ));
    }
    match &dele {
        Dele::No if !deleted.is_empty() => {
            errors.push(format!(
                "DELE'd {:?} though told to keep",
                labels_of_strings(&deleted, model)
            ));
        }
        Dele::Retrieved => {
            let kept: Vec<&String> = fetched_uids
                .iter()
                .filter(|u| !deleted.contains(u))
                .collect();
            if !kept.is_empty() {
                errors.push(format!("downloaded but not DELE'd: {kept:?}"));
            }
        }
        Dele::Chosen(chosen) => {
            let mut chosen = chosen.clone();
            chosen.sort();
            if chosen != deleted {
                errors.push(format!(
                    "DELE'd {:?}, asked {:?}",
                    labels_of_strings(&deleted, model),
                    labels_of_strings(&chosen, model)
                ));
            }
        }
        Dele::No => {}
    }

    // What QUIT did to the Maildir: delete mode removes exactly the DELE'd files; keep mode
    // removes nothing (and hides them from this login only).
    model.apply(login, state, &fetched_uids, &deleted);
    model.check_disk(&mut errors);

    if !errors.is_empty() {
        eprintln!(
            "{} {} {:?} {what}:\n  {}\n--- client's account ---\n{}\n--- server log ---\n{}",
            client.name(),
            ctx.transport.name(),
            model.mode,
            errors.join("\n  "),
            tail(&outcome.log, 6000),
            tail(&ctx.server.log(), 3000)
        );
        report
            .failures
            .push(format!("{what}: {}", errors.join("; ")));
    }
}

fn labels_of(uids: &[&str], model: &Model) -> Vec<String> {
    uids.iter()
        .map(|u| {
            model
                .present
                .iter()
                .find(|m| m.unique == *u)
                .map_or_else(|| format!("?{u}"), |m| m.label.to_owned())
        })
        .collect()
}

fn labels_of_strings(uids: &[String], model: &Model) -> Vec<String> {
    let uids: Vec<&str> = uids.iter().map(String::as_str).collect();
    labels_of(&uids, model)
}

fn tail(text: &str, max: usize) -> &str {
    let mut from = text.len().saturating_sub(max);
    while !text.is_char_boundary(from) {
        from += 1;
    }
    &text[from..]
}

// ---------------------------------------------------------------------------------------
// Helpers for the drivers
// ---------------------------------------------------------------------------------------

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A Maildir's three folders under `dir`.
fn make_maildir(dir: &Path) {
    for sub in ["new", "cur", "tmp"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
}

/// The name of the user running the tests (fetchmail's local user).
fn local_user() -> String {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map_or_else(|| "root".to_owned(), |u| u.name)
}

/// `n size` or `n uid` lines, as LIST and UIDL send them.
fn numbered(lines: &str) -> Vec<(usize, String)> {
    lines
        .lines()
        .filter_map(|l| {
            let (n, v) = l.trim_end_matches('\r').split_once(' ')?;
            Some((n.parse().ok()?, v.to_owned()))
        })
        .collect()
}

/// Joins UIDL and LIST output into the listing.
fn join_listing(uidl: &[(usize, String)], list: &[(usize, String)]) -> Vec<(String, Option<u64>)> {
    uidl.iter()
        .map(|(n, uid)| {
            let size = list
                .iter()
                .find(|(m, _)| m == n)
                .and_then(|(_, s)| s.parse().ok());
            (uid.clone(), size)
        })
        .collect()
}

/// The number of a unique-id in a UIDL listing.
fn number_of(uidl: &[(usize, String)], uid: &str) -> usize {
    uidl.iter()
        .find(|(_, u)| u == uid)
        .unwrap_or_else(|| panic!("{uid} is not in the UIDL listing {uidl:?}"))
        .0
}

/// What the scripted clients fetch and DELE (by number) given the session's UIDL listing.
fn plan(uidl: &[(usize, String)], ask: &Ask) -> (Vec<usize>, Vec<usize>) {
    let fetch: Vec<usize> = uidl
        .iter()
        .filter(|(_, u)| !ask.known.contains(u))
        .map(|(n, _)| *n)
        .collect();
    let dele = match ask.dele {
        Dele::No => Vec::new(),
        Dele::Retrieved => fetch.clone(),
        Dele::Chosen(uids) => uids.iter().map(|u| number_of(uidl, u)).collect(),
    };
    (fetch, dele)
}

fn uid_at(uidl: &[(usize, String)], n: usize) -> String {
    uidl.iter()
        .find(|(m, _)| *m == n)
        .unwrap_or_else(|| panic!("message {n} is not in the UIDL listing"))
        .1
        .clone()
}

// ---------------------------------------------------------------------------------------
// Python poplib
// ---------------------------------------------------------------------------------------

/// One poplib session. Prints `key value...` lines; RETR bodies go to OUTDIR/n.eml with CRLF
/// line ends (poplib hands back de-stuffed lines without them).
const POPLIB_SCRIPT: &str = r#"
import os, poplib, ssl, sys

transport, host, port, cafile, login, password, outdir, known, dele = sys.argv[1:10]
known = set(x for x in known.split(",") if x)
# Lines longer than poplib's own 2048 octets are in the corpus.
poplib._MAXLINE = 1 << 20
ctx = ssl.create_default_context(cafile=cafile)

def text(b):
    return b.decode("utf-8", "backslashreplace")

if transport == "implicit":
    p = poplib.POP3_SSL(host, int(port), context=ctx, timeout=50)
else:
    p = poplib.POP3(host, int(port), timeout=50)
out = []
if transport == "stls":
    out.append("stls " + text(p.stls(ctx)))
for cap in sorted(p.capa()):
    out.append("capa " + cap)
p.user(login)
out.append("pass " + text(p.pass_(password)))
count, size = p.stat()
out.append("stat %d %d" % (count, size))
resp, listing, _ = p.list()
for line in listing:
    out.append("list " + text(line))
resp, uids, _ = p.uidl()
numbers = {}
for line in uids:
    n, uid = text(line).split()
    numbers[uid] = int(n)
    out.append("uidl %s %s" % (n, uid))
fetched = []
for uid, n in sorted(numbers.items(), key=lambda x: x[1]):
    if uid in known:
        continue
    resp, lines, octets = p.retr(n)
    with open(os.path.join(outdir, "%d.eml" % n), "wb") as f:
        f.write(b"".join(l + b"\r\n" for l in lines))
    out.append("retr %d %d %s" % (n, octets, text(resp)))
    fetched.append(n)
if dele == "retrieved":
    dele = fetched
else:
    dele = [numbers[u] for u in dele.split(",") if u]
for n in dele:
    out.append("dele %d %s" % (n, text(p.dele(n))))
out.append("quit " + text(p.quit()))
print("\n".join(out))
"#;

struct Poplib;

impl PopClient for Poplib {
    fn name(&self) -> &'static str {
        "poplib"
    }

    fn require(&self) {
        require_program("python3", &["-c", "import poplib, ssl"], "python3");
    }

    fn supports(&self, _: Transport) -> Result<(), &'static str> {
        Ok(())
    }

    fn line_ends(&self) -> LineEnds {
        LineEnds::Crlf
    }

    fn scripted(&self) -> bool {
        true
    }

    fn session(&self, ctx: &Ctx, ask: &Ask) -> Outcome {
        let outdir = ctx.session_dir("poplib");
        let transport = match ctx.transport {
            Transport::Plain => "plain",
            Transport::Stls => "stls",
            Transport::Implicit => "implicit",
        };
        let known: Vec<&str> = ask.known.iter().map(String::as_str).collect();
        let dele = match ask.dele {
            Dele::No => String::new(),
            Dele::Retrieved => "retrieved".into(),
            Dele::Chosen(uids) => uids.join(","),
        };
        let out = run_with_limit(
            Command::new("python3").args([
                "-c",
                POPLIB_SCRIPT,
                transport,
                "127.0.0.1",
                &ctx.port().to_string(),
                ctx.cert.cert(),
                ask.login,
                PASSWORD,
                outdir.to_str().unwrap(),
                &known.join(","),
                &dele,
            ]),
            b"",
            LIMIT,
            "python3",
        );
        let log = text_of(&out);
        assert!(
            out.status.success(),
            "poplib failed ({}): {log}",
            out.status
        );
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let values = |key: &str| -> Vec<String> {
            stdout
                .lines()
                .filter_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
                .map(str::to_owned)
                .collect()
        };
        let capa = values("capa");
        let has_stls = capa.iter().any(|c| c == "STLS");
        match ctx.transport {
            Transport::Plain => assert!(has_stls, "plain: CAPA should offer STLS: {capa:?}"),
            Transport::Stls => {
                assert_eq!(values("stls"), ["+OK Begin TLS negotiation"], "{log}");
                assert!(!has_stls, "CAPA offers STLS inside TLS: {capa:?}");
            }
            Transport::Implicit => assert!(!has_stls, "CAPA offers STLS inside TLS: {capa:?}"),
        }
        let mode = if ask.login.contains('+') { "keep" } else { "" };
        let pass = values("pass").join("");
        assert!(
            pass.starts_with("+OK Logged in") && pass.ends_with(&format!("{mode} mode")),
            "PASS: {pass}"
        );
        let uidl = numbered(&values("uidl").join("\n"));
        let list = numbered(&values("list").join("\n"));
        let stat = values("stat").join("");
        let (count, total) = stat.split_once(' ').unwrap();
        let fetched = values("retr")
            .iter()
            .map(|line| {
                let mut parts = line.splitn(3, ' ');
                let n: usize = parts.next().unwrap().parse().unwrap();
                let octets: u64 = parts.next().unwrap().parse().unwrap();
                let status = parts.next().unwrap();
                let bytes = std::fs::read(outdir.join(format!("{n}.eml"))).unwrap();
                // poplib counts the octets it read, de-stuffed, with CRLFs: that and the
                // status line must agree.
                assert_eq!(status, format!("+OK {octets} octets"), "RETR {n}");
                Fetched {
                    uid: Some(uid_at(&uidl, n)),
                    bytes,
                    octets: Some(octets),
                }
            })
            .collect();
        let deleted = values("dele")
            .iter()
            .map(|line| {
                let (n, status) = line.split_once(' ').unwrap();
                assert_eq!(status, format!("+OK Message {n} marked as deleted"));
                uid_at(&uidl, n.parse().unwrap())
            })
            .collect();
        Outcome {
            listing: join_listing(&uidl, &list),
            stat: Some((count.parse().unwrap(), total.parse().unwrap())),
            fetched,
            deleted,
            log,
        }
    }
}

#[test]
fn poplib_matrix() {
    run_matrix(&Poplib);
}

// ---------------------------------------------------------------------------------------
// curl
// ---------------------------------------------------------------------------------------

struct Curl;

impl Curl {
    /// One curl run: one connection, one POP3 session, with an operation per `--next` group
    /// (each `(extra options, path, output file)`). Returns its verbose trace.
    fn run(&self, ctx: &Ctx, login: &str, ops: &[(Vec<&str>, String, Option<PathBuf>)]) -> String {
        let (scheme, tls): (&str, &[&str]) = match ctx.transport {
            Transport::Plain => ("pop3", &[]),
            Transport::Stls => ("pop3", &["--ssl-reqd", "--cacert"]),
            Transport::Implicit => ("pop3s", &["--cacert"]),
        };
        let user = format!("{login}:{PASSWORD}");
        let mut args: Vec<String> = vec!["--verbose".into()];
        for (i, (extra, path, output)) in ops.iter().enumerate() {
            if i > 0 {
                args.push("--next".into());
            }
            args.extend(
                [
                    "--silent",
                    "--show-error",
                    "--max-time",
                    "50",
                    "--user",
                    &user,
                ]
                .map(String::from),
            );
            args.extend(tls.iter().map(|s| s.to_string()));
            if !tls.is_empty() {
                args.push(ctx.cert.cert().into());
            }
            args.extend(extra.iter().map(|s| s.to_string()));
            args.push(format!("{scheme}://127.0.0.1:{}/{path}", ctx.port()));
            if let Some(output) = output {
                args.push("--output".into());
                args.push(output.to_str().unwrap().into());
            }
        }
        let out = run_with_limit(Command::new("curl").args(&args), b"", LIMIT, "curl");
        let trace = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "curl {args:?} failed ({}): {trace}",
            out.status
        );
        let stls = trace.contains("> STLS") && trace.contains("< +OK Begin TLS negotiation");
        match ctx.transport {
            Transport::Plain => assert!(!stls && !trace.contains("SSL connection"), "{trace}"),
            Transport::Stls => assert!(stls && trace.contains("SSL connection using"), "{trace}"),
            Transport::Implicit => {
                assert!(!stls && trace.contains("SSL connection using"), "{trace}")
            }
        }
        let logins = trace.matches("< +OK Logged in").count();
        assert_eq!(logins, 1, "one curl run, one session: {trace}");
        trace
    }
}

impl PopClient for Curl {
    fn name(&self) -> &'static str {
        "curl"
    }

    fn require(&self) {
        let version = require_program("curl", &["-V"], "curl");
        let protocols = version
            .lines()
            .find(|l| l.starts_with("Protocols:"))
            .unwrap_or("");
        assert!(
            protocols.split_whitespace().any(|p| p == "pop3s"),
            "this curl has no POP3 over TLS ({version}): apt-get install -y curl"
        );
    }

    fn supports(&self, _: Transport) -> Result<(), &'static str> {
        Ok(())
    }

    fn line_ends(&self) -> LineEnds {
        LineEnds::Crlf
    }

    fn scripted(&self) -> bool {
        true
    }

    fn session(&self, ctx: &Ctx, ask: &Ask) -> Outcome {
        let dir = ctx.session_dir("curl");
        // First the listing (LIST and UIDL in one session), then the downloads and DELEs
        // it calls for (another session).
        let (list_file, uidl_file) = (dir.join("list"), dir.join("uidl"));
        let mut log = self.run(
            ctx,
            ask.login,
            &[
                (vec![], String::new(), Some(list_file.clone())),
                (
                    vec!["--request", "UIDL"],
                    String::new(),
                    Some(uidl_file.clone()),
                ),
            ],
        );
        let list = numbered(&std::fs::read_to_string(&list_file).unwrap());
        let uidl = numbered(&std::fs::read_to_string(&uidl_file).unwrap());
        let (fetch, dele) = plan(&uidl, ask);
        let mut ops = vec![(vec![], String::new(), Some(dir.join("list-again")))];
        for n in &fetch {
            ops.push((vec![], n.to_string(), Some(dir.join(format!("{n}.eml")))));
        }
        for n in &dele {
            // DELE has no body: --head.
            ops.push((vec!["--request", "DELE", "--head"], n.to_string(), None));
        }
        let trace = self.run(ctx, ask.login, &ops);
        assert_eq!(
            numbered(&std::fs::read_to_string(dir.join("list-again")).unwrap()),
            list,
            "the listing changed between two sessions"
        );
        // The RETR status lines, in order, from the trace.
        let octets: Vec<u64> = trace
            .lines()
            .filter_map(|l| {
                l.strip_prefix("< +OK ")?
                    .strip_suffix(" octets")?
                    .parse()
                    .ok()
            })
            .collect();
        assert_eq!(
            octets.len(),
            fetch.len(),
            "one +OK N octets per RETR: {trace}"
        );
        log.push_str(&trace);
        Outcome {
            listing: join_listing(&uidl, &list),
            stat: None,
            fetched: fetch
                .iter()
                .zip(octets)
                .map(|(n, octets)| Fetched {
                    uid: Some(uid_at(&uidl, *n)),
                    bytes: std::fs::read(dir.join(format!("{n}.eml"))).unwrap(),
                    octets: Some(octets),
                })
                .collect(),
            deleted: dele.iter().map(|n| uid_at(&uidl, *n)).collect(),
            log,
        }
    }
}

#[test]
fn curl_matrix() {
    run_matrix(&Curl);
}

// ---------------------------------------------------------------------------------------
// openssl s_client
// ---------------------------------------------------------------------------------------

/// Reads what a POP3 server sent, reply by reply.
struct Replies<'a> {
    raw: &'a [u8],
    at: usize,
}

impl Replies<'_> {
    /// The next line, without its CRLF (which it must have).
    fn line(&mut self) -> String {
        let rest = &self.raw[self.at..];
        let end = rest.iter().position(|&b| b == b'\n').unwrap_or_else(|| {
            panic!(
                "the replies end early, after {} octets: {:?}",
                self.at,
                String::from_utf8_lossy(&rest[..rest.len().min(300)])
            )
        });
        assert!(end > 0 && rest[end - 1] == b'\r', "a line without CRLF");
        self.at += end + 1;
        String::from_utf8_lossy(&rest[..end - 1]).into_owned()
    }

    fn ok(&mut self, what: &str) -> String {
        let line = self.line();
        assert!(line.starts_with("+OK"), "{what}: {line}");
        line
    }

    /// A multi-line body up to its ".", de-stuffed, every line ended by CRLF.
    fn body(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let rest = &self.raw[self.at..];
            let end = rest
                .iter()
                .position(|&b| b == b'\n')
                .expect("the replies end inside a multi-line reply");
            let line = &rest[..=end];
            assert!(line.ends_with(b"\r\n"), "a line without CRLF");
            self.at += end + 1;
            if line == b".\r\n" {
                return body;
            }
            body.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
        }
    }

    fn text_body(&mut self) -> String {
        String::from_utf8(self.body()).unwrap()
    }
}

struct SClient;

impl SClient {
    /// One session: the commands piped in, what the server sent back (after the handshake).
    fn run(&self, ctx: &Ctx, commands: &[String]) -> Vec<u8> {
        let addr = match ctx.transport {
            Transport::Implicit => ctx.server.tls_addr.unwrap(),
            _ => ctx.server.addr,
        };
        let mut cmd = common::s_client_command(addr, ctx.cert.cert());
        cmd.arg("-quiet");
        if ctx.transport == Transport::Stls {
            cmd.args(["-starttls", "pop3"]);
        }
        let input: Vec<u8> = commands
            .iter()
            .flat_map(|c| format!("{c}\r\n").into_bytes())
            .collect();
        let out = run_with_limit(&mut cmd, &input, LIMIT, "openssl");
        // Its exit status says little (it reports the server's close as an error on some
        // versions); the replies tell whether the session went through.
        out.stdout
    }

    /// Reads the greeting (implicit TLS; s_client -starttls consumes it), CAPA, USER, PASS.
    fn login<'a>(&self, ctx: &Ctx, raw: &'a [u8], login: &str) -> Replies<'a> {
        let mut r = Replies { raw, at: 0 };
        if ctx.transport == Transport::Implicit {
            r.ok("greeting");
        }
        r.ok("CAPA");
        let capa = r.text_body();
        assert!(
            !capa.lines().any(|c| c == "STLS") && capa.lines().any(|c| c == "USER"),
            "CAPA inside TLS: {capa}"
        );
        r.ok("USER");
        let pass = r.ok("PASS");
        if login.contains('+') {
            assert!(pass.ends_with("keep mode"), "{pass}");
        }
        r
    }
}

impl PopClient for SClient {
    fn name(&self) -> &'static str {
        "s_client"
    }

    fn require(&self) {
        require_program("openssl", &["version"], "openssl");
    }

    fn supports(&self, transport: Transport) -> Result<(), &'static str> {
        match transport {
            Transport::Plain => Err("s_client speaks TLS only"),
            _ => Ok(()),
        }
    }

    fn line_ends(&self) -> LineEnds {
        LineEnds::Crlf
    }

    fn scripted(&self) -> bool {
        true
    }

    fn session(&self, ctx: &Ctx, ask: &Ask) -> Outcome {
        let start = [
            "CAPA".to_owned(),
            format!("USER {}", ask.login),
            format!("PASS {PASSWORD}"),
        ];
        // First the listing, then the downloads and DELEs it calls for.
        let mut commands = start.to_vec();
        commands.extend(["STAT", "UIDL", "LIST", "QUIT"].map(String::from));
        let raw = self.run(ctx, &commands);
        let mut r = self.login(ctx, &raw, ask.login);
        let stat = r.ok("STAT");
        let mut stat = stat.split(' ').skip(1).map(|v| v.parse::<u64>().unwrap());
        let stat = (stat.next().unwrap() as usize, stat.next().unwrap());
        r.ok("UIDL");
        let uidl = numbered(&r.text_body());
        r.ok("LIST");
        let list = numbered(&r.text_body());
        r.ok("QUIT");
        let mut log = String::from_utf8_lossy(&raw).into_owned();

        let (fetch, dele) = plan(&uidl, ask);
        let mut commands = start.to_vec();
        commands.push("UIDL".into());
        commands.extend(fetch.iter().map(|n| format!("RETR {n}")));
        commands.extend(dele.iter().map(|n| format!("DELE {n}")));
        commands.push("QUIT".into());
        let raw = self.run(ctx, &commands);
        let mut r = self.login(ctx, &raw, ask.login);
        r.ok("UIDL");
        assert_eq!(
            numbered(&r.text_body()),
            uidl,
            "UIDL changed between two sessions"
        );
        let mut fetched = Vec::new();
        for n in &fetch {
            let status = r.ok(&format!("RETR {n}"));
            let octets = status
                .strip_prefix("+OK ")
                .and_then(|s| s.strip_suffix(" octets"))
                .and_then(|s| s.parse().ok());
            fetched.push(Fetched {
                uid: Some(uid_at(&uidl, *n)),
                bytes: r.body(),
                octets,
            });
        }
        for n in &dele {
            assert_eq!(r.line(), format!("+OK Message {n} marked as deleted"));
        }
        let quit = r.ok("QUIT");
        assert_eq!(r.at, raw.len(), "more after QUIT");
        log.push_str(&format!(
            "(second session: {} octets, QUIT: {quit})",
            raw.len()
        ));
        Outcome {
            listing: join_listing(&uidl, &list),
            stat: Some(stat),
            fetched,
            deleted: dele.iter().map(|n| uid_at(&uidl, *n)).collect(),
            log,
        }
    }
}

#[test]
fn s_client_matrix() {
    run_matrix(&SClient);
}

// ---------------------------------------------------------------------------------------
// fetchmail
// ---------------------------------------------------------------------------------------

struct Fetchmail;

impl PopClient for Fetchmail {
    fn name(&self) -> &'static str {
        "fetchmail"
    }

    fn require(&self) {
        require_program("fetchmail", &["--version"], "fetchmail");
    }

    fn supports(&self, _: Transport) -> Result<(), &'static str> {
        Ok(())
    }

    fn line_ends(&self) -> LineEnds {
        LineEnds::Lf
    }

    fn scripted(&self) -> bool {
        false
    }

    /// fetchmail with its UIDL list (`.fetchids`) in the state folder, `keep` or `no keep`,
    /// handing each message to an MDA that writes it to a file of its own. Without
    /// `fetchall` it downloads only what its list does not have; without `flush` it leaves
    /// the old ones alone.
    fn session(&self, ctx: &Ctx, ask: &Ask) -> Outcome {
        let home = ctx.state_dir("fetchmail", ask.state);
        let inbox = ctx.session_dir("fetchmail-inbox");
        let tls = match ctx.transport {
            // Without sslproto '' fetchmail would take the STLS the server offers.
            Transport::Plain => "sslproto ''".to_owned(),
            Transport::Stls => format!(
                "sslproto 'tls1.2+' sslcertck sslcertfile '{}' sslcommonname localhost",
                ctx.cert.cert()
            ),
            Transport::Implicit => format!(
                "ssl sslcertck sslcertfile '{}' sslcommonname localhost",
                ctx.cert.cert()
            ),
        };
        let keep = match ask.dele {
            Dele::No => "keep",
            Dele::Retrieved => "no keep",
            Dele::Chosen(_) => panic!("fetchmail deletes what it downloads, nothing chosen"),
        };
        let rc = home.join("fetchmailrc");
        std::fs::write(
            &rc,
            format!(
                "set no syslog\n\
                 poll 127.0.0.1 with proto POP3 port {port} auth password timeout 50\n\
                 \x20 user \"{login}\" there with password \"{PASSWORD}\" is \"{local}\" here\n\
                 \x20 options {keep} no rewrite {tls}\n\
                 \x20 mda \"/bin/sh -c 'cat > {inbox}/msg.$$'\"\n",
                port = ctx.port(),
                login = ask.login,
                local = local_user(),
                inbox = inbox.display(),
            ),
        )
        .unwrap();
        // fetchmail refuses an rcfile others may read.
        set_mode(&rc, 0o600);
        let out = run_with_limit(
            Command::new("fetchmail")
                .arg("--fetchmailrc")
                .arg(&rc)
                .args(["-v", "-v", "--nodetach"])
                .env("HOME", &home)
                .env("FETCHMAILHOME", &home),
            b"",
            LIMIT,
            "fetchmail",
        );
        let log = text_of(&out);
        // 0: mail downloaded; 1: none to download.
        assert!(
            matches!(out.status.code(), Some(0 | 1)),
            "fetchmail failed ({}): {log}",
            out.status
        );
        let has = |s: &str| log.contains(s);
        match ctx.transport {
            Transport::Plain => assert!(!has("POP3> STLS") && !has("SSL/TLS: using"), "{log}"),
            Transport::Stls => assert!(
                has("POP3> STLS") && has("upgrade to TLS succeeded") && has("SSL/TLS: using"),
                "{log}"
            ),
            Transport::Implicit => assert!(!has("POP3> STLS") && has("SSL/TLS: using"), "{log}"),
        }
        // fetchmail compares what it read with LIST itself.
        assert!(!has("was not the expected length"), "{log}");

        let sent: Vec<&str> = log
            .lines()
            .filter_map(|l| l.strip_prefix("fetchmail: POP3> "))
            .collect();
        let mut uidl = Vec::new();
        if let Some(at) = log.find("fetchmail: POP3> UIDL\n") {
            for line in log[at..].lines().skip(1) {
                let Some(reply) = line.strip_prefix("fetchmail: POP3< ") else {
                    continue;
                };
                if reply == "." {
                    break;
                }
                if let Some((n, uid)) = reply.split_once(' ')
                    && let Ok(n) = n.parse::<usize>()
                {
                    uidl.push((n, uid.to_owned()));
                }
            }
        }
        // LIST n for each message it downloads: "+OK n size".
        let mut list = Vec::new();
        let mut lines = log.lines();
        while let Some(line) = lines.next() {
            if line.starts_with("fetchmail: POP3> LIST ") {
                let reply = lines
                    .find_map(|l| l.strip_prefix("fetchmail: POP3< "))
                    .unwrap();
                let (n, size) = reply.strip_prefix("+OK ").unwrap().split_once(' ').unwrap();
                list.push((n.parse().unwrap(), size.to_owned()));
            }
        }
        let stat = log
            .find("fetchmail: POP3> STAT\n")
            .and_then(|at| {
                log[at..]
                    .lines()
                    .nth(1)?
                    .strip_prefix("fetchmail: POP3< +OK ")
                    .map(str::to_owned)
            })
            .and_then(|s| {
                let (c, t) = s.split_once(' ')?;
                Some((c.parse().ok()?, t.parse().ok()?))
            });
        let deleted = sent
            .iter()
            .filter_map(|c| c.strip_prefix("DELE "))
            .map(|n| uid_at(&uidl, n.parse().unwrap()))
            .collect();
        let fetched = files_in(&inbox)
            .into_iter()
            .map(|m| {
                // fetchmail documents a Received: field of its own at the top.
                let (fields, rest) = split_leading_fields(&m, &["Received"]).unwrap();
                assert!(fields[0].contains("with POP3 (fetchmail-"), "{}", fields[0]);
                Fetched {
                    uid: None,
                    bytes: rest.to_vec(),
                    octets: None,
                }
            })
            .collect();
        Outcome {
            listing: join_listing(&uidl, &list),
            stat,
            fetched,
            deleted,
            log,
        }
    }
}

#[test]
fn fetchmail_matrix() {
    run_matrix(&Fetchmail);
}

// ---------------------------------------------------------------------------------------
// mpop
// ---------------------------------------------------------------------------------------

struct Mpop;

/// mpop's `--debug` conversation: the commands it sent and the reply lines, in order.
fn mpop_conversation(log: &str) -> (Vec<&str>, Vec<&str>) {
    let mut sent = Vec::new();
    let mut got = Vec::new();
    for line in log.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(c) = line.strip_prefix("--> ") {
            sent.push(c);
        } else if let Some(r) = line.strip_prefix("<-- ") {
            got.push(r);
        } else if line == "<--" {
            got.push("");
        } else if line == "-->" {
            sent.push("");
        }
    }
    (sent, got)
}

impl PopClient for Mpop {
    fn name(&self) -> &'static str {
        "mpop"
    }

    fn require(&self) {
        require_program("mpop", &["--version"], "mpop");
    }

    fn supports(&self, _: Transport) -> Result<(), &'static str> {
        Ok(())
    }

    fn line_ends(&self) -> LineEnds {
        LineEnds::Lf
    }

    fn scripted(&self) -> bool {
        false
    }

    /// mpop with its UIDL list in the state folder (`only_new`, its default), `keep on` or
    /// off, delivering to a Maildir of its own. Authentication is mpop's default choice.
    fn session(&self, ctx: &Ctx, ask: &Ask) -> Outcome {
        let state = ctx.state_dir("mpop", ask.state);
        let inbox = ctx.session_dir("mpop-inbox");
        make_maildir(&inbox);
        let tls = match ctx.transport {
            Transport::Plain => "tls off\n".to_owned(),
            Transport::Stls => format!(
                "tls on\ntls_starttls on\ntls_trust_file {}\n",
                ctx.cert.cert()
            ),
            Transport::Implicit => {
                format!(
                    "tls on\ntls_starttls off\ntls_trust_file {}\n",
                    ctx.cert.cert()
                )
            }
        };
        let keep = match ask.dele {
            Dele::No => "on",
            Dele::Retrieved => "off",
            Dele::Chosen(_) => panic!("mpop deletes what it downloads, nothing chosen"),
        };
        let config = state.join("mpoprc");
        std::fs::write(
            &config,
            format!(
                "account test\n\
                 host 127.0.0.1\n\
                 port {port}\n\
                 {tls}\
                 user {login}\n\
                 passwordeval echo {PASSWORD}\n\
                 delivery maildir {inbox}\n\
                 keep {keep}\n\
                 uidls_file {uidls}\n\
                 timeout 50\n",
                port = ctx.port(),
                login = ask.login,
                inbox = inbox.display(),
                uidls = state.join("uidls").display(),
            ),
        )
        .unwrap();
        // mpop refuses a configuration file others may read.
        set_mode(&config, 0o600);
        let out = run_with_limit(
            Command::new("mpop")
                .arg(format!("--file={}", config.display()))
                .args(["--debug", "--all-accounts"])
                .env("HOME", &state),
            b"",
            LIMIT,
            "mpop",
        );
        let log = text_of(&out);
        assert!(
            out.status.success(),
            "mpop failed ({}): {}",
            out.status,
            tail(&log, 20_000)
        );
        let (sent, got) = mpop_conversation(&log);
        let stls = sent.contains(&"STLS");
        let tls_up = log.contains("TLS session parameters:");
        match ctx.transport {
            Transport::Plain => assert!(!stls && !tls_up, "{log}"),
            Transport::Stls => assert!(stls && tls_up, "{log}"),
            Transport::Implicit => assert!(!stls && tls_up, "{log}"),
        }
        // Walk the replies in the order of the commands.
        let mut replies = got.into_iter();
        let mut next = || replies.next().expect("mpop: the replies end early");
        let greeting = next();
        assert!(greeting.starts_with("+OK"), "greeting: {greeting}");
        let (mut uidl, mut list, mut stat, mut deleted, mut octets) =
            (Vec::new(), Vec::new(), None, Vec::new(), Vec::new());
        let mut commands = sent.iter();
        while let Some(command) = commands.next() {
            let mut status = next();
            let word = command.split(' ').next().unwrap();
            if word == "AUTH" {
                // SASL: each challenge is answered by a line that is no command.
                while status.starts_with("+ ") || status == "+" {
                    commands.next().expect("a SASL response");
                    status = next();
                }
                assert!(status.starts_with("+OK"), "{command}: {status}");
                continue;
            }
            if !status.starts_with("+OK") {
                continue;
            }
            let multiline = matches!(word, "CAPA" | "RETR" | "TOP")
                || (matches!(word, "LIST" | "UIDL") && !command.contains(' '));
            let mut body = Vec::new();
            if multiline {
                loop {
                    let line = next();
                    if line == "." {
                        break;
                    }
                    body.push(line);
                }
            }
            match word {
                "STAT" => {
                    let mut v = status.split(' ').skip(1).map(|v| v.parse::<u64>().unwrap());
                    stat = Some((v.next().unwrap() as usize, v.next().unwrap()));
                }
                "UIDL" => uidl = numbered(&body.join("\n")),
                "LIST" => list = numbered(&body.join("\n")),
                "RETR" => octets.push(
                    status
                        .strip_prefix("+OK ")
                        .and_then(|s| s.strip_suffix(" octets"))
                        .and_then(|s| s.parse::<u64>().ok()),
                ),
                "DELE" => deleted.push(command[5..].parse::<usize>().unwrap()),
                _ => {}
            }
        }
        let deleted = deleted.iter().map(|n| uid_at(&uidl, *n)).collect();
        let fetched = files_in(&inbox.join("new"))
            .into_iter()
            .map(|m| {
                // mpop documents a Received: field of its own at the top
                // (received_header, on by default).
                let (fields, rest) = split_leading_fields(&m, &["Received"]).unwrap();
                assert!(fields[0].contains("(mpop-"), "{}", fields[0]);
                Fetched {
                    uid: None,
                    bytes: rest.to_vec(),
                    octets: None,
                }
            })
            .collect::<Vec<_>>();
        assert_eq!(
            octets.len(),
            fetched.len(),
            "one RETR per delivered message"
        );
        Outcome {
            listing: join_listing(&uidl, &list),
            stat,
            fetched,
            deleted,
            log,
        }
    }
}

#[test]
fn mpop_matrix() {
    run_matrix(&Mpop);
}

// ---------------------------------------------------------------------------------------
// getmail6
// ---------------------------------------------------------------------------------------

struct Getmail;

impl PopClient for Getmail {
    fn name(&self) -> &'static str {
        "getmail"
    }

    fn require(&self) {
        require_program("getmail", &["--version"], "getmail6");
    }

    fn supports(&self, transport: Transport) -> Result<(), &'static str> {
        match transport {
            // Its POP3 retrievers: SimplePOP3Retriever (plain), SimplePOP3SSLRetriever
            // (implicit TLS); none has an STLS option (getmail6 6.18 documentation).
            Transport::Stls => Err("getmail6 has no STLS for POP3"),
            _ => Ok(()),
        }
    }

    fn line_ends(&self) -> LineEnds {
        LineEnds::Lf
    }

    fn scripted(&self) -> bool {
        false
    }

    /// getmail with its getmaildir (the `oldmail-*` UIDL list) as the state, `read_all =
    /// false` (only messages it has not seen), `delete` true or false, delivering to a Maildir
    /// of its own, with its message log telling unique-id, size and deletion per message.
    fn session(&self, ctx: &Ctx, ask: &Ask) -> Outcome {
        let state = ctx.state_dir("getmail", ask.state);
        let inbox = ctx.session_dir("getmail-inbox");
        make_maildir(&inbox);
        // getmail will not deliver to a Maildir as root: it switches to `user` to do it.
        let root = nix::unistd::geteuid().is_root();
        if root {
            let nobody = nix::unistd::User::from_name("nobody")
                .unwrap()
                .expect("user nobody");
            for dir in [
                &inbox,
                &inbox.join("new"),
                &inbox.join("cur"),
                &inbox.join("tmp"),
            ] {
                std::os::unix::fs::chown(dir, Some(nobody.uid.as_raw()), None).unwrap();
            }
        }
        let (retriever, ca) = match ctx.transport {
            Transport::Plain => ("SimplePOP3Retriever", String::new()),
            Transport::Implicit => (
                "SimplePOP3SSLRetriever",
                format!("ca_certs = {}\n", ctx.cert.cert()),
            ),
            Transport::Stls => unreachable!(),
        };
        let delete = match ask.dele {
            Dele::No => "false",
            Dele::Retrieved => "true",
            Dele::Chosen(_) => panic!("getmail deletes what it downloads, nothing chosen"),
        };
        let message_log = ctx.session_dir("getmail-log").join("log");
        std::fs::write(
            state.join("getmailrc"),
            format!(
                "[retriever]\n\
                 type = {retriever}\n\
                 server = 127.0.0.1\n\
                 port = {port}\n\
                 username = {login}\n\
                 password = {PASSWORD}\n\
                 timeout = 50\n\
                 {ca}\
                 [destination]\n\
                 type = Maildir\n\
                 path = {inbox}/\n\
                 {user}\
                 [options]\n\
                 verbose = 2\n\
                 read_all = false\n\
                 delete = {delete}\n\
                 message_log = {message_log}\n\
                 message_log_verbose = true\n",
                port = ctx.port(),
                login = ask.login,
                inbox = inbox.display(),
                user = if root { "user = nobody\n" } else { "" },
                message_log = message_log.display(),
            ),
        )
        .unwrap();
        let out = run_with_limit(
            Command::new("getmail")
                .arg(format!("--getmaildir={}", state.display()))
                .arg("--rcfile=getmailrc")
                .env("HOME", &state),
            b"",
            LIMIT,
            "getmail6",
        );
        let mut log = text_of(&out);
        assert!(
            out.status.success(),
            "getmail failed ({}): {log}",
            out.status
        );
        let messages = std::fs::read_to_string(&message_log).unwrap_or_default();
        log.push_str(&messages);
        // "msg 2/10 (31 bytes) msgid UID ... delivered to ..., deleted" per message offered:
        // the size is LIST's, the msgid UIDL's.
        let mut listing = Vec::new();
        let mut deleted = Vec::new();
        for line in messages.lines() {
            let Some(at) = line.find(" msg ") else {
                continue;
            };
            let rest = &line[at..];
            let size: u64 = rest
                .split_once('(')
                .and_then(|(_, r)| r.split_once(" bytes)"))
                .and_then(|(s, _)| s.parse().ok())
                .unwrap_or_else(|| panic!("getmail log line: {line}"));
            let uid = rest
                .split_once(" msgid ")
                .and_then(|(_, r)| r.split(' ').next())
                .unwrap_or_else(|| panic!("getmail log line: {line}"))
                .to_owned();
            if line.ends_with(", deleted") {
                deleted.push(uid.clone());
            }
            listing.push((uid, Some(size)));
        }
        let fetched = files_in(&inbox.join("new"))
            .into_iter()
            .map(|m| {
                // getmail documents the three fields it puts first: Return-Path (the envelope
                // sender), Delivered-To and Received (its `delivered_to` and `received`
                // options, both on by default); its Received names the message's UIDL.
                let (fields, rest) =
                    split_leading_fields(&m, &["Return-Path", "Delivered-To", "Received"]).unwrap();
                assert!(fields[2].contains("getmail6"), "{}", fields[2]);
                let uid = fields[2]
                    .split_once("msgid:")
                    .and_then(|(_, r)| r.split(';').next())
                    .unwrap_or_else(|| panic!("no msgid in {}", fields[2]))
                    .to_owned();
                Fetched {
                    uid: Some(uid),
                    bytes: rest.to_vec(),
                    octets: None,
                }
            })
            .collect();
        Outcome {
            listing,
            stat: None,
            fetched,
            deleted,
            log,
        }
    }
}

#[test]
fn getmail_matrix() {
    run_matrix(&Getmail);
}

/// The corpus has every case the matrix is about, so a later edit cannot drop one quietly.
#[test]
fn corpus_covers_the_cases() {
    let c = corpus();
    let has = |f: &dyn Fn(&[u8]) -> bool| c.iter().any(|(_, b, _)| f(b));
    let lines = |b: &[u8]| -> Vec<Vec<u8>> {
        crlf(b)
            .split(|&x| x == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l).to_vec())
            .collect()
    };
    assert!(
        has(&|b| lines(b).iter().any(|l| l == b".")),
        "a line that is only a dot"
    );
    assert!(
        has(&|b| lines(b).iter().any(|l| l == b"..")),
        "a line that is only two dots"
    );
    assert!(
        has(&|b| lines(b).iter().any(|l| l.starts_with(b".") && l.len() > 2)),
        "a dotted line"
    );
    assert!(has(&|b| !b.windows(2).any(|w| w == b"\r\n")), "LF files");
    assert!(has(&|b| b.windows(2).any(|w| w == b"\r\n")), "CRLF files");
    assert!(has(&|b| !b.ends_with(b"\n")), "no final newline");
    assert!(
        has(&|b| b.starts_with(b"Subject: CRLF") && !b.ends_with(b"\n")),
        "CRLF, no final newline"
    );
    assert!(
        has(&|b| b.iter().any(|&x| x >= 0x80) && std::str::from_utf8(b).is_ok()),
        "8-bit UTF-8"
    );
    assert!(
        has(&|b| String::from_utf8_lossy(b).contains("=?UTF-8?B?")),
        "RFC 2047"
    );
    assert!(
        has(&|b| lines(b).iter().any(|l| l.len() > 2048)),
        "a line past poplib's limit"
    );
    assert!(
        has(&|b| lines(b).iter().any(|l| l.len() > 1000 && l.len() < 2048)),
        "a line over 1000"
    );
    assert!(
        has(&|b| b.ends_with(b"\n\n") && b.len() < 100),
        "an empty body"
    );
    assert!(has(&|b| b.len() >= 2_000_000), "a message of 2 MB or more");
    assert!(
        has(&|b| String::from_utf8_lossy(b).contains("Content-Transfer-Encoding: base64")),
        "base64"
    );
    assert!(
        c.iter().any(|(_, _, f)| f.is_some()),
        "messages in cur/ with flags"
    );
    assert!(c.iter().any(|(_, _, f)| f.is_none()), "messages in new/");
    // Header lines under 78 octets (getmail refolds longer ones), lines under 8192 (fetchmail).
    for (label, b, _) in &c {
        let ls = lines(b);
        let header_end = ls.iter().position(Vec::is_empty).unwrap_or(ls.len());
        assert!(
            ls[..header_end].iter().all(|l| l.len() <= 78),
            "{label}: a long header line"
        );
        assert!(
            ls.iter().all(|l| l.len() < 8192),
            "{label}: a line past fetchmail's buffer"
        );
    }
}
