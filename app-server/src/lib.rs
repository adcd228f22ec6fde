//! The Skein JSON-RPC app-server.
//!
//! A request flows through a few plain stages:
//!
//! 1. a transport ([`transport::stdio`], [`transport::websocket`]) reads a
//!    frame;
//! 2. [`connection::ConnectionHandler`] parses it into messages (a batch
//!    into its elements);
//! 3. [`tracing_layer::RequestTracingLayer`] wraps each request in an
//!    `app_server.request` span built by [`request_span`];
//! 4. [`processor::MessageProcessor`] routes it to its handler, which may
//!    call into `skein-core`;
//! 5. the reply goes back through the connection's writer, which ends the
//!    request span once the bytes are written.

pub mod connection;
pub mod descriptors;
pub mod doctor;
pub mod environment;
pub mod events;
pub mod ignored_params;
pub mod limits;
pub mod memory;
pub mod paths;
pub mod processor;
pub mod request_span;
pub mod server;
pub mod session;
pub mod thread_methods;
pub mod trace_view;
pub mod tracing_layer;
pub mod transport;
pub mod wire;

pub use server::{DEFAULT_MAX_MESSAGE_BYTES, ListenAddr, ServerConfig, WebSocketOptions, serve};
pub use skein_core::CoreConfig;
