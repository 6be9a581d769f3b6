//! The names requests carry (LOOKUP, CREATE, MKDIR, MKNOD, SYMLINK, LINK,
//! UNLINK, RMDIR, RENAME, RENAME2), sent with the request's send as one
//! [`NamedEvent`] record, so that user space can turn node ids into paths.
//!
//! A name is one of the request's input arguments (`args->in_args[i]`),
//! which differ between kernels: since 6.14 `in_args[0]` is an empty
//! header slot and LOOKUP's name has its NUL in a separate argument. So
//! the name is found by counting the *non-empty* arguments, which is the
//! same on every kernel: LOOKUP, UNLINK, RMDIR and SYMLINK carry it first,
//! the others after their fixed `fuse_*_in` struct (RENAME's new name
//! follows the old one). Offsets come from BTF through [`KernelLayout`].
//!
//! A name is read for its argument's size, never up to a NUL: a name in a
//! path walk points into the whole path (`a/absent` when looking up `a`),
//! and since 6.14 the size excludes the NUL. User space cuts a trailing
//! NUL (older kernels count it).

use aya_ebpf::{helpers::generated::bpf_probe_read_kernel, macros::map, maps::PerCpuArray};
use fusetrace_common::{
    FLAG_NAMES, FuseEvent, KernelLayout, NAME_BYTES, NamedEvent, counters,
    opcode::{CREATE, LINK, LOOKUP, MKDIR, MKNOD, RENAME, RENAME2, RMDIR, SYMLINK, UNLINK},
};

use crate::{
    maps::EVENTS,
    memory::kread,
    report::{bump, stamp},
};

const _: () = assert!(NAME_BYTES.is_power_of_two());

/// Most input arguments a request has (`fuse_args.in_args[4]` since 6.14;
/// 3 before, bounded by `in_numargs` there).
const MAX_IN_ARGS: u32 = 4;

/// Where `opcode`'s names are among its non-empty input arguments: the
/// first one's index and how many (0: it carries none).
#[inline(always)]
fn name_args(opcode: u32) -> (u32, u32) {
    match opcode {
        LOOKUP | UNLINK | RMDIR | SYMLINK => (0, 1),
        MKNOD | MKDIR | CREATE | LINK => (1, 1),
        RENAME | RENAME2 => (1, 2),
        _ => (0, 0),
    }
}

/// Submits the send `ev` of request `req` with its names when its opcode
/// carries any. Returns false when it does not (the caller submits `ev`
/// as usual).
#[inline(always)]
pub fn submit_sent(ev: &mut FuseEvent, req: u64, l: &KernelLayout) -> bool {
    let (first, count) = name_args(ev.opcode);
    if count == 0 || l.fuse_arg_stride == 0 || l.names_off != 0 {
        return false;
    }
    let Some(args) = kread::<u64>(req, l.req_args) else {
        return false;
    };
    if !stamp(ev) {
        return true;
    }
    ev.flags |= FLAG_NAMES;
    // The non-empty arguments: [fixed struct,] name[, new name].
    let mut values = [0u64; 3];
    let mut sizes = [0u32; 3];
    let numargs = kread::<u8>(args, l.args_in_numargs).unwrap_or(0) as u32;
    let mut found = 0usize;
    for i in 0..MAX_IN_ARGS {
        if i >= numargs || found >= values.len() {
            break;
        }
        let at = l.args_in_args + i * l.fuse_arg_stride;
        let size = kread::<u32>(args, at + l.fuse_arg_size).unwrap_or(0);
        if size == 0 {
            continue;
        }
        sizes[found] = size;
        values[found] = kread::<u64>(args, at + l.fuse_arg_value).unwrap_or(0);
        found += 1;
    }
    // RENAME's new directory and RENAME2's flags, LINK's linked node: the
    // first fields of their fixed struct.
    if first == 1 && values[0] != 0 && matches!(ev.opcode, RENAME | RENAME2 | LINK) {
        ev.arg0 = kread::<u64>(values[0], 0).unwrap_or(0);
        if ev.opcode == RENAME2 {
            ev.arg1 = u64::from(kread::<u32>(values[0], 8).unwrap_or(0));
        }
    }
    if count == 2 {
        emit::<2>(ev, [(values[1], sizes[1]), (values[2], sizes[2])])
    } else {
        let i = first as usize & 1;
        emit::<1>(ev, [(values[i], sizes[i]), (0, 0)])
    }
    true
}

/// Where a [`NamedEvent`] is put together (632 bytes would not fit the
/// eBPF stack) before it is copied to the ring buffer cut to the names'
/// length: a name is 10 to 20 bytes far more often than 255, and a
/// fixed-size record would take the ring buffer's room three times over.
#[map]
static SCRATCH: PerCpuArray<NamedEvent<2>> = PerCpuArray::with_max_entries(1, 0);

/// Builds the record of `ev` and its names in [`SCRATCH`] and sends the
/// part that holds something: the event, the lengths, the first name
/// (and for two names the whole first slot, then the second name).
#[inline(always)]
fn emit<const N: usize>(ev: &FuseEvent, names: [(u64, u32); 2]) {
    let Some(p) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let head = core::mem::offset_of!(NamedEvent<2>, names);
    let mut len = [0u16; 2];
    // SAFETY: `p` is this CPU's scratch slot; every field written is inside it.
    unsafe {
        core::ptr::addr_of_mut!((*p).ev).write(*ev);
        core::ptr::addr_of_mut!((*p)._pad).write(0);
        for (i, &(src, size)) in names.iter().enumerate().take(N) {
            let dst = core::ptr::addr_of_mut!((*p).names[i]).cast::<core::ffi::c_void>();
            // Bounded for the verifier: 1 to NAME_BYTES, by a mask on the
            // very value handed to the helper. A compare is not enough:
            // the compiler folds `n == 0 || n > NAME_BYTES` into one range
            // check on a copy, or drops it as implied by `min`, and 6.1's
            // verifier then sees an unbounded size ("R2 unbounded memory
            // access", seen when unrelated code changed the register
            // allocation). The volatile slot keeps the compiler from
            // proving the mask a no-op.
            let n = size.min(NAME_BYTES as u32);
            // SAFETY: a stack local.
            let n = unsafe { core::ptr::read_volatile(&n) };
            if src == 0 || n == 0 {
                continue;
            }
            let n = ((n - 1) & (NAME_BYTES as u32 - 1)) + 1;
            if bpf_probe_read_kernel(dst, n, src as *const _) < 0 {
                bump(counters::READ_FAULTS);
                continue;
            }
            len[i] = n as u16;
        }
        core::ptr::addr_of_mut!((*p).len).write(len);
    }
    let used = if N == 2 {
        head + NAME_BYTES + len[1] as usize
    } else {
        head + len[0] as usize
    };
    // Bounded for the verifier: at most the record.
    let used = used.min(core::mem::size_of::<NamedEvent<2>>());
    // SAFETY: `used` bytes of the scratch slot, all initialised above or
    // earlier (a per-CPU array starts zeroed).
    let bytes = unsafe { core::slice::from_raw_parts(p.cast::<u8>(), used) };
    if EVENTS.output::<[u8]>(bytes, 0).is_err() {
        bump(counters::RING_DROPS);
    }
}
