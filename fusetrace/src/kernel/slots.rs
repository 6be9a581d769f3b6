//! The in-kernel aggregation's requests in flight, read from user space:
//! the array of slots (`AGG_SLOTS`, 262 144 of [`AggSlot`], 10 MiB) mapped
//! read-only, so one pass costs a few milliseconds where a lookup syscall
//! per slot would cost most of a second; and the overflow hash
//! (`AGG_SENT`, usually empty), iterated.
//!
//! Hand-rolled because aya 0.14 maps no map's values into user space; the
//! kernel allows it for arrays created with `BPF_F_MMAPABLE`.

use std::{
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
};

use anyhow::{Result, bail};
use aya::maps::{HashMap, MapData};
use fusetrace_common::{AGG_IN_FLIGHT, AGG_SLOT_CLAIMED, AggSent, AggSlot};

/// A request in flight: its connection and when it was sent
/// (`CLOCK_MONOTONIC` ns, as `bpf_ktime_get_ns`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InFlight {
    pub connection: u32,
    pub sent_ns: u64,
    /// It waits in the overflow hash (its slot was taken), not a slot:
    /// `serve` exports how full each table is.
    pub in_overflow: bool,
}

/// The slot array mapped read-only, and the overflow hash.
pub struct InFlightTables {
    slots: NonNull<AggSlot>,
    len: usize,
    overflow: HashMap<MapData, u64, AggSent>,
    _slots_map: MapData,
}

// SAFETY: the mapping is read-only shared memory owned by this value.
unsafe impl Send for InFlightTables {}

impl InFlightTables {
    pub fn new(slots: MapData, overflow: HashMap<MapData, u64, AggSent>) -> Result<Self> {
        let len = AGG_IN_FLIGHT as usize * size_of::<AggSlot>();
        // SAFETY: a fresh shared read-only mapping of the map's fd.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                slots.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            bail!(
                "mapping the kernel's in-flight table: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(InFlightTables {
            slots: NonNull::new(ptr.cast()).expect("mmap returned null"),
            len,
            overflow,
            _slots_map: slots,
        })
    }

    /// Every request in flight now. The kernel writes slots meanwhile:
    /// a slot read while its request ends or begins may be counted or
    /// not, as a scrape a moment earlier or later would.
    pub fn scan(&self) -> Vec<InFlight> {
        self.scan_with(|sent, in_overflow| InFlight {
            connection: sent.connection,
            sent_ns: sent.ts_ns,
            in_overflow,
        })
    }

    /// Every request in flight now, whole (`top` shows each: its id,
    /// opcode, node, requester, daemon thread and points), with whether
    /// it waits in the overflow hash. Same caveat as [`Self::scan`]: a
    /// slot read while the kernel rewrites it may mix two requests'
    /// fields, which a view shows for one frame at most.
    pub fn scan_sent(&self) -> Vec<(AggSent, bool)> {
        self.scan_with(|sent, in_overflow| (*sent, in_overflow))
    }

    /// One pass over the slots, then the overflow hash: `f` of each
    /// request in flight and whether it is in the overflow.
    fn scan_with<T>(&self, mut f: impl FnMut(&AggSent, bool) -> T) -> Vec<T> {
        let mut out = Vec::new();
        for i in 0..AGG_IN_FLIGHT as usize {
            // SAFETY: within the mapping; volatile, since the kernel writes it.
            let slot = unsafe { self.slots.as_ptr().add(i) };
            let req = unsafe { std::ptr::read_volatile(&raw const (*slot).req) };
            // Free, or being filled (its request is still in the overflow).
            if req == 0 || req == AGG_SLOT_CLAIMED {
                continue;
            }
            let sent = unsafe { std::ptr::read_volatile(&raw const (*slot).sent) };
            out.push(f(&sent, false));
        }
        out.extend(self.overflow.iter().filter_map(|entry| {
            let (_, sent) = entry.ok()?;
            Some(f(&sent, true))
        }));
        out
    }
}

impl Drop for InFlightTables {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.slots.as_ptr().cast(), self.len) };
    }
}
