# syntax=docker/dockerfile:1
# The one image the node agents (DaemonSet) and the control plane (Deployment) run:
#   docker build -t ghcr.io/mesh-agent/mesh-agent:0.1.0 .
# The eBPF programs are built inside (nightly with rust-src, bpf-linker on LLVM 22, as
# scripts/install-prereqs.sh does on a workstation) and embedded in the binary.

FROM rust:1.95-bookworm AS build
# The nightly whose LLVM is 22, which bpf-linker must use too.
ARG NIGHTLY=nightly-2026-05-19
RUN apt-get update \
 && apt-get install -y --no-install-recommends llvm-22-dev \
 && rm -rf /var/lib/apt/lists/*
# aya-build compiles the eBPF crate with the toolchain named `nightly`: the pinned one.
RUN rustup toolchain install "$NIGHTLY" --profile minimal --component rust-src \
 && rustup toolchain link nightly "$(rustup run "$NIGHTLY" rustc --print sysroot)"
RUN LLVM_PREFIX=/usr/lib/llvm-22 cargo install --locked bpf-linker --no-default-features --features llvm-22
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --package mesh-agent \
 && install -m 0755 target/release/mesh-agent /usr/local/bin/mesh-agent

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/mesh-agent /usr/local/bin/mesh-agent
# The control plane runs as this user; the DaemonSet runs the agent as root with only the
# capabilities it keeps (deploy/kubernetes/mesh-agent/daemonset.yaml).
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/mesh-agent"]
