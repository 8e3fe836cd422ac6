//! `berth-bench syscalls` (run by `cargo xtask bench syscalls` and `probes`): what the syscall probe costs
//! per syscall, against nothing attached and against an empty raw tracepoint program on the
//! same hook, measured interleaved in one process so the machine's noise hits all modes alike.
//!
//! Modes, each `calls` getppid(2) per round, `rounds` rounds, median per mode:
//! - `none`: no program on sys_enter (from this agent);
//! - `noop`: an empty raw tracepoint program on the same hook ([`NoopProgram`], loaded here
//!   with bpf(2), not part of berth's object): the floor any probe pays;
//! - `probe_untracked`: `berth_sys_enter` with the caller in no tracked cgroup (the early exit
//!   every other task on the host takes: one helper, one `TRACKED` lookup);
//! - `probe_tracked`: the caller in a cgroup below the tracked root (a container of berth's);
//! - `probe_tracked_foreign`: the caller in a cgroup outside the root, as another engine's
//!   container is (`/docker/<id>`). Both tracked modes count through the same map entry kind:
//!   they should cost the same.
//!
//! `TRACKED` holds [`FOREIGN_CONTAINERS`] ids besides the two tracked cgroups for the whole
//! run, as on a host with that many other containers; the bench syncs it as the agent's tick
//! does.

use std::{
    fs,
    hint::black_box,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::{MapData, PerCpuHashMap},
    programs::{RawTracePoint, raw_trace_point::RawTracePointLinkId},
};
use berth_common::SyscallKey;
use serde::Serialize;

use berth::{
    cgroup::{Hierarchy, TrackedRoot},
    probes::{self, syscalls},
};

use crate::noop::NoopProgram;

#[derive(Debug, clap::Args)]
pub struct SyscallBenchArgs {
    /// getppid calls per mode per round.
    #[arg(long, default_value_t = 1_000_000)]
    pub calls: u64,
    /// Rounds; each runs every mode once, interleaved.
    #[arg(long, default_value_t = 9)]
    pub rounds: u32,
    /// CPU to pin the measuring thread to.
    #[arg(long, default_value_t = 1)]
    pub cpu: usize,
}

#[derive(Debug, Serialize)]
pub struct SyscallBenchReport {
    pub calls_per_round: u64,
    pub rounds: u32,
    pub cpu: usize,
    /// Median ns per getppid call, by mode.
    pub ns_per_call: ModeValues,
    /// Median minus `none`: what the attached program adds per call.
    pub overhead_ns: ModeValues,
    /// probe_tracked overhead / noop overhead (goal: <= 1.5).
    pub tracked_overhead_vs_noop: f64,
    /// probe_untracked overhead / noop overhead.
    pub untracked_overhead_vs_noop: f64,
    /// probe_tracked ns per call / noop ns per call, the median of the rounds' ratios (whole
    /// syscall; goal <= 1.5).
    pub tracked_call_vs_noop_call: f64,
    /// probe_tracked_foreign ns per call / noop ns per call (goal <= 1.5).
    pub foreign_call_vs_noop_call: f64,
    /// probe_untracked ns per call / noop ns per call (goal <= 1.2).
    pub untracked_call_vs_noop_call: f64,
    /// Ids in `TRACKED` during the run.
    pub tracked_map_entries: usize,
    /// getppid calls the probe counted for the bench cgroup (must be >= rounds * calls).
    pub counted_getppid: u64,
    /// getppid calls it counted for the cgroup tracked by the map (must be >= rounds * calls).
    pub counted_getppid_foreign: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct ModeValues {
    pub none: f64,
    pub noop: f64,
    pub probe_untracked: f64,
    pub probe_tracked: f64,
    pub probe_tracked_foreign: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Cgroup(#[from] berth::cgroup::CgroupError),
    #[error(transparent)]
    Probe(#[from] probes::ProbeLoadError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{op} the no-op raw tracepoint program (bpf(2) needs root or CAP_BPF + CAP_PERFMON): {source}"
    )]
    Noop {
        op: &'static str,
        source: std::io::Error,
    },
    #[error("pinning to CPU {cpu}: {source}")]
    Affinity { cpu: usize, source: std::io::Error },
    #[error(
        "the probe counted {counted} getppid calls, expected at least {expected}: it is not attached where the bench runs"
    )]
    NotCounted { counted: u64, expected: u64 },
}

/// Other engines' containers the `TRACKED` map holds during the bench.
pub const FOREIGN_CONTAINERS: u64 = 200;

/// Removes the bench's cgroups and moves the process back, also on error.
struct CgroupGuard {
    home: PathBuf,
    work: PathBuf,
    root: PathBuf,
    foreign: PathBuf,
}

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        let _ = move_self(&self.home);
        let _ = fs::remove_dir(&self.work);
        let _ = fs::remove_dir(&self.root);
        let _ = fs::remove_dir(&self.foreign);
    }
}

fn mkdir_id(dir: &Path) -> Result<u64, BenchError> {
    use std::os::unix::fs::MetadataExt as _;
    fs::create_dir_all(dir).map_err(|source| BenchError::Io {
        what: "creating",
        path: dir.to_owned(),
        source,
    })?;
    Ok(fs::metadata(dir)
        .map_err(|source| BenchError::Io {
            what: "stat",
            path: dir.to_owned(),
            source,
        })?
        .ino())
}

fn move_self(dir: &Path) -> Result<(), BenchError> {
    let procs = dir.join("cgroup.procs");
    fs::write(&procs, std::process::id().to_string()).map_err(|source| BenchError::Io {
        what: "moving the bench into",
        path: procs,
        source,
    })
}

fn own_v2_cgroup(mount: &Path) -> Result<PathBuf, BenchError> {
    let text = fs::read_to_string("/proc/self/cgroup").map_err(|source| BenchError::Io {
        what: "reading",
        path: "/proc/self/cgroup".into(),
        source,
    })?;
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or("/")
        .trim_start_matches('/');
    Ok(mount.join(rel))
}

fn pin(cpu: usize) -> Result<(), BenchError> {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET bounds-checks nothing, so cap cpu first.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu % libc::CPU_SETSIZE as usize, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) != 0 {
            return Err(BenchError::Affinity {
                cpu,
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}

/// CPU time of the calling thread, user and system (BPF programs on sys_enter run in the
/// syscall, so in its system time), in ns: unlike the wall clock it leaves out the time other
/// processes run while this thread is preempted, so a busy machine does not inflate a mode.
fn thread_cpu_ns() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given; this clock exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

fn getppid_loop(calls: u64) -> f64 {
    let start = thread_cpu_ns();
    for _ in 0..calls {
        // SAFETY: getppid takes no arguments and cannot fail.
        black_box(unsafe { libc::syscall(libc::SYS_getppid) });
    }
    (thread_cpu_ns() - start) as f64 / calls as f64
}

fn program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut RawTracePoint, BenchError> {
    Ok(probes::program_mut(ebpf, name)?)
}

fn attach(ebpf: &mut Ebpf, name: &'static str) -> Result<RawTracePointLinkId, BenchError> {
    Ok(program(ebpf, name)?
        .attach(syscalls::TRACEPOINT)
        .map_err(probes::program_err(name))?)
}

fn detach(
    ebpf: &mut Ebpf,
    name: &'static str,
    link: RawTracePointLinkId,
) -> Result<(), BenchError> {
    Ok(program(ebpf, name)?
        .detach(link)
        .map_err(probes::program_err(name))?)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs the bench and prints its report as JSON on stdout (what the xtask parses).
pub fn execute_syscalls(args: &SyscallBenchArgs) -> anyhow::Result<()> {
    let report = syscalls(args)?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

pub fn syscalls(args: &SyscallBenchArgs) -> Result<SyscallBenchReport, BenchError> {
    let hierarchy = Hierarchy::detect()?;
    let home = own_v2_cgroup(&hierarchy.unified_mount)?;
    let root = TrackedRoot::open(
        &hierarchy.unified_mount,
        &format!("berth-bench-{}", std::process::id()),
    )?;
    let work = root.dir.join("work");
    // A sibling of the root, as another engine's container is.
    let foreign = hierarchy
        .unified_mount
        .join(format!("berth-bench-{}-foreign", std::process::id()));
    let guard = CgroupGuard {
        home: home.clone(),
        work: work.clone(),
        root: root.dir.clone(),
        foreign: foreign.clone(),
    };
    let work_id = mkdir_id(&work)?;
    let foreign_id = mkdir_id(&foreign)?;

    let mut ebpf = probes::load_object(&root, false, None)?;
    // The two tracked cgroups and ids standing for other containers (no cgroup has ids this
    // high).
    let want: std::collections::BTreeSet<u64> = (1..FOREIGN_CONTAINERS)
        .map(|i| u64::MAX - i)
        .chain([foreign_id, work_id])
        .collect();
    let mut tracked = probes::tracked::Tracked::default();
    tracked.sync(&mut ebpf, &want)?;
    program(&mut ebpf, syscalls::PROGRAM)?
        .load()
        .map_err(probes::program_err(syscalls::PROGRAM))?;
    let noop = NoopProgram::load().map_err(|source| BenchError::Noop {
        op: "loading",
        source,
    })?;
    let hook = std::ffi::CString::new(syscalls::TRACEPOINT).expect("no NUL in a tracepoint name");
    pin(args.cpu)?;

    // Modes in index order: none, noop, untracked, tracked, tracked foreign. Odd rounds run them
    // backwards, so a machine getting busier or quieter during a round does not favour one.
    let mut samples: [Vec<f64>; 5] = Default::default();
    let warmup = (args.calls / 10).max(1000);
    let mut run = |samples: &mut [Vec<f64>; 5], mode: usize| {
        getppid_loop(warmup);
        samples[mode].push(getppid_loop(args.calls));
    };
    for round in 0..args.rounds {
        let forward = round % 2 == 0;
        let bare = |samples: &mut [Vec<f64>; 5], run: &mut dyn FnMut(&mut [Vec<f64>; 5], usize)| {
            run(samples, 0);
            let link = noop.attach(&hook).map_err(|source| BenchError::Noop {
                op: "attaching",
                source,
            })?;
            run(samples, 1);
            drop(link);
            Ok::<(), BenchError>(())
        };
        if forward {
            bare(&mut samples, &mut run)?;
        }
        let link = attach(&mut ebpf, syscalls::PROGRAM)?;
        let homes = [(2, &home), (3, &work), (4, &foreign)];
        let order: Vec<_> = if forward {
            homes.to_vec()
        } else {
            homes.iter().rev().copied().collect()
        };
        for (mode, dir) in order {
            move_self(dir)?;
            run(&mut samples, mode);
        }
        move_self(&home)?;
        detach(&mut ebpf, syscalls::PROGRAM, link)?;
        if !forward {
            bare(&mut samples, &mut run)?;
        }
    }

    let count_of = |cgroup_id: u64| -> Result<u64, BenchError> {
        let map = ebpf
            .map("SYSCALLS")
            .ok_or(probes::ProbeLoadError::MissingMap { map: "SYSCALLS" })?;
        let counts =
            PerCpuHashMap::<&MapData, SyscallKey, u64>::try_from(map).map_err(|source| {
                probes::ProbeLoadError::Map {
                    map: "SYSCALLS",
                    source,
                }
            })?;
        let key = SyscallKey {
            cgroup_id,
            nr: libc::SYS_getppid as u32,
            _pad: 0,
        };
        Ok(counts.get(&key, 0).map(|v| v.iter().sum()).unwrap_or(0))
    };
    let counted = count_of(work_id)?;
    let counted_foreign = count_of(foreign_id)?;
    drop(noop);
    drop(ebpf);
    drop(guard);

    let expected = args.calls * u64::from(args.rounds);
    for counted in [counted, counted_foreign] {
        if counted < expected {
            return Err(BenchError::NotCounted { counted, expected });
        }
    }
    // Ratios per round (both sides measured seconds apart), then their median: steadier than
    // a ratio of medians on a machine whose load changes during the run.
    let ratio = |mode: usize| {
        let mut r: Vec<f64> = samples[mode]
            .iter()
            .zip(&samples[1])
            .map(|(x, noop)| x / noop)
            .collect();
        median(&mut r)
    };
    let (untracked_ratio, tracked_ratio, foreign_ratio) = (ratio(2), ratio(3), ratio(4));
    let [none, noop, untracked, tracked_ns, foreign_ns] = samples.map(|mut s| median(&mut s));
    let ns_per_call = ModeValues {
        none,
        noop,
        probe_untracked: untracked,
        probe_tracked: tracked_ns,
        probe_tracked_foreign: foreign_ns,
    };
    let overhead_ns = ModeValues {
        none: 0.0,
        noop: noop - none,
        probe_untracked: untracked - none,
        probe_tracked: tracked_ns - none,
        probe_tracked_foreign: foreign_ns - none,
    };
    Ok(SyscallBenchReport {
        calls_per_round: args.calls,
        rounds: args.rounds,
        cpu: args.cpu,
        tracked_overhead_vs_noop: overhead_ns.probe_tracked / overhead_ns.noop,
        untracked_overhead_vs_noop: overhead_ns.probe_untracked / overhead_ns.noop,
        tracked_call_vs_noop_call: tracked_ratio,
        foreign_call_vs_noop_call: foreign_ratio,
        untracked_call_vs_noop_call: untracked_ratio,
        tracked_map_entries: tracked.len(),
        ns_per_call,
        overhead_ns,
        counted_getppid: counted,
        counted_getppid_foreign: counted_foreign,
    })
}
