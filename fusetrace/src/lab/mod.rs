//! The lab: what fusetrace brings to test and measure itself with. The
//! embedded reference FUSE file system (`daemon`), the load generator
//! (`load`), the one-command demo (`demo`) and the consumer benchmark
//! (`bench_consumer`). Nothing in the tracing path depends on it.

pub mod bench_consumer;
pub mod daemon;
pub mod demo;
pub mod load;
