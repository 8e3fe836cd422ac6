//! `berth-bench netfilter-hold`: berth's netfilter probe pair attached in the current network
//! namespace for as long as standard input stays open, so `cargo xtask bench probes` can
//! measure packets with and without it. Prints `ready` once attached.

use std::io::{Read as _, Write as _};

use anyhow::bail;
use berth::{
    cgroup::TrackedRoot,
    probes::{self, netfilter::NetfilterProbe},
};

pub fn execute_netfilter_hold() -> anyhow::Result<()> {
    // The netfilter pair needs no cgroup root; the object still wants one.
    let root = TrackedRoot {
        dir: "/".into(),
        path: "/".into(),
        id: 0,
        level: 0,
    };
    let mut ebpf = probes::load_object(&root, false, None)?;
    let probe = NetfilterProbe::start(Some(&mut ebpf), true);
    if let Some(e) = &probe.status.error {
        bail!("netfilter probe: {e}");
    }
    println!("ready");
    std::io::stdout().flush()?;
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(probe);
    drop(ebpf);
    Ok(())
}
