//! Finding and checking the cgroup v2 directory the redirect programs attach to.
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "no cgroup v2 filesystem is mounted (looked in /proc/self/mountinfo); set `cgroup_path`"
    )]
    NoMount,
    #[error("cgroup_path {path} does not exist: {source}")]
    Missing { path: PathBuf, source: nix::Error },
    #[error(
        "cgroup_path {path} is not on a cgroup v2 filesystem (filesystem magic {magic:#x}); \
         point it at the cgroup2 mount, e.g. /sys/fs/cgroup or /sys/fs/cgroup/unified"
    )]
    NotCgroup2 { path: PathBuf, magic: i64 },
    #[error("cgroup_path {path} is not a directory: the programs attach to a cgroup directory")]
    NotADirectory { path: PathBuf },
}

/// The configured path, checked; or, when none is configured, the host's cgroup v2 mount.
pub fn resolve(configured: Option<&Path>) -> Result<PathBuf, CgroupError> {
    let path = match configured {
        Some(path) => path.to_owned(),
        None => {
            let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            cgroup2_mount(&mountinfo).ok_or(CgroupError::NoMount)?
        }
    };
    verify(&path)?;
    Ok(path)
}

fn verify(path: &Path) -> Result<(), CgroupError> {
    let stat = nix::sys::statfs::statfs(path).map_err(|source| CgroupError::Missing {
        path: path.to_owned(),
        source,
    })?;
    if stat.filesystem_type() != nix::sys::statfs::CGROUP2_SUPER_MAGIC {
        return Err(CgroupError::NotCgroup2 {
            path: path.to_owned(),
            magic: stat.filesystem_type().0 as i64,
        });
    }
    // A cgroup's own files (cgroup.procs, ...) are on the cgroup2 filesystem too; opening
    // one succeeds and only the attach, after loading every program, would fail.
    let is_dir = std::fs::metadata(path).map(|m| m.is_dir()).unwrap_or(false);
    if !is_dir {
        return Err(CgroupError::NotADirectory {
            path: path.to_owned(),
        });
    }
    Ok(())
}

/// The cgroup2 mount point in a mountinfo table; /sys/fs/cgroup (a pure v2 host) wins over
/// others such as /sys/fs/cgroup/unified (a hybrid host).
fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    let mounts: Vec<&str> = mountinfo
        .lines()
        .filter_map(|line| {
            // Fields: id parent major:minor root mount-point options [optional...] - fstype ...
            let (before, after) = line.split_once(" - ")?;
            let fstype = after.split_whitespace().next()?;
            let mount_point = before.split_whitespace().nth(4)?;
            (fstype == "cgroup2").then_some(mount_point)
        })
        .collect();
    mounts
        .iter()
        .find(|m| **m == "/sys/fs/cgroup")
        .or_else(|| mounts.first())
        .map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 30 0:23 / /sys rw,nosuid shared:7 - sysfs sysfs rw
26 25 0:24 / /sys/fs/cgroup ro,nosuid shared:8 - tmpfs tmpfs ro,mode=755
27 26 0:25 / /sys/fs/cgroup/unified rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate
28 26 0:26 / /sys/fs/cgroup/systemd rw,nosuid shared:10 - cgroup cgroup rw,name=systemd
";
    const UNIFIED: &str = "\
27 26 0:25 / /sys/fs/cgroup rw,nosuid,nodev shared:4 - cgroup2 cgroup2 rw,nsdelegate
35 27 0:25 / /run/other rw shared:4 - cgroup2 cgroup2 rw
";

    #[test]
    fn finds_hybrid_unified_mount() {
        assert_eq!(
            cgroup2_mount(HYBRID),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn prefers_sys_fs_cgroup() {
        assert_eq!(
            cgroup2_mount(UNIFIED),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
    }

    #[test]
    fn no_cgroup2_mount() {
        assert_eq!(cgroup2_mount("1 2 0:1 / / rw - ext4 /dev/vda rw\n"), None);
    }

    #[test]
    fn rejects_non_cgroup_directory() {
        let dir = tempfile::tempdir().unwrap();
        let err = resolve(Some(dir.path())).unwrap_err();
        assert!(matches!(err, CgroupError::NotCgroup2 { .. }), "{err}");
        assert!(err.to_string().contains("not on a cgroup v2 filesystem"));
    }

    #[test]
    fn rejects_a_file_in_a_cgroup() {
        // Any cgroup2 mount here will do: its cgroup.procs is a file on that filesystem.
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let Some(mount) = cgroup2_mount(&mountinfo) else {
            return;
        };
        let file = mount.join("cgroup.procs");
        let err = resolve(Some(&file)).unwrap_err();
        assert!(matches!(err, CgroupError::NotADirectory { .. }), "{err}");
        assert!(err.to_string().contains("is not a directory"), "{err}");
    }

    #[test]
    fn rejects_missing_directory() {
        let err = resolve(Some(Path::new("/nonexistent/cgroup"))).unwrap_err();
        assert!(
            err.to_string()
                .contains("/nonexistent/cgroup does not exist"),
            "{err}"
        );
    }
}
