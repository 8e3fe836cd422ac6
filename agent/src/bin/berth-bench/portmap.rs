//! `berth-bench portmap add|remove|teardown`: berth's port-mapping backend (nft-map or
//! iptables) applied in the current network namespace without an agent, so `cargo xtask bench
//! portmap` measures exactly the rules berth installs, inside namespaces of its own.

use anyhow::{anyhow, bail};
use berth::net::portmap::{self, BackendKind, PortmapConfig};
use clap::Args;

#[derive(Args)]
pub struct PortmapArgs {
    /// add, remove or teardown.
    pub action: String,
    /// nft-map or iptables.
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
}

pub fn execute_portmap(args: &PortmapArgs) -> anyhow::Result<()> {
    let kind = match args.backend.as_str() {
        "nft-map" => BackendKind::NftMap,
        "iptables" => BackendKind::Iptables,
        other => bail!("--backend {other}: expected nft-map or iptables"),
    };
    let config = PortmapConfig {
        table: args.table.clone(),
        bridge: args.bridge.clone(),
        subnet: args
            .subnet
            .parse()
            .map_err(|e| anyhow!("--subnet {}: {e}", args.subnet))?,
    };
    let b = portmap::backend(kind, &config);
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
        other => bail!("{other}: expected add, remove or teardown"),
    }
    Ok(())
}
