//! Each controller writer on its own, against one controller directory in a temp dir (the files
//! the kernel would have made are pre-created): the cases the whole-cgroup tests in
//! `limits/tests/container.rs` do not reach.

use super::{Blkio, Controller, Cpu, Memory, Pids};
use crate::cgroup::{
    ControllerDir,
    limits::{
        Limits,
        tests::{MIB, read, write},
    },
};

/// A controller directory holding `files` (name, content), as v1 or v2.
fn dir_with(v2: bool, files: &[(&str, &str)]) -> (tempfile::TempDir, ControllerDir) {
    let tmp = tempfile::tempdir().unwrap();
    for (name, content) in files {
        write(tmp.path(), name, content);
    }
    let path = tmp.path().to_path_buf();
    let dir = if v2 {
        ControllerDir::V2(path)
    } else {
        ControllerDir::V1(path)
    };
    (tmp, dir)
}

#[test]
fn each_controller_names_the_flag_that_asked_for_it_and_skips_unset_limits() {
    let none = Limits::default();
    assert_eq!(Memory::requested_by(&none), None);
    assert_eq!(Cpu::requested_by(&none), None);
    assert_eq!(Pids::requested_by(&none), None);
    assert_eq!(Blkio::requested_by(&none), None);
    let swap_only = Limits {
        memory_swap: Some(-1),
        ..Limits::default()
    };
    assert_eq!(Memory::requested_by(&swap_only), Some("--memory"));
    let shares_only = Limits {
        cpu_shares: Some(512),
        ..Limits::default()
    };
    assert_eq!(Cpu::requested_by(&shares_only), Some("--cpu-shares"));
    let both = Limits {
        cpus: Some(1.0),
        ..shares_only
    };
    assert_eq!(Cpu::requested_by(&both), Some("--cpus"));
    let pids = Limits {
        pids: Some(0),
        ..Limits::default()
    };
    assert_eq!(Pids::requested_by(&pids), Some("--pids-limit"));
    let weight = Limits {
        blkio_weight: Some(10),
        ..Limits::default()
    };
    assert_eq!(Blkio::requested_by(&weight), Some("--blkio-weight"));
}

#[test]
fn pids_zero_and_minus_one_both_lift_the_limit_on_v1_and_v2() {
    for v2 in [false, true] {
        let (_tmp, dir) = dir_with(v2, &[("pids.max", "max\n")]);
        for (limit, shown) in [(20, "20"), (0, "max"), (7, "7"), (-1, "max")] {
            let limits = Limits {
                pids: Some(limit),
                ..Limits::default()
            };
            Pids::apply(&limits, &dir).unwrap();
            assert_eq!(read(dir.path(), "pids.max"), shown, "v2={v2} limit={limit}");
        }
    }
}

#[test]
fn v1_memory_alone_or_swap_alone_writes_only_its_own_file() {
    let unlimited = "9223372036854771712\n";
    let (_tmp, dir) = dir_with(
        false,
        &[
            ("memory.limit_in_bytes", unlimited),
            ("memory.memsw.limit_in_bytes", unlimited),
        ],
    );
    let memory = Limits {
        memory: Some(64 * MIB),
        ..Limits::default()
    };
    Memory::apply(&memory, &dir).unwrap();
    assert_eq!(read(dir.path(), "memory.limit_in_bytes"), "67108864");
    assert_eq!(
        read(dir.path(), "memory.memsw.limit_in_bytes"),
        unlimited.trim()
    );
    let swap = Limits {
        memory_swap: Some(96 * MIB as i64),
        ..Limits::default()
    };
    Memory::apply(&swap, &dir).unwrap();
    assert_eq!(read(dir.path(), "memory.limit_in_bytes"), "67108864");
    assert_eq!(read(dir.path(), "memory.memsw.limit_in_bytes"), "100663296");
}

#[test]
fn v2_cpu_shares_alone_set_the_weight_and_leave_the_quota() {
    let (_tmp, dir) = dir_with(
        true,
        &[("cpu.max", "max 100000\n"), ("cpu.weight", "100\n")],
    );
    let shares = Limits {
        cpu_shares: Some(2),
        ..Limits::default()
    };
    Cpu::apply(&shares, &dir).unwrap();
    assert_eq!(read(dir.path(), "cpu.weight"), "1");
    assert_eq!(read(dir.path(), "cpu.max"), "max 100000");
}

#[test]
fn v1_blkio_weight_falls_back_to_blkio_weight_unconverted_without_bfq() {
    let (_tmp, dir) = dir_with(false, &[("blkio.weight", "500\n")]);
    let weight = Limits {
        blkio_weight: Some(300),
        ..Limits::default()
    };
    Blkio::apply(&weight, &dir).unwrap();
    assert_eq!(read(dir.path(), "blkio.weight"), "300");
    // With both files, BFQ's wins and the legacy one is left alone.
    write(dir.path(), "blkio.bfq.weight", "100\n");
    let update = Limits {
        blkio_weight: Some(700),
        ..Limits::default()
    };
    Blkio::apply(&update, &dir).unwrap();
    assert_eq!(read(dir.path(), "blkio.bfq.weight"), "700");
    assert_eq!(read(dir.path(), "blkio.weight"), "300");
}
