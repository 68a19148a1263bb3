//! Virtual gateways served by the node agent: a pod enrolled as gateway `m/gateway/gw` has
//! its listener ports captured; a client outside the mesh (standing for the internet) reaches
//! meshed services only through the gateway routes, with App Mesh's rewrite defaults, then
//! the target service's own routing. Covered here, through the real redirect: every match
//! kind (hostname exact and suffix, prefix, path exact and regex, headers, method, query
//! parameters, listener port) and the priority order; every rewrite with its default (prefix,
//! path, Host, and `target.port`); 404s said by the gateway or by the target's table; TLS
//! terminated at the gateway; gRPC through a grpc listener with grpcio and tonic on both ends.
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tests::{
    Agent, Node, Proc,
    agent::{config_for, metric_sum},
    certs::{IssueSpec, TestCa},
    mesh::{PORT, SERVICE, all_to_v1, route},
};

use super::{TIMEOUT, interop::peer, meshtb};

/// The gateway's listener port.
const GATEWAY_PORT: u16 = 8088;

/// A meshed workload beside `s1`: pod `pod` (enrolled, found by its address) running
/// `command`, virtual node `node` with one listener.
pub struct Workload {
    pub pod: &'static str,
    pub node: &'static str,
    pub port: u16,
    pub protocol: &'static str,
    /// The program and its arguments.
    pub command: Vec<String>,
}

/// What a test's gateway node holds; empty fields take the defaults: one HTTP gateway
/// listener on 8088, router `api` on 8080 sending everything to `v1`.
#[derive(Default)]
pub struct GatewaySpec {
    /// The gateway's listeners (App Mesh JSON).
    pub listeners: Vec<Value>,
    pub gateway_routes: Vec<Value>,
    /// Router `api`'s listener ports (HTTP).
    pub router_ports: Vec<u16>,
    /// Router `api`'s routes.
    pub routes: Vec<Value>,
    pub workloads: Vec<Workload>,
    /// More mesh definitions (virtual services of the workloads).
    pub files: Vec<Value>,
    /// More `run` arguments for the agent (e.g. automatic mTLS).
    pub agent_args: Vec<String>,
    /// More of the agent's configuration (YAML, appended).
    pub agent_config: String,
}

/// One node: pod `gw` (enrolled as virtual gateway `gw`), `s1` (v1, behind `api.m.local`),
/// `external` (not enrolled), the spec's workloads; the gateway's routes from the test.
pub struct GatewayNode {
    pub agent: Agent,
    _servers: Vec<Proc>,
    pub node: Node,
    /// The gateway's listener ports.
    ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

impl GatewayNode {
    pub fn start(label: &str, gateway_routes: Vec<Value>, listener_extra: Value) -> Self {
        let mut listener = json!({"portMapping": {"port": GATEWAY_PORT, "protocol": "http"}});
        if let (Some(listener), Some(extra)) =
            (listener.as_object_mut(), listener_extra.as_object())
        {
            listener.extend(extra.clone());
        }
        Self::start_with(
            label,
            GatewaySpec {
                listeners: vec![listener],
                gateway_routes,
                ..Default::default()
            },
        )
    }

    pub fn start_with(label: &str, spec: GatewaySpec) -> Self {
        let mut node = Node::create(label).expect("node");
        for pod in ["gw", "s1", "external"] {
            node.add_pod(pod).expect("pod");
        }
        for workload in &spec.workloads {
            node.add_pod(workload.pod).expect("pod");
        }
        let s1 = node.pod("s1").unwrap().ip;
        let mut servers = vec![
            node.spawn_in_pod(
                "s1",
                meshtb(),
                &["http-server", "--port", &PORT.to_string(), "--name", "v1"],
            )
            .expect("server"),
        ];
        node.wait_for_listener((s1, PORT).into(), TIMEOUT)
            .expect("server listens");
        for workload in &spec.workloads {
            let args: Vec<&str> = workload.command[1..].iter().map(String::as_str).collect();
            servers.push(
                node.spawn_in_pod(workload.pod, &workload.command[0], &args)
                    .expect("workload"),
            );
            let ip = node.pod(workload.pod).unwrap().ip;
            node.wait_for_listener((ip, workload.port).into(), TIMEOUT)
                .expect("workload listens");
        }
        let dir = tempfile::tempdir().unwrap();
        let mesh = dir.path().join("mesh");
        std::fs::create_dir(&mesh).unwrap();
        let listeners = match spec.listeners.is_empty() {
            true => vec![json!({"portMapping": {"port": GATEWAY_PORT, "protocol": "http"}})],
            false => spec.listeners,
        };
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l["portMapping"]["port"].as_u64().expect("listener port") as u16)
            .collect();
        let router_ports = match spec.router_ports.is_empty() {
            true => vec![PORT],
            false => spec.router_ports,
        };
        let routes = match spec.routes.is_empty() {
            true => all_to_v1(),
            false => spec.routes,
        };
        let mut files = vec![
            json!({"meshName": "m", "spec": {"egressFilter": {"type": "DROP_ALL"}}}),
            json!({"meshName": "m", "virtualNodeName": "v1", "spec": {
                "listeners": [{"portMapping": {"port": PORT, "protocol": "http"}}],
                "serviceDiscovery": {"dns": {"hostname": s1.to_string()}}}}),
            json!({"meshName": "m", "virtualRouterName": "api", "spec": {"listeners":
                router_ports.iter().map(|port| json!({"portMapping": {"port": port, "protocol": "http"}})).collect::<Vec<_>>()}}),
            json!({"meshName": "m", "virtualServiceName": SERVICE, "spec": {"provider": {"virtualRouter": {"virtualRouterName": "api"}}}}),
            json!({"meshName": "m", "virtualGatewayName": "gw", "spec": {"listeners": listeners}}),
        ];
        for workload in &spec.workloads {
            let ip = node.pod(workload.pod).unwrap().ip;
            files.push(json!({"meshName": "m", "virtualNodeName": workload.node, "spec": {
                "listeners": [{"portMapping": {"port": workload.port, "protocol": workload.protocol}}],
                "serviceDiscovery": {"dns": {"hostname": ip.to_string()}}}}));
        }
        files.extend(routes);
        files.extend(spec.gateway_routes);
        files.extend(spec.files);
        for (index, value) in files.iter().enumerate() {
            std::fs::write(mesh.join(format!("{index:02}.json")), value.to_string()).unwrap();
        }
        // config_for enrolls by name; the gateway pod is pinned to the gateway instead.
        let mut netns = vec![format!(
            "\"{}=m/gateway/gw\"",
            node.pod("gw").unwrap().netns_name()
        )];
        for pod in std::iter::once("s1").chain(spec.workloads.iter().map(|w| w.pod)) {
            netns.push(node.pod(pod).unwrap().netns_name().to_owned());
        }
        let config = config_for(&node, &[], &spec.agent_config)
            .unwrap()
            .replace("netns: []", &format!("netns: [{}]", netns.join(", ")));
        let mut args = vec!["--mesh", mesh.to_str().unwrap()];
        args.extend(spec.agent_args.iter().map(String::as_str));
        let agent = Agent::start_with_args(&node, &config, dir.path(), &args).expect("agent");
        let mut clusters = vec![format!("m/v1/{PORT}")];
        clusters.extend(
            spec.workloads
                .iter()
                .map(|w| format!("m/{}/{}", w.node, w.port)),
        );
        let this = Self {
            agent,
            _servers: servers,
            node,
            ports,
            _dir: dir,
        };
        // The gateway's listener ports, s1's and each workload's one port, before any request:
        // the gateway's pooled connection to a port not yet captured would bypass its pod's
        // inbound side for as long as it lives.
        this.agent
            .wait_for_inbound_ports(&this.node, this.ports.len() + 1 + spec.workloads.len())
            .expect("inbound ports captured");
        this.wait_for_gateway();
        this.wait_for_endpoints(&clusters);
        this
    }

    /// Waits until each of `clusters` has its endpoint (the DNS names are resolved).
    fn wait_for_endpoints(&self, clusters: &[String]) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let metrics = self.metrics();
            let ready = clusters.iter().all(|cluster| {
                metric_sum(
                    &metrics,
                    "mesh_upstream_endpoints",
                    &[("cluster", cluster), ("state", "available")],
                ) >= 1.0
            });
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "endpoints of {clusters:?} not available\n{metrics}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The gateway pod's address.
    pub fn gateway_ip(&self) -> std::net::Ipv4Addr {
        self.node.pod("gw").unwrap().ip
    }

    /// Waits until the gateway pod's listener ports are captured: a connection is taken
    /// (by the proxy), not refused (nothing in the pod listens).
    fn wait_for_gateway(&self) {
        let deadline = Instant::now() + TIMEOUT;
        for port in &self.ports {
            let url = format!("http://{}:{port}/", self.gateway_ip());
            loop {
                let output = self
                    .node
                    .run_in_pod(
                        "external",
                        "curl",
                        &["-sS", "--max-time", "2", &url],
                        TIMEOUT,
                    )
                    .expect("curl runs");
                // 7: could not connect.
                if output.status.code() != Some(7) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "gateway port {port} is not captured\n{}",
                    self.agent.log()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// curl from `external` to `http://<gateway pod>:8088{path}`: (status, body, headers).
    pub fn curl(&self, path: &str, args: &[&str]) -> (u16, String, String) {
        self.curl_port(GATEWAY_PORT, path, args)
    }

    /// curl from `external` to `http://<gateway pod>:{port}{path}`.
    pub fn curl_port(&self, port: u16, path: &str, args: &[&str]) -> (u16, String, String) {
        self.curl_url(&format!("http://{}:{port}{path}", self.gateway_ip()), args)
    }

    /// curl from `external` to `url`: (status, 0 without an answer; body; headers).
    pub fn curl_url(&self, url: &str, args: &[&str]) -> (u16, String, String) {
        let mut all = vec!["-sS", "--max-time", "10", "-D", "-", "-w", "\n%{http_code}"];
        all.extend_from_slice(args);
        all.push(url);
        let output = self
            .node
            .run_in_pod("external", "curl", &all, TIMEOUT)
            .expect("curl runs");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let (rest, status) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
        let (headers, body) = rest.split_once("\r\n\r\n").unwrap_or((rest, ""));
        (
            status.trim().parse().unwrap_or(0),
            body.to_owned(),
            headers.to_owned(),
        )
    }

    pub fn metrics(&self) -> String {
        self.agent.metrics(&self.node).expect("metrics")
    }
}

pub(super) fn gateway_route(name: &str, http_route: Value) -> Value {
    gateway_route_of("httpRoute", name, None, http_route)
}

/// A gateway route of `kind` (httpRoute, http2Route, grpcRoute) with an optional priority.
fn gateway_route_of(kind: &str, name: &str, priority: Option<i64>, route: Value) -> Value {
    let mut spec = json!({ kind: route });
    if let Some(priority) = priority {
        spec["priority"] = json!(priority);
    }
    json!({"meshName": "m", "virtualGatewayName": "gw", "gatewayRouteName": name, "spec": spec})
}

pub(super) fn to_api(matching: Value, rewrite: Option<Value>) -> Value {
    let mut action = json!({"target": {"virtualService": {"virtualServiceName": SERVICE}}});
    if let Some(rewrite) = rewrite {
        action["rewrite"] = rewrite;
    }
    json!({"match": matching, "action": action})
}

#[test]
fn gateway_routes_take_outside_clients_into_the_mesh_with_app_meshs_rewrites() {
    let routes = vec![
        // Default rewrites: the matched prefix becomes /, the Host the target service.
        gateway_route("api", to_api(json!({"prefix": "/api/"}), None)),
        // A prefix replaced by a value, matched by hostname.
        gateway_route(
            "shop",
            to_api(
                json!({"prefix": "/", "hostname": {"exact": "shop.example.com"}}),
                Some(json!({"prefix": {"value": "/storefront/"}})),
            ),
        ),
        // The prefix kept (defaultPrefix DISABLED).
        gateway_route(
            "keep",
            to_api(
                json!({"prefix": "/keep/"}),
                Some(json!({"prefix": {"defaultPrefix": "DISABLED"}})),
            ),
        ),
        // An exact path replaced by another.
        gateway_route(
            "exact",
            to_api(
                json!({"path": {"exact": "/old"}}),
                Some(json!({"path": {"exact": "/new"}})),
            ),
        ),
    ];
    let gateway = GatewayNode::start("gw", routes, json!({}));
    let before = gateway.agent.metrics(&gateway.node).unwrap();
    for (path, args, want) in [
        ("/api/items?x=1", &[][..], "hello from v1 path=/items "),
        (
            "/a/b",
            &["-H", "Host: shop.example.com"][..],
            "hello from v1 path=/storefront/a/b ",
        ),
        ("/keep/this", &[][..], "hello from v1 path=/keep/this "),
        ("/old", &[][..], "hello from v1 path=/new "),
    ] {
        let (status, body, headers) = gateway.curl(path, args);
        assert_eq!(
            status,
            200,
            "{path}: {body}\n{headers}\n{}",
            gateway.agent.log()
        );
        assert!(body.contains(want), "{path}: {body}");
    }
    // No gateway route matches: 404, said by the gateway.
    let (status, body, headers) = gateway.curl("/nothing", &[]);
    assert_eq!(status, 404, "{body}");
    assert!(
        headers.contains("no route of virtual gateway m/gateway/gw matches GET /nothing"),
        "{headers}"
    );
    let after = gateway.agent.metrics(&gateway.node).unwrap();
    let through = [
        ("reporter", "gateway"),
        ("source_virtual_node", "m/gateway/gw"),
        ("destination_virtual_service", SERVICE),
        ("destination_virtual_node", "m/v1"),
        ("response_code", "200"),
    ];
    assert_eq!(
        metric_sum(&after, "mesh_requests_total", &through)
            - metric_sum(&before, "mesh_requests_total", &through),
        4.0,
        "{after}"
    );
}

/// The value of response header `name` (lowercase) in curl's header dump.
fn header(headers: &str, name: &str) -> Option<String> {
    headers.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name)
            .then(|| value.trim().to_owned())
    })
}

/// A second gateway listener, for port matches.
const SECOND_PORT: u16 = 8089;

/// What a request through the gateway should come to: the path v1 saw (the matched route's
/// rewrite tells which route took it), or a 404 said by the gateway (no route matched).
enum Expect {
    Path(&'static str),
    NoRoute,
}

/// Sends each case from `external` to the gateway and checks what came of it.
fn check_cases(gateway: &GatewayNode, cases: &[(u16, &str, &[&str], Expect)]) {
    for (port, path, args, expect) in cases {
        let (status, body, headers) = gateway.curl_port(*port, path, args);
        let what = format!("port {port} {path} {args:?}");
        match expect {
            Expect::Path(seen) => {
                assert_eq!(
                    status,
                    200,
                    "{what}: {body}\n{headers}\n{}",
                    gateway.agent.log()
                );
                assert!(
                    body.contains(&format!("hello from v1 path={seen} ")),
                    "{what}: {body}"
                );
            }
            Expect::NoRoute => {
                assert_eq!(status, 404, "{what}: {body}\n{headers}");
                assert!(
                    headers.contains("no route of virtual gateway m/gateway/gw matches"),
                    "{what}: {headers}"
                );
            }
        }
    }
}

#[test]
fn gateway_routes_match_host_suffix_regex_headers_method_query_and_port_in_priority_order() {
    // Each route rewrites to a prefix (or path) of its own, so the path v1 sees names the
    // route that took the request.
    let tagged = |name: &str, priority: Option<i64>, matching: Value, tag: &str| {
        let rewrite = json!({"prefix": {"value": tag}});
        gateway_route_of("httpRoute", name, priority, to_api(matching, Some(rewrite)))
    };
    let routes = vec![
        tagged(
            "suffix",
            None,
            json!({"prefix": "/", "hostname": {"suffix": ".shop.example"}}),
            "/suffix/",
        ),
        gateway_route(
            "regex",
            to_api(
                json!({"path": {"regex": "/items/[0-9]+"}}),
                Some(json!({"path": {"exact": "/regex"}})),
            ),
        ),
        tagged(
            "header",
            None,
            json!({"prefix": "/h/", "headers": [
                {"name": "x-tier", "match": {"exact": "gold"}},
                {"name": "x-level", "match": {"range": {"start": 1, "end": 10}}}]}),
            "/header/",
        ),
        tagged(
            "method",
            None,
            json!({"prefix": "/m/", "method": "POST"}),
            "/post/",
        ),
        tagged(
            "query",
            None,
            json!({"prefix": "/q/", "queryParameters": [
                {"name": "beta", "match": {"exact": "1"}}]}),
            "/query/",
        ),
        tagged(
            "first-port",
            None,
            json!({"prefix": "/p/", "port": GATEWAY_PORT}),
            "/first/",
        ),
        tagged(
            "second-port",
            None,
            json!({"prefix": "/p/", "port": SECOND_PORT}),
            "/second/",
        ),
        // All three match /prio/: the lowest priority value wins, whatever the names say;
        // a route without a priority comes after those with one.
        tagged(
            "0-unprioritised",
            None,
            json!({"prefix": "/prio/"}),
            "/none/",
        ),
        tagged(
            "a-second",
            Some(2),
            json!({"prefix": "/prio/"}),
            "/priority-2/",
        ),
        tagged(
            "z-first",
            Some(1),
            json!({"prefix": "/prio/"}),
            "/priority-1/",
        ),
    ];
    let listener = |port: u16| json!({"portMapping": {"port": port, "protocol": "http"}});
    let gateway = GatewayNode::start_with(
        "gwmatch",
        GatewaySpec {
            listeners: vec![listener(GATEWAY_PORT), listener(SECOND_PORT)],
            gateway_routes: routes,
            ..Default::default()
        },
    );
    use Expect::{NoRoute, Path};
    let host = |h: &'static str| -> Vec<&'static str> { vec!["-H", h] };
    let shop = host("Host: www.shop.example");
    let shop_port = host("Host: www.shop.example:8088");
    let other = host("Host: shop.example.org");
    let gold = ["-H", "x-tier: gold", "-H", "x-level: 5"];
    let gold_high = ["-H", "x-tier: gold", "-H", "x-level: 10"];
    let silver = ["-H", "x-tier: silver", "-H", "x-level: 5"];
    let post = ["-X", "POST"];
    let g = GATEWAY_PORT;
    check_cases(
        &gateway,
        &[
            // Hostname suffix, with or without a port in the Host.
            (g, "/a", &shop, Path("/suffix/a")),
            (g, "/a", &shop_port, Path("/suffix/a")),
            (g, "/a", &other, NoRoute),
            // Path regex: the whole path.
            (g, "/items/42", &[], Path("/regex")),
            (g, "/items/4x2", &[], NoRoute),
            (g, "/items/42/more", &[], NoRoute),
            // Headers: every one must match (exact, and range [1, 10)).
            (g, "/h/a", &gold, Path("/header/a")),
            (g, "/h/a", &gold_high, NoRoute),
            (g, "/h/a", &silver, NoRoute),
            (g, "/h/a", &["-H", "x-tier: gold"], NoRoute),
            // Method.
            (g, "/m/a", &post, Path("/post/a")),
            (g, "/m/a", &[], NoRoute),
            // Query parameter; the query goes on with the request.
            (g, "/q/a?beta=1", &[], Path("/query/a")),
            (g, "/q/a?beta=2", &[], NoRoute),
            (g, "/q/a", &[], NoRoute),
            // Port: each listener takes its own routes, and the routes without a port.
            (g, "/p/x", &[], Path("/first/x")),
            (SECOND_PORT, "/p/x", &[], Path("/second/x")),
            (SECOND_PORT, "/items/7", &[], Path("/regex")),
            // Priority.
            (g, "/prio/x", &[], Path("/priority-1/x")),
            (SECOND_PORT, "/prio/x", &[], Path("/priority-1/x")),
        ],
    );
}

#[test]
fn gateway_rewrites_the_host_to_the_target_unless_disabled_and_picks_the_target_port() {
    // Router `api` on two ports: 8080 to v1, 8081 to v2.
    const SECOND: u16 = 8081;
    let routes = vec![
        route(
            "all",
            None,
            json!({"prefix": "/", "port": PORT}),
            &[("v1", 1)],
            json!({}),
        ),
        route(
            "second",
            None,
            json!({"prefix": "/", "port": SECOND}),
            &[("v2", 1)],
            json!({}),
        ),
    ];
    let host_rewrite = |enabled: &str| json!({"hostname": {"defaultTargetHostname": enabled}});
    let gateway_routes = vec![
        gateway_route("default-host", to_api(json!({"prefix": "/default/"}), None)),
        gateway_route(
            "enabled-host",
            to_api(
                json!({"prefix": "/enabled/"}),
                Some(host_rewrite("ENABLED")),
            ),
        ),
        gateway_route(
            "kept-host",
            to_api(json!({"prefix": "/kept/"}), Some(host_rewrite("DISABLED"))),
        ),
        gateway_route(
            "second-port",
            json!({"match": {"prefix": "/port/"}, "action": {"target": {
                "virtualService": {"virtualServiceName": SERVICE}, "port": SECOND}}}),
        ),
        // App Mesh's own example: a prefix without a trailing slash, and its default
        // rewrite (`/red/tell` goes on as `/tell`, `/red1` as `/1`).
        gateway_route("red", to_api(json!({"prefix": "/red"}), None)),
        gateway_route(
            "by-host",
            to_api(
                json!({"prefix": "/", "hostname": {"exact": "www.example.com"}}),
                None,
            ),
        ),
    ];
    let gateway = GatewayNode::start_with(
        "gwrewrite",
        GatewaySpec {
            gateway_routes,
            router_ports: vec![PORT, SECOND],
            routes,
            workloads: vec![Workload {
                pod: "s2",
                node: "v2",
                port: SECOND,
                protocol: "http",
                command: [meshtb(), "http-server", "--port", "8081", "--name", "v2"]
                    .map(String::from)
                    .to_vec(),
            }],
            ..Default::default()
        },
    );
    let before = gateway.metrics();
    // (path, Host sent, who answers, the path and Host it saw)
    let answered = [
        ("/default/a", "anything.example", "v1", "/a", "api.m.local"),
        ("/enabled/a", "anything.example", "v1", "/a", "api.m.local"),
        // DISABLED: the client's Host picks the service's port (its virtual host).
        ("/kept/a", "api.m.local", "v1", "/a", "api.m.local"),
        (
            "/kept/a",
            "api.m.local:8081",
            "v2",
            "/a",
            "api.m.local:8081",
        ),
        // target.port: the Host names the port, so the service's routing on that port.
        (
            "/port/a",
            "anything.example",
            "v2",
            "/a",
            "api.m.local:8081",
        ),
        (
            "/red/tell",
            "anything.example",
            "v1",
            "/tell",
            "api.m.local",
        ),
        ("/red", "anything.example", "v1", "/", "api.m.local"),
        ("/red1", "anything.example", "v1", "/1", "api.m.local"),
        ("/x", "www.example.com", "v1", "/x", "api.m.local"),
        ("/x", "www.example.com:8088", "v1", "/x", "api.m.local"),
    ];
    for (path, host, server, seen_path, seen_host) in answered {
        let (status, body, headers) = gateway.curl(path, &["-H", &format!("Host: {host}")]);
        assert_eq!(
            status,
            200,
            "{path} {host}: {body}\n{headers}\n{}",
            gateway.agent.log()
        );
        assert!(
            body.contains(&format!("hello from {server} path={seen_path} ")),
            "{path} {host}: {body}"
        );
        assert_eq!(
            header(&headers, "x-meshtb-host").as_deref(),
            Some(seen_host),
            "{path} {host}: {headers}"
        );
    }
    // DISABLED and a Host that names no service: the target's table has nothing for it.
    for host in ["elsewhere.example", "api.m.local:8088"] {
        let (status, body, headers) = gateway.curl("/kept/a", &["-H", &format!("Host: {host}")]);
        assert_eq!(status, 404, "{host}: {body}\n{headers}");
        assert!(
            headers.contains(&format!(
                "no virtual service \"{host}\" among the backends of m/gateway/gw"
            )),
            "{host}: {headers}"
        );
    }
    // A Host no gateway route takes: 404, said by the gateway.
    let (status, body, headers) = gateway.curl("/x", &["-H", "Host: www.example.org"]);
    assert_eq!(status, 404, "{body}");
    assert!(
        headers.contains("no route of virtual gateway m/gateway/gw matches GET /x"),
        "{headers}"
    );
    let after = gateway.metrics();
    let to_v2 = [
        ("reporter", "gateway"),
        ("source_virtual_node", "m/gateway/gw"),
        ("destination_virtual_service", SERVICE),
        ("destination_virtual_node", "m/v2"),
        ("response_code", "200"),
    ];
    assert_eq!(
        metric_sum(&after, "mesh_requests_total", &to_v2)
            - metric_sum(&before, "mesh_requests_total", &to_v2),
        2.0,
        "{after}"
    );
}

#[test]
fn a_strict_tls_listener_terminates_tls_for_outside_clients_and_refuses_plain_text() {
    const TLS_PORT: u16 = 8443;
    let ca = TestCa::new("gateway test CA").expect("CA");
    let certs = tempfile::tempdir().unwrap();
    let ca_file = ca.write_to(certs.path()).unwrap();
    let leaf = ca
        .issue(&IssueSpec::new("gw.example.com").dns("gw.example.com"))
        .unwrap()
        .write_to(certs.path(), "gw")
        .unwrap();
    let listener = json!({"portMapping": {"port": TLS_PORT, "protocol": "http"},
        "tls": {"mode": "STRICT", "certificate": {"file": {
            "certificateChain": leaf.cert.to_str().unwrap(),
            "privateKey": leaf.key.to_str().unwrap()}}}});
    let gateway = GatewayNode::start_with(
        "gwtls",
        GatewaySpec {
            listeners: vec![listener],
            gateway_routes: vec![
                gateway_route("api", to_api(json!({"prefix": "/api/"}), None)),
                // The Host of a TLS request carries the port: the hostname match allows it.
                gateway_route(
                    "by-host",
                    to_api(
                        json!({"prefix": "/host/", "hostname": {"exact": "gw.example.com"}}),
                        None,
                    ),
                ),
            ],
            ..Default::default()
        },
    );
    let resolve = format!("gw.example.com:{TLS_PORT}:{}", gateway.gateway_ip());
    let https = |path: &str, args: &[&str]| {
        let mut all = vec!["--cacert", ca_file.to_str().unwrap(), "--resolve", &resolve];
        all.extend_from_slice(args);
        gateway.curl_url(&format!("https://gw.example.com:{TLS_PORT}{path}"), &all)
    };
    let before = gateway.metrics();
    // HTTP/2 by ALPN, and HTTP/1.1.
    for (args, version) in [
        (&[][..], "HTTP/2 200"),
        (&["--http1.1"][..], "HTTP/1.1 200"),
    ] {
        let (status, body, headers) = https("/api/items", args);
        assert_eq!(status, 200, "{body}\n{headers}\n{}", gateway.agent.log());
        assert!(headers.starts_with(version), "{headers}");
        assert!(body.contains("hello from v1 path=/items "), "{body}");
        let (status, body, _) = https("/host/x", args);
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("hello from v1 path=/x "), "{body}");
    }
    // No route: 404 over TLS, said by the gateway.
    let (status, _, headers) = https("/nothing", &[]);
    assert_eq!(status, 404, "{headers}");
    assert!(
        headers.contains("no route of virtual gateway m/gateway/gw"),
        "{headers}"
    );
    // A client that does not trust the CA refuses the gateway's certificate.
    let (status, _, _) = gateway.curl_url(
        &format!("https://gw.example.com:{TLS_PORT}/api/items"),
        &["--resolve", &resolve],
    );
    assert_eq!(status, 0);
    // Plain text to the STRICT port: no answer at all.
    let (status, body, headers) = gateway.curl_port(TLS_PORT, "/api/items", &[]);
    assert_eq!(status, 0, "{body}\n{headers}");
    let after = gateway.metrics();
    let handshakes = |result: &str| {
        let labels = [("side", "server"), ("result", result)];
        metric_sum(&after, "mesh_agent_tls_handshakes_total", &labels)
            - metric_sum(&before, "mesh_agent_tls_handshakes_total", &labels)
    };
    assert_eq!(handshakes("ok"), 5.0, "{after}");
    assert_eq!(handshakes("not_tls"), 1.0, "{after}");
    let through = [
        ("reporter", "gateway"),
        ("source_virtual_node", "m/gateway/gw"),
        ("destination_virtual_node", "m/v1"),
        ("response_code", "200"),
    ];
    assert_eq!(
        metric_sum(&after, "mesh_requests_total", &through)
            - metric_sum(&before, "mesh_requests_total", &through),
        4.0,
        "{after}"
    );
}

#[test]
fn grpc_calls_go_through_a_grpc_gateway_listener_as_direct() {
    const GRPC_PORT: u16 = 8090;
    // grpcio's server behind `peer.m.local` (virtual node g1), tonic's behind `tonic.m.local`
    // (virtual node t1); the same grpcio server outside the mesh, in `external`, for the
    // direct calls.
    let service = |name: &str, node: &str| json!({"meshName": "m", "virtualServiceName": name, "spec": {"provider": {"virtualNode": {"virtualNodeName": node}}}});
    let grpc_to = |name: &str, priority: i64, matching: Value, service: &str| {
        gateway_route_of(
            "grpcRoute",
            name,
            Some(priority),
            json!({"match": matching, "action": {"target": {"virtualService": {"virtualServiceName": service}}}}),
        )
    };
    let health = "grpc.health.v1.Health";
    let gateway = GatewayNode::start_with(
        "gwgrpc",
        GatewaySpec {
            listeners: vec![json!({"portMapping": {"port": GRPC_PORT, "protocol": "grpc"}})],
            gateway_routes: vec![
                // Health checks with `x-impl: tonic` metadata go to tonic's server.
                grpc_to(
                    "tonic",
                    0,
                    json!({"serviceName": health, "metadata": [{"name": "x-impl", "match": {"exact": "tonic"}}]}),
                    "tonic.m.local",
                ),
                grpc_to("health", 1, json!({"serviceName": health}), "peer.m.local"),
                grpc_to(
                    "echo",
                    2,
                    json!({"serviceName": "interop.Echo"}),
                    "peer.m.local",
                ),
            ],
            workloads: vec![
                Workload {
                    pod: "g1",
                    node: "g1",
                    port: PORT,
                    protocol: "grpc",
                    command: vec![
                        "python3".into(),
                        peer("grpc_peer.py"),
                        "serve".into(),
                        "--port".into(),
                        PORT.to_string(),
                        "--name".into(),
                        "peer".into(),
                    ],
                },
                Workload {
                    pod: "t1",
                    node: "t1",
                    port: PORT,
                    protocol: "grpc",
                    command: [meshtb(), "grpc-server", "--port", "8080", "--name", "tonic"]
                        .map(String::from)
                        .to_vec(),
                },
            ],
            files: vec![
                service("peer.m.local", "g1"),
                service("tonic.m.local", "t1"),
            ],
            ..Default::default()
        },
    );
    let twin = gateway
        .node
        .spawn_in_pod(
            "external",
            "python3",
            &[
                &peer("grpc_peer.py"),
                "serve",
                "--port",
                "9090",
                "--name",
                "peer",
            ],
        )
        .expect("twin server");
    gateway
        .node
        .wait_for_listener(
            (gateway.node.pod("external").unwrap().ip, 9090).into(),
            TIMEOUT,
        )
        .expect("twin listens");
    let through_gateway = format!("{}:{GRPC_PORT}", gateway.gateway_ip());
    let run = |program: &str, args: &[&str]| {
        let output = gateway
            .node
            .run_in_pod("external", program, args, Duration::from_secs(60))
            .expect("client runs");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "{program} {args:?}: {stdout}\n{}\n{}",
            String::from_utf8_lossy(&output.stderr),
            gateway.agent.log()
        );
        stdout
    };
    let grpc_peer = peer("grpc_peer.py");
    let before = gateway.metrics();

    // grpcio ↔ grpcio: unary, large messages, error status, streaming each way, a deadline,
    // a cancelled call — the same results through the gateway as direct.
    let call = |target: &str| {
        let text = run("python3", &[&grpc_peer, "call", "--target", target]);
        serde_json::from_str::<Value>(text.trim())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    };
    let direct = call("127.0.0.1:9090");
    let through = call(&through_gateway);
    assert_eq!(through, direct, "through the gateway vs direct");
    assert_eq!(
        direct["unary"]["trailing"],
        json!([["x-echo", "m1"], ["x-served-by", "peer"]])
    );
    assert_eq!(
        direct["large_unary"],
        json!({"bytes": 4194304, "same": true})
    );
    assert_eq!(direct["bidi"], json!({"messages": 100, "same": true}));
    assert_eq!(
        direct["cancel"],
        json!({"client": "CANCELLED", "server_saw_cancellation": true})
    );

    // tonic's client: health checks to grpcio's server (SERVING for any name), or with the
    // metadata to tonic's (which knows only its own name).
    let check = |service: &str, metadata: &[&str]| {
        let mut args = vec![
            "grpc-check",
            "--to",
            &through_gateway,
            "--authority",
            "grpc.example.com",
            "--service",
            service,
        ];
        for pair in metadata {
            args.extend(["--metadata", pair]);
        }
        run(meshtb(), &args).trim().to_owned()
    };
    assert_eq!(check("anything", &[]), "status=SERVING");
    assert_eq!(check("tonic", &["x-impl=tonic"]), "status=SERVING");
    assert!(
        check("anything", &["x-impl=tonic"]).starts_with("error=NotFound"),
        "tonic's server answers for names it does not know"
    );
    // grpcio's client to tonic's server.
    let grpcio_check = run(
        "python3",
        &[
            &grpc_peer,
            "check",
            "--target",
            &through_gateway,
            "--metadata",
            "x-impl=tonic",
        ],
    );
    assert_eq!(grpcio_check.trim(), "status=SERVING");

    // A service no gateway route names: gRPC's "unimplemented" (12), said by the gateway.
    let (status, _, headers) = gateway.curl_port(
        GRPC_PORT,
        "/other.Service/Method",
        &[
            "--http2-prior-knowledge",
            "-X",
            "POST",
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            "--data-binary",
            "",
        ],
    );
    assert_eq!(status, 200, "{headers}");
    assert_eq!(
        header(&headers, "grpc-status").as_deref(),
        Some("12"),
        "{headers}"
    );
    assert!(
        header(&headers, "grpc-message")
            .is_some_and(|m| m.contains("no route of virtual gateway m/gateway/gw")),
        "{headers}"
    );
    let after = gateway.metrics();
    let count = |service: &str| {
        let labels = [
            ("reporter", "gateway"),
            ("source_virtual_node", "m/gateway/gw"),
            ("destination_virtual_service", service),
            ("grpc_status", "0"),
        ];
        metric_sum(&after, "mesh_requests_total", &labels)
            - metric_sum(&before, "mesh_requests_total", &labels)
    };
    // Unary, large, two streams, bidi, the health check, and the cancellation polls (one
    // or more).
    assert!(count("peer.m.local") >= 7.0, "{after}");
    assert_eq!(count("tonic.m.local"), 2.0, "{after}");
    drop(twin);
}

/// Under automatic mTLS the gateway calls the meshed service with its own identity
/// (`spiffe://…/virtualGateway/gw`, its key made by the agent that serves it), and the
/// service's inbound side names it.
#[test]
fn under_automatic_mtls_the_gateway_calls_with_its_own_identity() {
    let ca = tempfile::tempdir().unwrap();
    let gateway = GatewayNode::start_with(
        "gwmtls",
        GatewaySpec {
            listeners: vec![json!({"portMapping": {"port": GATEWAY_PORT, "protocol": "http"}})],
            gateway_routes: vec![gateway_route("api", to_api(json!({"prefix": "/"}), None))],
            agent_args: vec![
                "--auto-mtls-ca-dir".into(),
                ca.path().join("ca").display().to_string(),
            ],
            ..Default::default()
        },
    );
    let deadline = Instant::now() + TIMEOUT;
    let body = loop {
        // The gateway's and v1's certificates are signed once their pods are known.
        let (status, body, _) = gateway.curl("/secured", &[]);
        if status == 200 {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "{status} {body}\n{}",
            gateway.agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(body.contains("hello from v1 path=/secured"), "{body}");
    let metrics = gateway.agent.metrics(&gateway.node).unwrap();
    let inbound = [
        ("reporter", "inbound"),
        ("source_virtual_node", "m/gateway/gw"),
        ("destination_virtual_node", "m/v1"),
        ("response_code", "200"),
    ];
    assert!(
        metric_sum(&metrics, "mesh_requests_total", &inbound) >= 1.0,
        "{metrics}"
    );
    let sample = r#"mesh_agent_workload_certificate_requests_total{result="ok"}"#;
    assert_eq!(
        tests::agent::metric_value(&metrics, sample),
        2.0,
        "the gateway's and v1's: {metrics}"
    );
}
