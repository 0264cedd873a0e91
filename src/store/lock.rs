//! The session lock of a Maildir (`pop3d.lock`), one descriptor per Maildir per process.
//!
//! Keep-mode sessions share the lock, a delete-mode session holds it alone (RFC 1939 §8: the
//! maildrop is locked while a session can change it). Across processes the rule is kept by
//! `flock`; within this process by a count, so that 10,000 keep-mode sessions of one
//! mailbox cost one descriptor between them, not one each.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::state;
use crate::session::Mode;

/// The lock file's descriptor and who holds it in this process.
struct Held {
    _file: File,
    exclusive: bool,
    sessions: usize,
}

static HELD: Mutex<Option<HashMap<PathBuf, Held>>> = Mutex::new(None);

fn held() -> std::sync::MutexGuard<'static, Option<HashMap<PathBuf, Held>>> {
    HELD.lock().unwrap_or_else(|e| e.into_inner())
}

/// A session's hold on a Maildir's lock; dropping it lets go (and the kernel lets go of
/// everything when the process dies, so a crash never locks anyone out).
#[derive(Debug)]
pub struct SessionLock {
    dir: PathBuf,
}

/// Why the lock was not taken.
pub enum LockError {
    /// Another session holds it in a conflicting mode.
    InUse,
    Io(io::Error),
}

impl SessionLock {
    /// Takes the lock for a session in `mode` without waiting. `NotFound` means the Maildir
    /// is missing.
    pub fn acquire(dir: &Path, mode: Mode) -> Result<SessionLock, LockError> {
        let exclusive = mode == Mode::Delete;
        if let Some(held) = held().get_or_insert_with(HashMap::new).get_mut(dir) {
            if held.exclusive || exclusive {
                return Err(LockError::InUse);
            }
            held.sessions += 1;
            return Ok(SessionLock {
                dir: dir.to_owned(),
            });
        }
        // Opened and locked without the table held: a slow disk delays this login only.
        let file = state::open_lock(dir, state::LOCK).map_err(LockError::Io)?;
        let locked = if exclusive {
            file.try_lock()
        } else {
            file.try_lock_shared()
        };
        match locked {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(LockError::InUse),
            Err(fs::TryLockError::Error(e)) => return Err(LockError::Io(e)),
        }
        match held()
            .get_or_insert_with(HashMap::new)
            .entry(dir.to_owned())
        {
            // Another keep-mode session of this process got here meanwhile: share its
            // descriptor (ours goes, and with it only our own hold). flock let both of us
            // in, so neither is exclusive.
            Entry::Occupied(mut held) => held.get_mut().sessions += 1,
            Entry::Vacant(slot) => {
                slot.insert(Held {
                    _file: file,
                    exclusive,
                    sessions: 1,
                });
            }
        }
        Ok(SessionLock {
            dir: dir.to_owned(),
        })
    }
}

impl Drop for SessionLock {
    fn drop(&mut self) {
        let mut held = held();
        let Some(table) = held.as_mut() else { return };
        if let Some(entry) = table.get_mut(&self.dir) {
            entry.sessions -= 1;
            if entry.sessions == 0 {
                table.remove(&self.dir);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn maildir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pop3d-lock-{name}-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn keep_sessions_share_one_descriptor_and_delete_is_alone() {
        let dir = maildir("share");
        let first = SessionLock::acquire(&dir, Mode::Keep).ok().unwrap();
        let second = SessionLock::acquire(&dir, Mode::Keep).ok().unwrap();
        assert_eq!(held().as_ref().unwrap()[&dir].sessions, 2);
        assert!(matches!(
            SessionLock::acquire(&dir, Mode::Delete),
            Err(LockError::InUse)
        ));
        // Another process (here: another open file description) sees a shared lock.
        let other = state::open_lock(&dir, state::LOCK).unwrap();
        assert!(other.try_lock().is_err());
        assert!(other.try_lock_shared().is_ok());
        other.unlock().unwrap();
        drop(first);
        assert!(
            other.try_lock().is_err(),
            "the second session still holds it"
        );
        drop(second);
        assert!(held().as_ref().unwrap().get(&dir).is_none());
        other.try_lock().unwrap();
        assert!(matches!(
            SessionLock::acquire(&dir, Mode::Keep),
            Err(LockError::InUse)
        ));
        other.unlock().unwrap();

        let delete = SessionLock::acquire(&dir, Mode::Delete).ok().unwrap();
        for mode in [Mode::Keep, Mode::Delete] {
            assert!(matches!(
                SessionLock::acquire(&dir, mode),
                Err(LockError::InUse)
            ));
        }
        assert!(other.try_lock_shared().is_err());
        drop(delete);
        other.try_lock().unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_maildir_is_reported_as_not_found() {
        let dir = std::env::temp_dir().join(format!("pop3d-lock-missing-{}", std::process::id()));
        match SessionLock::acquire(&dir, Mode::Keep) {
            Err(LockError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::NotFound),
            _ => panic!("expected NotFound"),
        }
    }
}
