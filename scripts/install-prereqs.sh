#!/usr/bin/env bash
# Installs everything mesh-agent's build, sandbox, tests and benchmarks need.
# Idempotent: each step checks first and says what it does; a second run installs nothing.
set -euo pipefail

step() { printf '==> %s\n' "$*"; }
have() { command -v "$1" >/dev/null 2>&1; }

NIGHTLY="${MESH_NIGHTLY:-nightly}"
LLVM_PREFIX_DIR=/usr/lib/llvm-22

# Debian packages: LLVM 22 for bpf-linker (nightly's LLVM), and the real tools the
# sandbox, tests and benchmarks drive.
apt_pkgs=()
dpkg -s llvm-22-dev >/dev/null 2>&1 || apt_pkgs+=(llvm-22-dev)
for tool in make:make cc:gcc jq:jq bpftool:bpftool iperf3:iperf3 wrk:wrk h2load:nghttp2-client haproxy:haproxy ip:iproute2 curl:curl nsenter:util-linux setpriv:util-linux findmnt:util-linux python3:python3 dnsmasq:dnsmasq-base dig:dnsutils dnsperf:dnsperf tcpdump:tcpdump openssl:openssl; do
  bin=${tool%%:*}; pkg=${tool##*:}
  have "$bin" || apt_pkgs+=("$pkg")
done
if ((${#apt_pkgs[@]})); then
  step "installing Debian packages: ${apt_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${apt_pkgs[@]}" >/dev/null
else
  step "Debian packages present"
fi

# Prometheus (and promtool) for the scrape test, without its recommends (node exporter) and
# without starting its service: the tests start their own, in a test namespace.
if have prometheus && have promtool; then
  step "prometheus present"
else
  step "installing prometheus (no service started)"
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod +x "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

# Interoperability peers the project did not write: gRPC's C core (grpcio), a WebSocket
# implementation (websockets), an HTTP/2 client (httpx with h2), and OpenTelemetry's own
# protobuf definitions (opentelemetry-proto) for the OTLP receiver of the tracing tests.
if python3 -c 'import grpc, websockets, httpx, h2, opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc' >/dev/null 2>&1; then
  step "python grpcio, websockets, httpx and opentelemetry-proto present"
else
  step "installing python grpcio, websockets, httpx and opentelemetry-proto (pip)"
  python3 -m pip install --quiet --disable-pip-version-check 'grpcio>=1.60' 'websockets>=13' 'httpx[http2]>=0.27' 'opentelemetry-proto>=1.27'
fi

# App Mesh users' own tools, for the definition tests: a YAML 1.1 reader (PyYAML, as kubectl
# reads) for converted manifests, and the AWS CLI against the Cloud Map-style registry API.
# (An AWS CLI whose botocore knows AWS_DISABLE_HOST_PREFIX_INJECTION: see docs/appmesh-xds.md.)
if python3 -c 'import yaml; from botocore.configprovider import BOTOCORE_DEFAUT_SESSION_VARIABLES as v; assert "disable_host_prefix_injection" in v' >/dev/null 2>&1 && have aws; then
  step "python PyYAML and awscli present"
else
  step "installing python PyYAML and awscli (pip)"
  python3 -m pip install --quiet --disable-pip-version-check 'PyYAML>=6' 'awscli>=1.45'
fi

# The Kubernetes install's checks: kubectl renders it (its built-in kustomize, offline) and
# kubernetes-validate checks every object against the Kubernetes OpenAPI schemas (it brings
# jsonschema, which checks custom resources against the CRDs).
have kubectl || {
  step "installing kubectl (Debian package)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq kubectl >/dev/null
}
if python3 -c 'import kubernetes_validate, jsonschema' >/dev/null 2>&1; then
  step "python kubernetes-validate present"
else
  step "installing python kubernetes-validate (pip)"
  python3 -m pip install --quiet --disable-pip-version-check 'kubernetes-validate>=1.30'
fi

if rustup component list --toolchain "$NIGHTLY" --installed 2>/dev/null | grep -q '^rust-src'; then
  step "rust-src for $NIGHTLY present"
else
  step "adding rust-src to the $NIGHTLY toolchain"
  rustup component add rust-src --toolchain "$NIGHTLY"
fi

for comp in rustfmt clippy; do
  if rustup component list --installed 2>/dev/null | grep -q "^$comp"; then
    step "$comp present"
  else
    step "adding $comp to the stable toolchain"
    rustup component add "$comp"
  fi
done

# bpf-linker must link with LLVM 22; a bpf-linker built against another LLVM fails to link.
# grep reads all of ldd's output: with -q it could exit first, and pipefail would take
# ldd's SIGPIPE for a missing LLVM 22 and rebuild bpf-linker for nothing.
if have bpf-linker && ldd "$(command -v bpf-linker)" 2>/dev/null | grep 'libLLVM.so.22' >/dev/null; then
  step "bpf-linker (LLVM 22) present"
else
  step "building bpf-linker against LLVM 22 (1-3 minutes)"
  LLVM_PREFIX="$LLVM_PREFIX_DIR" cargo install --locked bpf-linker --force \
    --no-default-features --features llvm-22
fi

# cargo-fuzz runs the fuzz targets in fuzz/ (`cargo xtask fuzz`, and briefly in
# `cargo xtask check`) on the nightly toolchain; built from crates.io in about a minute.
if have cargo-fuzz; then
  step "cargo-fuzz present"
else
  step "installing cargo-fuzz (about a minute)"
  cargo install cargo-fuzz --locked
fi
