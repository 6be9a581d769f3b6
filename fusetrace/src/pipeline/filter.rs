//! Which requests a run takes ([`Filter::admit`], event by event, for the
//! mounts and `-c`) and reports ([`Filter::wants`], finished requests, for
//! `-p`, `--comm` and `--opcode`).

use fusetrace_common::{EventKind, FuseEvent, opcode};

use crate::pipeline::{
    connections::MountEntry,
    lifecycle::{Comm, RequestLifecycle},
};

/// Which requests a run reports.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only these connections (mounts); empty means all.
    pub connections: Vec<u32>,
    /// The mounts `--mount` named, as found at start: their names outlive
    /// an unmount that comes before the run reads the mount table.
    pub mounts: Vec<MountEntry>,
    /// Requester process or thread ids (`-p`); empty means all.
    pub pids: Vec<u32>,
    /// Requester command names (`--comm`, as the kernel truncates them);
    /// empty means all. A request without a known requester comm (sent
    /// from another context) is left out when given.
    pub comms: Vec<Comm>,
    pub opcodes: Vec<u32>,
    /// Named connections whose mount went away during the run (see
    /// [`Filter::admit`]): their numbers now belong to other mounts.
    pub gone: Vec<u32>,
    /// Named connections that have had a request other than INIT this run.
    pub active: Vec<u32>,
    /// `-c`: the kernel lets through only the command's sends; this keeps
    /// the other points of everybody else's requests out (instead of
    /// counting them as unmatched).
    pub command: Option<CommandRequests>,
}

/// `-c`: the requests whose send the kernel let through, by id and by
/// `struct fuse_req *` (a send may come before its id), until their end.
/// The ring buffer keeps each request's points in the order they happened
/// (the send is reserved before the request is queued, the reply before
/// the end), so a point of a wanted request always finds its send here.
#[derive(Debug, Clone, Default)]
pub struct CommandRequests {
    by_id: std::collections::HashSet<(u32, u64)>,
    by_req: std::collections::HashSet<u64>,
}

impl CommandRequests {
    fn admit(&mut self, ev: &FuseEvent) -> bool {
        // An INTERRUPT's points carry its target's id with the low bit set.
        let id = (
            ev.connection,
            ev.unique & !fusetrace_common::FUSE_INT_REQ_BIT,
        );
        match EventKind::from_u8(ev.kind) {
            Some(EventKind::Sent) => {
                if ev.unique != 0 {
                    self.by_id.insert(id);
                }
                if ev.req != 0 {
                    self.by_req.insert(ev.req);
                }
                true
            }
            Some(EventKind::Ended) => {
                let by_id = ev.unique != 0 && self.by_id.remove(&id);
                let by_req = ev.req != 0 && self.by_req.remove(&ev.req);
                by_id || by_req
            }
            Some(
                EventKind::Taken | EventKind::Replied | EventKind::Virtq | EventKind::DeviceDone,
            ) => {
                if ev.unique != 0 && self.by_id.contains(&id) {
                    return true;
                }
                // A send before its id: the take names both.
                let known = ev.req != 0 && self.by_req.contains(&ev.req);
                if known && ev.unique != 0 {
                    self.by_id.insert(id);
                }
                known
            }
            // Joined and filtered in the kernel already; applications'
            // writes and connections' limits are not requests (not filtered).
            Some(EventKind::Whole | EventKind::AppWrite | EventKind::Limits) => true,
            None => false,
        }
    }
}

impl Filter {
    fn wants_connection(&self, connection: u32) -> bool {
        (self.connections.is_empty() || self.connections.contains(&connection))
            && !self.gone.contains(&connection)
    }

    /// Whether the run takes `ev`. A `--mount` names a mount by its
    /// connection number, the superblock's dev_t, which the kernel hands to
    /// the next mount once that one is unmounted. Every mount begins with
    /// INIT, sent before any other request of it: an INIT on a named
    /// connection that already had other requests this run means its mount
    /// is gone and the number now names another, whose traffic stays out
    /// from that INIT on. (An INIT before any other request is the named
    /// mount's own, when it was mounted after tracing began, as the demo
    /// does.) Returns the connection when that happens, for the caller to
    /// say so.
    pub fn admit(&mut self, ev: &FuseEvent) -> (bool, Option<u32>) {
        if !self.wants_connection(ev.connection) {
            return (false, None);
        }
        if let Some(command) = &mut self.command
            && !command.admit(ev)
        {
            return (false, None);
        }
        if self.connections.is_empty() {
            return (true, None);
        }
        let init = ev.kind == EventKind::Sent as u8 && ev.opcode == opcode::INIT;
        let active = self.active.contains(&ev.connection);
        if init && active {
            self.gone.push(ev.connection);
            return (false, Some(ev.connection));
        }
        if !init && !active {
            self.active.push(ev.connection);
        }
        (true, None)
    }

    pub fn wants(&self, rec: &RequestLifecycle) -> bool {
        self.wants_connection(rec.connection)
            && (self.pids.is_empty()
                || [rec.requester_pid, rec.requester_tid]
                    .iter()
                    .any(|p| p.is_some_and(|p| self.pids.contains(&p))))
            && (self.comms.is_empty()
                || rec.requester_comm.is_some_and(|c| self.comms.contains(&c)))
            && (self.opcodes.is_empty() || self.opcodes.contains(&rec.opcode))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(connection: u32, opcode: u32) -> FuseEvent {
        FuseEvent {
            connection,
            opcode,
            kind: EventKind::Sent as u8,
            ..FuseEvent::default()
        }
    }

    #[test]
    fn an_init_on_a_named_connection_retires_it() {
        let mut f = Filter {
            connections: vec![7],
            ..Filter::default()
        };
        // The named mount's own INIT (mounted after tracing began) is its.
        assert_eq!(f.admit(&sent(7, opcode::INIT)), (true, None));
        assert_eq!(f.admit(&sent(7, opcode::GETATTR)), (true, None));
        assert_eq!(f.admit(&sent(8, opcode::GETATTR)), (false, None));
        assert_eq!(f.admit(&sent(7, opcode::INIT)), (false, Some(7)));
        // The number now names another mount: none of its traffic comes in,
        // and the retirement is announced once.
        assert_eq!(f.admit(&sent(7, opcode::GETATTR)), (false, None));
        assert_eq!(f.admit(&sent(7, opcode::INIT)), (false, None));
    }

    #[test]
    fn with_a_command_only_the_points_of_its_sends_come_in() {
        let mut f = Filter {
            command: Some(CommandRequests::default()),
            ..Filter::default()
        };
        let point = |kind: EventKind, unique: u64, req: u64| FuseEvent {
            connection: 7,
            unique,
            req,
            kind: kind as u8,
            ..FuseEvent::default()
        };
        // The kernel let the send of request 10 through; 12 is someone else's.
        assert!(f.admit(&point(EventKind::Sent, 10, 0xa0)).0);
        assert!(f.admit(&point(EventKind::Taken, 10, 0)).0);
        assert!(!f.admit(&point(EventKind::Taken, 12, 0)).0);
        // Its INTERRUPT (id | 1) is its too.
        assert!(f.admit(&point(EventKind::Taken, 11, 0)).0);
        assert!(f.admit(&point(EventKind::Replied, 10, 0)).0);
        assert!(!f.admit(&point(EventKind::Replied, 12, 0)).0);
        assert!(f.admit(&point(EventKind::Ended, 10, 0xa0)).0);
        assert!(!f.admit(&point(EventKind::Ended, 12, 0xb0)).0);
        // Ended: forgotten, so a reused id of someone else stays out.
        assert!(!f.admit(&point(EventKind::Taken, 10, 0)).0);
        // A send before its id is known by its pointer until the take.
        assert!(f.admit(&point(EventKind::Sent, 0, 0xc0)).0);
        assert!(f.admit(&point(EventKind::Taken, 14, 0xc0)).0);
        assert!(f.admit(&point(EventKind::Replied, 14, 0)).0);
        assert!(f.admit(&point(EventKind::Ended, 14, 0xc0)).0);
    }

    #[test]
    fn without_named_mounts_a_new_mount_is_traced() {
        let mut f = Filter::default();
        assert_eq!(f.admit(&sent(7, opcode::INIT)), (true, None));
        assert_eq!(f.admit(&sent(7, opcode::GETATTR)), (true, None));
    }
}
