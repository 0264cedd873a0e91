//! Signals, the shutdown notice, and what systemd is told (sd_notify).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use event_listener::Event;
use sd_notify::NotifyState;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use super::{Shared, rt};

/// Set once by SIGTERM or SIGINT; every accept loop and idle session waits on it.
#[derive(Default)]
pub struct Shutdown {
    started: AtomicBool,
    event: Event,
}

impl Shutdown {
    pub fn start(&self) {
        self.started.store(true, Ordering::SeqCst);
        self.event.notify(usize::MAX);
    }

    pub fn is_started(&self) -> bool {
        self.started.load(Ordering::SeqCst)
    }

    /// Resolves once shutdown has started.
    pub async fn wait(&self) {
        loop {
            if self.is_started() {
                return;
            }
            let listener = self.event.listen();
            // Checked again: a notice sent before `listen` would otherwise be missed.
            if self.is_started() {
                return;
            }
            listener.await;
        }
    }
}

/// Tells systemd (when it started us with Type=notify; otherwise does nothing).
pub fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        log::debug!("sd_notify: {e}");
    }
}

/// Handles SIGHUP (reload), SIGTERM and SIGINT (shutdown) on a thread of its own: reloading
/// reads files, which is blocking work.
pub fn watch_signals(shared: Arc<Shared>) -> Result<(), String> {
    let mut signals = signal_hook::iterator::Signals::new([SIGHUP, SIGTERM, SIGINT])
        .map_err(|e| format!("cannot watch signals: {e}"))?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if signal == SIGHUP {
                    let now = sd_notify::NotifyState::monotonic_usec_now();
                    match now {
                        Ok(now) => notify(&[NotifyState::Reloading, now]),
                        Err(_) => notify(&[NotifyState::Reloading]),
                    }
                    shared.reload();
                    notify(&[NotifyState::Ready]);
                } else {
                    log::info!("shutting down (signal {signal})");
                    notify(&[NotifyState::Stopping]);
                    shared.shutdown.start();
                }
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    Ok(())
}

/// Pings systemd's watchdog at half its interval, when WatchdogSec= is set. It runs on the
/// async executor, so a stuck executor stops the pings and systemd restarts us.
pub async fn watchdog() {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let period = (interval / 2).max(Duration::from_millis(100));
    loop {
        notify(&[NotifyState::Watchdog]);
        rt::sleep(period).await;
    }
}
