//! [`Tally`]: the entries per IPv4 address, and the entries by ctnetlink id behind them, as
//! the [`counter`](super::counter) keeps them: an id counts once whatever reports it again,
//! and an entry known only from a dump ("seeded": it may never send an event) keeps what finds
//! it again until an event names it.

use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
};

use super::ctnetlink::{Addrs, Event, Flow};

/// Entries per address, and the entries by id behind them.
#[derive(Debug, Default)]
pub struct Tally {
    flows: HashMap<u32, Tracked>,
    by_ip: HashMap<Ipv4Addr, u64>,
}

#[derive(Debug, Clone)]
struct Tracked {
    addrs: Addrs,
    /// For an entry known only from a dump (it may never send an event): what finds it again.
    seeded: Option<Box<[u8]>>,
}

impl Tally {
    /// Entries naming `ip` in either tuple.
    pub fn get(&self, ip: Ipv4Addr) -> u64 {
        self.by_ip.get(&ip).copied().unwrap_or(0)
    }

    /// Entries counted.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Entries known only from a dump.
    pub fn seeded(&self) -> usize {
        self.flows.values().filter(|t| t.seeded.is_some()).count()
    }

    /// Counts `flow` unless its id is known; a NEW event (`seeded == false`) for a known id
    /// marks it as one that sends events.
    pub(super) fn add(&mut self, flow: Flow, seeded: bool) {
        if let Some(t) = self.flows.get_mut(&flow.id) {
            if !seeded {
                t.seeded = None;
            }
            return;
        }
        for ip in flow.addrs.iter() {
            *self.by_ip.entry(ip).or_default() += 1;
        }
        self.flows.insert(
            flow.id,
            Tracked {
                addrs: flow.addrs,
                seeded: if seeded {
                    Some(flow.key.unwrap_or_default())
                } else {
                    None
                },
            },
        );
    }

    fn remove(&mut self, id: u32) {
        let Some(t) = self.flows.remove(&id) else {
            return;
        };
        for ip in t.addrs.iter() {
            if let Some(n) = self.by_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    self.by_ip.remove(&ip);
                }
            }
        }
    }

    /// Drops the seeded entries whose id is not in `alive`.
    pub(super) fn retain_seeded(&mut self, alive: &HashSet<u32>) {
        let gone: Vec<u32> = self
            .flows
            .iter()
            .filter(|(id, t)| t.seeded.is_some() && !alive.contains(id))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.remove(id);
        }
    }

    /// The seeded entries' ids and keys.
    pub(super) fn seeded_keys(&self) -> Vec<(u32, Box<[u8]>)> {
        self.flows
            .iter()
            .filter_map(|(id, t)| Some((*id, t.seeded.clone()?)))
            .collect()
    }

    /// Drops `ids` that are still seeded (an event may have named one meanwhile).
    pub(super) fn remove_seeded(&mut self, ids: &[u32]) {
        for id in ids {
            if self.flows.get(id).is_some_and(|t| t.seeded.is_some()) {
                self.remove(*id);
            }
        }
    }

    pub(super) fn apply(&mut self, ev: &Event) {
        match ev {
            Event::New(f) => self.add(f.clone(), false),
            Event::Destroy(id) => self.remove(*id),
            Event::Done | Event::Error(_) | Event::Other => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(id: u32, ips: &[&str]) -> Flow {
        Flow {
            id,
            addrs: ips.iter().map(|s| s.parse::<Ipv4Addr>().unwrap()).collect(),
            key: None,
        }
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn an_id_counts_once_and_unknown_destroys_are_ignored() {
        let mut t = Tally::default();
        t.add(flow(1, &["10.0.0.1", "10.0.0.2", "10.0.0.1"]), true);
        t.add(flow(1, &["10.0.0.1", "10.0.0.2"]), false);
        t.add(flow(2, &["10.0.0.2", "10.0.0.3"]), false);
        assert_eq!((t.get(ip("10.0.0.1")), t.get(ip("10.0.0.2"))), (1, 2));
        assert_eq!(
            t.seeded(),
            0,
            "a NEW event for a dumped id marks it as evented"
        );
        t.apply(&Event::Destroy(99));
        t.apply(&Event::Destroy(2));
        assert_eq!((t.get(ip("10.0.0.2")), t.get(ip("10.0.0.3"))), (1, 0));
        assert_eq!(t.by_ip.len(), 2, "addresses at zero are dropped");
    }

    #[test]
    fn a_check_drops_only_seeded_entries_that_are_gone() {
        let mut t = Tally::default();
        t.add(flow(1, &["10.0.0.1"]), true);
        t.add(flow(2, &["10.0.0.1"]), true);
        t.add(flow(3, &["10.0.0.1"]), false);
        t.retain_seeded(&HashSet::from([2]));
        assert_eq!((t.len(), t.seeded(), t.get(ip("10.0.0.1"))), (2, 1, 2));
    }
}
