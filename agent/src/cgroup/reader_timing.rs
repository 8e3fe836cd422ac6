use std::time::Instant;

use super::*;
use crate::cgroup::limits::ContainerCgroup;

/// Removes the cgroups, then their parent, on drop.
struct Made(Vec<ContainerCgroup>, ContainerCgroup);

impl Drop for Made {
    fn drop(&mut self) {
        for cg in self.0.iter().chain(std::iter::once(&self.1)) {
            if let Err(e) = cg.remove() {
                eprintln!("cleanup of {}: {e}", cg.path());
            }
        }
    }
}

/// CPU time of this thread: (user, system), in µs.
fn thread_cpu() -> (f64, f64) {
    // SAFETY: getrusage with a valid pointer to a zeroed local struct.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) };
    let us = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
    (us(u.ru_utime), us(u.ru_stime))
}

#[test]
#[ignore = "timing by hand, as root on real cgroupfs"]
fn read_timing_of_50_real_cgroups() {
    const CGROUPS: usize = 50;
    const ROUNDS: usize = 1000;
    let h = Hierarchy::detect().unwrap();
    let parent = format!("/berth-readbench-{}", std::process::id());
    let cgs: Vec<ContainerCgroup> = (0..CGROUPS)
        .map(|i| ContainerCgroup::new(&h, &format!("{parent}/c{i}")))
        .collect();
    let made = Made(cgs, ContainerCgroup::new(&h, &parent));
    for cg in &made.0 {
        cg.create().unwrap();
    }
    let ids: Vec<Option<u64>> = made.0.iter().map(|cg| cg.v2_id()).collect();
    let mut cache = StatsCache::new(h.clone(), 10_000);
    for (cg, id) in made.0.iter().zip(&ids) {
        cache.read(cg.path(), *id, 0).unwrap();
    }
    let (u0, s0) = thread_cpu();
    let start = Instant::now();
    for _ in 0..ROUNDS {
        for (cg, id) in made.0.iter().zip(&ids) {
            std::hint::black_box(cache.read(cg.path(), *id, 0).unwrap());
        }
    }
    let wall = start.elapsed().as_secs_f64() * 1e6;
    let (u1, s1) = thread_cpu();
    let n = (CGROUPS * ROUNDS) as f64;
    eprintln!(
        "{:?}: {CGROUPS} cgroups x {ROUNDS} rounds, {} files kept: {:.2} µs wall per \
         container read ({:.2} µs user, {:.2} µs system)",
        h.mode,
        cache.open_count(),
        wall / n,
        (u1 - u0) / n,
        (s1 - s0) / n,
    );
}
