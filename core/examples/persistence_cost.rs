//! Measures what durable thread history costs per turn.
//!
//! Runs the same sequence of short turns (the offline echo model, no delay)
//! on one thread, first with history kept in memory only, then written to a
//! thread store in a temporary directory, and prints the mean and median
//! time per turn, from `start_turn` to the `TurnCompleted` event, for each.
//! The difference is what persistence costs: one unsynced append when the
//! turn starts and one synced append before it is reported complete.
//!
//! Run it in release mode:
//!
//! ```sh
//! cargo run --release -p skein-core --example persistence_cost -- 500
//! ```

use std::time::{Duration, Instant};

use skein_core::{CoreConfig, EventReceiver, ThreadManager, ThreadStore};
use skein_protocol::{EventMsg, TurnKind, UserInput};

async fn wait_completed(events: &mut EventReceiver) {
    while let Some(event) = events.recv().await {
        if matches!(event.msg, EventMsg::TurnCompleted { .. }) {
            return;
        }
    }
}

async fn run(store: Option<ThreadStore>, turns: usize) -> Vec<Duration> {
    let manager = ThreadManager::new(CoreConfig {
        echo_delay: Duration::ZERO,
        store,
        ..CoreConfig::default()
    });
    let thread = match manager.start_thread(None, false) {
        Ok(thread) => thread,
        Err(err) => panic!("cannot start a thread: {err}"),
    };
    let mut events = match manager.handle(&thread.id) {
        Ok(handle) => handle.subscribe(),
        Err(err) => panic!("thread vanished: {err}"),
    };
    let input = || {
        vec![UserInput::Text {
            text: "a short message of eight words to echo".into(),
        }]
    };
    let mut times = Vec::with_capacity(turns);
    for _ in 0..turns {
        let start = Instant::now();
        if let Err(err) = manager
            .start_turn(&thread.id, TurnKind::Regular, input())
            .await
        {
            panic!("turn refused: {err}");
        }
        wait_completed(&mut events).await;
        times.push(start.elapsed());
    }
    manager.shutdown().await;
    times
}

fn summary(label: &str, mut times: Vec<Duration>) -> Duration {
    times.sort_unstable();
    let mean = times.iter().sum::<Duration>() / times.len().max(1) as u32;
    let median = times[times.len() / 2];
    let p95 = times[times.len() * 95 / 100];
    println!("{label:<22} mean {mean:>10.1?}   median {median:>10.1?}   p95 {p95:>10.1?}");
    median
}

#[tokio::main]
async fn main() {
    let turns: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(500);
    let dir = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(err) => panic!("no temporary directory: {err}"),
    };
    let store = match ThreadStore::open(dir.path().join("threads")) {
        Ok(store) => store,
        Err(err) => panic!("cannot open the store: {err}"),
    };
    println!(
        "{turns} sequential turns, echo model, no delay; store in {}",
        dir.path().display()
    );
    // Warm up both paths once so the first measurement is not an outlier.
    let _ = run(None, 20).await;
    let memory = summary("in memory", run(None, turns).await);
    let durable = summary("durable (thread store)", run(Some(store), turns).await);
    println!(
        "persistence costs about {:.1?} per turn (median difference)",
        durable.saturating_sub(memory)
    );
}
