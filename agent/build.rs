//! Builds the eBPF object (agent-ebpf, nightly, bpfel-unknown-none) that the agent embeds.
//! Prerequisites (nightly rust-src, bpf-linker on LLVM 22) come from scripts/install-prereqs.sh,
//! which `cargo xtask build` runs first.
use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let workspace = std::path::Path::new(&manifest_dir)
        .parent()
        .context("agent crate has no parent directory")?;
    let ebpf_dir = workspace.join("agent-ebpf");
    let common_dir = workspace.join("agent-common");
    println!("cargo:rerun-if-changed={}", common_dir.display());
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "agent-ebpf",
            root_dir: ebpf_dir.to_str().context("agent-ebpf path is not UTF-8")?,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context("building the eBPF programs (run scripts/install-prereqs.sh if a tool is missing)")
}
