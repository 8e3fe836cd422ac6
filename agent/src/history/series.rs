//! The per-container series store: numbers, not snapshots. Each kept tick is a [`Frame`]: the
//! host's counters and, per container with a cgroup, one fixed-size [`Point`] of cumulative
//! counters and gauges as the snapshot held them. Rates are left to the reader (`query.rs`),
//! which subtracts two frames.
//!
//! Two tiers: `fine` keeps a frame per tick, at most one per `resolution`, for `fine_span`
//! (10 minutes by default); every `coarse_step` (1 minute) one of them is also kept in
//! `coarse`, for `coarse_span` (1 hour). Counters stay exact across tiers (a rate over a
//! minute is the difference of two counters a minute apart); gauges (memory, pids) are the
//! value at the frame's instant.
//!
//! The memory bound: each tier holds at most `span / step + 1` frames, and a frame holds one
//! shared [`Point`] per container: a container whose point did not change since the frame
//! before shares that frame's (most containers at rest), so a frame costs a slot number and a
//! pointer per container plus a point per container that changed. At N containers the store
//! needs at most `frames * (size_of::<Frame>() + N * (size_of::<(u32, Arc<Point>)>() +` an
//! allocated point`))` bytes plus one [`Slot`] (id, name) per container seen within the coarse
//! span ([`Series::bound_bytes`]).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    mem::size_of,
    sync::Arc,
    time::{Duration, UNIX_EPOCH},
};

use crate::model::{CtState, Engine, Hook, Snapshot, Status};

/// How finely and for how long the series are kept.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SeriesConfig {
    /// The finest spacing between two kept frames (the agent's tick when it is slower).
    pub resolution: Duration,
    /// How long frames are kept at full resolution.
    pub fine_span: Duration,
    /// The spacing of the older frames.
    pub coarse_step: Duration,
    /// How long the older frames are kept.
    pub coarse_span: Duration,
}

impl Default for SeriesConfig {
    fn default() -> Self {
        Self {
            // One point per tick (the default tick is 1 s), never more than one a second.
            resolution: Duration::from_secs(1),
            // Full resolution for the last 10 minutes...
            fine_span: Duration::from_secs(600),
            // ...then one point a minute for the last hour.
            coarse_step: Duration::from_secs(60),
            coarse_span: Duration::from_secs(3600),
        }
    }
}

/// What is known in a point (a bit per source; a missing one reads as `null`).
pub mod known {
    /// The cgroup's CPU, memory and pids were read.
    pub const STATS: u8 = 1;
    /// The syscalls probe counted the cgroup.
    pub const SYSCALLS: u8 = 2;
    /// The network probe counted the cgroup's sockets.
    pub const NET: u8 = 4;
    /// The netfilter probe was up.
    pub const NETFILTER: u8 = 8;
}

/// One container at one tick: cumulative counters and gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Point {
    /// Counters restart from zero in a new cgroup: a changed id is a reset.
    pub cgroup_id: u64,
    pub cpu_ns: u64,
    pub memory_bytes: u64,
    pub pids: u32,
    /// [`known`] bits.
    pub known: u8,
    /// Ingress bytes of the cgroup's sockets.
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub syscalls: u64,
    /// Packets to its published ports entering netfilter (prerouting, or output for the
    /// host's own flows).
    pub nf_packets: u64,
    /// Nanoseconds netfilter spent on them, per hook ([`Hook`] as index).
    pub nf_hook_ns: [u64; 5],
    /// New flows to its published ports.
    pub new_flows: u64,
}

/// The host at one tick: netfilter counters over every packet (published port or not).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostPoint {
    /// [`known::NETFILTER`] when the probe was up.
    pub known: u8,
    pub nf_packets: u64,
    pub nf_ns: u64,
    pub new_flows: u64,
}

/// One kept tick.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// Unix seconds.
    pub t: f64,
    pub host: HostPoint,
    /// Sorted by slot; a point equal to the frame before's is that frame's (shared).
    pub points: Vec<(u32, Arc<Point>)>,
}

impl Frame {
    pub fn point(&self, slot: u32) -> Option<&Point> {
        self.points
            .binary_search_by_key(&slot, |(s, _)| *s)
            .ok()
            .map(|i| &*self.points[i].1)
    }
}

/// A container the frames name by slot number: what it is, as last seen.
#[derive(Debug, Clone, PartialEq)]
pub struct Slot {
    pub id: String,
    pub name: String,
    pub engine: Engine,
    pub status: Status,
    /// The newest frame holding it (unix seconds); once older than every kept frame, the
    /// slot is freed.
    pub last_seen: f64,
}

/// An allocated point: the point and the two counts of its `Arc`.
const POINT_BYTES: usize = size_of::<Point>() + 2 * size_of::<usize>();

pub struct Series {
    config: SeriesConfig,
    fine: VecDeque<Frame>,
    coarse: VecDeque<Frame>,
    slots: Vec<Option<Slot>>,
    by_id: HashMap<String, u32>,
    free: Vec<u32>,
}

impl Series {
    pub fn new(config: SeriesConfig) -> Self {
        Self {
            config,
            fine: VecDeque::new(),
            coarse: VecDeque::new(),
            slots: Vec::new(),
            by_id: HashMap::new(),
            free: Vec::new(),
        }
    }

    pub fn config(&self) -> SeriesConfig {
        self.config
    }

    /// Most frames each tier holds.
    fn capacity(span: Duration, step: Duration) -> usize {
        (span.as_secs_f64() / step.as_secs_f64().max(1e-3)).ceil() as usize + 1
    }

    /// Records the snapshot as a frame when at least `resolution` (less a tenth, for a tick's
    /// jitter) passed since the last one; drops what is past each tier's span.
    pub fn record(&mut self, snap: &Snapshot) {
        let t = unix(snap);
        let res = self.config.resolution.as_secs_f64();
        if self.fine.back().is_some_and(|f| t - f.t < res * 0.9) {
            return;
        }
        let frame = self.frame(snap, t);
        let frame = share(frame, self.fine.back());
        let coarse_due = self
            .coarse
            .back()
            .is_none_or(|f| t - f.t >= self.config.coarse_step.as_secs_f64() * 0.99);
        if coarse_due {
            self.coarse.push_back(frame.clone());
        }
        self.fine.push_back(frame);
        let cfg = self.config;
        trim(&mut self.fine, t, cfg.fine_span, cfg.resolution);
        trim(&mut self.coarse, t, cfg.coarse_span, cfg.coarse_step);
        self.free_unseen();
    }

    /// The snapshot's frame, every point its own (see [`share`]).
    fn frame(&mut self, snap: &Snapshot, t: f64) -> (f64, HostPoint, Vec<(u32, Point)>) {
        let probe_up = |name: &str| snap.probes.iter().any(|p| p.name == name && p.attached);
        let (sys_up, net_up) = (probe_up("syscalls"), probe_up("network"));
        let nf_up = snap.netfilter.is_some();
        let per_container = snap.container_netfilter();
        let mut points = Vec::with_capacity(snap.containers.len());
        for (i, c) in snap.containers.iter().enumerate() {
            if c.cgroup_id.is_none() && c.stats.is_none() {
                continue;
            }
            let mut p = Point {
                cgroup_id: c.cgroup_id.unwrap_or(0),
                ..Point::default()
            };
            if let Some(s) = &c.stats {
                p.known |= known::STATS;
                p.cpu_ns = (s.cpu_usage_seconds * 1e9) as u64;
                p.memory_bytes = s.memory_usage_bytes;
                p.pids = u32::try_from(s.pids_current).unwrap_or(u32::MAX);
            }
            if sys_up && c.cgroup_id.is_some() {
                p.known |= known::SYSCALLS;
                p.syscalls = c.syscalls.iter().map(|s| s.count).sum();
            }
            if net_up && c.cgroup_id.is_some() {
                p.known |= known::NET;
                for n in &c.net {
                    match n.direction {
                        "ingress" => p.rx_bytes += n.bytes,
                        _ => p.tx_bytes += n.bytes,
                    }
                }
            }
            if nf_up {
                p.known |= known::NETFILTER;
                for ((_, hook, state), cost) in per_container
                    .range((i, Hook::Prerouting, CtState::New)..)
                    .take_while(|((j, _, _), _)| *j == i)
                {
                    p.nf_hook_ns[*hook as usize] += cost.nanoseconds;
                    if matches!(hook, Hook::Prerouting | Hook::Output) {
                        p.nf_packets += cost.packets;
                        if *state == CtState::New {
                            p.new_flows += cost.packets;
                        }
                    }
                }
            }
            let slot = self.slot(&c.id, &c.name, c.engine, c.status, t);
            points.push((slot, p));
        }
        points.sort_by_key(|(s, _)| *s);
        // Exited containers were skipped: hold only what is kept (the bound counts points).
        points.shrink_to_fit();
        let mut host = HostPoint::default();
        if let Some(nf) = &snap.netfilter {
            host.known = known::NETFILTER;
            for h in &nf.hooks {
                host.nf_ns += h.nanoseconds;
                if matches!(h.hook, Hook::Prerouting | Hook::Output) {
                    host.nf_packets += h.packets;
                }
            }
            host.new_flows = nf
                .by_port
                .iter()
                .filter(|p| {
                    p.ct_state == CtState::New && matches!(p.hook, Hook::Prerouting | Hook::Output)
                })
                .map(|p| p.packets)
                .sum();
        }
        (t, host, points)
    }

    fn slot(&mut self, id: &str, name: &str, engine: Engine, status: Status, t: f64) -> u32 {
        if let Some(&s) = self.by_id.get(id)
            && let Some(Some(slot)) = self.slots.get_mut(s as usize)
        {
            if slot.name != name {
                slot.name = name.to_owned();
            }
            slot.status = status;
            slot.last_seen = t;
            return s;
        }
        let slot = Slot {
            id: id.to_owned(),
            name: name.to_owned(),
            engine,
            status,
            last_seen: t,
        };
        let s = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = Some(slot);
                s
            }
            None => {
                self.slots.push(Some(slot));
                (self.slots.len() - 1) as u32
            }
        };
        self.by_id.insert(id.to_owned(), s);
        s
    }

    /// Frees the slots of containers no kept frame holds any more.
    fn free_unseen(&mut self) {
        let oldest = match (self.coarse.front(), self.fine.front()) {
            (Some(c), Some(f)) => c.t.min(f.t),
            (Some(x), None) | (None, Some(x)) => x.t,
            (None, None) => f64::INFINITY,
        };
        for (i, s) in self.slots.iter_mut().enumerate() {
            if s.as_ref().is_some_and(|s| s.last_seen < oldest) {
                if let Some(gone) = s.take() {
                    self.by_id.remove(&gone.id);
                }
                self.free.push(i as u32);
            }
        }
    }

    pub fn slot_info(&self, slot: u32) -> Option<&Slot> {
        self.slots.get(slot as usize).and_then(Option::as_ref)
    }

    /// Every kept frame oldest first: the coarse ones older than the fine tier, then the fine
    /// ones.
    pub fn frames(&self) -> Vec<&Frame> {
        let first_fine = self.fine.front().map_or(f64::INFINITY, |f| f.t);
        self.coarse
            .iter()
            .filter(|f| f.t < first_fine)
            .chain(self.fine.iter())
            .collect()
    }

    /// The newest frame's time (unix seconds).
    pub fn newest(&self) -> Option<f64> {
        self.fine.back().map(|f| f.t)
    }

    /// Bytes the store holds on the heap now (capacities, not lengths: what is allocated).
    pub fn heap_bytes(&self) -> usize {
        // Each point allocation once, however many frames (of either tier) share it.
        let mut points = HashSet::new();
        let mut frames = |q: &VecDeque<Frame>| {
            q.capacity() * size_of::<Frame>()
                + q.iter()
                    .map(|f| {
                        f.points.capacity() * size_of::<(u32, Arc<Point>)>()
                            + f.points
                                .iter()
                                .filter(|(_, p)| points.insert(Arc::as_ptr(p)))
                                .count()
                                * POINT_BYTES
                    })
                    .sum::<usize>()
        };
        let slots = self.slots.capacity() * size_of::<Option<Slot>>()
            + self
                .slots
                .iter()
                .flatten()
                .map(|s| s.id.capacity() + s.name.capacity())
                .sum::<usize>();
        // The index: a key copy and a slot number per entry, hashbrown's control bytes.
        let index = self.by_id.capacity() * (size_of::<(String, u32)>() + 1)
            + self.by_id.keys().map(String::capacity).sum::<usize>();
        frames(&self.fine)
            + frames(&self.coarse)
            + slots
            + index
            + self.free.capacity() * size_of::<u32>()
    }

    /// The most the store may hold with `containers` containers present at every tick, whose
    /// ids and names are at most `id_bytes` long together (64 + a name: 128 is generous):
    /// every frame of both tiers full, the slot table and index at twice their size (a
    /// growing `Vec`/`HashMap` at most doubles), and `VecDeque`s at twice their frame count.
    pub fn bound_bytes(config: &SeriesConfig, containers: usize, id_bytes: usize) -> usize {
        let frames = Self::capacity(config.fine_span, config.resolution)
            + Self::capacity(config.coarse_span, config.coarse_step);
        // Every point changed at every tick: none shared. The allocator's header on top.
        let per_frame = 2 * size_of::<Frame>()
            + containers * (size_of::<(u32, Arc<Point>)>() + POINT_BYTES + 2 * size_of::<usize>());
        // Slots and index: each container's strings twice (slot and key), at most doubled.
        let per_slot =
            size_of::<Option<Slot>>() + size_of::<(String, u32)>() + 1 + 2 * id_bytes + 4;
        frames * per_frame + 2 * containers * per_slot
    }
}

/// The frame of `(t, host, points)`: each point equal to the one `before` holds for its slot is
/// that one, shared (a container at rest costs a pointer per frame, not a point).
fn share((t, host, points): (f64, HostPoint, Vec<(u32, Point)>), before: Option<&Frame>) -> Frame {
    let before = before.map_or(&[][..], |f| &f.points[..]);
    // Into a buffer of its own: collected in place, the points' buffer (8 times larger) would
    // be kept.
    let mut shared = Vec::with_capacity(points.len());
    shared.extend(points.into_iter().map(|(slot, p)| {
        let same = before
            .binary_search_by_key(&slot, |(s, _)| *s)
            .ok()
            .map(|i| &before[i].1)
            .filter(|b| ***b == p);
        (slot, same.map_or_else(|| Arc::new(p), Arc::clone))
    }));
    Frame {
        t,
        host,
        points: shared,
    }
}

fn trim(q: &mut VecDeque<Frame>, now: f64, span: Duration, step: Duration) {
    let cap = Series::capacity(span, step);
    while let Some(f) = q.front() {
        if now - f.t > span.as_secs_f64() || q.len() > cap {
            q.pop_front();
        } else {
            break;
        }
    }
}

fn unix(snap: &Snapshot) -> f64 {
    snap.taken_at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
