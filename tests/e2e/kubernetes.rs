//! The control plane reading a cluster (`--kubernetes`), against the stand-in API server
//! (tests/kube/apiserver.py: the list/watch protocol, 410 Gone, status and Events recorded).
//! The cluster holds the App Mesh walkthrough howto-k8s-http-headers as published (its
//! Namespace, Mesh, VirtualNodes with podSelectors, router with header routes, Services),
//! plus the Pods and EndpointSlices its Deployments would make, at the test pods' addresses,
//! and a client-only VirtualNode (a podSelector, backends, no listener). The control plane
//! lists the pods scheduled to this node (the agent's node id, the host name) with the
//! workload each podSelector makes them; the agent finds their namespaces by address and
//! enrolls them.
use serde_json::{Value, json};
use tests::{
    Agent, Node, Proc,
    agent::{config_for, metric_value},
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

/// The node name the embedded control plane knows the agent by: its xDS node id, the host
/// name (as a DaemonSet's `spec.nodeName` is the node's).
fn this_node() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned()
}

/// A Running pod scheduled to this node.
fn pod(name: &str, ip: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels},
           "spec": {"nodeName": this_node(), "containers": [{"name": "app", "image": "meshtb"}]},
           "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
}

/// A VirtualNode for clients only: its pods call the color service and serve nothing.
fn client_only_node() -> Value {
    json!({"apiVersion": "appmesh.k8s.aws/v1beta2", "kind": "VirtualNode",
           "metadata": {"name": "client", "namespace": NAMESPACE},
           "spec": {"podSelector": {"matchLabels": {"app": "client"}},
                    "backends": [{"virtualService": {"virtualServiceRef": {"name": "color"}}}]}})
}

/// The pods of the client-only node: one enrolled, and one each that must not be — opted
/// out, sharing the node's network, scheduled to another node (each with the address of a
/// namespace here, so that only the rule keeps it out).
fn client_pods(ip: impl Fn(&str) -> String) -> Vec<Value> {
    let client = json!({"app": "client"});
    let mut opted_out = pod("optout-1", &ip("optout"), client.clone());
    opted_out["metadata"]["annotations"] = json!({"mesh-agent.io/enroll": "false"});
    let mut host_network = pod("hostnet-1", &ip("hostnet"), client.clone());
    host_network["spec"]["hostNetwork"] = json!(true);
    let mut elsewhere = pod("farout-1", &ip("farout"), client.clone());
    elsewhere["spec"]["nodeName"] = json!("another-node");
    vec![
        pod("client-1", &ip("client"), client),
        opted_out,
        host_network,
        elsewhere,
    ]
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
    /// A cluster on test node `number` (a number of its own: the agent finds pods' namespaces
    /// by address among every process's, and other tests' pods must not share them).
    fn start(label: &str, number: u8) -> Self {
        let mut node = Node::create_numbered(label, number).expect("test node");
        for pod in [
            "front", "blue", "red", "stray", "client", "optout", "hostnet", "farout", "inlet",
        ] {
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
        let mut objects = walkthrough();
        objects.push(client_only_node());
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
        api.put(&client_pods(ip)).unwrap();
        // The namespace files of the pods whose names end in `t` (front, client, optout,
        // hostnet, farout, inlet); blue and red (servers) are found by their processes'
        // namespaces.
        let config = config_for(&node, &[], "").unwrap().replace(
            "enrollment:\n",
            &format!(
                "enrollment:\n  discover: \"{}-*t\"\n  find_pods_by_process: true\n",
                node.tag()
            ),
        );
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
        self.served_to("front", header)
    }

    /// Who answers `color_header: <header>` from pod `client` (its reply's name).
    fn served_to(&self, client: &str, header: &str) -> String {
        let (status, body) = self.answer(client, (SERVICE, PORT, Some(SERVICE_VIP)), header);
        assert_eq!(status, 200, "{body}\nagent log:\n{}", self.agent.log());
        body.split_whitespace()
            .nth(2)
            .unwrap_or_default()
            .to_owned()
    }

    /// The status and body of `GET /` with `color_header: <header>` from pod `client` to
    /// `target` (curl_service's host, port, address).
    fn answer(
        &self,
        client: &str,
        target: (&str, u16, Option<&str>),
        header: &str,
    ) -> (u16, String) {
        let scratch = self.work.path().join("headers.txt");
        let header = format!("color_header: {header}");
        let (status, body, _) = self
            .node
            .curl_service(client, target, "/", &["-H", &header], &scratch, TIMEOUT)
            .expect("curl runs");
        (status, body)
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

    /// The agent's enrollment listing once it satisfies `done`.
    fn wait_enrolled(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        self.wait(
            what,
            || self.node.admin("GET", "/enrollment").unwrap().1,
            |listing| done(listing),
        )
    }

    /// `read()` once `done` with it, polled until [`TIMEOUT`]; then the test fails with
    /// `what`, the last value read and the agent's log.
    fn wait<T: std::fmt::Display>(
        &self,
        what: &str,
        read: impl Fn() -> T,
        done: impl Fn(&T) -> bool,
    ) -> T {
        let deadline = std::time::Instant::now() + TIMEOUT;
        loop {
            let value = read();
            if done(&value) {
                return value;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: not yet in\n{value}\nagent log:\n{}",
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
        self.wait(what, || self.api.recorded().unwrap(), done)
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
    let cluster = Cluster::start("k8sroute", 150);
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
    let cluster = Cluster::start("k8sgone", 151);
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
    // Two pages of pods (that relist runs beside the others: it may end after the router's).
    cluster.wait(
        "two pages of pods relisted",
        || cluster.api.stats().unwrap(),
        |now| lists(now, "pods") >= lists(&before, "pods") + 2,
    );
}

/// The enrollment line of pod `name` of the walkthrough's namespace.
fn enrolled_line<'a>(listing: &'a str, name: &str) -> Option<&'a str> {
    let spec = format!("k8s:{NAMESPACE}/{name} ");
    listing.lines().find(|line| line.starts_with(&spec))
}

#[test]
fn the_pods_listed_for_this_node_are_enrolled_as_their_virtual_nodes_until_they_go() {
    let cluster = Cluster::start("k8spods", 152);
    let listing = cluster.wait_enrolled("the listed pods", |listing| {
        ["front-1", "blue-1", "red-1", "client-1"]
            .iter()
            .all(|pod| enrolled_line(listing, pod).is_some())
    });
    // Each as the VirtualNode whose podSelector selects it, found by its namespace file
    // (front, client) or by its process's namespace (blue, red).
    for (pod, node, netns) in [
        ("front-1", "front", format!("{}-front", cluster.node.tag())),
        (
            "client-1",
            "client",
            format!("{}-client", cluster.node.tag()),
        ),
        ("blue-1", "blue", "/ns/net".to_owned()),
        ("red-1", "red", "/ns/net".to_owned()),
    ] {
        let line = enrolled_line(&listing, pod).unwrap();
        assert!(
            line.ends_with(&format!(" virtual_node={NAMESPACE}/{node}_{NAMESPACE}")),
            "{line}"
        );
        assert!(line.contains(&netns), "{line}");
    }
    // Not selected, opted out, sharing the node's network, scheduled elsewhere: not enrolled
    // (and nothing else is: the node's own namespace never is).
    assert_eq!(listing.lines().count(), 4, "{listing}");

    // The client-only node's pod is routed by the CRDs.
    assert_eq!(cluster.served_to("client", "blue"), "blue");
    assert_eq!(cluster.served_to("client", "red"), "red");

    // A pod deleted is unenrolled; the others stay.
    let client = client_pods(|pod| cluster.node.pod(pod).unwrap().ip.to_string()).remove(0);
    cluster.api.delete(&[client]).unwrap();
    let listing = cluster.wait_enrolled("client-1 unenrolled", |listing| {
        enrolled_line(listing, "client-1").is_none()
    });
    assert_eq!(listing.lines().count(), 3, "{listing}");
    // A pod that moves to this node (its nodeName set) is enrolled.
    let mut moved = client_pods(|pod| cluster.node.pod(pod).unwrap().ip.to_string()).remove(3);
    moved["spec"]["nodeName"] = json!(this_node());
    cluster.api.put(&[moved]).unwrap();
    cluster.wait_enrolled("farout-1 enrolled", |listing| {
        enrolled_line(listing, "farout-1").is_some()
    });
    assert_eq!(cluster.served_to("farout", "red"), "red");

    // A VirtualGateway's podSelector makes its pod the gateway's: enrolled as the gateway,
    // whose listener port is captured on the pod and served by this node's agent — to a
    // client outside the mesh (stray), routed by the gateway route and the router.
    let inlet = cluster.node.pod("inlet").unwrap().ip.to_string();
    cluster
        .api
        .put(&[
            json!({"apiVersion": "appmesh.k8s.aws/v1beta2", "kind": "VirtualGateway",
                   "metadata": {"name": "inlet", "namespace": NAMESPACE},
                   "spec": {"namespaceSelector": {"matchLabels": {"mesh": NAMESPACE}},
                            "podSelector": {"matchLabels": {"app": "inlet"}},
                            "listeners": [{"portMapping": {"port": 8088, "protocol": "http"}}]}}),
            json!({"apiVersion": "appmesh.k8s.aws/v1beta2", "kind": "GatewayRoute",
                   "metadata": {"name": "to-color", "namespace": NAMESPACE},
                   "spec": {"httpRoute": {"match": {"prefix": "/"},
                            "action": {"target": {"virtualService": {"virtualServiceRef": {"name": "color"}}}}}}}),
            pod("inlet-1", &inlet, json!({"app": "inlet"})),
        ])
        .unwrap();
    let listing = cluster.wait_enrolled("the gateway's pod", |listing| {
        enrolled_line(listing, "inlet-1").is_some()
    });
    let line = enrolled_line(&listing, "inlet-1").unwrap();
    assert!(
        line.ends_with(&format!(
            " virtual_node={NAMESPACE}/gateway/inlet_{NAMESPACE}"
        )),
        "{line}"
    );
    cluster.wait(
        "the gateway serving",
        || {
            let (status, body) = cluster.answer("stray", (&inlet, 8088, Some(&inlet)), "red");
            format!("{status} {body}")
        },
        |answer| answer.starts_with("200 ") && answer.split_whitespace().nth(3) == Some("red"),
    );
}
