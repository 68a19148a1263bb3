#![no_std]
// The eBPF programs are the `agent-ebpf` binary (src/main.rs); this library target exists so
// the workspace can build and check the crate on the host.
