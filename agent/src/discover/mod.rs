//! What runs on the host that berth did not start but must account for: containers of other
//! engines (Docker, containerd, Kubernetes, podman, LXC) found from the cgroup tree
//! ([`cgroups`]), and userland port-mapping proxies ([`proxies`]). Metadata from the runtimes'
//! APIs and state files comes here next; it is never needed for the numbers.

pub mod cgroups;
pub mod meta;
pub mod proxies;
