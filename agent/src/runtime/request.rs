//! What `berth run` / `POST /api/v1/containers` asks for ([`RunRequest`]), and its
//! validation: [`Manager::prepare`] checks every field and resolves the image, user, command,
//! environment and network into a [`ContainerRecord`] without changing anything on the host,
//! so a refused request leaves no trace.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{
    Manager, bundle,
    error::{RuntimeError, io},
    id::{default_name, new_id, valid_name},
    seccomp,
    store::{self, BerthSpec, ContainerRecord, Phase, RestartPolicy, SeccompChoice},
};
use crate::{
    cgroup::limits::Limits,
    net::{
        NetError, NetworkMode, NetworkSpec,
        portmap::{self, BackendKind, Publish},
    },
};

/// What `berth run` / `POST /api/v1/containers` asks for.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RunRequest {
    /// Image reference (name, id, id prefix) or an absolute path to a rootfs directory.
    pub image: String,
    pub name: Option<String>,
    /// Replaces the image's Cmd; the image's Entrypoint stays in front of it.
    pub cmd: Vec<String>,
    /// `KEY=VALUE`, added to (and overriding) the image's environment.
    pub env: Vec<String>,
    pub workdir: Option<String>,
    /// `user`, `uid`, `user:group` or `uid:gid`.
    pub user: Option<String>,
    pub limits: Limits,
    /// `no`, `on-failure[:N]`, `always`.
    pub restart: Option<String>,
    /// `bridge` (default), `host`, `none`.
    pub network: Option<NetworkMode>,
    /// `[IP:]HOST[-HOST2]:CTR[-CTR2][/udp|/tcp]`, Docker's syntax.
    pub publish: Vec<String>,
    /// `nft-map` or `iptables`; the agent's default when absent.
    pub port_backend: Option<BackendKind>,
    /// `--rm`: the agent removes the container once it has exited (not with a restart
    /// policy).
    pub auto_remove: bool,
    /// Docker's `--security-opt`: `seccomp=unconfined`, `seccomp=builtin` (the default
    /// profile) or `seccomp=<profile JSON>`; the client reads a profile file and sends its
    /// content, the agent reads no path for a client. The last seccomp entry wins.
    pub security_opt: Vec<String>,
}

/// The seccomp choice of `--security-opt` entries, and the custom profile's JSON.
fn seccomp_choice(opts: &[String]) -> Result<(SeccompChoice, Option<String>), RuntimeError> {
    let mut choice = (SeccompChoice::Default, None);
    for opt in opts {
        // Docker also accepts the older `key:value` spelling.
        let value = opt
            .strip_prefix("seccomp=")
            .or_else(|| opt.strip_prefix("seccomp:"));
        choice = match value {
            Some("unconfined") => (SeccompChoice::Unconfined, None),
            Some("builtin") => (SeccompChoice::Default, None),
            Some(json) if json.trim_start().starts_with('{') => {
                // Checked now (for the agent's own capability set and host), so a bad
                // profile is refused before anything is created.
                seccomp::Profile::parse(json)?
                    .resolve(&bundle::docker_cap_names(), &seccomp::Host::detect())?;
                (SeccompChoice::Custom, Some(json.to_owned()))
            }
            _ => {
                return Err(RuntimeError::SecurityOpt {
                    value: shorten(opt),
                });
            }
        };
    }
    Ok(choice)
}

/// An option as an error shows it: long values (a profile's JSON) cut at 80 characters.
fn shorten(s: &str) -> String {
    match s.char_indices().nth(80) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

impl Manager {
    /// Validates the request and resolves it into a record; changes nothing on the host.
    pub(super) fn prepare(&self, req: RunRequest) -> Result<ContainerRecord, RuntimeError> {
        if req.image.is_empty() {
            return Err(RuntimeError::NoImage);
        }
        let name = match &req.name {
            Some(n) if !valid_name(n) => {
                return Err(RuntimeError::InvalidName { name: n.clone() });
            }
            Some(n) => n.clone(),
            None => String::new(),
        };
        if !name.is_empty()
            && let Some(other) = self
                .containers
                .read()
                .expect("lock")
                .values()
                .find(|r| r.name == name)
        {
            return Err(RuntimeError::NameInUse {
                name,
                id: other.id.clone(),
            });
        }
        req.limits.validate(&self.host)?;
        let restart: RestartPolicy = match &req.restart {
            Some(r) => r.parse()?,
            None => RestartPolicy::No,
        };
        if req.auto_remove && restart != RestartPolicy::No {
            return Err(RuntimeError::RemoveWithRestart {
                policy: restart.to_string(),
            });
        }
        for e in &req.env {
            if !e.contains('=') || e.starts_with('=') {
                return Err(RuntimeError::InvalidEnv { entry: e.clone() });
            }
        }
        let (seccomp, seccomp_profile) = seccomp_choice(&req.security_opt)?;

        let (lower, image_id, config) = if req.image.starts_with('/') || req.image.starts_with('.')
        {
            let p = PathBuf::from(&req.image);
            if !p.is_dir() {
                return Err(RuntimeError::RootfsNotDirectory { path: p });
            }
            let p = p.canonicalize().map_err(io("resolve", &p))?;
            (p, None, Default::default())
        } else {
            let image = self.images.get(&req.image)?;
            (image.rootfs.clone(), Some(image.id.clone()), image.config)
        };

        let mut args = config.entrypoint.clone();
        if req.cmd.is_empty() {
            args.extend(config.cmd.iter().cloned());
        } else {
            args.extend(req.cmd.iter().cloned());
        }
        if args.is_empty() {
            return Err(RuntimeError::NoCommand {
                image: req.image.clone(),
            });
        }
        let mut env: Vec<String> = config.env.clone();
        for e in &req.env {
            let key = e.split('=').next().unwrap_or("");
            env.retain(|x| x.split('=').next() != Some(key));
            env.push(e.clone());
        }
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.insert(
                0,
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            );
        }
        let workdir = req
            .workdir
            .clone()
            .or(config.working_dir.clone())
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into());
        if !workdir.starts_with('/') {
            return Err(RuntimeError::RelativeWorkdir { workdir });
        }
        let user_spec = req.user.clone().or(config.user.clone()).unwrap_or_default();
        let (uid, gid) = bundle::resolve_user(&lower, &user_spec)?;

        let network = self.prepare_network(&req)?;

        let id = new_id();
        let name = if name.is_empty() {
            default_name(&id)
        } else {
            name
        };
        Ok(ContainerRecord {
            cgroup: format!("/{}/{}", self.cgroup_root, id),
            id,
            name,
            image: req.image.clone(),
            limits: req.limits,
            created_at: store::now_secs(),
            network,
            seccomp_profile: seccomp_profile.map(Into::into),
            spec: std::sync::Arc::new(BerthSpec {
                image_id,
                lower,
                args,
                env,
                workdir,
                user: format!("{uid}:{gid}"),
                restart,
                runtime: self.runtime.name.clone(),
                phase: Phase::Creating,
                stop_requested: false,
                auto_remove: req.auto_remove,
                seccomp,
            }),
        })
    }

    /// Mode, published ports (parsed, checked against berth's mappings and the host's bound
    /// sockets), backend and address. Changes nothing.
    fn prepare_network(&self, req: &RunRequest) -> Result<NetworkSpec, RuntimeError> {
        let mode = req.network.unwrap_or_default();
        let publish = req
            .publish
            .iter()
            .map(|p| portmap::parse_publish(p))
            .collect::<Result<Vec<Publish>, _>>()
            .map_err(NetError::from)?;
        if mode != NetworkMode::Bridge && !publish.is_empty() {
            return Err(RuntimeError::PublishNeedsBridge { mode });
        }
        let port_backend = req.port_backend.unwrap_or(self.net.config.port_backend);
        let records = self.records();
        let existing: Vec<Publish> = records
            .iter()
            .flat_map(|r| r.network.publish.iter().cloned())
            .collect();
        portmap::check_conflicts(&publish, &existing).map_err(NetError::from)?;
        if !publish.is_empty() {
            let in_use = crate::net::ports_in_use();
            for p in &publish {
                if let Some(port) =
                    (p.host.start..=p.host.end).find(|port| in_use.contains(&(p.proto, *port)))
                {
                    return Err(RuntimeError::PortInUse {
                        port,
                        proto: p.proto,
                    });
                }
            }
        }
        let ip = match mode {
            NetworkMode::Bridge => {
                let used = records.iter().filter_map(|r| r.network.ip).collect();
                Some(self.net.allocate(&used)?)
            }
            _ => None,
        };
        Ok(NetworkSpec {
            mode,
            ip,
            port_backend: (!publish.is_empty()).then_some(port_backend),
            publish,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_and_port_backend_take_the_cli_spellings() {
        let req: RunRequest = serde_json::from_value(serde_json::json!({
            "image": "x", "network": "host", "port_backend": "iptables"
        }))
        .unwrap();
        assert_eq!(req.network, Some(NetworkMode::Host));
        assert_eq!(req.port_backend, Some(BackendKind::Iptables));
        for (mode, name) in [
            (NetworkMode::Bridge, "bridge"),
            (NetworkMode::Host, "host"),
            (NetworkMode::None, "none"),
        ] {
            let req = RunRequest {
                network: Some(mode),
                ..Default::default()
            };
            assert_eq!(serde_json::to_value(&req).unwrap()["network"], name);
        }
        let req = RunRequest {
            port_backend: Some(BackendKind::NftMap),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&req).unwrap()["port_backend"],
            "nft-map"
        );
    }

    #[test]
    fn security_opt_chooses_the_seccomp_profile() {
        let opts = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(seccomp_choice(&[]).unwrap(), (SeccompChoice::Default, None));
        assert_eq!(
            seccomp_choice(&opts(&["seccomp=unconfined"])).unwrap(),
            (SeccompChoice::Unconfined, None)
        );
        assert_eq!(
            seccomp_choice(&opts(&["seccomp=unconfined", "seccomp:builtin"])).unwrap(),
            (SeccompChoice::Default, None)
        );
        let json = r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO"}]}"#;
        assert_eq!(
            seccomp_choice(&opts(&[&format!("seccomp={json}")])).unwrap(),
            (SeccompChoice::Custom, Some(json.to_owned()))
        );
        let req: RunRequest = serde_json::from_value(serde_json::json!({
            "image": "x", "security_opt": ["seccomp=unconfined"]
        }))
        .unwrap();
        assert_eq!(req.security_opt, ["seccomp=unconfined"]);
    }

    #[test]
    fn a_bad_security_opt_is_refused_naming_it() {
        for bad in [
            "apparmor=unconfined",
            "seccomp=/etc/profile.json",
            "seccomp",
            "label=disable",
        ] {
            let e = seccomp_choice(&[bad.to_owned()]).unwrap_err();
            assert!(e.is_client_error());
            assert!(e.to_string().contains(bad), "{e}");
        }
        let e = seccomp_choice(&[r#"seccomp={"defaultAction":"SCMP_ACT_NOPE"}"#.to_owned()])
            .unwrap_err();
        assert!(e.is_client_error());
        assert!(e.to_string().contains("SCMP_ACT_NOPE"), "{e}");
        let long = format!("seccomp=/{}", "x".repeat(500));
        let e = seccomp_choice(&[long]).unwrap_err().to_string();
        assert!(e.len() < 300, "{e}");
    }

    #[test]
    fn an_unknown_network_or_backend_is_refused_naming_the_allowed_values() {
        let e = serde_json::from_value::<RunRequest>(serde_json::json!({
            "image": "x", "network": "overlay"
        }))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("overlay")
                && e.contains("bridge")
                && e.contains("host")
                && e.contains("none"),
            "{e}"
        );
        let e = serde_json::from_value::<RunRequest>(serde_json::json!({
            "image": "x", "port_backend": "xdp"
        }))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("ebpf") && e.contains("nft-map") && e.contains("iptables"),
            "{e}"
        );
    }
}
