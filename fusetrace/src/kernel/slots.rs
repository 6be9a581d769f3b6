//! The in-kernel aggregation's requests in flight, read from user space:
//! the array of slots (`AGG_SLOTS`, 262 144 of [`AggSlot`], 18 MiB) mapped
//! read-only (`mapped.rs`), and the overflow hash (`AGG_SENT`, usually
//! empty), iterated.

use anyhow::Result;
use aya::maps::{HashMap, MapData};
use fusetrace_common::{AGG_IN_FLIGHT, AGG_SLOT_CLAIMED, AggSent, AggSlot};

use super::mapped::MappedArray;

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
    slots: MappedArray<AggSlot>,
    overflow: HashMap<MapData, u64, AggSent>,
}

impl InFlightTables {
    pub fn new(slots: MapData, overflow: HashMap<MapData, u64, AggSent>) -> Result<Self> {
        Ok(InFlightTables {
            slots: MappedArray::new(slots, AGG_IN_FLIGHT as usize, "in-flight table", false)?,
            overflow,
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
        for i in 0..self.slots.len() {
            let slot = self.slots.at(i);
            // SAFETY: within the mapping; volatile, since the kernel writes it.
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
