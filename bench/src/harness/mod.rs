//! The harness's stages: start servers, drive load, check stores, report.

pub mod mcp;
pub mod report;
pub mod rss;
pub mod servers;
pub mod setup;
pub mod spans;
pub mod stdio;
pub mod stream;
pub mod wire;
pub mod ws;
