//! What a run shows: trace lines (`sinks`); latency statistics counted once
//! (`accumulate`, on `stats`' histograms) and written as tables or JSON
//! (`sinks`) and CSV (`export`); several outputs at once (`fanout`). The live
//! view is in `crate::tui`, recordings in `crate::record`.

pub mod accumulate;
pub mod export;
pub mod fanout;
pub mod sinks;
pub mod stats;
