//! What berth reads of a Docker container, from either of its two sources: the Engine API's
//! inspect answer (bollard's models) or the files dockerd keeps per container under its data
//! root, `containers/<id>/config.v2.json` and `hostconfig.json` (same field names; only the
//! fields below are parsed, so a newer dockerd's extra fields change nothing). Both become one
//! [`Meta`] through [`Fields::meta`].
//!
//! Published ports: `NetworkSettings.Ports` (what is bound now) or, when it is empty (a
//! stopped container), `HostConfig.PortBindings` with a fixed host port (what `-p` asked for),
//! as berth records its own containers' `-p`. Docker lists one binding per port and family:
//! `-p 40000-40099:40000-40099/udp` is 100 ports x {`0.0.0.0`, `::`}; the wildcard of either
//! family is one "every address", so both collapse, and consecutive host ports mapped to
//! consecutive container ports of one protocol and host address become one [`Publish`] range.
//! A binding on a specific IPv6 address has no place in [`Publish`] (IPv4 `host_ip`) and is left
//! out.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    time::UNIX_EPOCH,
};

use bollard::models::{ContainerInspectResponse, PortMap};
use serde::Deserialize;

use crate::{
    discover::meta::Meta,
    model::{NetworkMode, PortBinding, Proto, group_bindings},
};

/// The parts of one container's description berth uses, borrowed from either source.
#[derive(Debug, Default)]
pub struct Fields<'a> {
    /// `Name`, with Docker's leading `/`.
    pub name: Option<&'a str>,
    /// `Config.Image`: the reference the user gave (`bb:1`).
    pub image: Option<&'a str>,
    pub labels: Option<&'a HashMap<String, String>>,
    /// `HostConfig.NetworkMode`: `default`, `bridge`, `host`, `none`, a network's name, or
    /// `container:<id>`.
    pub network_mode: Option<&'a str>,
    /// `NetworkSettings.Ports`.
    pub ports: Option<&'a PortMap>,
    /// `HostConfig.PortBindings`.
    pub port_bindings: Option<&'a PortMap>,
    /// `NetworkSettings.Networks`: (network name, `IPAddress`).
    pub addresses: Vec<(&'a str, &'a str)>,
    /// `Created`, RFC 3339 in UTC with nanoseconds.
    pub created: Option<&'a str>,
    pub log_path: Option<&'a str>,
}

impl<'a> Fields<'a> {
    /// The fields of an API inspect answer.
    pub fn from_api(c: &'a ContainerInspectResponse) -> Self {
        let settings = c.network_settings.as_ref();
        let host = c.host_config.as_ref();
        Fields {
            name: c.name.as_deref(),
            image: c.config.as_ref().and_then(|c| c.image.as_deref()),
            labels: c.config.as_ref().and_then(|c| c.labels.as_ref()),
            network_mode: host.and_then(|h| h.network_mode.as_deref()),
            ports: settings.and_then(|s| s.ports.as_ref()),
            port_bindings: host.and_then(|h| h.port_bindings.as_ref()),
            addresses: settings
                .and_then(|s| s.networks.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|(net, e)| Some((net.as_str(), e.ip_address.as_deref()?)))
                .collect(),
            created: c.created.as_deref(),
            log_path: c.log_path.as_deref(),
        }
    }

    /// The fields of the two files on disk.
    pub fn from_disk(config: &'a DiskConfig, host: Option<&'a DiskHostConfig>) -> Self {
        let settings = config.network_settings.as_ref();
        Fields {
            name: config.name.as_deref(),
            image: config.config.as_ref().and_then(|c| c.image.as_deref()),
            labels: config.config.as_ref().and_then(|c| c.labels.as_ref()),
            network_mode: host.and_then(|h| h.network_mode.as_deref()),
            ports: settings.and_then(|s| s.ports.as_ref()),
            port_bindings: host.and_then(|h| h.port_bindings.as_ref()),
            addresses: settings
                .and_then(|s| s.networks.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|(net, e)| Some((net.as_str(), e.ip_address.as_deref()?)))
                .collect(),
            created: config.created.as_deref(),
            log_path: config.log_path.as_deref(),
        }
    }

    /// berth's metadata of the container.
    pub fn meta(&self) -> Meta {
        let mut ips: Vec<(&str, Ipv4Addr)> = self
            .addresses
            .iter()
            .filter_map(|(net, ip)| Some((*net, ip.parse().ok()?)))
            .collect();
        // One answer whatever the map's order: the first network by name.
        ips.sort();
        let mut publish = group_bindings(bindings(self.ports));
        if publish.is_empty() {
            // Stopped: what `-p` asked for, where it fixed the host port (an unset one is
            // picked by Docker at start, so unknown until then).
            publish = group_bindings(bindings(self.port_bindings));
        }
        Meta {
            name: self
                .name
                .map(|n| n.strip_prefix('/').unwrap_or(n).to_owned())
                .filter(|n| !n.is_empty()),
            image: self.image.filter(|i| !i.is_empty()).map(str::to_owned),
            labels: self
                .labels
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<BTreeMap<_, _>>(),
            network_mode: self.network_mode.map(network_mode),
            ip: ips.first().map(|(_, ip)| *ip),
            publish,
            sandbox: false,
            created_at: self.created.and_then(unix_seconds),
            log_path: self.log_path.filter(|p| !p.is_empty()).map(PathBuf::from),
        }
    }
}

/// `config.v2.json`, the fields berth reads.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DiskConfig {
    pub name: Option<String>,
    pub created: Option<String>,
    pub log_path: Option<String>,
    pub config: Option<DiskContainerConfig>,
    pub network_settings: Option<DiskNetworkSettings>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DiskContainerConfig {
    pub image: Option<String>,
    pub labels: Option<HashMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DiskNetworkSettings {
    pub ports: Option<PortMap>,
    pub networks: Option<HashMap<String, DiskEndpoint>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct DiskEndpoint {
    #[serde(rename = "IPAddress")]
    pub ip_address: Option<String>,
}

/// `hostconfig.json`, the fields berth reads.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DiskHostConfig {
    pub network_mode: Option<String>,
    pub port_bindings: Option<PortMap>,
}

/// Why a container's files could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not Docker's container JSON: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// The metadata of container `dir` (`<data-root>/containers/<id>`) from its two files;
/// `hostconfig.json` is optional (network mode and bindings are then unknown).
pub fn read_disk(dir: &Path) -> Result<Meta, DiskError> {
    let config: DiskConfig = read_json(&dir.join("config.v2.json"))?;
    let host = match read_json::<DiskHostConfig>(&dir.join("hostconfig.json")) {
        Ok(h) => Some(h),
        Err(DiskError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            None
        }
        Err(e) => return Err(e),
    };
    Ok(Fields::from_disk(&config, host.as_ref()).meta())
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, DiskError> {
    let bytes = std::fs::read(path).map_err(|source| DiskError::Read {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| DiskError::Parse {
        path: path.to_owned(),
        source,
    })
}

/// Docker's network mode as berth's: a user-defined network or another container's namespace
/// is a bridge as far as port mapping goes.
fn network_mode(mode: &str) -> NetworkMode {
    match mode {
        "host" => NetworkMode::Host,
        "none" => NetworkMode::None,
        _ => NetworkMode::Bridge,
    }
}

/// RFC 3339 (UTC) to unix seconds; Docker's zero time (year 1) and garbage give `None`.
fn unix_seconds(s: &str) -> Option<f64> {
    let t = humantime::parse_rfc3339(s).ok()?;
    Some(t.duration_since(UNIX_EPOCH).ok()?.as_secs_f64())
}

/// One binding, ordered for grouping: (protocol, TCP first; host address, `None` for every
/// address; host port; container port).
type Binding = PortBinding;

/// The bindings of `map` berth can represent: a fixed host port, TCP or UDP, every address or
/// one IPv4 address. Both families' wildcards are `None`, so their twins collapse.
fn bindings(map: Option<&PortMap>) -> BTreeSet<Binding> {
    let mut out = BTreeSet::new();
    for (key, list) in map.into_iter().flatten() {
        let Some((port, proto)) = container_port(key) else {
            continue;
        };
        for b in list.iter().flatten() {
            let Some(host_port) = b
                .host_port
                .as_deref()
                .and_then(|p| p.parse::<u16>().ok())
                .filter(|p| *p != 0)
            else {
                continue;
            };
            let host_ip = match b.host_ip.as_deref().unwrap_or("") {
                "" => None,
                ip => match ip.parse::<IpAddr>() {
                    Ok(ip) if ip.is_unspecified() => None,
                    Ok(IpAddr::V4(v4)) => Some(v4),
                    _ => continue,
                },
            };
            out.insert((proto, host_ip, host_port, port));
        }
    }
    out
}

/// `"40000/udp"` (or `"80"`, TCP) to (port, proto); SCTP and garbage give `None`.
fn container_port(key: &str) -> Option<(u16, Proto)> {
    let (port, proto) = key.split_once('/').unwrap_or((key, "tcp"));
    let proto = proto.parse::<Proto>().ok()?;
    Some((port.parse::<u16>().ok().filter(|p| *p != 0)?, proto))
}

#[cfg(test)]
#[path = "fields_tests.rs"]
mod tests;
