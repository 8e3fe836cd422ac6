//! The series store and the query over it, on fixture snapshots with chosen counters.

use std::time::{Duration, UNIX_EPOCH};

use super::{
    query::{QueryError, QueryParams, run},
    series::{Series, SeriesConfig},
};
use crate::model::{
    Snapshot,
    fixture::{self, MAP_ID, TAKEN_AT},
};

/// The fixture at `TAKEN_AT + secs`, with `media`'s CPU seconds and read syscalls set.
fn at(secs: f64, cpu_seconds: f64, reads: u64) -> Snapshot {
    let mut s = fixture::snapshot_at(Duration::ZERO, 100);
    s.taken_at = UNIX_EPOCH + Duration::from_secs(TAKEN_AT) + Duration::from_secs_f64(secs);
    let media = &mut s.containers[0];
    assert_eq!(media.id, MAP_ID);
    if let Some(st) = media.stats.as_mut() {
        st.cpu_usage_seconds = cpu_seconds;
        st.memory_usage_bytes = 1000 + secs as u64;
    }
    media.syscalls[0].count = reads;
    s
}

fn q(window: u64, step: Option<u64>) -> QueryParams {
    QueryParams {
        window: Duration::from_secs(window),
        step: step.map(Duration::from_secs),
        container: Some("media".into()),
        ..QueryParams::default()
    }
}

#[test]
fn one_frame_per_resolution_then_one_per_coarse_step_within_each_span() {
    let cfg = SeriesConfig {
        resolution: Duration::from_secs(1),
        fine_span: Duration::from_secs(60),
        coarse_step: Duration::from_secs(10),
        coarse_span: Duration::from_secs(300),
    };
    let mut s = Series::new(cfg);
    // Ticks every 0.5 s for 400 s: only one per second is kept.
    for i in 0..800 {
        s.record(&at(f64::from(i) * 0.5, 0.0, 0));
    }
    let newest = s.newest().unwrap();
    assert_eq!(newest, (TAKEN_AT as f64) + 399.0);
    let frames = s.frames();
    let fine: Vec<f64> = frames
        .iter()
        .filter(|f| newest - f.t <= 60.0)
        .map(|f| f.t)
        .collect();
    assert_eq!(fine.len(), 61, "one per second for the last minute");
    assert!(fine.windows(2).all(|w| w[1] - w[0] == 1.0));
    let coarse: Vec<f64> = frames
        .iter()
        .filter(|f| newest - f.t > 60.0)
        .map(|f| f.t)
        .collect();
    assert!(coarse.windows(2).all(|w| w[1] - w[0] == 10.0), "{coarse:?}");
    // Coarse frames fall every 10 s from the first tick (t=0): t=100 is the oldest within 300 s.
    assert_eq!(newest - coarse[0], 299.0, "nothing past the coarse span");
    assert_eq!(coarse.len(), 24, "t=100 to t=330, every 10 s");
}

#[test]
fn rates_are_counter_deltas_over_the_step_and_a_reset_counts_from_zero() {
    let mut s = Series::new(SeriesConfig::default());
    // CPU: half a core; reads: 1000/s. At t=6 the container restarts in a new cgroup and
    // its counters start again (CPU 0.25 s, 300 reads).
    for t in 0..=10u32 {
        let mut snap = if t < 6 {
            at(f64::from(t), 0.5 * f64::from(t), 1000 * u64::from(t))
        } else {
            at(
                f64::from(t),
                0.25 + 0.5 * f64::from(t - 6),
                300 + 1000 * u64::from(t - 6),
            )
        };
        if t >= 6 {
            snap.containers[0].cgroup_id = Some(999);
        }
        s.record(&snap);
    }
    let v = run(&s, &q(10, None)).unwrap();
    assert_eq!(
        (v.window_seconds, v.step_seconds, v.resolution_seconds),
        (10.0, 1.0, 1.0)
    );
    assert_eq!(v.timestamps.first(), Some(&(TAKEN_AT as f64 + 1.0)));
    assert_eq!(v.timestamps.last(), Some(&(TAKEN_AT as f64 + 10.0)));
    let media = &v.containers[..];
    assert_eq!(media.len(), 1);
    let sys = &media[0].series.syscalls_per_second;
    let want: Vec<Option<f64>> = (1..=10)
        .map(|t| Some(if t == 6 { 1500.0 } else { 1000.0 }))
        .collect();
    // Only reads move; at the reset, every count of the new cgroup is new: 300 reads and the
    // fixture's 1200 writes.
    assert_eq!(sys, &want);
    let cpu: Vec<Option<f64>> = media[0]
        .series
        .cpu_cores
        .iter()
        .map(|c| c.map(|c| (c * 1e6).round() / 1e6))
        .collect();
    let want: Vec<Option<f64>> = (1..=10)
        .map(|t| Some(if t == 6 { 0.25 } else { 0.5 }))
        .collect();
    assert_eq!(cpu, want);
    let mem: Vec<Option<f64>> = (1..=10).map(|t| Some(1000.0 + f64::from(t))).collect();
    assert_eq!(media[0].series.memory_bytes, mem);

    // Five-second steps: the rate over each step, from frames five seconds apart.
    let v = run(&s, &q(10, Some(5))).unwrap();
    assert_eq!(
        v.timestamps,
        [TAKEN_AT as f64 + 5.0, TAKEN_AT as f64 + 10.0]
    );
    // 0 -> 5000 reads, then a new cgroup that counts 4300 reads and 1200 writes at t=10.
    assert_eq!(
        v.containers[0].series.syscalls_per_second,
        [Some(1000.0), Some(1100.0)]
    );
}

#[test]
fn a_container_not_present_yet_and_a_missing_probe_read_null() {
    let mut s = Series::new(SeriesConfig::default());
    for t in 0..=4u32 {
        let mut snap = at(f64::from(t), f64::from(t), 0);
        if t < 2 {
            snap.containers.remove(0);
        }
        snap.probes.retain(|p| p.name != "syscalls");
        snap.netfilter = None;
        s.record(&snap);
    }
    let v = run(&s, &q(5, None)).unwrap();
    let m = &v.containers[0].series;
    assert_eq!(
        m.cpu_cores,
        [None, None, None, Some(1.0), Some(1.0)],
        "no frame before t=0, absent at t=0 and 1, no previous frame at t=2"
    );
    assert_eq!(m.memory_bytes[..3], [None, None, Some(1002.0)]);
    assert!(
        m.syscalls_per_second.iter().all(Option::is_none),
        "the probe is down"
    );
    assert!(m.netfilter_us_per_packet.iter().all(Option::is_none));
    assert!(v.host.new_flows_per_second.iter().all(Option::is_none));
    // The host's CPU is the containers' sum: media (1.0) and legacy (constant: 0).
    assert_eq!(v.host.cpu_cores[4], Some(1.0));
}

#[test]
fn long_windows_read_the_one_minute_tier_and_bad_parameters_name_themselves() {
    let mut s = Series::new(SeriesConfig::default());
    assert_eq!(run(&s, &q(300, None)), Err(QueryError::Empty));
    for t in 0..=1200u32 {
        s.record(&at(f64::from(t), 0.1 * f64::from(t), 10 * u64::from(t)));
    }
    let v = run(&s, &q(1200, None)).unwrap();
    assert_eq!(
        (v.resolution_seconds, v.step_seconds, v.timestamps.len()),
        (60.0, 60.0, 20)
    );
    let sys = &v.containers[0].series.syscalls_per_second;
    assert!(sys.iter().all(|r| *r == Some(10.0)), "{sys:?}");
    let err = |p: QueryParams| run(&s, &p).unwrap_err().to_string();
    assert!(err(q(1200, Some(5))).starts_with("step=5s"));
    assert!(err(q(0, None)).starts_with("window=0s"));
    assert!(err(q(7200, None)).starts_with("window=7200s"));
    assert!(err(q(10, Some(20))).starts_with("step=20s"));
    assert!(
        err(QueryParams {
            sort: "bogus".into(),
            ..q(10, None)
        })
        .starts_with("sort=bogus")
    );
    assert!(
        err(QueryParams {
            top: Some(0),
            ..q(10, None)
        })
        .starts_with("top=0")
    );
    assert!(
        err(QueryParams {
            container: Some("nope".into()),
            ..q(10, None)
        })
        .starts_with("container=nope")
    );
}

#[test]
fn sort_and_top_order_containers_by_their_mean() {
    let mut s = Series::new(SeriesConfig::default());
    for t in 0..=5u32 {
        s.record(&at(f64::from(t), f64::from(t), 0));
    }
    let p = QueryParams {
        window: Duration::from_secs(5),
        sort: "cpu".into(),
        ..QueryParams::default()
    };
    let v = run(&s, &p).unwrap();
    let names: Vec<&str> = v.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        ["media", "legacy"],
        "media uses a core, legacy none; batch has no cgroup"
    );
    let v = run(
        &s,
        &QueryParams {
            top: Some(1),
            sort: "memory_bytes".into(),
            ..p.clone()
        },
    )
    .unwrap();
    assert_eq!(v.containers.len(), 1);
    assert_eq!(
        v.containers[0].name, "legacy",
        "10 MiB against media's ~1 kB"
    );
    let v = run(
        &s,
        &QueryParams {
            name: Some("leg".into()),
            ..p
        },
    )
    .unwrap();
    assert_eq!(v.containers.len(), 1);
}

/// The fixture's first container a hundred times over, each with an id, a name and a cgroup of
/// its own.
fn hundred_containers() -> Snapshot {
    let mut snap = fixture::snapshot_at(Duration::ZERO, 100);
    let proto = snap.containers[0].clone();
    snap.containers = (0..100)
        .map(|i| {
            let mut c = proto.clone();
            c.id = format!("{i:064x}");
            c.name = format!("container-{i}");
            c.cgroup_id = Some(1000 + i as u64);
            c
        })
        .collect();
    snap
}

#[test]
fn the_store_stays_within_its_documented_bound_when_full() {
    let cfg = SeriesConfig::default();
    let n = 100;
    let mut snap = hundred_containers();
    let mut s = Series::new(cfg);
    // An hour and a bit at one tick a second fills both tiers; every container ran at every
    // tick, so no frame shares a point with the one before (the worst case).
    for t in 0..3700u64 {
        snap.taken_at = UNIX_EPOCH + Duration::from_secs(TAKEN_AT + t);
        for c in &mut snap.containers {
            if let Some(st) = c.stats.as_mut() {
                st.cpu_usage_seconds += 0.01;
            }
        }
        s.record(&snap);
    }
    let used = s.heap_bytes();
    let bound = Series::bound_bytes(&cfg, n, 128);
    assert!(used <= bound, "{used} bytes held, bound {bound}");
    assert!(used * 2 > bound, "the store is full: {used} of {bound}");
    // The figure docs/api.md states: at most 10.5 MiB at 100 containers.
    assert!(bound <= 21 << 19, "bound at 100 containers: {bound}");
    assert_eq!(
        s.frames().len(),
        601 + 50,
        "10 min at 1 s, then the minutes of the hour before"
    );
}

#[test]
fn containers_at_rest_share_their_points_across_frames() {
    let cfg = SeriesConfig::default();
    let n = 100;
    let mut snap = hundred_containers();
    let mut s = Series::new(cfg);
    // Ten minutes at rest but for one container, whose CPU time moves at every tick.
    for t in 0..600u64 {
        snap.taken_at = UNIX_EPOCH + Duration::from_secs(TAKEN_AT + t);
        if let Some(st) = snap.containers[7].stats.as_mut() {
            st.cpu_usage_seconds += 0.01;
        }
        s.record(&snap);
    }
    let frames = s.frames();
    let (first, last) = (frames[0], frames[frames.len() - 1]);
    let slot = |f: &crate::history::series::Frame, i: usize| f.points[i].1.clone();
    // The 99 at rest hold the point of the first frame; the busy one a point of its own.
    let shared = (0..n)
        .filter(|&i| std::sync::Arc::ptr_eq(&slot(first, i), &slot(last, i)))
        .count();
    assert_eq!(shared, n - 1);
    assert!(last.point(first.points[7].0).unwrap().cpu_ns > first.points[7].1.cpu_ns);
    // A point per container once, then a pointer per container per frame and one point a
    // frame: under a fifth of a store that holds a point per container per frame.
    let used = s.heap_bytes();
    let unshared = 600 * n * std::mem::size_of::<crate::history::series::Point>();
    assert!(used * 5 < unshared, "{used} bytes held at rest");
}

#[test]
fn containers_gone_for_longer_than_the_history_free_their_slot() {
    let cfg = SeriesConfig {
        resolution: Duration::from_secs(1),
        fine_span: Duration::from_secs(10),
        coarse_step: Duration::from_secs(5),
        coarse_span: Duration::from_secs(20),
    };
    let mut s = Series::new(cfg);
    // A new container id every tick for 200 ticks: slots stay bounded by the span.
    for t in 0..200u32 {
        let mut snap = at(f64::from(t), 0.0, 0);
        snap.containers[0].id = format!("{t:064x}");
        s.record(&snap);
    }
    let bytes = s.heap_bytes();
    assert!(bytes <= Series::bound_bytes(&cfg, 30, 128), "{bytes}");
}

/// 100 containers with 300 syscalls each (latency on), one publishing 20,000 UDP ports that
/// all saw traffic, ticked every second for 15 minutes: the window starts stay within their
/// stated bound, and the window answers are exact for what the starts keep.
#[test]
fn window_starts_stay_within_their_documented_bound_at_scale_and_answer_right() {
    use std::sync::Arc;

    use crate::model::{
        CtState, Family, Hook, PortCost, PortRange, Proto, Publish, SyscallCount, ports::Base,
    };

    let n = 100u16;
    let udp = |start: u16, end: u16| Publish {
        host_ip: None,
        host: PortRange::new(start, end).expect("range"),
        container: PortRange::new(start, end).expect("range"),
        proto: Proto::Udp,
    };
    let mut snap = fixture::snapshot_at(Duration::ZERO, 100);
    let proto = snap.containers[0].clone();
    let calls: Vec<SyscallCount> = (0..300u32)
        .map(|nr| SyscallCount {
            nr,
            name: format!("sys{nr}").into(),
            count: 1000 + u64::from(nr),
            latency_buckets: vec![1; 32],
            latency_sum_ns: 32_000,
        })
        .collect();
    snap.containers = (0..n)
        .map(|i| {
            let mut c = proto.clone();
            c.id = format!("{i:064x}");
            c.name = format!("container-{i}");
            c.cgroup_id = Some(1000 + u64::from(i));
            c.network.publish = vec![if i == 0 {
                udp(20000, 39999)
            } else {
                udp(40000 + i, 40000 + i)
            }];
            c.syscalls = calls.clone();
            c
        })
        .collect();
    let cost = |port, hook, packets: u64, ns: u64| PortCost {
        family: Family::Ipv4,
        proto: 17,
        port,
        hook,
        ct_state: CtState::New,
        packets,
        nanoseconds: packets * ns,
    };
    let mut by_port = Vec::new();
    for port in (20000..=39999).chain(40001..40000 + n) {
        by_port.push(cost(port, Hook::Prerouting, 2, 1_000));
        by_port.push(cost(port, Hook::Postrouting, 2, 500));
    }
    const HOT: u16 = 20007;
    let hot = by_port
        .iter()
        .position(|p| p.port == HOT && p.hook == Hook::Prerouting)
        .expect("hot port");
    snap.netfilter.as_mut().expect("netfilter").by_port = by_port;
    let range_ports: Vec<usize> = std::iter::once(20_000)
        .chain(std::iter::repeat_n(1, usize::from(n) - 1))
        .collect();

    let history = super::History::new(Duration::from_secs(5), Duration::from_secs(900));
    let mut snap = Arc::new(snap);
    let mut at_840 = None;
    // 15 minutes at one tick a second: the hot port takes 50 new flows a second at 3 µs
    // each; container 5 makes 10 calls of syscall 3 a second.
    for t in 0..900u64 {
        let s = Arc::make_mut(&mut snap);
        s.taken_at = UNIX_EPOCH + Duration::from_secs(TAKEN_AT + t);
        let p = &mut s.netfilter.as_mut().expect("netfilter").by_port[hot];
        p.packets += 50;
        p.nanoseconds += 50 * 3_000;
        s.containers[5].syscalls[3].count += 10;
        if t == 840 {
            at_840 = Some(Base::of(s, None));
        }
        history.push(snap.clone());
    }
    let now = snap.as_ref();

    let (starts, bytes) = history.bases_held();
    let bound = history.bases_bound_bytes(usize::from(n), &range_ports);
    eprintln!("{starts} window starts hold {bytes} bytes, bound {bound}");
    assert!(
        bytes <= bound,
        "{starts} starts hold {bytes} bytes, bound {bound}"
    );
    assert!(starts >= 50, "15 minutes of starts: {starts}");
    // The figure docs/api.md states: at most 4.1 MiB at this scale.
    assert!(bound <= (41 << 20) / 10, "bound at 100 containers: {bound}");
    // All but two containers at rest: their entries are shared from start to start.
    assert!(
        bytes * 4 < bound,
        "{bytes} bytes held with 98 containers at rest"
    );

    // Last minute: the start at 840 s (59 s back).
    let base = history
        .since(now.taken_at - Duration::from_secs(60))
        .expect("a start a minute back");
    assert_eq!(
        base.taken_at,
        UNIX_EPOCH + Duration::from_secs(TAKEN_AT + 840)
    );
    let rows = now.range_costs(Some(&base));
    let big = rows.iter().find(|r| r.name == "container-0").expect("row");
    let nf = big.netfilter.as_ref().expect("netfilter");
    assert_eq!(nf.window_seconds, Some(59.0));
    assert_eq!(nf.new_flows_per_second, Some(50.0));
    assert_eq!(
        nf.window_us_per_second,
        Some(150.0),
        "50 flows x 3 µs a second"
    );
    assert_eq!(nf.ports[0].port, HOT);
    assert_eq!(nf.ports[0].new_flows_per_second, Some(50.0));
    assert_eq!(nf.ports[0].window_us_per_packet, Some(3.0));
    // A kept quiet port is quiet over the window.
    let kept = nf
        .ports
        .iter()
        .find(|p| p.port == 20001)
        .expect("port 20001");
    assert_eq!(kept.window_us_per_second, Some(0.0));
    // The reduced start counts new flows like the whole snapshot did.
    let c0 = &now.containers[0];
    let whole = at_840.expect("start at 840");
    assert_eq!(base.new_flows(c0), whole.new_flows(c0));
    assert_eq!(
        base.new_flows(c0),
        2 * 20_000 + 50 * 841,
        "new flows at prerouting"
    );
    // Container 5's busiest syscalls at the start, syscall 3 first.
    let c5 = &now.containers[5];
    let calls = base.syscalls(c5);
    assert_eq!(calls.len(), crate::model::ports::SYSCALLS_KEPT);
    assert_eq!((calls[0].nr, calls[0].count), (3, 1003 + 10 * 841));
    assert_eq!(
        c5.syscalls[3].count - calls[0].count,
        590,
        "59 s at 10 a second"
    );
    assert_eq!(
        (calls[0].latency_calls, calls[0].latency_sum_ns),
        (32, 32_000)
    );

    // Ten minutes: a coarse start, less than 30 s later than asked; rates stay exact.
    let base = history
        .since(now.taken_at - Duration::from_secs(600))
        .expect("a start ten minutes back");
    let nf = now
        .range_costs(Some(&base))
        .into_iter()
        .find(|r| r.name == "container-0")
        .and_then(|r| r.netfilter)
        .expect("row");
    let secs = nf.window_seconds.expect("window");
    assert!((571.0..=600.0).contains(&secs), "{secs}");
    assert_eq!(nf.new_flows_per_second, Some(50.0));
}
