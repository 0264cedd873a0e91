//! Counters for Prometheus/OpenMetrics, and the small HTTP endpoint that serves them.
//!
//! The counters are atomics, always kept; `--metrics ADDR` only decides whether anyone can
//! read them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{lifecycle::Shutdown, rt};
use crate::store;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    /// The listener's address and kind, e.g. `0.0.0.0:995 tls`.
    pub listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabel {
    pub mode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

/// What the server counts, as Dovecot 2.3's stats would.
pub struct Metrics {
    registry: Registry,
    pub connections_open: Family<ListenerLabel, Gauge>,
    pub connections: Family<ListenerLabel, Counter>,
    pub tls_handshake_failures: Family<ListenerLabel, Counter>,
    pub sessions_open: Family<ModeLabel, Gauge>,
    pub logins: Family<ResultLabel, Counter>,
    pub messages_retrieved: Counter,
    pub octets_retrieved: Counter,
    /// Messages removed (delete mode) or hidden (keep mode) by QUIT, by mode.
    pub updates_applied: Family<ModeLabel, Counter>,
    /// Copied from the store's own counters at each scrape.
    listing_cache_hits: Counter,
    listing_cache_misses: Counter,
    listing_cache_used: Gauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("pop3d");
        let metrics = Metrics {
            connections_open: Family::default(),
            connections: Family::default(),
            tls_handshake_failures: Family::default(),
            sessions_open: Family::default(),
            logins: Family::default(),
            messages_retrieved: Counter::default(),
            octets_retrieved: Counter::default(),
            updates_applied: Family::default(),
            listing_cache_hits: Counter::default(),
            listing_cache_misses: Counter::default(),
            listing_cache_used: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "connections_open",
            "Connections open now",
            metrics.connections_open.clone(),
        );
        registry.register(
            "connections",
            "Connections accepted",
            metrics.connections.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed",
            metrics.tls_handshake_failures.clone(),
        );
        registry.register(
            "sessions_open",
            "Logged-in sessions now, by mode",
            metrics.sessions_open.clone(),
        );
        registry.register(
            "logins",
            "Login attempts, by result",
            metrics.logins.clone(),
        );
        registry.register(
            "messages_retrieved",
            "Messages sent by RETR",
            metrics.messages_retrieved.clone(),
        );
        registry.register(
            "octets_retrieved",
            "Octets of messages sent by RETR",
            metrics.octets_retrieved.clone(),
        );
        registry.register(
            "updates_applied",
            "Messages removed (delete mode) or hidden (keep mode) at QUIT",
            metrics.updates_applied.clone(),
        );
        registry.register(
            "listing_cache_hits",
            "Logins that found their Maildir's listing kept in memory and current",
            metrics.listing_cache_hits.clone(),
        );
        registry.register(
            "listing_cache_misses",
            "Logins that read their Maildir's new/ and cur/",
            metrics.listing_cache_misses.clone(),
        );
        registry.register(
            "listing_cache_used",
            "Messages (plus one per Maildir) whose listings are kept, against listing_cache_messages",
            metrics.listing_cache_used.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }

    pub fn label(mode: impl ToString) -> ModeLabel {
        ModeLabel {
            mode: mode.to_string(),
        }
    }

    pub fn result(result: &str) -> ResultLabel {
        ResultLabel {
            result: result.into(),
        }
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let cache = store::listing_cache_stats();
        self.listing_cache_hits.inner().store(cache.hits, Relaxed);
        self.listing_cache_misses
            .inner()
            .store(cache.misses, Relaxed);
        self.listing_cache_used
            .set(i64::try_from(cache.used).unwrap_or(i64::MAX));
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Serves `GET /metrics` until shutdown. Deliberately minimal HTTP/1.x: one request per
/// connection, bounded in size and time, as a scraper needs and nothing more.
pub async fn serve(listener: rt::TcpListener, metrics: Arc<Metrics>, shutdown: Arc<Shutdown>) {
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            shutdown.wait().await;
            None
        })
        .await;
        let Some(accepted) = accepted else { return };
        let Ok((stream, _)) = accepted else {
            rt::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let metrics = metrics.clone();
        rt::spawn(async move {
            let _ = rt::timeout(Duration::from_secs(10), respond(stream, &metrics)).await;
        });
    }
}

async fn respond(mut stream: rt::TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let line = request.split(|&b| b == b'\n').next().unwrap_or_default();
    let (status, content_type, body) =
        if line.starts_with(b"GET /metrics ") || line.starts_with(b"GET / ") {
            (
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                metrics.render(),
            )
        } else {
            ("404 Not Found", "text/plain", "GET /metrics\n".to_string())
        };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.flush().await
}

pub async fn bind(addr: SocketAddr) -> Result<rt::TcpListener, String> {
    let listener = rt::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} for metrics: {e}"))?;
    if let Ok(local) = listener.local_addr() {
        log::info!("listening on {local} (metrics)");
    }
    Ok(listener)
}
