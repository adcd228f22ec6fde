//! Overload limits: what the server answers when it is asked for more than
//! it is configured to give, and how it rides out running out of file
//! descriptors.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Default of `--max-connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default of `--max-running-turns`.
pub const DEFAULT_MAX_RUNNING_TURNS: usize = 64;
/// Default of `--max-loaded-threads`.
pub const DEFAULT_MAX_LOADED_THREADS: usize = 1024;
/// What an overloaded answer suggests as a retry delay.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Counts open WebSocket connections against a limit.
#[derive(Clone, Debug)]
pub struct ConnectionLimit {
    open: Arc<AtomicUsize>,
    max: usize,
}

/// A slot held by one open connection; released when dropped.
#[derive(Debug)]
pub struct ConnectionSlot {
    open: Arc<AtomicUsize>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConnectionLimit {
    /// A limit of `max` open connections.
    pub fn new(max: usize) -> Self {
        Self {
            open: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    /// Takes a slot, or `None` when `max` connections are open.
    pub fn try_acquire(&self) -> Option<ConnectionSlot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < self.max).then_some(open + 1)
            })
            .ok()
            .map(|_| ConnectionSlot {
                open: Arc::clone(&self.open),
            })
    }

    /// The number of open connections.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

/// First pause after `accept` fails.
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest pause between failed `accept` attempts.
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Pacing of the accept loop while `accept` fails (usually: out of file
/// descriptors). The pause doubles from [`ACCEPT_BACKOFF_MIN`] up to
/// [`ACCEPT_BACKOFF_MAX`]; one warning is logged per episode of failures
/// and one line when accepting works again.
#[derive(Debug, Default)]
pub struct AcceptBackoff {
    failures: u64,
    pause: Duration,
}

impl AcceptBackoff {
    /// Records a failed `accept`; returns how long to pause before the
    /// next attempt.
    pub fn failed(&mut self, err: &std::io::Error) -> Duration {
        if self.failures == 0 {
            tracing::warn!(
                %err,
                "accepting connections failed; backing off (open connections keep being served)"
            );
            self.pause = ACCEPT_BACKOFF_MIN;
        } else {
            self.pause = (self.pause * 2).min(ACCEPT_BACKOFF_MAX);
        }
        self.failures += 1;
        self.pause
    }

    /// Records a successful `accept`, ending an episode of failures.
    pub fn succeeded(&mut self) {
        if self.failures > 0 {
            tracing::info!(failures = self.failures, "accepting connections again");
            self.failures = 0;
            self.pause = Duration::ZERO;
        }
    }
}

/// How often one kind of refused connection is logged at most.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A rate limit on a log line written per refused connection: a client
/// can be refused as fast as it connects, and a line per refusal would let
/// it amplify the log's volume. At most one line per interval is written,
/// and it carries how many refusals went unlogged since the last one.
#[derive(Debug)]
pub struct LogRateLimit {
    interval: Duration,
    state: Mutex<RateState>,
}

#[derive(Debug, Default)]
struct RateState {
    /// When the next line may be written (`None`: at once).
    next: Option<Instant>,
    /// Occurrences not logged since the last line.
    unlogged: u64,
}

impl LogRateLimit {
    /// At most one line per `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Mutex::default(),
        }
    }

    /// Records one occurrence. Returns, when it may be logged now, how many
    /// occurrences went unlogged before it.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.next.is_some_and(|next| now < next) {
            state.unlogged = state.unlogged.saturating_add(1);
            return None;
        }
        state.next = now.checked_add(self.interval);
        Some(std::mem::take(&mut state.unlogged))
    }
}

/// The rate limits of the log lines about refused WebSocket connections,
/// one per kind of refusal.
#[derive(Debug)]
pub struct RefusalLogs {
    /// An upgrade without valid credentials (`401`).
    pub unauthenticated: LogRateLimit,
    /// An upgrade past `--max-connections` (`503`).
    pub too_many: LogRateLimit,
}

impl Default for RefusalLogs {
    fn default() -> Self {
        Self {
            unauthenticated: LogRateLimit::new(REFUSAL_LOG_INTERVAL),
            too_many: LogRateLimit::new(REFUSAL_LOG_INTERVAL),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_limited_line_goes_out_once_per_interval_with_the_count_it_skipped() {
        let limit = LogRateLimit::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(limit.admit_at(t0), Some(0));
        for ms in [1, 500, 9_999] {
            assert_eq!(limit.admit_at(t0 + Duration::from_millis(ms)), None);
        }
        assert_eq!(limit.admit_at(t0 + Duration::from_secs(10)), Some(3));
        assert_eq!(limit.admit_at(t0 + Duration::from_secs(11)), None);
        assert_eq!(limit.admit_at(t0 + Duration::from_secs(25)), Some(1));
    }

    #[test]
    fn slots_are_limited_and_released() {
        let limit = ConnectionLimit::new(2);
        let a = limit.try_acquire().expect("first");
        let _b = limit.try_acquire().expect("second");
        assert!(limit.try_acquire().is_none());
        drop(a);
        assert_eq!(limit.open(), 1);
        assert!(limit.try_acquire().is_some());
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut backoff = AcceptBackoff::default();
        let err = std::io::Error::other("EMFILE");
        assert_eq!(backoff.failed(&err), ACCEPT_BACKOFF_MIN);
        assert_eq!(backoff.failed(&err), ACCEPT_BACKOFF_MIN * 2);
        for _ in 0..20 {
            backoff.failed(&err);
        }
        assert_eq!(backoff.failed(&err), ACCEPT_BACKOFF_MAX);
        backoff.succeeded();
        assert_eq!(backoff.failed(&err), ACCEPT_BACKOFF_MIN);
    }
}
