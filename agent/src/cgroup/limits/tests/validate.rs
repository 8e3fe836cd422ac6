//! [`Limits::validate`] against a two-CPU, 2 GiB host; [`Limits::merged`] and
//! [`Limits::with_swap_default`].

use super::{MIB, host, invalid};
use crate::cgroup::limits::{Limits, MAX_PIDS, MIN_MEMORY};

#[test]
fn sensible_limits_pass_validation() {
    let limits = Limits {
        memory: Some(64 * MIB),
        memory_swap: Some(128 * MIB as i64),
        cpus: Some(1.5),
        cpu_shares: Some(512),
        pids: Some(100),
        blkio_weight: Some(500),
    };
    limits.validate(&host()).unwrap();
    Limits::default().validate(&host()).unwrap();
    for pids in [-1, 0, 1, MAX_PIDS] {
        let l = Limits {
            pids: Some(pids),
            ..Limits::default()
        };
        l.validate(&host()).unwrap();
    }
    let unlimited_swap = Limits {
        memory_swap: Some(-1),
        ..Limits::default()
    };
    unlimited_swap.validate(&host()).unwrap();
}

#[test]
fn memory_below_six_mib_or_above_the_host_is_rejected_naming_the_flag() {
    let memory = |m| Limits {
        memory: Some(m),
        ..Limits::default()
    };
    assert_eq!(invalid(memory(0)), "--memory 0: must be at least 6MiB");
    assert_eq!(
        invalid(memory(MIN_MEMORY - 1)),
        "--memory 6.0MiB: must be at least 6MiB"
    );
    assert_eq!(
        invalid(memory(4096 * MIB)),
        "--memory 4GiB: this host has 2GiB of memory"
    );
    memory(MIN_MEMORY).validate(&host()).unwrap();
}

#[test]
fn memory_swap_must_cover_memory_need_memory_and_be_accounted() {
    let limits = |memory, swap| Limits {
        memory,
        memory_swap: Some(swap),
        ..Limits::default()
    };
    let below = invalid(limits(Some(128 * MIB), 64 * MIB as i64));
    assert!(
        below.starts_with("--memory-swap 64MiB: must be at least --memory 128MiB"),
        "{below}"
    );
    let alone = invalid(limits(None, 64 * MIB as i64));
    assert!(
        alone.starts_with("--memory-swap 64MiB: set --memory"),
        "{alone}"
    );
    for nonsense in [0, -2] {
        let msg = invalid(limits(Some(64 * MIB), nonsense));
        assert!(msg.starts_with("--memory-swap"), "{msg}");
    }
    let mut no_accounting = host();
    no_accounting.swap_accounting = false;
    let msg = limits(Some(64 * MIB), -1)
        .validate(&no_accounting)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("does not limit swap"), "{msg}");
    // Equal to memory means "no swap" and is fine.
    limits(Some(64 * MIB), 64 * MIB as i64)
        .validate(&host())
        .unwrap();
}

#[test]
fn cpus_that_are_zero_negative_nan_or_above_the_host_are_rejected() {
    let cpus = |c| Limits {
        cpus: Some(c),
        ..Limits::default()
    };
    assert_eq!(invalid(cpus(64.0)), "--cpus 64: this host has 2 CPUs");
    assert_eq!(invalid(cpus(0.0)), "--cpus 0: must be at least 0.01");
    assert_eq!(invalid(cpus(-1.0)), "--cpus -1: must be at least 0.01");
    assert_eq!(invalid(cpus(0.001)), "--cpus 0.001: must be at least 0.01");
    assert_eq!(invalid(cpus(f64::NAN)), "--cpus NaN: not a finite number");
    assert_eq!(
        invalid(cpus(f64::INFINITY)),
        "--cpus inf: not a finite number"
    );
    cpus(2.0).validate(&host()).unwrap();
    cpus(0.01).validate(&host()).unwrap();
}

#[test]
fn shares_pids_and_blkio_weight_out_of_range_are_rejected() {
    let shares = |s| Limits {
        cpu_shares: Some(s),
        ..Limits::default()
    };
    assert_eq!(
        invalid(shares(0)),
        "--cpu-shares 0: must be between 2 and 262144"
    );
    assert!(invalid(shares(262_145)).starts_with("--cpu-shares 262145"));
    let pids = |p| Limits {
        pids: Some(p),
        ..Limits::default()
    };
    assert!(invalid(pids(-2)).starts_with("--pids-limit -2: must be a positive number"));
    assert_eq!(
        invalid(pids(MAX_PIDS + 1)),
        "--pids-limit 4194305: must be between 1 and 4194304"
    );
    let blkio = |w| Limits {
        blkio_weight: Some(w),
        ..Limits::default()
    };
    assert_eq!(
        invalid(blkio(9)),
        "--blkio-weight 9: must be between 10 and 1000"
    );
    assert_eq!(
        invalid(blkio(0)),
        "--blkio-weight 0: must be between 10 and 1000"
    );
    assert!(invalid(blkio(1001)).starts_with("--blkio-weight 1001"));
}

#[test]
fn an_update_overrides_only_the_fields_it_sets() {
    let stored = Limits {
        memory: Some(64 * MIB),
        cpus: Some(1.0),
        pids: Some(10),
        ..Limits::default()
    };
    let update = Limits {
        cpus: Some(0.5),
        pids: Some(-1),
        blkio_weight: Some(100),
        ..Limits::default()
    };
    assert_eq!(
        stored.merged(&update),
        Limits {
            memory: Some(64 * MIB),
            cpus: Some(0.5),
            pids: Some(-1),
            blkio_weight: Some(100),
            ..Limits::default()
        }
    );
    assert_eq!(stored.merged(&Limits::default()), stored);
}

#[test]
fn unset_swap_defaults_to_twice_memory_where_swap_is_accounted() {
    let memory = Limits {
        memory: Some(64 * MIB),
        ..Limits::default()
    };
    assert_eq!(
        memory.with_swap_default(&host()).memory_swap,
        Some(128 * MIB as i64)
    );
    let mut no_accounting = host();
    no_accounting.swap_accounting = false;
    assert_eq!(memory.with_swap_default(&no_accounting), memory);
    let explicit = Limits {
        memory_swap: Some(-1),
        ..memory.clone()
    };
    assert_eq!(explicit.with_swap_default(&host()), explicit);
}
