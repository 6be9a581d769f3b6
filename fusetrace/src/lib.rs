//! fusetrace: where the time goes in FUSE file systems.
//!
//! Data flows one way:
//!
//! ```text
//! kernel (hooks, BTF layout, ring buffer, decoding)
//!   -> pipeline (run loop, lifecycle tracker | in-kernel counts)
//!     -> output (trace lines, stats, CSV), tui, record
//! ```
//!
//! `cli` holds the tracing commands (each its arguments and its run);
//! `diagnose` is an analysis over the same events; `lab` holds the
//! reference daemon, load generator, demo and consumer benchmark.

pub mod cli;
pub mod diagnose;
pub mod doctor;
pub mod flags;
pub mod kernel;
pub mod lab;
pub mod output;
pub mod pipeline;
pub mod record;
pub mod serve;
pub mod tui;
pub mod units;
