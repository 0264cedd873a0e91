//! The async runtime, named here and nowhere else.
//!
//! async-std is discontinued in favour of smol (RUSTSEC-2025-0052); its executor and reactor
//! are smol's crates, so moving to smol means changing this file only. Everything else uses
//! the futures-lite / futures-io traits.

use std::future::Future;
use std::io;
use std::time::Duration;

pub use async_std::net::{TcpListener, TcpStream};

/// Runs the server's top-level future on the current thread, with the executor's workers.
pub fn block_on<T>(future: impl Future<Output = T>) -> T {
    async_std::task::block_on(future)
}

/// Runs a task in the background; it keeps running when the handle is dropped.
pub fn spawn<T: Send + 'static>(future: impl Future<Output = T> + Send + 'static) {
    drop(async_std::task::spawn(future));
}

/// Runs blocking work (file I/O, password hashing) off the async threads.
pub async fn unblock<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    async_std::task::spawn_blocking(work).await
}

/// Fails with `TimedOut` if `future` takes longer than `limit`.
pub async fn timeout<T>(
    limit: Duration,
    future: impl Future<Output = io::Result<T>>,
) -> io::Result<T> {
    async_std::io::timeout(limit, future).await
}

pub async fn sleep(duration: Duration) {
    async_std::task::sleep(duration).await
}
