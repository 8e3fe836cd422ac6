//! What runs on the host that berth did not start but must account for. For now: userland
//! port-mapping proxies ([`proxies`]). Foreign containers (Docker, containerd, Kubernetes)
//! come here next.

pub mod proxies;
