//! The network side: listeners, connection limits, and the runtime behind them.

mod connection;
mod rt;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_lock::Semaphore;

use crate::auth::Users;
use crate::config::Config;
use crate::protocol::response::{self, Code};

/// What every connection shares.
struct Shared {
    config: Config,
    users: Arc<Users>,
    /// Bounds concurrent password checks: an Argon2 verification takes 64 MiB and ~0.3 s.
    hashing: Semaphore,
    connections: AtomicUsize,
}

/// Binds every listener, calls `on_ready` with the bound addresses, and serves until the
/// process ends. Fails early, with a message for the administrator, if a file or port is
/// unusable.
pub fn run(config: Config, on_ready: impl FnOnce(&[SocketAddr])) -> Result<(), String> {
    let users = Users::load(&config.users_file).map_err(|e| e.to_string())?;
    log::info!(
        "loaded {} users from {}",
        users.len(),
        config.users_file.display()
    );
    rt::block_on(async move {
        let mut listeners = Vec::new();
        let mut addrs = Vec::new();
        for addr in &config.listen {
            let listener = rt::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            let local = listener.local_addr().map_err(|e| e.to_string())?;
            log::info!("listening on {local} (plain POP3)");
            addrs.push(local);
            listeners.push(listener);
        }
        let parallel_hashes = std::thread::available_parallelism().map_or(2, |n| n.get());
        let shared = Arc::new(Shared {
            config,
            users: Arc::new(users),
            hashing: Semaphore::new(parallel_hashes),
            connections: AtomicUsize::new(0),
        });
        on_ready(&addrs);
        for listener in listeners {
            rt::spawn(accept_loop(listener, shared.clone()));
        }
        // The accept loops run until the process ends.
        futures_lite::future::pending::<()>().await;
        Ok(())
    })
}

async fn accept_loop(listener: rt::TcpListener, shared: Arc<Shared>) {
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
            if open > shared.config.max_connections {
                log::warn!("refusing {peer}: {open} connections open");
                refuse(stream).await;
            } else {
                connection::serve(stream, peer, &shared).await;
            }
            shared.connections.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Tells a client over the connection limit why it is turned away.
async fn refuse(mut stream: rt::TcpStream) {
    use futures_lite::AsyncWriteExt;
    let mut out = Vec::new();
    response::err(
        &mut out,
        Some(Code::SysTemp),
        "Too many connections, try again later",
    );
    let _ = rt::timeout(Duration::from_secs(5), stream.write_all(&out)).await;
}
