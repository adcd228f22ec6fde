//! Fan-out of a thread's events to its subscribers.
//!
//! A turn never waits for a client, and a client that keeps reading never
//! loses an event, however fast the model streams. Each subscriber has its
//! own queue; when it falls behind, consecutive text deltas of the same item
//! are merged in its queue instead of piling up, so what waits for a slow
//! client grows with the answer's text, not with the number of deltas. A
//! client that stops reading altogether is ended by its connection (the
//! app-server's stall timeout), which drops its receiver and its queue.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use skein_protocol::{Event, EventMsg};
use tokio::sync::Notify;

/// The sending side: one per thread.
#[derive(Debug, Default)]
pub struct EventHub {
    subscribers: Mutex<Vec<Arc<Shared>>>,
    /// Subscriptions made so far.
    subscriptions: std::sync::atomic::AtomicU64,
    /// Notified whenever a subscriber goes away, and by
    /// [`EventHub::signal_release`].
    on_release: Option<Arc<Notify>>,
}

#[derive(Debug, Default)]
struct Shared {
    queue: Mutex<Queue>,
    ready: Notify,
    on_release: Option<Arc<Notify>>,
}

#[derive(Debug, Default)]
struct Queue {
    events: VecDeque<Event>,
    /// The hub is gone: nothing more will come.
    closed: bool,
    /// The receiver is gone: stop queueing.
    abandoned: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the data whole.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl EventHub {
    /// A hub with no subscribers.
    pub fn new() -> Self {
        Self::default()
    }

    /// A hub that notifies `on_release` whenever one of its subscribers
    /// goes away, and when [`EventHub::signal_release`] is called (the
    /// thread registry then unloads what nobody follows).
    pub fn with_release_signal(on_release: Arc<Notify>) -> Self {
        Self {
            subscribers: Mutex::default(),
            subscriptions: std::sync::atomic::AtomicU64::new(0),
            on_release: Some(on_release),
        }
    }

    /// A new subscriber, receiving every event sent from now on.
    pub fn subscribe(&self) -> EventReceiver {
        let shared = Arc::new(Shared {
            on_release: self.on_release.clone(),
            ..Shared::default()
        });
        lock(&self.subscribers).push(Arc::clone(&shared));
        self.subscriptions
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        EventReceiver { shared }
    }

    /// Sends `event` to every subscriber. Never waits: a subscriber that is
    /// behind gets the event queued, or merged into the text delta waiting
    /// at the end of its queue.
    pub fn send(&self, event: Event) {
        let mut subscribers = lock(&self.subscribers);
        subscribers.retain(|s| !lock(&s.queue).abandoned);
        let Some((last, others)) = subscribers.split_last() else {
            return;
        };
        for shared in others {
            shared.push(event.clone());
        }
        last.push(event);
    }

    /// Notifies the release signal, if the hub has one: something that
    /// kept its thread loaded may have ended.
    pub fn signal_release(&self) {
        if let Some(on_release) = &self.on_release {
            on_release.notify_one();
        }
    }

    /// How many subscriptions were made so far.
    pub fn subscriptions_made(&self) -> u64 {
        self.subscriptions
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// The number of live subscribers.
    pub fn subscriber_count(&self) -> usize {
        let mut subscribers = lock(&self.subscribers);
        subscribers.retain(|s| !lock(&s.queue).abandoned);
        subscribers.len()
    }
}

impl Drop for EventHub {
    fn drop(&mut self) {
        for shared in lock(&self.subscribers).iter() {
            lock(&shared.queue).closed = true;
            shared.ready.notify_one();
        }
    }
}

impl Shared {
    fn push(&self, event: Event) {
        {
            let mut queue = lock(&self.queue);
            if queue.abandoned {
                return;
            }
            if let Some(back) = queue.events.back_mut()
                && merge_delta(back, &event)
            {
                // Merged into the waiting delta; the reader is already
                // notified of it.
                return;
            }
            queue.events.push_back(event);
        }
        self.ready.notify_one();
    }
}

/// Appends `next`'s text to `back` when both are deltas of the same item.
fn merge_delta(back: &mut Event, next: &Event) -> bool {
    let (
        EventMsg::AgentMessageDelta {
            turn_id,
            item_id,
            delta,
        },
        EventMsg::AgentMessageDelta {
            turn_id: next_turn,
            item_id: next_item,
            delta: next_delta,
        },
    ) = (&mut back.msg, &next.msg)
    else {
        return false;
    };
    if turn_id != next_turn || item_id != next_item || back.trace != next.trace {
        return false;
    }
    delta.push_str(next_delta);
    true
}

/// The receiving side of one subscription.
#[derive(Debug)]
pub struct EventReceiver {
    shared: Arc<Shared>,
}

impl EventReceiver {
    /// The next event; `None` once the thread is gone and everything sent
    /// before was received.
    pub async fn recv(&mut self) -> Option<Event> {
        loop {
            let notified = self.shared.ready.notified();
            {
                let mut queue = lock(&self.shared.queue);
                if let Some(event) = queue.events.pop_front() {
                    return Some(event);
                }
                if queue.closed {
                    return None;
                }
            }
            notified.await;
        }
    }
}

impl Drop for EventReceiver {
    fn drop(&mut self) {
        {
            let mut queue = lock(&self.shared.queue);
            queue.abandoned = true;
            // Free what was waiting now.
            queue.events.clear();
        }
        if let Some(on_release) = &self.shared.on_release {
            on_release.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(item: &str, text: &str) -> Event {
        Event {
            thread_id: "t".into(),
            at_ms: 0,
            msg: EventMsg::AgentMessageDelta {
                turn_id: "turn".into(),
                item_id: item.into(),
                delta: text.into(),
            },
            trace: None,
        }
    }

    fn other() -> Event {
        Event {
            thread_id: "t".into(),
            at_ms: 0,
            msg: EventMsg::ShutdownComplete,
            trace: None,
        }
    }

    fn text_of(event: &Event) -> Option<&str> {
        match &event.msg {
            EventMsg::AgentMessageDelta { delta, .. } => Some(delta),
            _ => None,
        }
    }

    #[tokio::test]
    async fn a_subscriber_that_keeps_up_gets_every_event_as_sent() {
        let hub = EventHub::new();
        let mut rx = hub.subscribe();
        for n in 0..100 {
            hub.send(delta("i", &n.to_string()));
            let event = rx.recv().await.expect("event");
            assert_eq!(text_of(&event), Some(n.to_string().as_str()));
        }
    }

    #[tokio::test]
    async fn a_subscriber_behind_gets_consecutive_deltas_merged_in_order() {
        let hub = EventHub::new();
        let mut rx = hub.subscribe();
        for n in 0..100_000 {
            hub.send(delta("a", &format!("{n} ")));
        }
        hub.send(other());
        hub.send(delta("b", "x"));
        hub.send(delta("b", "y"));
        drop(hub);

        let first = rx.recv().await.expect("merged deltas");
        let expected: String = (0..100_000).map(|n| format!("{n} ")).collect();
        assert_eq!(text_of(&first), Some(expected.as_str()));
        assert!(text_of(&rx.recv().await.expect("other")).is_none());
        assert_eq!(text_of(&rx.recv().await.expect("b")), Some("xy"));
        assert!(rx.recv().await.is_none(), "the hub is gone");
    }

    #[tokio::test]
    async fn each_subscriber_has_its_own_queue() {
        let hub = EventHub::new();
        let mut fast = hub.subscribe();
        let slow = hub.subscribe();
        hub.send(delta("a", "1"));
        assert_eq!(text_of(&fast.recv().await.expect("1")), Some("1"));
        hub.send(delta("a", "2"));
        assert_eq!(text_of(&fast.recv().await.expect("2")), Some("2"));
        assert_eq!(hub.subscriber_count(), 2);
        drop(slow);
        assert_eq!(hub.subscriber_count(), 1);
        hub.send(delta("a", "3"));
        assert_eq!(text_of(&fast.recv().await.expect("3")), Some("3"));
    }

    #[tokio::test]
    async fn recv_waits_for_the_next_event() {
        let hub = Arc::new(EventHub::new());
        let mut rx = hub.subscribe();
        let sender = Arc::clone(&hub);
        let waiting = tokio::spawn(async move { rx.recv().await });
        tokio::task::yield_now().await;
        sender.send(delta("a", "late"));
        let event = waiting.await.expect("task").expect("event");
        assert_eq!(text_of(&event), Some("late"));
    }
}
