//! What a run shows: trace lines (`sinks`); latency statistics counted once
//! (`accumulate`, on `stats`' histograms) and written as tables or JSON
//! (`sinks`) and CSV (`export`); the `Sink` trait every output implements and `FanOut`,
//! several outputs at once (`sink`). The live
//! view is in `crate::tui`, recordings in `crate::record`.

pub mod accumulate;
pub mod export;
pub mod sink;
pub mod sinks;
pub mod stats;
