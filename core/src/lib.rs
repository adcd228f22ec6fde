//! Skein's core: threads, models and (growing) the turn runtime.
//!
//! Core owns execution once the app-server hands work over. The app-server
//! calls in through [`ThreadManager`].

pub mod models;
pub mod threads;

pub use models::{DEFAULT_MODEL, MODELS, ModelInfo, find_model};
pub use threads::{ThreadError, ThreadInfo, ThreadManager, ThreadPage};
