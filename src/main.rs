//! The `pop3d` command: serve, demo, hash-password.

use std::io::{BufRead, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use argh::FromArgs;
use pop3d::auth::{Scheme, hash_password};
use pop3d::config::{ConfigSource, FileConfig};
use pop3d::session::Mode;

#[derive(FromArgs)]
/// A light, fast POP3 server over per-user Maildirs, with delete and keep modes.
struct Cli {
    #[argh(subcommand)]
    command: Command,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Command {
    Serve(Box<Serve>),
    Demo(Demo),
    HashPassword(HashPassword),
    Check(Check),
}

#[derive(FromArgs)]
#[argh(subcommand, name = "check")]
/// Validate a configuration file (users file, certificate and key, Maildir template, user).
struct Check {
    /// the TOML configuration to check
    #[argh(option)]
    config: PathBuf,
}

#[derive(FromArgs)]
#[argh(subcommand, name = "serve")]
/// Serve POP3 to the users of a users file.
struct Serve {
    /// TOML file with the same settings as these flags; flags win
    #[argh(option)]
    config: Option<PathBuf>,
    /// address to serve plain POP3 on, e.g. 0.0.0.0:110 (repeatable; default 0.0.0.0:110)
    #[argh(option)]
    listen: Vec<SocketAddr>,
    /// users file in Dovecot passwd-file format: user:{SCHEME}hash:uid:gid:gecos:home:shell:extra
    #[argh(option)]
    users: Option<PathBuf>,
    /// address to serve POP3 over implicit TLS on, e.g. 0.0.0.0:995 (repeatable)
    #[argh(option)]
    listen_tls: Vec<SocketAddr>,
    /// PEM certificate chain for TLS (re-read on SIGHUP); enables STLS on plain listeners
    #[argh(option)]
    tls_cert: Option<PathBuf>,
    /// PEM private key for the certificate: PKCS#8, PKCS#1 or SEC1
    #[argh(option)]
    tls_key: Option<PathBuf>,
    /// the Maildir template: %u user, %n local part, %d domain, %h or ~/ home (default ~/Maildir)
    #[argh(option)]
    maildir: Option<String>,
    /// what QUIT does with DELE'd messages by default: delete (default) or keep
    #[argh(option)]
    mode: Option<Mode>,
    /// allow USER/PASS and APOP without TLS from other hosts (loopback is always allowed)
    #[argh(switch)]
    allow_plaintext_auth: bool,
    /// offer APOP (MD5; only for users with {PLAIN} passwords)
    #[argh(switch)]
    enable_apop: bool,
    /// idle time allowed before login (default 60s)
    #[argh(option)]
    login_timeout: Option<humantime::Duration>,
    /// time allowed from connecting to logging in, however busy the client (default 3m)
    #[argh(option)]
    login_time_limit: Option<humantime::Duration>,
    /// idle time allowed after login (default 10m, the RFC 1939 minimum)
    #[argh(option)]
    idle_timeout: Option<humantime::Duration>,
    /// pause before answering a first failed login; doubles per failure from an address (default 2s)
    #[argh(option)]
    auth_failure_delay: Option<humantime::Duration>,
    /// most connections served at once (default 1000)
    #[argh(option)]
    max_connections: Option<usize>,
    /// most connections from one address (default 50)
    #[argh(option)]
    max_connections_per_ip: Option<usize>,
    /// most logged-in sessions of one user from one address (default 10)
    #[argh(option)]
    max_sessions_per_user_ip: Option<usize>,
    /// most messages, over all Maildirs, whose listings are kept in memory between sessions,
    /// about 150 bytes each; 0 keeps none (default 250000)
    #[argh(option)]
    listing_cache_messages: Option<usize>,
    /// longest pause after repeated failed logins from one address (default 15s)
    #[argh(option)]
    auth_failure_delay_max: Option<humantime::Duration>,
    /// least time between two logins of one login name, announced as LOGIN-DELAY (default none)
    #[argh(option)]
    login_delay: Option<humantime::Duration>,
    /// host name in the APOP banner (default: the system's)
    #[argh(option)]
    hostname: Option<String>,
    /// user to run as once the ports are bound, when started as root
    #[argh(option)]
    user: Option<String>,
    /// group to run as (default: the user's primary group)
    #[argh(option)]
    group: Option<String>,
    /// serve mail as root (refused by default)
    #[argh(switch)]
    allow_root: bool,
    /// how long SIGTERM waits for busy sessions before closing them (default 10s)
    #[argh(option)]
    shutdown_grace: Option<humantime::Duration>,
    /// address to serve Prometheus metrics on, e.g. 127.0.0.1:9110 (default: off)
    #[argh(option)]
    metrics: Option<SocketAddr>,
}

#[derive(FromArgs)]
#[argh(subcommand, name = "demo")]
/// Serve a demo user and mailbox from a temporary folder on loopback.
struct Demo {
    /// address for plain POP3 (default 127.0.0.1:1110)
    #[argh(option, default = "SocketAddr::from(([127, 0, 0, 1], 1110))")]
    listen: SocketAddr,
    /// address for implicit TLS (default 127.0.0.1:1995)
    #[argh(option, default = "SocketAddr::from(([127, 0, 0, 1], 1995))")]
    listen_tls: SocketAddr,
}

#[derive(FromArgs)]
#[argh(subcommand, name = "hash-password")]
/// Read a password from standard input and print its users-file form.
struct HashPassword {
    /// SHA512-CRYPT (default), SHA256-CRYPT, BLF-CRYPT, ARGON2ID, ARGON2I, SCRAM-SHA-256 or PLAIN
    #[argh(option, default = "Scheme::default()")]
    scheme: Scheme,
}

fn main() -> ExitCode {
    let cli: Cli = argh::from_env();
    init_logging();
    let result = match cli.command {
        Command::Serve(serve) => run_serve(*serve),
        Command::Demo(demo) => pop3d::demo::run(demo.listen, demo.listen_tls),
        Command::HashPassword(args) => run_hash_password(args.scheme),
        Command::Check(args) => pop3d::check::run(args.config).map(|summary| println!("{summary}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("pop3d: {message}");
            ExitCode::FAILURE
        }
    }
}

/// RUST_LOG-controlled logs on standard error. Under systemd (stderr is the journal) lines
/// carry no timestamp of their own and start with a syslog priority, `<3>` for errors, so
/// `journalctl -p err` finds them.
fn init_logging() {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if stderr_is_journal() {
        builder.format(|out, record| {
            let priority = match record.level() {
                log::Level::Error => 3,
                log::Level::Warn => 4,
                log::Level::Info => 6,
                log::Level::Debug | log::Level::Trace => 7,
            };
            writeln!(out, "<{priority}>{}", record.args())
        });
    }
    builder.init();
}

/// Whether standard error is systemd's journal stream: JOURNAL_STREAM names its device and
/// inode (systemd.exec(5)), so a child that inherits the variable but writes elsewhere is
/// not fooled.
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    match std::fs::metadata("/proc/self/fd/2") {
        Ok(meta) => dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino()),
        Err(_) => false,
    }
}

fn run_serve(args: Serve) -> Result<(), String> {
    let source = config_source(args);
    let config = source.load()?;
    pop3d::server::run(config, source, |_, _| {})
}

/// The flags as a config layer over the file, so SIGHUP can re-read the file under them.
fn config_source(args: Serve) -> ConfigSource {
    let switch = |on: bool| on.then_some(true);
    let flags = FileConfig {
        listen: Some(args.listen),
        listen_tls: Some(args.listen_tls),
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        users: args.users,
        maildir: args.maildir,
        mode: args.mode,
        allow_plaintext_auth: switch(args.allow_plaintext_auth),
        enable_apop: switch(args.enable_apop),
        login_timeout: args.login_timeout.map(Into::into),
        login_time_limit: args.login_time_limit.map(Into::into),
        idle_timeout: args.idle_timeout.map(Into::into),
        auth_failure_delay: args.auth_failure_delay.map(Into::into),
        max_connections: args.max_connections,
        max_connections_per_ip: args.max_connections_per_ip,
        max_sessions_per_user_ip: args.max_sessions_per_user_ip,
        auth_failure_delay_max: args.auth_failure_delay_max.map(Into::into),
        login_delay: args.login_delay.map(Into::into),
        hostname: args.hostname,
        user: args.user,
        group: args.group,
        allow_root: switch(args.allow_root),
        shutdown_grace: args.shutdown_grace.map(Into::into),
        metrics: args.metrics,
        listing_cache_messages: args.listing_cache_messages,
    };
    ConfigSource {
        file: args.config,
        flags,
    }
}

fn run_hash_password(scheme: Scheme) -> Result<(), String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("Password (shown as typed): ");
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the password: {e}"))?;
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        return Err("empty password".into());
    }
    let hashed = hash_password(scheme, password.as_bytes()).map_err(|e| e.to_string())?;
    println!("{hashed}");
    Ok(())
}
