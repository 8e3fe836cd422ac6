//! `berth-bench portmap add|remove|teardown|stats|veth-name`: berth's port-mapping backend
//! (nft-map, iptables or ebpf) applied in the current network namespace without an agent, so
//! `cargo xtask bench portmap` measures exactly what berth installs, inside namespaces of its
//! own.
//!
//! The `ebpf` backend pins its data plane under `--pin-root` (a bpffs directory), so it outlives
//! this process: the programs stay attached between `add` and `teardown`, and `stats` reads
//! its counters. Run it with only the network namespace switched (not `ip netns exec`, whose
//! fresh sysfs hides /sys/fs/bpf).

use std::path::PathBuf;

use anyhow::{anyhow, bail};
use berth::net::portmap::{self, BackendKind, PortmapConfig, ebpf::Ebpf, ebpf::EbpfOptions};
use clap::Args;

#[derive(Args)]
pub struct PortmapArgs {
    /// add, remove, teardown, stats (ebpf: its packet counters as JSON) or veth-name (the
    /// name berth gives the owner's host-side veth, which the ebpf backend looks for).
    pub action: String,
    /// nft-map, iptables or ebpf.
    #[arg(long, default_value = "nft-map")]
    pub backend: String,
    /// Table name (and iptables chain prefix).
    #[arg(long, default_value = "berth")]
    pub table: String,
    #[arg(long, default_value = "berth0")]
    pub bridge: String,
    #[arg(long, default_value = "10.231.0.0/16")]
    pub subnet: String,
    /// Owner recorded with the mappings.
    #[arg(long, default_value = "bench")]
    pub owner: String,
    /// Container address (add).
    #[arg(long)]
    pub ip: Option<std::net::Ipv4Addr>,
    /// -p syntax (add; repeatable).
    #[arg(short, long)]
    pub publish: Vec<String>,
    /// ebpf: interface whose ingress gets the forward program (repeatable; none: those with a
    /// default route).
    #[arg(long)]
    pub uplink: Vec<String>,
    /// ebpf: bpffs directory the data plane is pinned under.
    #[arg(long, default_value = "/sys/fs/bpf/berth")]
    pub pin_root: PathBuf,
}

pub fn execute_portmap(args: &PortmapArgs) -> anyhow::Result<()> {
    if args.action == "veth-name" {
        println!("{}", berth::net::host_veth(&args.owner));
        return Ok(());
    }
    let kind = match args.backend.as_str() {
        "nft-map" => BackendKind::NftMap,
        "iptables" => BackendKind::Iptables,
        "ebpf" => BackendKind::Ebpf,
        other => bail!("--backend {other}: expected nft-map, iptables or ebpf"),
    };
    let config = PortmapConfig {
        table: args.table.clone(),
        bridge: args.bridge.clone(),
        subnet: args
            .subnet
            .parse()
            .map_err(|e| anyhow!("--subnet {}: {e}", args.subnet))?,
    };
    let options = EbpfOptions {
        uplinks: args.uplink.clone(),
        // The bench's clients are in a namespace of their own: no sock_addr hooks.
        cgroup2: None,
        pin_root: args.pin_root.clone(),
    };
    if args.action == "stats" {
        if kind != BackendKind::Ebpf {
            bail!("stats: only the ebpf backend has packet counters");
        }
        let stats = Ebpf::new(config, options).stats().ok_or_else(|| {
            anyhow!(
                "no ebpf data plane is pinned under {}",
                args.pin_root.display()
            )
        })?;
        let map: serde_json::Map<String, serde_json::Value> = stats
            .into_iter()
            .map(|(s, n)| {
                let (path, reason) = s.labels();
                (format!("{path}_{reason}"), n.into())
            })
            .collect();
        println!("{}", serde_json::Value::Object(map));
        return Ok(());
    }
    let b = portmap::backend_with(kind, &config, &options);
    match args.action.as_str() {
        "add" => {
            let ip = args.ip.ok_or_else(|| anyhow!("add needs --ip"))?;
            let publish = args
                .publish
                .iter()
                .map(|p| portmap::parse_publish(p))
                .collect::<Result<Vec<_>, _>>()?;
            b.setup()?;
            b.add(&args.owner, ip, &publish)?;
        }
        "remove" => b.remove(&args.owner)?,
        "teardown" => b.teardown()?,
        other => bail!("{other}: expected add, remove, teardown, stats or veth-name"),
    }
    Ok(())
}
