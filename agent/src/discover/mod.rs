//! What runs on the host that berth did not start but must account for: containers of other
//! engines (Docker, containerd, Kubernetes, podman, LXC) found from the cgroup tree
//! ([`cgroups`]), and what their published ports cost the host: userland port-mapping proxies
//! ([`proxies`]) and per-port iptables rules ([`rules`]), attributed by address (the kernel's,
//! [`netns`], when the engine gives none). Metadata from the runtimes' APIs and state files
//! ([`meta`]: [`docker`]'s Engine API and files, [`containerd`]'s task bundles, [`podman`]'s
//! storage and CRI-O's bundles) names them; it is never needed for the numbers.

pub mod bundle;
pub mod cgroups;
pub mod containerd;
pub mod docker;
pub mod meta;
pub mod netns;
pub mod podman;
pub mod proxies;
pub mod rules;
