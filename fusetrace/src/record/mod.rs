//! `fusetrace record` and `fusetrace report`: the decoded event stream of a
//! run, written to a file (`format`) by a sink ([`recorder`]) and replayed
//! through the same tracker and sinks later ([`replay`]).

pub mod format;
pub mod recorder;
pub mod replay;
pub mod report;
