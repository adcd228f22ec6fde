//! Overload limits: what the server answers when it is asked for more than
//! it is configured to give, and how it rides out running out of file
//! descriptors.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Default of `--max-connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default of `--max-running-turns`.
pub const DEFAULT_MAX_RUNNING_TURNS: usize = 64;
/// Default of `--max-loaded-threads`.
pub const DEFAULT_MAX_LOADED_THREADS: usize = 1024;
/// Default of `--max-pending-connections`.
pub const DEFAULT_MAX_PENDING_CONNECTIONS: usize = 1024;
/// Connections before their upgrade may hold at most one in this many of
/// the descriptors the process may open: the rest stay for authenticated
/// work (upgraded connections, thread history files, the trace store).
pub const PENDING_DESCRIPTOR_SHARE: u64 = 4;
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

/// How many connections may be before their upgrade at once:
/// `--max-pending-connections`, but at most a [`PENDING_DESCRIPTOR_SHARE`]
/// share of `open_files` (the soft limit on open files), and at least one.
pub fn pending_cap(max_pending: usize, open_files: Option<u64>) -> usize {
    let share = open_files
        .map(|limit| usize::try_from(limit / PENDING_DESCRIPTOR_SHARE).unwrap_or(usize::MAX))
        .unwrap_or(usize::MAX);
    max_pending.min(share).max(1)
}

/// Counts the connections that have not finished their WebSocket upgrade
/// (reading the request head, answering it, the handshake), which
/// `--max-connections` does not: each holds a descriptor before anyone
/// knows who its client is.
///
/// When the limit is reached, a new connection evicts the oldest one still
/// waiting for its request head rather than being refused. A valid client
/// sends its head as soon as it is connected, so it is read within a round
/// trip; idle connections are the ones that grow old. Refusing newcomers
/// instead would let a flood of idle connections, renewed every head
/// timeout, keep every valid client out; with eviction, a flood must open
/// more than the limit's worth of connections within one client's round
/// trip to push it out. Connections whose head has been read are not
/// evicted (what is left of their work is bounded); only when every
/// counted connection is past its head is a newcomer refused.
#[derive(Clone, Debug)]
pub struct PendingConnections {
    state: Arc<Mutex<PendingState>>,
    max: usize,
}

#[derive(Debug, Default)]
struct PendingState {
    /// Counted connections.
    open: usize,
    next_id: u64,
    /// Counted connections still reading their request head, oldest
    /// first: the ones that may be evicted.
    waiting: BTreeMap<u64, Arc<Eviction>>,
}

/// How a connection learns it was evicted.
#[derive(Debug, Default)]
struct Eviction {
    /// Set, under the state's lock, by the connection that took its place
    /// (and its count).
    evicted: AtomicBool,
    notify: Notify,
}

/// What [`PendingConnections::admit`] decided for a new connection.
#[derive(Debug)]
pub enum Admission {
    /// Counted, below the limit.
    Admitted(PendingSlot),
    /// Counted in place of the oldest connection still waiting for its
    /// head, which is told to close.
    EvictedOldest(PendingSlot),
    /// At the limit, every counted connection past its head: close it.
    Full,
}

/// A connection's place among those before their upgrade; released when
/// dropped.
#[derive(Debug)]
pub struct PendingSlot {
    state: Arc<Mutex<PendingState>>,
    id: u64,
    eviction: Arc<Eviction>,
}

impl PendingConnections {
    /// At most `max` connections before their upgrade (at least one).
    pub fn new(max: usize) -> Self {
        Self {
            state: Arc::default(),
            max: max.max(1),
        }
    }

    /// The limit.
    pub fn max(&self) -> usize {
        self.max
    }

    /// The number of counted connections.
    pub fn open(&self) -> usize {
        self.lock().open
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PendingState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a new connection, evicting the oldest one still waiting for
    /// its head when the limit is reached.
    pub fn admit(&self) -> Admission {
        let mut state = self.lock();
        let evicted = if state.open < self.max {
            state.open += 1;
            false
        } else if let Some((_, oldest)) = state.waiting.pop_first() {
            // The newcomer takes the evicted connection's count.
            oldest.evicted.store(true, Ordering::Release);
            oldest.notify.notify_one();
            true
        } else {
            return Admission::Full;
        };
        let id = state.next_id;
        state.next_id += 1;
        let eviction = Arc::new(Eviction::default());
        state.waiting.insert(id, Arc::clone(&eviction));
        let slot = PendingSlot {
            state: Arc::clone(&self.state),
            id,
            eviction,
        };
        if evicted {
            Admission::EvictedOldest(slot)
        } else {
            Admission::Admitted(slot)
        }
    }
}

impl PendingSlot {
    /// The connection's request head has been read: it can no longer be
    /// evicted (it stays counted until the slot is dropped).
    pub fn head_read(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.waiting.remove(&self.id);
    }

    /// Completes once a newer connection took this one's place.
    pub async fn evicted(&self) {
        loop {
            if self.eviction.evicted.load(Ordering::Acquire) {
                return;
            }
            self.eviction.notify.notified().await;
        }
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.waiting.remove(&self.id);
        // An evicted connection's count went to the one that evicted it.
        if !self.eviction.evicted.load(Ordering::Acquire) {
            state.open = state.open.saturating_sub(1);
        }
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
    /// A connection evicted or refused past `--max-pending-connections`.
    pub pending_full: LogRateLimit,
}

impl Default for RefusalLogs {
    fn default() -> Self {
        Self {
            unauthenticated: LogRateLimit::new(REFUSAL_LOG_INTERVAL),
            too_many: LogRateLimit::new(REFUSAL_LOG_INTERVAL),
            pending_full: LogRateLimit::new(REFUSAL_LOG_INTERVAL),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

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
    fn a_full_pending_set_evicts_its_oldest_connection_still_reading_a_head() {
        let pending = PendingConnections::new(2);
        let Admission::Admitted(a) = pending.admit() else {
            panic!("room for a")
        };
        let Admission::Admitted(b) = pending.admit() else {
            panic!("room for b")
        };
        // Full: c takes the place of the oldest, a.
        let Admission::EvictedOldest(c) = pending.admit() else {
            panic!("c evicts a")
        };
        assert!(a.evicted().now_or_never().is_some(), "a is told to go");
        assert!(b.evicted().now_or_never().is_none());
        drop(a);
        assert_eq!(pending.open(), 2, "a's count went to c");
        // b has read its head: it stays; d evicts c instead.
        b.head_read();
        let Admission::EvictedOldest(d) = pending.admit() else {
            panic!("d evicts c")
        };
        assert!(c.evicted().now_or_never().is_some());
        drop(c);
        // Now b is past its head and d is the only one waiting.
        d.head_read();
        assert!(matches!(pending.admit(), Admission::Full));
        drop(b);
        assert_eq!(pending.open(), 1);
        assert!(matches!(pending.admit(), Admission::Admitted(_)));
        drop(d);
        assert_eq!(pending.open(), 0);
    }

    #[test]
    fn pending_connections_get_at_most_a_quarter_of_the_descriptors() {
        assert_eq!(pending_cap(1024, Some(256)), 64);
        assert_eq!(pending_cap(1024, Some(1_048_576)), 1024);
        assert_eq!(pending_cap(1024, None), 1024);
        assert_eq!(pending_cap(10, Some(256)), 10);
        assert_eq!(pending_cap(1024, Some(2)), 1);
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
