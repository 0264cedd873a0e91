//! The network side: listeners, TLS, limits, signals, reloads, metrics, and the runtime.

mod connection;
mod file;
mod lifecycle;
mod limits;
mod metrics;
mod privileges;
mod rt;
pub mod tls;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_lock::Semaphore;
use sd_notify::NotifyState;

use crate::auth::Users;
use crate::config::{Config, ConfigSource};
use crate::protocol::response::{self, Code};
use crate::store;
use lifecycle::Shutdown;
use metrics::{ListenerLabel, Metrics};

/// What every connection shares.
struct Shared {
    /// Replaced whole on SIGHUP; a session keeps the copy it started with.
    config: RwLock<Arc<Config>>,
    /// Where SIGHUP reads the configuration again.
    source: Option<ConfigSource>,
    users: RwLock<Arc<Users>>,
    /// None without TLS; replaced on SIGHUP when the new certificate loads.
    tls: RwLock<Option<tls::Acceptor>>,
    /// Bounds concurrent password checks: an Argon2 verification takes 64 MiB and ~0.3 s.
    hashing: Semaphore,
    connections: AtomicUsize,
    limits: Arc<limits::Limits>,
    metrics: Arc<Metrics>,
    shutdown: Arc<Shutdown>,
}

/// Reads through a lock a panic may have poisoned: every writer stores a whole new value.
fn read<T: Clone>(lock: &RwLock<T>) -> T {
    lock.read().unwrap_or_else(|e| e.into_inner()).clone()
}

fn write<T>(lock: &RwLock<T>, value: T) {
    *lock.write().unwrap_or_else(|e| e.into_inner()) = value;
}

impl Shared {
    fn config(&self) -> Arc<Config> {
        read(&self.config)
    }

    fn users(&self) -> Arc<Users> {
        read(&self.users)
    }

    fn tls_acceptor(&self) -> Option<tls::Acceptor> {
        read(&self.tls)
    }

    /// SIGHUP: the configuration, the users file and the certificate are read again. What
    /// fails to load is reported and the old version stays in service, so a bad edit never
    /// takes the server down. Listeners and connection limits keep their values until a
    /// restart.
    fn reload(&self) {
        let config = match &self.source {
            Some(source) => match source.load() {
                Ok(config) => {
                    store::set_listing_cache(config.listing_cache_messages);
                    let config = Arc::new(config);
                    write(&self.config, config.clone());
                    log::info!("reloaded the configuration");
                    config
                }
                Err(e) => {
                    log::error!("configuration not reloaded, keeping the old one: {e}");
                    self.config()
                }
            },
            None => self.config(),
        };
        match Users::load(&config.users_file) {
            Ok(users) => {
                log::info!(
                    "reloaded {} users from {}",
                    users.len(),
                    config.users_file.display()
                );
                write(&self.users, Arc::new(users));
            }
            Err(e) => log::error!("users file not reloaded, keeping the old one: {e}"),
        }
        if let Some(files) = &config.tls {
            match tls::Acceptor::load(&files.cert, &files.key) {
                Ok(acceptor) => {
                    log::info!("reloaded certificate {}", files.cert.display());
                    write(&self.tls, Some(acceptor));
                }
                Err(e) => log::error!("certificate not reloaded, keeping the old one: {e}"),
            }
        }
    }
}

/// A bound listening socket and what it serves.
struct Listener {
    socket: rt::TcpListener,
    addr: SocketAddr,
    implicit_tls: bool,
}

/// Binds the listeners (or takes systemd's), drops root, calls `on_ready` with the plain
/// and implicit-TLS addresses, and serves until SIGTERM or SIGINT; then stops accepting,
/// says goodbye to idle sessions and waits up to the grace period for busy ones. Fails
/// early, with a message for the administrator, if a file or port is unusable.
pub fn run(
    config: Config,
    source: impl Into<Option<ConfigSource>>,
    on_ready: impl FnOnce(&[SocketAddr], &[SocketAddr]),
) -> Result<(), String> {
    let users = Users::load(&config.users_file).map_err(|e| e.to_string())?;
    store::set_listing_cache(config.listing_cache_messages);
    log::info!(
        "loaded {} users from {}",
        users.len(),
        config.users_file.display()
    );
    let acceptor = match &config.tls {
        Some(files) => {
            let acceptor = tls::Acceptor::load(&files.cert, &files.key)?;
            log::info!(
                "TLS ({}) with certificate {}",
                tls::BACKEND,
                files.cert.display()
            );
            Some(acceptor)
        }
        None => None,
    };
    rt::block_on(async move {
        let listeners = listeners(&config).await?;
        if listeners.iter().any(|l| l.implicit_tls) && acceptor.is_none() {
            return Err("an implicit-TLS socket needs --tls-cert and --tls-key".into());
        }
        let metrics_listener = match config.metrics {
            Some(addr) => Some(metrics::bind(addr).await?),
            None => None,
        };
        privileges::drop_privileges(
            config.user.as_deref(),
            config.group.as_deref(),
            config.allow_root,
        )?;
        let parallel_hashes = std::thread::available_parallelism().map_or(2, |n| n.get());
        let shared = Arc::new(Shared {
            limits: limits::Limits::new(limits::LimitSettings {
                per_ip: config.max_connections_per_ip,
                sessions_per_user_ip: config.max_sessions_per_user_ip,
                failure_delay: config.auth_failure_delay,
                failure_delay_max: config.auth_failure_delay_max,
                login_delay: config.login_delay,
            }),
            config: RwLock::new(Arc::new(config)),
            source: source.into(),
            users: RwLock::new(Arc::new(users)),
            tls: RwLock::new(acceptor),
            hashing: Semaphore::new(parallel_hashes),
            connections: AtomicUsize::new(0),
            metrics: Arc::new(Metrics::new()),
            shutdown: Arc::new(Shutdown::default()),
        });
        lifecycle::watch_signals(shared.clone())?;
        if let Some(listener) = metrics_listener {
            rt::spawn(metrics::serve(
                listener,
                shared.metrics.clone(),
                shared.shutdown.clone(),
            ));
        }
        let addrs = |tls: bool| -> Vec<SocketAddr> {
            listeners
                .iter()
                .filter(|l| l.implicit_tls == tls)
                .map(|l| l.addr)
                .collect()
        };
        on_ready(&addrs(false), &addrs(true));
        let accepting: Vec<_> = listeners
            .into_iter()
            .map(|l| accept_loop(l, shared.clone()))
            .collect();
        for task in accepting {
            rt::spawn(task);
        }
        rt::spawn(lifecycle::watchdog());
        log::info!("ready");
        lifecycle::notify(&[NotifyState::Ready]);
        shared.shutdown.wait().await;
        drain(&shared).await;
        Ok(())
    })
}

/// The systemd sockets when socket-activated, else the configured addresses.
async fn listeners(config: &Config) -> Result<Vec<Listener>, String> {
    let inherited: Vec<(i32, String)> = sd_notify::listen_fds_with_names()
        .map(|fds| fds.collect())
        .unwrap_or_default();
    let mut bound = Vec::new();
    if !inherited.is_empty() {
        for (fd, name) in inherited {
            // SAFETY: systemd passed this descriptor to us alone (LISTEN_PID is ours), open
            // and listening; nothing else in the process owns it.
            let std_listener =
                unsafe { <std::net::TcpListener as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            let socket = rt::TcpListener::from(std_listener);
            let addr = socket
                .local_addr()
                .map_err(|e| format!("systemd socket {name}: {e}"))?;
            // A socket named pop3s, or an unnamed one on 995 (as pop3d.socket has it).
            let implicit_tls = name == "pop3s" || (name != "pop3" && addr.port() == 995);
            log::info!(
                "listening on {addr} ({}, from systemd)",
                if implicit_tls {
                    "implicit TLS"
                } else {
                    "plain POP3"
                }
            );
            bound.push(Listener {
                socket,
                addr,
                implicit_tls,
            });
        }
        return Ok(bound);
    }
    for (addrs, implicit_tls) in [(&config.listen, false), (&config.listen_tls, true)] {
        for addr in addrs {
            let socket = rt::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            let addr = socket.local_addr().map_err(|e| e.to_string())?;
            log::info!(
                "listening on {addr} ({})",
                if implicit_tls {
                    "implicit TLS"
                } else {
                    "plain POP3"
                }
            );
            bound.push(Listener {
                socket,
                addr,
                implicit_tls,
            });
        }
    }
    Ok(bound)
}

/// After SIGTERM: idle sessions have been told goodbye by their connections; wait for busy
/// ones (a RETR in progress, an UPDATE being applied) up to the grace period.
async fn drain(shared: &Shared) {
    let grace = shared.config().shutdown_grace;
    let deadline = Instant::now() + grace;
    while shared.connections.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        rt::sleep(Duration::from_millis(20)).await;
    }
    let left = shared.connections.load(Ordering::SeqCst);
    if left > 0 {
        log::warn!(
            "closing {left} sessions still busy after {}",
            humantime::format_duration(grace)
        );
    }
    log::info!("stopped");
}

async fn accept_loop(listener: Listener, shared: Arc<Shared>) {
    let label = ListenerLabel {
        listener: format!(
            "{} {}",
            listener.addr,
            if listener.implicit_tls {
                "tls"
            } else {
                "plain"
            }
        ),
    };
    loop {
        let accepted =
            futures_lite::future::or(async { Some(listener.socket.accept().await) }, async {
                shared.shutdown.wait().await;
                None
            })
            .await;
        let Some(accepted) = accepted else {
            return;
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, say: back off instead of spinning.
                log::error!("accept failed: {e}");
                rt::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let open = shared.connections.fetch_add(1, Ordering::SeqCst) + 1;
        shared.metrics.connections.get_or_create(&label).inc();
        let gauge = shared
            .metrics
            .connections_open
            .get_or_create(&label)
            .clone();
        gauge.inc();
        let shared = shared.clone();
        let label = label.clone();
        let implicit_tls = listener.implicit_tls;
        rt::spawn(async move {
            let ip = peer.ip().to_canonical();
            let config = shared.config();
            if open > config.max_connections {
                log::warn!("refusing {peer}: {open} connections open");
                refuse(stream, "Too many connections, try again later").await;
            } else if let Some(_slot) = shared.limits.connection(ip) {
                connection::serve(stream, peer, &shared, implicit_tls, &label).await;
            } else {
                log::warn!("refusing {peer}: too many connections from {ip}");
                refuse(stream, "Too many connections from your address").await;
            }
            gauge.dec();
            shared.connections.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Tells a client over a connection limit why it is turned away. On an implicit-TLS
/// listener the client can't read plaintext; it sees the connection close, as it should.
async fn refuse(mut stream: rt::TcpStream, why: &str) {
    use futures_lite::AsyncWriteExt;
    let mut out = Vec::new();
    response::err(&mut out, Some(Code::SysTemp), why);
    let _ = rt::timeout(Duration::from_secs(5), stream.write_all(&out)).await;
}
