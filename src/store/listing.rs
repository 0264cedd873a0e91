//! Listings of Maildirs kept in memory between sessions, while their folders are unchanged.
//!
//! A login otherwise reads new/ and cur/ and parses every name: most of the cost of a POP3
//! session on a mailbox of thousands of messages. Any delivery, deletion or flag change
//! renames a file in new/ or cur/ and so moves that folder's modification and change times;
//! a listing is reused only while both folders still carry the stamps taken before it was
//! read.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::Entry;
use crate::session::Message;

/// Messages remembered across all Maildirs (about 150 bytes each) unless the configuration
/// says otherwise (`listing_cache_messages`); past it the least recently used listings are
/// dropped.
pub const DEFAULT_BUDGET: usize = 250_000;

static BUDGET: AtomicUsize = AtomicUsize::new(DEFAULT_BUDGET);

/// How long after a folder's last change its stamp is trusted. File times come from a
/// clock that ticks every few milliseconds: a rename in the same tick as the one before it
/// leaves the time unchanged, so a listing read in that tick could miss it.
const SETTLE: Duration = Duration::from_secs(1);

/// Every message of a Maildir in delivery order, with its UIDL and size.
#[derive(Debug)]
pub struct Listing {
    pub entries: Arc<Vec<Entry>>,
    pub messages: Arc<[Message]>,
}

impl Listing {
    /// What the listing counts for in the budget: its messages, and one for itself, so that
    /// empty mailboxes can't pile up unbounded.
    fn weight(&self) -> usize {
        self.messages.len() + 1
    }
}

/// What identifies one state of a folder: its inode and its modification and change times
/// (the change time can't be set back by a client).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FolderStamp {
    dev: u64,
    ino: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

impl FolderStamp {
    fn of(path: &Path) -> io::Result<FolderStamp> {
        let meta = std::fs::metadata(path)?;
        Ok(FolderStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            modified: (meta.mtime(), meta.mtime_nsec()),
            changed: (meta.ctime(), meta.ctime_nsec()),
        })
    }

    /// The modification time: every rename in the folder sets it to the present, so once it
    /// is older than a clock tick, the next change is bound to alter it.
    fn modified_since_epoch(&self) -> Duration {
        let (secs, nanos) = self.modified;
        Duration::new(
            secs.max(0).unsigned_abs(),
            nanos.clamp(0, 999_999_999) as u32,
        )
    }
}

/// The state of a Maildir's new/ and cur/, taken before they are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    new: FolderStamp,
    cur: FolderStamp,
}

impl Stamp {
    /// Stamps `dir`'s new/ and cur/; `NotFound` if either is missing.
    pub fn of(dir: &Path) -> io::Result<Stamp> {
        Ok(Stamp {
            new: FolderStamp::of(&dir.join("new"))?,
            cur: FolderStamp::of(&dir.join("cur"))?,
        })
    }

    /// True when neither folder changed within the last `SETTLE`, so any later change
    /// is bound to give it a new time.
    fn settled(&self, now: SystemTime) -> bool {
        let now = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        [self.new, self.cur]
            .iter()
            .all(|f| f.modified_since_epoch() + SETTLE <= now)
    }
}

struct Cached {
    stamp: Stamp,
    listing: Arc<Listing>,
    last_used: u64,
}

#[derive(Default)]
struct Cache {
    listings: HashMap<PathBuf, Cached>,
    messages: usize,
    clock: u64,
}

impl Cache {
    fn get(&mut self, dir: &Path, stamp: &Stamp) -> Option<Arc<Listing>> {
        self.clock += 1;
        let found = self.listings.get_mut(dir)?;
        if found.stamp != *stamp {
            return None;
        }
        found.last_used = self.clock;
        Some(found.listing.clone())
    }

    fn put(
        &mut self,
        dir: &Path,
        stamp: Stamp,
        listing: Arc<Listing>,
        now: SystemTime,
        budget: usize,
    ) {
        if let Some(old) = self.listings.remove(dir) {
            self.messages -= old.listing.weight();
        }
        let size = listing.weight();
        if !stamp.settled(now) || size > budget {
            return;
        }
        self.shrink_to(budget - size);
        self.clock += 1;
        self.messages += size;
        let last_used = self.clock;
        self.listings.insert(
            dir.to_owned(),
            Cached {
                stamp,
                listing,
                last_used,
            },
        );
    }

    /// Drops the least recently used listings until at most `budget` messages are left.
    fn shrink_to(&mut self, budget: usize) {
        while self.messages > budget {
            let Some(oldest) = self
                .listings
                .iter()
                .min_by_key(|(_, c)| c.last_used)
                .map(|(path, _)| path.clone())
            else {
                break;
            };
            if let Some(old) = self.listings.remove(&oldest) {
                self.messages -= old.listing.weight();
            }
        }
    }
}

static CACHE: Mutex<Option<Cache>> = Mutex::new(None);

fn with_cache<T>(f: impl FnOnce(&mut Cache) -> T) -> T {
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    f(cache.get_or_insert_with(Cache::default))
}

static HITS: AtomicU64 = AtomicU64::new(0);
static MISSES: AtomicU64 = AtomicU64::new(0);

/// The listing of `dir` if it was read while its folders were as `stamp` says.
pub fn cached(dir: &Path, stamp: &Stamp) -> Option<Arc<Listing>> {
    let found = with_cache(|cache| cache.get(dir, stamp));
    (if found.is_some() { &HITS } else { &MISSES }).fetch_add(1, Relaxed);
    found
}

/// How well the kept listings serve logins, for the metrics, so the budget can be sized.
pub struct CacheStats {
    /// Logins that found their listing kept and current.
    pub hits: u64,
    /// Logins that read new/ and cur/.
    pub misses: u64,
    /// What the kept listings count against the budget: their messages, plus one each.
    pub used: usize,
}

pub fn stats() -> CacheStats {
    CacheStats {
        hits: HITS.load(Relaxed),
        misses: MISSES.load(Relaxed),
        used: with_cache(|cache| cache.messages),
    }
}

/// Keeps a listing read after `stamp` was taken, if the folders had settled by then.
pub fn remember(dir: &Path, stamp: Stamp, listing: Arc<Listing>) {
    let budget = BUDGET.load(Relaxed);
    with_cache(|cache| cache.put(dir, stamp, listing, SystemTime::now(), budget))
}

/// Sets how many messages the kept listings may hold in all (0: none are kept), dropping
/// what no longer fits at once.
pub fn set_budget(messages: usize) {
    BUDGET.store(messages, Relaxed);
    with_cache(|cache| cache.shrink_to(messages));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn maildir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pop3d-listing-{name}-{}", std::process::id()));
        for sub in ["new", "cur", "tmp"] {
            fs::create_dir_all(dir.join(sub)).unwrap();
        }
        dir
    }

    fn listing(n: usize) -> Arc<Listing> {
        Arc::new(Listing {
            entries: Arc::new(Vec::new()),
            messages: (0..n)
                .map(|i| Message {
                    uid: format!("m{i}").into(),
                    size: 1,
                })
                .collect(),
        })
    }

    /// Sets the folders' modification times back, as if they had not changed for a while,
    /// so a rename in this test gives them a new one even within the clock's tick.
    fn age(dir: &Path) {
        for sub in ["new", "cur"] {
            let folder = fs::File::open(dir.join(sub)).unwrap();
            folder
                .set_modified(SystemTime::now() - Duration::from_secs(10))
                .unwrap();
        }
    }

    fn later() -> SystemTime {
        SystemTime::now() + Duration::from_secs(5)
    }

    #[test]
    fn a_rename_in_either_folder_invalidates_the_listing() {
        let mut cache = Cache::default();
        let dir = maildir("rename");
        fs::write(dir.join("new/1.a"), "x").unwrap();
        age(&dir);
        let stamp = Stamp::of(&dir).unwrap();
        cache.put(&dir, stamp, listing(1), later(), 100);
        assert!(cache.get(&dir, &Stamp::of(&dir).unwrap()).is_some());

        fs::rename(dir.join("new/1.a"), dir.join("cur/1.a:2,S")).unwrap();
        let moved = Stamp::of(&dir).unwrap();
        assert_ne!(moved, stamp);
        assert!(cache.get(&dir, &moved).is_none());

        age(&dir);
        let moved = Stamp::of(&dir).unwrap();
        cache.put(&dir, moved, listing(1), later(), 100);
        assert!(cache.get(&dir, &moved).is_some());
        fs::rename(dir.join("cur/1.a:2,S"), dir.join("cur/1.a:2,ST")).unwrap();
        assert!(cache.get(&dir, &Stamp::of(&dir).unwrap()).is_none());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_folder_that_just_changed_is_not_trusted() {
        let mut cache = Cache::default();
        let dir = maildir("fresh");
        let stamp = Stamp::of(&dir).unwrap();
        cache.put(&dir, stamp, listing(1), SystemTime::now(), 100);
        assert!(cache.get(&dir, &stamp).is_none());
        cache.put(&dir, stamp, listing(1), later(), 100);
        assert!(cache.get(&dir, &stamp).is_some());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_least_recently_used_listings_go_first() {
        let dirs: Vec<PathBuf> = (0..3).map(|i| maildir(&format!("lru{i}"))).collect();
        let stamps: Vec<Stamp> = dirs.iter().map(|d| Stamp::of(d).unwrap()).collect();
        let mut cache = Cache::default();
        // Each weighs 5: four messages and the listing itself.
        cache.put(&dirs[0], stamps[0], listing(4), later(), 12);
        cache.put(&dirs[1], stamps[1], listing(4), later(), 12);
        assert!(cache.get(&dirs[0], &stamps[0]).is_some());
        cache.put(&dirs[2], stamps[2], listing(4), later(), 12);
        assert!(cache.get(&dirs[0], &stamps[0]).is_some());
        assert!(
            cache.get(&dirs[1], &stamps[1]).is_none(),
            "least recently used"
        );
        assert!(cache.get(&dirs[2], &stamps[2]).is_some());
        // A listing over the whole budget is not kept.
        cache.put(&dirs[1], stamps[1], listing(12), later(), 12);
        assert!(cache.get(&dirs[1], &stamps[1]).is_none());
        // A smaller budget drops the least recently used at once; 0 keeps nothing.
        cache.shrink_to(5);
        assert!(cache.get(&dirs[0], &stamps[0]).is_none());
        assert!(cache.get(&dirs[2], &stamps[2]).is_some());
        cache.shrink_to(0);
        assert!(cache.get(&dirs[2], &stamps[2]).is_none());
        cache.put(&dirs[2], stamps[2], listing(0), later(), 0);
        assert!(cache.get(&dirs[2], &stamps[2]).is_none(), "even empty");
        for dir in dirs {
            fs::remove_dir_all(dir).unwrap();
        }
    }
}
