//! The control plane reading a cluster (`--kubernetes`), against the stand-in API server
//! (tests/kube/apiserver.py: the list/watch protocol, 410 Gone, status and Events recorded).
//! The cluster holds the App Mesh walkthrough howto-k8s-http-headers as published (its
//! Namespace, Mesh, VirtualNodes with podSelectors, router with header routes, Services),
//! plus the Pods and EndpointSlices its Deployments would make, at the test pods' addresses.
//! The agent enrolls pods by discovery: a pod is in the mesh when it is a ready endpoint of
//! its virtual node's Service and the node's podSelector selects it.
use serde_json::{Value, json};
use tests::{
    Agent, Node, Proc,
    agent::{config_for, discovering_pods, metric_value},
    kube_api::KubeApi,
};

use super::{TIMEOUT, meshtb};

const NAMESPACE: &str = "howto-k8s-http-headers";
const SERVICE: &str = "color.howto-k8s-http-headers.svc.cluster.local";
/// Any address: the client's connection is redirected before it is routed.
const SERVICE_VIP: &str = "10.77.200.1";
const PORT: u16 = 8080;

/// The walkthrough's manifest with the values its script exports: the App Mesh objects, the
/// Namespace and the Services (Deployments are what the pods below stand for).
fn walkthrough() -> Vec<Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../mesh-model/tests/fixtures/appmesh-examples/aws-app-mesh-examples/walkthroughs/howto-k8s-http-headers/v1beta2/manifest.yaml.template"
    );
    let text = std::fs::read_to_string(path)
        .unwrap()
        .replace("${APP_NAMESPACE}", NAMESPACE)
        .replace("${MESH_NAME}", NAMESPACE);
    text.split("\n---")
        .filter_map(|doc| serde_yaml::from_str::<Value>(doc).ok())
        .filter(|doc| doc["kind"] != "Deployment" && !doc.is_null())
        .collect()
}

fn pod(name: &str, ip: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels},
           "spec": {"nodeName": "test-node", "containers": [{"name": "app", "image": "meshtb"}]},
           "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
}

/// The slice the EndpointSlice controller makes for Service `service` over `pods`.
fn endpoint_slice(service: &str, pods: &[(&str, &str)]) -> Value {
    let endpoints: Vec<Value> = pods
        .iter()
        .map(|(name, ip)| {
            json!({"addresses": [ip], "conditions": {"ready": true},
              "targetRef": {"kind": "Pod", "name": name, "namespace": NAMESPACE}})
        })
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": format!("{service}-abcde"), "namespace": NAMESPACE,
                        "labels": {"kubernetes.io/service-name": service}},
           "addressType": "IPv4", "endpoints": endpoints,
           "ports": [{"name": "http", "port": PORT, "protocol": "TCP"}]})
}

struct Cluster {
    agent: Agent,
    api: KubeApi,
    node: Node,
    objects: Vec<Value>,
    _servers: Vec<Proc>,
    work: tempfile::TempDir,
}

impl Cluster {
    fn start(label: &str) -> Self {
        let mut node = Node::create(label).expect("test node");
        for pod in ["front", "blue", "red", "stray"] {
            node.add_pod(pod).expect("pod");
        }
        let ip = |pod: &str| node.pod(pod).unwrap().ip.to_string();
        let servers = ["blue", "red", "stray"]
            .iter()
            .map(|pod| {
                let args = ["http-server", "--port", "8080", "--name", pod];
                let server = node.spawn_in_pod(pod, meshtb(), &args).expect("server");
                let addr = format!("{}:{PORT}", ip(pod));
                node.wait_for_listener(addr.parse().unwrap(), TIMEOUT)
                    .expect("server listening");
                server
            })
            .collect();
        let work = tempfile::tempdir().unwrap();
        let api = KubeApi::start(&node, work.path()).expect("stand-in API server");
        let objects = walkthrough();
        api.put(&objects).unwrap();
        let (front, blue, red, stray) = (ip("front"), ip("blue"), ip("red"), ip("stray"));
        api.put(&[
            pod("front-1", &front, json!({"app": "front"})),
            pod("blue-1", &blue, json!({"app": "color", "version": "blue"})),
            pod("red-1", &red, json!({"app": "color", "version": "red"})),
            pod("stray-1", &stray, json!({"app": "color"})),
            endpoint_slice("front", &[("front-1", &front)]),
            endpoint_slice("color-blue", &[("blue-1", &blue), ("stray-1", &stray)]),
            endpoint_slice("color-red", &[("red-1", &red)]),
        ])
        .unwrap();
        // Every pod namespace of this node; the cluster decides which are in the mesh.
        let config = discovering_pods(&node, &config_for(&node, &[], "").unwrap());
        let agent = Agent::start_with_args(
            &node,
            &config,
            work.path(),
            &[
                "--kubernetes",
                "--kubeconfig",
                api.kubeconfig().to_str().unwrap(),
            ],
        )
        .expect("agent starts");
        let cluster = Self {
            agent,
            api,
            node,
            objects,
            _servers: servers,
            work,
        };
        // front, blue and red are virtual nodes; stray is not (blue's podSelector).
        cluster
            .agent
            .wait_for_inbound_ports(&cluster.node, 3)
            .expect("inbound ports of the enrolled pods");
        cluster
    }

    /// Who answers `color_header: <header>` from the front pod (its reply's name).
    fn served_by(&self, header: &str) -> String {
        let scratch = self.work.path().join("headers.txt");
        let header = format!("color_header: {header}");
        let (status, body, _) = self
            .node
            .curl_service(
                "front",
                (SERVICE, PORT, Some(SERVICE_VIP)),
                "/",
                &["-H", &header],
                &scratch,
                TIMEOUT,
            )
            .expect("curl runs");
        assert_eq!(status, 200, "{body}\nagent log:\n{}", self.agent.log());
        body.split_whitespace()
            .nth(2)
            .unwrap_or_default()
            .to_owned()
    }

    /// Waits until `color_header: header` is served by `expected`.
    fn wait_served_by(&self, header: &str, expected: &str) {
        let deadline = std::time::Instant::now() + TIMEOUT;
        loop {
            let served = self.served_by(header);
            if served == expected {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{header} still served by {served}, not {expected}\nagent log:\n{}",
                self.agent.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// The walkthrough's object of `kind` named `name`, to edit.
    fn object(&self, kind: &str, name: &str) -> Value {
        self.objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .cloned()
            .unwrap()
    }

    /// The router with its blue route sent to `target`.
    fn router_sending_blue_to(&self, target: &str) -> Value {
        let mut router = self.object("VirtualRouter", "color");
        let routes = router["spec"]["routes"].as_array_mut().unwrap();
        let blue = routes
            .iter_mut()
            .find(|r| r["name"] == "color-route-blue")
            .unwrap();
        blue["httpRoute"]["action"]["weightedTargets"][0]["virtualNodeRef"]["name"] = json!(target);
        router
    }

    /// Waits until what the control plane reported on the stand-in satisfies `done`.
    fn wait_recorded(&self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + TIMEOUT;
        loop {
            let recorded = self.api.recorded().unwrap();
            if done(&recorded) {
                return recorded;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{what} not reported: {recorded:#}\nagent log:\n{}",
                self.agent.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

/// The status condition of the last status patch of VirtualNode `name`, if any.
fn last_condition(recorded: &Value, name: &str) -> Option<Value> {
    recorded["status_patches"]
        .as_array()?
        .iter()
        .rev()
        .find(|p| p["kind"] == "VirtualNode" && p["name"] == name)
        .map(|p| p["patch"]["status"]["conditions"][0].clone())
}

#[test]
fn cluster_objects_route_pods_by_header_and_edits_reach_the_data_plane() {
    let cluster = Cluster::start("k8sroute");
    // Header routes of the walkthrough's router, to pods found through EndpointSlices (the
    // hostnames are Services' names: nothing resolves them here).
    assert_eq!(cluster.served_by("blue"), "blue");
    assert_eq!(cluster.served_by("red"), "red");
    // Service color-blue's slice lists the stray pod too; blue's podSelector leaves it out.
    let metrics = cluster.agent.metrics(&cluster.node).unwrap();
    let blue_cluster = format!("{NAMESPACE}/blue_{NAMESPACE}/{PORT}");
    assert_eq!(
        metric_value(
            &metrics,
            &format!("mesh_upstream_endpoints{{cluster=\"{blue_cluster}\",state=\"available\"}}")
        ),
        1.0,
        "{metrics}"
    );
    for _ in 0..10 {
        assert_eq!(cluster.served_by("blue"), "blue");
    }

    // An edit of the router reaches the data plane.
    cluster
        .api
        .put(&[cluster.router_sending_blue_to("red")])
        .unwrap();
    cluster.wait_served_by("blue", "red");

    // A VirtualNode the model refuses (a port out of range) is reported on the object and
    // the last good mesh keeps being served.
    let mut bad = cluster.object("VirtualNode", "red");
    bad["spec"]["listeners"][0]["portMapping"]["port"] = json!(70000);
    cluster.api.put(&[bad]).unwrap();
    let recorded = cluster.wait_recorded("the bad VirtualNode", |r| {
        last_condition(r, "red").is_some_and(|c| c["status"] == "False")
    });
    let condition = last_condition(&recorded, "red").unwrap();
    assert_eq!(condition["type"], "MeshAgentAccepted");
    let message = condition["message"].as_str().unwrap();
    assert!(message.contains("port"), "{message}");
    let events = recorded["events"].as_array().unwrap();
    assert!(
        events.iter().any(|e| e["reason"] == "ValidationFailed"
            && e["type"] == "Warning"
            && e["regarding"]["kind"] == "VirtualNode"
            && e["regarding"]["name"] == "red"),
        "{recorded:#}"
    );
    // Still the last good mesh: blue's header goes to red, red's to red.
    assert_eq!(cluster.served_by("blue"), "red");
    assert_eq!(cluster.served_by("red"), "red");

    // Fixed: accepted again, and later edits are served.
    cluster
        .api
        .put(&[cluster.object("VirtualNode", "red")])
        .unwrap();
    cluster.wait_recorded("the fixed VirtualNode", |r| {
        last_condition(r, "red").is_some_and(|c| c["status"] == "True")
    });
    cluster
        .api
        .put(&[cluster.router_sending_blue_to("blue")])
        .unwrap();
    cluster.wait_served_by("blue", "blue");
}

#[test]
fn a_410_gone_makes_the_control_plane_relist_and_serve_what_changed() {
    let cluster = Cluster::start("k8sgone");
    assert_eq!(cluster.served_by("blue"), "blue");
    // More pods than a page holds (the watcher lists 500 at a time): the relist follows
    // the continue token.
    let crowd: Vec<Value> = (0..600)
        .map(|i| {
            let mut filler = pod(
                &format!("filler-{i}"),
                "10.99.0.1",
                json!({"app": "filler"}),
            );
            filler["metadata"]["namespace"] = json!("crowd");
            filler
        })
        .collect();
    cluster.api.put(&crowd).unwrap();
    let before = cluster.api.stats().unwrap();
    // The history is compacted and the watches end: resuming from their resourceVersion is
    // 410 Gone; only a relist sees the router changed meanwhile.
    cluster.api.compact().unwrap();
    cluster
        .api
        .put(&[cluster.router_sending_blue_to("red")])
        .unwrap();
    cluster.wait_served_by("blue", "red");
    let after = cluster.api.stats().unwrap();
    assert!(after["gone"].as_u64() > before["gone"].as_u64(), "{after}");
    let lists = |stats: &Value, kind: &str| stats["lists"][kind].as_u64().unwrap_or(0);
    assert!(
        lists(&after, "virtualrouters") > lists(&before, "virtualrouters"),
        "{before} {after}"
    );
    // Two pages of pods.
    assert!(
        lists(&after, "pods") >= lists(&before, "pods") + 2,
        "{before} {after}"
    );
}
