//! The mail store: a user's Maildir, its listing, sizes, UIDLs, lock and QUIT's update.
//!
//! All of it is blocking file I/O, run by the server on its blocking thread pool, except
//! `Mailbox::open_message_cached`, which never waits. It acts on the paths it listed and only
//! looks a message up again when another client (an IMAP server changing flags, say) has
//! renamed it.

mod listing;
mod lock;
mod names;
mod state;
pub mod template;

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use listing::{
    DEFAULT_BUDGET as DEFAULT_LISTING_CACHE, set_budget as set_listing_cache,
    stats as listing_cache_stats,
};
use listing::{Listing, Stamp};
use lock::{LockError, SessionLock};

use crate::protocol::body::WireSize;
use crate::session::{Message, Mode, UpdateReport};

/// Why a Maildir could not be opened for a session.
#[derive(Debug)]
pub enum OpenError {
    /// Another session holds the lock in a conflicting mode.
    InUse,
    Io(String, io::Error),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::InUse => f.write_str("mailbox is in use"),
            OpenError::Io(what, e) => write!(f, "{what}: {e}"),
        }
    }
}

/// Why a message could not be opened.
#[derive(Debug)]
pub enum MessageError {
    /// Removed by another client since the listing.
    Vanished,
    Io(io::Error),
}

/// Where a listed message lives now.
#[derive(Clone, Debug)]
struct Entry {
    in_new: bool,
    name: String,
}

impl Entry {
    /// The UIDL, from the unique part of the name: it survives flag changes and new→cur.
    fn uidl(&self) -> Cow<'_, str> {
        names::uidl(names::unique(&self.name))
    }
}

/// A user's Maildir, opened and locked for one session.
#[derive(Debug)]
pub struct Mailbox {
    dir: PathBuf,
    mode: Mode,
    device: Option<String>,
    /// Shared with the listing cache until this session renames a message.
    entries: Arc<Vec<Entry>>,
    _lock: SessionLock,
}

fn io_context(what: impl Into<String>) -> impl FnOnce(io::Error) -> OpenError {
    let what = what.into();
    move |e| OpenError::Io(what, e)
}

impl Mailbox {
    /// Locks and lists a Maildir (creating it if missing) and returns the session's messages
    /// in delivery order. In keep mode, the messages this login hid are left out.
    pub fn open(
        dir: &Path,
        mode: Mode,
        device: Option<&str>,
    ) -> Result<(Mailbox, Arc<[Message]>), OpenError> {
        let lock = match SessionLock::acquire(dir, mode) {
            Err(LockError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {
                create_maildir(dir)?;
                SessionLock::acquire(dir, mode)
            }
            other => other,
        }
        .map_err(|e| match e {
            LockError::InUse => OpenError::InUse,
            LockError::Io(e) => OpenError::Io("locking the mailbox".into(), e),
        })?;

        let hidden = match mode {
            Mode::Keep => state::read_set(&state::hidden_file(dir, device))
                .map_err(io_context("reading the hidden set"))?,
            Mode::Delete => HashSet::new(),
        };
        let listing_error = || io_context(format!("listing {}", dir.display()));
        let stamp = match Stamp::of(dir) {
            // A Maildir created by hand, or by an MDA that makes new/ only when it delivers.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                create_maildir(dir)?;
                Stamp::of(dir)
            }
            other => other,
        }
        .map_err(listing_error())?;
        let all = match listing::cached(dir, &stamp) {
            Some(all) => all,
            None => {
                let all = Arc::new(list(dir).map_err(|e| match e {
                    ListError::Io(e) => listing_error()(e),
                    ListError::Open(e) => e,
                })?);
                listing::remember(dir, stamp, all.clone());
                all
            }
        };
        let (entries, messages) = if hidden.is_empty() {
            (all.entries.clone(), all.messages.clone())
        } else {
            let (entries, messages): (Vec<Entry>, Vec<Message>) = all
                .entries
                .iter()
                .zip(all.messages.iter())
                .filter(|(_, m)| !hidden.contains(&*m.uid))
                .map(|(e, m)| (e.clone(), m.clone()))
                .unzip();
            (Arc::new(entries), messages.into())
        };
        let mailbox = Mailbox {
            dir: dir.to_owned(),
            mode,
            device: device.map(str::to_owned),
            entries,
            _lock: lock,
        };
        Ok((mailbox, messages))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, index: usize) -> PathBuf {
        let entry = &self.entries[index];
        self.dir
            .join(if entry.in_new { "new" } else { "cur" })
            .join(&entry.name)
    }

    /// Finds a message again after another client renamed it; false if it is gone.
    fn relocate(&mut self, index: usize) -> io::Result<bool> {
        let uidl = self.entries[index].uidl().into_owned();
        for (sub, in_new) in [("cur", false), ("new", true)] {
            for item in fs::read_dir(self.dir.join(sub))? {
                let name = item?.file_name();
                let Some(name) = name.to_str() else { continue };
                if names::uidl(names::unique(name)) == uidl {
                    Arc::make_mut(&mut self.entries)[index] = Entry {
                        in_new,
                        name: name.to_owned(),
                    };
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Runs `op` on a message's path, looking the message up again once if it moved.
    fn on_message<T>(
        &mut self,
        index: usize,
        op: impl Fn(&Path) -> io::Result<T>,
    ) -> Result<T, MessageError> {
        match op(&self.path(index)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => match self.relocate(index) {
                Ok(true) => op(&self.path(index)).map_err(MessageError::Io),
                Ok(false) => Err(MessageError::Vanished),
                Err(e) => Err(MessageError::Io(e)),
            },
            other => other.map_err(MessageError::Io),
        }
    }

    /// Opens a message for RETR or TOP.
    pub fn open_message(&mut self, index: usize) -> Result<File, MessageError> {
        self.on_message(index, |path| File::open(path))
    }

    /// Opens a message only if that needs no disk access (every part of its path is in the
    /// kernel's dentry cache), so it can be done on an executor thread. None otherwise, and on
    /// any error: `open_message` then does it, or reports why it can't, on the blocking pool.
    pub fn open_message_cached(&self, index: usize) -> Option<File> {
        open_cached(&self.path(index))
    }

    /// True if the message already carries the Seen flag, so RETR has nothing to rename.
    pub fn is_seen(&self, index: usize) -> bool {
        let entry = &self.entries[index];
        names::is_seen(&entry.name, entry.in_new)
    }

    /// Sets the Seen flag (moving the message from new/ to cur/), so an IMAP client of the
    /// same Maildir shows it read. Renaming is atomic: the message is never missing.
    pub fn mark_seen(&mut self, index: usize) -> Result<(), MessageError> {
        // Twice at most: once more if another client renamed it (its flags may have changed).
        for _ in 0..2 {
            let entry = &self.entries[index];
            let Some(seen) = names::seen_name(&entry.name, entry.in_new) else {
                return Ok(());
            };
            match fs::rename(self.path(index), self.dir.join("cur").join(&seen)) {
                Ok(()) => {
                    Arc::make_mut(&mut self.entries)[index] = Entry {
                        in_new: false,
                        name: seen,
                    };
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => match self.relocate(index) {
                    Ok(true) => continue,
                    Ok(false) => return Err(MessageError::Vanished),
                    Err(e) => return Err(MessageError::Io(e)),
                },
                Err(e) => return Err(MessageError::Io(e)),
            }
        }
        Ok(())
    }

    /// Sets the Seen flag of messages sent by RETR; a failure costs only the flag.
    pub fn mark_seen_all(&mut self, indices: &[usize]) {
        for &index in indices {
            if let Err(MessageError::Io(e)) = self.mark_seen(index) {
                log::debug!("cannot mark {} seen: {e}", self.path(index).display());
            }
        }
    }

    /// QUIT's update (RFC 1939 §6) for the 0-based `marked` messages. Delete mode removes
    /// them; keep mode marks them seen and adds them to this login's hidden set.
    pub fn update(&mut self, marked: &[usize]) -> Result<UpdateReport, String> {
        match self.mode {
            Mode::Delete => Ok(self.delete(marked)),
            Mode::Keep => self.hide(marked),
        }
    }

    fn delete(&mut self, marked: &[usize]) -> UpdateReport {
        let mut report = UpdateReport { done: 0, failed: 0 };
        for &index in marked {
            match self.on_message(index, |path| fs::remove_file(path)) {
                Ok(()) | Err(MessageError::Vanished) => report.done += 1,
                Err(MessageError::Io(e)) => {
                    log::warn!("cannot delete {}: {e}", self.path(index).display());
                    report.failed += 1;
                }
            }
        }
        report
    }

    fn hide(&mut self, marked: &[usize]) -> Result<UpdateReport, String> {
        for &index in marked {
            if let Err(MessageError::Io(e)) = self.mark_seen(index) {
                log::debug!("cannot mark {} seen: {e}", self.path(index).display());
            }
        }
        let path = state::hidden_file(&self.dir, self.device.as_deref());
        let listed: HashSet<Cow<'_, str>> = self.entries.iter().map(Entry::uidl).collect();
        let result = state::with_state_lock(&self.dir, || {
            // Merge with what other sessions of this login recorded meanwhile.
            let mut hidden = state::read_set(&path)?;
            hidden.extend(marked.iter().map(|&i| self.entries[i].uidl().into_owned()));
            // Forget ids whose files are gone; names we listed are known to exist, others
            // need a fresh look at the folder.
            if hidden.iter().any(|id| !listed.contains(id.as_str())) {
                let present: HashSet<Box<str>> =
                    scan(&self.dir)?.into_iter().map(|m| m.uid).collect();
                hidden.retain(|id| present.contains(id.as_str()));
            }
            state::write_atomic(&path, hidden.iter())
        });
        match result {
            Ok(()) => Ok(UpdateReport {
                done: marked.len(),
                failed: 0,
            }),
            Err(e) => {
                log::error!("cannot record hidden messages in {}: {e}", path.display());
                Err("Cannot record the messages to hide".into())
            }
        }
    }
}

/// Why a Maildir could not be listed.
enum ListError {
    Io(io::Error),
    Open(OpenError),
}

/// Reads a Maildir's messages, their UIDLs and sizes, in delivery order.
fn list(dir: &Path) -> Result<Listing, ListError> {
    let mut all = scan(dir).map_err(ListError::Io)?;
    // Delivery order: the time each unique name starts with (computed once, in `scan`),
    // then the unique name for messages of the same second.
    all.sort_unstable_by(|a, b| {
        a.time
            .cmp(&b.time)
            .then_with(|| a.entry.name[..a.unique_len].cmp(&b.entry.name[..b.unique_len]))
    });
    let sizes = message_sizes(dir, &all).map_err(ListError::Open)?;
    let mut entries = Vec::with_capacity(all.len());
    let mut messages = Vec::with_capacity(all.len());
    for (listed, size) in all.into_iter().zip(sizes) {
        messages.push(Message {
            uid: listed.uid,
            size,
        });
        entries.push(listed.entry);
    }
    Ok(Listing {
        entries: Arc::new(entries),
        messages: messages.into(),
    })
}

/// A message found by a scan, before sizes.
struct Listed {
    entry: Entry,
    uid: Box<str>,
    /// The length of the unique part of the name, so sorting needn't search for ':'.
    unique_len: usize,
    /// The delivery time at the start of the unique name, for sorting.
    time: u64,
}

/// Lists new/ and cur/ (never tmp/, where deliveries are still being written).
fn scan(dir: &Path) -> io::Result<Vec<Listed>> {
    let mut listed = Vec::new();
    for (sub, in_new) in [("new", true), ("cur", false)] {
        for item in fs::read_dir(dir.join(sub))? {
            let item = item?;
            let Ok(name) = item.file_name().into_string() else {
                log::warn!(
                    "skipping a message whose name is not UTF-8 in {}",
                    dir.display()
                );
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            let unique = names::unique(&name);
            let unique_len = unique.len();
            let time = names::delivery_time(unique);
            let uid = names::uidl(unique).into();
            listed.push(Listed {
                entry: Entry { in_new, name },
                uid,
                unique_len,
                time,
            });
        }
    }
    Ok(listed)
}

/// The wire size of each message, in order: from a `,W=` in its name, else from the size
/// cache, else by reading it once (and then caching it).
fn message_sizes(dir: &Path, all: &[Listed]) -> Result<Vec<u64>, OpenError> {
    let cache_path = state::sizes_file(dir);
    let mut cache: Option<std::sync::Arc<HashMap<String, u64>>> = None;
    let mut fresh: HashMap<String, u64> = HashMap::new();
    let mut sizes = Vec::with_capacity(all.len());
    for m in all {
        if let Some(size) = names::wire_size(names::unique(&m.entry.name)) {
            sizes.push(size);
            continue;
        }
        let cache = cache.get_or_insert_with(|| {
            state::read_sizes_shared(&cache_path).unwrap_or_else(|e| {
                log::warn!(
                    "ignoring unreadable size cache {}: {e}",
                    cache_path.display()
                );
                Default::default()
            })
        });
        if let Some(&size) = cache.get(&*m.uid) {
            sizes.push(size);
            continue;
        }
        let path = dir
            .join(if m.entry.in_new { "new" } else { "cur" })
            .join(&m.entry.name);
        let size = match measure(&path) {
            Ok(size) => size,
            // Gone since the scan: RETR will say so; 0 keeps the numbering.
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(OpenError::Io(format!("reading {}", path.display()), e)),
        };
        fresh.insert(m.uid.to_string(), size);
        sizes.push(size);
    }
    if !fresh.is_empty() {
        let present: HashSet<&str> = all.iter().map(|m| &*m.uid).collect();
        let written = state::with_state_lock(dir, || {
            // Merge what other sessions cached meanwhile, and drop what is gone.
            let mut merged = state::read_sizes(&cache_path).unwrap_or_default();
            merged.extend(fresh);
            merged.retain(|id, _| present.contains(id.as_str()));
            state::write_atomic(
                &cache_path,
                merged.iter().map(|(id, size)| format!("{id} {size}")),
            )
        });
        // A cache that cannot be written costs time at the next login, nothing else.
        if let Err(e) = written {
            log::warn!("cannot write size cache {}: {e}", cache_path.display());
        }
    }
    Ok(sizes)
}

/// Creates a Maildir's folders, private to its user as MDAs and Dovecot create them.
fn create_maildir(dir: &Path) -> Result<(), OpenError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true).mode(0o700);
    for sub in ["cur", "new", "tmp"] {
        let path = dir.join(sub);
        builder
            .create(&path)
            .map_err(io_context(format!("creating {}", path.display())))?;
    }
    Ok(())
}

/// Reads a message once to count the octets RETR will send for it.
fn measure(path: &Path) -> io::Result<u64> {
    let mut file = File::open(path)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = WireSize::default();
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok(size.total()),
            Ok(n) => size.push(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Set once the kernel has said it has no `openat2` or no RESOLVE_CACHED (before Linux 5.12):
/// from then on every message is opened on the blocking pool.
#[cfg(target_os = "linux")]
static RESOLVE_CACHED_UNSUPPORTED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// `openat2` with RESOLVE_CACHED fails with EAGAIN rather than read a directory from disk.
#[cfg(target_os = "linux")]
fn open_cached(path: &Path) -> Option<File> {
    use rustix::fs::{CWD, Mode, OFlags, ResolveFlags, openat2};
    use rustix::io::Errno;
    use std::sync::atomic::Ordering::Relaxed;

    if RESOLVE_CACHED_UNSUPPORTED.load(Relaxed) {
        return None;
    }
    let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY;
    match openat2(CWD, path, flags, Mode::empty(), ResolveFlags::CACHED) {
        Ok(fd) => Some(File::from(fd)),
        Err(Errno::NOSYS | Errno::INVAL) => {
            RESOLVE_CACHED_UNSUPPORTED.store(true, Relaxed);
            None
        }
        Err(_) => None,
    }
}

/// Elsewhere no open is known not to wait: every message is opened on the blocking pool.
#[cfg(not(target_os = "linux"))]
fn open_cached(_: &Path) -> Option<File> {
    None
}
