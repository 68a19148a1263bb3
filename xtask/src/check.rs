//! `cargo xtask check`: everything that needs no root — formatting, clippy (the host crates
//! and the eBPF crate for its own target), the import graph, unit and in-process tests, and
//! a short run of every fuzz target.
use std::process::Command;

use crate::{
    build::{cargo, install_prerequisites, run, step},
    fuzz, imports,
};

/// Seconds each fuzz target runs in a check (six targets: about a minute, builds cached).
const FUZZ_SECONDS: u32 = 10;

/// Where the eBPF crate's clippy builds: its target and flags differ from the host build's,
/// so sharing the host's target dir would rebuild both each time.
const EBPF_CLIPPY_TARGET_DIR: &str = "target/ebpf-clippy";

pub fn run_checks() -> anyhow::Result<()> {
    // Idempotent: with everything present it installs nothing and needs no root.
    install_prerequisites()?;
    step("cargo fmt --check");
    run(cargo().args(["fmt", "--all", "--check"]))?;
    step("cargo clippy (warnings denied)");
    run(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    step("cargo clippy for the eBPF target (bpfel-unknown-none, nightly)");
    run(&mut ebpf_clippy())?;
    imports::run(None)?;
    step("unit and in-process tests");
    run(cargo().args([
        "test",
        "--package",
        "mesh-agent",
        "--package",
        "agent-common",
        "--package",
        "mesh-model",
        "--package",
        "mesh-xds",
        "--package",
        "control-plane",
        "--package",
        "xtask",
    ]))?;
    // The test bed's own unit tests; its end-to-end target needs root (`cargo xtask test`).
    run(cargo().args(["test", "--package", "tests", "--lib", "--bins"]))?;
    fuzz::run_fuzz(FUZZ_SECONDS, None, fuzz::Build::Quick)
}

fn ebpf_clippy() -> Command {
    let nightly = std::env::var("MESH_NIGHTLY").unwrap_or_else(|_| "nightly".into());
    let mut command = Command::new("rustup");
    command
        .current_dir(crate::build::workspace_root())
        .env("CARGO_TARGET_DIR", EBPF_CLIPPY_TARGET_DIR)
        .args([
            "run",
            &nightly,
            "cargo",
            "clippy",
            "--package",
            "agent-ebpf",
        ])
        .args([
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--release",
        ])
        .args(["--", "-D", "warnings"]);
    command
}
