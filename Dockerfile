# berth's agent image, for observe mode on Kubernetes (deploy/kubernetes/): it holds no OCI
# runtime, as the agent launches nothing there.
#
#   docker build -t berth:0.1.0 .
#
# Built as on a build machine after `cargo xtask setup`: stable Rust for the agent, a nightly on
# LLVM 22 with rust-src and bpf-linker 0.10.4 for the eBPF programs (agent/build.rs builds them
# with `rustup run nightly`), then one `cargo build --release`.

FROM rust:1.95-bookworm AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# The nightly whose LLVM (22) bpf-linker 0.10.4 loads (rustc 1.97.0-nightly e50aa6fba,
# 2026-05-19), pinned; agent/build.rs builds the eBPF programs with the toolchain that
# BERTH_EBPF_TOOLCHAIN names.
ARG NIGHTLY=nightly-2026-05-20
ARG BPF_LINKER_VERSION=0.10.4
ENV BERTH_EBPF_TOOLCHAIN=${NIGHTLY}
RUN rustup toolchain install "${NIGHTLY}" --profile minimal --component rust-src \
    && rustc "+${NIGHTLY}" -vV | grep -q '^LLVM version: 22\.'
RUN cargo install bpf-linker --version "${BPF_LINKER_VERSION}" --locked
WORKDIR /src
COPY . .
RUN cargo build --release --locked --package berth --bin berth

# Same Debian release as the build stage, so the binary's glibc matches.
FROM debian:bookworm-slim
# iptables: the agent reads the node's ruleset with iptables-save (nft and legacy backends) to
# count the per-port rules of other engines. Debian's current version, not a pinned one.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends iptables \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/berth /usr/local/bin/berth
ENTRYPOINT ["/usr/local/bin/berth"]
# Without a config the agent finds no OCI runtime and observes; the DaemonSet passes its
# berth.toml (runtime.launch = false) with --config.
CMD ["agent"]
