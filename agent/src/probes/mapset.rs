//! A set the agent mirrors into a BPF hash map (key -> 1): `TRACKED` (cgroup ids the syscall
//! and network probes count) and `NF_PUBLISHED` (the (protocol, port) pairs the netfilter probe
//! counts per port). [`MapSet::sync`] writes only the difference against what it put there,
//! deletes first (so a full map frees room before the inserts), and counts each member a full
//! map refuses once per refusal: a lost event, retried every tick, never an error.

use std::{
    collections::{BTreeSet, HashSet},
    fmt::Debug,
    hash::Hash,
};

use aya::{
    Ebpf,
    maps::{HashMap, MapData, MapError},
};

use super::ProbeLoadError;

/// What one kind of member is in its map.
pub trait Member: Copy + Eq + Hash + Ord + Debug {
    type Key: aya::Pod;
    /// The map's name in berth's object.
    const MAP: &'static str;
    /// Its capacity, for the warning when it is full.
    const CAPACITY: u32;
    /// What a refused member loses, for the warning.
    const LOSS: &'static str;
    fn key(self) -> Self::Key;
}

/// What one [`MapSet::sync`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncOutcome {
    pub inserted: usize,
    pub removed: usize,
    /// Members the full map refused this time.
    pub refused: usize,
}

/// The agent's side of the map: the members it put there.
#[derive(Debug)]
pub struct MapSet<T> {
    present: HashSet<T>,
    /// Members refused while the map was full, until they go or get in.
    refused: HashSet<T>,
    /// Members refused since start, each counted once per refusal.
    lost: u64,
}

impl<T> Default for MapSet<T> {
    fn default() -> Self {
        Self {
            present: HashSet::new(),
            refused: HashSet::new(),
            lost: 0,
        }
    }
}

impl<T: Member> MapSet<T> {
    /// Members in the map now.
    pub fn len(&self) -> usize {
        self.present.len()
    }

    pub fn is_empty(&self) -> bool {
        self.present.is_empty()
    }

    pub fn contains(&self, m: T) -> bool {
        self.present.contains(&m)
    }

    /// Members the full map refused since start.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// Makes the map hold exactly `want` (as far as it has room).
    pub fn sync(
        &mut self,
        ebpf: &mut Ebpf,
        want: &BTreeSet<T>,
    ) -> Result<SyncOutcome, ProbeLoadError> {
        let err = |source| ProbeLoadError::Map {
            map: T::MAP,
            source,
        };
        let map = ebpf
            .map_mut(T::MAP)
            .ok_or(ProbeLoadError::MissingMap { map: T::MAP })?;
        let mut map = HashMap::<&mut MapData, T::Key, u8>::try_from(map).map_err(err)?;
        let mut out = SyncOutcome::default();
        let gone: Vec<T> = self
            .present
            .iter()
            .filter(|m| !want.contains(m))
            .copied()
            .collect();
        for m in gone {
            match map.remove(&m.key()) {
                Ok(()) => {}
                Err(e) if errno(&e) == Some(libc::ENOENT) => {}
                Err(e) => return Err(err(e)),
            }
            self.present.remove(&m);
            out.removed += 1;
        }
        self.refused.retain(|m| want.contains(m));
        for &m in want {
            if self.present.contains(&m) {
                continue;
            }
            match map.insert(m.key(), 1u8, 0) {
                Ok(()) => {
                    self.present.insert(m);
                    self.refused.remove(&m);
                    out.inserted += 1;
                }
                Err(e) if errno(&e) == Some(libc::E2BIG) => {
                    out.refused += 1;
                    if self.refused.insert(m) {
                        self.lost += 1;
                        tracing::warn!(
                            member = ?m,
                            map = T::MAP,
                            capacity = T::CAPACITY,
                            "the map is full: {}",
                            T::LOSS
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
pub fn errno(e: &MapError) -> Option<i32> {
    match e {
        MapError::SyscallError(s) => s.io_error.raw_os_error(),
        _ => None,
    }
}
