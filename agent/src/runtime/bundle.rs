//! The OCI bundle: `config.json` built with oci-spec from a [`ContainerRecord`], with Docker's
//! hardening defaults (its default capability set, no-new-privileges, masked and read-only
//! /proc and /sys paths, a deny-all device cgroup that runc widens to the standard devices).
//!
//! Seccomp: moby's default profile resolved for that capability set and this host
//! ([`super::seccomp`]), a client's profile, or none (`seccomp=unconfined`), as the record says.
//!
//! The runtime does the isolation; berth only describes it.

use std::{fs, path::Path};

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxDeviceCgroup, LinuxNamespace, LinuxNamespaceType,
    ProcessBuilder, RootBuilder, Spec, UserBuilder, get_default_maskedpaths,
    get_default_namespaces, get_default_readonly_paths,
};

use super::{
    error::RuntimeError,
    seccomp::{Host, Profile},
    store::{ContainerRecord, SeccompChoice},
};

/// Docker's default capability set (moby `oci/caps/defaults.go`).
const DOCKER_CAPS: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Docker's default capabilities by their kernel names (`CAP_CHOWN`, ...), as seccomp rule
/// conditions name them.
pub fn docker_cap_names() -> Vec<String> {
    DOCKER_CAPS.iter().map(|c| format!("CAP_{c}")).collect()
}

/// The container's seccomp filter: `None` when unconfined.
fn seccomp(
    record: &ContainerRecord,
) -> Result<Option<oci_spec::runtime::LinuxSeccomp>, RuntimeError> {
    let custom;
    let profile = match record.spec.seccomp {
        SeccompChoice::Unconfined => return Ok(None),
        SeccompChoice::Default => Profile::moby_default(),
        SeccompChoice::Custom => {
            let text = record.seccomp_profile.as_deref().unwrap_or_default();
            custom = Profile::parse(text)?;
            &custom
        }
    };
    let caps = docker_cap_names();
    Ok(Some(profile.resolve(&caps, &Host::detect())?))
}

/// Paths Docker masks on top of the runtime-spec defaults.
const EXTRA_MASKED: [&str; 2] = ["/proc/sched_debug", "/sys/devices/virtual/powercap"];

/// Builds the runtime spec for `record`; `uid`/`gid` are already resolved.
/// `limits` are the effective ones (Docker's swap default applied by the caller); `netns` is
/// the namespace berth prepared (bridge and none modes), `None` for host networking.
pub fn spec(
    record: &ContainerRecord,
    limits: &crate::cgroup::limits::Limits,
    uid: u32,
    gid: u32,
    netns: Option<&Path>,
) -> Result<Spec, RuntimeError> {
    let caps: oci_spec::runtime::Capabilities = DOCKER_CAPS.into_iter().collect();
    let mut capabilities = oci_spec::runtime::LinuxCapabilities::default();
    capabilities.set_bounding(Some(caps.clone()));
    capabilities.set_effective(Some(caps.clone()));
    capabilities.set_permitted(Some(caps));
    capabilities.set_inheritable(None);
    capabilities.set_ambient(None);

    let bad = |what: &'static str| {
        move |e: oci_spec::OciSpecError| RuntimeError::Spec {
            what,
            reason: e.to_string(),
        }
    };
    let process = ProcessBuilder::default()
        .terminal(false)
        .args(record.spec.args.clone())
        .env(record.spec.env.clone())
        .cwd(record.spec.workdir.clone())
        .user(
            UserBuilder::default()
                .uid(uid)
                .gid(gid)
                .build()
                .map_err(bad("process.user"))?,
        )
        .no_new_privileges(true)
        .capabilities(capabilities)
        // No rlimits: the container inherits the agent's, as Docker's containers inherit
        // dockerd's (raising them here fails without CAP_SYS_RESOURCE in runc's init).
        .rlimits(vec![])
        .build()
        .map_err(bad("process"))?;

    let mut resources = limits.to_oci();
    resources.set_devices(Some(vec![{
        let mut d = LinuxDeviceCgroup::default();
        d.set_allow(false);
        d.set_access(Some("rwm".into()));
        d
    }]));

    let mut masked = get_default_maskedpaths();
    masked.extend(EXTRA_MASKED.iter().map(|s| s.to_string()));
    let namespaces: Vec<LinuxNamespace> = get_default_namespaces()
        .into_iter()
        .filter(|n| n.typ() != LinuxNamespaceType::User)
        .filter_map(|mut n| {
            if n.typ() != LinuxNamespaceType::Network {
                return Some(n);
            }
            // Host mode: no network namespace at all; otherwise join berth's.
            let path = netns?;
            n.set_path(Some(path.to_owned()));
            Some(n)
        })
        .collect();
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .cgroups_path(record.cgroup.clone())
        .resources(resources)
        .masked_paths(masked)
        .readonly_paths(get_default_readonly_paths())
        .build()
        .map_err(bad("linux"))?;
    linux.set_seccomp(seccomp(record)?);

    let mut spec = Spec::default();
    spec.set_hostname(Some(record.id[..12.min(record.id.len())].to_owned()));
    spec.set_process(Some(process));
    spec.set_root(Some(
        RootBuilder::default()
            .path("rootfs")
            .readonly(false)
            .build()
            .map_err(bad("root"))?,
    ));
    spec.set_linux(Some(linux));
    Ok(spec)
}

/// Writes `bundle/config.json` (0600, in a 0700 bundle: it holds the environment).
pub fn write(bundle: &Path, spec: &Spec) -> Result<(), RuntimeError> {
    let fs_err =
        |crate::fsutil::FsError { op, path, source }| RuntimeError::Io { op, path, source };
    crate::fsutil::private_dir(bundle).map_err(fs_err)?;
    fs::create_dir_all(bundle.join("rootfs")).map_err(|source| RuntimeError::Io {
        op: "create",
        path: bundle.join("rootfs"),
        source,
    })?;
    let json = serde_json::to_vec_pretty(spec).expect("spec serializes");
    crate::fsutil::write_atomic(&bundle.join("config.json"), &json).map_err(fs_err)
}

/// Resolves `--user` (`name`, `uid`, `name:group`, `uid:gid`) against the rootfs's
/// /etc/passwd and /etc/group, as Docker does. Empty means root.
pub fn resolve_user(rootfs: &Path, user: &str) -> Result<(u32, u32), RuntimeError> {
    if user.is_empty() {
        return Ok((0, 0));
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
    let (uid, primary_gid) = match u.parse::<u32>() {
        Ok(uid) => {
            let gid = passwd
                .lines()
                .filter_map(|l| parse_passwd(l))
                .find(|(_, id, _)| *id == uid)
                .map(|(_, _, g)| g)
                .unwrap_or(uid);
            (uid, gid)
        }
        Err(_) => passwd
            .lines()
            .filter_map(|l| parse_passwd(l))
            .find(|(name, _, _)| *name == u)
            .map(|(_, id, g)| (id, g))
            .ok_or_else(|| RuntimeError::UnknownUser {
                user: user.to_owned(),
                name: u.to_owned(),
            })?,
    };
    let gid = match g {
        None => primary_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => fs::read_to_string(rootfs.join("etc/group"))
                .unwrap_or_default()
                .lines()
                .find_map(|l| {
                    let mut f = l.split(':');
                    let name = f.next()?;
                    let id = f.nth(1)?.parse().ok()?;
                    (name == g).then_some(id)
                })
                .ok_or_else(|| RuntimeError::UnknownGroup {
                    user: user.to_owned(),
                    group: g.to_owned(),
                })?,
        },
    };
    Ok((uid, gid))
}

fn parse_passwd(line: &str) -> Option<(&str, u32, u32)> {
    let mut f = line.split(':');
    let name = f.next()?;
    let uid = f.nth(1)?.parse().ok()?;
    let gid = f.next()?.parse().ok()?;
    Some((name, uid, gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_resolve_by_name_and_number() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("etc")).unwrap();
        fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nwww:x:33:34::/var/www:/bin/sh\n",
        )
        .unwrap();
        fs::write(d.path().join("etc/group"), "root:x:0:\nmedia:x:500:\n").unwrap();
        assert_eq!(resolve_user(d.path(), "").unwrap(), (0, 0));
        assert_eq!(resolve_user(d.path(), "www").unwrap(), (33, 34));
        assert_eq!(resolve_user(d.path(), "33").unwrap(), (33, 34));
        assert_eq!(resolve_user(d.path(), "1000").unwrap(), (1000, 1000));
        assert_eq!(resolve_user(d.path(), "www:media").unwrap(), (33, 500));
        assert_eq!(resolve_user(d.path(), "1000:7").unwrap(), (1000, 7));
        assert!(resolve_user(d.path(), "nobody").is_err());
        assert!(resolve_user(d.path(), "www:nogroup").is_err());
    }
}
