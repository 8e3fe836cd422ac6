//! `berth run`: create and start a container; without -d, stream its output and exit with
//! its exit code, as `docker run` does.

use super::{
    args::{Format, PullPolicy, RunArgs},
    client::Client,
    parse_limits,
};
use crate::{api::views::ContainerSummary, runtime::RunRequest};

pub fn execute_run(client: &Client, a: RunArgs) -> anyhow::Result<i32> {
    let limits = parse_limits(&a.limits)?;
    let image = resolve_image(client, &a.image, a.pull)?;
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
        security_opt: a
            .security_opt
            .iter()
            .map(|o| security_opt(o))
            .collect::<anyhow::Result<_>>()?,
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

/// What `run X` starts from, in Docker's order: an existing directory (a rootfs, made absolute:
/// the agent's working directory means nothing here), then a path-looking argument as it is
/// (the agent names what is wrong with it), then an image reference, pulled per `policy`.
fn resolve_image(client: &Client, image: &str, policy: PullPolicy) -> anyhow::Result<String> {
    let path = std::path::Path::new(image);
    if path.is_dir() {
        return Ok(std::fs::canonicalize(path)
            .map_err(|e| anyhow::anyhow!("rootfs {image}: {e}"))?
            .to_string_lossy()
            .into_owned());
    }
    if image.starts_with(['/', '.']) {
        return Ok(image.to_string());
    }
    let pulled = match policy {
        PullPolicy::Never => return Ok(image.to_string()),
        PullPolicy::Missing => super::image::pull(client, image, "missing")?,
        PullPolicy::Always => super::image::pull(client, image, "always")?,
    };
    // A digest reference leaves no name behind: run the image it pulled by its id.
    Ok(if image.contains('@') {
        pulled.id
    } else {
        image.to_string()
    })
}

/// `seccomp=PATH` becomes `seccomp=<the file's content>`: the agent never reads a path for a
/// client. `seccomp=unconfined|builtin` pass as they are; anything else is refused here.
fn security_opt(opt: &str) -> anyhow::Result<String> {
    let Some(value) = opt
        .strip_prefix("seccomp=")
        .or_else(|| opt.strip_prefix("seccomp:"))
    else {
        anyhow::bail!(
            "--security-opt {opt}: berth supports seccomp=unconfined, seccomp=builtin or \
             seccomp=PROFILE.json"
        );
    };
    if value == "unconfined" || value == "builtin" {
        return Ok(format!("seccomp={value}"));
    }
    if value.is_empty() {
        anyhow::bail!("--security-opt {opt}: give unconfined, builtin or a profile file");
    }
    let content = std::fs::read_to_string(value)
        .map_err(|e| anyhow::anyhow!("--security-opt {opt}: reading the profile {value}: {e}"))?;
    Ok(format!("seccomp={content}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seccomp_paths_are_sent_as_content_and_other_options_refused() {
        assert_eq!(
            security_opt("seccomp=unconfined").unwrap(),
            "seccomp=unconfined"
        );
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("p.json");
        std::fs::write(&p, r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#).unwrap();
        assert_eq!(
            security_opt(&format!("seccomp={}", p.display())).unwrap(),
            r#"seccomp={"defaultAction":"SCMP_ACT_ALLOW"}"#
        );
        let e = security_opt("seccomp=/nonexistent/p.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/p.json"), "{e}");
        let e = security_opt("apparmor=unconfined").unwrap_err().to_string();
        assert!(e.contains("apparmor=unconfined"), "{e}");
    }
}
