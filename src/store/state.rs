//! pop3d's own small files in a Maildir's top folder, beside new/ cur/ tmp/:
//!
//! - `pop3d.lock`: held shared by keep-mode sessions and exclusively by a delete-mode one.
//! - `pop3d-state.lock`: held briefly while a state file below is read, merged and replaced.
//! - `pop3d-sizes`: `unique size` lines for messages whose name carries no `,W=` size.
//! - `pop3d-hidden` / `pop3d-hidden.DEVICE`: unique names a keep-mode login hid with DELE.
//!
//! State files are written in tmp/ and renamed into place (write, fsync, rename), so a crash
//! leaves the old or the new version, never a torn one; a lost state file only costs work,
//! never a message.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub const LOCK: &str = "pop3d.lock";
const STATE_LOCK: &str = "pop3d-state.lock";
const SIZES: &str = "pop3d-sizes";

/// The hidden-set file of a login: the primary device, or `user+DEVICE`.
pub fn hidden_file(dir: &Path, device: Option<&str>) -> PathBuf {
    match device {
        Some(device) => dir.join(format!("pop3d-hidden.{device}")),
        None => dir.join("pop3d-hidden"),
    }
}

pub fn sizes_file(dir: &Path) -> PathBuf {
    dir.join(SIZES)
}

/// Opens (creating) a lock file.
pub fn open_lock(dir: &Path, name: &str) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(dir.join(name))
}

/// Runs `f` while holding the state lock, so concurrent sessions merge rather than overwrite.
pub fn with_state_lock<T>(dir: &Path, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    let lock = open_lock(dir, STATE_LOCK)?;
    lock.lock()?;
    let result = f();
    drop(lock);
    result
}

/// Reads a set of names, one a line; a missing file is an empty set.
pub fn read_set(path: &Path) -> io::Result<HashSet<String>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(e) => return Err(e),
    };
    BufReader::new(file)
        .lines()
        .filter(|l| !matches!(l, Ok(l) if l.is_empty()))
        .collect()
}

/// Reads `unique size` lines; lines that do not parse are skipped (the size is recomputed).
pub fn read_sizes(path: &Path) -> io::Result<HashMap<String, u64>> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(e),
    };
    Ok(text
        .lines()
        .filter_map(|l| {
            let (name, size) = l.rsplit_once(' ')?;
            Some((name.to_owned(), size.parse().ok()?))
        })
        .collect())
}

/// The size cache of a Maildir, shared by the sessions of this process while the file is
/// unchanged: a mailbox polled every few minutes is parsed once, not at every login.
pub fn read_sizes_shared(path: &Path) -> io::Result<Arc<HashMap<String, u64>>> {
    /// Which version of the file was parsed: a rewrite (rename) changes the inode.
    type Stamp = (u64, u64, i64, i64);
    type Sizes = Arc<HashMap<String, u64>>;
    /// Most Maildirs remembered; past it the memory is simply dropped and refilled.
    const MAX_SHARED: usize = 4096;
    static SHARED: Mutex<Option<HashMap<PathBuf, (Stamp, Sizes)>>> = Mutex::new(None);

    let stamp = match fs::metadata(path) {
        Ok(m) => (m.ino(), m.len(), m.mtime(), m.mtime_nsec()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Arc::default()),
        Err(e) => return Err(e),
    };
    let lock = || SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((seen, sizes)) = lock().get_or_insert_with(HashMap::new).get(path)
        && *seen == stamp
    {
        return Ok(sizes.clone());
    }
    // Parsed without the lock held, so other mailboxes' logins don't wait for this one.
    let sizes = Arc::new(read_sizes(path)?);
    let mut shared = lock();
    let shared = shared.get_or_insert_with(HashMap::new);
    if shared.len() >= MAX_SHARED {
        shared.clear();
    }
    shared.insert(path.to_owned(), (stamp, sizes.clone()));
    Ok(sizes)
}

/// Replaces `path` with one line per item, atomically and durably.
pub fn write_atomic<T: std::fmt::Display>(
    path: &Path,
    lines: impl Iterator<Item = T>,
) -> io::Result<()> {
    // Written in the Maildir's tmp/, as an MDA writes: no name there can be taken for a
    // state file (a device may be called anything, "x.tmp.123" included), and what a crash
    // leaves behind is swept by the usual tmp/ cleanup.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let parent = path.parent().unwrap_or(Path::new("."));
    let tmp = parent.join("tmp").join(format!(
        "{name}.{}.{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        let mut out = io::BufWriter::new(file);
        for line in lines {
            writeln!(out, "{line}")?;
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Some(parent) = path.parent() {
            File::open(parent)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_and_sizes_round_trip() {
        let dir = std::env::temp_dir().join(format!("pop3d-state-test-{}", std::process::id()));
        fs::create_dir_all(dir.join("tmp")).unwrap();
        let hidden = hidden_file(&dir, Some("laptop"));
        assert!(read_set(&hidden).unwrap().is_empty());
        write_atomic(&hidden, ["a", "b"].iter()).unwrap();
        assert_eq!(
            read_set(&hidden).unwrap(),
            HashSet::from(["a".into(), "b".into()])
        );

        let sizes = sizes_file(&dir);
        fs::write(&sizes, "x 12\nbroken\ny z\nname with space 7\n").unwrap();
        let read = read_sizes(&sizes).unwrap();
        assert_eq!(read.len(), 2);
        assert_eq!(read["x"], 12);
        assert_eq!(read["name with space"], 7);
        fs::remove_dir_all(&dir).unwrap();
    }
}
