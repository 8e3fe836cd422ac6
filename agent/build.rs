//! Builds `ebpf/` for bpfel-unknown-none with the nightly toolchain (aya-build) into OUT_DIR,
//! where `probes/` embeds it. `AYA_BUILD_SKIP=1` skips it (docs builds, tooling without nightly).
use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let ebpf = aya_build::Package {
        name: "berth-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf"),
        ..Default::default()
    };
    println!("cargo:rerun-if-changed=../common");
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::default()).context(
        "building the eBPF programs in ebpf/ failed. They need the nightly toolchain with \
         rust-src and bpf-linker 0.10.4: run `cargo xtask setup` once, then build again",
    )
}
