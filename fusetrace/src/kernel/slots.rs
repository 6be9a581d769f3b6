//! The in-kernel aggregation's requests in flight, read from user space:
//! the slots' request words (`AGG_SLOTS`, 262 144 words, 2 MiB) and their
//! sends' records (`AGG_SLOT_SENT`, 64 bytes each, 16 MiB), both mapped
//! read-only (`mapped.rs`), and the overflow hash (`AGG_SENT`, usually
//! empty), iterated. A scan reads every word and only the records of the
//! slots in use: a few hundred kilobytes of cache lines where it touched
//! all 18 MiB when the word sat in the record, ten times a second in
//! `top`.

use anyhow::Result;
use aya::maps::{HashMap, MapData};
use fusetrace_common::{AGG_IN_FLIGHT, AGG_SLOT_CLAIMED, AggSent};

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

/// The slot arrays mapped read-only, and the overflow hash.
pub struct InFlightTables {
    held: MappedArray<u64>,
    kept: MappedArray<AggSent>,
    overflow: HashMap<MapData, u64, AggSent>,
}

impl InFlightTables {
    /// From `AGG_SLOTS` (`held`), `AGG_SLOT_SENT` (`kept`) and `AGG_SENT`.
    pub fn new(
        held: MapData,
        kept: MapData,
        overflow: HashMap<MapData, u64, AggSent>,
    ) -> Result<Self> {
        let len = AGG_IN_FLIGHT as usize;
        Ok(InFlightTables {
            held: MappedArray::new(held, len, "in-flight slots", false)?,
            kept: MappedArray::new(kept, len, "in-flight requests", false)?,
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
        for i in 0..self.held.len() {
            // SAFETY: within the mappings; volatile, since the kernel writes them.
            let req = unsafe { std::ptr::read_volatile(self.held.at(i)) };
            // Free, or being filled (its request is still in the overflow).
            if req == 0 || req == AGG_SLOT_CLAIMED {
                continue;
            }
            let sent = unsafe { std::ptr::read_volatile(self.kept.at(i)) };
            out.push(f(&sent, false));
        }
        out.extend(self.overflow.iter().filter_map(|entry| {
            let (_, sent) = entry.ok()?;
            Some(f(&sent, true))
        }));
        out
    }
}
