//! [`Limits::to_oci`]: the `linux.resources` values and JSON names runc reads.

use super::MIB;
use crate::cgroup::limits::Limits;

#[test]
fn the_oci_resources_carry_what_runc_expects() {
    let limits = Limits {
        memory: Some(64 * MIB),
        memory_swap: Some(128 * MIB as i64),
        cpus: Some(0.5),
        cpu_shares: Some(512),
        pids: Some(100),
        blkio_weight: Some(300),
    };
    let r = limits.to_oci();
    let memory = r.memory().unwrap();
    assert_eq!(memory.limit(), Some(64 * MIB as i64));
    assert_eq!(memory.swap(), Some(128 * MIB as i64));
    let cpu = r.cpu().as_ref().unwrap();
    assert_eq!(cpu.quota(), Some(50_000));
    assert_eq!(cpu.period(), Some(100_000));
    assert_eq!(cpu.shares(), Some(512));
    assert_eq!(r.pids().unwrap().limit(), 100);
    assert_eq!(r.block_io().as_ref().unwrap().weight(), Some(300));

    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["memory"]["limit"], 67108864);
    assert_eq!(json["memory"]["swap"], 134217728);
    assert_eq!(json["cpu"]["quota"], 50000);
    assert_eq!(json["cpu"]["period"], 100000);
    assert_eq!(json["cpu"]["shares"], 512);
    assert_eq!(json["pids"]["limit"], 100);
    assert_eq!(json["blockIO"]["weight"], 300);
}

#[test]
fn unlimited_pids_become_minus_one_and_unset_limits_stay_out_of_the_spec() {
    for p in [-1, 0] {
        let l = Limits {
            pids: Some(p),
            ..Limits::default()
        };
        assert_eq!(l.to_oci().pids().unwrap().limit(), -1);
    }
    let r = Limits::default().to_oci();
    assert!(r.memory().is_none() && r.cpu().is_none());
    assert!(r.pids().is_none() && r.block_io().is_none());
    let quota = Limits {
        cpus: Some(1.25),
        ..Limits::default()
    };
    assert_eq!(
        quota.to_oci().cpu().as_ref().unwrap().quota(),
        Some(125_000)
    );
    assert_eq!(quota.to_oci().cpu().as_ref().unwrap().shares(), None);
}
