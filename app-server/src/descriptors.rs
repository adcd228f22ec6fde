//! The file descriptor budget.
//!
//! Each WebSocket connection holds a descriptor and each loaded stored
//! thread holds its history file, so the defaults (1,024 connections and
//! 1,024 loaded threads) need more than the common soft limit of 1,024. At
//! startup the soft limit is raised to the hard one, and a warning gives
//! the numbers when the configured limits still cannot fit.

/// Descriptors kept for everything else: the standard streams, the
/// listener, the runtime's poller, the trace store, model API and
/// collector connections, MCP servers' pipes.
pub const RESERVED: u64 = 64;

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

/// Descriptors the configured limits can need at once: one per connection
/// (WebSocket only), one per loaded thread, and [`RESERVED`].
pub fn needed(websocket: bool, max_connections: usize, max_loaded_threads: usize) -> u64 {
    let connections = if websocket { max_connections } else { 1 };
    u64::try_from(connections.saturating_add(max_loaded_threads))
        .unwrap_or(u64::MAX)
        .saturating_add(RESERVED)
}

/// Raises the soft limit on open files as far as the hard limit allows.
/// `None` where the limit cannot be read.
#[cfg(unix)]
pub fn raise_to_hard() -> Option<FileLimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given, which lives here.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        tracing::warn!(
            err = %std::io::Error::last_os_error(),
            "cannot read the limit on open files"
        );
        return None;
    }
    let was = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads the struct it is given, which lives here.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        } else {
            tracing::warn!(
                soft = was,
                hard = limit.rlim_max,
                err = %std::io::Error::last_os_error(),
                "cannot raise the limit on open files to the hard limit"
            );
        }
    }
    Some(FileLimit {
        was,
        soft: limit.rlim_cur,
        hard: limit.rlim_max,
    })
}

/// Not available here.
#[cfg(not(unix))]
pub fn raise_to_hard() -> Option<FileLimit> {
    None
}

/// Raises the soft limit and logs what it is, warning with the numbers when
/// the configured limits need more descriptors than it allows.
pub fn raise_and_check(websocket: bool, max_connections: usize, max_loaded_threads: usize) {
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
    let needed = needed(websocket, max_connections, max_loaded_threads);
    if limit.soft < needed {
        let connections = if websocket { max_connections } else { 1 };
        tracing::warn!(
            limit = limit.soft,
            hard_limit = limit.hard,
            needed,
            "the limit on open files ({}) is below what the configured limits can need ({needed}: \
             {connections} connections + {max_loaded_threads} loaded threads (--max-loaded-threads) \
             + {RESERVED} for the rest); raise the hard limit (ulimit -Hn, LimitNOFILE=) or lower \
             --max-connections / --max-loaded-threads",
            limit.soft,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdio_counts_one_connection() {
        assert_eq!(needed(false, 1024, 1024), 1 + 1024 + RESERVED);
        assert_eq!(needed(true, 1024, 1024), 2048 + RESERVED);
        assert_eq!(needed(true, usize::MAX, usize::MAX), u64::MAX);
    }
}
