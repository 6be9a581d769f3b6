//! From events to requests: the run loop (`session`) feeds decoded events
//! to the lifecycle tracker (`tracker`, pure), which joins them into
//! `lifecycle::RequestLifecycle`s, and hands finished requests to the
//! outputs; `aggregate` reads the latency counts the kernel kept itself
//! (plain `stats`). Connections are named from mountinfo (`connections`),
//! node ids turned into paths from the names requests carry (`paths`);
//! opcodes are named and parsed in `opcode`, errors in `errno`; `command`
//! runs the one command `-c` traces.

pub mod aggregate;
pub mod command;
pub mod connections;
pub mod errno;
pub mod filter;
pub mod lifecycle;
pub mod opcode;
pub mod paths;
pub mod run;
pub mod session;
pub mod sink;
pub mod stats;
pub mod summary;
pub mod tracker;

/// The maps looked up several times per request (the tracker's requests in
/// flight, the path table): foldhash instead of SipHash, which a profile of
/// `trace` on the metadata storm showed at 8-10% of the tracer's CPU. Its
/// `RandomState` is seeded per process, so keys crafted to collide cannot
/// be made on purpose.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
