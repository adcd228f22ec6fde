//! Unfinished WebSocket messages: how long a client may take to complete
//! one, and how many bytes all connections may hold in them at once.
//!
//! The idle timeout alone does not bound a message: a client sending one
//! byte of a frame at a time, or one continuation frame at a time, is never
//! idle, and every connection doing so pins up to `--max-message-bytes`.
//! [`UnfinishedMessages`] follows the frame headers in the client's byte
//! stream (it does not decode or buffer payloads: tungstenite does that) to
//! know when a message is under way, and fails the connection's reads once
//! that message has taken longer than the deadline, or once the bytes held
//! in unfinished messages across all connections would pass the shared
//! budget.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Why a connection's reads fail: its client took too long to complete a
/// message, or unfinished messages hold too much memory.
#[derive(Debug, thiserror::Error)]
pub enum UnfinishedError {
    /// The message was not complete within the deadline.
    #[error("a message was not completed within {0:?}")]
    TooSlow(Duration),
    /// Unfinished messages across all connections would pass the budget.
    #[error("too many bytes held in unfinished messages across connections")]
    OverBudget,
}

impl UnfinishedError {
    /// Whether `err` is one of these.
    pub fn of(err: &io::Error) -> Option<&UnfinishedError> {
        err.get_ref()
            .and_then(|inner| inner.downcast_ref::<UnfinishedError>())
    }
}

/// Bytes held in unfinished messages, across connections, against a
/// budget. Cheap to clone.
#[derive(Clone, Debug)]
pub struct UnfinishedBudget {
    held: Arc<AtomicUsize>,
    max: usize,
}

impl UnfinishedBudget {
    /// A budget of `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            held: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    /// Bytes currently held.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    fn try_take(&self, n: usize) -> bool {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(n).filter(|total| *total <= self.max)
            })
            .is_ok()
    }

    fn give_back(&self, n: usize) {
        self.held.fetch_sub(n, Ordering::AcqRel);
    }
}

/// Follows one connection's frames (see the module documentation).
#[derive(Debug)]
pub struct UnfinishedMessages {
    deadline: Duration,
    budget: UnfinishedBudget,
    /// Bytes of the HTTP request head still to pass before the frames.
    skip: usize,
    /// The header of the frame being received, as far as it arrived.
    header: [u8; 14],
    header_len: usize,
    /// Payload bytes of the current frame still to come.
    payload_left: u64,
    /// A data message was started without its final frame.
    fragmented: bool,
    /// When the unfinished message (or frame) began.
    started: Option<Instant>,
    /// Bytes this connection holds in its unfinished message.
    held: usize,
}

impl UnfinishedMessages {
    /// Follows a stream whose first `head_len` bytes are the request head.
    pub fn new(deadline: Duration, budget: UnfinishedBudget, head_len: usize) -> Self {
        Self {
            deadline,
            budget,
            skip: head_len,
            header: [0; 14],
            header_len: 0,
            payload_left: 0,
            fragmented: false,
            started: None,
            held: 0,
        }
    }

    /// When the unfinished message, if any, runs out of time.
    pub fn due(&self) -> Option<Instant> {
        self.started.map(|started| started + self.deadline)
    }

    /// Follows `bytes` from the client, received at `now`.
    pub fn received(&mut self, mut bytes: &[u8], now: Instant) -> Result<(), UnfinishedError> {
        let skipped = self.skip.min(bytes.len());
        self.skip -= skipped;
        bytes = &bytes[skipped..];
        if bytes.is_empty() {
            return Ok(());
        }
        if !self.budget.try_take(bytes.len()) {
            return Err(UnfinishedError::OverBudget);
        }
        self.held += bytes.len();
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let n = usize::try_from(self.payload_left)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                self.payload_left -= n as u64;
                bytes = &bytes[n..];
                if self.payload_left == 0 {
                    self.frame_ended(bytes.len());
                }
                continue;
            }
            if self.header_len == 0 && self.started.is_none() {
                self.started = Some(now);
            }
            self.header[self.header_len] = bytes[0];
            self.header_len += 1;
            bytes = &bytes[1..];
            if let Some(len) = self.payload_len() {
                self.header_len = 0;
                self.payload_left = len;
                if len == 0 {
                    self.frame_ended(bytes.len());
                }
            }
        }
        self.check(now)
    }

    /// Fails once the unfinished message is past its deadline.
    pub fn check(&self, now: Instant) -> Result<(), UnfinishedError> {
        match self.due() {
            Some(due) if now >= due => Err(UnfinishedError::TooSlow(self.deadline)),
            _ => Ok(()),
        }
    }

    /// The payload length once the whole header arrived.
    fn payload_len(&self) -> Option<u64> {
        if self.header_len < 2 {
            return None;
        }
        let h = &self.header;
        let mask = if h[1] & 0x80 != 0 { 4 } else { 0 };
        let (extended, need) = match h[1] & 0x7F {
            126 => (2, 4 + mask),
            127 => (8, 10 + mask),
            _ => (0, 2 + mask),
        };
        if self.header_len < need {
            return None;
        }
        Some(match extended {
            2 => u64::from(u16::from_be_bytes([h[2], h[3]])),
            8 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
            _ => u64::from(h[1] & 0x7F),
        })
    }

    /// A whole frame arrived (its header is still in `header[0]`), with
    /// `rest` bytes of the chunk being followed after it.
    fn frame_ended(&mut self, rest: usize) {
        let fin = self.header[0] & 0x80 != 0;
        let opcode = self.header[0] & 0x0F;
        if opcode < 0x8 {
            // A data frame (text, binary or continuation) ends its
            // message when final.
            self.fragmented = !fin;
        }
        if self.fragmented {
            // Still within a message: its clock keeps running.
            return;
        }
        // The message is complete: tungstenite hands it over; only the
        // bytes after it stay held.
        self.started = None;
        let done = self.held.saturating_sub(rest);
        self.held -= done;
        self.budget.give_back(done);
    }
}

impl Drop for UnfinishedMessages {
    fn drop(&mut self) {
        self.budget.give_back(self.held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        out.extend_from_slice(&[1, 2, 3, 4]);
        out.extend_from_slice(payload);
        out
    }

    fn follower(budget: usize) -> (UnfinishedMessages, UnfinishedBudget) {
        let budget = UnfinishedBudget::new(budget);
        let follower = UnfinishedMessages::new(Duration::from_secs(10), budget.clone(), 3);
        (follower, budget)
    }

    #[test]
    fn whole_messages_leave_nothing_unfinished() {
        let (mut f, budget) = follower(1 << 20);
        let t0 = Instant::now();
        let mut bytes = b"GET".to_vec();
        bytes.extend(frame(true, 1, b"hello"));
        bytes.extend(frame(true, 1, &[b'x'; 300]));
        bytes.extend(frame(true, 9, b""));
        f.received(&bytes, t0).expect("fine");
        assert_eq!(f.due(), None);
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn a_message_trickled_byte_by_byte_runs_out_of_time() {
        let (mut f, _budget) = follower(1 << 20);
        let t0 = Instant::now();
        f.received(b"GET", t0).expect("head");
        let bytes = frame(true, 1, &[b'x'; 200]);
        for (i, byte) in bytes[..150].iter().enumerate() {
            let at = t0 + Duration::from_millis(100 * i as u64);
            let result = f.received(&[*byte], at);
            if at >= t0 + Duration::from_secs(10) {
                assert!(matches!(result, Err(UnfinishedError::TooSlow(_))), "{i}");
                return;
            }
            result.expect("within the deadline");
        }
        panic!("never ran out of time");
    }

    #[test]
    fn continuation_frames_keep_the_message_unfinished_until_the_final_one() {
        let (mut f, budget) = follower(1 << 20);
        let t0 = Instant::now();
        f.received(b"GET", t0).expect("head");
        f.received(&frame(false, 1, b"{"), t0).expect("first");
        for i in 1..5 {
            let at = t0 + Duration::from_secs(i);
            f.received(&frame(false, 0, b" "), at).expect("more");
            // A ping between fragments changes nothing.
            f.received(&frame(true, 9, b""), at).expect("ping");
        }
        assert_eq!(f.due(), Some(t0 + Duration::from_secs(10)));
        assert!(budget.held() > 0);
        let late = f.received(&frame(false, 0, b" "), t0 + Duration::from_secs(10));
        assert!(matches!(late, Err(UnfinishedError::TooSlow(_))));
        f.received(&frame(true, 0, b"}"), t0 + Duration::from_secs(9))
            .expect("final");
        assert_eq!(f.due(), None);
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn unfinished_messages_share_a_budget_released_when_they_end() {
        let budget = UnfinishedBudget::new(100);
        let t0 = Instant::now();
        let mut a = UnfinishedMessages::new(Duration::from_secs(10), budget.clone(), 0);
        let mut b = UnfinishedMessages::new(Duration::from_secs(10), budget.clone(), 0);
        let big = frame(true, 1, &[b'x'; 200]);
        a.received(&big[..60], t0).expect("a fits");
        assert!(matches!(
            b.received(&big[..60], t0),
            Err(UnfinishedError::OverBudget)
        ));
        drop(a);
        assert_eq!(budget.held(), 0);
        b.received(&big[..60], t0).expect("b fits now");
    }
}
