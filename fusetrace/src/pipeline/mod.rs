//! From events to requests: the run loop (`session`) feeds decoded events
//! to the lifecycle tracker (`tracker`, pure), which joins them into
//! `lifecycle::RequestLifecycle`s, and hands finished requests to the
//! outputs; `aggregate` reads the latency counts the kernel kept itself
//! (plain `stats`). Connections are named from mountinfo (`connections`),
//! node ids turned into paths from the names requests carry (`paths`);
//! opcodes are named and parsed in `opcode`; `command` runs the one
//! command `-c` traces.

pub mod aggregate;
pub mod command;
pub mod connections;
pub mod lifecycle;
pub mod opcode;
pub mod paths;
pub mod session;
pub mod tracker;
