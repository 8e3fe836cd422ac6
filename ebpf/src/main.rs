//! berth's eBPF programs, one module per probe. Built by `agent/build.rs` for
//! `bpfel-unknown-none` and embedded in the agent; the map layouts are in `berth-common`.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(target_arch = "bpf")]
mod net;
#[cfg(target_arch = "bpf")]
mod syscalls;

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
