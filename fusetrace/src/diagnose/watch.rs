//! Feeds each connection's rules (`super::rules`) with its finished
//! requests and events, keeps the facts every rule may read (`Facts`), and
//! asks the rules for their findings at the end.

use std::collections::BTreeMap;

use fusetrace_common::FuseEvent;

use super::finding::{Facts, Finding, Limits, Rule, UringOffer};
use crate::pipeline::lifecycle::RequestLifecycle;

/// One connection's facts and rules.
struct Watched {
    facts: Facts,
    rules: Vec<Box<dyn Rule>>,
}

/// Feeds every connection's rules; [`Watch::conclude`] asks them.
#[derive(Default)]
pub struct Watch {
    connections: BTreeMap<u32, Watched>,
    io_uring: Option<UringOffer>,
}

impl Watch {
    pub fn new(io_uring: Option<UringOffer>) -> Self {
        Watch {
            connections: BTreeMap::new(),
            io_uring,
        }
    }

    fn watched(&mut self, connection: u32) -> &mut Watched {
        self.connections
            .entry(connection)
            .or_insert_with(|| Watched {
                facts: Facts {
                    connection,
                    ..Facts::default()
                },
                rules: super::rules::all(),
            })
    }

    /// A finished request.
    pub fn request(&mut self, rec: &RequestLifecycle) {
        let w = self.watched(rec.connection);
        w.facts.request(rec);
        for rule in &mut w.rules {
            rule.request(rec);
        }
    }

    /// An event as it arrives (before the tracker joins it).
    pub fn event(&mut self, ev: &FuseEvent) {
        let w = self.watched(ev.connection);
        if let Some(limits) = Limits::from_event(ev) {
            w.facts.limits = Some(limits);
        }
        for rule in &mut w.rules {
            rule.event(ev);
        }
    }

    /// Connections seen.
    pub fn connections(&self) -> impl Iterator<Item = u32> + '_ {
        self.connections.keys().copied()
    }

    /// A connection's facts (with the run's io_uring offer).
    pub fn facts(&self, connection: u32) -> Option<Facts> {
        self.connections.get(&connection).map(|w| Facts {
            io_uring: self.io_uring,
            ..w.facts.clone()
        })
    }

    /// What the rules of `facts`' connection found (in no order: the
    /// caller adds its own and sorts once).
    pub fn conclude(&self, facts: &Facts) -> Vec<Finding> {
        self.connections
            .get(&facts.connection)
            .map(|w| w.rules.iter().flat_map(|r| r.conclude(facts)).collect())
            .unwrap_or_default()
    }
}
