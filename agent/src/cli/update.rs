//! `berth update`: new limits, applied at once to running containers.

use super::{
    args::LimitArgs,
    client::{Client, segment},
    parse_limits,
};

pub fn execute_update(
    client: &Client,
    a: &LimitArgs,
    containers: &[String],
) -> anyhow::Result<i32> {
    let limits = parse_limits(a)?;
    if limits == Default::default() {
        anyhow::bail!(
            "nothing to update: give at least one of --memory, --memory-swap, --cpus, --cpu-shares, --pids-limit, --blkio-weight"
        );
    }
    let body = serde_json::to_value(&limits)?;
    let mut code = 0;
    for c in containers {
        match client.call::<serde_json::Value>(
            "POST",
            &format!("/api/v1/containers/{}/update", segment(c)),
            Some(&body),
        ) {
            Ok(_) => println!("{c}"),
            Err(e) => {
                eprintln!("berth: error: {e}");
                code = 1;
            }
        }
    }
    Ok(code)
}
