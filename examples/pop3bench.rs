//! pop3bench: the load generator behind pop3d's benchmark numbers.
//!
//! ```sh
//! cargo build --release && cargo run --release --example pop3bench -- [options]
//! ```
//!
//! By default it is self-contained: it generates a Maildir of mixed-size messages, a users
//! file and a self-signed certificate in a temporary folder, starts the release `pop3d` on
//! loopback ports, runs the workloads, prints a Markdown table on stdout and stops the daemon.
//! With `--target ADDR --user U --pass P` it measures a server that is already running
//! (Dovecot, say) over a mailbox the caller provides; the content checksums are then skipped,
//! since only the sizes the server itself announces are known.
//!
//! To compare servers on the same mail, `--generate-only DIR` writes the data set (users file
//! with `{PLAIN}` passwords in Dovecot's passwd-file format, self-signed certificate, the
//! Maildirs of all workloads) into DIR and exits; serve DIR with both servers and measure each
//! with `--target ... --data DIR`, which takes the users, passwords and certificate from DIR
//! and checks every RETR against the files. `bench/vs-dovecot.sh` does this against Dovecot.
//!
//! Workloads (`--bench`, default `sessions,retr`):
//! - `sessions`: C clients loop over connect, USER/PASS, STAT, QUIT for a fixed time, over
//!   plain POP3, STLS and implicit TLS. Mail clients poll: the cost of a short session is
//!   what a server with many phones and laptops spends most of its time on.
//! - `retr`: one client downloads the whole mailbox with pipelined RETRs and checks every
//!   message: the bulk path (file reads, CRLF conversion, dot-stuffing, TLS).
//! - `idle`: many logged-in sessions held open, to read the server's memory per session.
//! - `bigbox`: login, UIDL and LIST on a mailbox of 100 000 small messages: the listing and
//!   size-cache paths, which grow with the mailbox rather than with the traffic.
//!
//! The client is deliberately simple (blocking std threads, rustls) so that it is cheap and
//! easy to trust. On a small machine it still shares the CPUs with the server, so compare
//! numbers from the same machine only.
//!
//! Every loop is bounded in count and time, every socket has a timeout, and the daemon is
//! killed by a guard on every exit path (errors and panics included). The idle workload needs
//! two file descriptors per session (ours and the daemon's): the soft open-files limit is
//! raised toward the hard one before the daemon starts, so that it inherits the higher limit.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, OnceLock, mpsc};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use argh::FromArgs;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme,
    StreamOwned,
};
use xxhash_rust::xxh3::{Xxh3, xxh3_128};

/// How long one read or write on a client socket may block: a stuck server fails the
/// workload with an error instead of hanging the benchmark.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// How long pop3d may take to log "ready".
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Status lines, LIST and UIDL lines are short; a longer one means a broken server.
const MAX_STATUS_LINE: usize = 4096;
/// Read buffers: small for the many-session workloads (2000 idle clients must not cost
/// half a gigabyte here), large for downloads so one read() brings in many lines.
const SMALL_BUF: usize = 16 * 1024;
const BIG_BUF: usize = 256 * 1024;
/// Bound on a LIST or UIDL reply, which grows with the mailbox (100 000 messages: ~3 MB).
const LISTING_LIMIT: u64 = 512 * 1024 * 1024;
/// How many error messages each workload prints; the rest are only counted.
const ERRORS_SHOWN: usize = 5;
/// Messages in the `idle` user's mailbox: small, so that the memory per session measures
/// the connection rather than the listing of a large mailbox.
const IDLE_MAILBOX: usize = 10;
/// The users of the data set, each with `{PLAIN}` its own name as password: the mailbox the
/// sessions and retr workloads use, the idle workload's, the bigbox workload's.
const BENCH_USER: &str = "bench";
const IDLE_USER: &str = "idle";
const BIGBOX_USER: &str = "bigbox";
/// Threads opening the idle workload's sessions.
const IDLE_OPENERS: usize = 4;
/// How long opening all idle sessions may take before the workload gives up.
const IDLE_OPEN_LIMIT: Duration = Duration::from_secs(120);

#[derive(FromArgs)]
/// Load generator for pop3d: session rate, RETR throughput, memory per idle session and big
/// mailboxes, against a pop3d it starts itself or (--target) a running POP3 server.
struct Args {
    /// workloads, comma-separated: sessions, retr, idle, bigbox (default sessions,retr)
    #[argh(option, default = "String::from(\"sessions,retr\")")]
    bench: String,
    /// concurrent clients in the sessions workload (default 16)
    #[argh(option, default = "16")]
    clients: usize,
    /// seconds each sessions run lasts, per transport (default 5)
    #[argh(option, default = "5.0")]
    seconds: f64,
    /// messages in the generated mailbox (default 2000)
    #[argh(option, default = "2000")]
    messages: usize,
    /// full-mailbox downloads per transport in the retr workload (default 3)
    #[argh(option, default = "3")]
    rounds: usize,
    /// RETR commands per write when pipelining (default 64)
    #[argh(option, default = "64")]
    batch: usize,
    /// logged-in sessions the idle workload holds open (default 2000)
    #[argh(option, default = "2000")]
    idle: usize,
    /// logged-in implicit-TLS sessions the idle workload then holds open, when the server
    /// has a TLS port (default 1000; 0 skips them)
    #[argh(option, default = "1000")]
    idle_tls: usize,
    /// messages in the bigbox workload's mailbox (default 100000)
    #[argh(option, default = "100000")]
    bigbox: usize,
    /// seed of the message generator, so every run serves the same mailbox (default 1)
    #[argh(option, default = "1")]
    seed: u64,
    /// the pop3d binary (default: pop3d in the target directory this example was built in)
    #[argh(option)]
    pop3d: Option<PathBuf>,
    /// folder for the temporary mailboxes (default: the system's temporary folder)
    #[argh(option)]
    tmpdir: Option<PathBuf>,
    /// benchmark the running POP3 server at this plain address instead of starting pop3d
    #[argh(option)]
    target: Option<SocketAddr>,
    /// implicit-TLS address of the --target server (without it, the tls transport is skipped)
    #[argh(option)]
    tls_target: Option<SocketAddr>,
    /// user to log in as on the --target server
    #[argh(option)]
    user: Option<String>,
    /// password of --user
    #[argh(option)]
    pass: Option<String>,
    /// PEM certificate(s) to trust for the --target server's TLS
    #[argh(option)]
    ca: Option<PathBuf>,
    /// accept any certificate from the --target server (measuring only, never for real mail)
    #[argh(switch)]
    insecure: bool,
    /// name the server certificate must carry (default localhost)
    #[argh(option, default = "String::from(\"localhost\")")]
    server_name: String,
    /// process id of the --target server, to report its CPU time and memory; its child
    /// processes count with it (Dovecot's login, auth and mail processes); repeatable
    #[argh(option)]
    server_pid: Vec<u32>,
    /// user with a big mailbox on the --target server, for the bigbox workload
    #[argh(option)]
    bigbox_user: Option<String>,
    /// password of --bigbox-user
    #[argh(option)]
    bigbox_pass: Option<String>,
    /// user whose sessions the idle workload holds open on the --target server (default
    /// --user)
    #[argh(option)]
    idle_user: Option<String>,
    /// password of --idle-user
    #[argh(option)]
    idle_pass: Option<String>,
    /// the folder --generate-only wrote, served by the --target server: users, passwords and
    /// certificate default to its own, and RETR checks every message against its files
    #[argh(option)]
    data: Option<PathBuf>,
    /// write the data set (users, certificate, the Maildirs of every workload: --messages
    /// mixed, the idle user's, --bigbox small) into this new or empty folder, and exit
    #[argh(option)]
    generate_only: Option<PathBuf>,
    /// names the server in the report (default: pop3d's revision, or the --target address)
    #[argh(option)]
    label: Option<String>,
    /// let TLS clients resume sessions (default: a full handshake every time, the worst case)
    #[argh(switch)]
    tls_resume: bool,
    /// also write the results as JSON to this file
    #[argh(option)]
    json: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args: Args = argh::from_env();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("pop3bench: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    let workloads = Workload::parse_list(&args.bench)?;
    check_args(args)?;
    if let Some(dir) = &args.generate_only {
        return generate_only(args, dir);
    }
    if cfg!(debug_assertions) {
        eprintln!("pop3bench: warning: built without --release; the client itself will be slow");
    }
    // Before the daemon starts: it inherits the raised limit.
    let fds = if workloads.contains(&Workload::Idle) {
        (args.idle + args.idle_tls) as u64
    } else {
        0
    } + 3 * args.clients as u64
        + 256;
    ensure_fd_limit(fds)?;

    let setup_started = Instant::now();
    let env = match args.target {
        Some(plain) => Env::target(args, plain, &workloads)?,
        None => Env::self_contained(args, &workloads)?,
    };
    let mut report = Report::new(args, &env);
    report.timing("setup", setup_started.elapsed(), None);

    for &workload in &workloads {
        eprintln!("pop3bench: --- {} ---", workload.name());
        let started = Instant::now();
        let cpu_before = CpuSnapshot::take(&env);
        let result = match workload {
            Workload::Sessions => bench_sessions(&env, args, &mut report),
            Workload::Retr => bench_retr(&env, args, &mut report),
            Workload::Idle => bench_idle(&env, args, &mut report),
            Workload::Bigbox => bench_bigbox(&env, args, &mut report),
        };
        let took = started.elapsed();
        let usage = cpu_before.and_then(|c| c.usage_since(&env));
        eprintln!(
            "pop3bench: {} took {:.1} s ({})",
            workload.name(),
            took.as_secs_f64(),
            usage.map_or("too short for CPU figures".into(), |u| u.to_string())
        );
        report.timing(workload.name(), took, usage);
        if let Err(e) = result {
            // The other workloads may still work: report this one as failed and go on.
            eprintln!("pop3bench: {} failed: {e}", workload.name());
            report.rows.push(Row::failed(workload.name(), &e));
        }
    }

    if let Some(fixture) = &env.fixture {
        report.server_log = Some(fixture.daemon.log().summary());
    }
    report.tls = env.tls_negotiated.get().cloned();
    print!("{}", report.markdown());
    if let Some(path) = &args.json {
        fs::write(path, report.json().render())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        eprintln!("pop3bench: wrote {}", path.display());
    }
    let errors: u64 = report.rows.iter().map(|r| r.errors).sum();
    if errors > 0 {
        return Err(format!(
            "{errors} errors (see the table and the messages above)"
        ));
    }
    Ok(())
}

/// Keeps every loop bounded: no option may ask for an unbounded or absurd run.
fn check_args(args: &Args) -> Result<(), String> {
    let bounded = |name: &str, value: usize, max: usize| {
        if value == 0 || value > max {
            Err(format!("--{name} must be between 1 and {max}"))
        } else {
            Ok(())
        }
    };
    bounded("clients", args.clients, 1024)?;
    bounded("messages", args.messages, 1_000_000)?;
    bounded("rounds", args.rounds, 100)?;
    bounded("batch", args.batch, 1000)?;
    bounded("idle", args.idle, 100_000)?;
    bounded("idle-tls", args.idle_tls, 100_000)?;
    bounded("bigbox", args.bigbox, 2_000_000)?;
    if !(args.seconds > 0.0 && args.seconds <= 3600.0) {
        return Err("--seconds must be above 0 and at most 3600".into());
    }
    if args.target.is_none() {
        let target_only = [
            ("--tls-target", args.tls_target.is_some()),
            ("--user", args.user.is_some()),
            ("--pass", args.pass.is_some()),
            ("--ca", args.ca.is_some()),
            ("--insecure", args.insecure),
            ("--server-pid", !args.server_pid.is_empty()),
            ("--bigbox-user", args.bigbox_user.is_some()),
            ("--bigbox-pass", args.bigbox_pass.is_some()),
            ("--idle-user", args.idle_user.is_some()),
            ("--idle-pass", args.idle_pass.is_some()),
            ("--data", args.data.is_some()),
        ];
        if let Some((flag, _)) = target_only.iter().find(|(_, set)| *set) {
            return Err(format!("{flag} only goes with --target"));
        }
    } else if args.pop3d.is_some() || args.tmpdir.is_some() {
        return Err("--pop3d and --tmpdir are for the self-contained mode, not --target".into());
    } else if args.generate_only.is_some() {
        return Err("--generate-only writes a data set; it does not go with --target".into());
    }
    if args.generate_only.is_some() && (args.pop3d.is_some() || args.tmpdir.is_some()) {
        return Err("--generate-only writes into its folder and starts no pop3d".into());
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Workload {
    Sessions,
    Retr,
    Idle,
    Bigbox,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Sessions => "sessions",
            Workload::Retr => "retr",
            Workload::Idle => "idle",
            Workload::Bigbox => "bigbox",
        }
    }

    fn parse_list(list: &str) -> Result<Vec<Workload>, String> {
        let mut out = Vec::new();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let workload = match name {
                "sessions" => Workload::Sessions,
                "retr" => Workload::Retr,
                "idle" => Workload::Idle,
                "bigbox" => Workload::Bigbox,
                other => {
                    return Err(format!(
                        "unknown workload {other:?}: use sessions, retr, idle, bigbox"
                    ));
                }
            };
            if !out.contains(&workload) {
                out.push(workload);
            }
        }
        if out.is_empty() {
            return Err("--bench names no workload".into());
        }
        Ok(out)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Transport {
    /// POP3 over TCP, no TLS.
    Plain,
    /// Plain connection, then STLS (RFC 2595) and a TLS handshake before login.
    Stls,
    /// TLS from the first byte (RFC 8314, port 995).
    Tls,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Plain => "plain",
            Transport::Stls => "stls",
            Transport::Tls => "tls",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What the workloads run against
// ---------------------------------------------------------------------------------------------

/// The server under test, and what the workloads know about it.
struct Env {
    plain: SocketAddr,
    /// The implicit-TLS listener, if there is one.
    tls_addr: Option<SocketAddr>,
    /// None when certificates can't be checked (--target without --ca or --insecure): the
    /// TLS transports are then skipped rather than run unverified by accident.
    tls: Option<Arc<ClientConfig>>,
    server_name: ServerName<'static>,
    user: String,
    pass: String,
    /// Who the idle workload logs in as.
    idle_login: Login,
    /// Who the bigbox workload logs in as; None when no big mailbox is known (--target
    /// without --bigbox-user or --data).
    bigbox_login: Option<Login>,
    /// The server's processes, for their CPU time and memory; None when unknown.
    server: Option<ServerProcs>,
    /// What each message must be on the wire, when the data set is known (self-contained
    /// mode, or --data).
    expected: Option<Expectations>,
    /// The generated folder and the daemon serving it (self-contained mode).
    fixture: Option<Fixture>,
    /// Names the server for the report header.
    label: String,
    /// Messages and octets (CRLF) of the benchmark mailbox, when known up front.
    mailbox: Option<(usize, u64)>,
    /// What the first TLS handshake agreed on (version, cipher suite, key exchange).
    tls_negotiated: OnceLock<String>,
}

/// A user name and password.
type Login = (String, String);

/// The data set's login for `user`: its password is its name.
fn data_login(user: &str) -> Login {
    (user.to_owned(), user.to_owned())
}

/// The self-contained setup. Field order matters: fields drop in order, so the daemon is
/// killed before the folder it serves is removed.
struct Fixture {
    daemon: Daemon,
    root: tempfile::TempDir,
}

impl Fixture {
    fn maildir(&self, user: &str) -> PathBuf {
        self.root.path().join("mail").join(user).join("Maildir")
    }
}

/// What RETR must send for one message: the file with CRLF line ends, de-stuffed.
#[derive(Clone, Copy)]
struct Expected {
    size: u64,
    /// XXH3-128 of those octets. The check catches corrupted, truncated or misplaced
    /// content, not forgery, so a fast non-cryptographic hash does: SHA-256 cost the
    /// client ~0.7 ms of CPU per MB, CPU taken from the server it shares the machine with.
    xxh3: u128,
    /// The file has no final line end: RETR adds a CRLF before the terminator.
    completed: bool,
}

impl Expected {
    fn of_file(body: &[u8]) -> Expected {
        let wire = crlf(body);
        Expected {
            size: wire.len() as u64,
            xxh3: xxh3_128(&wire),
            completed: !body.is_empty() && !body.ends_with(b"\n"),
        }
    }
}

/// What RETR must send for each message of the benchmark mailbox.
struct Expectations {
    /// By unique name, which is pop3d's UIDL.
    by_uidl: HashMap<String, Expected>,
    /// By content, for a --target server whose UIDLs are not the file names (Dovecot
    /// numbers its messages): RETR must then send one of the data set's messages, byte for
    /// byte. None in the self-contained mode, where every UIDL must be a file name.
    by_digest: Option<HashMap<u128, Expected>>,
}

impl Env {
    /// Generates the mailboxes and certificate, starts the release daemon on loopback and
    /// waits until it is ready.
    fn self_contained(args: &Args, workloads: &[Workload]) -> Result<Env, String> {
        let bin = daemon_binary(args)?;
        let root = match &args.tmpdir {
            Some(dir) => tempfile::Builder::new()
                .prefix("pop3bench-")
                .tempdir_in(dir),
            None => tempfile::Builder::new().prefix("pop3bench-").tempdir(),
        }
        .map_err(|e| format!("cannot create a temporary folder: {e}"))?;
        let child = ChildSlot::default();
        clean_up_on_signal(child.clone(), root.path().to_owned())?;
        let path = |name: &str| root.path().join(name);
        // The big mailbox is generated by its workload, which reports how long that took.
        let (cert_pem, expected) = write_data_set(
            root.path(),
            args,
            workloads.contains(&Workload::Idle),
            false,
        )?;
        let octets: u64 = expected.values().map(|e| e.size).sum();
        let mail = root.path().join("mail");

        // Room for the idle sessions plus everything else; the default (1000) would turn
        // the idle workload's sessions away.
        let max_connections = (args.idle + args.idle_tls + 3 * args.clients + 64).max(1000);
        let mut daemon_args: Vec<String> = [
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--listen-tls",
            "127.0.0.1:0",
            "--tls-cert",
            &path("cert.pem").to_string_lossy(),
            "--tls-key",
            &path("key.pem").to_string_lossy(),
            "--users",
            &path("users").to_string_lossy(),
            "--maildir",
            &format!("{}/%u/Maildir", mail.display()),
            "--mode",
            "keep",
            "--auth-failure-delay",
            "0s",
            "--max-connections",
            &max_connections.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // All our connections come from one address as one user, which the per-address
        // limits (when this pop3d has them) would take for an attack.
        let help = serve_help(&bin);
        for flag in ["--max-connections-per-ip", "--max-sessions-per-user-ip"] {
            if help.contains(flag) {
                daemon_args.extend([flag.to_owned(), max_connections.to_string()]);
            }
        }
        // pop3d refuses to serve as root unless told; in a container we often are root.
        if running_as_root() && help.contains("--allow-root") {
            daemon_args.push("--allow-root".into());
        }
        let (daemon, plain, tls_addr) = Daemon::start(&bin, &daemon_args, child)?;
        let pid = daemon.pid;
        eprintln!(
            "pop3bench: {} (pid {pid}) ready on {plain} and {tls_addr} (TLS)",
            bin.display(),
        );
        let revision = pop3d_revision().unwrap_or_else(|| "(revision unknown)".into());
        let (user, pass) = data_login(BENCH_USER);
        let mut env = Env {
            plain,
            tls_addr: Some(tls_addr),
            tls: Some(client_tls(
                Trust::Pem(cert_pem.as_bytes()),
                args.tls_resume,
            )?),
            server_name: server_name(&args.server_name)?,
            user,
            pass,
            idle_login: data_login(IDLE_USER),
            bigbox_login: Some(data_login(BIGBOX_USER)),
            server: Some(ServerProcs::new(&[pid])),
            expected: Some(Expectations {
                by_uidl: expected,
                by_digest: None,
            }),
            fixture: Some(Fixture { daemon, root }),
            label: args.label.clone().unwrap_or_else(|| {
                format!("pop3d {revision} (self-contained: release build, keep mode, loopback)")
            }),
            mailbox: Some((args.messages, octets)),
            tls_negotiated: OnceLock::new(),
        };
        env.warm_up()?;
        Ok(env)
    }

    /// A server someone else started: nothing is generated and nothing is stopped. With
    /// --data, the logins and certificate default to the data set's, and what RETR must send
    /// is read from its files.
    fn target(args: &Args, plain: SocketAddr, workloads: &[Workload]) -> Result<Env, String> {
        let data = args.data.as_deref();
        let (user, pass) = login_from("", &args.user, &args.pass, data, BENCH_USER)?
            .ok_or("--target needs --user and --pass, or --data")?;
        let idle_login = login_from("idle-", &args.idle_user, &args.idle_pass, data, IDLE_USER)?
            .unwrap_or_else(|| (user.clone(), pass.clone()));
        let bigbox_login = login_from(
            "bigbox-",
            &args.bigbox_user,
            &args.bigbox_pass,
            data,
            BIGBOX_USER,
        )?;
        let data_cert = data.map(|d| d.join("cert.pem"));
        let tls = match (&args.ca, args.insecure, &data_cert) {
            (Some(_), true, _) => return Err("--ca and --insecure exclude each other".into()),
            (Some(ca), false, _) => Some(client_tls(Trust::File(ca), args.tls_resume)?),
            (None, true, _) => Some(client_tls(Trust::Anything, args.tls_resume)?),
            (None, false, Some(cert)) => Some(client_tls(Trust::File(cert), args.tls_resume)?),
            (None, false, None) => {
                eprintln!(
                    "pop3bench: no --ca or --insecure: skipping the TLS transports (stls, tls)"
                );
                None
            }
        };
        let expected = match data {
            Some(dir) if workloads.contains(&Workload::Retr) => {
                let maildir = dir.join("mail").join(&user).join("Maildir");
                Some(read_expected(&maildir)?)
            }
            _ => None,
        };
        let mailbox = expected.as_ref().map(|e| {
            let octets = e.by_uidl.values().map(|m| m.size).sum();
            (e.by_uidl.len(), octets)
        });
        let label = args
            .label
            .clone()
            .unwrap_or_else(|| format!("--target {plain} (user {user})"));
        let mut env = Env {
            plain,
            tls_addr: args.tls_target,
            tls,
            server_name: server_name(&args.server_name)?,
            user,
            pass,
            idle_login,
            bigbox_login,
            server: (!args.server_pid.is_empty()).then(|| ServerProcs::new(&args.server_pid)),
            expected,
            fixture: None,
            label,
            mailbox,
            tls_negotiated: OnceLock::new(),
        };
        env.warm_up()?;
        Ok(env)
    }

    /// The first login reads every message once to learn its size (then cached, by pop3d
    /// and Dovecot alike); doing it here keeps that one-off cost out of the sessions numbers
    /// (bigbox measures it).
    fn warm_up(&mut self) -> Result<(), String> {
        let started = Instant::now();
        let mut c = Client::connect(self, Transport::Plain, SMALL_BUF)?;
        c.login(&self.user, &self.pass)?;
        let stat = c.cmd("STAT")?;
        c.quit()?;
        eprintln!(
            "pop3bench: first login (sizes computed and cached) took {:.0} ms: {stat}",
            started.elapsed().as_secs_f64() * 1e3
        );
        Ok(())
    }

    /// The transports the sessions workload runs over.
    fn session_transports(&self) -> Vec<Transport> {
        let mut out = vec![Transport::Plain];
        if self.tls.is_some() {
            out.push(Transport::Stls);
            if self.tls_addr.is_some() {
                out.push(Transport::Tls);
            }
        }
        out
    }

    /// The transports the retr workload runs over: STLS would only repeat tls's bulk path.
    fn retr_transports(&self) -> Vec<Transport> {
        let mut out = vec![Transport::Plain];
        if self.tls.is_some() && self.tls_addr.is_some() {
            out.push(Transport::Tls);
        }
        out
    }

    fn cpu_seconds(&self) -> Option<f64> {
        self.server.as_ref()?.cpu_seconds()
    }

    fn memory(&self) -> Option<Memory> {
        self.server.as_ref()?.memory()
    }
}

/// CPU seconds the server spent since `before`, if both readings exist.
/// /proc counts CPU time in clock ticks (10 ms): over a shorter interval than this, a
/// CPU figure is mostly rounding, and none is reported.
const MIN_CPU_INTERVAL: Duration = Duration::from_millis(500);

/// The server's CPU time from a starting point, for per-session and per-MB costs.
struct ServerCpu {
    at: Instant,
    before: Option<f64>,
}

impl ServerCpu {
    fn start(env: &Env) -> ServerCpu {
        ServerCpu {
            at: Instant::now(),
            before: env.cpu_seconds(),
        }
    }

    /// CPU seconds the server used since `start`; None if unknown or too short to tell.
    fn used(&self, env: &Env) -> Option<f64> {
        if self.at.elapsed() < MIN_CPU_INTERVAL {
            return None;
        }
        Some(env.cpu_seconds()? - self.before?)
    }
}

/// The login given by `--{prefix}user` and `--{prefix}pass`, or with --data the data set's
/// `default` user; None when neither.
fn login_from(
    prefix: &str,
    user: &Option<String>,
    pass: &Option<String>,
    data: Option<&Path>,
    default: &str,
) -> Result<Option<Login>, String> {
    match (user, pass) {
        (Some(user), Some(pass)) => Ok(Some((user.clone(), pass.clone()))),
        (None, None) => Ok(data.map(|_| data_login(default))),
        _ => Err(format!("--{prefix}user and --{prefix}pass go together")),
    }
}

fn server_name(name: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(name.to_owned()).map_err(|e| format!("--server-name {name:?}: {e}"))
}

/// The pop3d next to this example: `target/release/examples/pop3bench` →
/// `target/release/pop3d`, so the example always runs the daemon of the same build.
fn daemon_binary(args: &Args) -> Result<PathBuf, String> {
    let bin = match &args.pop3d {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .map_err(|e| format!("cannot find this program's path: {e}"))?
            .parent()
            .and_then(Path::parent)
            .map(|dir| dir.join("pop3d"))
            .ok_or("cannot find the target directory")?,
    };
    if !bin.is_file() {
        return Err(format!(
            "no pop3d binary at {}: run `cargo build --release` first (or pass --pop3d PATH)",
            bin.display()
        ));
    }
    Ok(bin)
}

/// `pop3d serve --help`, to pass only the flags this build knows: an older pop3d (given
/// with --pop3d, to compare revisions) rejects flags it does not have.
fn serve_help(bin: &Path) -> String {
    Command::new(bin)
        .args(["serve", "--help"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Whether our effective uid is 0, from /proc/self/status ("Uid: real effective ...").
fn running_as_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let uids = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))?
                .to_owned();
            uids.split_whitespace().nth(1).map(|euid| euid == "0")
        })
        .unwrap_or(false)
}

/// `git rev-parse --short HEAD` of the source tree this example was built from, with a mark
/// when tracked files have local changes; None when git or the repository is unavailable.
fn pop3d_revision() -> Option<String> {
    let dir = env!("CARGO_MANIFEST_DIR");
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let revision = git(&["rev-parse", "--short", "HEAD"])?;
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty {
        format!("{revision}+changes")
    } else {
        revision
    })
}

// ---------------------------------------------------------------------------------------------
// The daemon
// ---------------------------------------------------------------------------------------------

/// The pop3d child process. Killed when dropped, so that no exit path (an error, a panic)
/// leaves a daemon running. A Ctrl-C reaches it too: it is in our process group.
struct Daemon {
    child: ChildSlot,
    pid: u32,
    log: Arc<Mutex<ServerLog>>,
}

/// What the daemon logged, read continuously so that it never blocks on a full pipe.
#[derive(Default)]
struct ServerLog {
    lines: u64,
    /// Everything up to "ready", shown if the daemon fails to start.
    startup: String,
    warnings: u64,
    errors: u64,
    /// The first warning and error lines, verbatim.
    samples: Vec<String>,
    /// How sessions ended: the `end=` word of each "session end" line.
    ends: BTreeMap<String, u64>,
}

impl ServerLog {
    fn summary(&self) -> ServerLogSummary {
        ServerLogSummary {
            lines: self.lines,
            warnings: self.warnings,
            errors: self.errors,
            samples: self.samples.clone(),
            ends: self.ends.clone(),
        }
    }
}

struct ServerLogSummary {
    lines: u64,
    warnings: u64,
    errors: u64,
    samples: Vec<String>,
    ends: BTreeMap<String, u64>,
}

/// The listeners a starting daemon has announced.
type Listeners = (Option<SocketAddr>, Option<SocketAddr>);

impl Daemon {
    /// Starts `pop3d ARGS` and waits for its "ready" line, returning its plain and
    /// implicit-TLS addresses (it binds port 0: the kernel picks free ports).
    fn start(
        bin: &Path,
        args: &[String],
        slot: ChildSlot,
    ) -> Result<(Daemon, SocketAddr, SocketAddr), String> {
        let mut child = Command::new(bin)
            .args(args)
            .env("RUST_LOG", "warn,pop3d::server=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let stderr = child.stderr.take().expect("stderr was piped");
        let pid = child.id();
        *lock(&slot) = Some(child);
        // From here on the guard owns the child: every early return below kills it.
        let daemon = Daemon {
            child: slot,
            pid,
            log: Arc::new(Mutex::new(ServerLog::default())),
        };
        let (ready_tx, ready_rx) = mpsc::channel();
        let log = daemon.log.clone();
        thread::Builder::new()
            .name("pop3d-log".into())
            .spawn(move || drain_log(stderr, &log, ready_tx))
            .map_err(|e| format!("cannot start the log reader: {e}"))?;
        let listeners = ready_rx.recv_timeout(START_TIMEOUT);
        let startup = || daemon.log().startup.clone();
        match listeners {
            Ok((Some(plain), Some(tls))) => Ok((daemon, plain, tls)),
            Ok(_) => Err(format!(
                "pop3d did not announce both listeners; its log:\n{}",
                startup()
            )),
            // The log reader ended: the daemon closed its stderr, which means it exited.
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = lock(&daemon.child)
                    .as_mut()
                    .and_then(|c| c.wait().ok())
                    .map_or("an unknown status".into(), |s| s.to_string());
                Err(format!(
                    "pop3d exited ({status}) before it was ready; its log:\n{}",
                    startup()
                ))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => Err(format!(
                "pop3d did not get ready within {} s; its log:\n{}",
                START_TIMEOUT.as_secs(),
                startup()
            )),
        }
    }

    fn log(&self) -> MutexGuard<'_, ServerLog> {
        lock(&self.log)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        stop(&self.child);
    }
}

/// The daemon's process, shared by its guard and the signal handler: whichever comes first
/// stops it.
type ChildSlot = Arc<Mutex<Option<Child>>>;

fn stop(slot: &ChildSlot) {
    if let Some(mut child) = lock(slot).take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A poisoned lock still holds usable data here: the daemon slot and log counters are only
/// ever replaced or incremented whole.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// SIGINT, SIGTERM and SIGHUP end a process without unwinding, so the guards would not run:
/// this handler stops the daemon and removes the temporary folder itself, then exits.
fn clean_up_on_signal(child: ChildSlot, root: PathBuf) -> Result<(), String> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .map_err(|e| format!("cannot watch signals: {e}"))?;
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                stop(&child);
                let _ = fs::remove_dir_all(&root);
                eprintln!(
                    "pop3bench: interrupted: stopped pop3d, removed {}",
                    root.display()
                );
                std::process::exit(128 + signal);
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    Ok(())
}

/// Reads the daemon's log to its end: sends the listeners once "ready" appears, then keeps
/// counting warnings, errors and session ends.
fn drain_log(stderr: ChildStderr, log: &Mutex<ServerLog>, ready: mpsc::Sender<Listeners>) {
    let mut ready = Some(ready);
    let (mut plain, mut tls) = (None, None);
    let mut reader = BufReader::new(stderr);
    let mut raw = Vec::new();
    loop {
        raw.clear();
        match reader.read_until(b'\n', &mut raw) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&raw);
        let line = text.trim_end();
        let mut log = lock(log);
        log.lines += 1;
        if ready.is_some() {
            if log.startup.len() < 64 * 1024 {
                log.startup.push_str(line);
                log.startup.push('\n');
            }
            if let Some(rest) = line.split("listening on ").nth(1) {
                let addr = rest.split_whitespace().next().and_then(|a| a.parse().ok());
                if rest.contains("implicit TLS") {
                    tls = tls.or(addr);
                } else {
                    plain = plain.or(addr);
                }
            }
            if line.ends_with("] ready")
                && let Some(tx) = ready.take()
            {
                let _ = tx.send((plain, tls));
            }
        }
        // env_logger's format: "[TIME LEVEL target] message".
        let level = line
            .strip_prefix('[')
            .and_then(|l| l.split_whitespace().nth(1));
        match level {
            Some("WARN") => log.warnings += 1,
            Some("ERROR") => log.errors += 1,
            _ => {}
        }
        if matches!(level, Some("WARN" | "ERROR")) && log.samples.len() < 20 {
            log.samples.push(line.to_owned());
        }
        if line.contains("session end:")
            && let Some(end) = line.split(" end=").nth(1)
        {
            let word = end.split([' ', '(']).next().unwrap_or(end).to_owned();
            *log.ends.entry(word).or_default() += 1;
        }
    }
}

/// Clock ticks per second (USER_HZ), the unit of /proc's CPU times; almost always 100.
fn clock_ticks() -> f64 {
    static TICKS: LazyLock<f64> = LazyLock::new(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    });
    *TICKS
}

/// CPU time of the whole machine, of this process and of the server at one moment. Two of
/// them tell how much CPU went to other processes meanwhile: on a shared machine a busy
/// neighbour skews every number, and the report says so rather than hiding it.
struct CpuSnapshot {
    at: Instant,
    /// Busy time of all CPUs (user, nice, system, irq, softirq, steal), from /proc/stat.
    machine: f64,
    own: f64,
    server: f64,
}

impl CpuSnapshot {
    fn take(env: &Env) -> Option<CpuSnapshot> {
        let stat = fs::read_to_string("/proc/stat").ok()?;
        let ticks: Vec<u64> = stat
            .lines()
            .next()?
            .strip_prefix("cpu ")?
            .split_whitespace()
            .map(|t| t.parse().unwrap_or(0))
            .collect();
        // user nice system idle iowait irq softirq steal (guest time is inside user).
        let busy: u64 = [0, 1, 2, 5, 6, 7]
            .iter()
            .filter_map(|&i| ticks.get(i))
            .sum();
        Some(CpuSnapshot {
            at: Instant::now(),
            machine: busy as f64 / clock_ticks(),
            own: Proc::new(std::process::id()).cpu_seconds()?,
            server: env.cpu_seconds().unwrap_or(0.0),
        })
    }

    /// Who used the CPUs since `self`.
    fn usage_since(&self, env: &Env) -> Option<CpuUsage> {
        let now = CpuSnapshot::take(env)?;
        let wall = now.at.duration_since(self.at);
        if wall < MIN_CPU_INTERVAL {
            return None;
        }
        let wall = wall.as_secs_f64();
        let own = (now.own - self.own) / wall;
        let server = (now.server - self.server) / wall;
        let others = (now.machine - self.machine) / wall - own - server;
        let cpus = thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        Some(CpuUsage {
            client: own,
            server: env.server.is_some().then_some(server),
            others_share: (others / cpus).clamp(0.0, 1.0),
        })
    }
}

/// Average CPU use over a step: the client and server in CPUs (1.0 = one busy CPU), other
/// processes as a share of the machine.
#[derive(Clone, Copy)]
struct CpuUsage {
    client: f64,
    server: Option<f64>,
    others_share: f64,
}

impl std::fmt::Display for CpuUsage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "client {:.2} CPUs", self.client)?;
        if let Some(server) = self.server {
            write!(f, ", server {server:.2} CPUs")?;
        }
        let others = self.others_share * 100.0;
        // Above this, the numbers of the step are not to be trusted.
        if self.others_share > 0.10 {
            write!(f, ", **other processes {others:.0}% of the machine**")
        } else {
            write!(f, ", others {others:.0}%")
        }
    }
}

/// One process as /proc shows it: CPU time and memory.
struct Proc {
    pid: u32,
    /// Clock ticks per second, the unit of /proc/PID/stat's times.
    ticks_per_second: f64,
}

/// Memory of the server's processes, summed.
#[derive(Clone, Copy)]
struct Memory {
    /// Counts a page shared by several processes once in each: PSS is the fair sum.
    rss_kb: u64,
    /// Proportional set size: shared pages divided among their users. None without
    /// smaps_rollup (old kernels, or processes we may not inspect).
    pss_kb: Option<u64>,
    processes: usize,
}

impl Proc {
    fn new(pid: u32) -> Proc {
        Proc {
            pid,
            ticks_per_second: clock_ticks(),
        }
    }

    /// Numeric fields of /proc/PID/stat, by their number in proc(5).
    fn stat<const N: usize>(&self, numbers: [usize; N]) -> Option<[u64; N]> {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        // Field 2, the command name, is in parentheses and may hold spaces: count from
        // after it, where field 3 comes first.
        let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
        let mut out = [0; N];
        for (value, number) in out.iter_mut().zip(numbers) {
            *value = fields.get(number.checked_sub(3)?)?.parse().ok()?;
        }
        Some(out)
    }

    /// CPU time of all the process's threads. /proc/PID/stat's utime + stime (fields 14
    /// and 15) count ended threads too, but in whole clock ticks, rounded down for each
    /// process: a process that ran 4 ms shows 0, and Dovecot's thousand short-lived
    /// processes would lose most of their time. schedstat counts live threads to the
    /// nanosecond. The larger of the two is right to within a tick either way.
    fn cpu_seconds(&self) -> Option<f64> {
        let [utime, stime] = self.stat([14, 15])?;
        let ticks = (utime + stime) as f64 / self.ticks_per_second;
        Some(
            self.live_threads_cpu_seconds()
                .map_or(ticks, |exact| exact.max(ticks)),
        )
    }

    /// The run time of the process's live threads, from the first field of each
    /// /proc/PID/task/TID/schedstat (nanoseconds); None where the kernel lacks it.
    fn live_threads_cpu_seconds(&self) -> Option<f64> {
        let mut nanoseconds = 0u64;
        for task in fs::read_dir(format!("/proc/{}/task", self.pid)).ok()? {
            let schedstat = fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
            nanoseconds += schedstat.split_whitespace().next()?.parse::<u64>().ok()?;
        }
        Some(nanoseconds as f64 / 1e9)
    }

    /// cpu_seconds plus that of its ended children it has waited for (cutime + cstime,
    /// fields 16 and 17: summed exactly, rounded once), which include their own.
    fn cpu_seconds_with_ended_children(&self) -> Option<f64> {
        let [cutime, cstime] = self.stat([16, 17])?;
        Some(self.cpu_seconds()? + (cutime + cstime) as f64 / self.ticks_per_second)
    }

    fn parent(&self) -> Option<u32> {
        let [ppid] = self.stat([4])?;
        u32::try_from(ppid).ok()
    }

    fn memory(&self) -> Option<Memory> {
        let field = |text: &str, name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kb| kb.parse::<u64>().ok())
        };
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let rollup = fs::read_to_string(format!("/proc/{}/smaps_rollup", self.pid)).ok();
        Some(Memory {
            rss_kb: field(&status, "VmRSS:")?,
            pss_kb: rollup.and_then(|r| field(&r, "Pss:")),
            processes: 1,
        })
    }
}

/// The server's processes: the given ones and all their descendants, found afresh at each
/// reading, since a server like Dovecot starts and ends login, auth and mail processes as
/// it goes. For pop3d, one process (its threads are inside it).
struct ServerProcs {
    roots: Vec<u32>,
}

/// Bound on the processes walked, against a runaway fork loop on the machine.
const MAX_SERVER_PROCESSES: usize = 200_000;

impl ServerProcs {
    fn new(pids: &[u32]) -> ServerProcs {
        ServerProcs {
            roots: pids.to_vec(),
        }
    }

    /// The roots and their live descendants, from the parent of every process in /proc.
    fn pids(&self) -> Vec<u32> {
        let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
        if let Ok(entries) = fs::read_dir("/proc") {
            for entry in entries.flatten().take(MAX_SERVER_PROCESSES) {
                let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                    continue;
                };
                if let Some(parent) = Proc::new(pid).parent() {
                    children.entry(parent).or_default().push(pid);
                }
            }
        }
        let mut out = self.roots.clone();
        let mut next = 0;
        while next < out.len() && out.len() < MAX_SERVER_PROCESSES {
            if let Some(kids) = children.get(&out[next]) {
                out.extend(kids.iter().filter(|k| !self.roots.contains(k)));
            }
            next += 1;
        }
        out
    }

    /// CPU seconds of all the processes, with their ended children's: the work of a
    /// process that ended moves into its parent's count when the parent waits for it, so
    /// short-lived processes are not lost. None if a root process is gone.
    fn cpu_seconds(&self) -> Option<f64> {
        let mut total = 0.0;
        for pid in self.pids() {
            match Proc::new(pid).cpu_seconds_with_ended_children() {
                Some(seconds) => total += seconds,
                None if self.roots.contains(&pid) => return None,
                // Ended since we listed it: its parent counts it now, or soon.
                None => {}
            }
        }
        Some(total)
    }

    /// Memory of all the processes, summed; None if a root process is gone.
    fn memory(&self) -> Option<Memory> {
        let mut total = Memory {
            rss_kb: 0,
            pss_kb: Some(0),
            processes: 0,
        };
        for pid in self.pids() {
            let Some(m) = Proc::new(pid).memory() else {
                if self.roots.contains(&pid) {
                    return None;
                }
                continue;
            };
            total.rss_kb += m.rss_kb;
            total.pss_kb = total.pss_kb.zip(m.pss_kb).map(|(a, b)| a + b);
            total.processes += 1;
        }
        Some(total)
    }
}

// ---------------------------------------------------------------------------------------------
// The mailbox generator
// ---------------------------------------------------------------------------------------------

/// splitmix64: tiny, fast and deterministic. The mailbox must be the same on every run so
/// that numbers from different runs (and different servers) compare.
struct Rng(u64);

impl Rng {
    /// A generator for message `n`: each message has its own stream, so threads can
    /// generate in any order and still produce the same mailbox.
    fn for_message(seed: u64, n: u64) -> Rng {
        let mut rng = Rng(seed ^ n.wrapping_mul(0xA24B_AED4_963E_E407));
        rng.next();
        rng
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn between(&mut self, low: usize, high: usize) -> usize {
        low + self.below((high - low + 1) as u64) as usize
    }
}

/// The size mix of a generated mailbox.
#[derive(Clone, Copy)]
enum Mix {
    /// 70% 2–8 KB text, 25% 20–100 KB with an attachment, 5% 0.5–2 MB attachments: a mail
    /// volume dominated by the few big messages, as in real mailboxes.
    Mixed,
    /// 1–3 KB text only, for the mailboxes that test message counts rather than bytes.
    Small,
}

impl Mix {
    fn size(self, rng: &mut Rng) -> usize {
        match self {
            Mix::Small => rng.between(1_000, 3_000),
            Mix::Mixed => match rng.below(100) {
                0..70 => rng.between(2_000, 8_000),
                70..95 => rng.between(20_000, 100_000),
                _ => rng.between(500_000, 2_000_000),
            },
        }
    }
}

/// Words for the text lines, split once on first use.
static WORDS: LazyLock<Vec<&str>> = LazyLock::new(|| {
    "the mail server sends every message with line ends and a pop3 maildir keep mode \
     phone laptop delivery inbox report meeting tomorrow attached please find thanks \
     regards of to in quarterly numbers draft review schedule lunch"
        .split(' ')
        .collect()
});

/// Lines that start with '.', which RETR must byte-stuff (RFC 1939 §3).
const DOT_LINES: &[&[u8]] = &[
    b".\n",
    b"..\n",
    b".hidden line that starts with a dot\n",
    b"...and an ellipsis\n",
    b". \n",
];

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// One generated message with LF line ends, about `size` octets. The content exercises the
/// server's body path: long base64 runs (most of real mail volume), text with lines that
/// start with '.' (byte-stuffing), and now and then no final newline (RETR must add one).
fn make_message(rng: &mut Rng, n: usize, size: usize, seed: u64) -> Vec<u8> {
    let mut m = Vec::with_capacity(size + 512);
    let sender = rng.below(500);
    m.extend_from_slice(
        format!(
            "Return-Path: <sender{sender}@example.com>\n\
             From: Sender {sender} <sender{sender}@example.com>\n\
             To: bench@example.com\n\
             Subject: pop3bench message {n}\n\
             Date: Thu, 26 Nov 2026 12:00:00 +0000\n\
             Message-ID: <{n}.{seed}@pop3bench.example>\n\
             MIME-Version: 1.0\n"
        )
        .as_bytes(),
    );
    if size < 12_000 {
        m.extend_from_slice(b"Content-Type: text/plain; charset=us-ascii\n\n");
        text_lines(rng, &mut m, size);
    } else {
        let boundary = format!("=_pop3bench_{n}");
        m.extend_from_slice(
            format!(
                "Content-Type: multipart/mixed; boundary=\"{boundary}\"\n\n\
                 --{boundary}\nContent-Type: text/plain; charset=us-ascii\n\n"
            )
            .as_bytes(),
        );
        let text_end = m.len() + rng.between(500, 3_000);
        text_lines(rng, &mut m, text_end);
        m.extend_from_slice(
            format!(
                "\n--{boundary}\nContent-Type: application/octet-stream\n\
                 Content-Transfer-Encoding: base64\n\
                 Content-Disposition: attachment; filename=\"file{n}.bin\"\n\n"
            )
            .as_bytes(),
        );
        base64_lines(rng, &mut m, size.saturating_sub(boundary.len() + 8));
        m.extend_from_slice(format!("\n--{boundary}--\n").as_bytes());
    }
    if rng.below(50) == 0 {
        m.pop();
    }
    m
}

/// Text lines of 30–76 characters until `out` holds `until` octets, with empty lines and
/// lines starting with '.' mixed in.
fn text_lines(rng: &mut Rng, out: &mut Vec<u8>, until: usize) {
    while out.len() < until {
        match rng.below(40) {
            0 => out.extend_from_slice(DOT_LINES[rng.below(DOT_LINES.len() as u64) as usize]),
            1 | 2 => out.push(b'\n'),
            _ => {
                let width = rng.between(30, 76);
                let start = out.len();
                while out.len() - start < width {
                    if out.len() > start {
                        out.push(b' ');
                    }
                    let word = WORDS[rng.below(WORDS.len() as u64) as usize];
                    out.extend_from_slice(word.as_bytes());
                }
                out.push(b'\n');
            }
        }
    }
}

/// Base64-alphabet lines of 76 characters (as MIME encoders write them) until `out` holds
/// `until` octets.
fn base64_lines(rng: &mut Rng, out: &mut Vec<u8>, until: usize) {
    while out.len() < until {
        let (mut bits, mut left) = (0u64, 0u32);
        for _ in 0..76 {
            if left < 6 {
                bits = rng.next();
                left = 64;
            }
            out.push(BASE64[(bits & 63) as usize]);
            bits >>= 6;
            left -= 6;
        }
        out.push(b'\n');
    }
}

/// Fills a Maildir with `count` generated messages, delivered as an MDA does (written in
/// tmp/, renamed into new/) under unique names `<time>.<n>.bench`, on all CPUs, then
/// dates its folders back as if the mail had arrived a while ago. Returns what RETR must
/// send for each, by unique name (which is also its UIDL).
fn generate_mailbox(
    dir: &Path,
    count: usize,
    seed: u64,
    mix: Mix,
) -> Result<HashMap<String, Expected>, String> {
    for sub in ["tmp", "new", "cur"] {
        fs::create_dir_all(dir.join(sub))
            .map_err(|e| format!("cannot create {}: {e}", dir.join(sub).display()))?;
    }
    let time = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let threads = thread::available_parallelism().map_or(2, |n| n.get().min(8));
    let parts: Vec<Result<Vec<(String, Expected)>, String>> = thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|first| {
                scope.spawn(move || {
                    let mut made = Vec::with_capacity(count / threads + 1);
                    for n in (first..count).step_by(threads) {
                        let mut rng = Rng::for_message(seed, n as u64);
                        let size = mix.size(&mut rng);
                        let body = make_message(&mut rng, n, size, seed);
                        let name = format!("{time}.{n:07}.bench");
                        let tmp = dir.join("tmp").join(&name);
                        fs::write(&tmp, &body)
                            .and_then(|()| fs::rename(&tmp, dir.join("new").join(&name)))
                            .map_err(|e| format!("cannot deliver {}: {e}", tmp.display()))?;
                        made.push((name, Expected::of_file(&body)));
                    }
                    Ok(made)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("a generator thread panicked"))
            .collect()
    });
    let mut all = HashMap::with_capacity(count);
    for part in parts {
        all.extend(part?);
    }
    date_back(dir)?;
    Ok(all)
}

/// How long ago a generated Maildir's folders were last changed, as far as their times go.
const DELIVERED_AGO: Duration = Duration::from_secs(60);

/// Sets the modification and access times of `dir`'s tmp/, new/ and cur/ back by
/// DELIVERED_AGO. pop3d keeps a Maildir's listing in memory only once new/ and cur/ have
/// not changed for a second (a later change could otherwise leave their times as they
/// were); a mailbox measured right after it was generated would go uncached and the warm
/// passes would measure a re-read rather than the steady state of mail delivered earlier.
fn date_back(dir: &Path) -> Result<(), String> {
    let then = SystemTime::now() - DELIVERED_AGO;
    let times = fs::FileTimes::new().set_modified(then).set_accessed(then);
    for sub in ["tmp", "new", "cur"] {
        let folder = dir.join(sub);
        fs::File::open(&folder)
            .and_then(|f| f.set_times(times))
            .map_err(|e| format!("cannot set the times of {}: {e}", folder.display()))?;
    }
    Ok(())
}

/// Writes the data set into `root`: the users file (Dovecot's passwd-file format, `{PLAIN}`
/// passwords, so that any server reads it), a self-signed certificate and key for localhost,
/// and the benchmark mailbox; with `idle` and `bigbox`, those users' mailboxes too. Returns
/// the certificate (PEM) and what RETR must send for each message of the benchmark mailbox.
fn write_data_set(
    root: &Path,
    args: &Args,
    idle: bool,
    bigbox: bool,
) -> Result<(String, HashMap<String, Expected>), String> {
    let path = |name: &str| root.join(name);
    let write = |name: &str, data: &[u8]| {
        fs::write(path(name), data)
            .map_err(|e| format!("cannot write {}: {e}", path(name).display()))
    };
    let users: String = [BENCH_USER, IDLE_USER, BIGBOX_USER]
        .iter()
        .map(|u| format!("{u}:{{PLAIN}}{u}::::::\n"))
        .collect();
    write("users", users.as_bytes())?;
    let (cert_pem, key_pem) = pop3d::server::tls::self_signed(&["localhost", "127.0.0.1"])
        .map_err(|e| format!("cannot make a certificate: {e}"))?;
    write("cert.pem", cert_pem.as_bytes())?;
    write("key.pem", key_pem.as_bytes())?;

    let mail = root.join("mail");
    let started = Instant::now();
    let expected = generate_mailbox(
        &mail.join(BENCH_USER).join("Maildir"),
        args.messages,
        args.seed,
        Mix::Mixed,
    )?;
    let octets: u64 = expected.values().map(|e| e.size).sum();
    eprintln!(
        "pop3bench: generated {} messages ({:.1} MB with CRLF) in {} in {:.1} s",
        args.messages,
        octets as f64 / 1e6,
        root.display(),
        started.elapsed().as_secs_f64()
    );
    if idle {
        generate_mailbox(
            &mail.join(IDLE_USER).join("Maildir"),
            IDLE_MAILBOX,
            args.seed ^ 0x1d1e,
            Mix::Small,
        )?;
    }
    if bigbox {
        generate_bigbox(&mail.join(BIGBOX_USER).join("Maildir"), args)?;
    }
    Ok((cert_pem, expected))
}

/// The bigbox workload's mailbox: --bigbox small messages.
fn generate_bigbox(dir: &Path, args: &Args) -> Result<(), String> {
    let started = Instant::now();
    let generated = generate_mailbox(dir, args.bigbox, args.seed ^ 0xb16b0c, Mix::Small)?;
    eprintln!(
        "pop3bench: bigbox: generated {} messages ({:.1} MB) in {:.1} s",
        generated.len(),
        generated.values().map(|e| e.size).sum::<u64>() as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// --generate-only: the whole data set in `dir` (which must be new or empty, so that no
/// older mailbox mixes in), for servers that pop3bench does not start.
fn generate_only(args: &Args, dir: &Path) -> Result<(), String> {
    let started = Instant::now();
    match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(format!(
                    "{} is not empty: --generate-only writes a new data set",
                    dir.display()
                ));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?
        }
        Err(e) => return Err(format!("cannot read {}: {e}", dir.display())),
    }
    write_data_set(dir, args, true, true)?;
    eprintln!(
        "pop3bench: data set in {} after {:.1} s: users {BENCH_USER} ({} messages), \
         {IDLE_USER} ({IDLE_MAILBOX}), {BIGBOX_USER} ({}), each with its name as {{PLAIN}} \
         password; Maildirs mail/USER/Maildir; cert.pem, key.pem for localhost",
        dir.display(),
        started.elapsed().as_secs_f64(),
        args.messages,
        args.bigbox
    );
    Ok(())
}

/// What RETR must send for each message of a data set's Maildir that another server serves,
/// read from the files as they are now (a server may have moved them to cur/ and added flags
/// to their names), by unique name.
fn read_expected(dir: &Path) -> Result<Expectations, String> {
    let started = Instant::now();
    let mut by_uidl = HashMap::new();
    for sub in ["new", "cur"] {
        let folder = dir.join(sub);
        let entries =
            fs::read_dir(&folder).map_err(|e| format!("cannot read {}: {e}", folder.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("cannot read {}: {e}", folder.display()))?;
            let name = entry.file_name();
            let Some(name) = name.to_str().filter(|n| !n.starts_with('.')) else {
                continue;
            };
            let unique = name.split_once(':').map_or(name, |(unique, _)| unique);
            let body = fs::read(entry.path())
                .map_err(|e| format!("cannot read {}: {e}", entry.path().display()))?;
            by_uidl.insert(unique.to_owned(), Expected::of_file(&body));
        }
    }
    if by_uidl.is_empty() {
        return Err(format!("no messages in {}", dir.display()));
    }
    let by_digest = by_uidl.values().map(|e| (e.xxh3, *e)).collect();
    eprintln!(
        "pop3bench: read {} messages to check RETR against from {} in {:.1} s",
        by_uidl.len(),
        dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(Expectations {
        by_uidl,
        by_digest: Some(by_digest),
    })
}

/// A message as RETR sends it: CRLF line ends, the last line completed (the same rule as
/// the integration tests' `crlf`).
fn crlf(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 32 + 2);
    let mut prev = 0u8;
    for &b in body {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        if out.ends_with(b"\r") {
            out.push(b'\n');
        } else {
            out.extend_from_slice(b"\r\n");
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------------

/// Which server certificates the client accepts.
enum Trust<'a> {
    /// The self-signed certificate we generated.
    Pem(&'a [u8]),
    /// PEM certificate(s) from --ca.
    File(&'a Path),
    /// Anything (--insecure).
    Anything,
}

fn client_tls(trust: Trust<'_>, resume: bool) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS client setup: {e}"))?;
    let roots = |certs: Vec<CertificateDer<'static>>, from: &str| {
        let mut roots = RootCertStore::empty();
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("unusable certificate in {from}: {e}"))?;
        }
        if roots.is_empty() {
            return Err(format!("no certificate in {from}"));
        }
        Ok::<_, String>(roots)
    };
    let verifier: Arc<dyn ServerCertVerifier> = match trust {
        Trust::Pem(pem) => {
            let certs = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("generated certificate: {e}"))?;
            ChainVerifiedOnce::over(roots(certs, "the generated certificate")?, &provider)?
        }
        Trust::File(path) => {
            let shown = path.display().to_string();
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("--ca {shown}: {e}"))?;
            ChainVerifiedOnce::over(roots(certs, &shown)?, &provider)?
        }
        Trust::Anything => Arc::new(AcceptAnyCertificate(provider)),
    };
    let mut config = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    if !resume {
        // Every session pays a full handshake: the worst case, and the same for any server.
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(Arc::new(config))
}

/// The standard WebPKI checks, except that a certificate chain already found valid for the
/// same server name is accepted again without re-parsing it and re-checking its signatures:
/// every session still gets the server's whole chain and still checks the handshake
/// signature made with its key (which proves the server holds that key), but the client
/// stops paying a second ECDSA verification per session for a chain it has checked already
/// (the server's cost is what is measured; the client shares its CPUs). Any other chain
/// goes through the full checks.
#[derive(Debug)]
struct ChainVerifiedOnce {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    /// The last chain found valid (end entity first) and the server name it was valid for.
    verified: Mutex<Option<(Vec<CertificateDer<'static>>, ServerName<'static>)>>,
}

impl ChainVerifiedOnce {
    fn over(
        roots: RootCertStore,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Arc<dyn ServerCertVerifier>, String> {
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(|e| format!("TLS certificate verifier: {e}"))?;
        Ok(Arc::new(ChainVerifiedOnce {
            inner,
            verified: Mutex::new(None),
        }))
    }
}

impl ServerCertVerifier for ChainVerifiedOnce {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let same = |(chain, name): &(Vec<CertificateDer<'static>>, ServerName<'static>)| {
            name == server_name
                && chain.len() == intermediates.len() + 1
                && chain[0] == *end_entity
                && chain[1..] == *intermediates
        };
        if lock(&self.verified).as_ref().is_some_and(same) {
            return Ok(ServerCertVerified::assertion());
        }
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        let chain = std::iter::once(end_entity)
            .chain(intermediates)
            .map(|c| c.clone().into_owned())
            .collect();
        *lock(&self.verified) = Some((chain, server_name.to_owned()));
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[rustls::DistinguishedName]> {
        self.inner.root_hint_subjects()
    }
}

/// --insecure: accepts any certificate and signature, to measure a server whose
/// certificate we can't check. Only ever built behind that flag.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

// ---------------------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------------------

/// A connection's byte stream: TCP, or TLS over TCP.
enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
    /// The tests' server: canned octets, read in chunks of varying sizes.
    #[cfg(test)]
    Canned(tests::Canned),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
            #[cfg(test)]
            Stream::Canned(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
            #[cfg(test)]
            Stream::Canned(_) => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
            #[cfg(test)]
            Stream::Canned(_) => Ok(()),
        }
    }
}

/// A minimal POP3 client. It keeps its own read buffer rather than a BufReader so that
/// multi-line bodies are scanned in large chunks with memchr and handed on without copies:
/// the client must stay cheap next to the server it measures.
struct Client {
    stream: Stream,
    buf: Vec<u8>,
    /// Unread bytes are `buf[start..end]`.
    start: usize,
    end: usize,
}

impl Client {
    /// Connects over `transport` and reads the greeting; for STLS, also upgrades to TLS.
    fn connect(env: &Env, transport: Transport, buf_size: usize) -> Result<Client, String> {
        let addr = match transport {
            Transport::Plain | Transport::Stls => env.plain,
            Transport::Tls => env.tls_addr.ok_or("no implicit-TLS address")?,
        };
        let tcp = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        tcp.set_nodelay(true)
            .and_then(|()| tcp.set_read_timeout(Some(IO_TIMEOUT)))
            .and_then(|()| tcp.set_write_timeout(Some(IO_TIMEOUT)))
            .map_err(|e| format!("socket options: {e}"))?;
        let stream = match transport {
            Transport::Plain | Transport::Stls => Stream::Plain(tcp),
            Transport::Tls => tls_handshake(env, tcp)?,
        };
        let mut client = Client {
            stream,
            buf: vec![0; buf_size],
            start: 0,
            end: 0,
        };
        client.status("greeting")?;
        if transport == Transport::Stls {
            client.cmd("STLS")?;
            if client.start != client.end {
                return Err("the server sent more after its STLS reply".into());
            }
            let Client { stream, buf, .. } = client;
            let Stream::Plain(tcp) = stream else {
                unreachable!("STLS is only sent on a plain stream")
            };
            // No second greeting after STLS (RFC 2595 §4).
            client = Client {
                stream: tls_handshake(env, tcp)?,
                buf,
                start: 0,
                end: 0,
            };
        }
        Ok(client)
    }

    fn send(&mut self, data: &[u8]) -> Result<(), String> {
        self.stream
            .write_all(data)
            .and_then(|()| self.stream.flush())
            .map_err(|e| format!("write: {e}"))
    }

    /// Reads more from the server, first moving the unread bytes to the buffer's start.
    fn fill(&mut self) -> Result<(), String> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            return Err("read buffer full: a line is too long".into());
        }
        loop {
            match self.stream.read(&mut self.buf[self.end..]) {
                Ok(0) => return Err("the server closed the connection".into()),
                Ok(n) => {
                    self.end += n;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }

    /// Reads one status line (or LIST/UIDL line), without its CRLF.
    fn read_line(&mut self) -> Result<String, String> {
        loop {
            if let Some(i) = memchr::memchr(b'\n', &self.buf[self.start..self.end]) {
                let line = &self.buf[self.start..self.start + i + 1];
                self.start += i + 1;
                let Some(text) = line.strip_suffix(b"\r\n") else {
                    return Err(format!(
                        "line not ended by CRLF: {:?}",
                        String::from_utf8_lossy(line)
                    ));
                };
                return Ok(String::from_utf8_lossy(text).into_owned());
            }
            if self.end - self.start > MAX_STATUS_LINE {
                return Err(format!("status line over {MAX_STATUS_LINE} octets"));
            }
            self.fill()?;
        }
    }

    /// Reads a status line and checks it is +OK; `what` names the command in errors.
    fn status(&mut self, what: &str) -> Result<String, String> {
        let line = self.read_line()?;
        if line.starts_with("+OK") {
            Ok(line)
        } else {
            Err(format!("{what}: {line}"))
        }
    }

    /// Sends a command and returns its +OK status line (an -ERR is an error).
    fn cmd(&mut self, command: &str) -> Result<String, String> {
        self.send(format!("{command}\r\n").as_bytes())?;
        // Name the command only: PASS carries a password.
        let verb = command.split(' ').next().unwrap_or(command);
        self.status(verb)
    }

    fn login(&mut self, user: &str, pass: &str) -> Result<String, String> {
        self.cmd(&format!("USER {user}"))?;
        self.cmd(&format!("PASS {pass}"))
    }

    /// QUIT, its reply, and close.
    fn quit(mut self) -> Result<(), String> {
        self.cmd("QUIT").map(drop)
    }

    /// Reads the body of a multi-line reply up to the terminating ".", undoing the
    /// byte-stuffing, and hands it to `sink` in pieces: runs of whole lines where it can
    /// (a piece ends before each line that starts with '.', and where a read ends), so the
    /// sink sees a few large slices per read rather than one call per line. Returns the
    /// de-stuffed octet count. `limit` bounds it, so a server that never terminates can't
    /// keep us reading for ever.
    fn read_multiline(&mut self, limit: u64, mut sink: impl FnMut(&[u8])) -> Result<u64, String> {
        let mut body = Unstuffer::default();
        loop {
            let (used, done) = body.feed(&self.buf[self.start..self.end], &mut sink)?;
            if used == 0 {
                // Nothing, or too little to tell what a line's leading '.' means: the
                // octets left over (at most two) move to the buffer's start.
                self.fill()?;
                continue;
            }
            self.start += used;
            if done {
                return Ok(body.total);
            }
            if body.total > limit {
                return Err(format!("multi-line reply over {limit} octets"));
            }
        }
    }

    /// A multi-line reply's lines as text: LIST, UIDL.
    fn read_multiline_text(&mut self) -> Result<Vec<String>, String> {
        let mut body = Vec::new();
        self.read_multiline(LISTING_LIMIT, |piece| body.extend_from_slice(piece))?;
        Ok(String::from_utf8_lossy(&body)
            .lines()
            .map(str::to_owned)
            .collect())
    }

    /// LIST or UIDL: the second field of each line, checking the lines are numbered 1..n.
    fn listing(&mut self, command: &str) -> Result<Vec<String>, String> {
        self.cmd(command)?;
        let lines = self.read_multiline_text()?;
        lines
            .iter()
            .enumerate()
            .map(|(i, line)| match line.split_once(' ') {
                Some((n, value)) if n.parse() == Ok(i + 1) => Ok(value.to_owned()),
                _ => Err(format!("{command} line {}: {line:?}", i + 1)),
            })
            .collect()
    }
}

/// The state of a multi-line body being read: whether the next octet starts a line, and
/// the de-stuffed octets so far. Only the lines that start with '.' need a look: ".." is a
/// stuffed '.', ".\r\n" the end, any other '.' an error; everything between goes on in one
/// piece, found with one memmem search for "\n." per such line rather than a memchr per line.
#[derive(Default)]
struct Unstuffer {
    mid_line: bool,
    total: u64,
}

impl Unstuffer {
    /// Consumes a prefix of `avail`, passing de-stuffed content to `sink`. Returns how many
    /// octets it used, and whether that included the terminator (the octets after it belong
    /// to the next reply). It uses none when `avail` is empty or too short to decide on a
    /// line start: after a leading '.', ".\r" may yet be the terminator.
    fn feed(
        &mut self,
        avail: &[u8],
        sink: &mut impl FnMut(&[u8]),
    ) -> Result<(usize, bool), String> {
        static LINE_DOT: LazyLock<memchr::memmem::Finder<'static>> =
            LazyLock::new(|| memchr::memmem::Finder::new(b"\n."));
        let mut at = 0;
        if !self.mid_line {
            match avail {
                [] | [b'.'] | [b'.', b'\r'] => return Ok((0, false)),
                [b'.', b'\r', b'\n', ..] => return Ok((3, true)),
                // Stuffed: drop the first '.', the second is content.
                [b'.', b'.', ..] => at = 1,
                [b'.', ..] => {
                    return Err("a line starts with a '.' that is not byte-stuffed".into());
                }
                _ => {}
            }
            self.mid_line = true;
        } else if avail.is_empty() {
            return Ok((0, false));
        }
        let rest = &avail[at..];
        // A piece up to the '\n' before the next line that starts with '.', or to the end of
        // what we have: then the next octet read starts a line if this ends with '\n'.
        let piece = match LINE_DOT.find(rest) {
            Some(i) => {
                self.mid_line = false;
                &rest[..=i]
            }
            None => {
                self.mid_line = rest.last() != Some(&b'\n');
                rest
            }
        };
        sink(piece);
        self.total += piece.len() as u64;
        Ok((at + piece.len(), false))
    }
}

/// Wraps a TCP stream in TLS and completes the handshake at once, so that a handshake
/// failure is reported as one and its cost falls inside the session being timed.
fn tls_handshake(env: &Env, tcp: TcpStream) -> Result<Stream, String> {
    let config = env.tls.clone().ok_or("TLS is not configured")?;
    let conn = ClientConnection::new(config, env.server_name.clone())
        .map_err(|e| format!("TLS setup: {e}"))?;
    let mut tls = StreamOwned::new(conn, tcp);
    // Bounded: each step either progresses, fails, or times out on the socket.
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .map_err(|e| format!("TLS handshake: {e}"))?;
    }
    env.tls_negotiated.get_or_init(|| negotiated(&tls.conn));
    Ok(Stream::Tls(Box::new(tls)))
}

/// What a handshake agreed on, e.g. "TLSv1_3 TLS13_AES_256_GCM_SHA384 X25519": servers
/// compare fairly only over the same version, cipher and key exchange.
fn negotiated(conn: &ClientConnection) -> String {
    let version = conn
        .protocol_version()
        .map_or("?".into(), |v| format!("{v:?}"));
    let suite = conn
        .negotiated_cipher_suite()
        .map_or("?".into(), |s| format!("{:?}", s.suite()));
    let group = conn
        .negotiated_key_exchange_group()
        .map_or("?".into(), |g| format!("{:?}", g.name()));
    format!("{version} {suite} {group}")
}

/// Counts errors and prints the first few, for workloads that go on after one.
struct Errors {
    count: AtomicU64,
    what: String,
}

impl Errors {
    fn new(what: impl Into<String>) -> Errors {
        Errors {
            count: AtomicU64::new(0),
            what: what.into(),
        }
    }

    fn add(&self, message: &str) {
        let n = self.count.fetch_add(1, Ordering::Relaxed);
        if (n as usize) < ERRORS_SHOWN {
            eprintln!("pop3bench: {} error: {message}", self.what);
        } else if n as usize == ERRORS_SHOWN {
            eprintln!("pop3bench: {}: more errors, only counted", self.what);
        }
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

// ---------------------------------------------------------------------------------------------
// Workload 1: sessions
// ---------------------------------------------------------------------------------------------

/// Session rate and latency per transport: C clients, each looping over a whole short
/// session (connect, greeting, [STLS + handshake,] USER/PASS, STAT, QUIT) for --seconds.
fn bench_sessions(env: &Env, args: &Args, report: &mut Report) -> Result<(), String> {
    let length = Duration::from_secs_f64(args.seconds);
    for transport in env.session_transports() {
        eprintln!(
            "pop3bench: sessions/{}: {} clients for {} s",
            transport.name(),
            args.clients,
            args.seconds
        );
        let errors = Errors::new(format!("sessions/{}", transport.name()));
        let server_cpu = ServerCpu::start(env);
        let started = Instant::now();
        let deadline = started + length;
        let mut latencies: Vec<Duration> = thread::scope(|scope| {
            let workers: Vec<_> = (0..args.clients)
                .map(|_| {
                    scope.spawn(|| {
                        let mut mine = Vec::new();
                        while Instant::now() < deadline {
                            let began = Instant::now();
                            match one_session(env, transport) {
                                Ok(()) => mine.push(began.elapsed()),
                                Err(e) => {
                                    errors.add(&e);
                                    // Don't spin on a server that refuses.
                                    thread::sleep(Duration::from_millis(10));
                                }
                            }
                        }
                        mine
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().expect("a session thread panicked"))
                .collect()
        });
        let elapsed = started.elapsed().as_secs_f64();
        let cpu = server_cpu.used(env);
        latencies.sort_unstable();
        let sessions = latencies.len();
        let rate = sessions as f64 / elapsed;
        let (p50, p99) = (
            percentile_ms(&latencies, 50.0),
            percentile_ms(&latencies, 99.0),
        );
        let cpu_per_session = cpu.map(|c| c * 1e3 / sessions.max(1) as f64);
        eprintln!(
            "pop3bench: sessions/{}: {sessions} sessions in {elapsed:.1} s = {rate:.0}/s, \
             p50 {p50:.2} ms, p99 {p99:.2} ms, {} errors",
            transport.name(),
            errors.count()
        );
        let mut metrics = vec![
            ("sessions", sessions as f64),
            ("seconds", elapsed),
            ("sessions_per_s", rate),
            ("p50_ms", p50),
            ("p99_ms", p99),
        ];
        if let Some(c) = cpu_per_session {
            metrics.push(("server_cpu_ms_per_session", c));
        }
        report.rows.push(Row {
            workload: "sessions",
            transport: transport.name().into(),
            result: format!("{rate:.0} sessions/s"),
            detail: format!(
                "p50 {p50:.2} ms, p99 {p99:.2} ms; {sessions} sessions, {} clients, {elapsed:.1} s",
                args.clients
            ),
            cpu: cpu_per_session.map_or("n/a".into(), |c| format!("{c:.2} ms/session")),
            errors: errors.count(),
            metrics,
        });
    }
    Ok(())
}

fn one_session(env: &Env, transport: Transport) -> Result<(), String> {
    let mut c = Client::connect(env, transport, SMALL_BUF)?;
    c.login(&env.user, &env.pass)?;
    c.cmd("STAT")?;
    c.quit()
}

/// Nearest-rank percentile of sorted durations, in milliseconds.
fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1e3
}

// ---------------------------------------------------------------------------------------------
// Workload 2: retr
// ---------------------------------------------------------------------------------------------

/// One full-mailbox download.
struct RetrRound {
    messages: usize,
    octets: u64,
    seconds: f64,
    /// Messages whose LIST size leaves out the CRLF that RETR added to complete them.
    uncounted_crlf: usize,
}

/// Download throughput per transport: --rounds full downloads with pipelined RETRs, every
/// message checked (status, terminator, size against LIST, and in the self-contained mode
/// an XXH3-128 against the Maildir file).
fn bench_retr(env: &Env, args: &Args, report: &mut Report) -> Result<(), String> {
    for transport in env.retr_transports() {
        let errors = Errors::new(format!("retr/{}", transport.name()));
        let server_cpu = ServerCpu::start(env);
        let mut rounds = Vec::new();
        for round in 1..=args.rounds {
            match retr_round(env, transport, args.batch, &errors) {
                Ok(r) => {
                    eprintln!(
                        "pop3bench: retr/{} round {round}/{}: {} messages, {:.1} MB in {:.2} s \
                         = {:.0} MB/s, {:.0} msg/s",
                        transport.name(),
                        args.rounds,
                        r.messages,
                        r.octets as f64 / 1e6,
                        r.seconds,
                        r.octets as f64 / 1e6 / r.seconds,
                        r.messages as f64 / r.seconds
                    );
                    rounds.push(r);
                }
                Err(e) => errors.add(&format!("round {round}: {e}")),
            }
        }
        let cpu = server_cpu.used(env);
        if rounds.is_empty() {
            report.rows.push(Row {
                transport: transport.name().into(),
                errors: errors.count(),
                ..Row::failed("retr", "every round failed")
            });
            continue;
        }
        let mb_s: Vec<f64> = rounds
            .iter()
            .map(|r| r.octets as f64 / 1e6 / r.seconds)
            .collect();
        let msg_s: Vec<f64> = rounds
            .iter()
            .map(|r| r.messages as f64 / r.seconds)
            .collect();
        let total_mb: f64 = rounds.iter().map(|r| r.octets as f64 / 1e6).sum();
        let (median_mb, min_mb, max_mb) = (median(&mb_s), min(&mb_s), max(&mb_s));
        let median_msg = median(&msg_s);
        let cpu_per_mb = cpu.map(|c| c * 1e3 / total_mb.max(1e-9));
        let checked = if env.expected.is_some() {
            "size + XXH3-128 checked against the files"
        } else {
            "sizes checked"
        };
        let uncounted = match rounds[0].uncounted_crlf {
            0 => String::new(),
            n => format!("; {n} msgs without a final line end: LIST leaves out the CRLF RETR adds"),
        };
        let mut metrics = vec![
            ("rounds", rounds.len() as f64),
            ("messages", rounds[0].messages as f64),
            ("octets_per_round", rounds[0].octets as f64),
            ("mb_per_s_median", median_mb),
            ("mb_per_s_min", min_mb),
            ("mb_per_s_max", max_mb),
            ("messages_per_s_median", median_msg),
            (
                "list_sizes_without_added_crlf",
                rounds[0].uncounted_crlf as f64,
            ),
        ];
        if let Some(c) = cpu_per_mb {
            metrics.push(("server_cpu_ms_per_mb", c));
        }
        report.rows.push(Row {
            workload: "retr",
            transport: transport.name().into(),
            result: format!("{median_mb:.0} MB/s ({min_mb:.0}–{max_mb:.0}), {median_msg:.0} msg/s"),
            detail: format!(
                "{} rounds × {} msgs, {:.1} MB each, batch {}; {checked}{uncounted}",
                rounds.len(),
                rounds[0].messages,
                rounds[0].octets as f64 / 1e6,
                args.batch
            ),
            cpu: cpu_per_mb.map_or("n/a".into(), |c| format!("{c:.2} ms/MB")),
            errors: errors.count(),
            metrics,
        });
    }
    Ok(())
}

/// Logs in, LISTs (and UIDLs, to find each message's expected content), then RETRs every
/// message, keeping one to two batches of commands in flight so the server never waits
/// for the next command. QUIT without DELE: the mailbox stays as it is for the next round.
/// Message-level failures are counted in `errors`; broken framing ends the round.
fn retr_round(
    env: &Env,
    transport: Transport,
    batch: usize,
    errors: &Errors,
) -> Result<RetrRound, String> {
    let mut c = Client::connect(env, transport, BIG_BUF)?;
    c.login(&env.user, &env.pass)?;
    let sizes: Vec<u64> = c
        .listing("LIST")?
        .iter()
        .map(|s| s.parse().map_err(|_| format!("LIST size {s:?}")))
        .collect::<Result<_, _>>()?;
    if sizes.is_empty() {
        return Err("the mailbox is empty".into());
    }
    let expected: Option<Vec<Option<&Expected>>> = match &env.expected {
        Some(expectations) => {
            let uids = c.listing("UIDL")?;
            if uids.len() != sizes.len() {
                return Err(format!(
                    "UIDL has {} lines, LIST {}",
                    uids.len(),
                    sizes.len()
                ));
            }
            Some(uids.iter().map(|u| expectations.by_uidl.get(u)).collect())
        }
        None => None,
    };
    let by_digest = env.expected.as_ref().and_then(|e| e.by_digest.as_ref());

    let started = Instant::now();
    let mut octets = 0u64;
    let mut uncounted_crlf = 0;
    let mut sent = 0;
    let mut commands = String::new();
    for (i, &size) in sizes.iter().enumerate() {
        if sent < sizes.len() && sent - i <= batch {
            let upto = (sent + batch).min(sizes.len());
            commands.clear();
            for n in sent..upto {
                let _ = write!(commands, "RETR {}\r\n", n + 1);
            }
            c.send(commands.as_bytes())?;
            sent = upto;
        }
        let number = i + 1;
        let status = c.read_line()?;
        if !status.starts_with("+OK") {
            errors.add(&format!("RETR {number}: {status}"));
            continue;
        }
        let want = expected.as_ref().map(|e| e[i]);
        let mut hasher = want.map(|_| Xxh3::new());
        let got = c.read_multiline(size.saturating_mul(2) + (1 << 20), |piece| {
            if let Some(h) = &mut hasher {
                h.update(piece);
            }
        })?;
        octets += got;
        let digest: Option<u128> = hasher.map(|h| h.digest128());
        // The file this message must be, when the data set is known.
        let file = match (want, digest) {
            (Some(Some(want)), Some(digest)) => {
                if digest != want.xxh3 {
                    errors.add(&format!("RETR {number}: content differs from the file"));
                }
                Some(want)
            }
            // A server that numbers its messages: the content must be one of the files.
            (Some(None), Some(digest)) => match by_digest {
                Some(by_digest) => {
                    let file = by_digest.get(&digest);
                    if file.is_none() {
                        errors.add(&format!(
                            "RETR {number}: content matches no message of the data set"
                        ));
                    }
                    file
                }
                None => {
                    errors.add(&format!("message {number}: UIDL not generated here"));
                    None
                }
            },
            _ => None,
        };
        // LIST must announce what RETR sends. One difference is a convention rather than
        // an error: for a file without a final line end, the CRLF that RETR adds before the
        // terminator may be left out of LIST (Dovecot does). Tolerated only where the file
        // shows it, and counted in the report.
        if got != size {
            if file.is_some_and(|f| f.completed && f.size == got && got == size + 2) {
                uncounted_crlf += 1;
            } else {
                errors.add(&format!("RETR {number}: {got} octets, LIST said {size}"));
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    c.quit()?;
    Ok(RetrRound {
        messages: sizes.len(),
        octets,
        seconds,
        uncounted_crlf,
    })
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

fn min(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

// ---------------------------------------------------------------------------------------------
// Workload 3: idle
// ---------------------------------------------------------------------------------------------

/// Server memory per logged-in idle session: RSS and PSS before, while --idle plain
/// sessions are open, and after they close. Meaningful on a fresh server only (as in the
/// self-contained mode): memory freed by earlier sessions stays with the allocator and is
/// reused, so a second run against the same --target process shows almost nothing.
/// Plain sessions, then (with a TLS port) implicit-TLS sessions opened while the plain ones
/// are still held: each wave's memory is what the server took on for it, not memory freed by
/// an earlier wave and reused. A row per transport.
fn bench_idle(env: &Env, args: &Args, report: &mut Report) -> Result<(), String> {
    let mut waves = vec![idle_wave(env, Transport::Plain, args.idle)];
    if args.idle_tls > 0 && env.retr_transports().contains(&Transport::Tls) {
        waves.push(idle_wave(env, Transport::Tls, args.idle_tls));
    }
    // The sessions must still be alive for the readings to mean anything: ask a sample.
    for wave in &mut waves {
        for c in wave.clients.iter_mut().step_by(50) {
            if let Err(e) = c.cmd("NOOP") {
                wave.errors.add(&format!("NOOP on an idle session: {e}"));
            }
        }
    }
    let opened: Vec<usize> = waves.iter().map(|w| w.clients.len()).collect();
    for wave in &mut waves {
        wave.clients.clear();
    }
    thread::sleep(Duration::from_secs(1));
    let after = env.memory();
    for (wave, open) in waves.into_iter().zip(opened) {
        idle_row(env, wave, open, after, report);
    }
    Ok(())
}

/// Idle sessions of one transport, held open until the workload ends.
struct IdleWave {
    transport: Transport,
    clients: Vec<Client>,
    before: Option<Memory>,
    during: Option<Memory>,
    open_seconds: f64,
    cpu: Option<f64>,
    errors: Errors,
}

/// Opens `count` logged-in sessions over `transport` and reads the server's memory while
/// they are held.
fn idle_wave(env: &Env, transport: Transport, count: usize) -> IdleWave {
    let (user, pass) = (env.idle_login.0.as_str(), env.idle_login.1.as_str());
    let errors = Errors::new(format!("idle/{}", transport.name()));
    let before = env.memory();
    let server_cpu = ServerCpu::start(env);
    eprintln!(
        "pop3bench: idle/{}: opening {count} sessions as {user}",
        transport.name()
    );
    let started = Instant::now();
    let give_up = started + IDLE_OPEN_LIMIT;
    let clients: Vec<Client> = thread::scope(|scope| {
        let workers: Vec<_> = (0..IDLE_OPENERS)
            .map(|k| {
                let share = count / IDLE_OPENERS + usize::from(k < count % IDLE_OPENERS);
                let errors = &errors;
                scope.spawn(move || {
                    let mut mine = Vec::with_capacity(share);
                    for _ in 0..share {
                        if Instant::now() > give_up {
                            errors.add("opening the sessions took too long; giving up");
                            break;
                        }
                        let opened = Client::connect(env, transport, SMALL_BUF)
                            .and_then(|mut c| c.login(user, pass).map(|_| c));
                        match opened {
                            Ok(c) => mine.push(c),
                            Err(e) => errors.add(&e),
                        }
                    }
                    mine
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("an idle opener thread panicked"))
            .collect()
    });
    let open_seconds = started.elapsed().as_secs_f64();
    let cpu = server_cpu.used(env);
    eprintln!(
        "pop3bench: idle/{}: {} sessions open in {open_seconds:.1} s; settling 1 s",
        transport.name(),
        clients.len()
    );
    thread::sleep(Duration::from_secs(1));
    IdleWave {
        transport,
        clients,
        before,
        during: env.memory(),
        open_seconds,
        cpu,
        errors,
    }
}

/// The row of one wave; `open` sessions were held, `after` is the memory once all closed.
fn idle_row(env: &Env, wave: IdleWave, open: usize, after: Option<Memory>, report: &mut Report) {
    let IdleWave {
        transport,
        before,
        during,
        open_seconds,
        cpu,
        errors,
        ..
    } = wave;
    let user = env.idle_login.0.as_str();
    let per_session = |f: fn(&Memory) -> Option<u64>| {
        let (b, d) = (f(before.as_ref()?)?, f(during.as_ref()?)?);
        Some((d as f64 - b as f64) / open.max(1) as f64)
    };
    let rss_per = per_session(|m| Some(m.rss_kb));
    let pss_per = per_session(|m| m.pss_kb);
    let mb = |m: Option<Memory>, f: fn(&Memory) -> Option<u64>| {
        m.as_ref()
            .and_then(f)
            .map_or("n/a".into(), |kb| format!("{:.1}", kb as f64 / 1024.0))
    };
    let mut metrics = vec![("sessions", open as f64), ("open_seconds", open_seconds)];
    for (name, m) in [("before", before), ("during", during), ("after", after)] {
        if let Some(m) = m {
            metrics.push((leak(format!("rss_{name}_kb")), m.rss_kb as f64));
            if let Some(pss) = m.pss_kb {
                metrics.push((leak(format!("pss_{name}_kb")), pss as f64));
            }
        }
    }
    if let Some(v) = rss_per {
        metrics.push(("rss_kb_per_session", v));
    }
    if let Some(v) = pss_per {
        metrics.push(("pss_kb_per_session", v));
    }
    let cpu_per_login = cpu.map(|c| c * 1e3 / open.max(1) as f64);
    if let Some(c) = cpu_per_login {
        metrics.push(("server_cpu_ms_per_login", c));
    }
    // A server with a process per session (Dovecot) shows it here.
    let processes = match (before, during) {
        (Some(b), Some(d)) if d.processes > 1 => {
            metrics.push(("server_processes_before", b.processes as f64));
            metrics.push(("server_processes_during", d.processes as f64));
            format!(
                "; server processes {} before, {} during",
                b.processes, d.processes
            )
        }
        _ => String::new(),
    };
    report.rows.push(Row {
        workload: "idle",
        transport: transport.name().into(),
        result: match (rss_per, pss_per) {
            (Some(r), Some(p)) => format!("{r:.1} KB/session RSS, {p:.1} KB PSS"),
            (Some(r), None) => format!("{r:.1} KB/session RSS"),
            _ => "n/a (server memory unknown)".into(),
        },
        detail: format!(
            "{open} sessions ({}) opened in {open_seconds:.1} s; \
             RSS MB before/during/after {}/{}/{}, PSS {}/{}/{}{processes}",
            if env.fixture.is_some() {
                format!("user idle, {IDLE_MAILBOX} msgs")
            } else {
                format!("user {user}")
            },
            mb(before, |m| Some(m.rss_kb)),
            mb(during, |m| Some(m.rss_kb)),
            mb(after, |m| Some(m.rss_kb)),
            mb(before, |m| m.pss_kb),
            mb(during, |m| m.pss_kb),
            mb(after, |m| m.pss_kb),
        ),
        cpu: cpu_per_login.map_or("n/a".into(), |c| format!("{c:.2} ms/login")),
        errors: errors.count(),
        metrics,
    });
}

/// Metric names are `&'static str`; the few built at run time are leaked (once per run).
fn leak(name: String) -> &'static str {
    Box::leak(name.into_boxed_str())
}

// ---------------------------------------------------------------------------------------------
// Workload 4: bigbox
// ---------------------------------------------------------------------------------------------

/// Timings of one session on the big mailbox.
struct BigboxPass {
    login_stat: f64,
    uidl: f64,
    list: f64,
    messages: usize,
}

/// Listing costs on a mailbox of --bigbox small messages: login+STAT cold (the first login
/// reads every message for its size) and warm (sizes from the cache), full UIDL, full LIST.
/// "Cold" is about pop3d's size cache; the files themselves are in the page cache, having
/// just been written. Against a --target, "cold" is the first session on the mailbox since
/// the server's caches were last removed (bench/vs-dovecot.sh removes them before each run).
fn bench_bigbox(env: &Env, args: &Args, report: &mut Report) -> Result<(), String> {
    if let Some(fixture) = &env.fixture {
        generate_bigbox(&fixture.maildir(BIGBOX_USER), args)?;
    }
    let Some((user, pass)) = &env.bigbox_login else {
        return Err(
            "with --target, bigbox needs --bigbox-user and --bigbox-pass, or --data".into(),
        );
    };
    let server_cpu = ServerCpu::start(env);
    let cold = bigbox_pass(env, user, pass)?;
    eprintln!(
        "pop3bench: bigbox cold: login+STAT {}, UIDL {}, LIST {}",
        secs(cold.login_stat),
        secs(cold.uidl),
        secs(cold.list)
    );
    let warm = bigbox_pass(env, user, pass)?;
    eprintln!(
        "pop3bench: bigbox warm: login+STAT {}, UIDL {}, LIST {}",
        secs(warm.login_stat),
        secs(warm.uidl),
        secs(warm.list)
    );
    let cpu = server_cpu.used(env);
    let mut metrics = vec![
        ("messages", warm.messages as f64),
        ("cold_login_stat_s", cold.login_stat),
        ("warm_login_stat_s", warm.login_stat),
        ("cold_uidl_s", cold.uidl),
        ("cold_list_s", cold.list),
        ("uidl_s", warm.uidl),
        ("list_s", warm.list),
    ];
    if let Some(c) = cpu {
        metrics.push(("server_cpu_s", c));
    }
    report.rows.push(Row {
        workload: "bigbox",
        transport: "plain".into(),
        result: format!(
            "login+STAT cold {}, warm {}",
            secs(cold.login_stat),
            secs(warm.login_stat)
        ),
        detail: format!(
            "{} msgs; UIDL {}, LIST {} (warm session; cold: {}, {})",
            warm.messages,
            secs(warm.uidl),
            secs(warm.list),
            secs(cold.uidl),
            secs(cold.list)
        ),
        cpu: cpu.map_or("n/a".into(), |c| format!("{} total", secs(c))),
        errors: 0,
        metrics,
    });
    Ok(())
}

/// Seconds, or milliseconds below one second, with three significant digits or so.
fn secs(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 0.01 {
        format!("{:.0} ms", s * 1e3)
    } else {
        format!("{:.2} ms", s * 1e3)
    }
}

fn bigbox_pass(env: &Env, user: &str, pass: &str) -> Result<BigboxPass, String> {
    let started = Instant::now();
    let mut c = Client::connect(env, Transport::Plain, BIG_BUF)?;
    c.login(user, pass)?;
    let stat = c.cmd("STAT")?;
    let login_stat = started.elapsed().as_secs_f64();
    let messages: usize = stat
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("STAT reply {stat:?}"))?;
    let timed = |c: &mut Client, command: &str| {
        let started = Instant::now();
        let lines = c.listing(command)?;
        if lines.len() != messages {
            return Err(format!(
                "{command} has {} lines, STAT said {messages}",
                lines.len()
            ));
        }
        Ok::<_, String>(started.elapsed().as_secs_f64())
    };
    let uidl = timed(&mut c, "UIDL")?;
    let list = timed(&mut c, "LIST")?;
    c.quit()?;
    Ok(BigboxPass {
        login_stat,
        uidl,
        list,
        messages,
    })
}

// ---------------------------------------------------------------------------------------------
// Open-files limit
// ---------------------------------------------------------------------------------------------

/// Raises the soft RLIMIT_NOFILE to `needed` when it is lower (up to the hard limit, which
/// needs no privilege). It runs before the daemon starts, and the daemon inherits it: no
/// pre_exec hook is needed. When even the hard limit is too low, says how to raise it.
fn ensure_fd_limit(needed: u64) -> Result<(), String> {
    let Some((soft, hard)) = rlimit::nofile() else {
        eprintln!("pop3bench: cannot read the open-files limit; hoping it is high enough");
        return Ok(());
    };
    if soft >= needed {
        return Ok(());
    }
    if hard < needed {
        return Err(format!(
            "this run needs about {needed} open files, but the limit is {soft} (hard {hard}): \
             raise it first, e.g. `ulimit -n {needed}` (as root, or in a shell whose hard \
             limit allows it), or lower --idle"
        ));
    }
    rlimit::set_nofile(needed, hard)?;
    eprintln!("pop3bench: raised the open-files limit from {soft} to {needed}");
    Ok(())
}

#[cfg(all(
    target_os = "linux",
    any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "riscv64"
    )
))]
mod rlimit {
    //! getrlimit/setrlimit without the libc crate, which pop3d does not depend on: std links
    //! the C library anyway, so declaring the two functions is enough.
    use std::ffi::c_int;

    /// `struct rlimit`: two `rlim_t`, a 64-bit `unsigned long` on these targets.
    #[repr(C)]
    struct Rlimit {
        cur: u64,
        max: u64,
    }

    /// RLIMIT_NOFILE on x86-64, AArch64 and RISC-V Linux (MIPS, SPARC and Alpha number it
    /// differently, and 32-bit targets have a narrower `rlim_t`: hence the target list).
    const RLIMIT_NOFILE: c_int = 7;

    unsafe extern "C" {
        fn getrlimit(resource: c_int, rlim: *mut Rlimit) -> c_int;
        fn setrlimit(resource: c_int, rlim: *const Rlimit) -> c_int;
    }

    /// The soft and hard open-files limits.
    pub fn nofile() -> Option<(u64, u64)> {
        let mut limit = Rlimit { cur: 0, max: 0 };
        // SAFETY: `limit` is a valid, writable `struct rlimit`.
        let rc = unsafe { getrlimit(RLIMIT_NOFILE, &mut limit) };
        (rc == 0).then_some((limit.cur, limit.max))
    }

    pub fn set_nofile(soft: u64, hard: u64) -> Result<(), String> {
        let limit = Rlimit {
            cur: soft,
            max: hard,
        };
        // SAFETY: `limit` is a valid `struct rlimit`, only read by the call.
        let rc = unsafe { setrlimit(RLIMIT_NOFILE, &limit) };
        if rc == 0 {
            Ok(())
        } else {
            Err(format!(
                "cannot raise the open-files limit to {soft}: {}",
                std::io::Error::last_os_error()
            ))
        }
    }
}

#[cfg(not(all(
    target_os = "linux",
    any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "riscv64"
    )
)))]
mod rlimit {
    pub fn nofile() -> Option<(u64, u64)> {
        None
    }

    pub fn set_nofile(_soft: u64, _hard: u64) -> Result<(), String> {
        Err("cannot change the open-files limit on this platform".into())
    }
}

// ---------------------------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------------------------

/// One table row: one workload over one transport.
struct Row {
    workload: &'static str,
    transport: String,
    result: String,
    detail: String,
    cpu: String,
    errors: u64,
    /// The numbers behind the text, for --json.
    metrics: Vec<(&'static str, f64)>,
}

impl Row {
    fn failed(workload: &'static str, why: &str) -> Row {
        Row {
            workload,
            transport: "-".into(),
            result: "FAILED".into(),
            detail: why.replace('|', "/"),
            cpu: "n/a".into(),
            errors: 1,
            metrics: Vec::new(),
        }
    }
}

struct Report {
    nproc: usize,
    cpu_model: String,
    kernel: String,
    /// Linux's TCP congestion control: BBR paces with a timer per burst, which costs a
    /// loopback sender more CPU per MB than cubic does.
    tcp_congestion: String,
    server: String,
    revision: Option<String>,
    /// The run's settings, for the header and the JSON.
    settings: Vec<(&'static str, Json)>,
    rows: Vec<Row>,
    timings: Vec<(&'static str, f64, Option<CpuUsage>)>,
    server_log: Option<ServerLogSummary>,
    /// What the TLS handshakes agreed on, if there were any.
    tls: Option<String>,
}

impl Report {
    fn new(args: &Args, env: &Env) -> Report {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or("unknown CPU".into(), |(_, m)| m.trim().to_owned());
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or("unknown".into(), |k| k.trim().to_owned());
        let tcp_congestion = fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control")
            .map_or("unknown".into(), |c| c.trim().to_owned());
        let mut settings = vec![
            ("bench", Json::Str(args.bench.clone())),
            ("clients", Json::Num(args.clients as f64)),
            ("seconds", Json::Num(args.seconds)),
            ("rounds", Json::Num(args.rounds as f64)),
            ("batch", Json::Num(args.batch as f64)),
            ("idle", Json::Num(args.idle as f64)),
            ("idle_tls", Json::Num(args.idle_tls as f64)),
            ("bigbox", Json::Num(args.bigbox as f64)),
            ("seed", Json::Num(args.seed as f64)),
            ("tls_resume", Json::Bool(args.tls_resume)),
        ];
        if let Some((messages, octets)) = env.mailbox {
            settings.push(("messages", Json::Num(messages as f64)));
            settings.push(("mailbox_octets", Json::Num(octets as f64)));
        }
        Report {
            nproc: thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            kernel,
            tcp_congestion,
            server: env.label.clone(),
            revision: env.fixture.as_ref().and_then(|_| pop3d_revision()),
            settings,
            rows: Vec::new(),
            timings: Vec::new(),
            server_log: None,
            tls: None,
        }
    }

    /// How long a step took, and who used the CPUs meanwhile.
    fn timing(&mut self, what: &'static str, took: Duration, usage: Option<CpuUsage>) {
        self.timings.push((what, took.as_secs_f64(), usage));
    }

    fn setting(&self, name: &str) -> String {
        match self.settings.iter().find(|(n, _)| *n == name) {
            Some((_, Json::Num(n))) => format!("{n}"),
            Some((_, Json::Str(s))) => s.clone(),
            Some((_, Json::Bool(b))) => b.to_string(),
            _ => "?".into(),
        }
    }

    fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "### pop3bench: {} CPUs, {}, Linux {} (TCP congestion control {}); server {}",
            self.nproc, self.cpu_model, self.kernel, self.tcp_congestion, self.server
        );
        let _ = writeln!(out);
        let mailbox = match self.settings.iter().find(|(n, _)| *n == "mailbox_octets") {
            Some((_, Json::Num(octets))) => format!(
                "mailbox {} msgs, {:.1} MB; ",
                self.setting("messages"),
                octets / 1e6
            ),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "{mailbox}sessions: {} clients × {} s per transport; retr: {} rounds, batch {}; \
             TLS {}{}; MB = 10^6 octets",
            self.setting("clients"),
            self.setting("seconds"),
            self.setting("rounds"),
            self.setting("batch"),
            if self.setting("tls_resume") == "true" {
                "with session resumption"
            } else {
                "full handshake per session"
            },
            self.tls
                .as_ref()
                .map_or(String::new(), |t| format!(" ({t})"))
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "| workload | transport | result | detail | server CPU | errors |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|");
        for r in &self.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                r.workload, r.transport, r.result, r.detail, r.cpu, r.errors
            );
        }
        let _ = writeln!(out);
        let times: Vec<String> = self
            .timings
            .iter()
            .map(|(what, s, usage)| match usage {
                Some(u) => format!("{what} {s:.1} s ({u})"),
                None => format!("{what} {s:.1} s"),
            })
            .collect();
        let _ = writeln!(out, "Wall time: {}.", times.join("; "));
        if let Some(log) = &self.server_log {
            let ends: Vec<String> = log.ends.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(
                out,
                "Server log: {} lines, {} warnings, {} errors; session ends: {}.",
                log.lines,
                log.warnings,
                log.errors,
                if ends.is_empty() {
                    "none".into()
                } else {
                    ends.join(", ")
                }
            );
            for sample in &log.samples {
                let _ = writeln!(out, "    {sample}");
            }
        }
        out
    }

    fn json(&self) -> Json {
        let mut top = vec![
            (
                "machine",
                Json::Obj(vec![
                    ("nproc", Json::Num(self.nproc as f64)),
                    ("cpu", Json::Str(self.cpu_model.clone())),
                    ("kernel", Json::Str(self.kernel.clone())),
                    ("tcp_congestion", Json::Str(self.tcp_congestion.clone())),
                ]),
            ),
            ("server", Json::Str(self.server.clone())),
            (
                "pop3d_revision",
                self.revision.clone().map_or(Json::Null, Json::Str),
            ),
            ("settings", Json::Obj(self.settings.clone())),
            (
                "tls_negotiated",
                self.tls.clone().map_or(Json::Null, Json::Str),
            ),
        ];
        let results = self
            .rows
            .iter()
            .map(|r| {
                Json::Obj(vec![
                    ("workload", Json::Str(r.workload.into())),
                    ("transport", Json::Str(r.transport.clone())),
                    ("result", Json::Str(r.result.clone())),
                    ("detail", Json::Str(r.detail.clone())),
                    ("errors", Json::Num(r.errors as f64)),
                    (
                        "metrics",
                        Json::Obj(r.metrics.iter().map(|&(k, v)| (k, Json::Num(v))).collect()),
                    ),
                ])
            })
            .collect();
        top.push(("results", Json::Arr(results)));
        top.push((
            "wall_seconds",
            Json::Obj(
                self.timings
                    .iter()
                    .map(|&(k, v, _)| (k, Json::Num(v)))
                    .collect(),
            ),
        ));
        let usage = |u: Option<CpuUsage>| match u {
            Some(u) => Json::Obj(vec![
                ("client_cpus", Json::Num(u.client)),
                ("server_cpus", u.server.map_or(Json::Null, Json::Num)),
                ("other_processes_share", Json::Num(u.others_share)),
            ]),
            None => Json::Null,
        };
        top.push((
            "cpu_use",
            Json::Obj(
                self.timings
                    .iter()
                    .map(|&(k, _, u)| (k, usage(u)))
                    .collect(),
            ),
        ));
        if let Some(log) = &self.server_log {
            top.push((
                "server_log",
                Json::Obj(vec![
                    ("lines", Json::Num(log.lines as f64)),
                    ("warnings", Json::Num(log.warnings as f64)),
                    ("errors", Json::Num(log.errors as f64)),
                ]),
            ));
        }
        Json::Obj(top)
    }
}

/// Just enough JSON for --json: serde_json is not among pop3d's dependencies.
#[derive(Clone)]
enum Json {
    Null,
    Bool(bool),
    /// Non-finite numbers (a rate over no time) are written as null.
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(&'static str, Json)>),
}

impl Json {
    fn render(&self) -> String {
        let mut out = String::new();
        self.write(&mut out, 0);
        out.push('\n');
        out
    }

    fn write(&self, out: &mut String, indent: usize) {
        let pad = |out: &mut String, n: usize| out.extend(std::iter::repeat_n(' ', n));
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Num(n) if !n.is_finite() => out.push_str("null"),
            Json::Num(n) => {
                let _ = write!(out, "{n}");
            }
            Json::Str(s) => write_json_string(out, s),
            Json::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    out.push_str(if i == 0 { "\n" } else { ",\n" });
                    pad(out, indent + 2);
                    item.write(out, indent + 2);
                }
                if !items.is_empty() {
                    out.push('\n');
                    pad(out, indent);
                }
                out.push(']');
            }
            Json::Obj(fields) => {
                out.push('{');
                for (i, (key, value)) in fields.iter().enumerate() {
                    out.push_str(if i == 0 { "\n" } else { ",\n" });
                    pad(out, indent + 2);
                    write_json_string(out, key);
                    out.push_str(": ");
                    value.write(out, indent + 2);
                }
                if !fields.is_empty() {
                    out.push('\n');
                    pad(out, indent);
                }
                out.push('}');
            }
        }
    }
}

fn write_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server's octets, handed out in chunks of pseudo-random sizes up to `max_chunk`,
    /// so that every boundary (after '\n', after "\n.", after "\n.\r", inside "..") occurs.
    pub struct Canned {
        data: Vec<u8>,
        at: usize,
        rng: Rng,
        max_chunk: usize,
    }

    impl Read for Canned {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self
                .rng
                .between(1, self.max_chunk)
                .min(buf.len())
                .min(self.data.len() - self.at);
            buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    fn client(data: Vec<u8>, seed: u64, max_chunk: usize, buf_size: usize) -> Client {
        Client {
            stream: Stream::Canned(Canned {
                data,
                at: 0,
                rng: Rng::for_message(seed, 0),
                max_chunk,
            }),
            buf: vec![0; buf_size],
            start: 0,
            end: 0,
        }
    }

    /// What a server sends for `body`: a '.' added before each line's leading '.', then the
    /// terminator.
    fn stuffed(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(body.len() + 8);
        let mut line_start = true;
        for &b in body {
            if line_start && b == b'.' {
                out.push(b'.');
            }
            out.push(b);
            line_start = b == b'\n';
        }
        out.extend_from_slice(b".\r\n");
        out
    }

    /// CRLF lines rich in dots: empty lines, ".", "..", ".\r", lines of dots and CRs.
    fn dotty_body(rng: &mut Rng) -> Vec<u8> {
        let mut body = Vec::new();
        for _ in 0..rng.below(40) {
            for _ in 0..rng.below(8) {
                body.push(*b"..\r.ab ".get(rng.below(7) as usize).unwrap());
            }
            body.extend_from_slice(b"\r\n");
        }
        body
    }

    /// Reads `bodies` back through the client as pipelined RETR replies.
    fn read_back(bodies: &[Vec<u8>], seed: u64, max_chunk: usize, buf_size: usize) {
        let mut data = Vec::new();
        for body in bodies {
            data.extend_from_slice(b"+OK\r\n");
            data.extend_from_slice(&stuffed(body));
        }
        let mut c = client(data, seed, max_chunk, buf_size);
        for (i, body) in bodies.iter().enumerate() {
            let what = format!("seed {seed}, chunks {max_chunk}, buf {buf_size}, body {i}");
            assert_eq!(c.status("RETR").unwrap(), "+OK", "{what}");
            let mut got = Vec::new();
            let total = c
                .read_multiline(1 << 20, |piece| {
                    assert!(!piece.is_empty(), "{what}: empty piece");
                    got.extend_from_slice(piece);
                })
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(total, body.len() as u64, "{what}");
            assert_eq!(got, *body, "{what}");
        }
        let Stream::Canned(canned) = &c.stream else {
            unreachable!()
        };
        assert_eq!(canned.at, canned.data.len(), "all read");
        assert_eq!(c.start, c.end, "nothing left over");
    }

    #[test]
    fn destuffs_across_every_chunk_boundary() {
        for seed in 0..300 {
            let mut rng = Rng::for_message(seed, 1);
            let bodies: Vec<Vec<u8>> = (0..5).map(|_| dotty_body(&mut rng)).collect();
            for (max_chunk, buf_size) in [(1, 8), (2, 8), (3, 16), (7, 64), (64, 4096)] {
                read_back(&bodies, seed, max_chunk, buf_size);
            }
        }
    }

    #[test]
    fn edge_bodies() {
        let bodies: Vec<Vec<u8>> = [
            &b""[..],
            b"\r\n",
            b".\r\n",
            b"..\r\n",
            b".\r\r\n",
            b"a\r\n.\r\n..\r\n",
            b"\r\n.\r\n\r\n.",
        ]
        .iter()
        .map(|b| b.to_vec())
        .collect();
        // The last body has no final line end: give it one, as a server must.
        let mut bodies = bodies;
        bodies.last_mut().unwrap().extend_from_slice(b"\r\n");
        for max_chunk in 1..8 {
            read_back(&bodies, 7, max_chunk, 16);
        }
    }

    #[test]
    fn runs_of_lines_go_to_the_sink_whole() {
        let mut body = Vec::new();
        for i in 0..1000 {
            let _ = writeln!(body, "line {i} of a message without leading dots\r");
        }
        body.extend_from_slice(b"..a stuffed line\r\nand more\r\n");
        let mut c = client(stuffed(&body), 1, usize::MAX, BIG_BUF);
        let mut pieces = 0;
        let mut got = Vec::new();
        c.read_multiline(1 << 20, |piece| {
            pieces += 1;
            got.extend_from_slice(piece);
        })
        .unwrap();
        assert_eq!(got, body);
        assert_eq!(
            pieces, 2,
            "one piece before the dotted line, one from it on"
        );
    }

    #[test]
    fn a_remembered_chain_only_skips_the_checks_for_itself() {
        let ours = pop3d::server::tls::self_signed(&["localhost"]).unwrap().0;
        let other = pop3d::server::tls::self_signed(&["localhost"]).unwrap().0;
        let der = |pem: &str| {
            CertificateDer::pem_slice_iter(pem.as_bytes())
                .next()
                .unwrap()
        };
        let (ours, other) = (der(&ours).unwrap(), der(&other).unwrap());
        let mut roots = RootCertStore::empty();
        roots.add(ours.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = ChainVerifiedOnce::over(roots, &provider).unwrap();
        let check = |cert: &CertificateDer<'_>, name: &str| {
            let name = ServerName::try_from(name.to_owned()).unwrap();
            verifier
                .verify_server_cert(cert, &[], &name, &[], UnixTime::now())
                .is_ok()
        };
        for _ in 0..2 {
            assert!(check(&ours, "localhost"));
            assert!(!check(&other, "localhost"), "an untrusted certificate");
            assert!(!check(&ours, "example.org"), "a name the certificate lacks");
        }
    }

    /// Reads one RETR reply and hashes its content as `retr_round` does: the de-stuffed
    /// pieces, streamed into XXH3-128. Returns the octets and the digest.
    fn streamed_digest(c: &mut Client, what: &str) -> (u64, u128) {
        assert_eq!(c.status("RETR").unwrap(), "+OK", "{what}");
        let mut hasher = Xxh3::new();
        let got = c
            .read_multiline(1 << 24, |piece| hasher.update(piece))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        (got, hasher.digest128())
    }

    /// Generated messages, and files rich in dots or without a final line end.
    fn sample_files() -> Vec<Vec<u8>> {
        let mut files: Vec<Vec<u8>> = (0..12)
            .map(|n| {
                let mut rng = Rng::for_message(5, n);
                let size = Mix::Small.size(&mut rng);
                make_message(&mut rng, n as usize, size, 5)
            })
            .collect();
        files.push(b"a\n.\n..\n.x\n\nlast line without an end".to_vec());
        files.push(b".\r\n..\r\nalready CRLF\r\n".to_vec());
        files.push(b".".to_vec());
        files
    }

    #[test]
    fn the_content_check_accepts_the_file_and_nothing_else() {
        let files = sample_files();
        let expected: Vec<Expected> = files.iter().map(|f| Expected::of_file(f)).collect();
        let by_digest: HashMap<u128, Expected> = expected.iter().map(|e| (e.xxh3, *e)).collect();
        assert_eq!(
            by_digest.len(),
            files.len(),
            "every file has its own digest"
        );
        // The wire as a server sends it, and the same with one octet of one message changed
        // (a letter, so that the framing stays intact).
        let wires: Vec<Vec<u8>> = files.iter().map(|f| crlf(f)).collect();
        let mut corrupted = wires.clone();
        let victim = 4;
        let at = corrupted[victim]
            .iter()
            .rposition(|b| b.is_ascii_lowercase())
            .unwrap();
        corrupted[victim][at] = if corrupted[victim][at] == b'a' {
            b'b'
        } else {
            b'a'
        };
        for (max_chunk, buf_size) in [(1, 16), (5, 64), (4096, 4096), (usize::MAX, BIG_BUF)] {
            for (wires, bad) in [(&wires, None), (&corrupted, Some(victim))] {
                let mut data = Vec::new();
                for wire in wires.iter() {
                    data.extend_from_slice(b"+OK\r\n");
                    data.extend_from_slice(&stuffed(wire));
                }
                let mut c = client(data, 9, max_chunk, buf_size);
                for (i, want) in expected.iter().enumerate() {
                    let what = format!("chunks {max_chunk}, buf {buf_size}, message {i}");
                    let (got, digest) = streamed_digest(&mut c, &what);
                    assert_eq!(got, want.size, "{what}");
                    if bad == Some(i) {
                        assert_ne!(digest, want.xxh3, "{what}: corruption unnoticed");
                        assert!(!by_digest.contains_key(&digest), "{what}");
                    } else {
                        assert_eq!(digest, want.xxh3, "{what}");
                        // By content: this file and no other.
                        assert!(by_digest.get(&digest).is_some_and(|e| e.size == want.size));
                    }
                }
            }
        }
    }

    #[test]
    fn generated_maildirs_match_their_expectations_and_look_delivered_earlier() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("Maildir");
        let expected = generate_mailbox(&dir, 20, 3, Mix::Small).unwrap();
        assert_eq!(expected.len(), 20);
        let long_ago = SystemTime::now() - DELIVERED_AGO + Duration::from_secs(5);
        for sub in ["tmp", "new", "cur"] {
            let meta = fs::metadata(dir.join(sub)).unwrap();
            assert!(
                meta.modified().unwrap() <= long_ago,
                "{sub} modified too recently"
            );
            assert!(
                meta.accessed().unwrap() <= long_ago,
                "{sub} accessed too recently"
            );
        }
        let read = read_expected(&dir).unwrap();
        assert_eq!(read.by_uidl.len(), expected.len());
        for (name, want) in &expected {
            let got = read.by_uidl[name];
            assert_eq!((got.size, got.xxh3), (want.size, want.xxh3), "{name}");
        }
    }

    fn read_error(data: &[u8], max_chunk: usize, limit: u64) -> String {
        let mut c = client(data.to_vec(), 3, max_chunk, 64);
        c.read_multiline(limit, |_| {}).unwrap_err()
    }

    #[test]
    fn unstuffed_dots_and_overlong_bodies_are_errors() {
        for max_chunk in 1..6 {
            for data in [&b".x\r\n.\r\n"[..], b"a\r\n.\r\r\n.\r\n", b"a\r\n.x"] {
                let e = read_error(data, max_chunk, 1 << 20);
                assert!(e.contains("not byte-stuffed"), "{data:?}: {e}");
            }
            // No terminator: the limit ends it, not the end of the stream.
            let e = read_error(&b"0123456789\r\n".repeat(100), max_chunk, 500);
            assert!(e.contains("over 500 octets"), "{e}");
        }
        // A stream that ends before the terminator.
        let e = read_error(b"abc\r\n.", 4, 1 << 20);
        assert!(e.contains("closed"), "{e}");
    }
}
