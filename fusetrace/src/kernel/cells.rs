//! The in-kernel aggregation's histogram cells, read from user space: the
//! table (`AGG_CELL_TABLE`, a region of slots per CPU, mapped read-write
//! through `mapped.rs`) and the overflow hash (`AGG_HISTOGRAMS`, per CPU,
//! iterated), summed into one count and latency sum per cell. See
//! `fusetrace_common::CellSlot` for how the kernel fills a slot.

use std::{
    collections::{BTreeMap, HashSet},
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::{Context, Result};
use aya::maps::{MapData, MapError, PerCpuHashMap};
use fusetrace_common::{
    AGG_TABLE_MIN_REGION_BITS, AGG_TABLE_SLOTS, CellCounts, CellSlot, HistogramKey,
};

use super::mapped::MappedArray;

/// How the table is split between `cpus` possible CPUs: each region's
/// size (log2), and how many CPUs have one (the rest count in the hash).
/// Regions are a power of two, at least `1 << AGG_TABLE_MIN_REGION_BITS`.
pub fn table_regions(cpus: usize) -> (u32, u32) {
    let total_bits = AGG_TABLE_SLOTS.trailing_zeros();
    let cpu_bits = cpus.max(1).next_power_of_two().trailing_zeros();
    let bits = total_bits
        .saturating_sub(cpu_bits)
        .max(AGG_TABLE_MIN_REGION_BITS);
    let regions = AGG_TABLE_SLOTS >> bits;
    (bits, regions.min(cpus.max(1) as u32))
}

/// The table mapped, and the hash.
pub struct CellTables {
    table: MappedArray<CellSlot>,
    hash: PerCpuHashMap<MapData, HistogramKey, CellCounts>,
}

/// How full the two are: slots in use of the table's, cells in the hash.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CellsInUse {
    pub table: usize,
    pub hash: usize,
}

impl CellTables {
    pub fn new(
        table: MapData,
        hash: PerCpuHashMap<MapData, HistogramKey, CellCounts>,
    ) -> Result<Self> {
        Ok(CellTables {
            table: MappedArray::new(table, AGG_TABLE_SLOTS as usize, "histogram table", true)?,
            hash,
        })
    }

    /// Every cell with its counts summed over the CPUs' slots and the
    /// hash (they only grow while the cell exists), and how full each is.
    pub fn cells(&self) -> Result<(Vec<(HistogramKey, CellCounts)>, CellsInUse)> {
        let mut sums: BTreeMap<HistogramKey, CellCounts> = BTreeMap::new();
        let mut used = CellsInUse::default();
        self.each_slot(|slot| {
            used.table += 1;
            add(&mut sums, slot.key, slot.count, slot.sum_ns);
            false
        });
        for cell in self.hash.iter() {
            let (key, per_cpu) = cell.context("reading the kernel's latency histograms")?;
            used.hash += 1;
            for c in per_cpu.iter() {
                add(&mut sums, key, c.count, c.sum_ns);
            }
        }
        Ok((sums.into_iter().collect(), used))
    }

    /// Forgets cells (of a mount that is gone): frees their slots and
    /// removes them from the hash.
    pub fn remove(&mut self, keys: &[HistogramKey]) -> Result<()> {
        let gone: HashSet<&HistogramKey> = keys.iter().collect();
        self.each_slot(|slot| gone.contains(&slot.key));
        // Most cells were never in the hash: the kernel's "no such key"
        // (ENOENT) is no error here.
        for key in keys {
            match self.hash.remove(key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e).context("removing a histogram cell"),
            }
        }
        Ok(())
    }

    /// `f` of every slot in use, read whole; a slot `f` returns true for
    /// is freed (its `count` alone set to 0, which the kernel reads first:
    /// only for cells no request adds to any more).
    fn each_slot(&self, mut f: impl FnMut(&CellSlot) -> bool) {
        for i in 0..self.table.len() {
            let slot = self.table.at(i);
            // SAFETY: within the mapping; `count` is an aligned u64 the
            // kernel writes last (atomically) when it takes the slot.
            let count = unsafe { AtomicU64::from_ptr(&raw mut (*slot).count) };
            if count.load(Ordering::Acquire) == 0 {
                continue;
            }
            // SAFETY: within the mapping; volatile, since the kernel writes it.
            let read = unsafe { std::ptr::read_volatile(slot) };
            if read.count != 0 && f(&read) {
                count.store(0, Ordering::Release);
            }
        }
    }
}

fn add(sums: &mut BTreeMap<HistogramKey, CellCounts>, key: HistogramKey, count: u64, sum_ns: u64) {
    let c = sums.entry(key).or_default();
    c.count += count;
    c.sum_ns += sum_ns;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cpu_below_the_limit_has_a_region_within_the_table() {
        for cpus in [1, 2, 3, 4, 7, 8, 64, 100, 1024, 1025, 4096, 8192] {
            let (bits, with) = table_regions(cpus);
            assert!(bits >= AGG_TABLE_MIN_REGION_BITS, "{cpus} CPUs");
            assert!(with as usize <= cpus, "{cpus} CPUs");
            // The last region ends within the table.
            assert!(
                ((with as u64) << bits) <= u64::from(AGG_TABLE_SLOTS),
                "{cpus} CPUs"
            );
            // Every CPU has one while regions are above the minimum.
            if (AGG_TABLE_SLOTS >> AGG_TABLE_MIN_REGION_BITS) as usize >= cpus {
                assert_eq!(with as usize, cpus, "{cpus} CPUs");
            }
        }
        assert_eq!(table_regions(2), (15, 2));
        assert_eq!(table_regions(3), (14, 3));
    }
}
