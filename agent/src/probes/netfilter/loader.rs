//! A loader for `BPF_PROG_TYPE_NETFILTER` programs on top of aya 0.14, which has no such
//! program type (libbpf does: `SEC("netfilter")`).
//!
//! The programs live in berth's object in the `socket` section (aya rejects the whole ELF on an
//! executable section it does not know, such as `netfilter`). aya loads the object and creates
//! every map, `.rodata`/`.bss` included; it never loads these programs since nobody asks it to.
//! Here the same ELF is parsed again with `aya_obj`, its map references are relocated to the fds
//! of aya's maps (so both sides share the maps and the load-time globals), calls are linked,
//! and the instructions go to the kernel with bpf(2):
//! - `BPF_PROG_LOAD` with `prog_type` = `BPF_PROG_TYPE_NETFILTER` (32) and
//!   `expected_attach_type` = `BPF_NETFILTER` (45), license GPL;
//! - `BPF_LINK_CREATE` with `attach_type` = `BPF_NETFILTER` and the `netfilter` attr
//!   `{ pf, hooknum, priority, flags }`.
//!
//! Layouts: `union bpf_attr` in include/uapi/linux/bpf.h
//! (<https://github.com/torvalds/linux/blob/v6.18/include/uapi/linux/bpf.h>); the kernel's
//! checks of the netfilter attr (pf 2 or 10, hooknum < 5, priority neither INT_MIN nor INT_MAX,
//! flags only `BPF_F_NETFILTER_IP_DEFRAG`, EBUSY for a second BPF hook at the same
//! pf/hook/priority) are in net/netfilter/nf_bpf_link.c and net/netfilter/core.c
//! (<https://github.com/torvalds/linux/blob/v6.18/net/netfilter/nf_bpf_link.c>).
//!
//! Every fd is owned: dropping a [`Link`] detaches it (the link is not pinned), dropping a
//! [`Program`] releases the program once no link holds it.
//!
//! [`probe_fentry`] uses the same primitives to tell whether fentry programs work here.

use std::{
    collections::{HashMap, HashSet},
    ffi::CStr,
    io,
    os::fd::{AsFd as _, AsRawFd, FromRawFd as _, OwnedFd, RawFd},
    time::Duration,
};

use aya::{
    Ebpf,
    maps::{Map, MapData},
};
use aya_obj::generated::{bpf_attach_type, bpf_cmd, bpf_prog_type};

use crate::probes::btf::{Btf, BtfError};

/// `BPF_PROG_TYPE_NETFILTER`, 32 in `enum bpf_prog_type` (Linux 6.4).
pub const PROG_TYPE_NETFILTER: u32 = bpf_prog_type::BPF_PROG_TYPE_NETFILTER as u32;
/// `BPF_NETFILTER`, 45 in `enum bpf_attach_type`.
pub const ATTACH_NETFILTER: u32 = bpf_attach_type::BPF_NETFILTER as u32;
/// `NFPROTO_IPV4` and `NFPROTO_IPV6`, the `pf` values a netfilter link accepts.
pub const NFPROTO_IPV4: u32 = 2;
pub const NFPROTO_IPV6: u32 = 10;
/// Lowest and highest priority a netfilter link accepts: `NF_IP_PRI_FIRST` (INT_MIN) and
/// `NF_IP_PRI_LAST` (INT_MAX) are refused with ERANGE.
pub const PRIORITY_FIRST: i32 = i32::MIN + 1;
pub const PRIORITY_LAST: i32 = i32::MAX - 1;
/// Priorities tried per hook before giving up, moving inwards from [`PRIORITY_FIRST`] /
/// [`PRIORITY_LAST`] while the kernel answers EBUSY (another BPF link holds that priority:
/// a second agent, a stale link).
pub const PRIORITY_TRIES: i32 = 16;

const LICENSE: &CStr = c"GPL";
/// Verifier log size when a load fails; the reason is at its end.
const LOG_SIZE: usize = 1 << 20;
/// How much of the log an error keeps.
const LOG_TAIL: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("re-parsing berth's eBPF object: {0}")]
    Parse(#[from] aya_obj::ParseError),
    #[error("relocating berth's eBPF object: {0}")]
    Relocation(#[from] aya_obj::relocation::EbpfRelocationError),
    #[error("program {program} not found in berth's eBPF object")]
    MissingProgram { program: String },
    #[error("map {map}: aya created it as a kind this loader does not handle")]
    MapKind { map: String },
    #[error(
        "the kernel refused to load {program} as a BPF netfilter program (they need Linux 6.4 \
         or later built with CONFIG_NETFILTER_BPF_LINK): {source}{}{log}",
        if log.is_empty() { "" } else { "; verifier log: " }
    )]
    Load {
        program: String,
        source: io::Error,
        log: String,
    },
    #[error("attaching {program} to pf {pf} hook {hook} at priority {priority}: {source}")]
    Attach {
        program: String,
        pf: u32,
        hook: u32,
        priority: i32,
        source: io::Error,
    },
    #[error(
        "attaching {program} to pf {pf} hook {hook}: every priority from {from} to {to} is \
         taken by another BPF netfilter link (other agents or stale links: `bpftool link`)"
    )]
    Busy {
        program: String,
        pf: u32,
        hook: u32,
        from: i32,
        to: i32,
    },
    #[error("reading the kernel's info on {what} fd: {source}")]
    Info {
        what: &'static str,
        source: io::Error,
    },
}

/// A loaded netfilter program (owned fd).
#[derive(Debug)]
pub struct Program {
    pub name: String,
    /// Kernel program id (`bpftool prog show id N`).
    pub id: u32,
    fd: OwnedFd,
}

/// An attached netfilter link (owned fd): dropping it detaches the program from the hook.
#[derive(Debug)]
pub struct Link {
    /// Kernel link id (`bpftool link show id N`).
    pub id: u32,
    pub pf: u32,
    pub hook: u32,
    pub priority: i32,
    _fd: OwnedFd,
}

/// Loads `names` from `elf` (the object `ebpf` was loaded from) as netfilter programs that
/// use `ebpf`'s maps.
pub fn load_programs(ebpf: &Ebpf, elf: &[u8], names: &[&str]) -> Result<Vec<Program>, LoaderError> {
    let mut obj = aya_obj::Object::parse(elf)?;
    // Our copy of the map definitions, paired by name with the maps aya created from them.
    let defs = std::mem::take(&mut obj.maps);
    let mut fds: Vec<(&str, RawFd, &aya_obj::Map)> = Vec::new();
    for (name, map) in ebpf.maps() {
        let Some(def) = defs.get(name) else {
            continue;
        };
        let data = map_data(map).ok_or_else(|| LoaderError::MapKind {
            map: name.to_owned(),
        })?;
        fds.push((name, data.fd().as_fd().as_raw_fd(), def));
    }
    // As aya does: every section holding functions may be the target of a call.
    let text_sections: HashSet<usize> = obj.functions.keys().map(|(section, _)| *section).collect();
    obj.relocate_maps(fds.into_iter(), &text_sections)?;
    obj.relocate_calls(&text_sections)?;

    names
        .iter()
        .map(|&name| {
            let function = obj
                .programs
                .get(name)
                .and_then(|p| obj.functions.get(&p.function_key()))
                .ok_or_else(|| LoaderError::MissingProgram {
                    program: name.to_owned(),
                })?;
            // SAFETY: `bpf_insn` is a plain 8-byte `#[repr(C)]` struct.
            let insns = unsafe {
                std::slice::from_raw_parts(
                    function.instructions.as_ptr().cast::<u64>(),
                    function.instructions.len(),
                )
            };
            let fd = prog_load(&ProgLoad {
                prog_type: PROG_TYPE_NETFILTER,
                expected_attach_type: ATTACH_NETFILTER,
                attach_btf_id: 0,
                name,
                insns,
            })
            .map_err(|(source, log)| LoaderError::Load {
                program: name.to_owned(),
                source,
                log,
            })?;
            let id = prog_id(&fd)?;
            Ok(Program {
                name: name.to_owned(),
                id,
                fd,
            })
        })
        .collect()
}

/// The fd-bearing part of the maps berth's object uses. aya 0.14 keeps `MapData::obj`
/// private, hence the match.
fn map_data(map: &Map) -> Option<&MapData> {
    match map {
        Map::Array(m)
        | Map::PerCpuArray(m)
        | Map::HashMap(m)
        | Map::PerCpuHashMap(m)
        | Map::LruHashMap(m)
        | Map::PerCpuLruHashMap(m)
        | Map::RingBuf(m)
        | Map::PerfEventArray(m)
        | Map::Unsupported(m) => Some(m),
        _ => None,
    }
}

/// Attaches `program` to (`pf`, `hook`) at `priority`.
pub fn attach(program: &Program, pf: u32, hook: u32, priority: i32) -> Result<Link, LoaderError> {
    link_create(LinkCreate {
        prog_fd: program.fd.as_raw_fd() as u32,
        target_fd: 0,
        attach_type: ATTACH_NETFILTER,
        flags: 0,
        netfilter: NetfilterAttr {
            pf,
            hooknum: hook,
            priority,
            flags: 0,
        },
    })
    .map_err(|source| LoaderError::Attach {
        program: program.name.clone(),
        pf,
        hook,
        priority,
        source,
    })
    .and_then(|fd| {
        Ok(Link {
            id: link_id(&fd)?,
            pf,
            hook,
            priority,
            _fd: fd,
        })
    })
}

/// Attaches `program` at `start`, or the next free priority in direction `step` (+1 or -1)
/// when the kernel answers EBUSY, up to [`PRIORITY_TRIES`] priorities.
pub fn attach_first_free(
    program: &Program,
    pf: u32,
    hook: u32,
    start: i32,
    step: i32,
) -> Result<Link, LoaderError> {
    for k in 0..PRIORITY_TRIES {
        match attach(program, pf, hook, start + step * k) {
            Err(LoaderError::Attach { source, .. })
                if source.raw_os_error() == Some(libc::EBUSY) => {}
            other => return other,
        }
    }
    Err(LoaderError::Busy {
        program: program.name.clone(),
        pf,
        hook,
        from: start,
        to: start + step * (PRIORITY_TRIES - 1),
    })
}

/// Why fentry is unavailable, for the probe status.
#[derive(Debug, thiserror::Error)]
pub enum FentryError {
    #[error("no BTF id for {function}: {source}")]
    Btf { function: String, source: BtfError },
    #[error("BPF_PROG_LOAD of an fentry program on {function} refused: {source}")]
    Load { function: String, source: io::Error },
    #[error("BPF_LINK_CREATE of an fentry program on {function} refused: {source}")]
    Attach { function: String, source: io::Error },
}

impl FentryError {
    /// The errno name (`EPERM`), for a short status line.
    pub fn errno(&self) -> &'static str {
        match self {
            FentryError::Btf { .. } => "no BTF",
            FentryError::Load { source, .. } | FentryError::Attach { source, .. } => {
                errno_name(source)
            }
        }
    }
}

/// Loads and attaches an empty fentry program (`r0 = 0; exit`) on `function`, then drops it:
/// `Ok` when this kernel allows fentry (so a per-function breakdown of netfilter could be
/// built), the refusal otherwise. Many hardened or VM kernels refuse it (EPERM, ENOTSUPP).
pub fn probe_fentry(btf: &Btf, function: &str) -> Result<(), FentryError> {
    let btf_id = btf.func_id(function).map_err(|source| FentryError::Btf {
        function: function.to_owned(),
        source,
    })?;
    // BPF_ALU64|BPF_MOV|BPF_K r0 = 0 (0xb7); BPF_JMP|BPF_EXIT (0x95).
    let insns = [0xb7u64, 0x95];
    let prog = prog_load(&ProgLoad {
        prog_type: bpf_prog_type::BPF_PROG_TYPE_TRACING as u32,
        expected_attach_type: bpf_attach_type::BPF_TRACE_FENTRY as u32,
        attach_btf_id: btf_id,
        name: "berth_fentry",
        insns: &insns,
    })
    .map_err(|(source, _)| FentryError::Load {
        function: function.to_owned(),
        source,
    })?;
    let _link = link_create(LinkCreate {
        prog_fd: prog.as_raw_fd() as u32,
        target_fd: 0,
        attach_type: bpf_attach_type::BPF_TRACE_FENTRY as u32,
        flags: 0,
        netfilter: NetfilterAttr::default(),
    })
    .map_err(|source| FentryError::Attach {
        function: function.to_owned(),
        source,
    })?;
    Ok(())
}

pub fn errno_name(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EPERM) => "EPERM",
        Some(libc::EACCES) => "EACCES",
        Some(libc::EINVAL) => "EINVAL",
        Some(libc::ENOENT) => "ENOENT",
        Some(libc::EBUSY) => "EBUSY",
        Some(libc::E2BIG) => "E2BIG",
        Some(libc::ENOSYS) => "ENOSYS",
        Some(libc::EOPNOTSUPP) => "EOPNOTSUPP",
        Some(libc::ERANGE) => "ERANGE",
        // The kernel-internal ENOTSUPP, seen when a kernel lacks a program type's support.
        Some(524) => "ENOTSUPP",
        _ => "error",
    }
}

// ---- bpf(2) -------------------------------------------------------------------------------

/// The `BPF_PROG_LOAD` part of `union bpf_attr`, up to `core_relo_cnt` (the kernel accepts a
/// shorter attr than its own as long as what it lacks would be zero).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    prog_btf_fd: u32,
    func_info_rec_size: u32,
    func_info: u64,
    func_info_cnt: u32,
    line_info_rec_size: u32,
    line_info: u64,
    line_info_cnt: u32,
    attach_btf_id: u32,
    attach_prog_fd: u32,
    core_relo_cnt: u32,
}

/// The `BPF_LINK_CREATE` part of `union bpf_attr` with its `netfilter` member.
#[repr(C)]
#[derive(Default)]
struct LinkCreate {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    netfilter: NetfilterAttr,
}

#[repr(C)]
#[derive(Default)]
struct NetfilterAttr {
    pf: u32,
    hooknum: u32,
    priority: i32,
    flags: u32,
}

/// The `BPF_OBJ_GET_INFO_BY_FD` part of `union bpf_attr`.
#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// What [`prog_load`] loads: a program of `prog_type` from raw instructions (8 bytes each).
pub struct ProgLoad<'a> {
    pub prog_type: u32,
    pub expected_attach_type: u32,
    pub attach_btf_id: u32,
    pub name: &'a str,
    pub insns: &'a [u64],
}

fn sys_bpf<T>(cmd: bpf_cmd, attr: &mut T) -> io::Result<i64> {
    // SAFETY: `attr` is a `#[repr(C)]` prefix of `union bpf_attr` for `cmd`, alive for the call,
    // and its size is passed along.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_int,
            attr as *mut T,
            size_of::<T>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn owned(fd: i64) -> OwnedFd {
    // SAFETY: the kernel just returned this new fd to us.
    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

/// `BPF_PROG_LOAD`; on failure, loads again with a verifier log and returns its tail.
pub fn prog_load(p: &ProgLoad<'_>) -> Result<OwnedFd, (io::Error, String)> {
    let mut attr = ProgLoadAttr {
        prog_type: p.prog_type,
        insn_cnt: p.insns.len() as u32,
        insns: p.insns.as_ptr() as u64,
        license: LICENSE.as_ptr() as u64,
        expected_attach_type: p.expected_attach_type,
        attach_btf_id: p.attach_btf_id,
        ..Default::default()
    };
    let n = p.name.len().min(15);
    attr.prog_name[..n].copy_from_slice(&p.name.as_bytes()[..n]);
    if let Ok(fd) = sys_bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr) {
        return Ok(owned(fd));
    }
    let mut log = vec![0u8; LOG_SIZE];
    attr.log_level = 1;
    attr.log_size = log.len() as u32;
    attr.log_buf = log.as_mut_ptr() as u64;
    match sys_bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr) {
        // Loaded this time (a transient failure): fine.
        Ok(fd) => Ok(owned(fd)),
        Err(e) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[end.saturating_sub(LOG_TAIL)..end]);
            Err((e, text.trim().to_owned()))
        }
    }
}

/// The `BPF_RAW_TRACEPOINT_OPEN` part of `union bpf_attr` (without the 6.10 `cookie`).
#[repr(C)]
struct RawTracepointOpen {
    name: u64,
    prog_fd: u32,
    _pad: u32,
}

/// Attaches a loaded raw tracepoint program to the tracepoint `name` (e.g. `sys_enter`), as
/// aya's `RawTracePoint::attach` does; dropping the returned fd detaches it.
pub fn raw_tracepoint_open(prog: &OwnedFd, name: &CStr) -> io::Result<OwnedFd> {
    let mut attr = RawTracepointOpen {
        name: name.as_ptr() as u64,
        prog_fd: prog.as_raw_fd() as u32,
        _pad: 0,
    };
    sys_bpf(bpf_cmd::BPF_RAW_TRACEPOINT_OPEN, &mut attr).map(owned)
}

fn link_create(mut attr: LinkCreate) -> io::Result<OwnedFd> {
    sys_bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr).map(owned)
}

/// First `N` bytes of `struct bpf_prog_info` / `struct bpf_link_info` for `fd`.
fn obj_info<const N: usize>(fd: &impl AsRawFd) -> io::Result<[u8; N]> {
    let mut buf = [0u8; N];
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: N as u32,
        info: buf.as_mut_ptr() as u64,
    };
    sys_bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(buf)
}

/// `bpf_prog_info.id` (offset 4, after `type`).
fn prog_id(fd: &OwnedFd) -> Result<u32, LoaderError> {
    let b = obj_info::<8>(fd).map_err(|source| LoaderError::Info {
        what: "program",
        source,
    })?;
    Ok(u32::from_ne_bytes([b[4], b[5], b[6], b[7]]))
}

/// The kernel's BPF statistics of a loaded program: `bpf_prog_info.run_time_ns` and `run_cnt`
/// (zero while `kernel.bpf_stats_enabled` is off). One `BPF_OBJ_GET_INFO_BY_FD`.
pub fn prog_runs(fd: &impl AsRawFd) -> io::Result<(Duration, u64)> {
    use aya_obj::generated::bpf_prog_info;
    const TIME: usize = std::mem::offset_of!(bpf_prog_info, run_time_ns);
    const COUNT: usize = std::mem::offset_of!(bpf_prog_info, run_cnt);
    let b = obj_info::<{ COUNT + 8 }>(fd)?;
    let u64_at = |at: usize| {
        let mut v = [0u8; 8];
        v.copy_from_slice(&b[at..at + 8]);
        u64::from_ne_bytes(v)
    };
    Ok((Duration::from_nanos(u64_at(TIME)), u64_at(COUNT)))
}

impl Program {
    /// [`prog_runs`] of this program.
    pub fn runs(&self) -> io::Result<(Duration, u64)> {
        prog_runs(&self.fd)
    }
}

/// `bpf_link_info.id` (offset 4, after `type`).
fn link_id(fd: &OwnedFd) -> Result<u32, LoaderError> {
    let b = obj_info::<8>(fd).map_err(|source| LoaderError::Info {
        what: "link",
        source,
    })?;
    Ok(u32::from_ne_bytes([b[4], b[5], b[6], b[7]]))
}

/// Ids of every netfilter link in the kernel with its (pf, hook, priority), from
/// `BPF_LINK_GET_NEXT_ID`: for tests and diagnostics.
pub fn netfilter_links() -> io::Result<HashMap<u32, (u32, u32, i32)>> {
    let mut out = HashMap::new();
    for info in aya::programs::loaded_links() {
        let Ok(link) = info else { continue };
        // The netfilter part of bpf_link_info is not exposed by aya 0.14: fetch it again.
        let id = link.id();
        let mut attr = [0u32; 3];
        attr[0] = id;
        let Ok(fd) = sys_bpf(bpf_cmd::BPF_LINK_GET_FD_BY_ID, &mut attr).map(owned) else {
            continue;
        };
        // struct bpf_link_info { type, id, prog_id, union { netfilter { pf, hooknum,
        // priority, flags } } } with the union 8-byte aligned at offset 16.
        let b = obj_info::<32>(&fd)?;
        let word = |at: usize| u32::from_ne_bytes(b[at..at + 4].try_into().unwrap());
        if word(0) == aya_obj::generated::bpf_link_type::BPF_LINK_TYPE_NETFILTER as u32 {
            out.insert(id, (word(16), word(20), word(24) as i32));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::mem::offset_of;

    use aya_obj::generated::{
        bpf_attr__bindgen_ty_4 as KernelProgLoad, bpf_attr__bindgen_ty_14 as KernelLinkCreate,
        bpf_attr__bindgen_ty_14__bindgen_ty_3__bindgen_ty_5 as KernelNetfilter,
    };

    use super::*;

    #[test]
    fn uapi_values_are_the_kernels() {
        assert_eq!(PROG_TYPE_NETFILTER, 32);
        assert_eq!(ATTACH_NETFILTER, 45);
        assert_eq!(bpf_cmd::BPF_PROG_LOAD as u32, 5);
        assert_eq!(bpf_cmd::BPF_LINK_CREATE as u32, 28);
    }

    #[test]
    fn prog_load_attr_matches_the_uapi_layout() {
        assert_eq!(
            offset_of!(ProgLoadAttr, insns),
            offset_of!(KernelProgLoad, insns)
        );
        assert_eq!(
            offset_of!(ProgLoadAttr, log_buf),
            offset_of!(KernelProgLoad, log_buf)
        );
        assert_eq!(
            offset_of!(ProgLoadAttr, prog_name),
            offset_of!(KernelProgLoad, prog_name)
        );
        assert_eq!(
            offset_of!(ProgLoadAttr, expected_attach_type),
            offset_of!(KernelProgLoad, expected_attach_type)
        );
        assert_eq!(
            offset_of!(ProgLoadAttr, attach_btf_id),
            offset_of!(KernelProgLoad, attach_btf_id)
        );
        assert_eq!(
            offset_of!(ProgLoadAttr, core_relo_cnt),
            offset_of!(KernelProgLoad, core_relo_cnt)
        );
        assert_eq!(size_of::<ProgLoadAttr>(), 120);
    }

    #[test]
    fn link_create_attr_matches_the_uapi_layout() {
        assert_eq!(
            offset_of!(LinkCreate, attach_type),
            offset_of!(KernelLinkCreate, attach_type)
        );
        assert_eq!(
            offset_of!(LinkCreate, flags),
            offset_of!(KernelLinkCreate, flags)
        );
        assert_eq!(
            offset_of!(LinkCreate, netfilter),
            offset_of!(KernelLinkCreate, __bindgen_anon_3)
        );
        assert_eq!(
            offset_of!(NetfilterAttr, pf),
            offset_of!(KernelNetfilter, pf)
        );
        assert_eq!(
            offset_of!(NetfilterAttr, hooknum),
            offset_of!(KernelNetfilter, hooknum)
        );
        assert_eq!(
            offset_of!(NetfilterAttr, priority),
            offset_of!(KernelNetfilter, priority)
        );
        assert_eq!(
            offset_of!(NetfilterAttr, flags),
            offset_of!(KernelNetfilter, flags)
        );
    }

    #[test]
    fn link_info_netfilter_part_is_at_offset_16() {
        assert_eq!(
            offset_of!(aya_obj::generated::bpf_link_info, __bindgen_anon_1),
            16
        );
    }

    #[test]
    fn a_refused_program_comes_back_with_the_verifiers_reason() {
        // SAFETY: no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        // r0 = 2; exit: a netfilter program must return 0 (drop) or 1 (accept).
        let insns = [0xb7u64 | (2 << 32), 0x95];
        let (err, log) = prog_load(&ProgLoad {
            prog_type: PROG_TYPE_NETFILTER,
            expected_attach_type: ATTACH_NETFILTER,
            attach_btf_id: 0,
            name: "berth_bad",
            insns: &insns,
        })
        .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{err}");
        assert!(log.contains("R0"), "verifier log: {log}");
    }

    #[test]
    fn errno_names_are_short() {
        assert_eq!(
            errno_name(&io::Error::from_raw_os_error(libc::EPERM)),
            "EPERM"
        );
        assert_eq!(errno_name(&io::Error::from_raw_os_error(524)), "ENOTSUPP");
    }
}
