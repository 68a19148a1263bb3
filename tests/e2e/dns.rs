//! DNS for enrolled pods, end to end: the eBPF capture of port 53 (UDP and TCP) into the
//! agent's DNS server, mesh names answered with a VIP the redirect routes, everything else
//! forwarded to the pod's own resolver (a dnsmasq on the node), with `dig`, `curl` and the
//! C library's resolver as the clients. The pods' resolv.conf names the dnsmasq
//! ([`Node::run_in_pod_resolving`]); the agent never touches it.
use std::{net::Ipv4Addr, process::Output, time::Duration};

use serde_json::json;
use tests::{Node, Proc, agent::metric_value};

use super::{
    TIMEOUT,
    l7::{MeshNode, MeshSpec, all_to_v1},
};

/// What the pods' resolver says for the mesh name, so answers from it and from the agent
/// are told apart.
const RESOLVER_SERVICE_IP: &str = "10.77.0.98";
const OUTSIDE_NAME: &str = "outside.example.test";
const OUTSIDE_IP: &str = "10.77.0.99";
/// A TXT record too big for a 512-byte UDP answer: the resolver truncates it.
const BIG_NAME: &str = "big.example.test";
/// The first two octets of the default VIP range, 240.240.0.0/16.
const VIP_PREFIX: [u8; 2] = [240, 240];

/// The pods' own resolver: dnsmasq on the node's address, port 53 (where the pods'
/// resolv.conf points).
struct PodResolver {
    _server: Proc,
}

fn big_txt_chunk(index: usize) -> String {
    format!("chunk{index}-{}", "x".repeat(180))
}

fn start_pod_resolver(node: &Node) -> PodResolver {
    let txt: Vec<String> = (0..4).map(big_txt_chunk).collect();
    let records = [
        "--local-ttl=60".to_owned(),
        format!("--host-record={OUTSIDE_NAME},{OUTSIDE_IP}"),
        format!("--host-record=api.m.local,{RESOLVER_SERVICE_IP}"),
        format!("--txt-record={BIG_NAME},{}", txt.join(",")),
    ];
    let server = tests::dnsmasq::start(node, &records).expect("dnsmasq starts");
    PodResolver { _server: server }
}

/// Runs `program args` in `pod`, resolving with the pods' resolv.conf.
fn in_pod(node: &Node, pod: &str, program: &str, args: &[&str]) -> Output {
    let output = node
        .run_in_pod_resolving(pod, program, args, TIMEOUT)
        .expect("command runs");
    assert!(
        output.status.success() || program == "curl",
        "{program} {args:?} in {pod}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `dig +short` in `pod`: the answer lines.
fn dig_short(node: &Node, pod: &str, args: &[&str]) -> Vec<String> {
    let mut all = vec!["+short", "+time=3", "+tries=1"];
    all.extend_from_slice(args);
    let output = in_pod(node, pod, "dig", &all);
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The TTLs of the answer records `dig` gets for `name` in `pod`.
fn answer_ttls(node: &Node, pod: &str, name: &str) -> Vec<String> {
    let output = in_pod(
        node,
        pod,
        "dig",
        &["+noall", "+answer", "+time=3", "+tries=1", name],
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1).map(str::to_owned))
        .collect()
}

fn in_vip_range(answer: &[String]) -> bool {
    matches!(answer, [one] if one.parse::<Ipv4Addr>().is_ok_and(|ip| ip.octets()[..2] == VIP_PREFIX))
}

fn start_mesh(label: &str) -> (MeshNode, PodResolver) {
    let mesh = MeshNode::start(
        label,
        MeshSpec {
            routes: all_to_v1(),
            ..Default::default()
        },
    );
    let resolver = start_pod_resolver(&mesh.node);
    (mesh, resolver)
}

#[test]
fn enrolled_pods_resolve_mesh_names_and_everything_else_as_before() {
    let (mesh, _resolver) = start_mesh("dnsnames");
    let node = &mesh.node;

    // The mesh name: a VIP from the agent, not the resolver's record; AAAA: no record.
    let a = dig_short(node, "client", &["api.m.local"]);
    assert!(
        in_vip_range(&a),
        "api.m.local from the client: {a:?}\n{}",
        mesh.agent.log()
    );
    assert_eq!(
        dig_short(node, "client", &["api.m.local"]),
        a,
        "a stable VIP"
    );
    assert_eq!(
        dig_short(node, "client", &["API.M.Local"]),
        a,
        "names are case-blind"
    );
    assert!(dig_short(node, "client", &["AAAA", "api.m.local"]).is_empty());
    let aaaa = in_pod(node, "client", "dig", &["AAAA", "api.m.local"]);
    let aaaa = String::from_utf8_lossy(&aaaa.stdout);
    assert!(aaaa.contains("status: NOERROR"), "{aaaa}");

    // Any other name: the pod's resolver answers, through the agent.
    assert_eq!(dig_short(node, "client", &[OUTSIDE_NAME]), [OUTSIDE_IP]);
    let missing = in_pod(node, "client", "dig", &["nothing.example.test"]);
    let missing = String::from_utf8_lossy(&missing.stdout);
    assert!(
        missing.contains("status: NXDOMAIN") || missing.contains("status: REFUSED"),
        "{missing}"
    );

    // Answers carry their TTLs: the agent's for mesh names (dns.ttl), the resolver's as it
    // gave them for the rest.
    assert_eq!(answer_ttls(node, "client", "api.m.local"), ["5"]);
    assert_eq!(answer_ttls(node, "client", OUTSIDE_NAME), ["60"]);

    // A pod outside the mesh sees its resolver's answers, the mesh name included.
    assert_eq!(
        dig_short(node, "outside", &["api.m.local"]),
        [RESOLVER_SERVICE_IP]
    );
    assert_eq!(dig_short(node, "outside", &[OUTSIDE_NAME]), [OUTSIDE_IP]);

    // An application calls the service by name: the C library's resolver, then the VIP,
    // redirected into the proxy and routed by Host.
    let output = in_pod(
        node,
        "client",
        "curl",
        &["-sS", "--max-time", "10", "http://api.m.local:8080/hello"],
    );
    let body = String::from_utf8_lossy(&output.stdout);
    assert!(
        body.contains("v1"),
        "curl http://api.m.local:8080/: {body} {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        mesh.agent.log()
    );

    let metrics = mesh.metrics();
    for (series, at_least) in [
        (
            "mesh_agent_dns_queries_total{result=\"answered\",query_type=\"A\"}",
            4.0,
        ),
        (
            "mesh_agent_dns_queries_total{result=\"answered\",query_type=\"AAAA\"}",
            2.0,
        ),
        (
            "mesh_agent_dns_queries_total{result=\"forwarded\",query_type=\"A\"}",
            2.0,
        ),
    ] {
        assert!(
            metric_value(&metrics, series) >= at_least,
            "{series}:\n{metrics}"
        );
    }
    // The outside pod's queries never reached the agent.
    assert_eq!(
        metric_value(
            &metrics,
            "mesh_agent_dns_failures_total{reason=\"not_captured\"}"
        ),
        0.0,
        "{metrics}"
    );
}

#[test]
fn a_truncated_answer_is_fetched_again_over_tcp() {
    let (mesh, _resolver) = start_mesh("dnstcp");
    let node = &mesh.node;
    // Over UDP without EDNS the resolver's answer does not fit: it comes back truncated.
    let udp = in_pod(
        node,
        "client",
        "dig",
        &["+noedns", "+ignore", "+time=3", "+tries=1", "TXT", BIG_NAME],
    );
    let udp = String::from_utf8_lossy(&udp.stdout);
    assert!(udp.contains(" tc "), "a truncated UDP answer: {udp}");
    // dig then retries over TCP, which is captured too, and gets all of it.
    let full = dig_short(node, "client", &["+noedns", "TXT", BIG_NAME]);
    let joined = full.join("\n");
    for index in 0..4 {
        assert!(
            joined.contains(&big_txt_chunk(index)),
            "chunk {index} missing: {joined}"
        );
    }
    let metrics = mesh.metrics();
    assert!(
        metric_value(
            &metrics,
            "mesh_agent_dns_queries_total{result=\"forwarded\",query_type=\"TXT\"}"
        ) >= 3.0,
        "two UDP answers and one over TCP:\n{metrics}"
    );
}

#[test]
fn a_removed_virtual_service_stops_resolving() {
    let (mesh, _resolver) = start_mesh("dnsremoved");
    let node = &mesh.node;
    assert!(in_vip_range(&dig_short(node, "client", &["api.m.local"])));
    // The client's virtual node no longer has the service as a backend.
    let client_ip = node.pod("client").unwrap().ip.to_string();
    let vn = json!({"meshName": "m", "virtualNodeName": "client", "spec": {
        "listeners": [{"portMapping": {"port": 80, "protocol": "http"}}],
        "serviceDiscovery": {"dns": {"hostname": client_ip}}}});
    let path = mesh.mesh_dir().join("vn-client.json");
    let staged = mesh.mesh_dir().join(".vn-client.json.tmp");
    std::fs::write(&staged, vn.to_string()).unwrap();
    std::fs::rename(&staged, &path).unwrap();
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let answer = dig_short(node, "client", &["api.m.local"]);
        if answer == [RESOLVER_SERVICE_IP] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still answered by the mesh: {answer:?}\n{}",
            mesh.agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_tcp_virtual_service_resolves_and_is_reached_by_name() {
    let tcp_route = json!({"meshName": "m", "virtualRouterName": "api", "routeName": "tcp", "spec": {"tcpRoute": {
        "action": {"weightedTargets": [{"virtualNode": "v2", "weight": 1}]}}}});
    let mesh = MeshNode::start(
        "dnstcpservice",
        MeshSpec {
            protocol: "tcp",
            routes: vec![tcp_route],
            ..Default::default()
        },
    );
    let _resolver = start_pod_resolver(&mesh.node);
    let node = &mesh.node;
    // A TCP service has no Host to route by: its name comes from the outbound filter chain
    // of its port, and the connect to the VIP is routed by that port.
    let a = dig_short(node, "client", &["api.m.local"]);
    assert!(in_vip_range(&a), "{a:?}\n{}", mesh.agent.log());
    let output = in_pod(
        node,
        "client",
        "curl",
        &["-sS", "--max-time", "10", "http://api.m.local:8080/"],
    );
    let body = String::from_utf8_lossy(&output.stdout);
    assert!(
        body.contains("hello from v2"),
        "{body}\n{}",
        mesh.agent.log()
    );
}

#[test]
fn an_opted_out_pod_keeps_its_resolver() {
    let mesh = MeshNode::start_with_config(
        "dnsoptout",
        MeshSpec {
            routes: all_to_v1(),
            ..Default::default()
        },
        |node| {
            let client = node.pod("client").unwrap().netns_name().to_owned();
            format!("dns:\n  opt_out: [{client}]\n")
        },
    );
    let _resolver = start_pod_resolver(&mesh.node);
    // Still enrolled (its connects go through the proxy), but its DNS is its own.
    assert_eq!(
        dig_short(&mesh.node, "client", &["api.m.local"]),
        [RESOLVER_SERVICE_IP]
    );
    let metrics = mesh.metrics();
    assert_eq!(
        metric_value(
            &metrics,
            "mesh_agent_dns_queries_total{result=\"answered\",query_type=\"A\"}"
        ),
        0.0,
        "{metrics}"
    );
}
