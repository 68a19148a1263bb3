//! The redirect's state pinned in bpffs, so it outlives the agent's process: the cgroup
//! programs' links and each enrolled pod's inbound lookup link (the redirect and the inbound
//! capture stay attached while no agent runs, and a new agent swaps its programs in with one
//! atomic link update each) and the maps whose contents must survive an upgrade (enrollment,
//! exclusions, the original destinations of live connections, captured inbound ports and
//! their listeners, counters).
//!
//! Layout: `<bpffs>/mesh-agent/cgroup-<id>/links/<program>`,
//! `.../inbound/<netns cookie>` and `.../maps-v<N>/<MAP>`, where
//! `<id>` is the cgroup's inode (what the programs attach to: two agents on two cgroups never
//! share pins) and `N` the map layout version ([`MAP_LAYOUT`]): an agent whose maps differ
//! creates new ones rather than reading old records with the wrong shape.
use std::{
    io,
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    },
    path::{Path, PathBuf},
};

use agent_common::maps;
use aya::{EbpfLoader, programs::links::FdLink};
use tracing::info;

/// Bumped whenever a pinned map's key, value or capacity changes.
const MAP_LAYOUT: u32 = 3;

/// The maps shared by successive agents. A new agent replaces each pod's inbound listener in
/// INBOUND_SOCKETS with its own as it captures the pod; the kernel removes an agent's
/// listeners from it when they close.
const PINNED_MAPS: [&str; 12] = [
    maps::ENROLLED_NETNS,
    maps::ORIG_DST_BY_COOKIE,
    maps::ORIG_DST_BY_PEER,
    maps::EXCLUDED_CIDRS,
    maps::EXCLUDED_PORTS,
    maps::REDIRECT_CONFIG,
    maps::COUNTERS,
    maps::POD_CONNECTS,
    maps::DNS_CONFIG,
    maps::DNS_QUERY_ORIGINS,
    maps::INBOUND_SOCKETS,
    maps::INBOUND_PORTS,
];

/// bpf(2) commands (include/uapi/linux/bpf.h), not exported by aya.
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
/// `enum bpf_link_type`'s BPF_LINK_TYPE_NETNS.
const BPF_LINK_TYPE_NETNS: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("bpffs_path {path}: {source}")]
    Bpffs { path: PathBuf, source: io::Error },
    #[error("bpffs_path {path} is not a BPF filesystem and mounting one there failed: {source}")]
    Mount { path: PathBuf, source: nix::Error },
    #[error("cannot read cgroup {path}: {source}")]
    Cgroup { path: PathBuf, source: io::Error },
    #[error("pinned link {path}: {source}")]
    Link { path: PathBuf, source: io::Error },
    #[error("cannot pin the link of {program} at {path}: {source}")]
    Pin {
        program: &'static str,
        path: PathBuf,
        source: aya::pin::PinError,
    },
    #[error("removing {path}: {source}")]
    Remove { path: PathBuf, source: io::Error },
}

/// Where one agent's pins live: derived from the bpffs mount and the cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pins {
    bpffs: PathBuf,
    dir: PathBuf,
}

impl Pins {
    /// The pin directory of the agent attached to `cgroup`, under the bpffs at `bpffs`.
    pub fn for_cgroup(bpffs: &Path, cgroup: &Path) -> Result<Self, PinError> {
        let id = std::fs::metadata(cgroup)
            .map_err(|source| PinError::Cgroup {
                path: cgroup.to_owned(),
                source,
            })?
            .ino();
        Ok(Self {
            bpffs: bpffs.to_owned(),
            dir: bpffs.join("mesh-agent").join(format!("cgroup-{id}")),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn links(&self) -> PathBuf {
        self.dir.join("links")
    }

    /// The inbound lookup links, one per captured pod namespace, named by its cookie.
    fn inbound(&self) -> PathBuf {
        self.dir.join("inbound")
    }

    fn inbound_link(&self, netns_cookie: u64) -> PathBuf {
        self.inbound().join(netns_cookie.to_string())
    }

    fn maps(&self) -> PathBuf {
        self.dir.join(format!("maps-v{MAP_LAYOUT}"))
    }

    /// Whether an agent pinned its programs here (and they are still attached).
    pub fn attached(&self) -> bool {
        self.links()
            .read_dir()
            .is_ok_and(|mut entries| entries.next().is_some())
    }

    /// Creates the directories (mounting bpffs at `bpffs` first if nothing is mounted there,
    /// as a DaemonSet's init would) and points `loader` at the pinned maps: existing ones are
    /// reused, missing ones created and pinned.
    pub fn prepare(&self, loader: &mut EbpfLoader<'_>) -> Result<(), PinError> {
        mount_bpffs(&self.bpffs)?;
        for dir in [self.links(), self.inbound(), self.maps()] {
            std::fs::create_dir_all(&dir)
                .map_err(|source| PinError::Bpffs { path: dir, source })?;
        }
        for name in PINNED_MAPS {
            loader.map_pin_path(name, self.maps().join(name));
        }
        Ok(())
    }

    /// The link `program` was pinned with by an earlier agent, if any.
    pub fn existing_link(&self, program: &str) -> Result<Option<OwnedFd>, PinError> {
        open_pinned(self.links().join(program))
    }

    /// Pins a new link of `program`: it stays attached until [`Pins::remove`].
    pub fn pin_link(&self, program: &'static str, link: FdLink) -> Result<(), PinError> {
        pin(program, self.links().join(program), link)
    }

    /// The inbound lookup link an earlier agent pinned for the namespace with this cookie.
    pub fn existing_inbound_link(&self, netns_cookie: u64) -> Result<Option<OwnedFd>, PinError> {
        open_pinned(self.inbound_link(netns_cookie))
    }

    /// Pins the inbound lookup link of a namespace: it stays attached until the pod is
    /// unenrolled ([`Pins::unpin_inbound_link`]) or [`Pins::remove`].
    pub fn pin_inbound_link(
        &self,
        program: &'static str,
        netns_cookie: u64,
        link: FdLink,
    ) -> Result<(), PinError> {
        pin(program, self.inbound_link(netns_cookie), link)
    }

    /// Unpins the inbound lookup links whose namespace is gone — pods deleted while no agent
    /// ran: the kernel detached the link with its namespace, the pin only holds the program.
    /// How many were unpinned.
    pub fn prune_detached_inbound_links(&self) -> Result<usize, PinError> {
        let entries = match self.inbound().read_dir() {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(source) => {
                return Err(PinError::Bpffs {
                    path: self.inbound(),
                    source,
                });
            }
        };
        let mut pruned = 0;
        for path in entries.flatten().map(|e| e.path()) {
            let detached = obj_get(&path)
                .and_then(|link| link_netns_inode(link.as_fd()))
                .map_err(|source| PinError::Link {
                    path: path.clone(),
                    source,
                })?
                == 0;
            if detached {
                std::fs::remove_file(&path).map_err(|source| PinError::Remove {
                    path: path.clone(),
                    source,
                })?;
                pruned += 1;
            }
        }
        Ok(pruned)
    }

    /// Unpins (and so detaches) the inbound lookup link of a namespace, if pinned.
    pub fn unpin_inbound_link(&self, netns_cookie: u64) -> Result<(), PinError> {
        let path = self.inbound_link(netns_cookie);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(PinError::Remove { path, source }),
        }
    }

    /// After a takeover: unpins the links of programs this agent does not have (an older
    /// version's, still running its old program) and the maps of other layouts, which no
    /// attached program uses any more.
    pub fn prune(&self, programs: &[&str]) -> Result<(), PinError> {
        let keep_maps = self.maps();
        let stale = |entries: io::Result<std::fs::ReadDir>, keep: &dyn Fn(&Path) -> bool| {
            entries
                .map(|entries| {
                    entries
                        .flatten()
                        .map(|e| e.path())
                        .filter(|path| !keep(path))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        };
        let links = stale(self.links().read_dir(), &|path| {
            path.file_name()
                .is_some_and(|name| programs.iter().any(|p| name == *p))
        });
        let maps = stale(self.dir.read_dir(), &|path| {
            path == keep_maps || !path.to_string_lossy().contains("/maps-v")
        });
        for path in links.iter().chain(&maps) {
            let result = match path.is_dir() {
                true => std::fs::remove_dir_all(path),
                false => std::fs::remove_file(path),
            };
            result.map_err(|source| PinError::Remove {
                path: path.clone(),
                source,
            })?;
            info!(path = %path.display(), "removed a pin no program of this agent uses");
        }
        Ok(())
    }

    /// Unpins everything: the links first (the programs detach: the cgroup's and every
    /// pod's inbound lookup), then the maps; how many links were pinned.
    pub fn remove(&self) -> Result<usize, PinError> {
        let remove_err = |path: &Path| {
            let path = path.to_owned();
            move |source| PinError::Remove { path, source }
        };
        let mut links = Vec::new();
        for dir in [self.links(), self.inbound()] {
            match dir.read_dir() {
                Ok(entries) => links.extend(entries.flatten().map(|e| e.path())),
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(remove_err(&dir)(source)),
            }
        }
        for link in &links {
            std::fs::remove_file(link).map_err(remove_err(link))?;
        }
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(remove_err(&self.dir)(source)),
        }
        info!(dir = %self.dir.display(), links = links.len(), "pins removed: programs detached");
        Ok(links.len())
    }
}

/// Opens the link pinned at `path`, if there is one.
fn open_pinned(path: PathBuf) -> Result<Option<OwnedFd>, PinError> {
    if !path.exists() {
        return Ok(None);
    }
    obj_get(&path)
        .map(Some)
        .map_err(|source| PinError::Link { path, source })
}

fn pin(program: &'static str, path: PathBuf, link: FdLink) -> Result<(), PinError> {
    link.pin(&path).map(drop).map_err(|source| PinError::Pin {
        program,
        path,
        source,
    })
}

/// Swaps the program behind a pinned link in one step: no connect ever finds the hook empty.
pub fn replace_program(link: BorrowedFd<'_>, program: BorrowedFd<'_>) -> io::Result<()> {
    /// `union bpf_attr`'s link_update member.
    #[repr(C)]
    struct LinkUpdate {
        link_fd: u32,
        new_prog_fd: u32,
        flags: u32,
        old_prog_fd: u32,
    }
    let mut attr = LinkUpdate {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: program.as_raw_fd() as u32,
        flags: 0,
        old_prog_fd: 0,
    };
    // SAFETY: LinkUpdate is the link_update member of bpf_attr, with descriptors only.
    unsafe { sys_bpf(BPF_LINK_UPDATE, &mut attr) }.map(drop)
}

/// The inode of the network namespace a netns link (sk_lookup) is attached to; 0 once the
/// namespace is gone (BPF_OBJ_GET_INFO_BY_FD).
fn link_netns_inode(link: BorrowedFd<'_>) -> io::Result<u32> {
    /// The head of `struct bpf_link_info` with its `netns` member (the union is 8-aligned).
    #[repr(C)]
    #[derive(Default)]
    struct NetnsLinkInfo {
        link_type: u32,
        id: u32,
        prog_id: u32,
        _pad: u32,
        netns_ino: u32,
        attach_type: u32,
    }
    /// `union bpf_attr`'s info member.
    #[repr(C)]
    struct InfoByFd {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut info = NetnsLinkInfo::default();
    let mut attr = InfoByFd {
        bpf_fd: link.as_raw_fd() as u32,
        info_len: std::mem::size_of::<NetnsLinkInfo>() as u32,
        info: (&raw mut info) as u64,
    };
    // SAFETY: InfoByFd is the info member of bpf_attr; info points at a NetnsLinkInfo of
    // info_len bytes that outlives the call.
    unsafe { sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) }?;
    if info.link_type != BPF_LINK_TYPE_NETNS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not a netns link (type {})", info.link_type),
        ));
    }
    Ok(info.netns_ino)
}

/// Opens a pinned BPF object (BPF_OBJ_GET).
fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    /// `union bpf_attr`'s object member.
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
    let mut attr = ObjGet {
        pathname: path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    // SAFETY: ObjGet is the object member of bpf_attr; its pathname points at a
    // NUL-terminated string that outlives the call.
    let fd = unsafe { sys_bpf(BPF_OBJ_GET, &mut attr) }?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("descriptor out of range"))?;
    // SAFETY: BPF_OBJ_GET returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// bpf(2) with `attr` as the leading part of `union bpf_attr` (the kernel zero-extends it).
///
/// # Safety
/// `T` must be `#[repr(C)]` and laid out as the member of `union bpf_attr` that `cmd` reads,
/// and any pointer in it valid for the call.
unsafe fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: the caller vouches for the layout; the kernel reads at most size_of::<T>()
    // bytes of attr, during the call only.
    let ret =
        unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    match ret {
        ret if ret < 0 => Err(io::Error::last_os_error()),
        ret => Ok(ret),
    }
}

/// Mounts a BPF filesystem at `path` unless one is there.
fn mount_bpffs(path: &Path) -> Result<(), PinError> {
    if is_bpffs(path) {
        return Ok(());
    }
    std::fs::create_dir_all(path).map_err(|source| PinError::Bpffs {
        path: path.to_owned(),
        source,
    })?;
    nix::mount::mount(
        Some("bpf"),
        path,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        Some("mode=0700"),
    )
    .map_err(|source| PinError::Mount {
        path: path.to_owned(),
        source,
    })?;
    info!(path = %path.display(), "mounted a BPF filesystem");
    Ok(())
}

pub fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins in a plain directory (no bpffs: files stand for links and maps).
    fn pins_under(dir: &Path) -> Pins {
        Pins {
            bpffs: dir.to_owned(),
            dir: dir.join("pins"),
        }
    }

    #[test]
    fn pins_are_per_cgroup() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let bpffs = Path::new("/sys/fs/bpf");
        let pa = Pins::for_cgroup(bpffs, a.path()).unwrap();
        let pb = Pins::for_cgroup(bpffs, b.path()).unwrap();
        assert_ne!(pa, pb);
        let dir = pa.dir().to_string_lossy();
        assert!(dir.starts_with("/sys/fs/bpf/mesh-agent/cgroup-"), "{dir}");
        assert_eq!(pa, Pins::for_cgroup(bpffs, a.path()).unwrap());
    }

    #[test]
    fn a_missing_cgroup_is_named() {
        let err =
            Pins::for_cgroup(Path::new("/sys/fs/bpf"), Path::new("/nonexistent/cg")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/cg"), "{err}");
    }

    #[test]
    fn prune_keeps_this_agents_programs_and_map_layout() {
        let dir = tempfile::tempdir().unwrap();
        let pins = pins_under(dir.path());
        for path in [pins.links(), pins.maps(), pins.dir.join("maps-v0")] {
            std::fs::create_dir_all(path).unwrap();
        }
        for name in ["connect4", "old_program"] {
            std::fs::write(pins.links().join(name), "").unwrap();
        }
        std::fs::write(pins.maps().join("COUNTERS"), "").unwrap();
        pins.prune(&["connect4"]).unwrap();
        assert!(pins.links().join("connect4").exists());
        assert!(!pins.links().join("old_program").exists());
        assert!(pins.maps().join("COUNTERS").exists());
        assert!(!pins.dir.join("maps-v0").exists());
        assert!(pins.links().exists());
    }

    #[test]
    fn remove_takes_the_inbound_links_too_and_unpinning_one_leaves_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let pins = pins_under(dir.path());
        for path in [pins.links(), pins.inbound(), pins.maps()] {
            std::fs::create_dir_all(path).unwrap();
        }
        std::fs::write(pins.links().join("connect4"), "").unwrap();
        for cookie in [4097, 8193] {
            std::fs::write(pins.inbound_link(cookie), "").unwrap();
        }
        pins.unpin_inbound_link(4097).unwrap();
        // A namespace that was never captured: nothing to do.
        pins.unpin_inbound_link(1).unwrap();
        assert!(!pins.inbound_link(4097).exists());
        assert!(pins.inbound_link(8193).exists());
        assert_eq!(pins.remove().unwrap(), 2);
        assert!(!pins.dir.exists());
    }

    #[test]
    fn nothing_pinned_in_an_empty_directory() {
        let dir = tempfile::tempdir().unwrap();
        let pins = pins_under(dir.path());
        assert!(!pins.attached());
        assert_eq!(pins.remove().unwrap(), 0);
    }
}
