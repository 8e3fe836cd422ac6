//! Containers berth did not start, found from the cgroup tree: the kernel is the ground truth
//! (a runtime's API may be down, slow or absent; its containers' cgroups are not). Each
//! runtime names its containers' cgroups in a known way, with the cgroupfs and the systemd
//! cgroup drivers; [`classify`] maps one path (below the cgroup2 mount: cgroup v2, or the
//! unified hierarchy in hybrid mode) to what runs there, and [`walk`] finds them all.
//!
//! Layouts (`<id>` is 64 lowercase hex characters):
//! - Docker: `/docker/<id>` (cgroupfs), `…/docker-<id>.scope` (systemd, under `system.slice`).
//! - containerd (`ctr`) and nerdctl: `/<namespace>/<id>` (cgroupfs: containerd's default
//!   `CgroupsPath`; in the `default` namespace any containerd id is taken, elsewhere only a hex
//!   id, so `/<anything>/<name>` is not mistaken for a container), `…/nerdctl-<id>.scope`.
//! - Kubernetes (containerd's CRI plugin or CRI-O): below `kubepods` (cgroupfs) or
//!   `kubepods.slice` (systemd, also `<prefix>-kubepods.slice` as kind nests it), an optional
//!   QoS level (`burstable`, `besteffort` / `kubepods-burstable.slice`; guaranteed pods have
//!   none), the pod (`pod<uid>` / `kubepods[-<qos>]-pod<uid with _>.slice`) and the container:
//!   `<id>` or `crio-<id>` (cgroupfs), `cri-containerd-<id>.scope`, `crio-<id>.scope` or
//!   `docker-<id>.scope` (systemd). CRI-O's monitor, `crio-conmon-<id>[.scope]`, is
//!   [`Kind::Conmon`]. A pod's sandbox (pause) container has a cgroup named exactly like its
//!   workloads, so from the path alone a pod's container is [`Kind::Unknown`]: the runtime's
//!   metadata (CRI labels, `io.cri-containerd.kind`) tells them apart.
//! - podman: `…/libpod-<id>.scope` (systemd, under `machine.slice`, or a user's slice when
//!   rootless), `/libpod_parent/libpod-<id>` (cgroupfs); `libpod-conmon-<id>.scope` is its
//!   monitor.
//! - LXC and LXD: `…/lxc.payload.<name>` (LXC >= 4), `/lxc.payload/<name>` (early 4.0),
//!   `/lxc/<name>` (older); `lxc.monitor.<name>` is the monitor. The id is the name.
//!
//! Anything else is not a container: systemd's services, slices and scopes, the pod-level
//! cgroups themselves, and any tree whose top directory starts with `berth` (berth's own
//! containers, other agents' and tests' roots: only known layouts count). The walk does not
//! descend into a container's cgroup (what runs inside it, nested containers included, is its
//! own). Each tick walks the tree, but lists again only the directories an inotify watch says
//! changed (`cgroup::tree`, shared with the walk of berth's tracked subtree): what appeared or
//! went away since the last walk is in the next snapshot, and a tick at rest lists nothing.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    io::Read,
    os::unix::fs::{FileExt, MetadataExt},
    path::Path,
};

use crate::{cgroup::tree::Tree, model::Engine};

/// Pod uid, from the pod's cgroup (the CRI label of the same name carries the same value).
pub const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
/// Kubernetes QoS class from the cgroup path: `guaranteed`, `burstable` or `besteffort`.
pub const LABEL_QOS: &str = "berth.k8s.qos";
/// The CRI runtime a pod container's cgroup name gives away: `containerd`, `crio`, `docker`.
pub const LABEL_CRI: &str = "berth.k8s.cri";
/// The containerd namespace of a container found at `/<namespace>/<id>`.
pub const LABEL_NAMESPACE: &str = "berth.containerd.namespace";

/// How deep below the mount the walk looks. The deepest known layout is rootless podman's
/// `user.slice/user-N.slice/user@N.service/user.slice/libpod-<id>.scope` (5); kind's nested
/// kubelet adds a level or two to the systemd Kubernetes layout (4).
pub const MAX_DEPTH: usize = 7;

/// What a container cgroup holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A container running the user's process.
    Workload,
    /// A pod's sandbox (pause) container. Never from the path alone: set from metadata.
    Sandbox,
    /// A runtime's monitor process (CRI-O and podman conmon, LXC's monitor), not a container.
    Conmon,
    /// A pod's container: a workload or its sandbox, told apart only by the runtime's metadata.
    Unknown,
}

/// What a cgroup path says about the container in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    pub engine: Engine,
    /// The engine's id: 64 hex characters, or the name for LXC and for containerd's `default`
    /// namespace.
    pub id: String,
    /// A name when the path has one (LXC); the others get theirs from metadata.
    pub name: Option<String>,
    /// What the path tells: [`LABEL_POD_UID`], [`LABEL_QOS`], [`LABEL_CRI`],
    /// [`LABEL_NAMESPACE`].
    pub labels: BTreeMap<String, String>,
    pub kind: Kind,
}

impl Discovered {
    fn new(engine: Engine, id: &str, kind: Kind) -> Self {
        Self {
            engine,
            id: id.to_owned(),
            name: None,
            labels: BTreeMap::new(),
            kind,
        }
    }

    fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_owned(), value.to_owned());
        self
    }

    fn named(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }
}

/// What runs in the cgroup at `path` (below the cgroup2 mount, e.g. `/docker/<id>`), if its
/// name follows a known runtime's layout. Pure: reads nothing.
pub fn classify(path: &str) -> Option<Discovered> {
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let (&first, &leaf) = (comps.first()?, comps.last()?);
    if first.starts_with("berth") {
        return None;
    }
    if let Some(k) = comps.iter().position(|c| is_kubepods(c)) {
        return kubernetes(&comps[k + 1..]);
    }
    if let Some(id) = scope(leaf, "docker-") {
        return Some(Discovered::new(Engine::Docker, id, Kind::Workload));
    }
    if let Some(id) = scope(leaf, "nerdctl-") {
        return Some(Discovered::new(Engine::Containerd, id, Kind::Workload));
    }
    if let Some(id) = scope(leaf, "libpod-conmon-") {
        return Some(Discovered::new(Engine::Podman, id, Kind::Conmon));
    }
    if let Some(id) = scope(leaf, "libpod-") {
        return Some(Discovered::new(Engine::Podman, id, Kind::Workload));
    }
    if let Some(name) = leaf.strip_prefix("lxc.payload.").filter(|n| is_lxc_name(n)) {
        return Some(Discovered::new(Engine::Lxc, name, Kind::Workload).named(name));
    }
    if let Some(name) = leaf.strip_prefix("lxc.monitor.").filter(|n| is_lxc_name(n)) {
        return Some(Discovered::new(Engine::Lxc, name, Kind::Conmon).named(name));
    }
    let [parent, leaf] = comps[..] else {
        return None;
    };
    match parent {
        "docker" => is_id(leaf).then(|| Discovered::new(Engine::Docker, leaf, Kind::Workload)),
        "libpod_parent" => leaf
            .strip_prefix("libpod-")
            .filter(|id| is_id(id))
            .map(|id| Discovered::new(Engine::Podman, id, Kind::Workload)),
        "lxc" | "lxc.payload" => is_lxc_name(leaf)
            .then(|| Discovered::new(Engine::Lxc, leaf, Kind::Workload).named(leaf)),
        ns if is_containerd_namespace(ns)
            && (is_id(leaf) || (ns == "default" && is_containerd_id(leaf))) =>
        {
            Some(
                Discovered::new(Engine::Containerd, leaf, Kind::Workload)
                    .label(LABEL_NAMESPACE, ns),
            )
        }
        _ => None,
    }
}

/// The part of a Kubernetes path after `kubepods[.slice]`: `[qos]/pod/container`.
fn kubernetes(rest: &[&str]) -> Option<Discovered> {
    let (qos, pod, leaf) = match *rest {
        [qos, pod, leaf] => (qos_class(qos)?, pod, leaf),
        [pod, leaf] => ("guaranteed", pod, leaf),
        _ => return None,
    };
    let uid = pod_uid(pod)?;
    let (id, kind, cri) = if let Some(id) = scope(leaf, "cri-containerd-") {
        (id, Kind::Unknown, Some("containerd"))
    } else if let Some(id) = scope(leaf, "crio-conmon-").or_else(|| cgroupfs(leaf, "crio-conmon-"))
    {
        (id, Kind::Conmon, Some("crio"))
    } else if let Some(id) = scope(leaf, "crio-").or_else(|| cgroupfs(leaf, "crio-")) {
        (id, Kind::Unknown, Some("crio"))
    } else if let Some(id) = scope(leaf, "docker-") {
        (id, Kind::Unknown, Some("docker"))
    } else if is_id(leaf) {
        (leaf, Kind::Unknown, None)
    } else {
        return None;
    };
    let d = Discovered::new(Engine::Kubernetes, id, kind)
        .label(LABEL_POD_UID, &uid)
        .label(LABEL_QOS, qos);
    Some(match cri {
        Some(cri) => d.label(LABEL_CRI, cri),
        None => d,
    })
}

fn is_kubepods(c: &str) -> bool {
    c == "kubepods" || c == "kubepods.slice" || c.ends_with("-kubepods.slice")
}

/// `burstable` / `besteffort` (cgroupfs) or `[<prefix>-]kubepods-burstable.slice` (systemd).
fn qos_class(c: &str) -> Option<&'static str> {
    let c = c.strip_suffix(".slice").unwrap_or(c);
    ["burstable", "besteffort", "guaranteed"]
        .into_iter()
        .find(|q| c == *q || c.ends_with(&format!("kubepods-{q}")))
}

/// `pod<uid>` (cgroupfs) or `…-pod<uid with _ for ->.slice` (systemd; systemd reserves `-`
/// as its hierarchy separator), as the uid with dashes.
fn pod_uid(c: &str) -> Option<String> {
    let raw = match c.strip_suffix(".slice") {
        Some(unit) => unit.rsplit('-').next()?.strip_prefix("pod")?,
        None => c.strip_prefix("pod")?,
    };
    let ok = !raw.is_empty()
        && raw
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b'-' || b == b'_');
    ok.then(|| raw.replace('_', "-"))
}

/// The id of `<prefix><id>.scope` (the systemd driver's unit names).
fn scope<'a>(leaf: &'a str, prefix: &str) -> Option<&'a str> {
    cgroupfs(leaf.strip_suffix(".scope")?, prefix)
}

/// The id of `<prefix><id>` (a cgroupfs name).
fn cgroupfs<'a>(leaf: &'a str, prefix: &str) -> Option<&'a str> {
    leaf.strip_prefix(prefix).filter(|id| is_id(id))
}

/// 64 lowercase hex characters: the ids Docker, containerd's CRI, CRI-O and podman make.
pub fn is_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// containerd's identifier rule: alphanumerics joined by single `.`, `_` or `-`, at most 76.
fn is_containerd_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 76
        && s.split(['.', '_', '-'])
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// A containerd namespace that is not another layout's directory or a systemd unit.
fn is_containerd_namespace(ns: &str) -> bool {
    is_containerd_id(ns)
        && ![".slice", ".scope", ".service", ".mount", ".socket"]
            .iter()
            .any(|s| ns.ends_with(s))
        && ![
            "docker",
            "libpod_parent",
            "lxc",
            "kubepods",
            "machine",
            "user",
        ]
        .contains(&ns)
}

/// An LXC container name: no `/`, not empty, not a dot file.
fn is_lxc_name(s: &str) -> bool {
    !s.is_empty() && !s.starts_with('.') && !s.contains('/')
}

/// A container cgroup found by [`walk`].
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    /// Path below the mount, e.g. `/docker/<id>`.
    pub path: String,
    /// v2 cgroup id: the directory's inode, what the probes see.
    pub cgroup_id: u64,
    /// When the cgroup was made (its inode's change time), unix seconds.
    pub created_at: f64,
    /// Whether any process is in it or below it (`populated 1` in `cgroup.events`; where that
    /// file is absent, a non-empty `cgroup.procs`).
    pub populated: bool,
    pub discovered: Discovered,
}

/// What a walk keeps of a container cgroup for the next one: when it was made, and its
/// `cgroup.events` held open, so a later walk reads it with one `pread` instead of an open, a
/// read and a close (kernfs opens are tens of microseconds on a loaded VM). A removed cgroup's
/// entry is dropped (and its file closed) by the walk that no longer finds it.
#[derive(Debug, Default)]
pub struct Known {
    seen: HashMap<u64, Seen>,
    /// Every kept `cgroup.events`, registered by cgroup id: the kernel marks one ready when
    /// its content changed since it was last read, so a walk reads only those (`None` until
    /// the first walk, or where epoll is refused: then each is read every walk).
    epoll: Option<Epoll>,
    /// A file could not be watched (not cgroupfs): no epoll from then on.
    unwatchable: bool,
    /// The directories walked, their last listings and their inotify watches.
    tree: Tree<What>,
}

/// What the walk does with a child directory (the others are not kept).
#[derive(Debug)]
enum What {
    /// Not a container, within the depth bound: walked into.
    Walk,
    /// A container's cgroup (never walked into).
    Container(Discovered),
}

impl What {
    /// What the walk does with the child directory at `path` (`name` in a directory `depth`
    /// below the mount): containers are kept, and what it walks into (not `skip`, not a
    /// top-level `berth*` tree, within [`MAX_DEPTH`]).
    fn of(path: &str, name: &str, depth: usize, skip: &str) -> Option<Self> {
        if path == skip {
            return None;
        }
        match classify(path) {
            Some(d) => Some(Self::Container(d)),
            None if depth + 1 < MAX_DEPTH && !(depth == 0 && name.starts_with("berth")) => {
                Some(Self::Walk)
            }
            None => None,
        }
    }
}

#[derive(Debug)]
struct Seen {
    created_at: f64,
    events: Option<fs::File>,
    /// What `events` said when last read.
    populated: bool,
}

/// An epoll instance over cgroupfs `cgroup.events` files: kernfs wakes pollers of a file
/// whose value changed (`EPOLLPRI`) until they read it again (cgroup-v2.rst: "a value change
/// in this file generates a file modified event").
#[derive(Debug)]
struct Epoll(std::os::fd::OwnedFd);

impl Epoll {
    fn new() -> Option<Self> {
        // SAFETY: epoll_create1 takes flags and returns a new fd or -1.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        // SAFETY: a fresh fd we own.
        (fd >= 0).then(|| Self(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }))
    }

    /// Watches `file` under `id`; a file closed later leaves the set by itself.
    fn add(&self, file: &fs::File, id: u64) -> bool {
        use std::os::fd::AsRawFd as _;
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLPRI | libc::EPOLLERR) as u32,
            u64: id,
        };
        // SAFETY: valid fds and a pointer to a local event.
        unsafe {
            libc::epoll_ctl(
                self.0.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                file.as_raw_fd(),
                &mut ev,
            ) == 0
        }
    }

    /// Ids whose file changed since it was last read (none waited for). `None` when the
    /// kernel refused: then every file must be read.
    fn ready(&self, max: usize) -> Option<std::collections::HashSet<u64>> {
        use std::os::fd::AsRawFd as _;
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; max.max(1)];
        // SAFETY: the buffer holds `len` events and outlives the call.
        let n = unsafe {
            libc::epoll_wait(
                self.0.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as i32,
                0,
            )
        };
        let n = usize::try_from(n).ok()?;
        Some(events[..n].iter().map(|e| e.u64).collect())
    }
}

impl Known {
    /// Cgroups the last walk found.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Directories the last walk listed; the others' children came from their last listing
    /// (no inotify event named them).
    pub fn listed(&self) -> usize {
        self.tree.listed()
    }

    /// Whether the walk watches the directories it lists (inotify).
    pub fn watching(&self) -> bool {
        self.tree.watching()
    }
}

/// Every container cgroup below `mount` (the cgroup2 mount point), at most [`MAX_DEPTH`] deep,
/// skipping `skip` (berth's tracked root, relative like `/berth`). Directories that vanish
/// during the walk are skipped: cgroups come and go all the time.
///
/// `known` is the last walk's (of the same `mount` and `skip`). A directory is listed again
/// only when an inotify event said a child came or went (or it has no watch: see
/// `cgroup::tree`); the others' children come from their last listing, so at rest a walk
/// lists nothing. A cgroup still there is not stat'ed again (its id is the `d_ino` of the
/// directory entry, which on cgroupfs is the inode number and is never reused while the
/// machine runs) and its `cgroup.events` is read through the file kept open, and only when the
/// kernel marked it changed (one `epoll_wait` per walk for all of them; every file is read
/// each walk where epoll is refused).
pub fn walk(mount: &Path, skip: &str, known: &mut Known) -> Vec<Found> {
    let skip = skip.trim_end_matches('/');
    if known.epoll.is_none() && !known.unwatchable && known.seen.is_empty() {
        known.epoll = Epoll::new();
    }
    // Files that changed since their last read (all of them may be ready at once).
    let ready = known
        .epoll
        .as_ref()
        .and_then(|e| e.ready(known.seen.len() + 1));
    known.tree.begin(mount);
    let mut out = Vec::new();
    let mut seen = HashMap::with_capacity(known.seen.len());
    // (path below the mount, inode as its parent listed it, depth)
    let mut stack: Vec<(String, u64, usize)> = vec![(String::new(), 0, 0)];
    while let Some((path, ino, depth)) = stack.pop() {
        let keep = |child: &str, name: &str| What::of(child, name, depth, skip);
        let Some(children) = known.tree.children(mount, path, ino, keep) else {
            continue;
        };
        for c in children {
            let discovered = match &c.what {
                What::Walk => {
                    stack.push((c.path.clone(), c.ino, depth + 1));
                    continue;
                }
                What::Container(d) => d,
            };
            let id = c.ino;
            let dir = || mount.join(c.path.trim_start_matches('/'));
            let entry = match known.seen.remove(&id) {
                Some(mut s) => {
                    let changed = ready.as_ref().is_none_or(|r| r.contains(&id));
                    s.populated = match &s.events {
                        Some(f) if changed => events_populated(f),
                        Some(_) => s.populated,
                        None => procs_populated(&dir()),
                    };
                    s
                }
                None => {
                    let dir = dir();
                    let Ok(meta) = fs::symlink_metadata(&dir) else {
                        continue;
                    };
                    let events = fs::File::open(dir.join("cgroup.events")).ok();
                    // Read after it is watched: a change in between is not lost.
                    let watched = match (&known.epoll, &events) {
                        (Some(ep), Some(f)) => ep.add(f, id),
                        _ => false,
                    };
                    let populated = match &events {
                        Some(f) => events_populated(f),
                        None => procs_populated(&dir),
                    };
                    if !watched && events.is_some() {
                        // This file cannot be watched: every walk reads every file.
                        known.epoll = None;
                        known.unwatchable = true;
                    }
                    Seen {
                        created_at: meta.ctime() as f64 + meta.ctime_nsec() as f64 / 1e9,
                        events,
                        populated,
                    }
                }
            };
            out.push(Found {
                populated: entry.populated,
                path: c.path.clone(),
                cgroup_id: id,
                created_at: entry.created_at,
                discovered: discovered.clone(),
            });
            seen.insert(id, entry);
        }
    }
    known.tree.end();
    // What is left in the old map was not found again: dropping it closes its files.
    known.seen = seen;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// `populated 1` in `cgroup.events` (v2: the cgroup or a descendant has a process): one
/// `pread` of the file from its start into a stack buffer (`populated` is its first line).
/// A file that can no longer be read (its cgroup was removed) is not populated.
fn events_populated(events: &fs::File) -> bool {
    let mut buf = [0u8; 64];
    let Ok(n) = events.read_at(&mut buf, 0) else {
        return false;
    };
    buf[..n]
        .split(|&b| b == b'\n')
        .any(|l| l.trim_ascii() == b"populated 1")
}

/// Where there is no `cgroup.events`: a first pid in `cgroup.procs`.
fn procs_populated(dir: &Path) -> bool {
    let mut buf = [0u8; 64];
    fs::File::open(dir.join("cgroup.procs"))
        .and_then(|mut f| f.read(&mut buf))
        .is_ok_and(|n| !buf[..n].trim_ascii().is_empty())
}

#[cfg(test)]
#[path = "cgroups_tests.rs"]
mod tests;
