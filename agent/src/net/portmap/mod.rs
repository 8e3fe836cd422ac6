//! TEMPORARY STUB: replaced by the portmap branch.
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
#[derive(Debug, thiserror::Error)]
pub enum PortmapError {
    #[error("{0}")]
    Invalid(String),
}
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publish {
    pub host_ip: Option<Ipv4Addr>,
    pub host: PortRange,
    pub container: PortRange,
    pub proto: Proto,
}
pub fn parse_publish(s: &str) -> Result<Publish, PortmapError> {
    Err(PortmapError::Invalid(s.into()))
}
pub fn check_conflicts(_new: &[Publish], _existing: &[Publish]) -> Result<(), PortmapError> {
    Ok(())
}
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    NftMap,
    Iptables,
}
pub struct PortmapConfig {
    pub table: String,
    pub bridge: String,
    pub subnet: ipnet::Ipv4Net,
}
pub trait Backend: Send + Sync {
    fn kind(&self) -> BackendKind;
    fn setup(&self) -> Result<(), PortmapError>;
    fn add(
        &self,
        owner: &str,
        container_ip: Ipv4Addr,
        publish: &[Publish],
    ) -> Result<(), PortmapError>;
    fn remove(&self, owner: &str) -> Result<(), PortmapError>;
    fn owners(&self) -> Result<Vec<String>, PortmapError>;
    fn teardown(&self) -> Result<(), PortmapError>;
}
struct Nop(BackendKind);
impl Backend for Nop {
    fn kind(&self) -> BackendKind {
        self.0
    }
    fn setup(&self) -> Result<(), PortmapError> {
        Ok(())
    }
    fn add(&self, _: &str, _: Ipv4Addr, _: &[Publish]) -> Result<(), PortmapError> {
        Ok(())
    }
    fn remove(&self, _: &str) -> Result<(), PortmapError> {
        Ok(())
    }
    fn owners(&self) -> Result<Vec<String>, PortmapError> {
        Ok(vec![])
    }
    fn teardown(&self) -> Result<(), PortmapError> {
        Ok(())
    }
}
pub fn backend(kind: BackendKind, _config: &PortmapConfig) -> Box<dyn Backend> {
    Box::new(Nop(kind))
}
pub fn ensure_sysctls(_bridge: &str) -> Result<(), PortmapError> {
    Ok(())
}
impl PortmapError {
    pub fn is_client_error(&self) -> bool {
        true
    }
}
