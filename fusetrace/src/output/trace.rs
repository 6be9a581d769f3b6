//! `fusetrace trace`'s sink: one text line (or JSON object) per finished
//! request.
//!
//! Per request it costs formatting only: lines are built in one buffer
//! ([`Line`], reused) and reach the writer many at a time (when the
//! buffer holds [`PENDING_BYTES`], at every tick and at the end; the run
//! ticks every 200 ms, so a line waits at most that long, as it did in a
//! `BufWriter` of its own before). Mount points are turned into text
//! once per mount and opcode names are looked up by number.

use std::io::Write;

use anyhow::Result;
use serde::Serialize;

use crate::{
    output::line::{Align, Line},
    output::print::{Format, write_summary},
    pipeline::connections::ConnectionTable,
    pipeline::lifecycle::{ExtraStage, LatencyStage, PathShown, RequestLifecycle},
    pipeline::opcode,
    pipeline::sink::Sink,
    pipeline::summary::RunSummary,
};

/// Bytes of lines held before they are written: a busy run writes in few
/// system calls; small enough to stay in cache.
const PENDING_BYTES: usize = 32 * 1024;

/// A finished request as `trace --format json` prints it: the request's
/// points (`<point>_at_ns`, monotonic) and its stages' durations
/// (`<stage>_ns`), named as everywhere else (README, "Output names").
#[derive(Serialize)]
struct TraceRecord<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    mount: &'a str,
    opcode: std::borrow::Cow<'static, str>,
    #[serde(flatten)]
    rec: &'a RequestLifecycle,
    queue_wait_ns: Option<u64>,
    daemon_service_ns: Option<u64>,
    completion_ns: Option<u64>,
    total_ns: Option<u64>,
    /// Stages only some requests have (background wait, virtio-fs).
    background_wait_ns: Option<u64>,
    virtqueue_ns: Option<u64>,
    device_ns: Option<u64>,
}

/// Mount points as text, per (connection, mount id): a path's `Display`
/// goes through UTF-8 validation and `core::fmt`, once per mount here
/// instead of once per request.
#[derive(Default)]
struct MountTexts {
    known: Vec<(u32, u32, String)>,
    /// The name of the last connection the mount table did not know.
    unknown: String,
}

impl MountTexts {
    /// The mount column's text for `connection` (`ConnectionTable::name`'s).
    fn get(&mut self, connection: u32, mounts: &mut ConnectionTable) -> &str {
        let Some(m) = mounts.get(connection) else {
            // Unknown: the table looks again (a new mount) or names it by number.
            self.unknown = mounts.name(connection);
            return &self.unknown;
        };
        let at = match self
            .known
            .iter()
            .position(|(c, id, _)| *c == connection && *id == m.mount_id)
        {
            Some(at) => at,
            None => {
                let text = m.mount_point.display().to_string();
                self.known.retain(|(c, _, _)| *c != connection);
                self.known.push((connection, m.mount_id, text));
                self.known.len() - 1
            }
        };
        &self.known[at].2
    }
}

/// `fusetrace trace`: one line per finished request.
pub struct TraceSink<W: Write> {
    out: W,
    format: Format,
    start_ns: u64,
    header_done: bool,
    /// Lines not yet written to `out`.
    pending: Line,
    mount_texts: MountTexts,
}

impl<W: Write> TraceSink<W> {
    pub fn new(out: W, format: Format, start_ns: u64) -> Self {
        TraceSink {
            out,
            format,
            start_ns,
            header_done: false,
            pending: Line::default(),
            mount_texts: MountTexts::default(),
        }
    }

    /// Writes the lines held so far to `out` (which may hold them further).
    fn write_pending(&mut self) -> Result<()> {
        if !self.pending.is_empty() {
            // Cleared even when the write failed: they are not written twice.
            let result = self.out.write_all(self.pending.bytes());
            self.pending.clear();
            result?;
        }
        Ok(())
    }

    /// One request as a text line, onto `self.pending`: the columns of
    /// the header, fixed-point times (seconds to the us, stages to 0.1 us).
    fn text_line(&mut self, rec: &RequestLifecycle, mounts: &mut ConnectionTable) {
        use Align::{Left, Right};
        let line = &mut self.pending;
        let t = rec.first_seen_ns().saturating_sub(self.start_ns);
        line.fixed(Some(t), 1_000_000_000, 6, 12, Left);
        line.space();
        line.cell(self.mount_texts.get(rec.connection, mounts), 20, Left);
        line.space();
        match opcode::known(rec.opcode) {
            Some(name) if !rec.interrupted => line.cell(name, 12, Left),
            _ => {
                let mut op = opcode::name(rec.opcode);
                if rec.interrupted {
                    op.push('!');
                }
                line.cell(&op, 12, Left);
            }
        }
        line.space();
        line.int(Some(rec.unique), 8, Right);
        line.space();
        line.int(rec.nodeid, 8, Right);
        line.space();
        line.int(rec.requester_pid.or(rec.requester_tid), 7, Right);
        line.space();
        line.cell(rec.requester_comm.as_deref().unwrap_or("-"), 15, Left);
        line.space();
        line.int(rec.daemon_tid, 7, Right);
        line.space();
        match (rec.transport, rec.ring_queue) {
            (Some(t), Some(q)) => {
                let mut digits = itoa::Buffer::new();
                let q = digits.format(q);
                let mut via = [0u8; 24];
                let (name, n) = (t.name().as_bytes(), t.name().len());
                via[..n].copy_from_slice(name);
                via[n] = b':';
                via[n + 1..n + 1 + q.len()].copy_from_slice(q.as_bytes());
                let text = std::str::from_utf8(&via[..n + 1 + q.len()]).unwrap_or("io_uring");
                line.cell(text, 10, Left);
            }
            (Some(t), None) => line.cell(t.name(), 10, Left),
            (None, _) => line.cell("-", 10, Left),
        }
        for stage in LatencyStage::ALL {
            line.space();
            line.fixed(rec.latency(stage), 1000, 1, 10, Right);
        }
        line.space();
        line.int(rec.error, 6, Right);
        line.space();
        match rec.shown_path().parts() {
            PathShown::Path(p) => line.text(p),
            PathShown::Node(n) => {
                line.text("node ");
                line.int(Some(n), 0, Left);
            }
            PathShown::None => line.text("-"),
        }
        line.newline();
    }
}

impl<W: Write> Sink for TraceSink<W> {
    fn request(&mut self, rec: &RequestLifecycle, mounts: &mut ConnectionTable) -> Result<()> {
        match self.format {
            Format::Json => {
                let line = TraceRecord {
                    kind: "request",
                    mount: self.mount_texts.get(rec.connection, mounts),
                    opcode: match opcode::known(rec.opcode) {
                        Some(name) => name.into(),
                        None => opcode::name(rec.opcode).into(),
                    },
                    rec,
                    queue_wait_ns: rec.latency(LatencyStage::QueueWait),
                    daemon_service_ns: rec.latency(LatencyStage::DaemonService),
                    completion_ns: rec.latency(LatencyStage::Completion),
                    total_ns: rec.latency(LatencyStage::Total),
                    background_wait_ns: rec.extra_latency(ExtraStage::BackgroundWait),
                    virtqueue_ns: rec.extra_latency(ExtraStage::Virtqueue),
                    device_ns: rec.extra_latency(ExtraStage::Device),
                };
                serde_json::to_writer(&mut self.pending, &line)?;
                self.pending.newline();
            }
            Format::Text => {
                if !self.header_done {
                    writeln!(
                        self.pending,
                        "{:<12} {:<20} {:<12} {:>8} {:>8} {:>7} {:<15} {:>7} {:<10} {:>10} {:>10} {:>10} {:>10} {:>6} PATH",
                        "TIME(s)",
                        "MOUNT",
                        "OP",
                        "UNIQUE",
                        "NODE",
                        "PID",
                        "COMM",
                        "DAEMON",
                        "VIA",
                        "QUEUE_us",
                        "DAEMON_us",
                        "COMPL_us",
                        "TOTAL_us",
                        "ERR"
                    )?;
                    self.header_done = true;
                }
                self.text_line(rec, mounts);
            }
        }
        if self.pending.len() >= PENDING_BYTES {
            self.write_pending()?;
        }
        Ok(())
    }

    fn tick(&mut self, _mounts: &mut ConnectionTable) -> Result<()> {
        self.write_pending()?;
        self.out.flush()?;
        Ok(())
    }

    fn finish(&mut self, summary: &RunSummary, _mounts: &mut ConnectionTable) -> Result<()> {
        self.write_pending()?;
        write_summary(&mut self.out, self.format, summary)
    }
}

/// A run that stopped on an error still shows the lines it had made, as
/// the `BufWriter` the lines were written to did when dropped.
impl<W: Write> Drop for TraceSink<W> {
    fn drop(&mut self) {
        let _ = self.write_pending();
        let _ = self.out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        pipeline::connections::MountEntry,
        pipeline::lifecycle::Comm,
        pipeline::tracker::{Tracker, TrackerConfig},
    };
    use fusetrace_common::{EventKind, FLAG_HAS_HEADER, FLAG_URING, FuseEvent};

    fn requests() -> Vec<RequestLifecycle> {
        let ev = |kind: EventKind, conn: u32, unique: u64, opcode: u32, ts: u64| FuseEvent {
            kind: kind as u8,
            flags: FLAG_HAS_HEADER,
            connection: conn,
            unique,
            opcode,
            ts_ns: ts,
            nodeid: 7,
            tgid: 100,
            tid: 101,
            req_pid: 101,
            comm: *b"cat\0\0\0\0\0\0\0\0\0\0\0\0\0",
            ..Default::default()
        };
        let mut end = ev(EventKind::Ended, 52, 4, 3, 9_000_000);
        end.error = -2;
        let mut t = Tracker::new(TrackerConfig::default());
        let mut out = Vec::new();
        for e in [
            // Fully observed, interrupted READ on a known mount.
            ev(EventKind::Sent, 52, 10, 15, 1_000_000),
            ev(EventKind::Taken, 52, 10, 15, 1_002_500),
            ev(EventKind::Taken, 52, 11, 36, 1_003_000),
            ev(EventKind::Replied, 52, 10, 0, 1_010_000),
            ev(EventKind::Ended, 52, 10, 15, 1_010_400),
            // A GETATTR taken and answered through an io_uring queue.
            ev(EventKind::Sent, 52, 20, 3, 1_500_000),
            FuseEvent {
                flags: FLAG_HAS_HEADER | FLAG_URING,
                arg0: 1,
                ..ev(EventKind::Taken, 52, 20, 3, 1_500_900)
            },
            FuseEvent {
                flags: FLAG_URING,
                ..ev(EventKind::Replied, 52, 20, 0, 1_501_500)
            },
            ev(EventKind::Ended, 52, 20, 3, 1_501_800),
            // Daemon stages never seen, error, on a connection nobody mounted.
            ev(EventKind::Sent, (300 << 20) | 7, 4, 3, 2_000_000),
            ev(EventKind::Ended, (300 << 20) | 7, 4, 3, 2_700_000),
            end,
        ] {
            t.observe(&e, &mut out);
        }
        t.flush(&mut out);
        out
    }

    /// The line as the sink wrote it before it formatted in place.
    fn with_strings(rec: &RequestLifecycle, mounts: &mut ConnectionTable, start: u64) -> String {
        let micros = |ns: Option<u64>| match ns {
            Some(ns) => format!("{:.1}", ns as f64 / 1000.0),
            None => "-".to_string(),
        };
        let opt = |v: Option<u32>| v.map(|x| x.to_string()).unwrap_or_else(|| "-".into());
        let mut op = opcode::name(rec.opcode);
        if rec.interrupted {
            op.push('!');
        }
        format!(
            "{:<12.6} {:<20} {:<12} {:>8} {:>8} {:>7} {:<15} {:>7} {:<10} {:>10} {:>10} {:>10} {:>10} {:>6} {}",
            rec.first_seen_ns().saturating_sub(start) as f64 / 1e9,
            mounts.name(rec.connection),
            op,
            rec.unique,
            rec.nodeid
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-".into()),
            opt(rec.requester_pid.or(rec.requester_tid)),
            rec.requester_comm.as_deref().unwrap_or("-"),
            opt(rec.daemon_tid),
            match (rec.transport, rec.ring_queue) {
                (Some(t), Some(q)) => format!("{}:{q}", t.name()),
                (Some(t), None) => t.name().to_string(),
                (None, _) => "-".to_string(),
            },
            micros(rec.latency(LatencyStage::QueueWait)),
            micros(rec.latency(LatencyStage::DaemonService)),
            micros(rec.latency(LatencyStage::Completion)),
            micros(rec.latency(LatencyStage::Total)),
            rec.error
                .map(|e| e.to_string())
                .unwrap_or_else(|| "-".into()),
            match (&rec.path, rec.nodeid) {
                (Some(p), _) => p.to_string(),
                (None, Some(n)) => format!("node {n}"),
                (None, None) => "-".into(),
            },
        )
    }

    /// `requests()` and a few more: a path with a non-ASCII name, an
    /// unnamed node, no node at all, an opcode newer than the table and a
    /// command name that is not UTF-8.
    fn pinned_requests() -> Vec<RequestLifecycle> {
        let mut recs = requests();
        recs[0].path = Some("/tmp/my mnt/é dir/f".into());
        let mut odd = recs[1].clone();
        odd.opcode = 999;
        odd.unique = 123_456_789_012;
        odd.nodeid = None;
        odd.path = None;
        odd.error = Some(-95);
        odd.requester_comm = Some(Comm(*b"ab\xffcd\0\0\0\0\0\0\0\0\0\0\0"));
        recs.push(odd);
        recs
    }

    /// The one mount the tests' requests are on.
    fn mount_52() -> ConnectionTable {
        ConnectionTable::frozen([MountEntry {
            mount_id: 0,
            connection: 52,
            mount_point: "/tmp/my mnt".into(),
            fs_type: "fuse.bindfs".into(),
            source: "src".into(),
        }])
    }

    /// What the sink wrote for `pinned_requests`, in `format`.
    fn pinned_output(format: Format) -> String {
        let mut names = mount_52();
        let mut sink = TraceSink::new(Vec::new(), format, 500_000);
        for r in &pinned_requests() {
            sink.request(r, &mut names).unwrap();
        }
        sink.tick(&mut names).unwrap();
        String::from_utf8(std::mem::take(&mut sink.out)).unwrap()
    }

    /// The exact bytes of a few lines, written down: any change to how
    /// the sink formats must leave them as they are.
    #[test]
    fn text_lines_are_pinned_byte_for_byte() {
        let want = concat!(
            "TIME(s)      MOUNT                OP             UNIQUE     NODE     PID COMM             DAEMON VIA          QUEUE_us  DAEMON_us   COMPL_us   TOTAL_us    ERR PATH\n",
            "0.000503     /tmp/my mnt          INTERRUPT          11        7     101 -                   101 /dev/fuse           -          -          -          -      - /tmp/my mnt/é dir/f\n",
            "0.000500     /tmp/my mnt          READ!              10        7     100 cat                 101 /dev/fuse         2.5        7.5        0.4       10.4      0 node 7\n",
            "0.001000     /tmp/my mnt          GETATTR            20        7     100 cat                 101 io_uring:1        0.9        0.6        0.3        1.8      0 node 7\n",
            "0.001500     conn 300:7           GETATTR             4        7     100 cat                   - -                   -          -          -      700.0      0 node 7\n",
            "0.008500     /tmp/my mnt          GETATTR             4        7     101 -                     - -                   -          -          -          -     -2 node 7\n",
            "0.000500     /tmp/my mnt          OP999!       123456789012        -     100 ab                  101 /dev/fuse         2.5        7.5        0.4       10.4    -95 -\n",
        );
        assert_eq!(pinned_output(Format::Text), want);
    }

    #[test]
    fn json_lines_are_pinned_byte_for_byte() {
        let want = concat!(
            "{\"type\":\"request\",\"mount\":\"/tmp/my mnt\",\"opcode\":\"INTERRUPT\",\"connection\":52,\"unique\":11,\"nodeid\":7,\"requester_pid\":null,\"requester_tid\":101,\"requester_uid\":0,\"requester_comm\":null,\"background\":null,\"daemon_tid\":101,\"reply_tid\":null,\"sent_at_ns\":null,\"taken_at_ns\":1003000,\"replied_at_ns\":null,\"ended_at_ns\":null,\"error\":null,\"request_len\":0,\"reply_len\":null,\"interrupted\":false,\"outcome\":\"interrupt\",\"submitted_at_ns\":null,\"virtq_at_ns\":null,\"device_irq_at_ns\":null,\"device_done_at_ns\":null,\"sender_tid\":null,\"sender_comm\":null,\"writeback_cache\":null,\"send_args\":null,\"end_args\":null,\"path\":\"/tmp/my mnt/é dir/f\",\"transport\":\"/dev/fuse\",\"ring_queue\":null,\"queue_wait_ns\":null,\"daemon_service_ns\":null,\"completion_ns\":null,\"total_ns\":null,\"background_wait_ns\":null,\"virtqueue_ns\":null,\"device_ns\":null}\n",
            "{\"type\":\"request\",\"mount\":\"/tmp/my mnt\",\"opcode\":\"READ\",\"connection\":52,\"unique\":10,\"nodeid\":7,\"requester_pid\":100,\"requester_tid\":101,\"requester_uid\":0,\"requester_comm\":\"cat\",\"background\":false,\"daemon_tid\":101,\"reply_tid\":101,\"sent_at_ns\":1000000,\"taken_at_ns\":1002500,\"replied_at_ns\":1010000,\"ended_at_ns\":1010400,\"error\":0,\"request_len\":0,\"reply_len\":0,\"interrupted\":true,\"outcome\":\"ended\",\"submitted_at_ns\":null,\"virtq_at_ns\":null,\"device_irq_at_ns\":null,\"device_done_at_ns\":null,\"sender_tid\":101,\"sender_comm\":\"cat\",\"writeback_cache\":false,\"send_args\":[0,0],\"end_args\":[0,0],\"path\":null,\"transport\":\"/dev/fuse\",\"ring_queue\":null,\"queue_wait_ns\":2500,\"daemon_service_ns\":7500,\"completion_ns\":400,\"total_ns\":10400,\"background_wait_ns\":null,\"virtqueue_ns\":null,\"device_ns\":null}\n",
            "{\"type\":\"request\",\"mount\":\"/tmp/my mnt\",\"opcode\":\"GETATTR\",\"connection\":52,\"unique\":20,\"nodeid\":7,\"requester_pid\":100,\"requester_tid\":101,\"requester_uid\":0,\"requester_comm\":\"cat\",\"background\":false,\"daemon_tid\":101,\"reply_tid\":101,\"sent_at_ns\":1500000,\"taken_at_ns\":1500900,\"replied_at_ns\":1501500,\"ended_at_ns\":1501800,\"error\":0,\"request_len\":0,\"reply_len\":0,\"interrupted\":false,\"outcome\":\"ended\",\"submitted_at_ns\":null,\"virtq_at_ns\":null,\"device_irq_at_ns\":null,\"device_done_at_ns\":null,\"sender_tid\":101,\"sender_comm\":\"cat\",\"writeback_cache\":false,\"send_args\":[0,0],\"end_args\":[0,0],\"path\":null,\"transport\":\"io_uring\",\"ring_queue\":1,\"queue_wait_ns\":900,\"daemon_service_ns\":600,\"completion_ns\":300,\"total_ns\":1800,\"background_wait_ns\":null,\"virtqueue_ns\":null,\"device_ns\":null}\n",
            "{\"type\":\"request\",\"mount\":\"conn 300:7\",\"opcode\":\"GETATTR\",\"connection\":314572807,\"unique\":4,\"nodeid\":7,\"requester_pid\":100,\"requester_tid\":101,\"requester_uid\":0,\"requester_comm\":\"cat\",\"background\":false,\"daemon_tid\":null,\"reply_tid\":null,\"sent_at_ns\":2000000,\"taken_at_ns\":null,\"replied_at_ns\":null,\"ended_at_ns\":2700000,\"error\":0,\"request_len\":0,\"reply_len\":0,\"interrupted\":false,\"outcome\":\"ended_without_daemon\",\"submitted_at_ns\":null,\"virtq_at_ns\":null,\"device_irq_at_ns\":null,\"device_done_at_ns\":null,\"sender_tid\":101,\"sender_comm\":\"cat\",\"writeback_cache\":false,\"send_args\":[0,0],\"end_args\":[0,0],\"path\":null,\"transport\":null,\"ring_queue\":null,\"queue_wait_ns\":null,\"daemon_service_ns\":null,\"completion_ns\":null,\"total_ns\":700000,\"background_wait_ns\":null,\"virtqueue_ns\":null,\"device_ns\":null}\n",
            "{\"type\":\"request\",\"mount\":\"/tmp/my mnt\",\"opcode\":\"GETATTR\",\"connection\":52,\"unique\":4,\"nodeid\":7,\"requester_pid\":null,\"requester_tid\":101,\"requester_uid\":0,\"requester_comm\":null,\"background\":false,\"daemon_tid\":null,\"reply_tid\":null,\"sent_at_ns\":null,\"taken_at_ns\":null,\"replied_at_ns\":null,\"ended_at_ns\":9000000,\"error\":-2,\"request_len\":0,\"reply_len\":0,\"interrupted\":false,\"outcome\":\"ended_without_daemon\",\"submitted_at_ns\":null,\"virtq_at_ns\":null,\"device_irq_at_ns\":null,\"device_done_at_ns\":null,\"sender_tid\":null,\"sender_comm\":null,\"writeback_cache\":null,\"send_args\":null,\"end_args\":[0,0],\"path\":null,\"transport\":null,\"ring_queue\":null,\"queue_wait_ns\":null,\"daemon_service_ns\":null,\"completion_ns\":null,\"total_ns\":null,\"background_wait_ns\":null,\"virtqueue_ns\":null,\"device_ns\":null}\n",
            "{\"type\":\"request\",\"mount\":\"/tmp/my mnt\",\"opcode\":\"OP999\",\"connection\":52,\"unique\":123456789012,\"nodeid\":null,\"requester_pid\":100,\"requester_tid\":101,\"requester_uid\":0,\"requester_comm\":\"ab�cd\",\"background\":false,\"daemon_tid\":101,\"reply_tid\":101,\"sent_at_ns\":1000000,\"taken_at_ns\":1002500,\"replied_at_ns\":1010000,\"ended_at_ns\":1010400,\"error\":-95,\"request_len\":0,\"reply_len\":0,\"interrupted\":true,\"outcome\":\"ended\",\"submitted_at_ns\":null,\"virtq_at_ns\":null,\"device_irq_at_ns\":null,\"device_done_at_ns\":null,\"sender_tid\":101,\"sender_comm\":\"cat\",\"writeback_cache\":false,\"send_args\":[0,0],\"end_args\":[0,0],\"path\":null,\"transport\":\"/dev/fuse\",\"ring_queue\":null,\"queue_wait_ns\":2500,\"daemon_service_ns\":7500,\"completion_ns\":400,\"total_ns\":10400,\"background_wait_ns\":null,\"virtqueue_ns\":null,\"device_ns\":null}\n",
        );
        assert_eq!(pinned_output(Format::Json), want);
    }

    #[test]
    fn text_lines_are_the_columns_they_always_were() {
        let mut names = mount_52();
        let recs = requests();
        assert!(recs.iter().any(|r| r.interrupted), "{recs:?}");
        assert!(recs.iter().any(|r| r.daemon_tid.is_none()));
        let mut sink = TraceSink::new(Vec::new(), Format::Text, 500_000);
        for r in &recs {
            sink.request(r, &mut names).unwrap();
        }
        sink.tick(&mut names).unwrap();
        let text = String::from_utf8(std::mem::take(&mut sink.out)).unwrap();
        let lines: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(lines.len(), recs.len());
        for (line, rec) in lines.iter().zip(&recs) {
            assert_eq!(*line, with_strings(rec, &mut names, 500_000));
        }
        assert!(text.contains("READ!"), "{text}");
        assert!(text.contains(" io_uring:1 "), "{text}");
        assert!(text.contains(" /dev/fuse "), "{text}");
        assert!(text.contains("conn 300:7"), "{text}");
    }
}
