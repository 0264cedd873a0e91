//! The network side: listeners, TLS, connection limits, reloads, and the runtime behind them.

mod connection;
mod limits;
mod rt;
pub mod tls;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_lock::Semaphore;

use crate::auth::Users;
use crate::config::Config;
use crate::protocol::response::{self, Code};

/// What every connection shares.
struct Shared {
    config: Config,
    /// Replaced whole on SIGHUP; sessions keep the copy they started with.
    users: RwLock<Arc<Users>>,
    /// Replaced on SIGHUP when the new certificate loads; None without TLS.
    tls: RwLock<Option<tls::Acceptor>>,
    /// Bounds concurrent password checks: an Argon2 verification takes 64 MiB and ~0.3 s.
    hashing: Semaphore,
    connections: AtomicUsize,
    limits: Arc<limits::Limits>,
}

impl Shared {
    fn users(&self) -> Arc<Users> {
        // A poisoned lock still holds a valid Arc: a panic can't leave it half-written.
        self.users.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn tls_acceptor(&self) -> Option<tls::Acceptor> {
        self.tls.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// SIGHUP: re-reads the users file and the certificate. What fails to load is reported
    /// and the old version stays in service, so a bad edit never takes the server down.
    fn reload(&self) {
        match Users::load(&self.config.users_file) {
            Ok(users) => {
                log::info!(
                    "reloaded {} users from {}",
                    users.len(),
                    self.config.users_file.display()
                );
                *self.users.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(users);
            }
            Err(e) => log::error!("users file not reloaded, keeping the old one: {e}"),
        }
        if let Some(files) = &self.config.tls {
            match tls::Acceptor::load(&files.cert, &files.key) {
                Ok(acceptor) => {
                    log::info!("reloaded certificate {}", files.cert.display());
                    *self.tls.write().unwrap_or_else(|e| e.into_inner()) = Some(acceptor);
                }
                Err(e) => log::error!("certificate not reloaded, keeping the old one: {e}"),
            }
        }
    }
}

/// Binds every listener, calls `on_ready` with the bound addresses (plain, then implicit
/// TLS), and serves until the process ends. Fails early, with a message for the
/// administrator, if a file or port is unusable.
pub fn run(
    config: Config,
    on_ready: impl FnOnce(&[SocketAddr], &[SocketAddr]),
) -> Result<(), String> {
    let users = Users::load(&config.users_file).map_err(|e| e.to_string())?;
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
        let plain = bind_all(&config.listen, "plain POP3").await?;
        let implicit = bind_all(&config.listen_tls, "implicit TLS").await?;
        let parallel_hashes = std::thread::available_parallelism().map_or(2, |n| n.get());
        let shared = Arc::new(Shared {
            users: RwLock::new(Arc::new(users)),
            tls: RwLock::new(acceptor),
            hashing: Semaphore::new(parallel_hashes),
            connections: AtomicUsize::new(0),
            limits: limits::Limits::new(limits::LimitSettings {
                per_ip: config.max_connections_per_ip,
                sessions_per_user_ip: config.max_sessions_per_user_ip,
                failure_delay: config.auth_failure_delay,
                failure_delay_max: config.auth_failure_delay_max,
                login_delay: config.login_delay,
            }),
            config,
        });
        watch_sighup(shared.clone())?;
        let addrs = |listeners: &[(rt::TcpListener, SocketAddr)]| {
            listeners.iter().map(|l| l.1).collect::<Vec<_>>()
        };
        on_ready(&addrs(&plain), &addrs(&implicit));
        log::info!("ready");
        for ((listener, _), implicit_tls) in plain
            .into_iter()
            .map(|l| (l, false))
            .chain(implicit.into_iter().map(|l| (l, true)))
        {
            rt::spawn(accept_loop(listener, shared.clone(), implicit_tls));
        }
        // The accept loops run until the process ends.
        futures_lite::future::pending::<()>().await;
        Ok(())
    })
}

async fn bind_all(
    addrs: &[SocketAddr],
    kind: &str,
) -> Result<Vec<(rt::TcpListener, SocketAddr)>, String> {
    let mut bound = Vec::new();
    for addr in addrs {
        let listener = rt::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        log::info!("listening on {local} ({kind})");
        bound.push((listener, local));
    }
    Ok(bound)
}

/// Reloads on SIGHUP from a thread of its own: reading files is blocking work.
fn watch_sighup(shared: Arc<Shared>) -> Result<(), String> {
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])
        .map_err(|e| format!("cannot watch SIGHUP: {e}"))?;
    std::thread::Builder::new()
        .name("sighup".into())
        .spawn(move || {
            for _ in signals.forever() {
                shared.reload();
            }
        })
        .map_err(|e| format!("cannot start the SIGHUP thread: {e}"))?;
    Ok(())
}

async fn accept_loop(listener: rt::TcpListener, shared: Arc<Shared>, implicit_tls: bool) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, say: back off instead of spinning.
                log::error!("accept failed: {e}");
                rt::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let open = shared.connections.fetch_add(1, Ordering::Relaxed) + 1;
        let shared = shared.clone();
        rt::spawn(async move {
            let ip = peer.ip().to_canonical();
            if open > shared.config.max_connections {
                log::warn!("refusing {peer}: {open} connections open");
                refuse(stream, "Too many connections, try again later").await;
            } else if let Some(_slot) = shared.limits.connection(ip) {
                connection::serve(stream, peer, &shared, implicit_tls).await;
            } else {
                log::warn!("refusing {peer}: too many connections from {ip}");
                refuse(stream, "Too many connections from your address").await;
            }
            shared.connections.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Tells a client over the connection limit why it is turned away. On an implicit-TLS
/// listener the client can't read plaintext; it sees the connection close, as it should.
async fn refuse(mut stream: rt::TcpStream, why: &str) {
    use futures_lite::AsyncWriteExt;
    let mut out = Vec::new();
    response::err(&mut out, Some(Code::SysTemp), why);
    let _ = rt::timeout(Duration::from_secs(5), stream.write_all(&out)).await;
}
