//! Everything that talks to the running kernel: which hook observes which
//! point of a request (`hooks`, a table), choosing and attaching them
//! (`probes`), the struct layout read from BTF (`layout`, `btf`),
//! the functions kprobes and fentry go on (`kallsyms`, `kfunc`,
//! `modfentry`), tracefs, and the ring buffer's records decoded into events
//! (`decode`). `doctor` reports what this kernel offers. Nothing here calls
//! an output: it yields events and counters.

pub mod btf;
pub mod decode;
pub mod doctor;
pub mod hooks;
pub mod kallsyms;
pub mod kfunc;
pub mod layout;
pub mod modfentry;
pub mod probes;
pub mod slots;
pub mod tracefs;
