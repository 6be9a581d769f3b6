//! What a run shows: trace lines and the stats tables and JSON (`sinks`,
//! `stats`), CSV (`export`), several outputs at once (`fanout`). The live
//! view is in `crate::tui`, recordings in `crate::record`.

pub mod export;
pub mod fanout;
pub mod sinks;
pub mod stats;
