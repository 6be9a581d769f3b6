//! fusetrace: where the time goes in FUSE file systems.
//!
//! Data flows one way: [`probes`] (kernel hooks and the ring buffer) ->
//! [`decode`] -> [`tracker`] (request lifecycles, pure) -> sinks
//! ([`sinks`], [`stats`]). [`session`] wires one run together.

pub mod aggregate;
pub mod bench_consumer;
pub mod btf;
pub mod connections;
pub mod daemon;
pub mod decode;
pub mod demo;
pub mod diagnose;
pub mod doctor;
pub mod export;
pub mod fanout;
pub mod kallsyms;
pub mod kfunc;
pub mod load;
pub mod modfentry;
pub mod opcode;
pub mod probes;
pub mod record;
pub mod session;
pub mod sinks;
pub mod stats;
pub mod tracefs;
pub mod tracker;
pub mod tui;
pub mod units;
