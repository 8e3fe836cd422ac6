//! Seccomp: moby's default profile (`default.json` beside this file, see `NOTICE.md`) or a
//! user's profile in the same format, resolved into the OCI spec's `linux.seccomp` for one
//! container, the way Docker resolves it when it creates a container:
//!
//! - `archMap`: the entry whose `architecture` is the host's native one gives the filter's
//!   architectures (itself plus its `subArchitectures`); no entry, no architectures (the
//!   runtime's native one). A profile may instead list `architectures`, never both.
//! - each rule of `syscalls` is kept or dropped by its conditions: `excludes.arches` holding the
//!   host's architecture or `excludes.caps` meeting one of the container's bounding
//!   capabilities drop it; `includes.arches` not holding the host's architecture, one of
//!   `includes.caps` missing from the bounding set, or a kernel older than
//!   `includes.minKernel` drop it. Kept rules go into the spec unchanged (names, action,
//!   `errnoRet`, argument conditions).
//! - `defaultAction` and `defaultErrnoRet` (moby's: `SCMP_ACT_ERRNO`, EPERM) apply to every
//!   other syscall; `io_uring_*` are among them.
//!
//! Architectures in rule conditions use Go's names (`amd64`, `arm64`, `ppc64le`, ...) as the
//! profile does. The runtime (runc, crun) compiles the filter; berth only describes it.

use std::{collections::BTreeSet, sync::OnceLock};

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompFilterFlag, LinuxSeccompOperator, LinuxSyscall,
};
use serde::{Deserialize, Serialize};

/// moby's default profile, as shipped (see `NOTICE.md`).
const DEFAULT_JSON: &str = include_str!("default.json");

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp profile: {source}")]
    Parse { source: serde_json::Error },
    #[error("seccomp profile: `architectures` and `archMap` cannot both be given")]
    ArchitecturesAndArchMap,
    #[error("seccomp profile: rule {index} gives both `name` ({name}) and `names`")]
    NameAndNames { index: usize, name: String },
    #[error("seccomp profile: rule {index} names no syscall")]
    NoNames { index: usize },
    #[error("seccomp profile: rule {index}: minKernel {value}: expected MAJOR.MINOR, e.g. 4.8")]
    MinKernel { index: usize, value: String },
}

/// Where a shipped profile comes from (berth's addition to moby's format).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Source {
    pub repository: String,
    pub path: String,
    pub version: String,
    pub commit: String,
}

/// A profile in moby's format (also accepted: the OCI form with `architectures` and one
/// `name` per rule). Unknown keys are ignored, as Docker ignores them.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    #[serde(default)]
    pub source: Option<Source>,
    pub default_action: LinuxSeccompAction,
    #[serde(default)]
    pub default_errno_ret: Option<u32>,
    #[serde(default)]
    pub architectures: Option<Vec<Arch>>,
    #[serde(default)]
    pub arch_map: Option<Vec<ArchMap>>,
    #[serde(default)]
    pub flags: Option<Vec<LinuxSeccompFilterFlag>>,
    #[serde(default)]
    pub syscalls: Option<Vec<Rule>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchMap {
    pub architecture: Arch,
    #[serde(default)]
    pub sub_architectures: Option<Vec<Arch>>,
}

/// One entry of `syscalls`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub names: Option<Vec<String>>,
    pub action: LinuxSeccompAction,
    #[serde(default)]
    pub errno_ret: Option<u32>,
    #[serde(default)]
    pub args: Option<Vec<Arg>>,
    #[serde(default)]
    pub includes: Option<Condition>,
    #[serde(default)]
    pub excludes: Option<Condition>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Arg {
    pub index: usize,
    pub value: u64,
    #[serde(default)]
    pub value_two: u64,
    pub op: LinuxSeccompOperator,
}

/// `includes` / `excludes` of a rule.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(default)]
    pub caps: Option<Vec<String>>,
    #[serde(default)]
    pub arches: Option<Vec<String>>,
    /// Only in `includes`: the rule needs this kernel or newer.
    #[serde(default)]
    pub min_kernel: Option<String>,
}

/// What a profile is resolved against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Go's name of the architecture (`amd64`, `arm64`, ...), as rule conditions spell it.
    pub arch: &'static str,
    /// The seccomp architecture `archMap` is keyed by; `None` where moby knows none.
    pub native: Option<Arch>,
    /// Kernel (major, minor).
    pub kernel: (u32, u32),
}

impl Host {
    /// This machine: the architecture berth was built for and the running kernel. A kernel
    /// release that cannot be read counts as new (rules needing a minimum kernel are kept).
    pub fn detect() -> Self {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()
            .and_then(|r| parse_kernel(r.trim()))
            .unwrap_or((u32::MAX, u32::MAX));
        let (arch, native) = host_arch();
        Host {
            arch,
            native,
            kernel,
        }
    }
}

/// Go's name and the seccomp architecture of the target berth was built for.
fn host_arch() -> (&'static str, Option<Arch>) {
    let little = cfg!(target_endian = "little");
    match std::env::consts::ARCH {
        "x86_64" => ("amd64", Some(Arch::ScmpArchX86_64)),
        "x86" => ("386", Some(Arch::ScmpArchX86)),
        "aarch64" => ("arm64", Some(Arch::ScmpArchAarch64)),
        "arm" => ("arm", Some(Arch::ScmpArchArm)),
        "powerpc64" if little => ("ppc64le", Some(Arch::ScmpArchPpc64le)),
        "powerpc64" => ("ppc64", Some(Arch::ScmpArchPpc64)),
        "s390x" => ("s390x", Some(Arch::ScmpArchS390x)),
        "riscv64" => ("riscv64", Some(Arch::ScmpArchRiscv64)),
        "mips64" if little => ("mips64le", Some(Arch::ScmpArchMipsel64)),
        "mips64" => ("mips64", Some(Arch::ScmpArchMips64)),
        "loongarch64" => ("loong64", Some(Arch::ScmpArchLoongarch64)),
        _ => ("unknown", None),
    }
}

/// `6.18.0-1-amd64` -> (6, 18); `4.8` -> (4, 8).
fn parse_kernel(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor: String = parts
        .next()?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Some((major, minor.parse().ok()?))
}

/// `sys_admin`, `SYS_ADMIN` and `CAP_SYS_ADMIN` all name CAP_SYS_ADMIN.
fn cap_name(c: &str) -> String {
    let up = c.trim().to_ascii_uppercase();
    if up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    }
}

impl Profile {
    /// Parses a profile in moby's format.
    pub fn parse(text: &str) -> Result<Self, SeccompError> {
        serde_json::from_str(text).map_err(|source| SeccompError::Parse { source })
    }

    /// moby's default profile, parsed once.
    pub fn moby_default() -> &'static Profile {
        static DEFAULT: OnceLock<Profile> = OnceLock::new();
        DEFAULT.get_or_init(|| {
            Profile::parse(DEFAULT_JSON).expect("the embedded moby profile parses (unit-tested)")
        })
    }

    /// The filter for a container whose bounding set is `caps` (e.g. `CAP_CHOWN`), on `host`.
    pub fn resolve(&self, caps: &[String], host: &Host) -> Result<LinuxSeccomp, SeccompError> {
        let caps: BTreeSet<String> = caps.iter().map(|c| cap_name(c)).collect();
        let arch_map = self.arch_map.as_deref().unwrap_or_default();
        let listed = self.architectures.clone().unwrap_or_default();
        if !listed.is_empty() && !arch_map.is_empty() {
            return Err(SeccompError::ArchitecturesAndArchMap);
        }
        let mut arches = listed;
        if let Some(entry) = arch_map
            .iter()
            .find(|m| Some(m.architecture) == host.native)
        {
            arches.push(entry.architecture);
            arches.extend(entry.sub_architectures.iter().flatten().copied());
        }

        let mut syscalls = Vec::new();
        for (index, rule) in self.syscalls.iter().flatten().enumerate() {
            let names = match (&rule.name, &rule.names) {
                (Some(name), Some(names)) if !name.is_empty() && !names.is_empty() => {
                    return Err(SeccompError::NameAndNames {
                        index,
                        name: name.clone(),
                    });
                }
                (_, Some(names)) if !names.is_empty() => names.clone(),
                (Some(name), _) if !name.is_empty() => vec![name.clone()],
                _ => return Err(SeccompError::NoNames { index }),
            };
            if !rule.applies(index, &caps, host)? {
                continue;
            }
            let mut out = LinuxSyscall::default();
            out.set_names(names);
            out.set_action(rule.action);
            out.set_errno_ret(rule.errno_ret);
            if let Some(args) = rule.args.as_ref().filter(|a| !a.is_empty()) {
                out.set_args(Some(args.iter().copied().map(Arg::to_oci).collect()));
            }
            syscalls.push(out);
        }

        let mut seccomp = LinuxSeccomp::default();
        seccomp.set_default_action(self.default_action);
        seccomp.set_default_errno_ret(self.default_errno_ret);
        seccomp.set_architectures((!arches.is_empty()).then_some(arches));
        seccomp.set_flags(self.flags.clone().filter(|f| !f.is_empty()));
        seccomp.set_syscalls(Some(syscalls));
        Ok(seccomp)
    }
}

impl Rule {
    /// Whether the rule is kept for a container with bounding set `caps` on `host`.
    fn applies(
        &self,
        index: usize,
        caps: &BTreeSet<String>,
        host: &Host,
    ) -> Result<bool, SeccompError> {
        if let Some(ex) = &self.excludes {
            if ex.arches.iter().flatten().any(|a| a == host.arch) {
                return Ok(false);
            }
            if ex
                .caps
                .iter()
                .flatten()
                .any(|c| caps.contains(&cap_name(c)))
            {
                return Ok(false);
            }
        }
        if let Some(inc) = &self.includes {
            let arches = inc.arches.as_deref().unwrap_or_default();
            if !arches.is_empty() && !arches.iter().any(|a| a == host.arch) {
                return Ok(false);
            }
            if !inc
                .caps
                .iter()
                .flatten()
                .all(|c| caps.contains(&cap_name(c)))
            {
                return Ok(false);
            }
            if let Some(v) = inc.min_kernel.as_deref().filter(|v| !v.is_empty()) {
                let min = parse_kernel(v).ok_or_else(|| SeccompError::MinKernel {
                    index,
                    value: v.to_owned(),
                })?;
                if host.kernel < min {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }
}

impl Arg {
    fn to_oci(self) -> LinuxSeccompArg {
        let b = LinuxSeccompArgBuilder::default()
            .index(self.index)
            .value(self.value)
            .op(self.op);
        let b = if self.value_two != 0 {
            b.value_two(self.value_two)
        } else {
            b
        };
        b.build().expect("every field of a seccomp arg is set")
    }
}

/// The default profile in force, for `/api/v1/system` (`berth info`).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct SeccompInfo {
    /// `moby default`.
    pub profile: &'static str,
    /// The moby/profiles tag and commit the data comes from.
    pub version: String,
    pub commit: String,
    /// What every syscall not allowed gets, e.g. `SCMP_ACT_ERRNO`.
    #[schema(value_type = String)]
    pub default_action: LinuxSeccompAction,
    /// The filter's architectures on this host, e.g. `SCMP_ARCH_X86_64`.
    #[schema(value_type = Vec<String>)]
    pub architectures: Vec<Arch>,
    /// Syscalls with an allow rule for a container with `caps` (some only for given
    /// arguments).
    pub syscalls_allowed: usize,
}

/// Summarizes moby's default profile as resolved for `caps` on this host.
pub fn default_info(caps: &[String]) -> SeccompInfo {
    let profile = Profile::moby_default();
    let resolved = profile
        .resolve(caps, &Host::detect())
        .expect("the embedded moby profile resolves (unit-tested)");
    let source = profile
        .source
        .clone()
        .expect("the embedded profile names its source");
    SeccompInfo {
        profile: "moby default",
        version: source.version,
        commit: source.commit,
        default_action: resolved.default_action(),
        architectures: resolved.architectures().clone().unwrap_or_default(),
        syscalls_allowed: allowed_names(&resolved).len(),
    }
}

/// Names with at least one allow rule in a resolved filter.
pub fn allowed_names(s: &LinuxSeccomp) -> BTreeSet<&str> {
    s.syscalls()
        .iter()
        .flatten()
        .filter(|r| r.action() == LinuxSeccompAction::ScmpActAllow)
        .flat_map(|r| r.names().iter().map(String::as_str))
        .collect()
}

#[cfg(test)]
mod tests;
