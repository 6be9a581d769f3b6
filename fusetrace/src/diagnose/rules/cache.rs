//! The kernel's caches of a daemon's answers: attributes (`attr_cache`),
//! entries (`entry_cache`) and missing names (`negative_cache`). The kernel
//! asks again only when the time the daemon gave has run out or something
//! changed the node, so the same question asked again soon, with nothing
//! changed in between, means the daemon gives short or no validity. The
//! daemon's own validity times (read from its GETATTR/LOOKUP replies by the
//! tp_btf hooks) confirm it where they are seen.

use std::collections::HashMap;

use fusetrace_common::opcode::{
    COPY_FILE_RANGE, CREATE, FALLOCATE, GETATTR, LINK, LOOKUP, MKDIR, MKNOD, READ, READDIR,
    READDIRPLUS, REMOVEXATTR, RENAME, RENAME2, RMDIR, SETATTR, SETXATTR, STATX, SYMLINK, UNLINK,
    WRITE,
};

use crate::diagnose::finding::{Facts, Finding, FindingId, Rule, count, percent};
use crate::pipeline::lifecycle::RequestLifecycle;

/// An answer is asked again "soon" within this: libfuse's default
/// attr/entry timeout, so a daemon on the defaults is never counted.
const SOON_NS: u64 = 1_000_000_000;
/// At least this many repeats before a cache is worth a finding.
const MIN_REPEATS: u64 = 200;
/// ... and at least this share of the opcode's requests repeated.
const MIN_SHARE: f64 = 0.25;

/// Requests after which the kernel asks again for the attributes of their
/// node (or its directory): they change data, size, times, names or
/// extended attributes, or update atime.
fn changes_node(opcode: u32) -> bool {
    matches!(
        opcode,
        WRITE
            | SETATTR
            | FALLOCATE
            | COPY_FILE_RANGE
            | CREATE
            | MKNOD
            | MKDIR
            | UNLINK
            | RMDIR
            | RENAME
            | RENAME2
            | SYMLINK
            | LINK
            | SETXATTR
            | REMOVEXATTR
            | READ
            | READDIR
            | READDIRPLUS
    )
}

/// Requests that change the names in their directory (the request's node).
fn changes_names(opcode: u32) -> bool {
    matches!(
        opcode,
        CREATE | MKNOD | MKDIR | UNLINK | RMDIR | RENAME | RENAME2 | SYMLINK | LINK
    )
}

/// One kind of question: how often it came, how often soon again, and the
/// validity times the daemon gave in its answers.
#[derive(Debug, Default)]
struct Asked {
    requests: u64,
    repeats: u64,
    /// Answers whose validity time was seen, and of those, under a second.
    valid_seen: u64,
    valid_short: u64,
    /// The shortest and longest validity seen (ms).
    valid_min_ms: Option<u64>,
    valid_max_ms: Option<u64>,
}

impl Asked {
    fn valid(&mut self, ms: u64) {
        self.valid_seen += 1;
        self.valid_short += u64::from(ms < 1000);
        self.valid_min_ms = Some(self.valid_min_ms.map_or(ms, |m| m.min(ms)));
        self.valid_max_ms = Some(self.valid_max_ms.map_or(ms, |m| m.max(ms)));
    }

    fn fires(&self) -> bool {
        self.repeats >= MIN_REPEATS && self.repeats as f64 >= MIN_SHARE * self.requests as f64
            // Answers that were seen to give a second or more are not
            // the cause, whatever repeats (an invalidation we missed).
            && !(self.valid_seen > 0 && self.valid_short * 2 < self.valid_seen)
    }

    /// "0 s", "0-200 ms", or unknown when the replies were not read.
    fn validity(&self) -> String {
        match (self.valid_min_ms, self.valid_max_ms) {
            (Some(a), Some(b)) if a == b => ms_text(a),
            (Some(a), Some(b)) => format!("{}-{}", ms_text(a), ms_text(b)),
            _ => "not seen".into(),
        }
    }

    fn evidence(&self, f: Finding, facts: &Facts) -> Finding {
        let per_second = if facts.seconds() > 0.0 {
            self.repeats as f64 / facts.seconds()
        } else {
            0.0
        };
        f.with("requests", self.requests)
            .with("repeated_within_1s", self.repeats)
            .with("repeats_per_second", (per_second * 10.0).round() / 10.0)
            .with("validity_seen", self.valid_seen)
            .with("validity_min_ms", self.valid_min_ms)
            .with("validity_max_ms", self.valid_max_ms)
    }
}

fn ms_text(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("{} s", ms / 1000)
    } else {
        format!("{ms} ms")
    }
}

/// Watches GETATTR/STATX and LOOKUP and what changes their answers.
#[derive(Debug, Default)]
pub struct Caches {
    attr: Asked,
    entry: Asked,
    negative: Asked,
    /// Per node: when its attributes were last answered (GETATTR end, or a
    /// LOOKUP that named it), and the send of that answer.
    attrs_answered: HashMap<u64, (u64, u64)>,
    /// Per (directory, name): the last LOOKUP's send, end, and whether it
    /// found the name.
    looked_up: HashMap<(u64, std::sync::Arc<str>), (u64, u64, bool)>,
    /// Per node: the latest end of a request that changed it.
    changed: HashMap<u64, u64>,
    /// Per directory: the latest end of a request that changed its names.
    renamed: HashMap<u64, u64>,
}

/// Whether a question sent at `sent` repeats an answer `(asked, answered)`
/// with no change (latest at `change`) since the answer was asked for.
fn repeats(sent: u64, previous: Option<(u64, u64)>, change: Option<u64>) -> bool {
    previous.is_some_and(|(asked, answered)| {
        answered <= sent && sent - answered < SOON_NS && change.is_none_or(|c| c < asked)
    })
}

impl Rule for Caches {
    fn request(&mut self, rec: &RequestLifecycle) {
        let (Some(node), Some(sent), Some(ended)) = (rec.nodeid, rec.sent_ns, rec.ended_ns) else {
            return;
        };
        let ok = rec.error == Some(0);
        match rec.opcode {
            GETATTR | STATX => {
                self.attr.requests += 1;
                let previous = self.attrs_answered.get(&node).copied();
                if repeats(sent, previous, self.changed.get(&node).copied()) {
                    self.attr.repeats += 1;
                }
                if ok {
                    self.attrs_answered.insert(node, (sent, ended));
                    if let Some([_, valid]) = rec.end_args {
                        self.attr.valid(valid & 0xffff_ffff);
                    }
                }
            }
            LOOKUP => {
                // Without the name (looked up before tracing began, or a
                // hook that reads no names) the question is unknown.
                let Some(path) = rec.path.clone() else {
                    return;
                };
                let found_node = rec.end_args.map(|[n, _]| n).filter(|n| *n != 0);
                let found = ok && found_node.is_some();
                let key = (node, path);
                let previous = self.looked_up.get(&key).copied();
                let change = self.renamed.get(&node).copied();
                let kind = if found {
                    &mut self.entry
                } else {
                    &mut self.negative
                };
                kind.requests += 1;
                if let Some((asked, answered, was_found)) = previous
                    && was_found == found
                    && repeats(sent, Some((asked, answered)), change)
                {
                    kind.repeats += 1;
                }
                if let Some([_, valid]) = rec.end_args
                    && ok
                {
                    kind.valid(valid & 0xffff_ffff);
                    if let Some(n) = found_node {
                        self.attrs_answered.insert(n, (sent, ended));
                    }
                }
                self.looked_up.insert(key, (sent, ended, found));
            }
            op => {
                if changes_node(op) {
                    let c = self.changed.entry(node).or_default();
                    *c = (*c).max(ended);
                }
                if changes_names(op) {
                    let c = self.renamed.entry(node).or_default();
                    *c = (*c).max(ended);
                }
            }
        }
    }

    fn conclude(&self, facts: &Facts) -> Vec<Finding> {
        let mut found = Vec::new();
        let seconds = facts.seconds().max(0.001);
        let share = |n: u64| n as f64 / facts.requests.max(1) as f64;
        if self.attr.fires() {
            let a = &self.attr;
            found.push(
                a.evidence(
                    Finding::new(
                        FindingId::AttrCache,
                        share(a.repeats),
                        format!(
                            "GETATTR: {} in {:.1} s, {} ({}) asked again within 1 s of the last answer with nothing changed in between; the daemon's attr_timeout: {}",
                            count(a.requests),
                            seconds,
                            count(a.repeats),
                            percent(a.repeats, a.requests),
                            a.validity(),
                        ),
                    ),
                    facts,
                )
                .knob("a longer attribute timeout: `-o attr_timeout=1` (libfuse, bindfs), or longer (the daemon's attr_valid in its replies)")
                .expect("about one GETATTR per file per timeout instead of one per stat(2); only where files do not change behind the mount"),
            );
        }
        if self.entry.fires() {
            let e = &self.entry;
            found.push(
                e.evidence(
                    Finding::new(
                        FindingId::EntryCache,
                        share(e.repeats),
                        format!(
                            "LOOKUP: {} found names in {:.1} s, {} ({}) of the same name again within 1 s with its directory unchanged; the daemon's entry_timeout: {}",
                            count(e.requests),
                            seconds,
                            count(e.repeats),
                            percent(e.repeats, e.requests),
                            e.validity(),
                        ),
                    ),
                    facts,
                )
                .knob("a longer entry timeout: `-o entry_timeout=1` (libfuse, bindfs), or longer (the daemon's entry_valid in its replies)")
                .expect("one LOOKUP per name per timeout instead of one per path walk"),
            );
        }
        if self.negative.fires() {
            let n = &self.negative;
            found.push(
                n.evidence(
                    Finding::new(
                        FindingId::NegativeCache,
                        share(n.repeats),
                        format!(
                            "LOOKUP: {} of missing names in {:.1} s, {} ({}) of the same missing name again within 1 s with its directory unchanged",
                            count(n.requests),
                            seconds,
                            count(n.repeats),
                            percent(n.repeats, n.requests),
                        ),
                    ),
                    facts,
                )
                .knob("a negative cache: `-o negative_timeout=1` (libfuse), i.e. the daemon answers a missing name with node id 0 and an entry timeout instead of ENOENT")
                .expect("one LOOKUP per missing name per timeout"),
            );
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::rules::synthetic::conclude;
    use fusetrace_common::{EventKind, FuseEvent};

    const MS: u64 = 1_000_000;

    /// A finished request on node `node`, sent at `at` ms, 1 ms long.
    fn req(op: u32, node: u64, at: u64, error: i32) -> RequestLifecycle {
        RequestLifecycle::from_whole(&FuseEvent {
            kind: EventKind::Whole as u8,
            connection: 1,
            opcode: op,
            nodeid: node,
            aux_ns: at * MS + 1,
            ts_ns: at * MS + MS,
            error,
            ..FuseEvent::default()
        })
    }

    fn getattr(node: u64, at: u64, valid_ms: u64) -> RequestLifecycle {
        let mut r = req(GETATTR, node, at, 0);
        r.end_args = Some([0, valid_ms]);
        r
    }

    fn lookup(dir: u64, name: &str, at: u64, found: u64, error: i32) -> RequestLifecycle {
        let mut r = req(LOOKUP, dir, at, error);
        r.path = Some(format!("/m/{name}").into());
        r.end_args = Some([found, 0]);
        r
    }

    fn run(reqs: impl IntoIterator<Item = RequestLifecycle>) -> Vec<FindingId> {
        let reqs: Vec<_> = reqs.into_iter().collect();
        conclude::<Caches>(&reqs).iter().map(|f| f.id).collect()
    }

    #[test]
    fn a_stat_loop_with_no_attribute_time_is_found() {
        // 300 files, each stat'ed every 10 ms: answers with 0 s validity.
        let reqs = (0..1000u64).map(|i| getattr(2 + i % 300, i * 10 / 300 * 10 + i % 300, 0));
        assert_eq!(run(reqs), [FindingId::AttrCache]);
    }

    #[test]
    fn asking_once_per_second_is_the_cache_working() {
        let reqs = (0..2000u64).map(|i| getattr(2 + i % 10, (i / 10) * 1001, 1000));
        assert!(run(reqs).is_empty());
    }

    #[test]
    fn a_change_in_between_explains_the_question() {
        // Each stat follows a write of the same file: the kernel must ask.
        let reqs = (0..1000u64).flat_map(|i| {
            [
                req(WRITE, 2 + i % 50, i * 4, 0),
                getattr(2 + i % 50, i * 4 + 2, 1000),
            ]
        });
        assert!(run(reqs).is_empty());
    }

    #[test]
    fn long_validity_in_the_replies_wins_over_repeats() {
        // Repeats (an invalidation the rule cannot see), but the daemon
        // gives 10 s: not the daemon's timeout.
        let reqs = (0..1000u64).map(|i| getattr(2, i * 2, 10_000));
        assert!(run(reqs).is_empty());
    }

    #[test]
    fn repeated_lookups_of_found_and_missing_names() {
        let found = (0..600u64).map(|i| lookup(1, &format!("f{}", i % 20), i * 3, 100 + i % 20, 0));
        assert_eq!(run(found), [FindingId::EntryCache]);
        let missing = (0..600u64).map(|i| lookup(1, &format!("m{}", i % 20), i * 3, 0, -2));
        assert_eq!(run(missing), [FindingId::NegativeCache]);
        // The directory's names change between the questions: no repeat.
        let churn = (0..600u64).flat_map(|i| {
            [
                req(CREATE, 1, i * 3, 0),
                lookup(1, &format!("m{}", i % 20), i * 3 + 2, 0, -2),
            ]
        });
        assert!(run(churn).is_empty());
    }

    #[test]
    fn too_few_repeats_say_nothing() {
        let reqs = (0..150u64).map(|i| getattr(2, i * 2, 0));
        assert!(run(reqs).is_empty());
    }
}
