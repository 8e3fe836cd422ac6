use super::*;

/// Docker's default capability set, as `bundle` gives every container.
fn docker_caps() -> Vec<String> {
    [
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FSETID",
        "CAP_FOWNER",
        "CAP_MKNOD",
        "CAP_NET_RAW",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETFCAP",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT",
        "CAP_KILL",
        "CAP_AUDIT_WRITE",
    ]
    .map(String::from)
    .to_vec()
}

fn amd64() -> Host {
    Host {
        arch: "amd64",
        native: Some(Arch::ScmpArchX86_64),
        kernel: (6, 18),
    }
}

/// The rules naming `name`, as resolved.
fn rules<'a>(s: &'a LinuxSeccomp, name: &str) -> Vec<&'a LinuxSyscall> {
    s.syscalls()
        .iter()
        .flatten()
        .filter(|r| r.names().iter().any(|n| n == name))
        .collect()
}

#[test]
fn the_shipped_profile_is_mobys_default_with_its_version_named() {
    let p = Profile::moby_default();
    let source = p.source.as_ref().unwrap();
    assert_eq!(source.repository, "https://github.com/moby/profiles");
    assert_eq!(source.version, "seccomp/v0.2.3");
    assert_eq!(source.commit.len(), 40);
    assert_eq!(p.default_action, LinuxSeccompAction::ScmpActErrno);
    assert_eq!(p.default_errno_ret, Some(1));
    let all: Vec<&String> = p
        .syscalls
        .iter()
        .flatten()
        .flat_map(|r| r.names.iter().flatten())
        .collect();
    assert!(all.len() > 350, "{}", all.len());
    assert!(
        !all.iter().any(|n| n.starts_with("io_uring")),
        "io_uring is blocked"
    );
    assert!(!all.iter().any(|n| *n == "keyctl" || *n == "add_key"));
}

#[test]
fn docker_default_caps_on_amd64_get_docker_s_filter() {
    let s = Profile::moby_default()
        .resolve(&docker_caps(), &amd64())
        .unwrap();
    assert_eq!(s.default_action(), LinuxSeccompAction::ScmpActErrno);
    assert_eq!(s.default_errno_ret(), Some(1));
    assert_eq!(
        s.architectures().as_deref(),
        Some(&[Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32][..])
    );
    let allowed = allowed_names(&s);
    for name in [
        "read",
        "write",
        "socket",
        "arch_prctl",
        "modify_ldt",
        "chroot",
        "ptrace",
    ] {
        assert!(allowed.contains(name), "{name} allowed");
    }
    for name in [
        "unshare",
        "mount",
        "setns",
        "keyctl",
        "add_key",
        "perf_event_open",
        "io_uring_setup",
        "bpf",
        "reboot",
        "init_module",
        "syslog",
        "arm_fadvise64_64",
        "s390_runtime_instr",
    ] {
        assert!(!allowed.contains(name), "{name} not allowed");
    }
    // clone only without namespace flags, clone3 answered ENOSYS so libcs fall back to clone.
    let clone = rules(&s, "clone");
    assert_eq!(clone.len(), 1);
    let arg = clone[0].args().as_ref().unwrap()[0];
    assert_eq!(
        (arg.index(), arg.value(), arg.op()),
        (0, 2114060288, LinuxSeccompOperator::ScmpCmpMaskedEq)
    );
    let clone3 = rules(&s, "clone3");
    assert_eq!(clone3.len(), 1);
    assert_eq!(clone3[0].action(), LinuxSeccompAction::ScmpActErrno);
    assert_eq!(clone3[0].errno_ret(), Some(38));
}

#[test]
fn argument_rules_are_kept_as_written() {
    let s = Profile::moby_default()
        .resolve(&docker_caps(), &amd64())
        .unwrap();
    let socket: Vec<(usize, u64, LinuxSeccompOperator)> = rules(&s, "socket")
        .iter()
        .filter_map(|r| r.args().as_ref())
        .map(|a| (a[0].index(), a[0].value(), a[0].op()))
        .collect();
    // AF_ALG (38) and AF_VSOCK (40) are refused.
    assert_eq!(
        socket,
        [
            (0, 38, LinuxSeccompOperator::ScmpCmpLt),
            (0, 39, LinuxSeccompOperator::ScmpCmpEq),
            (0, 40, LinuxSeccompOperator::ScmpCmpGt)
        ]
    );
    let personality: Vec<u64> = rules(&s, "personality")
        .iter()
        .filter_map(|r| r.args().as_ref())
        .map(|a| a[0].value())
        .collect();
    assert_eq!(personality, [0, 8, 131072, 131080, 4294967295]);
    // A plain allow rule carries no args at all.
    assert!(rules(&s, "read")[0].args().is_none());
}

#[test]
fn capabilities_open_their_rules_and_close_the_excluded_ones() {
    let mut caps = docker_caps();
    caps.extend(["CAP_SYS_ADMIN", "sys_ptrace", "PERFMON"].map(String::from));
    let s = Profile::moby_default().resolve(&caps, &amd64()).unwrap();
    let allowed = allowed_names(&s);
    for name in [
        "unshare",
        "mount",
        "setns",
        "bpf",
        "perf_event_open",
        "kcmp",
        "process_vm_readv",
    ] {
        assert!(allowed.contains(name), "{name} allowed with its cap");
    }
    assert!(!allowed.contains("reboot"), "CAP_SYS_BOOT not given");
    // The flag-restricted clone and the ENOSYS clone3 exclude CAP_SYS_ADMIN.
    assert!(rules(&s, "clone").iter().all(|r| r.args().is_none()));
    assert!(
        rules(&s, "clone3")
            .iter()
            .all(|r| r.action() == LinuxSeccompAction::ScmpActAllow)
    );
}

#[test]
fn other_architectures_get_their_arch_map_entry_and_rules() {
    let arm64 = Host {
        arch: "arm64",
        native: Some(Arch::ScmpArchAarch64),
        kernel: (6, 1),
    };
    let s = Profile::moby_default()
        .resolve(&docker_caps(), &arm64)
        .unwrap();
    assert_eq!(
        s.architectures().as_deref(),
        Some(&[Arch::ScmpArchAarch64, Arch::ScmpArchArm][..])
    );
    let allowed = allowed_names(&s);
    assert!(allowed.contains("arm_fadvise64_64"));
    assert!(!allowed.contains("arch_prctl") && !allowed.contains("modify_ldt"));

    let s390x = Host {
        arch: "s390x",
        native: Some(Arch::ScmpArchS390x),
        kernel: (6, 1),
    };
    let s = Profile::moby_default()
        .resolve(&docker_caps(), &s390x)
        .unwrap();
    let clone = rules(&s, "clone");
    assert_eq!(clone.len(), 1);
    assert_eq!(
        clone[0].args().as_ref().unwrap()[0].index(),
        1,
        "s390 argument order"
    );

    let unknown = Host {
        arch: "sparc64",
        native: None,
        kernel: (6, 1),
    };
    let s = Profile::moby_default()
        .resolve(&docker_caps(), &unknown)
        .unwrap();
    assert_eq!(
        s.architectures(),
        &None,
        "the runtime's native architecture only"
    );
}

#[test]
fn min_kernel_rules_need_that_kernel() {
    let old = Host {
        kernel: (4, 4),
        ..amd64()
    };
    let s = Profile::moby_default()
        .resolve(&docker_caps(), &old)
        .unwrap();
    assert!(!allowed_names(&s).contains("ptrace"));
    let s = Profile::moby_default()
        .resolve(
            &docker_caps(),
            &Host {
                kernel: (4, 8),
                ..amd64()
            },
        )
        .unwrap();
    assert!(allowed_names(&s).contains("ptrace"));
}

#[test]
fn kernel_releases_parse_to_major_and_minor() {
    assert_eq!(parse_kernel("6.18.0-1-cloud-amd64"), Some((6, 18)));
    assert_eq!(parse_kernel("4.8"), Some((4, 8)));
    assert_eq!(parse_kernel("5.15rc1"), Some((5, 15)));
    assert_eq!(parse_kernel("six"), None);
    assert_eq!(parse_kernel("6"), None);
}

#[test]
fn custom_profiles_in_oci_form_and_errno_values_resolve() {
    let p = Profile::parse(
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64"],
            "flags": ["SECCOMP_FILTER_FLAG_LOG"],
            "syscalls": [
              {"name": "mkdir", "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
              {"names": ["chmod"], "action": "SCMP_ACT_ERRNO", "args": null},
              {"names": ["kill"], "action": "SCMP_ACT_ERRNO",
               "args": [{"index": 1, "value": 9, "valueTwo": 0, "op": "SCMP_CMP_EQ"}]}
            ],
            "unknownKey": true}"#,
    )
    .unwrap();
    let s = p.resolve(&docker_caps(), &amd64()).unwrap();
    assert_eq!(s.default_action(), LinuxSeccompAction::ScmpActAllow);
    assert_eq!(s.default_errno_ret(), None);
    assert_eq!(
        s.architectures().as_deref(),
        Some(&[Arch::ScmpArchX86_64][..])
    );
    assert_eq!(
        s.flags().as_deref(),
        Some(&[LinuxSeccompFilterFlag::SeccompFilterFlagLog][..])
    );
    assert_eq!(rules(&s, "mkdir")[0].errno_ret(), Some(13));
    assert_eq!(rules(&s, "chmod")[0].errno_ret(), None);
    let kill = rules(&s, "kill")[0].args().as_ref().unwrap()[0];
    assert_eq!((kill.index(), kill.value(), kill.value_two()), (1, 9, None));
    // The spec runc reads: camelCase keys, errnoRet where given.
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["syscalls"][0]["errnoRet"], 13);
    assert_eq!(json["defaultAction"], "SCMP_ACT_ALLOW");
}

#[test]
fn malformed_profiles_are_refused_with_the_reason() {
    let err = |text: &str| match Profile::parse(text) {
        Err(e) => e.to_string(),
        Ok(p) => p.resolve(&docker_caps(), &amd64()).unwrap_err().to_string(),
    };
    assert!(err("not json").contains("seccomp profile"));
    assert!(err(r#"{"defaultAction": "SCMP_ACT_MAYBE"}"#).contains("SCMP_ACT_MAYBE"));
    assert!(
        err(
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64"],
               "archMap": [{"architecture": "SCMP_ARCH_X86_64"}]}"#
        )
        .contains("archMap")
    );
    assert!(
        err(r#"{"defaultAction": "SCMP_ACT_ERRNO",
               "syscalls": [{"name": "read", "names": ["write"], "action": "SCMP_ACT_ALLOW"}]}"#)
        .contains("rule 0 gives both")
    );
    assert!(
        err(r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"action": "SCMP_ACT_ALLOW"}]}"#)
            .contains("names no syscall")
    );
    assert!(
        err(
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["ptrace"],
               "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "new"}}]}"#
        )
        .contains("minKernel new")
    );
}

#[test]
fn the_system_summary_names_the_profile_in_force() {
    let info = default_info(&docker_caps());
    assert_eq!(info.profile, "moby default");
    assert_eq!(info.version, "seccomp/v0.2.3");
    assert_eq!(info.default_action, LinuxSeccompAction::ScmpActErrno);
    assert!(info.syscalls_allowed > 300, "{}", info.syscalls_allowed);
}
