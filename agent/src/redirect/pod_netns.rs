//! Finding pods' network namespaces by their addresses: every namespace the node shows —
//! the files under the netns directory that match the pattern (as containerd and CRI-O
//! name them, `cni-*`), then, when asked, `/proc/PID/ns/net` of every process (lowest PID
//! first: a pod's sandbox process starts first and lives as long as the pod; opening
//! another process's namespace takes CAP_SYS_PTRACE) — each distinct namespace
//! once (by its inode), never the agent's own (the node's), its IPv4 addresses read by
//! entering it. An address is the pod's when one namespace file holds it; failing that,
//! when one process's namespace does (a runtime that keeps no files); in two of the same
//! kind, it cannot be told which is the pod's. Blocking work: called on a blocking thread.
//!
//! Entering a namespace costs a thread, so what was read is kept per namespace; while a pod's
//! address is found nowhere, one whose addresses match no pod is read again after
//! [`RECHECK`] (a CNI adds the address after the runtime creates the namespace). Every scan is bounded: [`MAX_PROCESSES`] processes
//! looked at, [`MAX_INSPECTIONS`] namespaces entered.
use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::{namespaces::glob_match, netns};

/// Processes looked at per scan (a node runs a few thousand).
const MAX_PROCESSES: usize = 65_536;
/// Namespaces entered per scan; the rest wait for the next.
const MAX_INSPECTIONS: usize = 256;
/// How long the addresses of a namespace that holds no pod's address are trusted.
const RECHECK: Duration = Duration::from_secs(5);

/// A namespace's identity: the device and inode of its nsfs file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NamespaceId {
    dev: u64,
    ino: u64,
}

impl NamespaceId {
    #[cfg(test)]
    pub(super) fn for_tests(ino: u64) -> Self {
        Self { dev: 4, ino }
    }

    fn of(path: &Path) -> Option<Self> {
        let metadata = std::fs::metadata(path).ok()?;
        Some(Self {
            dev: metadata.dev(),
            ino: metadata.ino(),
        })
    }
}

/// Where an address was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// In one namespace: its identity and a path that opens it.
    One(NamespaceId, PathBuf),
    /// In several namespaces: it cannot be told which is the pod.
    Several(usize),
}

/// How a namespace was found: files are the runtime's own record of its pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Source {
    File,
    Process,
}

/// The one namespace of the most telling kind among `places`, or how many there are.
fn location(mut places: Vec<(Source, NamespaceId, PathBuf)>) -> Location {
    let best = places.iter().map(|(source, ..)| *source).min();
    places.retain(|(source, ..)| Some(*source) == best);
    match places.len() {
        1 => {
            let (_, id, path) = places.remove(0);
            Location::One(id, path)
        }
        n => Location::Several(n),
    }
}

struct Inspected {
    addresses: Vec<Ipv4Addr>,
    at: Instant,
}

/// The namespaces seen, and where to look for them.
pub struct Scanner {
    netns_dir: PathBuf,
    pattern: String,
    proc_dir: PathBuf,
    by_process: bool,
    seen: HashMap<NamespaceId, Inspected>,
}

impl Scanner {
    /// Namespace files under `netns_dir` whose names match `pattern` (`*` for any run),
    /// and, `by_process`, the namespaces of the processes under `/proc`.
    pub fn new(netns_dir: PathBuf, pattern: String, by_process: bool) -> Self {
        Self {
            netns_dir,
            pattern,
            proc_dir: PathBuf::from("/proc"),
            by_process,
            seen: HashMap::new(),
        }
    }

    /// Where each of the `wanted` addresses is (an address found nowhere is absent).
    pub fn locate(&mut self, wanted: &HashSet<Ipv4Addr>) -> HashMap<Ipv4Addr, Location> {
        if wanted.is_empty() {
            return HashMap::new();
        }
        let own = NamespaceId::of(&self.proc_dir.join("self/ns/net"));
        let mut candidates: Vec<(NamespaceId, PathBuf, Source)> = Vec::new();
        let mut ids = HashSet::new();
        let files = self.netns_files().into_iter().map(|p| (p, Source::File));
        let processes = self
            .process_namespaces()
            .into_iter()
            .map(|p| (p, Source::Process));
        for (path, source) in files.chain(processes) {
            let Some(id) = NamespaceId::of(&path) else {
                continue;
            };
            // The agent's own namespace is the node's: never a pod.
            if Some(id) != own && ids.insert(id) {
                candidates.push((id, path, source));
            }
        }
        self.seen.retain(|id, _| ids.contains(id));
        let known: HashSet<&Ipv4Addr> = self.seen.values().flat_map(|s| &s.addresses).collect();
        let missing = wanted.iter().any(|ip| !known.contains(ip));
        let mut inspections = 0;
        let mut found: HashMap<Ipv4Addr, Vec<(Source, NamespaceId, PathBuf)>> = HashMap::new();
        for (id, path, source) in candidates {
            let stale = self.seen.get(&id).is_none_or(|known| {
                missing
                    && !known.addresses.iter().any(|ip| wanted.contains(ip))
                    && known.at.elapsed() >= RECHECK
            });
            if stale && inspections < MAX_INSPECTIONS {
                inspections += 1;
                // A namespace that cannot be read (gone meanwhile, not a namespace) has no
                // addresses until it is read again.
                let addresses = netns::inspect(&path)
                    .map(|info| info.addresses)
                    .unwrap_or_default();
                self.seen.insert(
                    id,
                    Inspected {
                        addresses,
                        at: Instant::now(),
                    },
                );
            }
            let Some(known) = self.seen.get(&id) else {
                continue;
            };
            for ip in known.addresses.iter().filter(|ip| wanted.contains(ip)) {
                found
                    .entry(*ip)
                    .or_default()
                    .push((source, id, path.clone()));
            }
        }
        found
            .into_iter()
            .map(|(ip, places)| (ip, location(places)))
            .collect()
    }

    /// The namespace files whose names match the pattern, by name.
    fn netns_files(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(&self.netns_dir) else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| glob_match(&self.pattern, &e.file_name().to_string_lossy()))
            .map(|e| e.path())
            .collect();
        files.sort();
        files
    }

    /// `/proc/PID/ns/net` of the processes, lowest PID first.
    fn process_namespaces(&self) -> Vec<PathBuf> {
        if !self.by_process {
            return Vec::new();
        }
        let Ok(entries) = std::fs::read_dir(&self.proc_dir) else {
            return Vec::new();
        };
        let mut pids: Vec<u32> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .take(MAX_PROCESSES)
            .collect();
        pids.sort_unstable();
        pids.into_iter()
            .map(|pid| self.proc_dir.join(pid.to_string()).join("ns/net"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run as root (as the e2e tests are) this enters the host's namespaces too; without
    /// privileges nothing can be entered, and nothing is found.
    #[test]
    fn the_agents_own_namespace_is_never_a_pod() {
        let own = netns::inspect(Path::new("/proc/self/ns/net"));
        let mut scanner = Scanner::new(PathBuf::from("/nonexistent"), "*".into(), true);
        let Ok(own) = own else {
            return;
        };
        let wanted: HashSet<Ipv4Addr> = own.addresses.iter().copied().collect();
        let located = scanner.locate(&wanted);
        for ip in &own.addresses {
            assert!(
                !matches!(located.get(ip), Some(Location::One(_, path)) if path.starts_with("/proc/self")),
                "{located:?}"
            );
        }
        // This process's namespace is found by no path at all (every path to it is skipped).
        let own_id = NamespaceId::of(Path::new("/proc/self/ns/net")).unwrap();
        assert!(
            located
                .values()
                .all(|l| !matches!(l, Location::One(id, _) if *id == own_id)),
            "{located:?}"
        );
    }

    #[test]
    fn a_file_is_preferred_to_a_process_and_two_of_a_kind_are_ambiguous() {
        let id = NamespaceId::for_tests;
        let place = |source, ino: u64| (source, id(ino), PathBuf::from(format!("/ns/{ino}")));
        assert_eq!(
            location(vec![place(Source::Process, 1), place(Source::File, 2)]),
            Location::One(id(2), PathBuf::from("/ns/2"))
        );
        assert_eq!(
            location(vec![place(Source::Process, 1)]),
            Location::One(id(1), PathBuf::from("/ns/1"))
        );
        assert_eq!(
            location(vec![place(Source::File, 1), place(Source::File, 2)]),
            Location::Several(2)
        );
        assert_eq!(
            location(vec![place(Source::Process, 1), place(Source::Process, 3)]),
            Location::Several(2)
        );
    }

    #[test]
    fn netns_files_are_those_matching_the_pattern() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["cni-1", "cni-2", "other"] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        let scanner = Scanner::new(dir.path().to_owned(), "cni-*".into(), true);
        assert_eq!(
            scanner.netns_files(),
            [dir.path().join("cni-1"), dir.path().join("cni-2")]
        );
        assert!(
            scanner
                .process_namespaces()
                .iter()
                .all(|p| p.ends_with("ns/net"))
        );
    }
}
