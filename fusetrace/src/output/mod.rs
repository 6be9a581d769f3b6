//! What a run shows: trace lines (`print`); latency statistics counted once
//! (`accumulate`, on `stats`' histograms) and written as tables or JSON
//! (`print`) and CSV (`export`); the `Sink` trait every output implements and `FanOut`,
//! several outputs at once (`sink`). The live
//! view is in `crate::tui`, recordings in `crate::record`.

pub mod accumulate;
pub mod export;
pub mod print;
pub mod sink;
pub mod stats;
