//! Threads: their registry and metadata.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::models::{DEFAULT_MODEL, ModelInfo, find_model};

/// A thread's metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadInfo {
    /// Stable id (a UUIDv7, so ids sort by creation time).
    pub id: String,
    /// The model the thread uses.
    pub model: &'static ModelInfo,
    /// The first user message, shortened; empty until there is one.
    pub preview: String,
    /// Creation time, seconds since the Unix epoch.
    pub created_at: i64,
    /// Last change, seconds since the Unix epoch.
    pub updated_at: i64,
    /// Kept in memory only, never written.
    pub ephemeral: bool,
}

/// Why a thread operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ThreadError {
    /// No thread has this id.
    #[error("no thread with id {0:?}")]
    NotFound(String),
    /// The model is not offered.
    #[error("unknown model {0:?}; `model/list` shows the available ones")]
    UnknownModel(String),
    /// A pagination cursor did not come from this server.
    #[error("invalid cursor {0:?}")]
    InvalidCursor(String),
}

/// One page of threads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadPage {
    /// Threads, newest first.
    pub threads: Vec<ThreadInfo>,
    /// Cursor for the next page, when there is one.
    pub next_cursor: Option<String>,
}

/// Default page size of [`ThreadManager::list`].
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// Largest page size of [`ThreadManager::list`].
pub const MAX_PAGE_SIZE: usize = 500;

/// All threads of this server. Cheap to clone; clones share state.
#[derive(Clone, Debug, Default)]
pub struct ThreadManager {
    threads: Arc<Mutex<BTreeMap<String, ThreadInfo>>>,
}

impl ThreadManager {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, ThreadInfo>> {
        // A panic while holding this lock cannot leave the map half-updated
        // (each critical section is a single insert or read), so a poisoned
        // lock is safe to keep using.
        self.threads.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a thread with `model` (the default model when `None`).
    pub fn start_thread(
        &self,
        model: Option<&str>,
        ephemeral: bool,
    ) -> Result<ThreadInfo, ThreadError> {
        let name = model.unwrap_or(DEFAULT_MODEL);
        let model = find_model(name).ok_or_else(|| ThreadError::UnknownModel(name.to_owned()))?;
        let now = unix_now();
        let info = ThreadInfo {
            id: uuid::Uuid::now_v7().to_string(),
            model,
            preview: String::new(),
            created_at: now,
            updated_at: now,
            ephemeral,
        };
        self.lock().insert(info.id.clone(), info.clone());
        Ok(info)
    }

    /// A thread's metadata.
    pub fn read(&self, id: &str) -> Result<ThreadInfo, ThreadError> {
        self.lock()
            .get(id)
            .cloned()
            .ok_or_else(|| ThreadError::NotFound(id.to_owned()))
    }

    /// Threads newest first, `limit` at a time, after `cursor` (the last
    /// id of the previous page).
    pub fn list(
        &self,
        cursor: Option<&str>,
        limit: Option<usize>,
    ) -> Result<ThreadPage, ThreadError> {
        let limit = limit.unwrap_or(DEFAULT_PAGE_SIZE).clamp(1, MAX_PAGE_SIZE);
        if let Some(c) = cursor
            && uuid::Uuid::parse_str(c).is_err()
        {
            return Err(ThreadError::InvalidCursor(c.to_owned()));
        }
        let threads = self.lock();
        let mut page: Vec<ThreadInfo> = threads
            .values()
            .rev()
            .filter(|t| cursor.is_none_or(|c| t.id.as_str() < c))
            .take(limit + 1)
            .cloned()
            .collect();
        let next_cursor = if page.len() > limit {
            page.truncate(limit);
            page.last().map(|t| t.id.clone())
        } else {
            None
        };
        Ok(ThreadPage {
            threads: page,
            next_cursor,
        })
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn started_thread_can_be_read_back() {
        let mgr = ThreadManager::new();
        let t = mgr.start_thread(None, false).expect("start");
        assert_eq!(t.model.name, DEFAULT_MODEL);
        assert_eq!(mgr.read(&t.id), Ok(t));
    }

    #[test]
    fn unknown_model_and_thread_are_errors() {
        let mgr = ThreadManager::new();
        assert!(matches!(
            mgr.start_thread(Some("gpt-nope"), false),
            Err(ThreadError::UnknownModel(_))
        ));
        assert!(matches!(mgr.read("x"), Err(ThreadError::NotFound(_))));
    }

    #[test]
    fn list_pages_newest_first_without_overlap() {
        let mgr = ThreadManager::new();
        let ids: Vec<String> = (0..5)
            .map(|_| mgr.start_thread(None, false).expect("start").id)
            .collect();
        let first = mgr.list(None, Some(2)).expect("page 1");
        assert_eq!(
            first.threads.iter().map(|t| &t.id).collect::<Vec<_>>(),
            vec![&ids[4], &ids[3]]
        );
        let second = mgr
            .list(first.next_cursor.as_deref(), Some(2))
            .expect("page 2");
        assert_eq!(second.threads[0].id, ids[2]);
        let last = mgr
            .list(second.next_cursor.as_deref(), Some(2))
            .expect("page 3");
        assert_eq!(last.threads.len(), 1);
        assert_eq!(last.next_cursor, None);
        assert!(matches!(
            mgr.list(Some("garbage"), None),
            Err(ThreadError::InvalidCursor(_))
        ));
    }
}
