//! Node ids to paths: a per-connection table of node -> (parent, name),
//! built from the names requests carry (LOOKUP, CREATE, MKDIR, MKNOD,
//! SYMLINK and LINK name a node in their reply; RENAME, RENAME2, UNLINK and
//! RMDIR move or drop a name) and dropped on FORGET or when the
//! connection's number is given to a new mount (its INIT).
//!
//! Pure: fed decoded events in order ([`PathBook::observe`]), asked for
//! paths of finished or in-flight requests. A name-carrying request's own
//! path (what a LOOKUP looked up) is fixed at its end, before the change
//! it made is applied: an UNLINK shows the path it removed.
//!
//! What is not known: nodes looked up before tracing began (no name was
//! seen: `None`, views show `node N`), names listed by READDIRPLUS (their
//! entries are in the reply's pages, not read), and every name on the
//! plain-tracepoint backend (no request pointer to read arguments from).
//! A path whose start is unknown keeps what is known: `/mnt/(node 17)/b/c`.
//!
//! Memory is bounded: each connection keeps at most [`NODES_PER_CONNECTION`]
//! nodes in two generations (a node used lately moves to the young one;
//! the old one is dropped when the young one fills), and every node
//! forgotten so is counted.

use std::sync::Arc;

use crate::pipeline::FastMap as HashMap;

use fusetrace_common::{EventKind, FLAG_NAMES, FuseEvent, opcode};
use serde::Serialize;

use crate::{
    kernel::decode::FileNames,
    pipeline::{connections::ConnectionTable, lifecycle::RequestLifecycle},
};

/// Nodes one connection's table holds at most (both generations).
pub const NODES_PER_CONNECTION: usize = 1 << 17;
/// Name-carrying requests in flight the book holds at most.
const MAX_PENDING: usize = 1 << 16;
/// The root of every FUSE mount (`FUSE_ROOT_ID`).
const ROOT: u64 = 1;
/// Deepest path walked (a cycle from lost renames cannot loop forever).
const MAX_DEPTH: usize = 256;
/// `RENAME_EXCHANGE` in RENAME2's flags.
const RENAME_EXCHANGE: u64 = 1 << 1;

/// What the book could not keep, shown with the run's summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PathCounters {
    /// Name-carrying requests whose names were seen.
    pub named_requests: u64,
    /// Nodes dropped from a full table (their requests show `node N`).
    pub nodes_forgotten: u64,
    /// Name-carrying sends dropped because too many were in flight.
    pub pending_dropped: u64,
    /// Requests on a node whose name was not seen (looked up before
    /// tracing began): shown as `node N`.
    pub unnamed_requests: u64,
}

#[derive(Debug, Clone)]
struct Node {
    parent: u64,
    name: Arc<[u8]>,
    /// Unlinked (or renamed over) while the node lived on.
    deleted: bool,
    /// Its display path, and the table's epoch when it was rendered.
    shown: Option<(u64, Arc<str>)>,
}

#[derive(Default)]
struct Generation {
    nodes: HashMap<u64, Node>,
    /// (parent, name) -> node, for RENAME and UNLINK.
    children: HashMap<(u64, Arc<[u8]>), u64>,
}

#[derive(Default)]
struct Table {
    young: Generation,
    old: Generation,
    /// Bumped by every change that can alter other nodes' paths (a node
    /// named anew elsewhere: a rename): cached display paths of an older
    /// epoch are rendered again.
    epoch: u64,
}

impl Table {
    fn get(&self, id: u64) -> Option<&Node> {
        self.young
            .nodes
            .get(&id)
            .or_else(|| self.old.nodes.get(&id))
    }

    /// `id`, moved to the young generation (it was used) while that has
    /// room: neither generation ever holds more than half the cap.
    fn node(&mut self, id: u64) -> Option<&Node> {
        if !self.young.nodes.contains_key(&id)
            && self.young.nodes.len() < NODES_PER_CONNECTION / 2
            && let Some(n) = self.old.nodes.remove(&id)
        {
            self.old.children.remove(&(n.parent, n.name.clone()));
            self.young.children.insert((n.parent, n.name.clone()), id);
            self.young.nodes.insert(id, n);
        }
        self.get(id)
    }

    fn child(&self, parent: u64, name: &[u8]) -> Option<u64> {
        let key = (parent, Arc::<[u8]>::from(name));
        self.young
            .children
            .get(&key)
            .or_else(|| self.old.children.get(&key))
            .copied()
    }

    /// Names `id` (parent, name); returns nodes forgotten to make room.
    fn insert(&mut self, id: u64, parent: u64, name: &[u8]) -> u64 {
        // A node named anew elsewhere (a rename, a reused id) may be a
        // directory: every cached path below it is stale. The same name
        // again changes nothing.
        if let Some(old) = self.remove(id)
            && (old.parent != parent || *old.name != *name)
        {
            self.epoch += 1;
        }
        let mut forgotten = 0;
        if self.young.nodes.len() >= NODES_PER_CONNECTION / 2 {
            forgotten = self.old.nodes.len() as u64;
            self.old = std::mem::take(&mut self.young);
        }
        let name: Arc<[u8]> = name.into();
        self.young.children.insert((parent, name.clone()), id);
        self.young.nodes.insert(
            id,
            Node {
                parent,
                name,
                deleted: false,
                shown: None,
            },
        );
        forgotten
    }

    fn remove(&mut self, id: u64) -> Option<Node> {
        for g in [&mut self.young, &mut self.old] {
            if let Some(n) = g.nodes.remove(&id) {
                let key = (n.parent, n.name.clone());
                if g.children.get(&key) == Some(&id) {
                    g.children.remove(&key);
                }
                return Some(n);
            }
        }
        None
    }

    /// The name (parent, name) no longer leads to its node, which lives on
    /// (open files) as deleted.
    fn unlink(&mut self, parent: u64, name: &[u8]) -> Option<u64> {
        let id = self.child(parent, name)?;
        let key = (parent, Arc::<[u8]>::from(name));
        self.young.children.remove(&key);
        self.old.children.remove(&key);
        // Only its own path changes (` (deleted)`): UNLINK takes no
        // directory, RMDIR only an empty one.
        for g in [&mut self.young, &mut self.old] {
            if let Some(n) = g.nodes.get_mut(&id) {
                n.deleted = true;
                n.shown = None;
            }
        }
        Some(id)
    }
}

/// A name-carrying request between its send and its end.
struct Pending {
    parent: u64,
    /// RENAME's new directory, LINK's linked node.
    other: u64,
    /// RENAME2's flags.
    flags: u64,
    names: FileNames,
}

/// Where a pending request is found at its end: by `struct fuse_req *`
/// where the hook read one (always, where names are read), else by id.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum PendingKey {
    Req(u64),
    Id(u32, u64),
}

/// Node ids to paths, for every connection the run sees.
#[derive(Default)]
pub struct PathBook {
    tables: HashMap<u32, Table>,
    pending: HashMap<PendingKey, Pending>,
    /// Paths of requests that ended (`None`: not known), until they are
    /// reported.
    ended: HashMap<(u32, u64), Option<Arc<str>>>,
    /// Mount points in display form (escaped), per connection: each
    /// mount's root's path.
    mounts: HashMap<u32, Arc<str>>,
    counters: PathCounters,
}

impl PathCounters {
    /// Adds `b`'s counts (merging recordings).
    pub fn add(&mut self, b: &PathCounters) {
        self.named_requests += b.named_requests;
        self.nodes_forgotten += b.nodes_forgotten;
        self.pending_dropped += b.pending_dropped;
        self.unnamed_requests += b.unnamed_requests;
    }
}

impl PathBook {
    pub fn counters(&self) -> PathCounters {
        self.counters
    }

    /// Every admitted event, in order, before the tracker sees it; `mounts`
    /// names the connections.
    pub fn observe(
        &mut self,
        ev: &FuseEvent,
        names: Option<FileNames>,
        mounts: &mut ConnectionTable,
    ) {
        let kind = EventKind::from_u8(ev.kind);
        if kind == Some(EventKind::Sent) {
            if ev.opcode == opcode::INIT {
                // A new mount took this number: nothing of the old one holds.
                self.tables.remove(&ev.connection);
                self.mounts.remove(&ev.connection);
            }
            if let Some(names) = names.filter(|_| ev.flags & FLAG_NAMES != 0) {
                self.counters.named_requests += 1;
                if self.pending.len() >= MAX_PENDING {
                    self.counters.pending_dropped += self.pending.len() as u64;
                    self.pending.clear();
                }
                let key = if ev.req != 0 {
                    PendingKey::Req(ev.req)
                } else {
                    PendingKey::Id(ev.connection, ev.unique)
                };
                self.pending.insert(
                    key,
                    Pending {
                        parent: ev.nodeid,
                        other: ev.arg0,
                        flags: ev.arg1,
                        names,
                    },
                );
            }
        } else if kind == Some(EventKind::Ended) {
            let p = if self.pending.is_empty() {
                None
            } else {
                [
                    PendingKey::Req(ev.req),
                    PendingKey::Id(ev.connection, ev.unique),
                ]
                .into_iter()
                .filter(|k| *k != PendingKey::Req(0))
                .find_map(|k| self.pending.remove(&k))
            };
            self.mount(ev.connection, mounts);
            match p {
                Some(p) => self.ended(ev, p),
                None if ev.nodeid == ROOT || self.tables.contains_key(&ev.connection) => {
                    // Its path as it is now, not as it is when the request
                    // is reported (later events may have renamed it): the
                    // same live as in a replay, whatever the batching.
                    let path = self.shown(ev.connection, ev.nodeid);
                    self.remember(ev, path);
                }
                None => {}
            }
        }
    }

    fn remember(&mut self, ev: &FuseEvent, path: Option<Arc<str>>) {
        if self.ended.len() >= MAX_PENDING {
            self.ended.clear();
        }
        self.ended.insert((ev.connection, ev.unique), path);
    }

    /// A name-carrying request ended: fixes its own path, then applies
    /// what it changed when it succeeded.
    fn ended(&mut self, ev: &FuseEvent, p: Pending) {
        let conn = ev.connection;
        let mut path = self.child_shown(conn, p.parent, &p.names.first);
        if matches!(ev.opcode, opcode::RENAME | opcode::RENAME2) {
            path.push_str(" -> ");
            path.push_str(&self.child_shown(conn, p.other, &p.names.second));
        }
        self.remember(ev, Some(path.into()));
        if ev.error != 0 {
            return;
        }
        let table = self.tables.entry(conn).or_default();
        let forgotten = match ev.opcode {
            opcode::LOOKUP
            | opcode::CREATE
            | opcode::MKDIR
            | opcode::MKNOD
            | opcode::SYMLINK
            | opcode::LINK
                if ev.arg0 != 0 =>
            {
                let known = table
                    .node(ev.arg0)
                    .map(|n| n.parent == p.parent && *n.name == *p.names.first && !n.deleted);
                match known {
                    // The same name again (a LOOKUP storm): nothing changes.
                    Some(true) => 0,
                    // A second name of a known node: it keeps the first.
                    Some(false) if ev.opcode == opcode::LINK => {
                        table
                            .young
                            .children
                            .insert((p.parent, p.names.first.as_slice().into()), ev.arg0);
                        0
                    }
                    _ => table.insert(ev.arg0, p.parent, &p.names.first),
                }
            }
            opcode::UNLINK | opcode::RMDIR => {
                table.unlink(p.parent, &p.names.first);
                0
            }
            opcode::RENAME | opcode::RENAME2 => {
                let moved = table.child(p.parent, &p.names.first);
                let target = table.child(p.other, &p.names.second);
                let exchange = ev.opcode == opcode::RENAME2 && p.flags & RENAME_EXCHANGE != 0;
                let mut forgotten = 0;
                if let Some(t) = target {
                    if exchange {
                        forgotten += table.insert(t, p.parent, &p.names.first);
                    } else {
                        table.unlink(p.other, &p.names.second);
                    }
                }
                if let Some(m) = moved {
                    forgotten += table.insert(m, p.other, &p.names.second);
                }
                forgotten
            }
            _ => 0,
        };
        self.counters.nodes_forgotten += forgotten;
    }

    /// Sets `rec.path` for a finished request (and forgets a FORGET's node).
    pub fn name_finished(&mut self, rec: &mut RequestLifecycle, mounts: &mut ConnectionTable) {
        rec.path = match self.ended.remove(&(rec.connection, rec.unique)) {
            Some(path) => path,
            // Not ended (FORGET), or seen only in part: as it is now.
            None => {
                self.mount(rec.connection, mounts);
                self.path_of(rec)
            }
        };
        if rec.path.is_none() && rec.nodeid.is_some_and(|n| n != 0) {
            self.counters.unnamed_requests += 1;
        }
        if rec.opcode == opcode::FORGET
            && let (Some(node), Some(t)) = (rec.nodeid, self.tables.get_mut(&rec.connection))
        {
            t.remove(node);
        }
    }

    /// The path of the node a request is about (in flight or finished;
    /// a name-carrying request in flight shows its directory).
    pub fn path_of(&self, rec: &RequestLifecycle) -> Option<Arc<str>> {
        let node = rec.nodeid.filter(|&n| n != 0)?;
        let t = self.tables.get(&rec.connection);
        if let Some(n) = t.and_then(|t| t.get(node))
            && let Some((epoch, shown)) = &n.shown
            && Some(*epoch) == t.map(|t| t.epoch)
        {
            return Some(shown.clone());
        }
        self.render(rec.connection, node).map(Arc::from)
    }

    fn mount(&mut self, conn: u32, mounts: &mut ConnectionTable) {
        self.mounts
            .entry(conn)
            .or_insert_with(|| escape(mounts.name(conn).as_bytes()).into());
    }

    /// `node`'s path as views show it (mount point, escaped names), kept
    /// with the node until a rename or unlink in its table makes it stale.
    fn shown(&mut self, conn: u32, node: u64) -> Option<Arc<str>> {
        if node == ROOT
            && let Some(m) = self.mounts.get(&conn)
        {
            return Some(m.clone());
        }
        let cached = self.tables.get_mut(&conn).and_then(|t| {
            let epoch = t.epoch;
            let n = t.node(node)?;
            n.shown
                .as_ref()
                .filter(|(e, _)| *e == epoch)
                .map(|(_, s)| s.clone())
        });
        if cached.is_some() {
            return cached;
        }
        let shown: Arc<str> = self.render(conn, node)?.into();
        if let Some(t) = self.tables.get_mut(&conn) {
            let epoch = t.epoch;
            if let Some(n) = t.young.nodes.get_mut(&node) {
                n.shown = Some((epoch, shown.clone()));
            }
        }
        Some(shown)
    }

    /// Renders `node`'s path: `None` when not even its own name is known.
    fn render(&self, conn: u32, node: u64) -> Option<String> {
        let rel = self.node_path(conn, node)?;
        let mut out = match self.mounts.get(&conn) {
            Some(m) if &**m == "/" => String::new(),
            Some(m) => m.to_string(),
            None => format!("({})", crate::kernel::layout::major_minor(conn)),
        };
        out.push_str(&escape(&rel));
        if out.is_empty() {
            out.push('/');
        }
        Some(out)
    }

    /// `node`'s path below its mount (empty: the root); `None` when not
    /// even its own name is known.
    fn node_path(&self, conn: u32, node: u64) -> Option<Vec<u8>> {
        let mut parts: Vec<Arc<[u8]>> = Vec::new();
        let mut deleted = false;
        let mut cur = node;
        let mut unknown = None;
        if let Some(t) = self.tables.get(&conn) {
            for _ in 0..MAX_DEPTH {
                if cur == ROOT {
                    break;
                }
                match t.get(cur) {
                    Some(n) => {
                        deleted |= cur == node && n.deleted;
                        parts.push(n.name.clone());
                        cur = n.parent;
                    }
                    None => {
                        unknown = Some(cur);
                        break;
                    }
                }
            }
        } else if node != ROOT {
            return None;
        }
        if parts.is_empty() && node != ROOT {
            return None;
        }
        let mut out = Vec::new();
        if let Some(u) = unknown {
            out.extend_from_slice(format!("/(node {u})").as_bytes());
        }
        for p in parts.iter().rev() {
            out.push(b'/');
            out.extend_from_slice(p);
        }
        if deleted {
            out.extend_from_slice(b" (deleted)");
        }
        Some(out)
    }

    /// `dir`'s shown path joined with `name` (`dir` unknown: `(node D)/name`).
    fn child_shown(&mut self, conn: u32, dir: u64, name: &[u8]) -> String {
        let mut out = match self.shown(conn, dir) {
            Some(p) if &*p == "/" => String::new(),
            Some(p) => p.to_string(),
            None => {
                let mount = match self.mounts.get(&conn) {
                    Some(m) if &**m == "/" => "",
                    Some(m) => m,
                    None => "",
                };
                format!("{mount}/(node {dir})")
            }
        };
        out.push('/');
        out.push_str(&escape(name));
        out
    }
}

/// A path's display form: printable UTF-8 as is; a backslash doubled;
/// `\n`, `\t`, `\r`; other control characters and bytes that are not
/// UTF-8 as `\xNN` (`\u{NN}` for non-ASCII control characters). It never
/// breaks a line, a CSV row or a terminal.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                c if c.is_ascii_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
                c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::connections::MountEntry;

    const CONN: u32 = 7;

    fn mounts() -> ConnectionTable {
        ConnectionTable::frozen([MountEntry {
            mount_id: 1,
            connection: CONN,
            mount_point: "/mnt/t".into(),
            fs_type: "fuse.test".into(),
            source: "test".into(),
        }])
    }

    struct Run {
        book: PathBook,
        mounts: ConnectionTable,
        next: u64,
    }

    impl Run {
        fn new() -> Run {
            Run {
                book: PathBook::default(),
                mounts: mounts(),
                next: 2,
            }
        }

        /// A name-carrying request from send to end; its path.
        fn named(
            &mut self,
            op: u32,
            dir: u64,
            first: &[u8],
            (other, second): (u64, &[u8]),
            reply_node: u64,
            error: i32,
        ) -> String {
            self.next += 2;
            let unique = self.next;
            let sent = FuseEvent {
                kind: EventKind::Sent as u8,
                flags: FLAG_NAMES,
                connection: CONN,
                unique,
                req: unique * 1000,
                opcode: op,
                nodeid: dir,
                arg0: other,
                ..FuseEvent::default()
            };
            let names = FileNames {
                first: first.to_vec(),
                second: second.to_vec(),
            };
            self.book.observe(&sent, Some(names), &mut self.mounts);
            let ended = FuseEvent {
                kind: EventKind::Ended as u8,
                arg0: reply_node,
                error,
                ..sent
            };
            self.book.observe(&ended, None, &mut self.mounts);
            self.finished(op, dir, unique)
        }

        fn finished(&mut self, op: u32, node: u64, unique: u64) -> String {
            let mut rec = lifecycle(op, node, unique);
            self.book.name_finished(&mut rec, &mut self.mounts);
            rec.path.map(|p| p.to_string()).unwrap_or_default()
        }

        fn path(&mut self, node: u64) -> String {
            self.next += 2;
            let unique = self.next;
            self.finished(opcode::GETATTR, node, unique)
        }
    }

    fn lifecycle(op: u32, node: u64, unique: u64) -> RequestLifecycle {
        let mut t = crate::pipeline::tracker::Tracker::new(Default::default());
        let mut out = Vec::new();
        let ev = FuseEvent {
            kind: EventKind::Ended as u8,
            connection: CONN,
            unique,
            opcode: op,
            nodeid: node,
            flags: fusetrace_common::FLAG_HAS_HEADER,
            ..FuseEvent::default()
        };
        t.observe(&ev, &mut out);
        t.flush(&mut out);
        out.pop().expect("an end makes a request")
    }

    #[test]
    fn lookups_build_paths_and_requests_show_theirs() {
        let mut r = Run::new();
        assert_eq!(
            r.named(opcode::LOOKUP, 1, b"dir", (0, b""), 10, 0),
            "/mnt/t/dir"
        );
        assert_eq!(
            r.named(opcode::MKDIR, 10, b"sub", (0, b""), 11, 0),
            "/mnt/t/dir/sub"
        );
        assert_eq!(
            r.named(opcode::CREATE, 11, b"f", (0, b""), 12, 0),
            "/mnt/t/dir/sub/f"
        );
        assert_eq!(r.path(12), "/mnt/t/dir/sub/f");
        assert_eq!(r.path(1), "/mnt/t");
        assert_eq!(r.path(99), "", "never named: no path");
        // A failed LOOKUP names nothing, but shows what it looked for.
        assert_eq!(
            r.named(opcode::LOOKUP, 11, b"missing", (0, b""), 0, -2),
            "/mnt/t/dir/sub/missing"
        );
        // A node under an unknown directory keeps what is known.
        assert_eq!(
            r.named(opcode::LOOKUP, 500, b"x", (0, b""), 501, 0),
            "/mnt/t/(node 500)/x"
        );
        assert_eq!(r.path(501), "/mnt/t/(node 500)/x");
    }

    #[test]
    fn renames_unlinks_exchanges_and_forgets_update_the_table() {
        let mut r = Run::new();
        r.named(opcode::MKDIR, 1, b"a", (0, b""), 10, 0);
        r.named(opcode::MKDIR, 1, b"b", (0, b""), 11, 0);
        r.named(opcode::CREATE, 10, b"f", (0, b""), 12, 0);
        r.named(opcode::CREATE, 11, b"g", (0, b""), 13, 0);
        assert_eq!(
            r.named(opcode::RENAME, 10, b"f", (11, b"h"), 0, 0),
            "/mnt/t/a/f -> /mnt/t/b/h"
        );
        assert_eq!(r.path(12), "/mnt/t/b/h");
        // Renaming a directory moves everything under it.
        r.named(opcode::RENAME, 1, b"b", (1, b"c"), 0, 0);
        assert_eq!(r.path(12), "/mnt/t/c/h");
        // RENAME_EXCHANGE swaps the two names.
        r.next += 2;
        let unique = r.next;
        let sent = FuseEvent {
            kind: EventKind::Sent as u8,
            flags: FLAG_NAMES,
            connection: CONN,
            unique,
            opcode: opcode::RENAME2,
            nodeid: 11,
            arg0: 11,
            arg1: RENAME_EXCHANGE,
            ..FuseEvent::default()
        };
        let names = FileNames {
            first: b"h".to_vec(),
            second: b"g".to_vec(),
        };
        r.book.observe(&sent, Some(names), &mut r.mounts);
        r.book.observe(
            &FuseEvent {
                kind: EventKind::Ended as u8,
                arg0: 0,
                ..sent
            },
            None,
            &mut r.mounts,
        );
        assert_eq!(r.path(12), "/mnt/t/c/g");
        assert_eq!(r.path(13), "/mnt/t/c/h");
        // An unlinked file lives on while open, as deleted.
        assert_eq!(
            r.named(opcode::UNLINK, 11, b"g", (0, b""), 0, 0),
            "/mnt/t/c/g"
        );
        assert_eq!(r.path(12), "/mnt/t/c/g (deleted)");
        // A failed UNLINK changes nothing.
        r.named(opcode::UNLINK, 11, b"h", (0, b""), 0, -13);
        assert_eq!(r.path(13), "/mnt/t/c/h");
        // FORGET drops the node.
        r.next += 2;
        let u = r.next;
        r.finished(opcode::FORGET, 13, u);
        assert_eq!(r.path(13), "");
        // A new mount on the same number starts afresh.
        r.book.observe(
            &FuseEvent {
                kind: EventKind::Sent as u8,
                connection: CONN,
                opcode: opcode::INIT,
                ..FuseEvent::default()
            },
            None,
            &mut r.mounts,
        );
        assert_eq!(r.path(10), "");
    }

    #[test]
    fn names_are_escaped_and_never_break_a_line() {
        let mut r = Run::new();
        let p = r.named(opcode::CREATE, 1, b"new\nline\xff\\x\x07", (0, b""), 20, 0);
        assert_eq!(p, "/mnt/t/new\\nline\\xff\\\\x\\x07");
        assert_eq!(r.path(20), p);
        assert_eq!(escape("é\u{85}".as_bytes()), "é\\u{85}");
        assert!(!p.contains('\n'));
    }

    #[test]
    fn a_full_table_forgets_its_oldest_generation_and_counts_it() {
        let mut t = Table::default();
        let mut forgotten = 0;
        for id in 2..(NODES_PER_CONNECTION as u64 + 2) {
            forgotten += t.insert(id, 1, format!("n{id}").as_bytes());
        }
        assert_eq!(forgotten, 0, "both generations hold the cap");
        // Touching node 2 keeps it young.
        assert!(t.node(2).is_some());
        let extra = NODES_PER_CONNECTION as u64 / 2;
        for id in 0..extra {
            forgotten += t.insert(1_000_000 + id, 1, format!("m{id}").as_bytes());
        }
        assert!(forgotten > 0);
        assert!(t.young.nodes.len() + t.old.nodes.len() <= NODES_PER_CONNECTION);
        assert!(t.node(3).is_none(), "an old, untouched node went");
    }
}
