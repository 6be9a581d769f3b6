//! Everything that talks to the running kernel: which hook observes which
//! point of a request (`hooks`, a table), choosing and attaching them
//! (`probes`), the struct layout read from BTF (`layout`, `btf`),
//! the functions kprobes and fentry go on (`kallsyms`, `kfunc`,
//! `modfentry`), tracefs, and the ring buffer's records decoded into events
//! (`decode`). Nothing here calls an output: it yields events and
//! counters (`crate::doctor` reports what this kernel offers).

pub mod btf;
pub mod cells;
pub mod daemons;
pub mod decode;
pub mod hooks;
pub mod kallsyms;
pub mod kfunc;
pub mod layout;
pub mod mapped;
pub mod modfentry;
pub mod privileges;
pub mod probes;
pub mod slots;
pub mod tracefs;
pub mod uring_offer;

/// The running kernel's release (`uname -r`), when it can be read.
pub fn release() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|s| s.trim().to_string())
}
