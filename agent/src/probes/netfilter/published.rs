//! The `NF_PUBLISHED` map: the (protocol, host port) pairs some container publishes, the only
//! ones the netfilter programs count per port (`NF_PORTS`). Every other packet goes into one
//! slot per (family, hook, conntrack state) (`NF_OTHER`), so a host's own traffic, port scans
//! and containers' outgoing flows create no keys, and `NF_PORTS` holds at most a few keys per
//! published port.
//!
//! Who writes it: the agent alone, once per tick, after every collector that finds published
//! ports (berth's containers of every backend, other engines' from their API, their proxies'
//! command lines): [`Published::sync`] deletes the pairs that went and inserts the new ones,
//! the difference against what it put there. Not pinned: a restarted agent fills it on its
//! first tick (until then packets count as "other").
//!
//! `NF_PORTS` keys of a pair no longer published are deleted by the probe's `collect` after
//! their last read, as the syscall and network probes do with dead cgroups' keys.
//! Capacity: every TCP and UDP port ([`PUBLISHED_MAX_ENTRIES`]), so a refusal cannot happen
//! for those protocols; were one to, it is counted as a lost event (map `NF_PUBLISHED`) and
//! retried every tick.

use std::collections::{BTreeSet, HashSet};

use aya::{
    Ebpf,
    maps::{HashMap, MapData, MapError},
};
use berth_common::netfilter::{PUBLISHED_MAX_ENTRIES, PublishedKey};

use crate::probes::ProbeLoadError;

const MAP: &str = berth_common::maps::NF_PUBLISHED;

/// A published (IP protocol number, host port).
pub type ProtoPort = (u8, u16);

/// What one [`Published::sync`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncOutcome {
    pub inserted: usize,
    pub removed: usize,
    pub refused: usize,
}

/// The agent's side of `NF_PUBLISHED`: the pairs it put there.
#[derive(Debug, Default)]
pub struct Published {
    present: HashSet<ProtoPort>,
    refused: HashSet<ProtoPort>,
    /// Pairs refused by the full map since start, each counted once per refusal.
    lost: u64,
}

fn key((proto, port): ProtoPort) -> PublishedKey {
    PublishedKey {
        proto,
        _pad: 0,
        port,
    }
}

impl Published {
    /// Pairs in the map now.
    pub fn len(&self) -> usize {
        self.present.len()
    }

    pub fn is_empty(&self) -> bool {
        self.present.is_empty()
    }

    pub fn contains(&self, proto: u8, port: u16) -> bool {
        self.present.contains(&(proto, port))
    }

    /// Published pairs the full map refused, since start.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// Makes the map hold exactly `want` (as far as it has room): deletes first, so a full map
    /// frees its room before the inserts.
    pub fn sync(
        &mut self,
        ebpf: &mut Ebpf,
        want: &BTreeSet<ProtoPort>,
    ) -> Result<SyncOutcome, ProbeLoadError> {
        let err = |source| ProbeLoadError::Map { map: MAP, source };
        let map = ebpf
            .map_mut(MAP)
            .ok_or(ProbeLoadError::MissingMap { map: MAP })?;
        let mut map = HashMap::<&mut MapData, PublishedKey, u8>::try_from(map).map_err(err)?;
        let mut out = SyncOutcome::default();
        let gone: Vec<ProtoPort> = self
            .present
            .iter()
            .filter(|p| !want.contains(p))
            .copied()
            .collect();
        for p in gone {
            match map.remove(&key(p)) {
                Ok(()) => {}
                Err(e) if errno(&e) == Some(libc::ENOENT) => {}
                Err(e) => return Err(err(e)),
            }
            self.present.remove(&p);
            out.removed += 1;
        }
        self.refused.retain(|p| want.contains(p));
        for &p in want {
            if self.present.contains(&p) {
                continue;
            }
            match map.insert(key(p), 1u8, 0) {
                Ok(()) => {
                    self.present.insert(p);
                    self.refused.remove(&p);
                    out.inserted += 1;
                }
                Err(e) if errno(&e) == Some(libc::E2BIG) => {
                    out.refused += 1;
                    if self.refused.insert(p) {
                        self.lost += 1;
                        tracing::warn!(
                            proto = p.0,
                            port = p.1,
                            capacity = PUBLISHED_MAX_ENTRIES,
                            "the NF_PUBLISHED map is full: this port's netfilter cost counts as \
                             other traffic"
                        );
                    }
                }
                Err(e) => return Err(err(e)),
            }
        }
        Ok(out)
    }
}

/// The errno of a failed map syscall.
pub(super) fn errno(e: &MapError) -> Option<i32> {
    match e {
        MapError::SyscallError(s) => s.io_error.raw_os_error(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{cgroup::TrackedRoot, probes::load_object};

    fn keys(ebpf: &Ebpf) -> BTreeSet<ProtoPort> {
        let map = HashMap::<&MapData, PublishedKey, u8>::try_from(ebpf.map(MAP).unwrap()).unwrap();
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
        assert!(p.contains(6, 443) && !p.contains(6, 80));
        assert_eq!(p.sync(&mut ebpf, &second).unwrap(), SyncOutcome::default());

        p.sync(&mut ebpf, &BTreeSet::new()).unwrap();
        assert!(keys(&ebpf).is_empty() && p.is_empty());
        assert_eq!(p.lost(), 0);
    }
}
