//! A cgroup v2 directory owned by one test node.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;

/// The host's cgroup v2 mount (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts);
/// MESH_TEST_CGROUP_ROOT overrides it.
pub fn cgroup2_root() -> anyhow::Result<PathBuf> {
    if let Some(root) = std::env::var_os("MESH_TEST_CGROUP_ROOT") {
        return Ok(PathBuf::from(root));
    }
    let output = Command::new("findmnt")
        .args(["-n", "-l", "-t", "cgroup2", "-o", "TARGET"])
        .output()
        .context("running findmnt")?;
    let mounts = String::from_utf8_lossy(&output.stdout);
    let mounts: Vec<&str> = mounts.lines().map(str::trim).collect();
    mounts
        .iter()
        .find(|m| **m == "/sys/fs/cgroup")
        .or_else(|| mounts.first())
        .map(PathBuf::from)
        .context("no cgroup v2 filesystem mounted")
}

/// A child cgroup of the cgroup v2 root, removed (after ending its processes) on drop.
#[derive(Debug)]
pub struct TestCgroup {
    path: PathBuf,
}

impl TestCgroup {
    pub fn create(name: &str) -> anyhow::Result<Self> {
        let path = cgroup2_root()?.join(name);
        fs::create_dir(&path).with_context(|| format!("mkdir {}", path.display()))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn procs_file(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        remove(&self.path);
    }
}

/// Ends the processes in a test cgroup (all started by a test node) and removes it.
pub fn remove(path: &Path) {
    for _ in 0..50 {
        let procs = fs::read_to_string(path.join("cgroup.procs")).unwrap_or_default();
        let pids: Vec<i32> = procs
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            // SAFETY: plain kill(2) on a pid listed in our own test cgroup.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = fs::remove_dir(path);
}
