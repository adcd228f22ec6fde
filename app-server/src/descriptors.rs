//! The file descriptor budget.
//!
//! Each WebSocket connection holds a descriptor. A loaded stored thread
//! keeps its history file open only while it appends a record (on Linux;
//! elsewhere for as long as it is loaded), so thread files need one per
//! running turn. The defaults (1,024 connections, 64 running turns) need
//! more than the common soft limit of 1,024. At startup the soft limit is
//! raised to the hard one, and a warning gives the numbers when the
//! configured limits still cannot fit.

use skein_core::store::IDLE_THREADS_HOLD_FILES;

/// Descriptors kept for everything else: the standard streams, the
/// listener, the runtime's poller, the trace store, the thread store's
/// lock file, model API and collector connections, MCP servers' pipes,
/// and a thread file opened for a moment (a `thread/start`, a rename).
pub const RESERVED: u64 = 64;

/// The configured limits that decide the budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Whether connections are WebSockets (stdio is one connection).
    pub websocket: bool,
    /// `--max-connections`.
    pub max_connections: usize,
    /// `--max-running-turns`.
    pub max_running_turns: usize,
    /// `--max-loaded-threads`.
    pub max_loaded_threads: usize,
}

impl Limits {
    fn connections(&self) -> usize {
        if self.websocket {
            self.max_connections
        } else {
            1
        }
    }

    /// How many history files can be open at once, and what limits that.
    fn thread_files(&self) -> (usize, String) {
        if IDLE_THREADS_HOLD_FILES {
            let n = self.max_loaded_threads;
            (n, format!("{n} loaded threads (--max-loaded-threads)"))
        } else {
            let n = self.max_running_turns;
            (
                n,
                format!("{n} history files of running turns (--max-running-turns)"),
            )
        }
    }

    /// What [`Limits::needed`] adds up, for messages.
    pub fn explain(&self) -> String {
        format!(
            "{} connections + {} + {RESERVED} for the rest",
            self.connections(),
            self.thread_files().1
        )
    }

    /// The flag that lowers the thread files' share.
    pub fn lower_flag(&self) -> &'static str {
        if IDLE_THREADS_HOLD_FILES {
            "--max-loaded-threads"
        } else {
            "--max-running-turns"
        }
    }

    /// Descriptors the limits can need at once: one per connection, one
    /// per history file open at once, and [`RESERVED`].
    pub fn needed(&self) -> u64 {
        u64::try_from(self.connections().saturating_add(self.thread_files().0))
            .unwrap_or(u64::MAX)
            .saturating_add(RESERVED)
    }
}

/// The soft and hard limits on open files, before and after raising.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileLimit {
    /// The soft limit the process started with.
    pub was: u64,
    /// The soft limit now.
    pub soft: u64,
    /// The hard limit (the most the soft limit can be raised to).
    pub hard: u64,
}

/// Raises the soft limit on open files as far as the hard limit allows.
/// `None` where the limit cannot be read.
#[cfg(unix)]
pub fn raise_to_hard() -> Option<FileLimit> {
    let Some(limit) = current() else {
        tracing::warn!(
            err = %std::io::Error::last_os_error(),
            "cannot read the limit on open files"
        );
        return None;
    };
    if limit.soft < limit.hard {
        let raised = libc::rlimit {
            rlim_cur: limit.hard,
            rlim_max: limit.hard,
        };
        // SAFETY: setrlimit reads the struct it is given, which lives here.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Some(FileLimit {
                soft: limit.hard,
                ..limit
            });
        }
        tracing::warn!(
            soft = limit.soft,
            hard = limit.hard,
            err = %std::io::Error::last_os_error(),
            "cannot raise the limit on open files to the hard limit"
        );
    }
    Some(limit)
}

/// Not available here.
#[cfg(not(unix))]
pub fn raise_to_hard() -> Option<FileLimit> {
    None
}

/// The limits on open files as they are, without raising them (`was` and
/// `soft` are the same). `None` where they cannot be read.
#[cfg(unix)]
pub fn current() -> Option<FileLimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given, which lives here.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    Some(FileLimit {
        was: limit.rlim_cur,
        soft: limit.rlim_cur,
        hard: limit.rlim_max,
    })
}

/// Not available here.
#[cfg(not(unix))]
pub fn current() -> Option<FileLimit> {
    None
}

/// Raises the soft limit and logs what it is, warning with the numbers when
/// the configured limits need more descriptors than it allows.
pub fn raise_and_check(limits: Limits) {
    let Some(limit) = raise_to_hard() else {
        return;
    };
    if limit.soft != limit.was {
        tracing::info!(
            from = limit.was,
            to = limit.soft,
            "raised the soft limit on open files to the hard limit"
        );
    }
    let needed = limits.needed();
    if limit.soft < needed {
        tracing::warn!(
            limit = limit.soft,
            hard_limit = limit.hard,
            needed,
            "the limit on open files ({}) is below what the configured limits can need ({needed}: \
             {}); raise the hard limit (ulimit -Hn, LimitNOFILE=) or lower --max-connections / {}",
            limit.soft,
            limits.explain(),
            limits.lower_flag(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdio_counts_one_connection_and_idle_threads_count_where_they_hold_files() {
        let limits = |websocket, connections, turns, threads| Limits {
            websocket,
            max_connections: connections,
            max_running_turns: turns,
            max_loaded_threads: threads,
        };
        let files = if IDLE_THREADS_HOLD_FILES { 1024 } else { 64 };
        assert_eq!(limits(false, 1024, 64, 1024).needed(), 1 + files + RESERVED);
        assert_eq!(
            limits(true, 1024, 64, 1024).needed(),
            1024 + files + RESERVED
        );
        assert_eq!(
            limits(true, usize::MAX, usize::MAX, usize::MAX).needed(),
            u64::MAX
        );
    }
}
