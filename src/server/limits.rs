//! Abuse resistance: connections per address, sessions per user and address, the growing
//! pause after failed logins, and LOGIN-DELAY. All in memory, all bounded.
//!
//! Counts are held by RAII slots, so a connection that ends in any way gives its place back.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Failures older than this are forgotten: an address that stops guessing is forgiven.
const FAILURE_MEMORY: Duration = Duration::from_secs(600);
/// Most addresses and users tracked for penalties and LOGIN-DELAY; past it the oldest go.
const MAX_TRACKED: usize = 100_000;

#[derive(Clone, Copy, Debug)]
pub struct LimitSettings {
    pub per_ip: usize,
    pub sessions_per_user_ip: usize,
    /// The pause after a first failed login; it doubles with each further one.
    pub failure_delay: Duration,
    pub failure_delay_max: Duration,
    pub login_delay: Option<Duration>,
}

/// Shared counters. Locks are held for a map operation only, never across an await.
pub struct Limits {
    settings: LimitSettings,
    connections: Counter<IpAddr>,
    sessions: Counter<(String, IpAddr)>,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
    last_login: Mutex<HashMap<String, Instant>>,
}

/// Open items per key; a key at zero is removed, so the map holds only live entries.
struct Counter<K>(Mutex<HashMap<K, usize>>);

/// A place in a `Counter`, given back on drop.
pub struct Slot<K: Eq + Hash + Clone> {
    key: K,
    owner: Arc<Limits>,
    pick: fn(&Limits) -> &Counter<K>,
}

impl<K: Eq + Hash + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut counts = lock(&(self.pick)(&self.owner).0);
        if let Some(n) = counts.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// A poisoned map still holds consistent counts: every update is a single operation.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl<K: Eq + Hash + Clone> Counter<K> {
    fn new() -> Self {
        Counter(Mutex::new(HashMap::new()))
    }

    /// Takes a place unless `key` already has `max`.
    fn try_take(&self, key: &K, max: usize) -> bool {
        let mut counts = lock(&self.0);
        let n = counts.entry(key.clone()).or_insert(0);
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }
}

impl Limits {
    pub fn new(settings: LimitSettings) -> Arc<Limits> {
        Arc::new(Limits {
            settings,
            connections: Counter::new(),
            sessions: Counter::new(),
            failures: Mutex::new(HashMap::new()),
            last_login: Mutex::new(HashMap::new()),
        })
    }

    /// A connection place for `ip`, or None when it has too many open.
    pub fn connection(self: &Arc<Self>, ip: IpAddr) -> Option<Slot<IpAddr>> {
        self.connections
            .try_take(&ip, self.settings.per_ip)
            .then(|| Slot {
                key: ip,
                owner: self.clone(),
                pick: |l| &l.connections,
            })
    }

    /// A logged-in session place for `user` from `ip` (Dovecot's mail_max_userip_connections).
    pub fn session(self: &Arc<Self>, user: &str, ip: IpAddr) -> Option<Slot<(String, IpAddr)>> {
        let key = (user.to_owned(), ip);
        self.sessions
            .try_take(&key, self.settings.sessions_per_user_ip)
            .then(|| Slot {
                key,
                owner: self.clone(),
                pick: |l| &l.sessions,
            })
    }

    /// Records a failed login from `ip` and returns how long to wait before answering:
    /// the base delay, doubled for each recent failure from the same address, capped.
    pub fn failed_login(&self, ip: IpAddr, now: Instant) -> Duration {
        let mut failures = lock(&self.failures);
        if failures.len() >= MAX_TRACKED {
            forget_oldest(&mut failures, |(_, at)| *at);
        }
        let entry = failures.entry(ip).or_insert((0, now));
        if now.duration_since(entry.1) > FAILURE_MEMORY {
            *entry = (0, now);
        }
        entry.0 = entry.0.saturating_add(1);
        entry.1 = now;
        let doublings = (entry.0 - 1).min(16);
        (self.settings.failure_delay * (1u32 << doublings)).min(self.settings.failure_delay_max)
    }

    /// A successful login from `ip` forgives its earlier failures.
    pub fn succeeded_login(&self, ip: IpAddr) {
        lock(&self.failures).remove(&ip);
    }

    /// LOGIN-DELAY (RFC 2449 §6.8): Err with the seconds to wait if `login` logged in too
    /// recently; otherwise records this login.
    pub fn login_delay(&self, login: &str, now: Instant) -> Result<(), u64> {
        let Some(delay) = self.settings.login_delay else {
            return Ok(());
        };
        let mut last = lock(&self.last_login);
        if let Some(&at) = last.get(login) {
            let since = now.duration_since(at);
            if since < delay {
                return Err((delay - since).as_secs().max(1));
            }
        }
        if last.len() >= MAX_TRACKED {
            forget_oldest(&mut last, |at| *at);
        }
        last.insert(login.to_owned(), now);
        Ok(())
    }
}

/// Drops the older half of a full map, keeping memory bounded whatever clients do.
fn forget_oldest<K: Eq + Hash, V>(map: &mut HashMap<K, V>, time: impl Fn(&V) -> Instant) {
    let mut times: Vec<Instant> = map.values().map(&time).collect();
    let middle = times.len() / 2;
    let (_, cutoff, _) = times.select_nth_unstable(middle);
    let cutoff = *cutoff;
    map.retain(|_, v| time(v) > cutoff);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Arc<Limits> {
        Limits::new(LimitSettings {
            per_ip: 2,
            sessions_per_user_ip: 1,
            failure_delay: Duration::from_secs(2),
            failure_delay_max: Duration::from_secs(15),
            login_delay: Some(Duration::from_secs(60)),
        })
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn connection_places_are_per_address_and_given_back() {
        let l = limits();
        let first = l.connection(A).unwrap();
        let _second = l.connection(A).unwrap();
        assert!(l.connection(A).is_none());
        assert!(l.connection(B).is_some());
        drop(first);
        assert!(l.connection(A).is_some());
        drop(_second);
        assert!(lock(&l.connections.0).get(&A).is_none_or(|&n| n <= 1));
    }

    #[test]
    fn sessions_are_per_user_and_address() {
        let l = limits();
        let s = l.session("alice", A).unwrap();
        assert!(l.session("alice", A).is_none());
        assert!(l.session("alice", B).is_some());
        assert!(l.session("bob", A).is_some());
        drop(s);
        assert!(l.session("alice", A).is_some());
    }

    #[test]
    fn failure_delay_doubles_per_address_caps_and_is_forgiven() {
        let l = limits();
        let now = Instant::now();
        let delays: Vec<u64> = (0..5).map(|_| l.failed_login(A, now).as_secs()).collect();
        assert_eq!(delays, [2, 4, 8, 15, 15]);
        assert_eq!(
            l.failed_login(B, now).as_secs(),
            2,
            "other addresses are not slowed"
        );
        assert_eq!(
            l.failed_login(A, now + FAILURE_MEMORY * 2).as_secs(),
            2,
            "old failures forgotten"
        );
        l.succeeded_login(B);
        assert_eq!(l.failed_login(B, now).as_secs(), 2);
    }

    #[test]
    fn login_delay_is_enforced_per_login() {
        let l = limits();
        let now = Instant::now();
        assert_eq!(l.login_delay("alice", now), Ok(()));
        assert_eq!(
            l.login_delay("alice", now + Duration::from_secs(10)),
            Err(50)
        );
        assert_eq!(l.login_delay("alice+phone", now), Ok(()));
        assert_eq!(
            l.login_delay("alice", now + Duration::from_secs(61)),
            Ok(())
        );
    }

    #[test]
    fn tracking_stays_bounded() {
        let l = limits();
        let now = Instant::now();
        for i in 0..(MAX_TRACKED as u32 + 10) {
            let ip = IpAddr::V6(std::net::Ipv6Addr::from(u128::from(i)));
            l.failed_login(ip, now + Duration::from_millis(u64::from(i)));
        }
        assert!(lock(&l.failures).len() <= MAX_TRACKED);
    }
}
