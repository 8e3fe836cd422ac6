//! The bench's floor: an empty raw tracepoint program (`r0 = 0; exit`, two instructions),
//! loaded and attached with bpf(2) directly, so berth's eBPF object carries no program that
//! only a bench uses.
//!
//! Loaded with `BPF_PROG_LOAD` (`BPF_PROG_TYPE_RAW_TRACEPOINT`) and attached with
//! `BPF_RAW_TRACEPOINT_OPEN`, the same attach aya uses for berth's own raw tracepoint programs
//! (`RawTracePoint::attach`), so the two compare on equal terms; through berth's one bpf(2)
//! layer (`probes::netfilter::loader`).

use std::{ffi::CStr, io, os::fd::OwnedFd};

use berth::probes::netfilter::loader::{self, ProgLoad};

/// `BPF_PROG_TYPE_RAW_TRACEPOINT`.
const PROG_TYPE_RAW_TRACEPOINT: u32 = 17;

/// `r0 = 0; exit` as `struct bpf_insn`s (little endian: opcode in the low byte):
/// `BPF_ALU64 | BPF_MOV | BPF_K` to r0 with imm 0, then `BPF_JMP | BPF_EXIT`.
const PROGRAM: [u64; 2] = [0xb7, 0x95];

/// The loaded no-op program; dropped, the kernel frees it (once no link holds it).
pub struct NoopProgram {
    fd: OwnedFd,
}

impl NoopProgram {
    pub fn load() -> io::Result<Self> {
        let fd = loader::prog_load(&ProgLoad {
            prog_type: PROG_TYPE_RAW_TRACEPOINT,
            expected_attach_type: 0,
            attach_btf_id: 0,
            name: "bench_noop",
            insns: &PROGRAM,
        })
        .map_err(|(e, log)| io::Error::new(e.kind(), format!("{e}: {log}")))?;
        Ok(NoopProgram { fd })
    }

    /// Attaches to the raw tracepoint `name` (e.g. `sys_enter`); dropping the returned link
    /// detaches.
    pub fn attach(&self, name: &CStr) -> io::Result<OwnedFd> {
        loader::raw_tracepoint_open(&self.fd, name)
    }
}
