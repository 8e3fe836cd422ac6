//! Builds `ebpf/` for bpfel-unknown-none with the nightly toolchain (aya-build) into OUT_DIR,
//! where `probes/` embeds it. `AYA_BUILD_SKIP=1` skips it (docs builds, tooling without nightly).
//! `BERTH_EBPF_TOOLCHAIN` names another rustup toolchain than `nightly` for it, e.g. a dated
//! `nightly-2026-05-20` (the Dockerfile pins one: rustup cannot name a pinned one `nightly`).
use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let ebpf = aya_build::Package {
        name: "berth-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf"),
        ..Default::default()
    };
    println!("cargo:rerun-if-changed=../common");
    println!("cargo:rerun-if-env-changed=BERTH_EBPF_TOOLCHAIN");
    let custom = std::env::var("BERTH_EBPF_TOOLCHAIN").ok();
    let toolchain = match custom.as_deref() {
        Some(t) if !t.is_empty() => aya_build::Toolchain::Custom(t),
        _ => aya_build::Toolchain::default(),
    };
    aya_build::build_ebpf([ebpf], toolchain).context(
        "building the eBPF programs in ebpf/ failed. They need the nightly toolchain with \
         rust-src and bpf-linker 0.10.4: run `cargo xtask setup` once, then build again",
    )
}
