//! `fusetrace top` on the kernel's own tables (its default mode): what
//! `stats --stages` counts, plus a scan. Each frame reads
//! - the in-flight slots (`AGG_SLOTS`, mapped read-only) into the rows in
//!   flight, the requester's command name read from `/proc/TID/comm`;
//! - the growth of the histogram cells since the last frame into the
//!   per-opcode window (rate, errors, percentiles per stage);
//! - the kernel's counters into the header;
//!
//! and between frames takes from the ring buffer only the requests the
//! kernel sent one by one (`EventKind::Whole`, at least as slow as the
//! threshold [`next_record_min`] keeps moving), for the slowest lists.
//!
//! Only this module reads the probes (`tui::run` drives it); [`TopState`]
//! stays pure.

use std::{
    collections::{BTreeSet, HashMap},
    time::Duration,
};

use anyhow::Result;
use fusetrace_common::EventKind;

use super::state::{InFlightRow, RunCounters, TopState};
use crate::{
    kernel::{layout::major_minor, probes::Probes},
    pipeline::{
        aggregate::{CellDeltas, named_mount_cells},
        connections::ConnectionTable,
        filter::Filter,
        lifecycle::{Comm, RequestLifecycle},
        session,
        summary::{Counting, RunSummary},
    },
};

/// How many requests per second, over the window, the kernel is asked to
/// send one by one (see [`next_record_min`]).
pub const RECORDS_PER_SECOND: u64 = 5;

/// Where the record threshold goes next, from where it is (`previous`,
/// `--stall` at the start) and the smallest total latency that at most
/// the budget's number of the window's requests reached (`window_above`:
/// `Windows::latency_above`).
///
/// Why this rule: the slowest lists want the slowest requests, the kernel
/// has one threshold for all opcodes, and what a record costs must stay
/// small however busy the mount is. Following the window's latency above
/// which [`RECORDS_PER_SECOND`] times the window's seconds requests were,
/// the kernel sends about that many per second: a storm of fast requests
/// sends none of them, a storm of stalled ones only its slowest. A
/// request that stalled (`--stall`) and ended is among them unless more
/// than that many stalled in the window. The threshold rises at once when
/// the window fills with slower requests, and comes down by at most half
/// per frame, so that the quiet after a storm does not open the gate to
/// everything at once (a storm that begins while it is low is sent for
/// one frame at most). A window with fewer requests than the budget
/// brings it down to 0: every request, a few a second.
pub fn next_record_min(previous: u64, window_above: u64) -> u64 {
    window_above.max(previous / 2)
}

/// The requesting threads' command names, read once per thread while it
/// has requests in flight (`None`: the thread is gone, shown `-`).
#[derive(Debug, Default)]
struct Comms {
    known: HashMap<u32, Option<Comm>>,
}

impl Comms {
    fn get(&mut self, tid: u32) -> Option<Comm> {
        if tid == 0 {
            return None;
        }
        *self.known.entry(tid).or_insert_with(|| {
            let name = std::fs::read_to_string(format!("/proc/{tid}/comm")).ok()?;
            Some(Comm::new(name.trim_end_matches('\n')))
        })
    }

    /// Forgets the threads not in `seen` (a thread id is reused later).
    fn keep_only(&mut self, seen: &BTreeSet<u32>) {
        self.known.retain(|tid, _| seen.contains(tid));
    }
}

/// What top reads from the kernel between frames and at each one.
pub struct KernelReader {
    deltas: CellDeltas,
    /// `--mount` connections whose number a new mount took.
    gone: BTreeSet<u32>,
    /// The connections `--mount` named (empty: all).
    named: Vec<u32>,
    /// `--op` (empty: all); the kernel counts every opcode.
    opcodes: Vec<u32>,
    comms: Comms,
    /// The record threshold wanted, and the one the kernel has.
    record_min_ns: u64,
    kernel_record_min_ns: u64,
    /// Requests counted, and records taken, since the start.
    counted: u64,
    records: u64,
}

impl KernelReader {
    pub fn new(filter: &Filter, stall_ns: u64) -> KernelReader {
        KernelReader {
            deltas: CellDeltas::default(),
            gone: BTreeSet::new(),
            named: filter.connections.clone(),
            opcodes: filter.opcodes.clone(),
            comms: Comms::default(),
            // From the stalled ones down.
            record_min_ns: stall_ns,
            // What the kernel starts with (none): the first frame sets it.
            kernel_record_min_ns: u64::MAX,
            counted: 0,
            records: 0,
        }
    }

    fn wanted(&self, connection: u32, opcode: u32) -> bool {
        !self.gone.contains(&connection)
            && (self.opcodes.is_empty() || self.opcodes.contains(&opcode))
    }

    /// Hands the slow requests the ring buffer holds (waiting up to
    /// `timeout` for one) to the state's slowest lists.
    pub fn take_records(
        &mut self,
        probes: &mut Probes,
        state: &mut TopState,
        timeout: Duration,
    ) -> Result<()> {
        let mut got = Vec::new();
        probes.poll(timeout, |ev, _| {
            // Only whole requests come in this mode.
            if ev.kind == EventKind::Whole as u8 {
                got.push(RequestLifecycle::from_whole(&ev));
            }
        })?;
        self.records += got.len() as u64;
        for mut rec in got {
            if !self.wanted(rec.connection, rec.opcode) {
                continue;
            }
            rec.requester_comm = rec.requester_tid.and_then(|t| self.comms.get(t));
            state.record_slowest(&rec);
        }
        Ok(())
    }

    /// One frame: the cells' growth, the rows in flight and the counters
    /// into `state`, then the record threshold moved.
    pub fn frame(
        &mut self,
        probes: &mut Probes,
        state: &mut TopState,
        mounts: &mut ConnectionTable,
    ) -> Result<()> {
        let (cells, newly_gone) =
            named_mount_cells(probes.histogram_cells()?, &self.named, &mut self.gone);
        for conn in newly_gone {
            log::warn!(
                "{} was unmounted and a new mount took its connection number {}; the new mount is not traced",
                mounts.name(conn),
                major_minor(conn)
            );
        }
        let mut grown = self.deltas.update(&cells);
        grown.retain(|(key, _)| self.wanted(key.connection, key.opcode));
        self.counted += grown
            .iter()
            .filter(|(key, _)| key.stage == fusetrace_common::agg_stage::TOTAL)
            .map(|(_, n)| n)
            .sum::<u64>();
        state.count_cells(session::monotonic_ns(), &grown);

        let slots = probes.in_flight_sent()?;
        let mut seen = BTreeSet::new();
        let mut rows = Vec::with_capacity(slots.len());
        for (sent, _) in &slots {
            if !self.wanted(sent.connection, sent.opcode) {
                continue;
            }
            seen.insert(sent.header_pid);
            rows.push(InFlightRow::from_slot(
                sent,
                self.comms.get(sent.header_pid),
            ));
        }
        self.comms.keep_only(&seen);
        let k = probes.counters();
        let counters = RunCounters {
            events: self.records,
            ring_drops: k.ring_drops,
            undecodable: probes.undecodable(),
            unmatched_ends: k.agg_unmatched_ends,
            in_kernel: true,
            table_full: k.agg_table_full,
            histogram_full: k.agg_histogram_full,
            stages_missing: k.agg_stages_missing,
            ..RunCounters::default()
        };
        state.tick_rows(
            session::monotonic_ns(),
            rows.into_iter(),
            counters,
            &mut |c| mounts.name(c),
        );

        let window_s = state.windows().window_ns().div_ceil(1_000_000_000);
        let above = state.windows().latency_above(RECORDS_PER_SECOND * window_s);
        self.record_min_ns = next_record_min(self.record_min_ns, above);
        if self.record_min_ns != self.kernel_record_min_ns {
            probes.set_record_min(self.record_min_ns)?;
            self.kernel_record_min_ns = self.record_min_ns;
        }
        state.record_min_ns = Some(self.record_min_ns);
        Ok(())
    }

    /// The run's summary, as `stats --stages` counts it.
    pub fn summary(&self, probes: &Probes) -> RunSummary {
        let mut summary = RunSummary {
            requests: self.counted,
            mounts_gone: self.gone.len() as u64,
            ..RunSummary::default()
        };
        summary.count_kernel(
            &probes.counters(),
            probes.undecodable(),
            Counting::InKernel { stages: true },
        );
        summary
    }
}

/// The requests in flight in the kernel's table now (`-c` waits for its
/// command's to end).
pub fn in_flight(probes: &Probes) -> u64 {
    let k = probes.counters();
    k.agg_started.saturating_sub(k.agg_ended)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn the_threshold_rises_at_once_and_falls_by_halves() {
        // A window of slower requests: at once, past --stall too.
        assert_eq!(next_record_min(2 * MS, 40 * MS), 40 * MS);
        assert_eq!(next_record_min(1_000 * MS, 5_000 * MS), 5_000 * MS);
        // Quiet: half per frame, not down to the window's 0 at once.
        assert_eq!(next_record_min(40 * MS, 0), 20 * MS);
        assert_eq!(next_record_min(20 * MS, 5 * MS), 10 * MS);
        // Down to nothing when the window stays under the budget.
        let mut t = 1_000 * MS;
        for _ in 0..64 {
            t = next_record_min(t, 0);
        }
        assert_eq!(t, 0);
    }

    #[test]
    fn command_names_are_read_once_and_forgotten_with_their_thread() {
        let mut comms = Comms::default();
        let me = unsafe { libc::gettid() } as u32;
        let name = std::fs::read_to_string(format!("/proc/{me}/comm")).unwrap();
        assert_eq!(
            comms.get(me).map(|c| c.to_string()),
            Some(name.trim_end().to_string())
        );
        assert_eq!(comms.get(0), None);
        // A thread id past the kernel's largest is no task: `-`.
        assert_eq!(comms.get(u32::MAX - 1), None);
        comms.keep_only(&BTreeSet::from([me]));
        assert_eq!(comms.known.len(), 1);
    }
}
