//! Which process writes which thread, without a descriptor per thread.
//!
//! On Linux every store opens one file, [`LOCK_FILE_NAME`] in its
//! directory, and holds a thread by an exclusive open-file-description lock
//! (`F_OFD_SETLK`) on one byte of that file, at an offset derived from the
//! thread's id ([`slot`]). Such a lock belongs to the store's open file,
//! not to the thread's file: the thread's file can be closed while the
//! thread stays held, so an idle loaded thread costs no descriptor. The
//! kernel drops the locks when the process dies (kill -9 included), as it
//! did the `flock` on each thread file that this replaces. Two stores opened
//! in one process hold their threads against each other like two processes.
//!
//! Elsewhere the thread's file is kept open and `flock`ed instead.
//!
//! The lock file's name and the slot of an id are read by every process
//! sharing a `SKEIN_HOME`: changing either lets two writers in at once.

use std::collections::HashSet;
use std::fs::{File, TryLockError};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use skein_otel::owner_only;

/// The file, in the store's directory, whose byte locks mark the threads
/// being written.
pub const LOCK_FILE_NAME: &str = "writers.lock";

/// What the lock file says to a person who opens it.
const LOCK_FILE_TEXT: &str = "This file holds no data. A skein process writing a thread \
locks one byte of it (at an offset derived from the thread's id) for as long as it has the \
thread loaded; the lock goes when the process does. Do not delete it while skein runs.\n";

/// The writer locks of one store (shared by its clones).
#[derive(Debug)]
pub(crate) struct Writers {
    /// The lock file.
    path: PathBuf,
    /// The lock file, open for writing: its open file description owns the
    /// locks.
    #[cfg(target_os = "linux")]
    file: File,
    /// The threads held through this store. Locks of one open file
    /// description do not conflict with each other, so a second hold of a
    /// thread by this store is refused here.
    held: Mutex<HashSet<String>>,
}

/// A thread held for writing; dropping it releases the thread.
#[derive(Debug)]
pub(crate) struct WriterLock {
    writers: Arc<Writers>,
    id: String,
    /// The thread's file, kept open for its `flock` where there are no
    /// open-file-description locks.
    #[cfg(not(target_os = "linux"))]
    _file: File,
}

impl Writers {
    /// Opens (creating, owner-only) the lock file in `dir`.
    pub(crate) fn open(dir: &Path) -> io::Result<Self> {
        let path = dir.join(LOCK_FILE_NAME);
        let file = match owner_only::open_options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut file) => {
                owner_only::restrict(&file)?;
                // Only an explanation: a full disk must not stop the store.
                if let Err(err) = file.write_all(LOCK_FILE_TEXT.as_bytes()) {
                    tracing::debug!(file = %path.display(), %err, "could not explain the lock file");
                }
                file
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)?,
            Err(e) => return Err(e),
        };
        #[cfg(not(target_os = "linux"))]
        drop(file);
        Ok(Self {
            path,
            #[cfg(target_os = "linux")]
            file,
            held: Mutex::new(HashSet::new()),
        })
    }

    /// The lock file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn held(&self) -> MutexGuard<'_, HashSet<String>> {
        // The set is consistent after every critical section.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds thread `id` (whose file, `thread_file`, the caller has open)
    /// for writing: `WouldBlock` when this store or another process holds
    /// it already.
    pub(crate) fn acquire(
        self: &Arc<Self>,
        id: &str,
        thread_file: &File,
    ) -> Result<WriterLock, TryLockError> {
        // Held across the kernel call, so a release of the same thread
        // cannot undo this hold (one description's locks merge).
        let mut held = self.held();
        if held.contains(id) {
            return Err(TryLockError::WouldBlock);
        }
        #[cfg(target_os = "linux")]
        {
            let _ = thread_file;
            self.set_lock(id, libc::F_WRLCK as libc::c_short)
                .map_err(|e| match e.raw_os_error() {
                    Some(libc::EAGAIN | libc::EACCES) => TryLockError::WouldBlock,
                    _ => TryLockError::Error(e),
                })?;
        }
        #[cfg(not(target_os = "linux"))]
        let file = {
            let file = thread_file.try_clone().map_err(TryLockError::Error)?;
            file.try_lock()?;
            file
        };
        held.insert(id.to_owned());
        Ok(WriterLock {
            writers: Arc::clone(self),
            id: id.to_owned(),
            #[cfg(not(target_os = "linux"))]
            _file: file,
        })
    }

    /// Whether some writer (this store, or another process) holds thread
    /// `id`, whose file is `thread_path`.
    pub(crate) fn is_held(&self, id: &str, thread_path: &Path) -> io::Result<bool> {
        if self.held().contains(id) {
            return Ok(true);
        }
        #[cfg(target_os = "linux")]
        {
            let _ = thread_path;
            let mut lock = flock_at(slot(id), libc::F_WRLCK as libc::c_short);
            self.fcntl(libc::F_OFD_GETLK, &mut lock)?;
            Ok(lock.l_type != libc::F_UNLCK as libc::c_short)
        }
        #[cfg(not(target_os = "linux"))]
        {
            let probe = File::open(thread_path)?;
            match probe.try_lock_shared() {
                Ok(()) => Ok(false),
                Err(TryLockError::WouldBlock) => Ok(true),
                Err(TryLockError::Error(e)) => Err(e),
            }
        }
    }

    #[cfg(target_os = "linux")]
    fn set_lock(&self, id: &str, kind: libc::c_short) -> io::Result<()> {
        self.fcntl(libc::F_OFD_SETLK, &mut flock_at(slot(id), kind))
    }

    /// Runs the open-file-description lock command `cmd` (`F_OFD_GETLK`,
    /// which fills in `lock`, or `F_OFD_SETLK`) on the lock file.
    #[cfg(target_os = "linux")]
    fn fcntl(&self, cmd: libc::c_int, lock: &mut libc::flock) -> io::Result<()> {
        // SAFETY: a valid descriptor and a pointer to a live `flock`.
        let rc = unsafe {
            libc::fcntl(
                std::os::fd::AsRawFd::as_raw_fd(&self.file),
                cmd,
                std::ptr::from_mut(lock),
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

impl Drop for WriterLock {
    fn drop(&mut self) {
        let mut held = self.writers.held();
        #[cfg(target_os = "linux")]
        if let Err(err) = self
            .writers
            .set_lock(&self.id, libc::F_UNLCK as libc::c_short)
        {
            // Unlocking a lock one holds does not fail; should it, the
            // thread stays held until the process exits.
            tracing::warn!(thread = %self.id, file = %self.writers.path.display(), %err, "could not release a thread's writer lock");
        }
        held.remove(&self.id);
    }
}

/// A one-byte lock request at `start`.
#[cfg(target_os = "linux")]
fn flock_at(start: i64, kind: libc::c_short) -> libc::flock {
    // SAFETY: `flock` is plain data; all zeroes is a valid value (and
    // `l_pid` must be 0 for open-file-description locks).
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = kind;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock.l_start = start;
    lock.l_len = 1;
    lock
}

/// The byte of the lock file that stands for thread `id`: a 64-bit FNV-1a
/// hash of the id, below `i64::MAX`. Two ids that share a slot only make
/// one of them wait for the other's writer; they never let two writers in.
fn slot(id: &str) -> i64 {
    let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    // Below i64::MAX, so the lock's last byte is a valid offset.
    i64::try_from(hash % (i64::MAX as u64)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_stable_and_spread() {
        // Every process sharing a SKEIN_HOME must compute the same slot.
        assert_eq!(
            slot("0190f3c4-8a1e-7b2c-9d3e-4f5a6b7c8d9e"),
            slot("0190f3c4-8a1e-7b2c-9d3e-4f5a6b7c8d9e")
        );
        let ids: HashSet<i64> = (0..1000)
            .map(|_| slot(&uuid::Uuid::now_v7().to_string()))
            .collect();
        assert_eq!(ids.len(), 1000);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_thread_is_held_once_per_store_and_against_another_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let thread = dir.path().join("thread");
        std::fs::write(&thread, "").expect("write");
        let file = File::open(&thread).expect("open");
        let ours = Arc::new(Writers::open(dir.path()).expect("open"));
        let theirs = Arc::new(Writers::open(dir.path()).expect("open"));
        let held = ours.acquire("a", &file).expect("free");
        assert!(matches!(
            ours.acquire("a", &file),
            Err(TryLockError::WouldBlock)
        ));
        assert!(matches!(
            theirs.acquire("a", &file),
            Err(TryLockError::WouldBlock)
        ));
        assert!(theirs.is_held("a", &thread).expect("probe"));
        assert!(ours.is_held("a", &thread).expect("probe"));
        let other = theirs.acquire("b", &file).expect("another thread is free");
        drop(held);
        assert!(!theirs.is_held("a", &thread).expect("probe"));
        let _taken = theirs.acquire("a", &file).expect("free once released");
        drop(other);
        assert!(ours.is_held("a", &thread).expect("probe"));
        assert!(!ours.is_held("b", &thread).expect("probe"));
    }
}
