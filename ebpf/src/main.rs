//! berth's eBPF programs, one module per probe. Built by `agent/build.rs` for
//! `bpfel-unknown-none` and embedded in the agent; the map layouts are in `berth-common`.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(target_arch = "bpf")]
mod net;
#[cfg(target_arch = "bpf")]
mod netfilter;
#[cfg(target_arch = "bpf")]
mod syscalls;
#[cfg(target_arch = "bpf")]
mod tracked;

/// Events a probe could not record, per [`berth_common::ProbeError`]: shared by every probe.
#[cfg(target_arch = "bpf")]
#[aya_ebpf::macros::map]
static PROBE_ERRORS: aya_ebpf::maps::PerCpuArray<u64> =
    aya_ebpf::maps::PerCpuArray::with_max_entries(berth_common::ProbeError::COUNT, 0);

/// `-EEXIST`, as `bpf_map_update_elem` returns it for `BPF_NOEXIST` on an existing key.
#[cfg(target_arch = "bpf")]
const EEXIST_NEG: i32 = -17;

#[cfg(target_arch = "bpf")]
#[inline(always)]
fn count_error(e: berth_common::ProbeError) {
    if let Some(v) = PROBE_ERRORS.get_ptr_mut(e as u32) {
        // SAFETY: per-CPU value of this CPU; nothing else writes it while we run.
        unsafe { *v += 1 };
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic, so this is never called.
    loop {}
}

/// Host builds (`cargo clippy --workspace`) see an empty binary.
#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
