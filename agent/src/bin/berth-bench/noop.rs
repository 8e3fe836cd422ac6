//! The bench's floor: an empty raw tracepoint program (`r0 = 0; exit`, two instructions),
//! loaded and attached with bpf(2) directly, so berth's eBPF object carries no program that
//! only a bench uses.
//!
//! Loaded with `BPF_PROG_LOAD` (`BPF_PROG_TYPE_RAW_TRACEPOINT`) and attached with
//! `BPF_RAW_TRACEPOINT_OPEN`, the same attach aya uses for berth's own raw tracepoint programs
//! (`RawTracePoint::attach`), so the two compare on equal terms. Layouts from
//! include/uapi/linux/bpf.h: <https://github.com/torvalds/linux/blob/v6.18/include/uapi/linux/bpf.h>.

use std::{
    ffi::CStr,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
const BPF_PROG_TYPE_RAW_TRACEPOINT: u32 = 17;

/// `struct bpf_insn`: opcode, dst_reg (low nibble) | src_reg (high nibble), offset, immediate.
#[repr(C)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

/// `r0 = 0; exit`.
const PROGRAM: [Insn; 2] = [
    // BPF_ALU64 | BPF_MOV | BPF_K, dst r0, imm 0
    Insn {
        code: 0xb7,
        regs: 0,
        off: 0,
        imm: 0,
    },
    // BPF_JMP | BPF_EXIT
    Insn {
        code: 0x95,
        regs: 0,
        off: 0,
        imm: 0,
    },
];

/// The leading fields of `union bpf_attr` for `BPF_PROG_LOAD`; the kernel zero-fills the rest.
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
}

/// `union bpf_attr` for `BPF_RAW_TRACEPOINT_OPEN` (without the 6.10 `cookie`).
#[repr(C)]
struct RawTracepointOpenAttr {
    name: u64,
    prog_fd: u32,
    _pad: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &T) -> io::Result<OwnedFd> {
    // SAFETY: attr is a live, initialized bpf_attr prefix of the size passed; the kernel reads
    // at most that many bytes and the pointers inside it outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: on success these commands return a new file descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The loaded no-op program; dropped, the kernel frees it (once no link holds it).
pub struct NoopProgram {
    fd: OwnedFd,
}

impl NoopProgram {
    pub fn load() -> io::Result<Self> {
        let mut prog_name = [0u8; 16];
        prog_name[..10].copy_from_slice(b"bench_noop");
        let attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_RAW_TRACEPOINT,
            insn_cnt: PROGRAM.len() as u32,
            insns: PROGRAM.as_ptr() as u64,
            license: c"GPL".as_ptr() as u64,
            prog_name,
            ..Default::default()
        };
        Ok(NoopProgram {
            fd: bpf(BPF_PROG_LOAD, &attr)?,
        })
    }

    /// Attaches to the raw tracepoint `name` (e.g. `sys_enter`); dropping the returned link
    /// detaches.
    pub fn attach(&self, name: &CStr) -> io::Result<OwnedFd> {
        let attr = RawTracepointOpenAttr {
            name: name.as_ptr() as u64,
            prog_fd: self.fd.as_raw_fd() as u32,
            _pad: 0,
        };
        bpf(BPF_RAW_TRACEPOINT_OPEN, &attr)
    }
}
