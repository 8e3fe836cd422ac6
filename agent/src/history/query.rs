//! The query over the series (`GET /api/v1/query`, `berth top`, `berth query`): a window cut
//! into steps, one value per step and series, rates from the counters of the frames at the two
//! ends of each step.
//!
//! Step `k` ends at `timestamps[k]`; its value is read from the frame closest to that instant,
//! within half a step either side (ticks jitter). A gauge is that frame's value; a rate is the counters' increase from the previous
//! step's frame, over the time between the two frames. `null` where a frame is missing (the
//! container did not exist yet, or the history does not reach back), where a source was down
//! (no stats, no probe) or where no packet was measured (a cost per packet).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::series::{Frame, Point, Series, known};
use crate::model::{Engine, Hook, Status};

/// The series a query may sort by (their mean over the window, highest first).
pub const SORT_KEYS: [&str; 8] = [
    "cpu_cores",
    "memory_bytes",
    "pids",
    "net_rx_bytes_per_second",
    "net_tx_bytes_per_second",
    "syscalls_per_second",
    "netfilter_us_per_packet",
    "new_flows_per_second",
];

/// The series `sort` names: a name of [`SORT_KEYS`] or its short form (`cpu`, `memory`,
/// `pids`, `rx`, `tx`, `syscalls`, `netfilter`, `flows`).
pub fn sort_key(sort: &str) -> Option<&'static str> {
    let short = [
        ("cpu", "cpu_cores"),
        ("memory", "memory_bytes"),
        ("pids", "pids"),
        ("rx", "net_rx_bytes_per_second"),
        ("tx", "net_tx_bytes_per_second"),
        ("syscalls", "syscalls_per_second"),
        ("netfilter", "netfilter_us_per_packet"),
        ("flows", "new_flows_per_second"),
    ];
    SORT_KEYS
        .iter()
        .copied()
        .find(|k| *k == sort)
        .or_else(|| short.iter().find(|(s, _)| *s == sort).map(|(_, k)| *k))
}

/// What the caller asks; validated by [`run`].
#[derive(Debug, Clone, PartialEq)]
pub struct QueryParams {
    pub window: Duration,
    /// `None`: the resolution of the tier the window reads.
    pub step: Option<Duration>,
    /// One of [`SORT_KEYS`] or a short form ([`sort_key`]).
    pub sort: String,
    /// Keep the first N containers after sorting; `None`: all.
    pub top: Option<usize>,
    pub engine: Option<Engine>,
    /// Containers whose name contains this.
    pub name: Option<String>,
    /// One container: full id, name or unique id prefix.
    pub container: Option<String>,
}

impl Default for QueryParams {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(300),
            step: None,
            sort: "cpu_cores".into(),
            top: None,
            engine: None,
            name: None,
            container: None,
        }
    }
}

/// Why a query has no answer; each names the parameter at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QueryError {
    #[error("window={window}s: use more than 0s and at most {max}s (the history kept)")]
    Window { window: f64, max: f64 },
    #[error(
        "step={step}s: use at least the {resolution}s resolution kept for this window, and at most the window"
    )]
    Step { step: f64, resolution: f64 },
    #[error("window={window}s / step={step}s makes more than {max} points: use a larger step")]
    Points { window: f64, step: f64, max: usize },
    #[error("sort={sort}: use one of {} (or cpu, memory, pids, rx, tx, syscalls, netfilter, flows)", SORT_KEYS.join(", "))]
    Sort { sort: String },
    #[error("top=0: use 1 or more, or leave it out for every container")]
    Top,
    #[error("container={reference}: no container in the window matches")]
    NotFound { reference: String },
    #[error("container={reference} matches {matches} containers: give more of the id")]
    Ambiguous { reference: String, matches: usize },
    #[error("no history yet: the agent is starting")]
    Empty,
}

/// Most points a series may have in one answer.
pub const MAX_POINTS: usize = 3600;

type Values = Vec<Option<f64>>;

/// `GET /api/v1/query`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QueryView {
    pub window_seconds: f64,
    pub step_seconds: f64,
    /// The spacing of the kept frames this window reads (finer steps are refused).
    pub resolution_seconds: f64,
    /// Unix seconds, end of each step, oldest first.
    pub timestamps: Vec<f64>,
    pub host: HostSeries,
    /// Sorted by `sort`, at most `top`.
    pub containers: Vec<ContainerSeries>,
}

/// The host: CPU, memory, network and syscalls summed over every container the window holds
/// (filters aside); netfilter over every packet of every hook.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostSeries {
    pub cpu_cores: Values,
    pub memory_bytes: Values,
    pub net_rx_bytes_per_second: Values,
    pub net_tx_bytes_per_second: Values,
    pub syscalls_per_second: Values,
    /// Netfilter time of every hook per packet entering it (prerouting or output), µs.
    pub netfilter_us_per_packet: Values,
    pub new_flows_per_second: Values,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ContainerSeries {
    pub id: String,
    pub name: String,
    pub engine: Engine,
    /// As last seen in the window.
    pub status: Status,
    pub series: ContainerValues,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ContainerValues {
    /// CPUs used (1.0 = one core busy).
    pub cpu_cores: Values,
    pub memory_bytes: Values,
    pub pids: Values,
    pub net_rx_bytes_per_second: Values,
    pub net_tx_bytes_per_second: Values,
    pub syscalls_per_second: Values,
    /// Netfilter time, every hook, per packet to its published ports, µs.
    pub netfilter_us_per_packet: Values,
    pub netfilter_us_per_second_by_hook: ByHook,
    pub new_flows_per_second: Values,
}

/// Netfilter time per second spent on a container's packets, per hook, µs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ByHook {
    pub prerouting: Values,
    pub input: Values,
    pub forward: Values,
    pub output: Values,
    pub postrouting: Values,
}

impl ContainerValues {
    /// The series `key` names (one of [`SORT_KEYS`]).
    pub fn get(&self, key: &str) -> Option<&Values> {
        Some(match key {
            "cpu_cores" => &self.cpu_cores,
            "memory_bytes" => &self.memory_bytes,
            "pids" => &self.pids,
            "net_rx_bytes_per_second" => &self.net_rx_bytes_per_second,
            "net_tx_bytes_per_second" => &self.net_tx_bytes_per_second,
            "syscalls_per_second" => &self.syscalls_per_second,
            "netfilter_us_per_packet" => &self.netfilter_us_per_packet,
            "new_flows_per_second" => &self.new_flows_per_second,
            _ => return None,
        })
    }
}

/// The mean of the known values; `None` when none is.
pub fn mean(v: &[Option<f64>]) -> Option<f64> {
    let known: Vec<f64> = v.iter().flatten().copied().collect();
    (!known.is_empty()).then(|| known.iter().sum::<f64>() / known.len() as f64)
}

/// A counter's increase between two readings: all of `now` when it went down or its cgroup
/// changed (it restarted from zero).
fn increase(before: u64, now: u64, reset: bool) -> u64 {
    if reset || now < before {
        now
    } else {
        now - before
    }
}

/// Answers `p` from `series`.
pub fn run(series: &Series, p: &QueryParams) -> Result<QueryView, QueryError> {
    let cfg = series.config();
    let window = p.window.as_secs_f64();
    let max = cfg.coarse_span.as_secs_f64();
    if window <= 0.0 || window > max {
        return Err(QueryError::Window { window, max });
    }
    let resolution = if p.window <= cfg.fine_span {
        cfg.resolution
    } else {
        cfg.coarse_step
    }
    .as_secs_f64();
    let step = p.step.map_or(resolution, |s| s.as_secs_f64());
    if step < resolution || step > window {
        return Err(QueryError::Step { step, resolution });
    }
    let n = (window / step).ceil() as usize;
    if n > MAX_POINTS {
        return Err(QueryError::Points {
            window,
            step,
            max: MAX_POINTS,
        });
    }
    let sort = sort_key(&p.sort).ok_or_else(|| QueryError::Sort {
        sort: p.sort.clone(),
    })?;
    if p.top == Some(0) {
        return Err(QueryError::Top);
    }
    let end = series.newest().ok_or(QueryError::Empty)?;
    let frames = series.frames();
    // Boundary 0 is the window's start; boundary k + 1 ends step k.
    let bounds: Vec<f64> = (0..=n).map(|k| end - (n - k) as f64 * step).collect();
    let chosen: Vec<Option<&Frame>> = bounds.iter().map(|&b| nearest(&frames, b, step)).collect();
    let steps: Vec<(Option<&Frame>, Option<&Frame>)> =
        (0..n).map(|k| (chosen[k], chosen[k + 1])).collect();

    let mut slots: Vec<u32> = chosen
        .iter()
        .flatten()
        .flat_map(|f| f.points.iter().map(|(s, _)| *s))
        .collect();
    slots.sort_unstable();
    slots.dedup();

    let all: Vec<(u32, ContainerValues)> = slots
        .iter()
        .map(|&s| (s, container_values(&steps, s)))
        .collect();
    let host = host_values(&steps, &all);

    let wanted = match &p.container {
        Some(r) => Some(resolve(series, &slots, r)?),
        None => None,
    };
    let mut containers: Vec<ContainerSeries> = all
        .into_iter()
        .filter_map(|(s, values)| {
            let info = series.slot_info(s)?;
            let keep = wanted.is_none_or(|w| w == s)
                && p.engine.is_none_or(|e| e == info.engine)
                && p.name
                    .as_ref()
                    .is_none_or(|n| info.name.contains(n.as_str()));
            keep.then(|| ContainerSeries {
                id: info.id.clone(),
                name: info.name.clone(),
                engine: info.engine,
                status: info.status,
                series: values,
            })
        })
        .collect();
    let key = |c: &ContainerSeries| c.series.get(sort).and_then(|v| mean(v));
    containers.sort_by(|a, b| {
        key(b)
            .unwrap_or(f64::NEG_INFINITY)
            .total_cmp(&key(a).unwrap_or(f64::NEG_INFINITY))
            .then_with(|| a.name.cmp(&b.name))
    });
    if let Some(top) = p.top {
        containers.truncate(top);
    }
    Ok(QueryView {
        window_seconds: window,
        step_seconds: step,
        resolution_seconds: resolution,
        timestamps: bounds[1..].to_vec(),
        host,
        containers,
    })
}

/// The frame closest to `b`, within half a step either side.
fn nearest<'a>(frames: &[&'a Frame], b: f64, step: f64) -> Option<&'a Frame> {
    let j = frames.partition_point(|f| f.t <= b);
    let before = j.checked_sub(1).map(|i| frames[i]);
    let after = frames.get(j).copied();
    [before, after]
        .into_iter()
        .flatten()
        .filter(|f| f.t > b - step / 2.0 && f.t <= b + step / 2.0)
        .min_by(|x, y| (x.t - b).abs().total_cmp(&(y.t - b).abs()))
}

/// The slot `reference` names among `slots`: id or name, else a unique id prefix.
fn resolve(series: &Series, slots: &[u32], reference: &str) -> Result<u32, QueryError> {
    let info = |s: &u32| series.slot_info(*s).map(|i| (*s, i));
    if let Some((s, _)) = slots
        .iter()
        .filter_map(info)
        .find(|(_, i)| i.id == reference || i.name == reference)
    {
        return Ok(s);
    }
    let matches: Vec<u32> = slots
        .iter()
        .filter_map(info)
        .filter(|(_, i)| !reference.is_empty() && i.id.starts_with(reference))
        .map(|(s, _)| s)
        .collect();
    match matches.as_slice() {
        [s] => Ok(*s),
        [] => Err(QueryError::NotFound {
            reference: reference.into(),
        }),
        _ => Err(QueryError::Ambiguous {
            reference: reference.into(),
            matches: matches.len(),
        }),
    }
}

/// A step's two readings of one container, with the seconds between them.
struct Pair<'a> {
    before: &'a Point,
    now: &'a Point,
    seconds: f64,
}

impl Pair<'_> {
    fn rate(&self, bit: u8, counter: impl Fn(&Point) -> u64, scale: f64) -> Option<f64> {
        (self.before.known & self.now.known & bit != 0).then(|| {
            let reset = self.before.cgroup_id != self.now.cgroup_id;
            increase(counter(self.before), counter(self.now), reset) as f64 * scale / self.seconds
        })
    }
}

fn container_values(steps: &[(Option<&Frame>, Option<&Frame>)], slot: u32) -> ContainerValues {
    let mut v = ContainerValues::default();
    for (before, now) in steps {
        let now_point = now.and_then(|f| f.point(slot));
        let stats = now_point.filter(|p| p.known & known::STATS != 0);
        v.memory_bytes.push(stats.map(|p| p.memory_bytes as f64));
        v.pids.push(stats.map(|p| f64::from(p.pids)));
        let pair = match (before, now, now_point) {
            (Some(b), Some(n), Some(np)) if n.t > b.t => b.point(slot).map(|bp| Pair {
                before: bp,
                now: np,
                seconds: n.t - b.t,
            }),
            _ => None,
        };
        let rate = |bit: u8, counter: fn(&Point) -> u64, scale: f64| {
            pair.as_ref().and_then(|p| p.rate(bit, counter, scale))
        };
        v.cpu_cores.push(rate(known::STATS, |p| p.cpu_ns, 1e-9));
        v.net_rx_bytes_per_second
            .push(rate(known::NET, |p| p.rx_bytes, 1.0));
        v.net_tx_bytes_per_second
            .push(rate(known::NET, |p| p.tx_bytes, 1.0));
        v.syscalls_per_second
            .push(rate(known::SYSCALLS, |p| p.syscalls, 1.0));
        v.new_flows_per_second
            .push(rate(known::NETFILTER, |p| p.new_flows, 1.0));
        let nf = known::NETFILTER;
        let hooks = [
            (
                &mut v.netfilter_us_per_second_by_hook.prerouting,
                Hook::Prerouting,
            ),
            (&mut v.netfilter_us_per_second_by_hook.input, Hook::Input),
            (
                &mut v.netfilter_us_per_second_by_hook.forward,
                Hook::Forward,
            ),
            (&mut v.netfilter_us_per_second_by_hook.output, Hook::Output),
            (
                &mut v.netfilter_us_per_second_by_hook.postrouting,
                Hook::Postrouting,
            ),
        ];
        for (out, hook) in hooks {
            let h = hook as usize;
            out.push(
                pair.as_ref()
                    .and_then(|p| p.rate(nf, |x| x.nf_hook_ns[h], 1e-3)),
            );
        }
        v.netfilter_us_per_packet.push(pair.as_ref().and_then(|p| {
            let packets = p.rate(nf, |x| x.nf_packets, 1.0)?;
            let ns = p.rate(nf, |x| x.nf_hook_ns.iter().sum(), 1.0)?;
            (packets > 0.0).then(|| ns / packets / 1e3)
        }));
    }
    v
}

/// Sums of the containers' series per step (`None` where none is known), and the host's own
/// netfilter counters.
fn host_values(
    steps: &[(Option<&Frame>, Option<&Frame>)],
    all: &[(u32, ContainerValues)],
) -> HostSeries {
    let sum = |pick: fn(&ContainerValues) -> &Values| -> Values {
        (0..steps.len())
            .map(|k| {
                let known: Vec<f64> = all.iter().filter_map(|(_, v)| pick(v)[k]).collect();
                (!known.is_empty()).then(|| known.iter().sum())
            })
            .collect()
    };
    let mut h = HostSeries {
        cpu_cores: sum(|v| &v.cpu_cores),
        memory_bytes: sum(|v| &v.memory_bytes),
        net_rx_bytes_per_second: sum(|v| &v.net_rx_bytes_per_second),
        net_tx_bytes_per_second: sum(|v| &v.net_tx_bytes_per_second),
        syscalls_per_second: sum(|v| &v.syscalls_per_second),
        ..HostSeries::default()
    };
    for (before, now) in steps {
        let pair = match (before, now) {
            (Some(b), Some(n))
                if n.t > b.t && b.host.known & n.host.known & known::NETFILTER != 0 =>
            {
                Some((&b.host, &n.host, n.t - b.t))
            }
            _ => None,
        };
        h.new_flows_per_second
            .push(pair.map(|(b, n, secs)| increase(b.new_flows, n.new_flows, false) as f64 / secs));
        h.netfilter_us_per_packet.push(pair.and_then(|(b, n, _)| {
            let packets = increase(b.nf_packets, n.nf_packets, false);
            let ns = increase(b.nf_ns, n.nf_ns, false);
            (packets > 0).then(|| ns as f64 / packets as f64 / 1e3)
        }));
    }
    h
}
