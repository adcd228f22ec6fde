//! Skein's core: threads, their submission loops, turns and models.
//!
//! Core owns execution once the app-server hands work over, and owns the
//! long-lived turn spans. The app-server calls in through [`ThreadManager`];
//! each thread's [`ThreadHandle::submit`] carries the caller's trace context
//! in `Submission.trace`, so core's dispatch, turn and model spans continue
//! the client's trace.

pub mod agent;
pub mod config;
pub mod conversation;
pub mod events;
pub mod mcp;
pub mod models;
pub mod providers;
pub mod store;
pub mod threads;
pub mod turn;

pub use config::{Config, ConfigError};
pub use events::{EventHub, EventReceiver};
pub use models::{DEFAULT_MODEL, Model, ModelInfo};
pub use store::{StoreError, ThreadStore};
pub use threads::{
    CoreConfig, CoreEvent, StartedTurn, ThreadError, ThreadHandle, ThreadInfo, ThreadManager,
    ThreadPage, TurnRecord,
};
pub use turn::{answer_item_id, answer_item_kind, user_item_id};
