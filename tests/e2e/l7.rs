//! The mesh in the node proxy, end to end: App Mesh definitions served by the embedded
//! control plane, pods whose traffic the real eBPF redirect moves into the proxy, curl as
//! the client, meshtb HTTP servers as the virtual nodes' workloads.
//!
//! What needs no kernel — every match kind, retries, timeouts, pools, outlier ejection,
//! health checks, weights, egress — is tested in process (agent/tests/l7); these tests keep
//! what needs the redirect, namespaces and real processes: a canary and a TCP route through
//! the redirect, the egress filter on redirected connections, inbound capture, enrollment by
//! discovery, DNS endpoints from a real nameserver.
use std::{collections::BTreeMap, time::Duration};

use serde_json::{Value, json};
pub use tests::mesh::{PORT, SERVICE, all_to_v1, route};
use tests::{
    Agent, Node, Proc,
    agent::{config_for, discovering_pods, metric_value},
    node::NODE_IP,
};

use super::{TIMEOUT, meshtb};

/// The address clients use for `api.m.local`: any address works (the connect is redirected
/// before it is routed), as with App Mesh, where the name only had to resolve.
pub const SERVICE_VIP: &str = "10.77.200.1";

/// A mesh `m`: virtual node `client` (the client pod, found by its address) with backend
/// `api.m.local`, provided by router `api` whose routes the test gives, over virtual
/// nodes `v1` and `v2` (pods `s1`, `s2` running meshtb http-server).
pub struct MeshNode {
    pub agent: Agent,
    pub node: Node,
    /// Held for their lifetime: dropping a Proc stops it.
    pub servers: BTreeMap<&'static str, Proc>,
    /// The control plane in its own process, when the spec asks (else it is in the agent's).
    pub control_plane: Option<ControlPlane>,
    dns: Option<Dns>,
    /// The client pod is enrolled (configured or by discovery): it resolves mesh names.
    client_enrolled: bool,
    _mesh: tempfile::TempDir,
    _work: tempfile::TempDir,
}

pub struct MeshSpec {
    pub egress: &'static str,
    pub routes: Vec<Value>,
    /// Extra listener fields of v1 and v2 (timeouts of the inbound listener).
    pub listener_extra: Value,
    pub protocol: &'static str,
    /// Enrolled pods (their outbound goes through the proxy, and their inbound too).
    pub enrolled: &'static [&'static str],
    /// Enroll the node's pods by discovery (`enrollment.discover`) instead.
    pub discover: bool,
    /// The router's listener ports.
    pub router_ports: &'static [u16],
    /// `logging` of virtual nodes, by name.
    pub logging: Vec<(&'static str, Value)>,
    /// v1 is found by the name `v1.m.local`, answered by a dnsmasq on the node (TTL 1 s)
    /// that the agent's discovery.resolv_conf points to; [`MeshNode::point_dns`] moves it.
    pub dns: bool,
    /// Starts the application of pod s1 (v1), s2 (v2) and s3 (outside the mesh), given the
    /// node, the pod and the name to answer as: meshtb http-server unless a test says.
    pub server: fn(&Node, &str, &str) -> Proc,
    /// The control plane runs as its own process (`control-plane`, the agent given
    /// `--control-plane`), which a test can stop and start again.
    pub external_control_plane: bool,
    /// v1's endpoints are the registry's (Cloud Map) instances: s1 and s3 (answering `v1b`).
    pub v1_cloud_map: bool,
}

/// `mesh-agent control-plane` on the node's loopback.
pub struct ControlPlane {
    command: Vec<String>,
    running: Option<Proc>,
}

const CONTROL_PLANE_ADDR: &str = "127.0.0.1:15010";

/// A DNS server for the test node, answering from a hosts file it re-reads on SIGHUP.
struct Dns {
    server: Proc,
    hosts: std::path::PathBuf,
}

const DNS_NAME: &str = "v1.m.local";

impl Default for MeshSpec {
    fn default() -> Self {
        Self {
            egress: "DROP_ALL",
            routes: Vec::new(),
            listener_extra: json!({}),
            protocol: "http",
            enrolled: &["client"],
            discover: false,
            router_ports: &[PORT],
            logging: Vec::new(),
            dns: false,
            server: start_server,
            external_control_plane: false,
            v1_cloud_map: false,
        }
    }
}

/// meshtb http-server in `pod` on the service port (and 9000), answering as `name`.
fn start_server(node: &Node, pod: &str, name: &str) -> Proc {
    let args = [
        "http-server",
        "--port",
        "8080",
        "--port",
        "9000",
        "--name",
        name,
    ];
    let server = node.spawn_in_pod(pod, meshtb(), &args).expect("server");
    let addr = format!("{}:{PORT}", node.pod(pod).unwrap().ip);
    node.wait_for_listener(addr.parse().unwrap(), TIMEOUT)
        .expect("server listening");
    server
}

/// dnsmasq on the node's address, answering `v1.m.local` from a hosts file with a 1 s TTL,
/// and a resolv.conf naming it, in `dir`.
fn start_dns(node: &Node, dir: &std::path::Path, v1_ip: &str) -> Dns {
    let hosts = dir.join("hosts");
    std::fs::write(&hosts, format!("{v1_ip} {DNS_NAME}\n")).unwrap();
    std::fs::write(dir.join("resolv.conf"), format!("nameserver {NODE_IP}\n")).unwrap();
    let records = [
        "--local-ttl=1".to_owned(),
        format!("--addn-hosts={}", hosts.display()),
    ];
    let server = tests::dnsmasq::start(node, &records).expect("dnsmasq starts");
    Dns { server, hosts }
}

impl ControlPlane {
    /// Starts it (again), with the mesh directory as it is now.
    pub fn start(&mut self, node: &Node) {
        let mut command = node
            .node_command(tests::agent::agent_binary().unwrap().to_str().unwrap())
            .unwrap();
        command
            .args(&self.command)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        self.running = Some(Proc::spawn("control plane", command).unwrap());
        node.wait_for_listener(CONTROL_PLANE_ADDR.parse().unwrap(), TIMEOUT)
            .expect("control plane listening");
    }

    /// SIGKILL: no goodbye to the agent.
    pub fn kill(&mut self) {
        if let Some(mut running) = self.running.take() {
            running
                .signal(libc::SIGKILL)
                .expect("control plane running");
            running.wait_timeout(TIMEOUT).expect("control plane exits");
        }
    }
}

impl MeshNode {
    pub fn start(label: &str, spec: MeshSpec) -> Self {
        Self::start_with_config(label, spec, |_| String::new())
    }

    /// As [`MeshNode::start`], with `config(node)` appended to the agent's configuration.
    pub fn start_with_config(
        label: &str,
        spec: MeshSpec,
        config: impl Fn(&Node) -> String,
    ) -> Self {
        let extra_config = config;
        let mut node = Node::create(label).expect("test node");
        for pod in ["client", "s1", "s2", "s3", "outside"] {
            node.add_pod(pod).expect("pod");
        }
        let ip = |pod: &str| node.pod(pod).unwrap().ip.to_string();
        let mut servers = BTreeMap::new();
        for (pod, name) in [("s1", "v1"), ("s2", "v2"), ("s3", "v1b")] {
            servers.insert(pod, (spec.server)(&node, pod, name));
        }
        servers.insert(
            "outside",
            node.spawn_in_pod(
                "outside",
                meshtb(),
                &["http-server", "--port", "7000", "--name", "outside"],
            )
            .expect("outside server"),
        );
        node.wait_for_listener(format!("{}:7000", ip("outside")).parse().unwrap(), TIMEOUT)
            .expect("server listening");
        let mesh = tempfile::tempdir().unwrap();
        let mut files: BTreeMap<String, Value> = BTreeMap::new();
        files.insert(
            "mesh".into(),
            json!({"meshName": "m", "spec": {"egressFilter": {"type": spec.egress}}}),
        );
        files.insert(
            "vn-client".into(),
            json!({"meshName": "m", "virtualNodeName": "client", "spec": {
                "listeners": [{"portMapping": {"port": 80, "protocol": "http"}}],
                "serviceDiscovery": {"dns": {"hostname": ip("client")}},
                "backends": [{"virtualService": {"virtualServiceName": SERVICE}}]}}),
        );
        for (name, pod) in [("v1", "s1"), ("v2", "s2")] {
            let mut listener = json!({"portMapping": {"port": PORT, "protocol": spec.protocol}});
            if let (Some(l), Some(extra)) =
                (listener.as_object_mut(), spec.listener_extra.as_object())
            {
                l.extend(extra.clone());
            }
            let discovery = if spec.dns && name == "v1" {
                json!({"dns": {"hostname": DNS_NAME}})
            } else if spec.v1_cloud_map && name == "v1" {
                json!({"awsCloudMap": {"namespaceName": "m.local", "serviceName": "v1"}})
            } else {
                json!({"dns": {"hostname": ip(pod)}})
            };
            files.insert(
                format!("vn-{name}"),
                json!({"meshName": "m", "virtualNodeName": name, "spec": {
                    "listeners": [listener],
                    "serviceDiscovery": discovery}}),
            );
        }
        files.insert(
            "vr".into(),
            json!({"meshName": "m", "virtualRouterName": "api", "spec": {"listeners": spec.router_ports.iter().map(|port| json!({"portMapping": {"port": port, "protocol": spec.protocol}})).collect::<Vec<_>>()}}),
        );
        files.insert(
            "vs".into(),
            json!({"meshName": "m", "virtualServiceName": SERVICE, "spec": {"provider": {"virtualRouter": {"virtualRouterName": "api"}}}}),
        );
        for (name, logging) in spec.logging {
            files
                .get_mut(&format!("vn-{name}"))
                .expect("a virtual node of the test mesh")["spec"]["logging"] = logging;
        }
        for (index, route) in spec.routes.into_iter().enumerate() {
            files.insert(format!("route-{index}"), route);
        }
        for (name, value) in files {
            std::fs::write(mesh.path().join(format!("{name}.json")), value.to_string()).unwrap();
        }
        let work = tempfile::tempdir().unwrap();
        let registry = work.path().join("registry.json");
        let instance = |pod: &str| json!({"AWS_INSTANCE_IPV4": ip(pod), "AWS_INSTANCE_PORT": PORT.to_string()});
        let instances =
            json!({"namespaces": {"m.local": {"v1": {"a": instance("s1"), "b": instance("s3")}}}});
        std::fs::write(&registry, instances.to_string()).unwrap();
        let dns = spec.dns.then(|| start_dns(&node, work.path(), &ip("s1")));
        let resolver = match &dns {
            Some(_) => format!(
                "discovery:\n  resolv_conf: {}\n",
                work.path().join("resolv.conf").display()
            ),
            None => String::new(),
        };
        let extra = format!("{resolver}{}", extra_config(&node));
        let mut config = config_for(&node, spec.enrolled, &extra).unwrap();
        if spec.discover {
            config = discovering_pods(&node, &config);
        }
        let source = [
            "--mesh",
            mesh.path().to_str().unwrap(),
            "--registry",
            registry.to_str().unwrap(),
        ];
        let control_plane = spec.external_control_plane.then(|| {
            let mut command = vec![
                "control-plane".to_owned(),
                "--listen".to_owned(),
                CONTROL_PLANE_ADDR.to_owned(),
            ];
            command.extend(source.iter().map(|a| (*a).to_owned()));
            let mut control_plane = ControlPlane {
                command,
                running: None,
            };
            control_plane.start(&node);
            control_plane
        });
        let url = format!("http://{CONTROL_PLANE_ADDR}");
        let agent_args: Vec<&str> = match control_plane {
            Some(_) => vec!["--control-plane", &url],
            None => source.to_vec(),
        };
        let agent =
            Agent::start_with_args(&node, &config, work.path(), &agent_args).expect("agent starts");
        let this = Self {
            agent,
            node,
            servers,
            control_plane,
            dns,
            client_enrolled: spec.discover || spec.enrolled.contains(&"client"),
            _mesh: mesh,
            _work: work,
        };
        this.wait_for_endpoints();
        // One listener port for each enrolled pod that is a virtual node (client, v1, v2).
        let virtual_nodes = if spec.discover {
            3
        } else {
            let nodes = ["client", "s1", "s2"];
            spec.enrolled
                .iter()
                .filter(|pod| nodes.contains(pod))
                .count()
        };
        this.agent
            .wait_for_inbound_ports(&this.node, virtual_nodes)
            .expect("inbound ports captured");
        this
    }

    /// DNS discovery runs in the background: wait until both targets have their endpoint.
    fn wait_for_endpoints(&self) {
        let deadline = std::time::Instant::now() + TIMEOUT;
        loop {
            let metrics = self.metrics();
            let ready = ["m/v1/8080", "m/v2/8080"].iter().all(|cluster| {
                metric_value(
                    &metrics,
                    &format!(
                        "mesh_upstream_endpoints{{cluster=\"{cluster}\",state=\"available\"}}"
                    ),
                ) >= 1.0
            });
            if ready {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "endpoints not resolved:\n{metrics}\n{}",
                self.agent.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Points `v1.m.local` at `pod` (the DNS server re-reads its hosts file).
    pub fn point_dns(&mut self, pod: &str) {
        let ip = self.node.pod(pod).unwrap().ip.to_string();
        let dns = self.dns.as_mut().expect("a mesh started with dns: true");
        std::fs::write(&dns.hosts, format!("{ip} {DNS_NAME}\n")).unwrap();
        dns.server.signal(libc::SIGHUP).expect("signal dnsmasq");
    }

    /// Another agent with this one's configuration and mesh, started beside the running one
    /// (an upgrade) or after it (a restart); its files go to the work directory's `name`.
    pub fn next_agent(&self, name: &str) -> Agent {
        let workdir = self._work.path().join(name);
        std::fs::create_dir_all(&workdir).unwrap();
        let config = std::fs::read_to_string(&self.agent.config_path).unwrap();
        let registry = self._work.path().join("registry.json");
        let args = [
            "--mesh",
            self.mesh_dir().to_str().unwrap(),
            "--registry",
            registry.to_str().unwrap(),
        ];
        let mut agent = Agent::spawn(&self.node, &config, &workdir, &args).unwrap();
        agent.wait_running().expect("next agent starts");
        agent
    }

    pub fn signal_agent(&mut self, signal: i32) {
        self.agent.signal(signal).expect("signal the agent");
    }

    pub fn metrics(&self) -> String {
        self.agent.metrics(&self.node).expect("metrics")
    }

    /// The App Mesh definitions the agent's embedded control plane watches.
    pub fn mesh_dir(&self) -> &std::path::Path {
        self._mesh.path()
    }

    /// curl from the client pod to `http://api.m.local:8080{path}` with `args`; returns
    /// (status, body, headers). An enrolled client resolves the name through the agent's
    /// DNS; one outside the mesh is given [`SERVICE_VIP`].
    pub fn curl(&self, path: &str, args: &[&str]) -> (u16, String, String) {
        let scratch = self._work.path().join("headers.txt");
        let target = (SERVICE, PORT, self.client_vip());
        self.node
            .curl_service("client", target, path, args, &scratch, TIMEOUT)
            .expect("curl runs")
    }

    /// Which virtual node answered `path` with curl `args` (panics on a non-200 answer).
    pub fn served_by(&self, path: &str, args: &[&str]) -> String {
        let (status, body, _) = self.curl(path, args);
        assert_eq!(
            status,
            200,
            "{path} {args:?}: {body}\nagent log:\n{}",
            self.agent.log()
        );
        body.split_whitespace()
            .nth(2)
            .unwrap_or_default()
            .to_owned()
    }
}

#[test]
fn canary_split_follows_weights_per_request() {
    let mesh = MeshNode::start(
        "l7canary",
        MeshSpec {
            routes: vec![route(
                "canary",
                None,
                json!({"prefix": "/"}),
                &[("v1", 80), ("v2", 20)],
                json!({}),
            )],
            ..Default::default()
        },
    );
    // One keep-alive connection, 10 000 requests (curl URL globbing).
    let answers = mesh.load(10_000, &[]);
    let v1 = answers.matches("hello from v1 ").count();
    let v2 = answers.matches("hello from v2 ").count();
    assert_eq!(v1 + v2, 10_000, "{v1} from v1, {v2} from v2");
    let share = v2 as f64 / 10_000.0;
    assert!(
        (0.18..=0.22).contains(&share),
        "v2 got {share:.3} of requests, want 0.20 ± 0.02"
    );
    let metrics = mesh.metrics();
    let counted = metric_value(
        &metrics,
        r#"mesh_requests_total{reporter="outbound",source_virtual_node="m/client",destination_virtual_service="api.m.local",destination_virtual_node="m/v2",route="canary",response_code="200",grpc_status=""}"#,
    );
    assert_eq!(counted, v2 as f64);

    // Weight 0 receives nothing.
    drop(mesh);
    let mesh = MeshNode::start(
        "l7zero",
        MeshSpec {
            routes: vec![route(
                "canary",
                None,
                json!({"prefix": "/"}),
                &[("v1", 1), ("v2", 0)],
                json!({}),
            )],
            ..Default::default()
        },
    );
    assert_eq!(mesh.load(500, &[]).matches("hello from v1 ").count(), 500);
}

#[test]
fn drop_all_blocks_undeclared_destinations_and_allow_all_passes_them() {
    let routes = all_to_v1();
    let mesh = MeshNode::start(
        "l7drop",
        MeshSpec {
            routes: routes.clone(),
            ..Default::default()
        },
    );
    let outside = format!("http://{}:7000/", mesh.node.pod("outside").unwrap().ip);
    let output = mesh
        .node
        .run_in_pod(
            "client",
            "curl",
            &["-sS", "--max-time", "5", &outside],
            TIMEOUT,
        )
        .unwrap();
    assert!(
        !output.status.success(),
        "DROP_ALL let it through: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    let metrics = mesh.metrics();
    assert_eq!(
        metric_value(
            &metrics,
            r#"mesh_denied_connections_total{source_virtual_node="m/client",port="7000"}"#
        ),
        1.0,
        "{metrics}"
    );
    // The declared backend still works.
    assert_eq!(mesh.served_by("/", &[]), "v1");
    drop(mesh);

    let mesh = MeshNode::start(
        "l7allow",
        MeshSpec {
            egress: "ALLOW_ALL",
            routes,
            ..Default::default()
        },
    );
    let outside = format!("http://{}:7000/", mesh.node.pod("outside").unwrap().ip);
    let output = mesh
        .node
        .run_in_pod(
            "client",
            "curl",
            &["-sS", "--max-time", "5", &outside],
            TIMEOUT,
        )
        .unwrap();
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("hello from outside"),
        "{output:?}"
    );
    assert_eq!(mesh.served_by("/", &[]), "v1");
}

impl MeshNode {
    /// `count` requests over one keep-alive connection (curl URL globbing); the answers.
    pub fn load(&self, count: usize, args: &[&str]) -> String {
        let url = format!("http://{SERVICE}:{PORT}/load/[1-{count}]");
        let mut all = vec!["-sS"];
        let resolve = self
            .client_vip()
            .map(|vip| format!("{SERVICE}:{PORT}:{vip}"));
        if let Some(resolve) = &resolve {
            all.extend(["--resolve", resolve.as_str()]);
        }
        all.extend_from_slice(args);
        all.push(&url);
        let output = self
            .node
            .run_in_pod_resolving("client", "curl", &all, Duration::from_secs(120))
            .expect("curl runs");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The address the client pod is given for the service: none when it is enrolled (the
    /// agent's DNS answers the name), [`SERVICE_VIP`] otherwise.
    fn client_vip(&self) -> Option<&'static str> {
        (!self.client_enrolled).then_some(SERVICE_VIP)
    }
}

#[test]
fn tcp_routes_split_connections_by_weight() {
    let tcp_route = json!({"meshName": "m", "virtualRouterName": "api", "routeName": "tcp", "spec": {"tcpRoute": {
        "action": {"weightedTargets": [{"virtualNode": "v1", "weight": 1}, {"virtualNode": "v2", "weight": 1}]}}}});
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("tcp.log");
    let mesh = MeshNode::start(
        "l7tcp",
        MeshSpec {
            protocol: "tcp",
            routes: vec![tcp_route],
            logging: vec![(
                "client",
                json!({"accessLog": {"file": {"path": log, "format": {"text": "%UPSTREAM_CLUSTER% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %REQ(:PATH)%"}}}}),
            )],
            ..Default::default()
        },
    );
    // HTTP over the TCP route, a new connection per request: each connection picks a target.
    let answers = mesh.load(400, &["-H", "Connection: close"]);
    let v1 = answers.matches("hello from v1 ").count();
    let v2 = answers.matches("hello from v2 ").count();
    assert_eq!(v1 + v2, 400, "{answers}");
    assert!(v1 > 120 && v2 > 120, "v1 {v1}, v2 {v2}");
    // One access log line per connection, naming the cluster it went to.
    let deadline = std::time::Instant::now() + TIMEOUT;
    let lines = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.lines().count() >= 400 || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(lines.lines().count(), 400, "{lines}");
    assert_eq!(lines.matches("m/v1/8080 - ").count(), v1, "{lines}");
    for line in lines.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let (received, sent): (u64, u64) = (fields[2].parse().unwrap(), fields[3].parse().unwrap());
        assert!(received > 50 && sent > 50 && fields[4] == "-", "{line}");
    }
    let metrics = mesh.metrics();
    assert!(
        metric_value(
            &metrics,
            r#"mesh_agent_proxy_connections_opened_total{destination="m/v2/8080"}"#
        ) >= 120.0,
        "{metrics}"
    );
}

#[test]
fn inbound_connections_to_an_enrolled_pod_pass_its_listener() {
    let mut mesh = MeshNode::start(
        "l7inbound",
        MeshSpec {
            routes: all_to_v1(),
            listener_extra: json!({"timeout": {"http": {"perRequest": {"unit": "ms", "value": 500}}}}),
            enrolled: &["client", "s1"],
            ..Default::default()
        },
    );
    // From a pod outside the mesh, straight to s1's address: captured in s1's namespace, the
    // application sees the proxy on its loopback.
    let direct = format!("http://{}:{PORT}/in", mesh.node.pod("s1").unwrap().ip);
    // The ports are captured once the pod is known as v1 (its DNS endpoint resolved): the
    // first requests may still reach the application directly.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let output = loop {
        let output = mesh
            .node
            .run_in_pod(
                "outside",
                "curl",
                &["-sS", "--max-time", "5", &direct],
                TIMEOUT,
            )
            .unwrap();
        if String::from_utf8_lossy(&output.stdout).contains("client 127.0.0.1:")
            || std::time::Instant::now() >= deadline
        {
            break output;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let body = String::from_utf8_lossy(&output.stdout);
    assert!(
        body.contains("hello from v1 path=/in (client 127.0.0.1:"),
        "{body}{}\n{}",
        String::from_utf8_lossy(&output.stderr),
        mesh.agent.log()
    );
    // The listener's timeout applies inbound: 504 after 500 ms.
    let output = mesh
        .node
        .run_in_pod(
            "outside",
            "curl",
            &[
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-H",
                "x-meshtb-delay-ms: 3000",
                &direct,
            ],
            TIMEOUT,
        )
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "504");
    // Through the mesh from the client: outbound on the client's side, inbound on s1's.
    assert_eq!(mesh.served_by("/", &[]), "v1");
    let metrics = mesh.metrics();
    let inbound = |code: &str| {
        metric_value(
            &metrics,
            &format!(
                r#"mesh_requests_total{{reporter="inbound",source_virtual_node="unknown",destination_virtual_service="unknown",destination_virtual_node="m/v1",route="m/v1/inbound/8080",response_code="{code}",grpc_status=""}}"#
            ),
        )
    };
    assert_eq!((inbound("200"), inbound("504")), (2.0, 1.0), "{metrics}");
    // The lookup program is attached to each captured pod's namespace: client and s1.
    assert_eq!(
        metric_value(
            &metrics,
            r#"mesh_agent_attached_programs{program="inbound_lookup"}"#
        ),
        2.0,
        "{metrics}"
    );
    // A port that is not a listener of v1 is not captured.
    let other = format!("http://{}:9000/", mesh.node.pod("s1").unwrap().ip);
    let output = mesh
        .node
        .run_in_pod(
            "outside",
            "curl",
            &["-sS", "--max-time", "5", &other],
            TIMEOUT,
        )
        .unwrap();
    assert!(!String::from_utf8_lossy(&output.stdout).contains("client 127.0.0.1"));
    // SIGTERM with inbound connections still open (the proxy's own pool keeps one to s1):
    // they are cut at the end of the drain and the agent exits.
    mesh.agent.signal(libc::SIGTERM).unwrap();
    let status = mesh.agent.wait_exit(Duration::from_secs(10)).unwrap();
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        mesh.agent.log()
    );
}

#[test]
fn pods_whose_addresses_are_mesh_endpoints_are_enrolled_by_discovery() {
    let mesh = MeshNode::start(
        "l7discover",
        MeshSpec {
            routes: vec![route(
                "all",
                None,
                json!({"prefix": "/"}),
                &[("v2", 1)],
                json!({}),
            )],
            enrolled: &[],
            discover: true,
            ..Default::default()
        },
    );
    // client, s1 (v1) and s2 (v2) are endpoints of the mesh; s3 and outside are not.
    let deadline = std::time::Instant::now() + TIMEOUT;
    while metric_value(&mesh.metrics(), "mesh_agent_enrolled_netns") != 3.0 {
        assert!(std::time::Instant::now() < deadline, "{}", mesh.agent.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, listing) = mesh.node.admin("GET", "/enrollment").unwrap();
    for pod in ["client", "s1", "s2"] {
        assert!(
            listing.contains(&format!("-{pod} ")),
            "{pod} not enrolled:\n{listing}"
        );
    }
    assert!(
        !listing.contains("-outside ") && !listing.contains("-s3 "),
        "{listing}"
    );
    // The discovered client is routed by the mesh.
    assert_eq!(mesh.served_by("/", &[]), "v2");
}

#[test]
fn dns_endpoints_follow_the_record_within_its_ttl() {
    let mut mesh = MeshNode::start(
        "l7dns",
        MeshSpec {
            routes: all_to_v1(),
            dns: true,
            ..Default::default()
        },
    );
    assert_eq!(mesh.served_by("/", &[]), "v1");
    // The record lives 1 s; the refresh period is 5 s. Twice, so that a 5 s cycle cannot
    // pass by luck.
    for (pod, answers) in [("s3", "v1b"), ("s1", "v1")] {
        mesh.point_dns(pod);
        let moved = std::time::Instant::now();
        while mesh.served_by("/", &[]) != answers {
            assert!(
                moved.elapsed() < Duration::from_secs(3),
                "still not {answers} after {:?}\n{}",
                moved.elapsed(),
                mesh.agent.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
