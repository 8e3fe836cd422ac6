//! The `TRACKED` map: the cgroup v2 ids whose tasks and sockets the syscall and network
//! probes count. One lookup of the task's (or socket's) cgroup id is the programs' only test,
//! the cheapest early exit for the rest of the host (`cargo xtask bench probes`).
//!
//! Who writes it:
//! - the agent, once per tick, after the collectors found berth's subtree and every container
//!   (berth's and the other engines'): [`MapSet::sync`] deletes the ids that went and inserts
//!   the new ones, the difference against what it put there, never a rewrite;
//! - the kernel, between ticks: `berth_cgroup_mkdir` (raw tracepoint `cgroup_mkdir`) inserts a
//!   cgroup created below berth's root at once, so berth's new containers are counted from
//!   their first syscall, and `berth_cgroup_rmdir` deletes any removed cgroup's id, so a cgroup
//!   created and removed between two ticks leaves nothing behind. The hooks read `struct
//!   cgroup` at offsets from the kernel's BTF ([`CgroupLayout`]); without them berth's new
//!   cgroups are counted from the next tick.
//!
//! Another engine's container is counted from the tick that found it. The map is not pinned: a
//! restarted agent fills it on its first tick. A full map refuses an id; that cgroup is not
//! counted, which is reported as lost (`berth_probe_lost_events_total{map="TRACKED"}`, one per
//! cgroup refused) and retried every tick, never an error.

use std::sync::OnceLock;

use aya::{Ebpf, EbpfLoader, programs::RawTracePoint};
use berth_common::{TRACKED_MAX_ENTRIES, globals};

use super::{
    ProbeLoadError,
    btf::{Btf, BtfError},
    mapset::{MapSet, Member},
};

const MAP: &str = berth_common::maps::TRACKED;

/// Keys of the syscall and network probes' `paths` in `/api/v1/system`: what the map holds,
/// and how berth's new cgroups get into it.
pub const PATH_MAP: &str = "tracked_map";
pub const PATH_SUBTREE: &str = "subtree";

/// The `tracked_map` path's state.
pub fn map_state(len: usize) -> String {
    format!(
        "{len} cgroup ids (berth's subtree and every other engine's container; capacity \
         {TRACKED_MAX_ENTRIES}), synced each tick"
    )
}

/// The hooks that keep berth's subtree in the map between ticks: (program, tracepoint).
const HOOKS: [(&str, &str); 2] = [
    ("berth_cgroup_mkdir", "cgroup_mkdir"),
    ("berth_cgroup_rmdir", "cgroup_rmdir"),
];

/// Offsets of the kernel fields the hooks read, from BTF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupLayout {
    pub cg_root: u32,
    pub cg_kn: u32,
    pub cg_level: u32,
    pub cg_ancestors: u32,
    pub root_hierarchy_id: u32,
    pub kn_id: u32,
}

impl CgroupLayout {
    pub fn from_btf(btf: &Btf) -> Result<Self, BtfError> {
        let sized = |ty: &str, field: &str, size: u32| {
            let f = btf.field(ty, &[field])?;
            if f.size != size {
                return Err(BtfError::NoField {
                    ty: ty.to_owned(),
                    field: format!("{field} of {size} bytes (found {})", f.size),
                });
            }
            Ok(f.offset)
        };
        Ok(Self {
            cg_root: sized("cgroup", "root", 8)?,
            cg_kn: sized("cgroup", "kn", 8)?,
            cg_level: sized("cgroup", "level", 4)?,
            // `struct cgroup *ancestors[]` (kernel 6.1+): the element, a pointer.
            cg_ancestors: sized("cgroup", "ancestors", 8)?,
            root_hierarchy_id: sized("cgroup_root", "hierarchy_id", 4)?,
            kn_id: sized("kernfs_node", "id", 8)?,
        })
    }
}

static LAYOUT: OnceLock<Result<CgroupLayout, BtfError>> = OnceLock::new();

/// The running kernel's layout, read once from /sys/kernel/btf/vmlinux.
pub fn layout() -> &'static Result<CgroupLayout, BtfError> {
    LAYOUT.get_or_init(|| Btf::from_sys_fs().and_then(|btf| CgroupLayout::from_btf(&btf)))
}

/// Sets the hooks' offset globals; without BTF they keep `OFFSET_NONE` and [`attach_hooks`]
/// is not called.
pub fn set_globals(loader: &mut EbpfLoader<'_>) {
    let Ok(l) = layout() else { return };
    loader
        .override_global(globals::CG_ROOT, &l.cg_root, true)
        .override_global(globals::CG_KN, &l.cg_kn, true)
        .override_global(globals::CG_LEVEL, &l.cg_level, true)
        .override_global(globals::CG_ANCESTORS, &l.cg_ancestors, true)
        .override_global(globals::CGROOT_HIERARCHY_ID, &l.root_hierarchy_id, true)
        .override_global(globals::KN_ID, &l.kn_id, true);
}

/// Loads and attaches the `cgroup_mkdir`/`cgroup_rmdir` hooks; returns their program ids.
pub fn attach_hooks(ebpf: &mut Ebpf) -> Result<Vec<u32>, ProbeLoadError> {
    if let Err(e) = layout() {
        return Err(ProbeLoadError::Layout(e.clone()));
    }
    let mut ids = Vec::new();
    for (name, tracepoint) in HOOKS {
        let program: &mut RawTracePoint = super::program_mut(ebpf, name)?;
        let err = super::program_err(name);
        program.load().map_err(err)?;
        program.attach(tracepoint).map_err(err)?;
        ids.push(program.info().map_err(err)?.id());
    }
    Ok(ids)
}

/// The agent's side of `TRACKED`: the ids it put there. (The hooks' inserts join this set when
/// a tick lists their cgroup; their deletes make a later delete here find nothing, which is
/// fine.)
pub type Tracked = MapSet<u64>;

impl Member for u64 {
    type Key = u64;
    const MAP: &'static str = MAP;
    const CAPACITY: u32 = TRACKED_MAX_ENTRIES;
    const LOSS: &'static str = "this container's syscalls and traffic are not counted";
    fn key(self) -> u64 {
        self
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use aya::maps::{HashMap, MapData};

    use super::*;
    use crate::{
        cgroup::TrackedRoot,
        probes::{load_object, mapset::SyncOutcome},
    };

    /// The map's keys, read from the kernel.
    fn keys(ebpf: &Ebpf) -> BTreeSet<u64> {
        let map = HashMap::<&MapData, u64, u8>::try_from(ebpf.map(MAP).unwrap()).unwrap();
        map.keys().map(Result::unwrap).collect()
    }

    fn object() -> Ebpf {
        load_object(&TrackedRoot::fixture(), false, None)
            .expect("loading berth's eBPF object (needs root: CAP_BPF)")
    }

    #[test]
    fn the_running_kernel_has_the_cgroup_fields_the_hooks_read() {
        let l = layout()
            .as_ref()
            .expect("cgroup layout from /sys/kernel/btf/vmlinux");
        assert!(l.cg_ancestors > l.cg_level, "{l:?}");
        assert_ne!(l.cg_kn, l.cg_root);
    }

    #[test]
    fn only_the_difference_is_written_and_gone_ids_leave_the_map() {
        let mut ebpf = object();
        let mut t = Tracked::default();
        let first: BTreeSet<u64> = [10, 11, 12].into();
        let o = t.sync(&mut ebpf, &first).unwrap();
        assert_eq!((o.inserted, o.removed), (3, 0));
        assert_eq!(keys(&ebpf), first);

        // 11 removed, 13 new: one delete, one insert, the others untouched.
        let second: BTreeSet<u64> = [10, 12, 13].into();
        let o = t.sync(&mut ebpf, &second).unwrap();
        assert_eq!((o.inserted, o.removed, o.refused), (1, 1, 0));
        assert_eq!(keys(&ebpf), second);
        assert!(!t.contains(11) && t.contains(13) && t.len() == 3);

        // Nothing changed: nothing written.
        assert_eq!(t.sync(&mut ebpf, &second).unwrap(), SyncOutcome::default());
        // Every container gone: the map is empty.
        t.sync(&mut ebpf, &BTreeSet::new()).unwrap();
        assert!(keys(&ebpf).is_empty() && t.is_empty());
    }

    #[test]
    fn a_full_map_counts_each_refused_container_once_and_takes_it_when_room_frees() {
        let mut ebpf = object();
        let mut t = Tracked::default();
        let cap = u64::from(TRACKED_MAX_ENTRIES);
        let mut want: BTreeSet<u64> = (1..=cap + 2).collect();
        let o = t.sync(&mut ebpf, &want).unwrap();
        assert_eq!((o.inserted as u64, o.refused), (cap, 2));
        assert_eq!(t.lost(), 2);
        assert_eq!(keys(&ebpf).len() as u64, cap);
        // Retried next tick, still refused: not counted again.
        let o = t.sync(&mut ebpf, &want).unwrap();
        assert_eq!((o.inserted, o.refused), (0, 2));
        assert_eq!(t.lost(), 2);
        // Two containers go: the refused ones get in.
        want.remove(&1);
        want.remove(&2);
        let o = t.sync(&mut ebpf, &want).unwrap();
        assert_eq!((o.inserted, o.removed, o.refused), (2, 2, 0));
        assert_eq!(keys(&ebpf), want);
        assert_eq!(t.lost(), 2);
    }
}
