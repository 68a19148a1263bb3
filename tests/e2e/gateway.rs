//! Virtual gateways served by the node agent: a pod enrolled as gateway `m/gateway/gw` has
//! its listener ports captured; a client outside the mesh (standing for the internet) reaches
//! meshed services only through the gateway routes, with App Mesh's rewrite defaults, then
//! the target service's own routing.
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tests::{
    Agent, Node, Proc,
    agent::{config_for, metric_sum},
    mesh::{PORT, SERVICE, all_to_v1},
};

use super::{TIMEOUT, meshtb};

/// The gateway's listener port.
const GATEWAY_PORT: u16 = 8088;

/// One node: pod `gw` (enrolled as virtual gateway `gw`), `s1` (v1, behind `api.m.local`),
/// `external` (not enrolled); the gateway's routes from the test.
pub struct GatewayNode {
    pub agent: Agent,
    _servers: Vec<Proc>,
    pub node: Node,
    _dir: tempfile::TempDir,
}

impl GatewayNode {
    pub fn start(label: &str, gateway_routes: Vec<Value>, listener_extra: Value) -> Self {
        let mut node = Node::create(label).expect("node");
        for pod in ["gw", "s1", "external"] {
            node.add_pod(pod).expect("pod");
        }
        let s1 = node.pod("s1").unwrap().ip;
        let server = node
            .spawn_in_pod(
                "s1",
                meshtb(),
                &["http-server", "--port", &PORT.to_string(), "--name", "v1"],
            )
            .expect("server");
        node.wait_for_listener((s1, PORT).into(), TIMEOUT)
            .expect("server listens");
        let dir = tempfile::tempdir().unwrap();
        let mesh = dir.path().join("mesh");
        std::fs::create_dir(&mesh).unwrap();
        let mut listener = json!({"portMapping": {"port": GATEWAY_PORT, "protocol": "http"}});
        if let (Some(listener), Some(extra)) =
            (listener.as_object_mut(), listener_extra.as_object())
        {
            listener.extend(extra.clone());
        }
        let mut files = vec![
            (
                "mesh",
                json!({"meshName": "m", "spec": {"egressFilter": {"type": "DROP_ALL"}}}),
            ),
            (
                "vn-v1",
                json!({"meshName": "m", "virtualNodeName": "v1", "spec": {
                    "listeners": [{"portMapping": {"port": PORT, "protocol": "http"}}],
                    "serviceDiscovery": {"dns": {"hostname": s1.to_string()}}}}),
            ),
            (
                "vr",
                json!({"meshName": "m", "virtualRouterName": "api", "spec": {"listeners": [
                    {"portMapping": {"port": PORT, "protocol": "http"}}]}}),
            ),
            (
                "vs",
                json!({"meshName": "m", "virtualServiceName": SERVICE, "spec": {"provider": {"virtualRouter": {"virtualRouterName": "api"}}}}),
            ),
            (
                "vg",
                json!({"meshName": "m", "virtualGatewayName": "gw", "spec": {"listeners": [listener]}}),
            ),
        ];
        for (index, route) in all_to_v1().into_iter().enumerate() {
            files.push((Box::leak(format!("route-{index}").into_boxed_str()), route));
        }
        for (index, route) in gateway_routes.into_iter().enumerate() {
            files.push((Box::leak(format!("gr-{index}").into_boxed_str()), route));
        }
        for (name, value) in files {
            std::fs::write(mesh.join(format!("{name}.json")), value.to_string()).unwrap();
        }
        let gw_netns = node.pod("gw").unwrap().netns_name().to_owned();
        let s1_netns = node.pod("s1").unwrap().netns_name().to_owned();
        // config_for enrolls by name; the gateway pod is pinned to the gateway instead.
        let config = config_for(&node, &[], "").unwrap().replace(
            "netns: []",
            &format!("netns: [\"{gw_netns}=m/gateway/gw\", {s1_netns}]"),
        );
        let agent = Agent::start_with_args(
            &node,
            &config,
            dir.path(),
            &["--mesh", mesh.to_str().unwrap()],
        )
        .expect("agent");
        let this = Self {
            agent,
            _servers: vec![server],
            node,
            _dir: dir,
        };
        this.wait_for_gateway();
        this
    }

    /// Waits until the gateway pod's listener port is captured (an answer from the proxy,
    /// not a refused connection).
    fn wait_for_gateway(&self) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let (status, _, _) = self.curl("/", &[]);
            if status != 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the gateway port is not captured\n{}",
                self.agent.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// curl from `external` to `http://<gateway pod>:8088{path}`: (status, body, headers).
    pub fn curl(&self, path: &str, args: &[&str]) -> (u16, String, String) {
        let gw = self.node.pod("gw").unwrap().ip;
        let url = format!("http://{gw}:{GATEWAY_PORT}{path}");
        let mut all = vec!["-sS", "--max-time", "10", "-D", "-", "-w", "\n%{http_code}"];
        all.extend_from_slice(args);
        all.push(&url);
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
}

fn gateway_route(name: &str, http_route: Value) -> Value {
    json!({"meshName": "m", "virtualGatewayName": "gw", "gatewayRouteName": name,
           "spec": {"httpRoute": http_route}})
}

fn to_api(matching: Value, rewrite: Option<Value>) -> Value {
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
