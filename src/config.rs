//! The server's settings: command-line flags over an optional TOML file over defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::session::Mode;
use crate::store::{self, template};

/// Everything `pop3d serve` needs, after merging and checking.
#[derive(Clone, Debug)]
pub struct Config {
    /// Plain POP3 listeners (offering STLS when a certificate is configured).
    pub listen: Vec<SocketAddr>,
    /// Implicit-TLS listeners (RFC 8314, port 995).
    pub listen_tls: Vec<SocketAddr>,
    /// PEM certificate chain and private key, re-read on SIGHUP.
    pub tls: Option<TlsFiles>,
    pub users_file: PathBuf,
    /// The Maildir template (`%u`, `%n`, `%d`, `%h`, `~/`); None means `<home>/Maildir`.
    pub maildir: Option<String>,
    /// The mode of a user's primary login when the users file does not say.
    pub mode: Mode,
    /// Allow USER/PASS and APOP on unencrypted connections from other hosts.
    pub allow_plaintext_auth: bool,
    /// Offer APOP (MD5, for users with {PLAIN} passwords only).
    pub enable_apop: bool,
    /// Idle time allowed before login.
    pub login_timeout: Duration,
    /// Time allowed from connecting to logging in, however active the client.
    pub login_time_limit: Duration,
    /// Idle time allowed after login (RFC 1939 §3: at least 10 minutes).
    pub idle_timeout: Duration,
    /// Pause before answering a failed login, to slow down password guessing.
    pub auth_failure_delay: Duration,
    pub max_connections: usize,
    /// Most connections open at once from one address.
    pub max_connections_per_ip: usize,
    /// Most logged-in sessions of one user from one address.
    pub max_sessions_per_user_ip: usize,
    /// The longest the pause after failed logins grows to.
    pub auth_failure_delay_max: Duration,
    /// Least time between two logins of the same login name (RFC 2449 LOGIN-DELAY).
    pub login_delay: Option<Duration>,
    /// Host name for the APOP banner.
    pub hostname: String,
    /// The account to switch to once the listeners are bound (when started as root).
    pub user: Option<String>,
    pub group: Option<String>,
    /// Serve mail as root: refused unless asked for, since a bug would then reach every file.
    pub allow_root: bool,
    /// How long SIGTERM waits for sessions to finish before closing them.
    pub shutdown_grace: Duration,
    /// Where to serve Prometheus/OpenMetrics text, if anywhere.
    pub metrics: Option<SocketAddr>,
    /// Most messages, over all Maildirs, whose listings are kept in memory between sessions.
    pub listing_cache_messages: usize,
}

/// Where the certificate and its key are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The TOML file: the same keys as the flags, with `_` for `-`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<Vec<SocketAddr>>,
    pub listen_tls: Option<Vec<SocketAddr>>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub users: Option<PathBuf>,
    pub maildir: Option<String>,
    pub mode: Option<Mode>,
    pub allow_plaintext_auth: Option<bool>,
    pub enable_apop: Option<bool>,
    #[serde(default, with = "humantime_serde_opt")]
    pub login_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    pub login_time_limit: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    pub idle_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    pub auth_failure_delay: Option<Duration>,
    pub max_connections: Option<usize>,
    pub max_connections_per_ip: Option<usize>,
    pub max_sessions_per_user_ip: Option<usize>,
    #[serde(default, with = "humantime_serde_opt")]
    pub auth_failure_delay_max: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    pub login_delay: Option<Duration>,
    pub hostname: Option<String>,
    pub user: Option<String>,
    pub group: Option<String>,
    pub allow_root: Option<bool>,
    #[serde(default, with = "humantime_serde_opt")]
    pub shutdown_grace: Option<Duration>,
    pub metrics: Option<SocketAddr>,
    pub listing_cache_messages: Option<usize>,
}

/// Where the configuration comes from, kept so SIGHUP can read it again.
#[derive(Clone, Debug)]
pub struct ConfigSource {
    pub file: Option<PathBuf>,
    /// The command-line flags, which win over the file at every reload.
    pub flags: FileConfig,
}

impl ConfigSource {
    pub fn load(&self) -> Result<Config, String> {
        let file = match &self.file {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        file.merge(self.flags.clone())
    }
}

/// Durations in the TOML file are written as for the flags: "60s", "10m", "1500ms".
mod humantime_serde_opt {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        text.map(|t| humantime::parse_duration(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// The least RFC 1939 §3 allows for the autologout timer after login.
const MIN_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

impl FileConfig {
    pub fn load(path: &Path) -> Result<FileConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("config {}: {e}", path.display()))
    }

    /// Fills what the flags left unset from this file, then defaults, and checks the result.
    pub fn merge(self, flags: FileConfig) -> Result<Config, String> {
        let listen = flags.listen.filter(|l| !l.is_empty()).or(self.listen);
        let listen_tls = flags
            .listen_tls
            .filter(|l| !l.is_empty())
            .or(self.listen_tls);
        let tls = match (
            flags.tls_cert.or(self.tls_cert),
            flags.tls_key.or(self.tls_key),
        ) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            _ => return Err("tls_cert and tls_key go together: set both or neither".into()),
        };
        let config = Config {
            listen: listen.unwrap_or_else(|| vec![SocketAddr::from(([0, 0, 0, 0], 110))]),
            listen_tls: listen_tls.unwrap_or_default(),
            tls,
            users_file: flags
                .users
                .or(self.users)
                .ok_or("no users file: pass --users FILE or set users in the config")?,
            maildir: flags.maildir.or(self.maildir),
            mode: flags.mode.or(self.mode).unwrap_or_default(),
            allow_plaintext_auth: flags
                .allow_plaintext_auth
                .or(self.allow_plaintext_auth)
                .unwrap_or(false),
            enable_apop: flags.enable_apop.or(self.enable_apop).unwrap_or(false),
            login_timeout: flags
                .login_timeout
                .or(self.login_timeout)
                .unwrap_or(Duration::from_secs(60)),
            login_time_limit: flags
                .login_time_limit
                .or(self.login_time_limit)
                .unwrap_or(Duration::from_secs(180)),
            idle_timeout: flags
                .idle_timeout
                .or(self.idle_timeout)
                .unwrap_or(MIN_IDLE_TIMEOUT),
            auth_failure_delay: flags
                .auth_failure_delay
                .or(self.auth_failure_delay)
                .unwrap_or(Duration::from_secs(2)),
            max_connections: flags
                .max_connections
                .or(self.max_connections)
                .unwrap_or(1000),
            max_connections_per_ip: flags
                .max_connections_per_ip
                .or(self.max_connections_per_ip)
                .unwrap_or(50),
            max_sessions_per_user_ip: flags
                .max_sessions_per_user_ip
                .or(self.max_sessions_per_user_ip)
                .unwrap_or(10),
            auth_failure_delay_max: flags
                .auth_failure_delay_max
                .or(self.auth_failure_delay_max)
                .unwrap_or(Duration::from_secs(15)),
            login_delay: flags
                .login_delay
                .or(self.login_delay)
                .filter(|d| !d.is_zero()),
            hostname: flags
                .hostname
                .or(self.hostname)
                .unwrap_or_else(system_hostname),
            user: flags.user.or(self.user),
            group: flags.group.or(self.group),
            allow_root: flags.allow_root.or(self.allow_root).unwrap_or(false),
            shutdown_grace: flags
                .shutdown_grace
                .or(self.shutdown_grace)
                .unwrap_or(Duration::from_secs(10)),
            metrics: flags.metrics.or(self.metrics),
            listing_cache_messages: flags
                .listing_cache_messages
                .or(self.listing_cache_messages)
                .unwrap_or(store::DEFAULT_LISTING_CACHE),
        };
        if let Some(t) = &config.maildir {
            template::check_template(t)?;
        }
        if config.listen.is_empty() && config.listen_tls.is_empty() {
            return Err("nothing to listen on".into());
        }
        if !config.listen_tls.is_empty() && config.tls.is_none() {
            return Err("--listen-tls needs --tls-cert and --tls-key".into());
        }
        if config.max_connections == 0
            || config.max_connections_per_ip == 0
            || config.max_sessions_per_user_ip == 0
        {
            return Err("connection and session limits must be at least 1".into());
        }
        if config.login_timeout.is_zero() || config.login_time_limit.is_zero() {
            return Err("login_timeout and login_time_limit must be more than 0".into());
        }
        if config.idle_timeout < MIN_IDLE_TIMEOUT {
            log::warn!(
                "idle timeout {} is below the 10 minutes RFC 1939 asks for",
                humantime::format_duration(config.idle_timeout)
            );
        }
        Ok(config)
    }
}

fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_defaults_fill_the_rest() {
        let file: FileConfig = toml::from_str(
            r#"
            listen = ["127.0.0.1:1110"]
            users = "/etc/pop3d/users"
            maildir = "/var/mail/%d/%n"
            mode = "keep"
            idle_timeout = "15m"
            "#,
        )
        .unwrap();
        let flags = FileConfig {
            mode: Some(Mode::Delete),
            ..FileConfig::default()
        };
        let config = file.merge(flags).unwrap();
        assert_eq!(config.listen, vec!["127.0.0.1:1110".parse().unwrap()]);
        assert_eq!(config.mode, Mode::Delete);
        assert_eq!(config.idle_timeout, Duration::from_secs(900));
        assert_eq!(config.login_timeout, Duration::from_secs(60));
        assert_eq!(config.login_time_limit, Duration::from_secs(180));
        assert!(!config.allow_plaintext_auth);
    }

    #[test]
    fn the_sample_config_is_valid() {
        let file: FileConfig = toml::from_str(include_str!("../examples/pop3d.toml")).unwrap();
        let config = file.merge(FileConfig::default()).unwrap();
        assert_eq!(config.maildir.as_deref(), Some("/var/mail/%d/%n/Maildir"));
        assert_eq!(config.listing_cache_messages, 250_000);
    }

    #[test]
    fn bad_files_are_refused_with_a_reason() {
        assert!(toml::from_str::<FileConfig>("lisen = []").is_err());
        assert!(toml::from_str::<FileConfig>("mode = \"archive\"").is_err());
        assert!(toml::from_str::<FileConfig>("idle_timeout = \"soon\"").is_err());
        let no_users = FileConfig::default().merge(FileConfig::default());
        assert!(no_users.unwrap_err().contains("no users file"));
        let file = FileConfig {
            users: Some("/u".into()),
            maildir: Some("/var/mail/shared".into()),
            ..FileConfig::default()
        };
        assert!(file.merge(FileConfig::default()).is_err());
    }
}
