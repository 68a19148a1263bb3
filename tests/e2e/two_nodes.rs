//! Two nodes, each with its own agent, wired together by a link: a request from a pod on
//! node 1 to a virtual service whose workload is a pod on node 2 crosses node 1's outbound
//! proxy, the wire between the nodes and node 2's inbound proxy. A capture on the wire shows
//! what crossed it: in plain text here, the baseline the TLS tests turn around.
use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tests::{
    Agent, Captured, Node, NodeLink, Proc,
    agent::{config_for, metric_sum, metric_value},
    mesh::{PORT, SERVICE, all_to_v1},
};

use super::{TIMEOUT, meshtb};

/// The mesh definitions by file stem, as written to the `--mesh` directory.
pub type MeshFiles = BTreeMap<String, Value>;

/// The mesh both agents are given: `m` (egress DROP_ALL), virtual node `client` (pod
/// `client` on node 1) with backend `api.m.local`, router `api` (routes from the spec) behind
/// that service, virtual node `v1` (pod `s1` on node 2, meshtb http-server on 8080 and 9000).
pub struct TwoNodeSpec {
    pub routes: Vec<Value>,
    /// The listener protocol of v1 and the router.
    pub protocol: &'static str,
    /// Changes the definitions (file stem -> App Mesh API JSON: `mesh`, `vn-client`, `vn-v1`,
    /// `vr`, `vs`, `route-<i>`) before they are written: listener TLS, client policies.
    pub edit_mesh: Box<dyn Fn(&mut MeshFiles)>,
    /// Appended to each node's agent config (YAML), node 1's then node 2's.
    pub agent_extra: [String; 2],
    /// More `run` arguments for both agents (e.g. `--secrets FILE`).
    pub agent_args: Vec<String>,
    /// More pods on node 2, not enrolled (workloads outside the mesh).
    pub node2_pods: Vec<&'static str>,
}

impl Default for TwoNodeSpec {
    fn default() -> Self {
        Self {
            routes: all_to_v1(),
            protocol: "http",
            edit_mesh: Box::new(|_| {}),
            agent_extra: [String::new(), String::new()],
            agent_args: Vec::new(),
            node2_pods: Vec::new(),
        }
    }
}

/// Node 1 (pods `client`, enrolled, and `outside`, not) and node 2 (pod `s1`, enrolled),
/// linked, each running mesh-agent with the same mesh.
pub struct TwoNodes {
    // Field order is drop order: agents, then the applications, the link, the nodes.
    pub agent1: Agent,
    pub agent2: Agent,
    _servers: Vec<Proc>,
    pub link: NodeLink,
    pub node1: Node,
    pub node2: Node,
    /// The mesh definitions both agents read (`--mesh`, watched).
    pub mesh_dir: tempfile::TempDir,
    /// Scratch space: agent configs and logs (`node1/`, `node2/`), captures.
    pub work: tempfile::TempDir,
}

impl TwoNodes {
    pub fn start(label: &str, spec: TwoNodeSpec) -> Self {
        let mut node1 = Node::create_numbered(&format!("{label}1"), 1).expect("node 1");
        let mut node2 = Node::create_numbered(&format!("{label}2"), 2).expect("node 2");
        for pod in ["client", "outside"] {
            node1.add_pod(pod).expect("pod on node 1");
        }
        node2.add_pod("s1").expect("pod on node 2");
        for pod in &spec.node2_pods {
            node2.add_pod(pod).expect("pod on node 2");
        }
        let link = NodeLink::connect(&node1, &node2).expect("link the nodes");
        let s1_ip = node2.pod("s1").unwrap().ip;
        let server = node2
            .spawn_in_pod(
                "s1",
                meshtb(),
                &[
                    "http-server",
                    "--port",
                    &PORT.to_string(),
                    "--port",
                    "9000",
                    "--name",
                    "v1",
                ],
            )
            .expect("server");
        for port in [PORT, 9000] {
            node2
                .wait_for_listener((s1_ip, port).into(), TIMEOUT)
                .expect("server listening");
        }

        let mesh_dir = tempfile::tempdir().unwrap();
        let client_ip = node1.pod("client").unwrap().ip.to_string();
        let mut files = MeshFiles::new();
        files.insert(
            "mesh".into(),
            json!({"meshName": "m", "spec": {"egressFilter": {"type": "DROP_ALL"}}}),
        );
        files.insert(
            "vn-client".into(),
            json!({"meshName": "m", "virtualNodeName": "client", "spec": {
                "listeners": [{"portMapping": {"port": 80, "protocol": "http"}}],
                "serviceDiscovery": {"dns": {"hostname": client_ip}},
                "backends": [{"virtualService": {"virtualServiceName": SERVICE}}]}}),
        );
        files.insert(
            "vn-v1".into(),
            json!({"meshName": "m", "virtualNodeName": "v1", "spec": {
                "listeners": [{"portMapping": {"port": PORT, "protocol": spec.protocol}}],
                "serviceDiscovery": {"dns": {"hostname": s1_ip.to_string()}}}}),
        );
        files.insert(
            "vr".into(),
            json!({"meshName": "m", "virtualRouterName": "api", "spec": {"listeners": [
                {"portMapping": {"port": PORT, "protocol": spec.protocol}}]}}),
        );
        files.insert(
            "vs".into(),
            json!({"meshName": "m", "virtualServiceName": SERVICE, "spec": {"provider": {"virtualRouter": {"virtualRouterName": "api"}}}}),
        );
        for (index, route) in spec.routes.into_iter().enumerate() {
            files.insert(format!("route-{index}"), route);
        }
        (spec.edit_mesh)(&mut files);
        let listeners = |file: &str| {
            files[file]["spec"]["listeners"]
                .as_array()
                .map_or(0, Vec::len)
        };
        let inbound_ports = [listeners("vn-client"), listeners("vn-v1")];
        for (name, value) in files {
            std::fs::write(
                mesh_dir.path().join(format!("{name}.json")),
                serde_json::to_string_pretty(&value).unwrap(),
            )
            .unwrap();
        }

        let work = tempfile::tempdir().unwrap();
        let mesh_arg = mesh_dir.path().to_str().unwrap().to_owned();
        let mut args = vec!["--mesh", mesh_arg.as_str()];
        args.extend(spec.agent_args.iter().map(String::as_str));
        let start_agent = |node: &Node, pod: &str, extra: &str, dir: &str| {
            let dir = work.path().join(dir);
            std::fs::create_dir(&dir).unwrap();
            let config = config_for(node, &[pod], extra).unwrap();
            Agent::start_with_args(node, &config, &dir, &args)
                .unwrap_or_else(|e| panic!("agent on {}: {e:#}", node.tag()))
        };
        let agent1 = start_agent(&node1, "client", &spec.agent_extra[0], "node1");
        let agent2 = start_agent(&node2, "s1", &spec.agent_extra[1], "node2");
        let this = Self {
            agent1,
            agent2,
            _servers: vec![server],
            link,
            node1,
            node2,
            mesh_dir,
            work,
        };
        for (agent, node) in [(&this.agent1, &this.node1), (&this.agent2, &this.node2)] {
            wait_for(&format!("v1's endpoint on {}", node.tag()), agent, || {
                metric_value(
                    &agent.metrics(node).unwrap_or_default(),
                    r#"mesh_upstream_endpoints{cluster="m/v1/8080",state="available"}"#,
                ) >= 1.0
            });
        }
        for (agent, node, ports) in [
            (&this.agent1, &this.node1, inbound_ports[0]),
            (&this.agent2, &this.node2, inbound_ports[1]),
        ] {
            agent
                .wait_for_inbound_ports(node, ports)
                .unwrap_or_else(|e| panic!("{}: {e:#}", node.tag()));
        }
        this
    }

    pub fn metrics1(&self) -> String {
        self.agent1.metrics(&self.node1).expect("node 1 metrics")
    }

    pub fn metrics2(&self) -> String {
        self.agent2.metrics(&self.node2).expect("node 2 metrics")
    }

    /// Both agents' logs, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "--- node 1 agent log:\n{}\n--- node 2 agent log:\n{}",
            self.agent1.log(),
            self.agent2.log()
        )
    }

    /// `http://<s1's address>:port/path` fetched by curl from `pod` on node 1, not through
    /// the mesh when the pod is not enrolled: (curl's stdout, stderr).
    pub fn curl_s1_directly(&self, pod: &str, port: u16, path: &str) -> (String, String) {
        let url = format!("http://{}:{port}{path}", self.node2.pod("s1").unwrap().ip);
        let output = self
            .node1
            .run_in_pod(pod, "curl", &["-sS", "--max-time", "5", &url], TIMEOUT)
            .expect("curl runs");
        (
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// Waits until node 2's agent captures inbound connections to s1's listener port (s1 is
    /// known as v1 once its endpoint resolves): the application then sees the proxy on its
    /// loopback. Also proves the route between the nodes.
    pub fn wait_for_inbound_capture(&self) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let (answer, error) = self.curl_s1_directly("outside", PORT, "/ready");
            if answer.contains("(client 127.0.0.1:") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "s1's port {PORT} not captured on node 2: {answer}{error}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// curl from the client pod on node 1 to `http://api.m.local:8080{path}` with `args`:
    /// (status, body, headers).
    pub fn curl(&self, path: &str, args: &[&str]) -> (u16, String, String) {
        self.curl_service(SERVICE, PORT, path, args)
    }

    /// curl from the client pod on node 1 (enrolled) to `http://{service}:{port}{path}`, the
    /// name resolved by node 1's agent: (status, body, headers).
    pub fn curl_service(
        &self,
        service: &str,
        port: u16,
        path: &str,
        args: &[&str],
    ) -> (u16, String, String) {
        let scratch = self.work.path().join("headers.txt");
        let target = (service, port, None);
        self.node1
            .curl_service("client", target, path, args, &scratch, TIMEOUT)
            .expect("curl runs")
    }

    /// A pcap file in the work directory.
    pub fn capture_file(&self, name: &str) -> PathBuf {
        self.work.path().join(format!("{name}.pcap"))
    }

    /// Runs `f` while the link is captured (TCP only); the packets.
    /// Replaces one mesh definition (file stem as in [`MeshFiles`]); both agents' embedded
    /// control planes notice and push the change.
    pub fn write_mesh_file(&self, name: &str, value: &Value) {
        let path = self.mesh_dir.path().join(format!("{name}.json"));
        let staged = self.mesh_dir.path().join(format!(".{name}.json.tmp"));
        std::fs::write(&staged, serde_json::to_string_pretty(value).unwrap()).unwrap();
        std::fs::rename(staged, path).unwrap();
    }

    pub fn captured_while<T>(&self, name: &str, f: impl FnOnce() -> T) -> (T, Captured) {
        let capture = self
            .link
            .capture(&self.capture_file(name), "tcp")
            .expect("capture starts");
        let result = f();
        let captured = capture.stop().expect("capture stops");
        (result, captured)
    }
}

fn wait_for(what: &str, agent: &Agent, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "{what}: not after {TIMEOUT:?}\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How many more `mesh_requests_total` with `labels` `after` counts than `before`.
fn requests(before: &str, after: &str, labels: &[(&str, &str)]) -> f64 {
    metric_sum(after, "mesh_requests_total", labels)
        - metric_sum(before, "mesh_requests_total", labels)
}

#[test]
fn cross_node_request_goes_through_both_proxies_in_plain_text() {
    let nodes = TwoNodes::start("2nplain", TwoNodeSpec::default());

    // The wire first, without the mesh: a pod of node 1 outside it reaches s1 on a port that
    // is no listener of v1, straight, with its own address (routed, not translated).
    let (answer, error) = nodes.curl_s1_directly("outside", 9000, "/direct");
    let outside_ip = nodes.node1.pod("outside").unwrap().ip;
    assert!(
        answer.contains(&format!("hello from v1 path=/direct (client {outside_ip}:")),
        "{answer}{error}"
    );
    nodes.wait_for_inbound_capture();

    let before1 = nodes.metrics1();
    let before2 = nodes.metrics2();
    let marker = format!("plaintext-marker-{}", std::process::id());
    let ((status, body, headers), captured) = nodes.captured_while("plain", || {
        nodes.curl(
            "/two-nodes",
            &["-H", "Content-Type: text/plain", "--data-binary", &marker],
        )
    });
    assert_eq!(status, 200, "{body}\n{headers}\n{}", nodes.logs());
    // s1's application answered, reached by node 2's inbound proxy over its loopback.
    assert!(
        body.contains("hello from v1 path=/two-nodes (client 127.0.0.1:"),
        "{body}"
    );
    assert!(
        headers
            .to_ascii_lowercase()
            .contains(&format!("x-meshtb-body-length: {}", marker.len())),
        "{headers}"
    );

    // The request crossed the wire, and in plain text: the marker is in a packet.
    assert!(
        captured.packet_count() >= 4,
        "the capture saw no connection: {}",
        captured.summary()
    );
    assert!(
        captured.contains(marker.as_bytes()) && captured.contains(b"POST /two-nodes"),
        "marker not on the wire: {}",
        captured.summary()
    );
    // From node 1's proxy, by node 1's address, to s1's port.
    let s1 = std::net::SocketAddrV4::new(nodes.node2.pod("s1").unwrap().ip, PORT);
    let carrying: Vec<_> = captured
        .packets_with(marker.as_bytes())
        .filter_map(tests::capture::tcp_endpoints)
        .collect();
    assert!(
        !carrying.is_empty()
            && carrying
                .iter()
                .all(|(from, to)| *from.ip() == nodes.node1.ip() && *to == s1),
        "{carrying:?}; flows {:?}",
        captured.tcp_flows()
    );
    eprintln!(
        "link capture: {}; flows {:?}",
        captured.summary(),
        captured.tcp_flows()
    );

    // Counted once by each proxy: outbound on node 1, inbound on node 2.
    let after1 = nodes.metrics1();
    let after2 = nodes.metrics2();
    let outbound = [
        ("reporter", "outbound"),
        ("source_virtual_node", "m/client"),
        ("destination_virtual_service", SERVICE),
        ("destination_virtual_node", "m/v1"),
        ("route", "all"),
        ("response_code", "200"),
    ];
    assert_eq!(
        requests(&before1, &after1, &outbound),
        1.0,
        "node 1 outbound:\n{after1}"
    );
    let inbound = [
        ("reporter", "inbound"),
        ("destination_virtual_node", "m/v1"),
        ("route", "m/v1/inbound/8080"),
        ("response_code", "200"),
    ];
    assert_eq!(
        requests(&before2, &after2, &inbound),
        1.0,
        "node 2 inbound:\n{after2}"
    );
    // Neither proxy counted it on the other side.
    for (before, after, reporter) in [
        (&before1, &after1, "inbound"),
        (&before2, &after2, "outbound"),
    ] {
        let other_side = [("reporter", reporter), ("destination_virtual_node", "m/v1")];
        assert_eq!(requests(before, after, &other_side), 0.0, "{after}");
    }
}
