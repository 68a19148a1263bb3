//! Enrollment by the mesh: namespaces under the netns directory whose names match the
//! configured pattern are looked at (cookie, addresses) once per namespace instance; those
//! with an address that is an endpoint of a virtual node are enrolled, and unenrolled when
//! that stops or the namespace goes away. Whoever creates the namespaces (a CNI, a test) only
//! has to put the pod's address where the mesh's service discovery finds it.
use std::{
    collections::HashMap,
    net::Ipv4Addr,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{Enrollments, netns};
use crate::{config::NetnsRef, dataplane::MeshState};

const RESCAN: Duration = Duration::from_secs(1);

/// Keeps discovered enrollment in step with the namespaces and the mesh until `stop`.
pub async fn run(
    enrollments: Arc<Mutex<Enrollments>>,
    mesh: MeshState,
    netns_dir: PathBuf,
    pattern: String,
    stop: CancellationToken,
) {
    // Addresses per namespace instance (name, inode): entering a namespace costs a thread.
    let mut seen: Seen = HashMap::new();
    let mut tick = tokio::time::interval(RESCAN);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        // Reading namespaces (entering each new one) and updating the kernel's maps block:
        // a round runs on a blocking thread, never on the runtime's.
        let round = {
            let (enrollments, mesh) = (Arc::clone(&enrollments), mesh.clone());
            let (netns_dir, pattern) = (netns_dir.clone(), pattern.clone());
            let mut seen = std::mem::take(&mut seen);
            tokio::task::spawn_blocking(move || {
                discover_once(&enrollments, &mesh, &netns_dir, &pattern, &mut seen).then_some(seen)
            })
        };
        match round.await {
            Ok(Some(kept)) => seen = kept,
            Ok(None) => return,
            Err(error) => {
                error!(%error, "namespace discovery round failed; discovery stops");
                return;
            }
        }
    }
}

/// Addresses per namespace instance (name, inode).
type Seen = HashMap<(String, u64), Vec<Ipv4Addr>>;

/// One round: enrolls the namespaces now in the mesh, unenrolls those no longer; false once
/// the enrollment table is unusable (discovery stops).
fn discover_once(
    enrollments: &Mutex<Enrollments>,
    mesh: &MeshState,
    netns_dir: &Path,
    pattern: &str,
    seen: &mut Seen,
) -> bool {
    let present = scan(netns_dir, pattern, seen);
    // An unreadable plane (said once) cannot tell who is in the mesh: skip the round.
    let Ok(plane) = mesh.current() else {
        return true;
    };
    // The control plane lists this node's pods: that list decides (redirect::pods).
    if plane.node_pods.is_some() {
        return true;
    }
    let Ok(mut table) = enrollments.lock() else {
        error!("enrollment table lock poisoned; discovery stops");
        return false;
    };
    for (name, addresses) in &present {
        let member = plane.virtual_node_at(addresses).is_some();
        if member && !table.is_enrolled(name) {
            match NetnsRef::parse(name, netns_dir) {
                Ok(ns) => match table.enroll_discovered(&ns) {
                    Ok(_) => {
                        info!(netns = %name, ?addresses, "discovered in the mesh; enrolled")
                    }
                    Err(error) => {
                        warn!(netns = %name, %error, "cannot enroll a discovered namespace")
                    }
                },
                Err(reason) => {
                    warn!(netns = %name, %reason, "discovered namespace has an unusable name")
                }
            }
        }
    }
    for name in table.discovered() {
        let still = present
            .iter()
            .any(|(n, addresses)| *n == name && plane.virtual_node_at(addresses).is_some());
        if !still && table.unenroll(&name).is_ok() {
            info!(netns = %name, "no longer in the mesh (or gone); unenrolled");
        }
    }
    true
}

/// Namespaces matching `pattern` and their addresses.
fn scan(dir: &Path, pattern: &str, seen: &mut Seen) -> Vec<(String, Vec<Ipv4Addr>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut present = Vec::new();
    let mut live = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !glob_match(pattern, &name) {
            continue;
        }
        let Ok(inode) = entry.metadata().map(|m| m.ino()) else {
            continue;
        };
        let key = (name.clone(), inode);
        if !seen.contains_key(&key) {
            match netns::inspect(&entry.path()) {
                Ok(info) => {
                    seen.insert(key.clone(), info.addresses);
                }
                // Not (yet) a namespace, e.g. caught between creation and mount.
                Err(_) => continue,
            }
        }
        live.push(key.clone());
        present.push((name, seen[&key].clone()));
    }
    seen.retain(|key, _| live.contains(key));
    present
}

/// `*` matches any run of characters; everything else matches itself.
pub(super) fn glob_match(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("cni-*", "cni-1234"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("meshtb1-l7-*", "meshtb1-l7-client"));
        assert!(!glob_match("meshtb1-l7-*", "meshtb2-l7-client"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
        assert!(!glob_match("ab*ba", "aba"));
    }
}
