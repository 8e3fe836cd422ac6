//! CPU time accounting: the sender thread's own run time plus the ksoftirqd threads' run
//! time, both from `schedstat` (first field: `se.sum_exec_runtime`, ns).
//!
//! On veth transmit the receiving side's softirq (the whole forwarding path: HOST's netfilter
//! hooks, routing, bridge, CTR's UDP receive) runs in the sender's context when the bottom
//! half is re-enabled, and is charged to the sender, because this kernel has no
//! CONFIG_IRQ_TIME_ACCOUNTING (with it, softirq time would be taken out of task run time; see
//! `irqtime_account_irq` in kernel/sched/cputime.c). Softirq work that overflows its budget is
//! deferred to ksoftirqd/N, hence both.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

/// A `/proc/<pid>/schedstat` line: time on a CPU, time waiting on a run queue (ns), and
/// the number of times it ran.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Schedstat {
    pub run_ns: u64,
    pub wait_ns: u64,
}

pub fn parse_schedstat(text: &str) -> Option<Schedstat> {
    let mut f = text.split_whitespace().map(str::parse::<u64>);
    Some(Schedstat {
        run_ns: f.next()?.ok()?,
        wait_ns: f.next()?.ok()?,
    })
}

fn read_schedstat(path: &Path) -> io::Result<Schedstat> {
    let text = fs::read_to_string(path)?;
    parse_schedstat(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: unexpected content {text:?}", path.display()),
        )
    })
}

/// Schedstat of the calling thread (`/proc/thread-self/schedstat`), its run time brought up
/// to date first (see [`super::sys::thread_cpu_ns`]). `wait_ns` tells how long the thread
/// was runnable but kept off its CPU by other work: noise on a shared machine.
pub fn own_schedstat() -> Result<Schedstat> {
    super::sys::thread_cpu_ns();
    read_schedstat(Path::new("/proc/thread-self/schedstat"))
        .context("reading /proc/thread-self/schedstat")
}

/// The `ksoftirqd/N` kernel threads, found by name under `proc_root`.
#[derive(Clone, Debug)]
pub struct Ksoftirqd {
    /// (cpu, schedstat path)
    threads: Vec<(u32, PathBuf)>,
}

impl Ksoftirqd {
    pub fn find(proc_root: &Path) -> Result<Self> {
        let mut threads = Vec::new();
        for entry in
            fs::read_dir(proc_root).with_context(|| format!("listing {}", proc_root.display()))?
        {
            let entry = entry?;
            let name = entry.file_name();
            if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let Ok(comm) = fs::read_to_string(entry.path().join("comm")) else {
                continue; // exited meanwhile
            };
            if let Some(cpu) = comm.trim().strip_prefix("ksoftirqd/")
                && let Ok(cpu) = cpu.parse()
            {
                threads.push((cpu, entry.path().join("schedstat")));
            }
        }
        threads.sort();
        anyhow::ensure!(
            !threads.is_empty(),
            "no ksoftirqd/N thread under {}",
            proc_root.display()
        );
        Ok(Ksoftirqd { threads })
    }

    /// Run time of each ksoftirqd thread, ns, in CPU order.
    pub fn runtimes(&self) -> Result<Vec<u64>> {
        self.threads
            .iter()
            .map(|(_, p)| {
                read_schedstat(p)
                    .map(|s| s.run_ns)
                    .with_context(|| format!("reading {}", p.display()))
            })
            .collect()
    }
}

/// Sum of per-thread deltas between two [`Ksoftirqd::runtimes`] readings.
pub fn delta_sum(before: &[u64], after: &[u64]) -> u64 {
    before
        .iter()
        .zip(after)
        .map(|(b, a)| a.saturating_sub(*b))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedstat_fields_are_run_time_then_wait_time() {
        let s = |run_ns, wait_ns| Some(Schedstat { run_ns, wait_ns });
        assert_eq!(parse_schedstat("1234567 89 10\n"), s(1_234_567, 89));
        assert_eq!(parse_schedstat("0 0 0\n"), s(0, 0));
        assert_eq!(parse_schedstat(""), None);
        assert_eq!(parse_schedstat("12"), None);
        assert_eq!(parse_schedstat("x 1 2"), None);
    }

    #[test]
    fn ksoftirqd_threads_are_found_by_name_in_a_proc_fixture() {
        let root = std::env::temp_dir().join(format!("bb-cpu-fixture-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        for (pid, comm, stat) in [
            ("14", "ksoftirqd/0\n", "500 1 2\n"),
            ("22", "ksoftirqd/1\n", "700 1 2\n"),
            ("30", "kworker/0:1\n", "999 1 2\n"),
        ] {
            fs::create_dir_all(root.join(pid)).unwrap();
            fs::write(root.join(pid).join("comm"), comm).unwrap();
            fs::write(root.join(pid).join("schedstat"), stat).unwrap();
        }
        fs::create_dir_all(root.join("self")).unwrap();
        let k = Ksoftirqd::find(&root).unwrap();
        assert_eq!(k.runtimes().unwrap(), vec![500, 700]);
        fs::write(root.join("22/schedstat"), "1700 1 2\n").unwrap();
        assert_eq!(delta_sum(&[500, 700], &k.runtimes().unwrap()), 1000);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn own_run_time_grows_with_work() {
        let a = own_schedstat().unwrap().run_ns;
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(own_schedstat().unwrap().run_ns > a);
    }
}
