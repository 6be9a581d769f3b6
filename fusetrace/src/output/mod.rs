//! What a run shows. Latency statistics are counted once (`accumulate`, on
//! `stats`' histograms) and written as tables or JSON (`print`, which also
//! writes the closing summary) and as CSV (`export`); `trace` writes one
//! line per request (`trace`, formatted by `line`).
//! `by` groups the table by file, process, command or mount instead.
//! `sink` holds the `Sink` trait every output implements and `FanOut`,
//! several outputs at once. `file` creates every file fusetrace writes
//! (private, no links followed, replaced only with `--force`). The live
//! view is in `crate::tui`, recordings in `crate::record`.

pub mod accumulate;
pub mod by;
pub mod export;
pub mod file;
pub mod hist;
pub mod line;
pub mod perfetto;
pub mod print;
pub mod trace;
