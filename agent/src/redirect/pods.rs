//! Enrollment from the control plane's list of this node's pods (Kubernetes): each listed
//! pod's network namespace is found by its address ([`pod_netns`]) and enrolled as the
//! workload the list names (its VirtualNode or VirtualGateway by podSelector), as
//! `k8s:NAMESPACE/NAME`; a pod no longer listed, or whose namespace is gone, is unenrolled.
//! While the list is in force it decides alone: namespaces enrolled by discovery (the mesh's
//! endpoints) are handed over to it.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::Ipv4Addr,
    sync::{Arc, Mutex},
    time::Duration,
};

use mesh_xds::plan::node_pods::NodePod;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::{
    Enrollments,
    pod_netns::{Location, NamespaceId, Scanner},
};
use crate::{config::NetnsRef, dataplane::MeshState};

/// How often the namespaces are looked at again (pods' namespaces appear and go).
const RESCAN: Duration = Duration::from_secs(1);

/// What enrollment specs of listed pods start with.
const POD_SPEC_PREFIX: &str = "k8s:";

/// Keeps the enrolled pods in step with the control plane's list until `stop`, finding
/// their namespaces with `scanner`.
pub async fn run(
    enrollments: Arc<Mutex<Enrollments>>,
    mesh: MeshState,
    scanner: Scanner,
    stop: CancellationToken,
) {
    let mut state = Some(State {
        scanner,
        enrolled: HashMap::new(),
        warned: BTreeSet::new(),
    });
    let mut changes = mesh.subscribe();
    let mut tick = tokio::time::interval(RESCAN);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = changes.changed() => if changed.is_err() { return },
            () = stop.cancelled() => return,
        }
        // An unreadable plane (said once) cannot tell which pods are here: skip the round.
        let Ok(plane) = mesh.current() else {
            continue;
        };
        let Some(mut round_state) = state.take() else {
            return;
        };
        // Without a list nothing is done, unless pods listed before must go.
        let pods = plane.node_pods.clone();
        if pods.is_none() && round_state.enrolled.is_empty() {
            state = Some(round_state);
            continue;
        }
        let enrollments = Arc::clone(&enrollments);
        let round = tokio::task::spawn_blocking(move || {
            round_state
                .round(&enrollments, pods.as_deref().map(Vec::as_slice))
                .then_some(round_state)
        });
        match round.await {
            Ok(Some(kept)) => state = Some(kept),
            Ok(None) => return,
            Err(error) => {
                error!(%error, "pod enrollment round failed; pod enrollment stops");
                return;
            }
        }
    }
}

/// What the rounds keep: the namespaces seen, which namespace and workload each listed pod
/// was enrolled with, the problems already said.
struct State {
    scanner: Scanner,
    enrolled: HashMap<String, (NamespaceId, String)>,
    /// (pod spec, problem).
    warned: BTreeSet<(String, String)>,
}

/// A listed pod's namespace, found.
struct Found {
    ns: NetnsRef,
    id: NamespaceId,
}

impl State {
    /// One round (blocking: namespaces are entered, the kernel's maps updated) with the
    /// list in force, or none (the pods listed before go); false once the enrollment table
    /// is unusable.
    fn round(&mut self, enrollments: &Mutex<Enrollments>, list: Option<&[NodePod]>) -> bool {
        let pods = list.unwrap_or_default();
        let wanted: HashSet<Ipv4Addr> = pods.iter().map(|p| p.ip).collect();
        // Problems of pods no longer listed may be said again if they come back.
        let listed: HashSet<String> = pods
            .iter()
            .map(|p| format!("{POD_SPEC_PREFIX}{}", p.pod))
            .collect();
        self.warned.retain(|(spec, _)| listed.contains(spec));
        let located = self.scanner.locate(&wanted);
        let desired = self.desired(pods, &located);
        let Ok(mut table) = enrollments.lock() else {
            error!("enrollment table lock poisoned; pod enrollment stops");
            return false;
        };
        // The list decides while it is in force.
        for name in table.discovered().into_iter().filter(|_| list.is_some()) {
            if table.unenroll(&name).is_ok() {
                info!(netns = %name, "handed over to the control plane's pod list");
            }
        }
        for spec in table.listed() {
            if !desired.contains_key(&spec) && table.unenroll(&spec).is_ok() {
                self.enrolled.remove(&spec);
                info!(pod = %spec, "pod no longer listed for this node (or its namespace is gone); unenrolled");
            }
        }
        self.enrolled.retain(|spec, _| desired.contains_key(spec));
        for (spec, found) in desired {
            let workload = found.ns.virtual_node.clone().unwrap_or_default();
            let current = (found.id, workload);
            if self.enrolled.get(&spec) == Some(&current) && table.is_enrolled(&spec) {
                continue;
            }
            match table.enroll_listed(&found.ns) {
                Ok(_) => {
                    info!(pod = %spec, path = %found.ns.path.display(), workload = %current.1, "listed pod enrolled");
                    self.enrolled.insert(spec, current);
                }
                Err(error) => self.warn_once(&spec, &error.to_string()),
            }
        }
        true
    }

    /// The namespace of every listed pod that was found in exactly one, by spec.
    fn desired(
        &mut self,
        pods: &[NodePod],
        located: &HashMap<Ipv4Addr, Location>,
    ) -> BTreeMap<String, Found> {
        let mut by_pod: BTreeMap<(&str, &str), Vec<Ipv4Addr>> = BTreeMap::new();
        for pod in pods {
            by_pod
                .entry((pod.pod.as_str(), pod.workload.as_str()))
                .or_default()
                .push(pod.ip);
        }
        let mut desired = BTreeMap::new();
        for ((pod, workload), ips) in by_pod {
            let spec = format!("{POD_SPEC_PREFIX}{pod}");
            let mut places = BTreeMap::new();
            for ip in &ips {
                match located.get(ip) {
                    Some(Location::One(id, path)) => {
                        places.insert(*id, path.clone());
                    }
                    Some(Location::Several(n)) => {
                        self.warn_once(&spec, &format!("address {ip} is in {n} namespaces: which is the pod's cannot be told; not enrolled"));
                        places.clear();
                        break;
                    }
                    None => debug!(pod = %spec, %ip, "no namespace holds the pod's address (yet)"),
                }
            }
            let found = match places.into_iter().collect::<Vec<_>>().as_slice() {
                [(id, path)] => Found {
                    ns: NetnsRef {
                        spec: spec.clone(),
                        path: path.clone(),
                        virtual_node: Some(workload.to_owned()),
                    },
                    id: *id,
                },
                [] => continue,
                _ => {
                    self.warn_once(
                        &spec,
                        "the pod's addresses are in different namespaces; not enrolled",
                    );
                    continue;
                }
            };
            desired.insert(spec, found);
        }
        self.without_shared_namespaces(desired)
    }

    /// `desired` without the pods whose namespace another listed pod's addresses are in too:
    /// one namespace is one pod, and which it is cannot be told (a pod that took another's
    /// address) — neither is enrolled.
    fn without_shared_namespaces(
        &mut self,
        mut desired: BTreeMap<String, Found>,
    ) -> BTreeMap<String, Found> {
        let mut pods_in: HashMap<NamespaceId, Vec<String>> = HashMap::new();
        for (spec, found) in &desired {
            pods_in.entry(found.id).or_default().push(spec.clone());
        }
        for specs in pods_in.into_values().filter(|specs| specs.len() > 1) {
            for spec in &specs {
                desired.remove(spec);
                let others = specs
                    .iter()
                    .filter(|s| *s != spec)
                    .cloned()
                    .collect::<Vec<_>>();
                self.warn_once(
                    spec,
                    &format!("its namespace holds the addresses of {} too: which pod it is cannot be told; not enrolled", others.join(", ")),
                );
            }
        }
        desired
    }

    /// Warns about `pod` once per distinct problem (rounds repeat every second).
    fn warn_once(&mut self, pod: &str, problem: &str) {
        if self.warned.insert((pod.to_owned(), problem.to_owned())) {
            warn!(pod, %problem, "listed pod not enrolled");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn pod(ip: [u8; 4], pod: &str, workload: &str) -> NodePod {
        NodePod {
            ip: ip.into(),
            workload: workload.into(),
            pod: pod.into(),
        }
    }

    fn state() -> State {
        State {
            scanner: Scanner::new(PathBuf::from("/nonexistent"), "*".into(), false),
            enrolled: HashMap::new(),
            warned: BTreeSet::new(),
        }
    }

    #[test]
    fn each_pod_found_in_exactly_one_namespace_is_enrolled_as_its_workload() {
        let here = |ino| NamespaceId::for_tests(ino);
        let located = HashMap::from([
            (
                Ipv4Addr::new(10, 0, 0, 1),
                Location::One(here(1), "/run/netns/cni-1".into()),
            ),
            (
                Ipv4Addr::new(10, 0, 0, 2),
                Location::One(here(1), "/run/netns/cni-1".into()),
            ),
            (Ipv4Addr::new(10, 0, 0, 3), Location::Several(2)),
            (
                Ipv4Addr::new(10, 0, 0, 4),
                Location::One(here(4), "/proc/9/ns/net".into()),
            ),
            (
                Ipv4Addr::new(10, 0, 0, 5),
                Location::One(here(5), "/proc/10/ns/net".into()),
            ),
        ]);
        let pods = [
            // Two addresses, one namespace.
            pod([10, 0, 0, 1], "shop/web-1", "m/web"),
            pod([10, 0, 0, 2], "shop/web-1", "m/web"),
            // Ambiguous.
            pod([10, 0, 0, 3], "shop/twin", "m/web"),
            // Its addresses in two namespaces.
            pod([10, 0, 0, 4], "shop/split", "m/web"),
            pod([10, 0, 0, 5], "shop/split", "m/web"),
            // Not found (yet).
            pod([10, 0, 0, 6], "shop/new", "m/web"),
            pod([10, 0, 0, 4], "x", "m/gateway/in"),
            // In web-1's namespace too.
            pod([10, 0, 0, 2], "shop/thief", "m/api"),
        ];
        let mut state = state();
        let desired = state.desired(&pods[..6], &located);
        let found: Vec<(&str, &str, Option<&str>)> = desired
            .iter()
            .map(|(spec, f)| {
                (
                    spec.as_str(),
                    f.ns.path.to_str().unwrap(),
                    f.ns.virtual_node.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            found,
            [("k8s:shop/web-1", "/run/netns/cni-1", Some("m/web"))]
        );
        assert_eq!(state.warned.len(), 2, "{:?}", state.warned);
        // A gateway's pod is pinned to the gateway.
        let desired = state.desired(&pods[6..7], &located);
        assert_eq!(
            desired["k8s:x"].ns.virtual_node.as_deref(),
            Some("m/gateway/in")
        );
        // Two pods whose addresses are in one namespace: neither is enrolled.
        let desired = state.desired(&[pods[0].clone(), pods[7].clone()], &located);
        assert!(
            desired.is_empty(),
            "{:?}",
            desired.keys().collect::<Vec<_>>()
        );
        assert!(
            state
                .warned
                .iter()
                .any(|(spec, problem)| spec == "k8s:shop/web-1" && problem.contains("shop/thief")),
            "{:?}",
            state.warned
        );
    }
}
