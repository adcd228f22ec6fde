//! Skein's core: threads, their submission loops, turns and models.
//!
//! Core owns execution once the app-server hands work over, and owns the
//! long-lived turn spans. The app-server calls in through [`ThreadManager`];
//! each thread's [`ThreadHandle::submit`] carries the caller's span context
//! in `Submission.trace`, so core's dispatch, turn and model spans continue
//! the client's trace.
//!
//! Modules, bottom up (each reaches only down): [`config`] and [`records`]
//! (plain data); [`conversation`] (what a model reads); [`store`] (thread
//! history on disk); [`events`] (fan-out to subscribers); `spans` (every
//! span core opens); [`models`] and [`providers`] (the [`Model`] trait and
//! its implementations); [`mcp`] (tool servers); `runtime` (what turns
//! share); `thread` (one thread's state); `engine` (the one turn loop);
//! [`threads`] (the registry and the submission loops).

pub mod config;
pub mod conversation;
mod engine;
pub mod events;
pub mod mcp;
mod mcp_http;
pub mod models;
pub mod providers;
pub mod records;
mod runtime;
mod spans;
pub mod store;
#[cfg(test)]
mod testing;
mod thread;
pub mod threads;

pub use config::{Config, ConfigError};
pub use events::{EventHub, EventReceiver};
pub use models::{DEFAULT_MODEL, Model};
pub use records::{
    ModelInfo, StartedTurn, ThreadError, ThreadInfo, ThreadPage, ToolCallStatus, TurnItem,
    TurnRecord, answer_item_id, answer_item_kind, steered_item_id, user_item_id,
};
pub use store::{StoreError, ThreadStore};
pub use threads::{CoreConfig, ThreadHandle, ThreadManager};
