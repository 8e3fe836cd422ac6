//! Netlink and namespace plumbing: bridge, veth pairs, addresses, routes (rtnetlink), and
//! network namespace files (unshare + bind mount, as `ip netns add` does).
//!
//! Each operation runs on a short-lived thread with its own single-threaded tokio runtime and
//! netlink socket, so entering a container's namespace (setns) never leaks into the agent's
//! worker threads.

use std::{
    ffi::CString,
    fs,
    net::{IpAddr, Ipv4Addr},
    os::{fd::AsRawFd as _, unix::ffi::OsStrExt as _},
    path::{Path, PathBuf},
};

use futures_util::TryStreamExt as _;
use rtnetlink::{
    Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder,
    packet_route::link::{InfoBridgePort, InfoPortData, InfoPortKind, LinkAttribute, LinkMessage},
};

use super::NetError;

fn nl<'a>(op: &'static str, name: &'a str) -> impl FnOnce(rtnetlink::Error) -> NetError + 'a {
    move |e| NetError::Netlink {
        op,
        name: name.to_owned(),
        reason: e.to_string(),
    }
}

/// A link that should be there (just created, or always present like `lo`) is not.
fn missing(link: &str, netns: Option<&Path>) -> NetError {
    NetError::LinkMissing {
        link: link.to_owned(),
        netns: netns.map(Path::to_owned),
    }
}

/// Runs `f` with a netlink handle on a fresh thread, inside the namespace at `netns` if given.
fn run<T, F, Fut>(netns: Option<&Path>, f: F) -> Result<T, NetError>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, NetError>>,
{
    let netns = netns.map(Path::to_owned);
    let panicked = NetError::NetlinkThread {
        netns: netns.clone(),
    };
    std::thread::spawn(move || -> Result<T, NetError> {
        if let Some(ns) = &netns {
            enter_netns(ns)?;
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| NetError::Io {
                op: "tokio runtime for",
                path: netns.clone().unwrap_or_default(),
                source,
            })?;
        rt.block_on(async move {
            let (conn, handle, _) = rtnetlink::new_connection().map_err(|source| NetError::Io {
                op: "netlink socket in",
                path: netns.clone().unwrap_or_default(),
                source,
            })?;
            tokio::spawn(conn);
            f(handle).await
        })
    })
    .join()
    .unwrap_or(Err(panicked))
}

fn enter_netns(ns: &Path) -> Result<(), NetError> {
    let f = fs::File::open(ns).map_err(|source| NetError::Io {
        op: "open",
        path: ns.to_owned(),
        source,
    })?;
    // SAFETY: setns on a namespace fd, this thread only.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(NetError::Io {
            op: "setns into",
            path: ns.to_owned(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

async fn index_of(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, NetError> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(m) => Ok(m),
        // ENODEV: no such link.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(nl("get", name)(e)),
    }
}

/// Creates a network namespace and bind-mounts it at `path` (kept alive by the mount).
pub fn create_netns(path: &Path) -> Result<(), NetError> {
    let io = |op, source| NetError::Io {
        op,
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| io("create", e))?;
    }
    fs::File::create(path).map_err(|e| io("create", e))?;
    let target = CString::new(path.as_os_str().as_bytes()).expect("no NUL in paths");
    std::thread::spawn(move || -> std::io::Result<()> {
        // SAFETY: unshare of this thread's net namespace, then a bind mount of it.
        unsafe {
            if libc::unshare(libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let src = c"/proc/thread-self/ns/net";
            if libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    })
    .join()
    .map_err(|_| io("unshare for", std::io::Error::other("thread panicked")))?
    .map_err(|e| io("bind-mount a network namespace at", e))
}

/// Unmounts and removes a namespace file; absent is fine.
pub fn remove_netns(path: &Path) -> Result<(), NetError> {
    if let Ok(target) = CString::new(path.as_os_str().as_bytes()) {
        // SAFETY: valid C string; EINVAL (not mounted) is fine.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(NetError::Io {
            op: "remove",
            path: path.to_owned(),
            source,
        }),
    }
}

/// Brings `lo` up inside the namespace.
pub fn loopback_up(ns: &Path) -> Result<(), NetError> {
    let missing = missing("lo", Some(ns));
    run(Some(ns), |h| async move {
        let lo = index_of(&h, "lo").await?.ok_or(missing)?;
        h.link()
            .set(LinkUnspec::new_with_index(lo.header.index).up().build())
            .execute()
            .await
            .map_err(nl("up", "lo"))
    })
}

/// Ensures the bridge exists, is up and has `gateway/prefix`; returns its index.
pub fn ensure_bridge(name: &str, gateway: Ipv4Addr, prefix: u8) -> Result<u32, NetError> {
    let name = name.to_owned();
    run(None, move |h| async move {
        let index = match index_of(&h, &name).await? {
            Some(m) => m.header.index,
            None => {
                h.link()
                    .add(LinkBridge::new(&name).build())
                    .execute()
                    .await
                    .map_err(nl("add bridge", &name))?;
                index_of(&h, &name)
                    .await?
                    .ok_or_else(|| missing(&name, None))?
                    .header
                    .index
            }
        };
        let mut addrs = h.address().get().set_link_index_filter(index).execute();
        let mut has = false;
        while let Some(a) = addrs.try_next().await.map_err(nl("get addresses", &name))? {
            has |= a.attributes.iter().any(|attr| {
                matches!(attr, rtnetlink::packet_route::address::AddressAttribute::Address(IpAddr::V4(ip)) if *ip == gateway)
            });
        }
        if !has {
            h.address()
                .add(index, IpAddr::V4(gateway), prefix)
                .execute()
                .await
                .map_err(nl("add address", &name))?;
        }
        h.link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(nl("up", &name))?;
        Ok(index)
    })
}

/// Creates the veth pair `host`/`peer`, enslaves `host` to the bridge, moves `peer` into the
/// namespace as `eth0` with `ip/prefix` and a default route via `gateway`. Idempotent.
pub fn attach_veth(
    host: &str,
    peer: &str,
    bridge: u32,
    ns: &Path,
    ip: Ipv4Addr,
    prefix: u8,
    gateway: Ipv4Addr,
) -> Result<(), NetError> {
    // Already wired (a restart after a crash): eth0 has the address.
    let ns_owned: PathBuf = ns.to_owned();
    let wired = run(Some(ns), move |h| async move {
        Ok(index_of(&h, "eth0").await?.is_some())
    })?;
    if wired {
        return Ok(());
    }
    let (host_s, peer_s) = (host.to_owned(), peer.to_owned());
    let nsfile = fs::File::open(ns).map_err(|source| NetError::Io {
        op: "open",
        path: ns.to_owned(),
        source,
    })?;
    run(None, move |h| async move {
        if index_of(&h, &host_s).await?.is_some() {
            let _ = delete(&h, &host_s).await;
        }
        h.link()
            .add(LinkVeth::new(&host_s, &peer_s).build())
            .execute()
            .await
            .map_err(nl("add veth", &host_s))?;
        let hi = index_of(&h, &host_s)
            .await?
            .ok_or_else(|| missing(&host_s, None))?
            .header
            .index;
        h.link()
            .set(
                LinkUnspec::new_with_index(hi)
                    .controller(bridge)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(nl("enslave", &host_s))?;
        // Hairpin: a container reaching its own published port is DNATed back out of the
        // bridge port it came in on; without hairpin mode the bridge drops it.
        h.link()
            .set_port(
                LinkUnspec::new_with_index(hi)
                    .set_port_kind(InfoPortKind::Bridge)
                    .set_port_data(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
                        true,
                    )]))
                    .build(),
            )
            .execute()
            .await
            .map_err(nl("hairpin mode on", &host_s))?;
        let pi = index_of(&h, &peer_s)
            .await?
            .ok_or_else(|| missing(&peer_s, None))?
            .header
            .index;
        h.link()
            .set(
                LinkUnspec::new_with_index(pi)
                    .setns_by_fd(nsfile.as_raw_fd())
                    .build(),
            )
            .execute()
            .await
            .map_err(nl("move into the container namespace", &peer_s))?;
        drop(nsfile);
        Ok(())
    })?;
    let peer_s = peer.to_owned();
    let missing_peer = missing(peer, Some(ns));
    run(Some(&ns_owned), move |h| async move {
        let pi = index_of(&h, &peer_s)
            .await?
            .ok_or(missing_peer)?
            .header
            .index;
        h.link()
            .set(
                LinkUnspec::new_with_index(pi)
                    .name("eth0".to_owned())
                    .build(),
            )
            .execute()
            .await
            .map_err(nl("rename", &peer_s))?;
        h.address()
            .add(pi, IpAddr::V4(ip), prefix)
            .execute()
            .await
            .map_err(nl("add address", "eth0"))?;
        h.link()
            .set(LinkUnspec::new_with_index(pi).up().build())
            .execute()
            .await
            .map_err(nl("up", "eth0"))?;
        h.route()
            .add(
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .gateway(gateway)
                    .build(),
            )
            .execute()
            .await
            .map_err(nl("add default route", "eth0"))?;
        Ok(())
    })
}

async fn delete(h: &Handle, name: &str) -> Result<(), NetError> {
    if let Some(m) = index_of(h, name).await? {
        h.link()
            .del(m.header.index)
            .execute()
            .await
            .map_err(nl("delete", name))?;
    }
    Ok(())
}

/// Deletes a link in the host namespace; absent is fine.
pub fn delete_link(name: &str) -> Result<(), NetError> {
    let name = name.to_owned();
    run(None, move |h| async move { delete(&h, &name).await })
}

/// Links of the host namespace whose name starts with `prefix`: (name, controller name).
pub fn links_with_prefix(prefix: &str) -> Result<Vec<(String, Option<String>)>, NetError> {
    let prefix = prefix.to_owned();
    run(None, move |h| async move {
        let mut all = Vec::new();
        let mut links = h.link().get().execute();
        while let Some(m) = links.try_next().await.map_err(nl("list", "links"))? {
            let name = m.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            });
            let controller = m.attributes.iter().find_map(|a| match a {
                LinkAttribute::Controller(i) => Some(*i),
                _ => None,
            });
            all.push((m.header.index, name.unwrap_or_default(), controller));
        }
        let names: std::collections::HashMap<u32, String> =
            all.iter().map(|(i, n, _)| (*i, n.clone())).collect();
        Ok(all
            .into_iter()
            .filter(|(_, n, _)| n.starts_with(&prefix))
            .map(|(_, n, c)| (n, c.and_then(|i| names.get(&i).cloned())))
            .collect())
    })
}

/// Every IPv4 address of the calling thread's network namespace: (interface index, address),
/// in the kernel's order (an interface's primary address first).
pub fn ipv4_addresses() -> Result<Vec<(u32, Ipv4Addr)>, NetError> {
    run(None, move |h| async move {
        let mut out = Vec::new();
        let mut addrs = h.address().get().execute();
        while let Some(a) = addrs.try_next().await.map_err(nl("list", "addresses"))? {
            for attr in &a.attributes {
                if let rtnetlink::packet_route::address::AddressAttribute::Local(IpAddr::V4(ip)) =
                    attr
                {
                    out.push((a.header.index, *ip));
                }
            }
        }
        Ok(out)
    })
}
