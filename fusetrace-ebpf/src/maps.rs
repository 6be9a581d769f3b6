//! The maps, and the read-only layout, that several modules share. A map
//! that one module alone uses lives in that module (`SUBMITTED` in
//! `request.rs`, `REPLY_STARTED` in `reply.rs`, the `AGG_*` maps in
//! `aggregate.rs`, ...).
//!
//! User space finds every one by its symbol name (aya's `#[map]` exports
//! the static's name; `LAYOUT` is `no_mangle`): a name here is an
//! interface, not a choice of this crate alone.

use aya_ebpf::{
    macros::map,
    maps::{Array, PerCpuArray, RingBuf},
};
use fusetrace_common::{KernelLayout, RING_BYTES, counters};

/// Struct offsets and settings, which user space fills from the running
/// kernel's BTF before loading; read through `memory::layout` and
/// `layout_field!`, never directly (the compiler would fold the zeroed
/// initialiser).
#[unsafe(no_mangle)]
pub(crate) static LAYOUT: KernelLayout = KernelLayout::zeroed();

#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

/// `[0]`: 1 once every hook is attached. Until then nothing is reported: a
/// request sent while the end hook was not yet attached would otherwise
/// look in flight forever. `[1]`: 1 when the replied point is hooked in the
/// kernel (`daemon.rs`), whose time the end hooks then take (`reply.rs`).
/// `[2]`: 1 when the submission point is hooked (kprobe/fentry), whose
/// times the sends then look up (`request.rs`); else a send skips the
/// lookup.
#[map]
pub(crate) static GATE: Array<u32> = Array::with_max_entries(3, 0);

/// 1 once a send was seen before its request id was assigned (kernels 6.11
/// to 6.15): from then on the daemon's takes look their request up in the
/// connection's processing table, to name its `struct fuse_req *`.
#[map]
pub(crate) static ID_LATE: Array<u32> = Array::with_max_entries(1, 0);

/// Indexed by `counters::*`: ring buffer drops and transfers we could not decode.
#[map]
pub(crate) static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counters::COUNT, 0);
