//! `berth-bench syscalls` (run by `cargo xtask bench syscalls` and `probes`): what the syscall probe costs
//! per syscall, against nothing attached and against an empty raw tracepoint program on the
//! same hook, measured interleaved in one process so the machine's noise hits all modes alike.
//!
//! Modes, each `calls` getppid(2) per round, `rounds` rounds, median per mode:
//! - `none`: no program on sys_enter (from this agent);
//! - `noop`: an empty raw tracepoint program on the same hook ([`NoopProgram`], loaded here
//!   with bpf(2), not part of berth's object): the floor any probe pays;
//! - `probe_untracked`: `berth_sys_enter` with the caller outside the tracked subtree (the
//!   early-exit path every other task on the host takes);
//! - `probe_tracked`: `berth_sys_enter` with the caller in a tracked cgroup (counting path).

use std::{
    fs,
    hint::black_box,
    path::{Path, PathBuf},
    time::Instant,
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
    /// probe_tracked ns per call / noop ns per call (whole syscall).
    pub tracked_call_vs_noop_call: f64,
    /// getppid calls the probe counted for the bench cgroup (must be >= rounds * calls).
    pub counted_getppid: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct ModeValues {
    pub none: f64,
    pub noop: f64,
    pub probe_untracked: f64,
    pub probe_tracked: f64,
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

/// Removes the bench's cgroups and moves the process back, also on error.
struct CgroupGuard {
    home: PathBuf,
    work: PathBuf,
    root: PathBuf,
}

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        let _ = move_self(&self.home);
        let _ = fs::remove_dir(&self.work);
        let _ = fs::remove_dir(&self.root);
    }
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

fn getppid_loop(calls: u64) -> f64 {
    let start = Instant::now();
    for _ in 0..calls {
        // SAFETY: getppid takes no arguments and cannot fail.
        black_box(unsafe { libc::syscall(libc::SYS_getppid) });
    }
    start.elapsed().as_nanos() as f64 / calls as f64
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
    fs::create_dir_all(&work).map_err(|source| BenchError::Io {
        what: "creating",
        path: work.clone(),
        source,
    })?;
    let guard = CgroupGuard {
        home: home.clone(),
        work: work.clone(),
        root: root.dir.clone(),
    };
    let work_id = {
        use std::os::unix::fs::MetadataExt as _;
        fs::metadata(&work)
            .map_err(|source| BenchError::Io {
                what: "stat",
                path: work.clone(),
                source,
            })?
            .ino()
    };

    let mut ebpf = probes::load_object(&root, false, None)?;
    program(&mut ebpf, syscalls::PROGRAM)?
        .load()
        .map_err(probes::program_err(syscalls::PROGRAM))?;
    let noop = NoopProgram::load().map_err(|source| BenchError::Noop {
        op: "loading",
        source,
    })?;
    let hook = std::ffi::CString::new(syscalls::TRACEPOINT).expect("no NUL in a tracepoint name");
    pin(args.cpu)?;

    let mut samples: [Vec<f64>; 4] = Default::default();
    let warmup = (args.calls / 10).max(1000);
    for _ in 0..args.rounds {
        // none
        getppid_loop(warmup);
        samples[0].push(getppid_loop(args.calls));
        // noop
        let link = noop.attach(&hook).map_err(|source| BenchError::Noop {
            op: "attaching",
            source,
        })?;
        getppid_loop(warmup);
        samples[1].push(getppid_loop(args.calls));
        drop(link);
        // probe, caller outside the tracked subtree
        let link = attach(&mut ebpf, syscalls::PROGRAM)?;
        getppid_loop(warmup);
        samples[2].push(getppid_loop(args.calls));
        // probe, caller tracked
        move_self(&work)?;
        getppid_loop(warmup);
        samples[3].push(getppid_loop(args.calls));
        move_self(&home)?;
        detach(&mut ebpf, syscalls::PROGRAM, link)?;
    }

    let counted = {
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
            cgroup_id: work_id,
            nr: libc::SYS_getppid as u32,
            _pad: 0,
        };
        counts.get(&key, 0).map(|v| v.iter().sum()).unwrap_or(0)
    };
    drop(noop);
    drop(ebpf);
    drop(guard);

    let expected = args.calls * u64::from(args.rounds);
    if counted < expected {
        return Err(BenchError::NotCounted { counted, expected });
    }
    let [none, noop, untracked, tracked] = samples.map(|mut s| median(&mut s));
    let ns_per_call = ModeValues {
        none,
        noop,
        probe_untracked: untracked,
        probe_tracked: tracked,
    };
    let overhead_ns = ModeValues {
        none: 0.0,
        noop: noop - none,
        probe_untracked: untracked - none,
        probe_tracked: tracked - none,
    };
    Ok(SyscallBenchReport {
        calls_per_round: args.calls,
        rounds: args.rounds,
        cpu: args.cpu,
        tracked_overhead_vs_noop: overhead_ns.probe_tracked / overhead_ns.noop,
        untracked_overhead_vs_noop: overhead_ns.probe_untracked / overhead_ns.noop,
        tracked_call_vs_noop_call: tracked / noop,
        ns_per_call,
        overhead_ns,
        counted_getppid: counted,
    })
}
