//! Network traffic per cgroup.
//!
//! Hooks: cgroup_skb ingress and egress (`berth_skb_ingress`, `berth_skb_egress` in
//! `ebpf/src/net.rs`), attached to the cgroup2 root, so they see every packet of every socket
//! on the host, bridge- and host-mode containers alike, in any network namespace; they count
//! those of berth's subtree and of the other engines' containers in `TRACKED` (see
//! [`super::tracked`]) and let everything pass.
//! Map: `NET` ([`NetKey`] -> per-CPU [`NetValue`]).
//! Metrics: `berth_cgroup_network_packets_total{cgroup, direction, protocol}` and
//! `berth_cgroup_network_bytes_total{...}` (bytes at layer 3: IP header included).

use std::{collections::HashMap, fs::File};

use aya::{
    Ebpf,
    maps::{MapData, PerCpuHashMap},
    programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType},
};
use berth_common::{DIRECTION_INGRESS, NetKey, NetValue};

use super::ProbeLoadError;
use crate::{cgroup::TrackedRoot, model::NetCount, model::ProbeStatus};

const MAP: &str = berth_common::maps::NET;
const PROGRAMS: [(&str, CgroupSkbAttachType); 2] = [
    ("berth_skb_ingress", CgroupSkbAttachType::Ingress),
    ("berth_skb_egress", CgroupSkbAttachType::Egress),
];

/// `tcp`, `udp`, `icmp`, `icmpv6`, `other`: a bounded label.
pub fn protocol_name(p: u8) -> &'static str {
    match p {
        6 => "tcp",
        17 => "udp",
        1 => "icmp",
        58 => "icmpv6",
        132 => "sctp",
        _ => "other",
    }
}

pub struct NetProbe {
    pub status: ProbeStatus,
}

impl NetProbe {
    pub fn start(ebpf: Option<&mut Ebpf>, enabled: bool, root: &TrackedRoot) -> Self {
        let mut status = ProbeStatus {
            name: "network",
            attach: "cgroup_skb/ingress+egress",
            enabled,
            attached: false,
            program_ids: Vec::new(),
            error: None,
            paths: Default::default(),
        };
        if enabled {
            match ebpf.ok_or(None).and_then(|e| attach(e, root).map_err(Some)) {
                Ok((ids, at)) => {
                    status.attached = true;
                    status.program_ids = ids;
                    status.paths.insert(PATH_ATTACH, at);
                }
                Err(e) => {
                    status.error = Some(match e {
                        Some(e) => e.to_string(),
                        None => "berth's eBPF object did not load (see the agent's log)".into(),
                    })
                }
            }
        }
        Self { status }
    }

    /// Packets and bytes per cgroup, summed over CPUs; entries of cgroups not in `alive` are
    /// deleted after this last read.
    pub fn collect(
        &self,
        ebpf: &mut Ebpf,
        alive: &dyn Fn(u64) -> bool,
    ) -> Result<HashMap<u64, Vec<NetCount>>, ProbeLoadError> {
        let map = ebpf
            .map_mut(MAP)
            .ok_or(ProbeLoadError::MissingMap { map: MAP })?;
        let mut counts = PerCpuHashMap::<&mut MapData, NetKey, NetValue>::try_from(map)
            .map_err(|source| ProbeLoadError::Map { map: MAP, source })?;
        let mut out: HashMap<u64, Vec<NetCount>> = HashMap::new();
        let mut dead = Vec::new();
        for entry in counts.iter() {
            let (key, values) = entry.map_err(|source| ProbeLoadError::Map { map: MAP, source })?;
            if !alive(key.cgroup_id) {
                dead.push(key);
                continue;
            }
            let (packets, bytes) = values
                .iter()
                .fold((0, 0), |(p, b), v| (p + v.packets, b + v.bytes));
            out.entry(key.cgroup_id).or_default().push(NetCount {
                direction: if key.direction == DIRECTION_INGRESS {
                    "ingress"
                } else {
                    "egress"
                },
                protocol: protocol_name(key.protocol),
                packets,
                bytes,
            });
        }
        for key in dead {
            let _ = counts.remove(&key);
        }
        // Several protocol numbers share the "other" label: merge them.
        for v in out.values_mut() {
            v.sort_by_key(|n| (n.direction, n.protocol));
            v.dedup_by(|a, b| {
                if a.direction == b.direction && a.protocol == b.protocol {
                    b.packets += a.packets;
                    b.bytes += a.bytes;
                    true
                } else {
                    false
                }
            });
        }
        Ok(out)
    }
}

/// Where the programs attach, and how that went.
pub const PATH_ATTACH: &str = "attach_point";

/// Loads both programs and attaches them to the cgroup2 mount's root, so every socket on the
/// host passes them and the programs keep the `TRACKED` cgroups. aya attaches through a BPF
/// link (kernel 5.7+), which the kernel always adds as one of several programs (links take no
/// flags: `BPF_F_ALLOW_MULTI` is implied), so other agents and systemd keep theirs. Where the
/// root refuses (an exclusive program attached there the legacy way), they attach to berth's
/// own root and count only its subtree. Returns the program ids and the attach point's state.
fn attach(ebpf: &mut Ebpf, root: &TrackedRoot) -> Result<(Vec<u32>, String), ProbeLoadError> {
    let mut ids = Vec::new();
    for (name, _) in PROGRAMS {
        let program: &mut CgroupSkb = super::program_mut(ebpf, name)?;
        let err = super::program_err(name);
        program.load().map_err(err)?;
        ids.push(program.info().map_err(err)?.id());
    }
    let mount = root.dir.ancestors().nth(root.level as usize);
    let host_wide = match mount {
        Some(m) => attach_at(ebpf, m).map(|()| m),
        None => Err(ProbeLoadError::Io {
            op: "finding the cgroup2 mount above",
            path: root.dir.clone(),
            source: std::io::ErrorKind::NotFound.into(),
        }),
    };
    let state = match host_wide {
        Ok(m) => format!(
            "{}: every socket on the host, counted when its cgroup is in TRACKED",
            m.display()
        ),
        Err(e) => {
            tracing::warn!(error = %e, "cgroup_skb at the cgroup2 root refused: counting only berth's subtree");
            attach_at(ebpf, &root.dir)?;
            format!(
                "{} only (the cgroup2 root refused: {e}): other engines' containers are not \
                 counted",
                root.dir.display()
            )
        }
    };
    Ok((ids, state))
}

fn attach_at(ebpf: &mut Ebpf, dir: &std::path::Path) -> Result<(), ProbeLoadError> {
    let cgroup = File::open(dir).map_err(|e| ProbeLoadError::Io {
        op: "opening the cgroup",
        path: dir.to_owned(),
        source: e,
    })?;
    for (name, attach_type) in PROGRAMS {
        let program: &mut CgroupSkb = super::program_mut(ebpf, name)?;
        program
            .attach(&cgroup, attach_type, CgroupAttachMode::Single)
            .map_err(|e| {
                tracing::warn!(program = name, cgroup = %dir.display(), error = ?e, "cgroup_skb attach failed");
                super::program_err(name)(e)
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_labels_are_bounded() {
        assert_eq!(protocol_name(6), "tcp");
        assert_eq!(protocol_name(17), "udp");
        assert_eq!(protocol_name(200), "other");
    }
}
