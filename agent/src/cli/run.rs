//! `berth run`: create and start a container; without -d, stream its output and exit with
//! its exit code, as `docker run` does.

use super::{
    args::{Format, RunArgs},
    client::Client,
    parse_limits,
};
use crate::{api::views::ContainerSummary, runtime::RunRequest};

pub fn execute_run(client: &Client, a: RunArgs) -> anyhow::Result<i32> {
    let limits = parse_limits(&a.limits)?;
    // A relative rootfs path means a directory on the client's side: make it absolute.
    let image = if a.image.starts_with("./") || a.image.starts_with("../") || a.image == "." {
        std::fs::canonicalize(&a.image)
            .map_err(|e| anyhow::anyhow!("rootfs {}: {e}", a.image))?
            .to_string_lossy()
            .into_owned()
    } else {
        a.image.clone()
    };
    let req = RunRequest {
        image,
        name: a.name.clone(),
        cmd: a.cmd.clone(),
        env: a.env.clone(),
        workdir: a.workdir.clone(),
        user: a.user.clone(),
        limits,
        restart: Some(a.restart.clone()),
        network: a.network,
        publish: a.publish.clone(),
        port_backend: a.port_backend,
        auto_remove: a.rm,
    };
    let body = serde_json::to_value(&req)?;
    if a.detach && a.format == Format::Json {
        // Everything the agent sends back, as it sends it.
        let raw: serde_json::Value = client.call("POST", "/api/v1/containers", Some(&body))?;
        println!("{}", serde_json::to_string_pretty(&raw)?);
        return Ok(0);
    }
    let created: ContainerSummary = client.call("POST", "/api/v1/containers", Some(&body))?;
    let id = created.id;
    if a.detach {
        println!("{id}");
        return Ok(0);
    }
    let path = format!("/api/v1/containers/{id}/logs?follow=true");
    let mut out = std::io::stdout();
    client.stream("GET", &path, None, |b| {
        use std::io::Write as _;
        let _ = out.write_all(b);
        let _ = out.flush();
    })?;
    if a.rm {
        // The agent removes it anyway (after a short grace, also if this client goes away);
        // removing it here reads the exit code in the same step, and `ps -a` right after
        // this command no longer lists it.
        let removed: serde_json::Value = client
            .call("DELETE", &format!("/api/v1/containers/{id}"), None)
            .map_err(|e| {
                anyhow::anyhow!("container {id} exited; reading its exit code failed: {e}")
            })?;
        let code = removed["state"]["exit_code"].as_i64().unwrap_or(0);
        return Ok(i32::try_from(code).unwrap_or(255));
    }
    let view: ContainerSummary = client.call("GET", &format!("/api/v1/containers/{id}"), None)?;
    Ok(view.state.exit_code.unwrap_or(0))
}
