//! The `NF_PUBLISHED` map: the (protocol, host port) pairs some container publishes, the only
//! ones the netfilter programs count per port (`NF_PORTS`). Every other packet goes into one
//! slot per (family, hook, conntrack state) (`NF_OTHER`), so a host's own traffic, port scans
//! and containers' outgoing flows create no keys, and `NF_PORTS` holds at most a few keys per
//! published port.
//!
//! Who writes it: the agent alone, once per tick, after every collector that finds published
//! ports (berth's containers of every backend, other engines' from their API, their proxies'
//! command lines): [`MapSet::sync`] deletes the pairs that went and inserts the new ones,
//! the difference against what it put there. Not pinned: a restarted agent fills it on its
//! first tick (until then packets count as "other").
//!
//! `NF_PORTS` keys of a pair no longer published are deleted by the probe's `collect` after
//! their last read, as the syscall and network probes do with dead cgroups' keys.
//! Capacity: every TCP and UDP port ([`PUBLISHED_MAX_ENTRIES`]), so a refusal cannot happen
//! for those protocols; were one to, it is counted as a lost event (map `NF_PUBLISHED`) and
//! retried every tick.

use berth_common::netfilter::{PUBLISHED_MAX_ENTRIES, PublishedKey};

use crate::probes::mapset::{MapSet, Member};

/// A published (IP protocol number, host port).
pub type ProtoPort = (u8, u16);

/// The agent's side of `NF_PUBLISHED`: the pairs it put there.
pub type Published = MapSet<ProtoPort>;

impl Member for ProtoPort {
    type Key = PublishedKey;
    const MAP: &'static str = berth_common::maps::NF_PUBLISHED;
    const CAPACITY: u32 = PUBLISHED_MAX_ENTRIES;
    const LOSS: &'static str = "this port's netfilter cost counts as other traffic";
    fn key(self) -> PublishedKey {
        PublishedKey {
            proto: self.0,
            _pad: 0,
            port: self.1,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use aya::{
        Ebpf,
        maps::{HashMap, MapData},
    };

    use super::*;
    use crate::{
        cgroup::TrackedRoot,
        probes::{load_object, mapset::SyncOutcome},
    };

    fn keys(ebpf: &Ebpf) -> BTreeSet<ProtoPort> {
        let map = HashMap::<&MapData, PublishedKey, u8>::try_from(
            ebpf.map(berth_common::maps::NF_PUBLISHED).unwrap(),
        )
        .unwrap();
        map.keys()
            .map(|k| {
                let k = k.unwrap();
                (k.proto, k.port)
            })
            .collect()
    }

    #[test]
    fn only_the_difference_is_written_and_unpublished_ports_leave_the_map() {
        let mut ebpf = load_object(&TrackedRoot::fixture(), false, None)
            .expect("loading berth's eBPF object (needs root: CAP_BPF)");
        let mut p = Published::default();
        let first: BTreeSet<ProtoPort> = (40_000..60_000)
            .map(|port| (17, port))
            .chain([(6, 80)])
            .collect();
        let o = p.sync(&mut ebpf, &first).unwrap();
        assert_eq!((o.inserted, o.removed, o.refused), (20_001, 0, 0));
        assert_eq!(keys(&ebpf), first);

        let mut second = first.clone();
        second.remove(&(6, 80));
        second.insert((6, 443));
        let o = p.sync(&mut ebpf, &second).unwrap();
        assert_eq!((o.inserted, o.removed), (1, 1));
        assert_eq!(keys(&ebpf), second);
        assert!(p.contains((6, 443)) && !p.contains((6, 80)));
        assert_eq!(p.sync(&mut ebpf, &second).unwrap(), SyncOutcome::default());

        p.sync(&mut ebpf, &BTreeSet::new()).unwrap();
        assert!(keys(&ebpf).is_empty() && p.is_empty());
        assert_eq!(p.lost(), 0);
    }
}
