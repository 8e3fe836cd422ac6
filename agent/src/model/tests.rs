use std::time::Duration;

use super::{fixture, *};

#[test]
fn ports_belong_to_the_container_whose_range_covers_them() {
    let s = fixture::snapshot();
    assert_eq!(
        s.port_owner(17, 40005).map(|c| c.name.as_str()),
        Some("media")
    );
    assert_eq!(
        s.port_owner(17, 41001).map(|c| c.name.as_str()),
        Some("legacy")
    );
    assert!(s.port_owner(6, 40005).is_none(), "tcp is not published");
    assert!(s.port_owner(17, 53).is_none());
}

#[test]
fn container_cost_sums_every_hook_and_state_of_its_ports_and_nothing_else() {
    let s = fixture::snapshot();
    let by = s.container_netfilter();
    let media = by[&(0, Hook::Prerouting, CtState::New)];
    assert_eq!(media.packets, 200);
    assert_eq!(media.ns_per_packet(), Some(2_500.0));
    assert_eq!(by[&(0, Hook::Postrouting, CtState::New)].packets, 200);
    assert_eq!(
        by[&(0, Hook::Prerouting, CtState::Established)].packets,
        400
    );
    assert_eq!(
        by[&(1, Hook::Prerouting, CtState::New)].ns_per_packet(),
        Some(60_000.0)
    );
    let total: u64 = by.values().map(|c| c.packets).sum();
    assert_eq!(total, 200 + 200 + 400 + 200, "port 53 belongs to nobody");
}

#[test]
fn new_flow_cost_is_prerouting_new_state_only() {
    let s = fixture::snapshot();
    let c = s.new_flow_cost(&s.containers[0]);
    assert_eq!((c.packets, c.nanoseconds), (200, 500_000));
    assert_eq!(c.us_per_packet(), 2.5);
    assert_eq!(s.new_flow_cost(&s.containers[2]), ports::Cost::default());
}

#[test]
fn range_costs_give_per_hook_per_port_and_a_rate_over_the_window() {
    let base = fixture::snapshot_at(Duration::ZERO, 100);
    let now = fixture::snapshot_at(Duration::from_secs(10), 300);
    let rows = now.range_costs(Some(&ports::Base::of(&base, None)));
    assert_eq!(rows.len(), 2);
    // Costliest over the window first: legacy's 200 new flows at 60 µs, 1.2 ms a second.
    assert_eq!(rows[0].name, "legacy");
    let legacy = rows[0].netfilter.as_ref().unwrap();
    assert_eq!(legacy.window_us_per_second, Some(1200.0));
    assert_eq!(legacy.window_us_per_packet, Some(60.0));
    let media = &rows[1];
    assert_eq!(
        (media.name, media.backend),
        ("media", Some(BackendKind::NftMap))
    );
    let nf = media.netfilter.as_ref().unwrap();
    assert_eq!(nf.new_flows, 300);
    assert_eq!(nf.new_flows_per_second, Some(20.0));
    assert_eq!(nf.prerouting_packets, 700);
    assert_eq!(nf.ports[0].port, 40000);
    // 200 prerouting packets in 10 s, 2.5 µs each, and 1 µs more each at postrouting (40009).
    assert_eq!(nf.window_seconds, Some(10.0));
    assert_eq!(nf.window_us_per_packet, Some(3.5));
    assert_eq!(nf.window_us_per_second, Some(70.0));
    let port = &nf.ports[0];
    assert_eq!(
        (
            port.window_us_per_packet,
            port.window_us_per_second,
            port.new_flows_per_second
        ),
        (Some(2.5), Some(50.0), Some(20.0))
    );
    assert_eq!(nf.hooks.len(), 3);
    assert!(rows.iter().all(|r| r.netfilter.is_some()));
    // Without a base there is no rate; without the probe no cost at all.
    assert_eq!(
        now.range_costs(None)[0]
            .netfilter
            .as_ref()
            .unwrap()
            .new_flows_per_second,
        None
    );
    let mut down = now.clone();
    down.netfilter = None;
    assert!(down.range_costs(None).iter().all(|r| r.netfilter.is_none()));
}

#[test]
fn find_takes_an_id_a_name_or_a_unique_prefix() {
    let s = fixture::snapshot();
    assert_eq!(s.find("media").unwrap().id, fixture::MAP_ID);
    assert_eq!(s.find(fixture::IPT_ID).unwrap().name, "legacy");
    assert_eq!(s.find("ccc").unwrap().name, "batch");
    assert!(matches!(s.find("nope"), Err(FindError::NotFound { .. })));
    let mut two = s.clone();
    two.containers[1].id = format!("aa{}", &fixture::IPT_ID[2..]);
    assert!(matches!(
        two.find("aa"),
        Err(FindError::Ambiguous { matches: 2, .. })
    ));
}

#[test]
fn cgroups_lists_containers_and_other_cgroups_by_path() {
    let s = fixture::snapshot();
    let paths: Vec<&str> = s.cgroups().iter().map(|c| c.path).collect();
    assert_eq!(paths.len(), 3, "the exited container has no cgroup");
    let mut sorted = paths.clone();
    sorted.sort();
    assert_eq!(paths, sorted);
    assert!(paths.contains(&"/berth/we\"ird\\name"));
}

#[test]
fn engine_names_are_the_serde_names() {
    for e in Engine::ALL {
        assert_eq!(serde_json::to_value(e).unwrap(), e.name());
        assert_eq!(e.to_string(), e.name());
    }
    assert!(Engine::Berth.is_berth() && !Engine::Docker.is_berth());
}
