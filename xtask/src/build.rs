//! Prerequisites and builds.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Dev,
    Release,
}

impl Profile {
    pub fn from_release(release: bool) -> Self {
        if release { Self::Release } else { Self::Dev }
    }

    fn dir(self) -> &'static str {
        match self {
            Self::Dev => "debug",
            Self::Release => "release",
        }
    }
}

/// Paths of the built binaries.
pub struct Binaries {
    pub agent: PathBuf,
    pub meshtb: PathBuf,
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Installs what is missing (idempotent, says what it does).
pub fn install_prerequisites() -> anyhow::Result<()> {
    step("checking prerequisites");
    run(&mut Command::new(
        workspace_root().join("scripts/install-prereqs.sh"),
    ))
}

pub fn build(profile: Profile) -> anyhow::Result<Binaries> {
    install_prerequisites()?;
    step("building the eBPF object, mesh-agent and test programs");
    let mut command = cargo();
    command.args([
        "build",
        "--package",
        "mesh-agent",
        "--package",
        "tests",
        "--bins",
    ]);
    if profile == Profile::Release {
        command.arg("--release");
    }
    run(&mut command)?;
    let dir = target_dir().join(profile.dir());
    let binaries = Binaries {
        agent: dir.join("mesh-agent"),
        meshtb: dir.join("meshtb"),
    };
    for binary in [&binaries.agent, &binaries.meshtb] {
        if !binary.is_file() {
            bail!("build finished but {} is missing", binary.display());
        }
    }
    Ok(binaries)
}

pub fn cargo() -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(workspace_root());
    command
}

pub fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("starting {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}

pub fn step(what: &str) {
    println!("\n==> {what}");
}

pub fn require_root(task: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("{task} loads eBPF programs and creates network namespaces: run it as root");
    }
    Ok(())
}
