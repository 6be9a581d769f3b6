//! The recording file format (version 2): the decoded event stream of a run.
//!
//! ```text
//! offset 0   8 bytes  magic "FUSETRCE"
//!        8   u16 LE   format version (2; version 1 files read too)
//!       10   u32 LE   header length H
//!       14   H bytes  header: JSON object (see [`Header`])
//!     14+H   u32 LE   CRC-32 of the header JSON
//!     18+H   records, each:
//!              u8       kind (1 event, 2 idle, 3 connection, 4 end)
//!              varint   payload length L (LEB128, at most MAX_PAYLOAD)
//!              L bytes  payload
//!              u32 LE   CRC-32 of kind, length and payload bytes
//! ```
//!
//! Event payload: (key, value) pairs, key = varint `field << 1 | wire`,
//! wire 0 = varint value, 1 = varint length + bytes. Fields that are zero
//! are left out; a reader skips fields it does not know (a newer writer's),
//! so adding a field needs no new version. Fields: 1 ts_ns as the zigzag
//! difference from the previous event's (the first event's from the
//! header's start_monotonic_ns), 2 unique, 3 nodeid, 4 connection, 5 opcode,
//! 6 len, 7 error (zigzag), 8 tgid, 9 tid, 10 req_pid, 11 req_uid, 12 kind,
//! 13 flags, 14 comm (bytes, no trailing NULs; left out when it equals
//! the comm of the previous event with the same tid), 15 aux_ns (1 + zigzag difference from
//! ts_ns), 16 arg0, 17 arg1, 18 req (the `struct fuse_req *`; written only
//! once a send without its id has been seen, which is when the replay
//! needs it to join that send), 19 and 20 (bytes, version 2) the names a
//! send carried ([`FileNames`]: the entry's name, RENAME's new name; version
//! 2 exists for them: a version 1 reader would skip them and report node
//! ids where the recording has paths, so it asks for a newer fusetrace
//! instead). Idle: varint now_ns. Connection: varint
//! connection, varint-length UTF-8 mount point and fs type. End: varints
//! ring_drops, read_faults, splice_transfers, undecodable, and (written
//! since the field exists; absent in older files) takes_unresolved.
//!
//! Every record stands alone behind its own length and checksum, so a file
//! cut off anywhere (Ctrl-C, full disk, crash) still yields every whole
//! record before the cut. Event payloads are LEB128 varints with the
//! timestamp as a delta from the previous event: about 40 bytes an event
//! instead of the ring buffer's 88.
//!
//! This file depends only on `fusetrace-common`, `serde`, `serde_json` and
//! `crc32fast`, so the fuzz target compiles it on its own.

use std::{
    collections::HashMap,
    fmt,
    io::{self, Read, Write},
};

use fusetrace_common::{EventKind, FuseEvent};

use crate::kernel::decode::FileNames;
use serde::{Deserialize, Serialize};

pub const MAGIC: &[u8; 8] = b"FUSETRCE";
pub const VERSION: u16 = 2;
/// Largest record payload a reader accepts; a larger length is corruption.
pub const MAX_PAYLOAD: u64 = 1 << 16;
/// Largest header a reader accepts.
pub const MAX_HEADER: u64 = 1 << 24;
/// Bytes before the header JSON.
pub const PREAMBLE_LEN: u64 = 14;

/// Longest name a request carries (`NAME_MAX`).
pub const NAME_MAX: usize = 255;

const KIND_EVENT: u8 = 1;
const KIND_IDLE: u8 = 2;
const KIND_CONNECTION: u8 = 3;
const KIND_END: u8 = 4;

/// A FUSE connection and the mount it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionInfo {
    /// Kernel `dev_t` of the connection (`MAJOR << 20 | MINOR`).
    pub connection: u32,
    pub mount_point: String,
    pub fs_type: String,
}

/// The filters of the recording run. `connections` was applied to the
/// recorded events; `pid` and `opcodes` apply to finished requests, so
/// `report` applies them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedFilter {
    pub connections: Vec<u32>,
    /// The one `--pid` of a run that gave one (what older readers apply).
    pub pid: Option<u32>,
    pub opcodes: Vec<u32>,
    /// Every `-p`/`--pid` (repeatable since issue 15); absent in older files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pids: Vec<u32>,
    /// `--comm` names (as the kernel truncates them); absent in older files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub comms: Vec<String>,
}

impl RecordedFilter {
    /// The pids `report` applies: `pids`, or an older file's `pid`.
    pub fn pids_or_pid(&self) -> Vec<u32> {
        if self.pids.is_empty() {
            self.pid.into_iter().collect()
        } else {
            self.pids.clone()
        }
    }
}

/// What the file says about the run that wrote it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub fusetrace_version: String,
    /// `uname -r` of the traced machine.
    pub kernel_release: String,
    /// Which hook served each lifecycle stage (`Probes::describe`).
    pub hooks: Vec<String>,
    /// Monotonic clock at start, the clock event timestamps use.
    pub start_monotonic_ns: u64,
    /// Wall clock at start (Unix epoch, ns).
    pub start_unix_ns: u64,
    /// FUSE mounts known at start; later ones arrive as connection records.
    pub connections: Vec<ConnectionInfo>,
    pub filter: RecordedFilter,
    /// The live tracker's reorder window, which a replay must use to
    /// finish requests exactly when the live run did.
    #[serde(default)]
    pub reorder_window_ns: Option<u64>,
    /// Which part of which run this file is, in a recording split by
    /// `record --max-size` (absent otherwise, and in older files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<Part>,
    /// Whether the traced kernel offered FUSE over io_uring (for
    /// `diagnose --from`; absent in older files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuse_io_uring: Option<crate::kernel::uring_offer::UringOffer>,
}

/// A file of a recording split into several (`record --max-size`): each
/// is a whole recording, and `report` replays consecutive parts of one run
/// as one, so that a request begun in one part and ended in the next is
/// joined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// The same random number in every part of one run.
    pub run: u64,
    /// 0 for the first file, then 1, 2...
    pub index: u32,
}

/// What the recording run's kernel side counted (written once, at the end).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndCounters {
    pub ring_drops: u64,
    pub read_faults: u64,
    pub splice_transfers: u64,
    pub undecodable: u64,
    pub takes_unresolved: u64,
}

#[derive(Debug, Clone)]
pub enum Record {
    /// A decoded event, as the ring buffer delivered it, with the names
    /// its send carried.
    Event(FuseEvent, Option<Box<FileNames>>),
    /// The pipeline was idle and advanced the tracker's clock to `now_ns`
    /// (lets a replay finish lingering requests exactly when the live run did).
    Idle { now_ns: u64 },
    /// A connection that appeared after the header was written.
    Connection(ConnectionInfo),
    /// The run finished cleanly; its kernel counters.
    End(EndCounters),
}

/// Why a file cannot be read, with the byte offset where it applies.
#[derive(Debug)]
pub enum FormatError {
    Io(io::Error),
    NotATrace,
    FutureVersion { version: u16 },
    HeaderCutOff { at: u64 },
    CorruptHeader { offset: u64, why: String },
    CorruptRecord { offset: u64, why: String },
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FormatError::Io(e) => write!(f, "read error: {e}"),
            FormatError::NotATrace => write!(
                f,
                "not a fusetrace recording (no \"FUSETRCE\" magic at byte 0); record one with `fusetrace record -o FILE`"
            ),
            FormatError::FutureVersion { version } => write!(
                f,
                "recording format version {version} at byte 8 is newer than this fusetrace reads (version {VERSION}): use a newer fusetrace"
            ),
            FormatError::HeaderCutOff { at } => write!(
                f,
                "file ends at byte {at}, inside the header: the recording stopped before it began"
            ),
            FormatError::CorruptHeader { offset, why } => {
                write!(f, "corrupt header at byte {offset}: {why}")
            }
            FormatError::CorruptRecord { offset, why } => {
                write!(f, "corrupt record at byte {offset}: {why}")
            }
        }
    }
}

impl std::error::Error for FormatError {}

impl From<io::Error> for FormatError {
    fn from(e: io::Error) -> Self {
        FormatError::Io(e)
    }
}

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    put_varint(buf, b.len() as u64);
    buf.extend_from_slice(b);
}

/// Writes a recording. Callers flush when they want the bytes on disk.
pub struct Writer<W: Write> {
    out: W,
    /// Bytes written to `out`, header included.
    written: u64,
    /// Records written to `out`.
    records: u64,
    prev_ts: u64,
    comms: Comms,
    buf: Vec<u8>,
    /// A send came before its request id: from now on events keep their
    /// request pointer, which joins such sends (10 bytes an event, so not
    /// before).
    with_req: bool,
}

impl<W: Write> Writer<W> {
    /// Writes the preamble and header.
    pub fn new(mut out: W, header: &Header) -> io::Result<Writer<W>> {
        let written = write_header(&mut out, header)?;
        Ok(Writer {
            out,
            written,
            records: 0,
            prev_ts: header.start_monotonic_ns,
            comms: Comms::new(),
            buf: Vec::with_capacity(128),
            with_req: false,
        })
    }

    /// Goes on in a new file with its own header, which reads on its own:
    /// timestamps and command names start afresh (request pointers stay
    /// on once they are needed). Returns the previous output.
    pub fn restart(&mut self, mut out: W, header: &Header) -> io::Result<W> {
        let written = write_header(&mut out, header)?;
        self.written = written;
        self.records = 0;
        self.prev_ts = header.start_monotonic_ns;
        self.comms.clear();
        Ok(std::mem::replace(&mut self.out, out))
    }

    /// Bytes written to the current output, its header included.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Records written to the current output.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Writes an event record with the names its send carried, borrowed
    /// (the recorder's hot path: no copy into a [`Record`]).
    pub fn write_event(&mut self, ev: &FuseEvent, names: Option<&FileNames>) -> io::Result<()> {
        let mut payload = Vec::with_capacity(64);
        self.encode_event(&mut payload, ev, names);
        self.frame(KIND_EVENT, &payload)
    }

    fn encode_event(&mut self, payload: &mut Vec<u8>, ev: &FuseEvent, names: Option<&FileNames>) {
        self.with_req |= ev.kind == EventKind::Sent as u8 && ev.unique == 0;
        encode_event(payload, ev, self.prev_ts, &mut self.comms, self.with_req);
        if let Some(n) = names {
            for (field, name) in [(19u64, &n.first), (20, &n.second)] {
                put_varint(payload, field << 1 | WIRE_BYTES);
                put_bytes(payload, name);
            }
        }
        self.prev_ts = ev.ts_ns;
    }

    pub fn write(&mut self, rec: &Record) -> io::Result<()> {
        let mut payload = Vec::with_capacity(64);
        let kind = match rec {
            Record::Event(ev, names) => {
                self.encode_event(&mut payload, ev, names.as_deref());
                KIND_EVENT
            }
            Record::Idle { now_ns } => {
                put_varint(&mut payload, *now_ns);
                KIND_IDLE
            }
            Record::Connection(c) => {
                put_varint(&mut payload, c.connection.into());
                put_bytes(&mut payload, c.mount_point.as_bytes());
                put_bytes(&mut payload, c.fs_type.as_bytes());
                KIND_CONNECTION
            }
            Record::End(e) => {
                for v in [
                    e.ring_drops,
                    e.read_faults,
                    e.splice_transfers,
                    e.undecodable,
                    e.takes_unresolved,
                ] {
                    put_varint(&mut payload, v);
                }
                KIND_END
            }
        };
        self.frame(kind, &payload)
    }

    /// Writes one record: kind, length, payload, checksum.
    fn frame(&mut self, kind: u8, payload: &[u8]) -> io::Result<()> {
        self.buf.clear();
        self.buf.push(kind);
        put_varint(&mut self.buf, payload.len() as u64);
        self.buf.extend_from_slice(payload);
        let crc = crc32fast::hash(&self.buf);
        self.buf.extend_from_slice(&crc.to_le_bytes());
        self.out.write_all(&self.buf)?;
        self.written += self.buf.len() as u64;
        self.records += 1;
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }
}

/// Writes the preamble and header; returns how many bytes.
fn write_header(out: &mut impl Write, header: &Header) -> io::Result<u64> {
    let json = serde_json::to_vec(header).map_err(io::Error::other)?;
    let mut pre = Vec::with_capacity(json.len() + 18);
    pre.extend_from_slice(MAGIC);
    pre.extend_from_slice(&VERSION.to_le_bytes());
    pre.extend_from_slice(&(json.len() as u32).to_le_bytes());
    pre.extend_from_slice(&json);
    pre.extend_from_slice(&crc32fast::hash(&json).to_le_bytes());
    out.write_all(&pre)?;
    Ok(pre.len() as u64)
}

/// The most bytes one event record takes: 18 numeric fields of one key
/// byte and ten value bytes, the comm, two names of `NAME_MAX` bytes, and
/// the frame (kind, length, checksum).
pub const MAX_EVENT_RECORD: u64 = 18 * 11 + (2 + 16) + 2 * (3 + NAME_MAX as u64) + 8;

/// The most bytes a connection record of `c` takes.
pub fn connection_record_len(c: &ConnectionInfo) -> u64 {
    (5 + 3 + c.mount_point.len() + 3 + c.fs_type.len() + 8) as u64
}

/// The most bytes an idle or end record takes.
pub const MAX_SMALL_RECORD: u64 = 5 * 10 + 8;

const WIRE_VARINT: u64 = 0;
const WIRE_BYTES: u64 = 1;

fn put_field(buf: &mut Vec<u8>, field: u64, v: u64) {
    if v != 0 {
        put_varint(buf, field << 1 | WIRE_VARINT);
        put_varint(buf, v);
    }
}

/// Last comm written or read per thread id.
type Comms = HashMap<u32, [u8; 16]>;

fn encode_event(
    buf: &mut Vec<u8>,
    ev: &FuseEvent,
    prev_ts: u64,
    comms: &mut Comms,
    with_req: bool,
) {
    put_field(buf, 1, zigzag(ev.ts_ns.wrapping_sub(prev_ts) as i64));
    put_field(buf, 2, ev.unique);
    put_field(buf, 3, ev.nodeid);
    put_field(buf, 4, ev.connection.into());
    put_field(buf, 5, ev.opcode.into());
    put_field(buf, 6, ev.len.into());
    put_field(buf, 7, zigzag(ev.error.into()));
    put_field(buf, 8, ev.tgid.into());
    put_field(buf, 9, ev.tid.into());
    put_field(buf, 10, ev.req_pid.into());
    put_field(buf, 11, ev.req_uid.into());
    put_field(buf, 12, ev.kind.into());
    put_field(buf, 13, ev.flags.into());
    // Only when it differs from the last comm of this thread: names
    // repeat, and were a quarter of the bytes.
    if comms.get(&ev.tid) != Some(&ev.comm) {
        // Up to the last non-NUL byte (the kernel pads with NULs).
        let end = ev.comm.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        put_varint(buf, 14 << 1 | WIRE_BYTES);
        put_bytes(buf, &ev.comm[..end]);
        comms.insert(ev.tid, ev.comm);
    }
    if ev.aux_ns != 0 {
        // Non-zero even when aux_ns == ts_ns, so "absent" stays "unknown".
        put_varint(buf, 15 << 1 | WIRE_VARINT);
        put_varint(
            buf,
            zigzag(ev.aux_ns.wrapping_sub(ev.ts_ns) as i64).saturating_add(1),
        );
    }
    put_field(buf, 16, ev.arg0);
    put_field(buf, 17, ev.arg1);
    if with_req {
        put_field(buf, 18, ev.req);
    }
}

fn decode_event(
    p: &mut Payload<'_>,
    prev_ts: u64,
    comms: &mut Comms,
) -> Result<(FuseEvent, Option<Box<FileNames>>), String> {
    let mut names: Option<Box<FileNames>> = None;
    let mut ev = FuseEvent {
        ts_ns: prev_ts,
        ..Default::default()
    };
    let mut has_comm = false;
    let small = |field: u64, v: u64| {
        u32::try_from(v).map_err(|_| format!("field {field}: {v} does not fit in 32 bits"))
    };
    let byte = |field: u64, v: u64| {
        u8::try_from(v).map_err(|_| format!("field {field}: {v} does not fit in 8 bits"))
    };
    while p.at < p.bytes.len() {
        let key = p.varint()?;
        let (field, wire) = (key >> 1, key & 1);
        if wire == WIRE_BYTES {
            let b = p.bytes(MAX_PAYLOAD)?;
            match field {
                14 if b.len() <= 16 => {
                    ev.comm = [0; 16];
                    ev.comm[..b.len()].copy_from_slice(b);
                    has_comm = true;
                }
                14 => return Err(format!("comm of {} bytes, at most 16", b.len())),
                19 | 20 if b.len() > NAME_MAX => {
                    return Err(format!("name of {} bytes, at most {NAME_MAX}", b.len()));
                }
                19 => names.get_or_insert_default().first = b.to_vec(),
                20 => names.get_or_insert_default().second = b.to_vec(),
                1..=18 => return Err(format!("field {field} must be a number")),
                _ => {} // a newer writer's field
            }
            continue;
        }
        let v = p.varint()?;
        match field {
            1 => ev.ts_ns = prev_ts.wrapping_add(unzigzag(v) as u64),
            2 => ev.unique = v,
            3 => ev.nodeid = v,
            4 => ev.connection = small(field, v)?,
            5 => ev.opcode = small(field, v)?,
            6 => ev.len = small(field, v)?,
            7 => {
                ev.error = i32::try_from(unzigzag(v))
                    .map_err(|_| "error does not fit in 32 bits".to_string())?
            }
            8 => ev.tgid = small(field, v)?,
            9 => ev.tid = small(field, v)?,
            10 => ev.req_pid = small(field, v)?,
            11 => ev.req_uid = small(field, v)?,
            12 => ev.kind = byte(field, v)?,
            13 => ev.flags = byte(field, v)?,
            14 => return Err("comm must be bytes".into()),
            15 if v == 0 => return Err("aux_ns field of 0".into()),
            15 => ev.aux_ns = ev.ts_ns.wrapping_add(unzigzag(v - 1) as u64),
            16 => ev.arg0 = v,
            17 => ev.arg1 = v,
            18 => ev.req = v,
            _ => {}
        }
    }
    if EventKind::from_u8(ev.kind).is_none() {
        return Err(format!("unknown event kind {}", ev.kind));
    }
    if has_comm {
        comms.insert(ev.tid, ev.comm);
    } else if let Some(c) = comms.get(&ev.tid) {
        ev.comm = *c;
    }
    Ok((ev, names))
}

/// Reads a recording record by record.
pub struct Reader<R: Read> {
    input: R,
    offset: u64,
    prev_ts: u64,
    comms: Comms,
    truncated_at: Option<u64>,
    pub header: Header,
    /// Whole records read so far.
    pub records: u64,
}

/// Reads until `buf` is full or the input ends; how many bytes arrived.
fn fill(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Cursor over one payload; errors are relative to the payload start.
struct Payload<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Payload<'_> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = *self
                .bytes
                .get(self.at)
                .ok_or_else(|| "payload ends inside a number".to_string())?;
            self.at += 1;
            let low = u64::from(b & 0x7f);
            if shift == 63 && low > 1 {
                return Err("number does not fit in 64 bits".into());
            }
            v |= low << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("number does not fit in 64 bits".into())
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        let v = self.varint()?;
        u32::try_from(v).map_err(|_| format!("{what} {v} does not fit in 32 bits"))
    }

    fn bytes(&mut self, max: u64) -> Result<&[u8], String> {
        let n = self.varint()?;
        if n > max {
            return Err(format!("string length {n} exceeds {max}"));
        }
        let n = n as usize;
        let s = self
            .bytes
            .get(self.at..self.at + n)
            .ok_or_else(|| "payload ends inside a string".to_string())?;
        self.at += n;
        Ok(s)
    }

    fn string(&mut self) -> Result<String, String> {
        let b = self.bytes(4096)?;
        String::from_utf8(b.to_vec()).map_err(|_| "string is not UTF-8".to_string())
    }

    fn done(&self) -> Result<(), String> {
        if self.at == self.bytes.len() {
            Ok(())
        } else {
            Err(format!(
                "{} unexpected bytes after the payload",
                self.bytes.len() - self.at
            ))
        }
    }
}

impl<R: Read> Reader<R> {
    /// Reads and checks the preamble and header.
    pub fn new(mut input: R) -> Result<Reader<R>, FormatError> {
        let mut pre = [0u8; PREAMBLE_LEN as usize];
        let got = fill(&mut input, &mut pre)?;
        if got < MAGIC.len() {
            if pre[..got] == MAGIC[..got] {
                return Err(FormatError::HeaderCutOff { at: got as u64 });
            }
            return Err(FormatError::NotATrace);
        }
        if &pre[..8] != MAGIC {
            return Err(FormatError::NotATrace);
        }
        if got < pre.len() {
            return Err(FormatError::HeaderCutOff { at: got as u64 });
        }
        let version = u16::from_le_bytes([pre[8], pre[9]]);
        if version > VERSION {
            return Err(FormatError::FutureVersion { version });
        }
        if version == 0 {
            return Err(FormatError::CorruptHeader {
                offset: 8,
                why: "format version 0 does not exist".into(),
            });
        }
        let len = u64::from(u32::from_le_bytes([pre[10], pre[11], pre[12], pre[13]]));
        if len > MAX_HEADER {
            return Err(FormatError::CorruptHeader {
                offset: 10,
                why: format!("header length {len} exceeds {MAX_HEADER}"),
            });
        }
        let mut json = vec![0u8; len as usize + 4];
        let got = fill(&mut input, &mut json)?;
        if got < json.len() {
            return Err(FormatError::HeaderCutOff {
                at: PREAMBLE_LEN + got as u64,
            });
        }
        let crc_bytes = json.split_off(len as usize);
        let crc = u32::from_le_bytes(crc_bytes.try_into().unwrap());
        if crc32fast::hash(&json) != crc {
            return Err(FormatError::CorruptHeader {
                offset: PREAMBLE_LEN,
                why: format!(
                    "checksum mismatch over bytes {PREAMBLE_LEN}..{}",
                    PREAMBLE_LEN + len
                ),
            });
        }
        let header: Header =
            serde_json::from_slice(&json).map_err(|e| FormatError::CorruptHeader {
                offset: PREAMBLE_LEN,
                why: format!("header JSON: {e}"),
            })?;
        Ok(Reader {
            input,
            offset: PREAMBLE_LEN + len + 4,
            prev_ts: header.start_monotonic_ns,
            comms: Comms::new(),
            truncated_at: None,
            header,
            records: 0,
        })
    }

    /// Where the file was cut off mid-record, if it was (known once
    /// [`Reader::next_record`] returned `None`).
    pub fn truncated_at(&self) -> Option<u64> {
        self.truncated_at
    }

    /// Bytes consumed so far (the offset of the next record).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next whole record; `None` at the end of the file, including a
    /// file that ends mid-record (see [`Reader::truncated_at`]).
    pub fn next_record(&mut self) -> Result<Option<Record>, FormatError> {
        let start = self.offset;
        let mut frame = Vec::with_capacity(64);
        let mut byte = [0u8; 1];
        if fill(&mut self.input, &mut byte)? == 0 {
            return Ok(None);
        }
        frame.push(byte[0]);
        let kind = byte[0];
        if !(KIND_EVENT..=KIND_END).contains(&kind) {
            return Err(FormatError::CorruptRecord {
                offset: start,
                why: format!("unknown record kind {kind}"),
            });
        }
        let mut len: u64 = 0;
        let mut shift = 0;
        loop {
            if fill(&mut self.input, &mut byte)? == 0 {
                self.truncated_at = Some(start);
                return Ok(None);
            }
            frame.push(byte[0]);
            len |= u64::from(byte[0] & 0x7f) << shift;
            shift += 7;
            if len > MAX_PAYLOAD || shift > 21 && byte[0] & 0x80 != 0 {
                return Err(FormatError::CorruptRecord {
                    offset: start,
                    why: format!("payload length exceeds {MAX_PAYLOAD}"),
                });
            }
            if byte[0] & 0x80 == 0 {
                break;
            }
        }
        let head = frame.len();
        frame.resize(head + len as usize + 4, 0);
        let got = fill(&mut self.input, &mut frame[head..])?;
        if got < frame.len() - head {
            self.truncated_at = Some(start);
            return Ok(None);
        }
        let crc_at = frame.len() - 4;
        let crc = u32::from_le_bytes(frame[crc_at..].try_into().unwrap());
        if crc32fast::hash(&frame[..crc_at]) != crc {
            return Err(FormatError::CorruptRecord {
                offset: start,
                why: "checksum mismatch".into(),
            });
        }
        let mut p = Payload {
            bytes: &frame[head..crc_at],
            at: 0,
        };
        let rec = self
            .decode(kind, &mut p)
            .and_then(|r| p.done().map(|()| r))
            .map_err(|why| FormatError::CorruptRecord { offset: start, why })?;
        self.offset += frame.len() as u64;
        self.records += 1;
        Ok(Some(rec))
    }

    fn decode(&mut self, kind: u8, p: &mut Payload<'_>) -> Result<Record, String> {
        Ok(match kind {
            KIND_EVENT => {
                let (ev, names) = decode_event(p, self.prev_ts, &mut self.comms)?;
                self.prev_ts = ev.ts_ns;
                Record::Event(ev, names)
            }
            KIND_IDLE => Record::Idle {
                now_ns: p.varint()?,
            },
            KIND_CONNECTION => Record::Connection(ConnectionInfo {
                connection: p.u32("connection")?,
                mount_point: p.string()?,
                fs_type: p.string()?,
            }),
            _ => Record::End(EndCounters {
                ring_drops: p.varint()?,
                read_faults: p.varint()?,
                splice_transfers: p.varint()?,
                undecodable: p.varint()?,
                takes_unresolved: if p.at < p.bytes.len() { p.varint()? } else { 0 },
            }),
        })
    }
}

/// Everything a byte string holds: header, whole records, where it was cut
/// off. Used by tests and the fuzz target.
pub fn read_all(bytes: &[u8]) -> Result<(Header, Vec<Record>, Option<u64>), FormatError> {
    let mut r = Reader::new(bytes)?;
    let mut out = Vec::new();
    while let Some(rec) = r.next_record()? {
        out.push(rec);
    }
    Ok((r.header.clone(), out, r.truncated_at()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A field added to FuseEvent must be added to `encode_event` and
    /// `decode_event` too, or recordings silently lose it.
    #[test]
    fn every_event_field_is_encoded() {
        assert_eq!(
            std::mem::size_of::<FuseEvent>(),
            112,
            "FuseEvent changed: update encode_event/decode_event in record/format.rs and this size"
        );
        let ev = FuseEvent {
            ts_ns: 1_000_000_123,
            unique: 2,
            nodeid: 3,
            connection: 4,
            opcode: 5,
            len: 6,
            error: -7,
            tgid: 8,
            tid: 9,
            req_pid: 10,
            req_uid: 11,
            kind: 2,
            flags: 3,
            _pad: [0; 6],
            comm: *b"0123456789abcdef",
            aux_ns: 1_000_000_000,
            arg0: u64::MAX,
            arg1: 17,
            req: 0xffff_8880_1234_5678,
        };
        let (mut wc, mut rc) = (Comms::new(), Comms::new());
        let mut b = Vec::new();
        encode_event(&mut b, &ev, 5, &mut wc, true);
        let (back, _) = decode_event(&mut Payload { bytes: &b, at: 0 }, 5, &mut rc).unwrap();
        // SAFETY: viewing plain old data as bytes.
        let bytes = |e: &FuseEvent| unsafe {
            std::slice::from_raw_parts(
                (e as *const FuseEvent).cast::<u8>(),
                std::mem::size_of::<FuseEvent>(),
            )
            .to_vec()
        };
        assert_eq!(bytes(&back), bytes(&ev));
        // The same thread's next event leaves its comm out; a new comm
        // (even an empty one) is written.
        let mut b = Vec::new();
        encode_event(&mut b, &ev, 5, &mut wc, true);
        assert!(!b.windows(3).any(|w| w == b"012"));
        let (back, _) = decode_event(&mut Payload { bytes: &b, at: 0 }, 5, &mut rc).unwrap();
        assert_eq!(back.comm, ev.comm);
        let empty = FuseEvent {
            comm: [0; 16],
            ..ev
        };
        let mut b = Vec::new();
        encode_event(&mut b, &empty, 5, &mut wc, true);
        let (back, _) = decode_event(&mut Payload { bytes: &b, at: 0 }, 5, &mut rc).unwrap();
        assert_eq!(back.comm, [0; 16]);
    }

    #[test]
    fn names_round_trip_and_oversized_ones_are_corrupt() {
        let ev = FuseEvent {
            kind: EventKind::Sent as u8,
            opcode: 12,
            ..FuseEvent::default()
        };
        let names = FileNames {
            first: b"old\nname\xff".to_vec(),
            second: vec![b'n'; NAME_MAX],
        };
        let mut w = Writer::new(Vec::new(), &Header::default()).unwrap();
        w.write(&Record::Event(ev, Some(Box::new(names.clone()))))
            .unwrap();
        w.write(&Record::Event(ev, None)).unwrap();
        let (_, recs, _) = read_all(w.get_mut()).unwrap();
        let got: Vec<_> = recs
            .iter()
            .map(|r| match r {
                Record::Event(_, n) => n.as_deref().cloned(),
                _ => panic!("only events were written"),
            })
            .collect();
        assert_eq!(got, vec![Some(names), None]);
        let mut b = Vec::new();
        put_varint(&mut b, 12 << 1 | WIRE_VARINT);
        put_varint(&mut b, 1);
        put_varint(&mut b, 19 << 1 | WIRE_BYTES);
        put_bytes(&mut b, &[b'x'; NAME_MAX + 1]);
        let err = decode_event(&mut Payload { bytes: &b, at: 0 }, 0, &mut Comms::new());
        assert!(err.unwrap_err().contains("at most 255"));
    }

    #[test]
    fn varints_and_zigzag_round_trip() {
        for v in [0u64, 1, 127, 128, 300, u32::MAX.into(), u64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            let mut p = Payload { bytes: &b, at: 0 };
            assert_eq!(p.varint().unwrap(), v);
            p.done().unwrap();
        }
        for v in [0i64, -1, 1, i64::MIN, i64::MAX, -123456] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
        let mut p = Payload {
            bytes: &[0xff; 11],
            at: 0,
        };
        assert!(p.varint().is_err());
    }
}
