//! What a pod can send must not take the node's mesh down or steer it (issue findings, each
//! reproduced through the real redirect): a connection to the proxy's own inbound port, a
//! connect to 0.0.0.0 reaching the node's loopback, a FIFO handed to enrollment, native IPv6
//! and UDP around the mesh.
use std::time::{Duration, Instant};

use tests::agent::{metric_sum, metric_value};

use super::l7::{MeshNode, MeshSpec, PORT, SERVICE, SERVICE_VIP, all_to_v1};

/// The proxy's listener inside captured pods (config_for keeps the default).
const INBOUND_PORT: u16 = 15006;

fn mesh(label: &str) -> MeshNode {
    MeshNode::start(
        label,
        MeshSpec {
            routes: all_to_v1(),
            // `outside` is enrolled but no virtual node's: its connections are plain TCP.
            enrolled: &["client", "s1", "outside"],
            egress: "ALLOW_ALL",
            ..Default::default()
        },
    )
}

/// curl in `pod` (at most 5 s): its exit code and how long it took.
fn curl(mesh: &MeshNode, pod: &str, url: &str) -> (Option<i32>, Duration) {
    let started = Instant::now();
    let output = mesh
        .node
        .run_in_pod(
            pod,
            "curl",
            &["-sS", "--max-time", "5", url],
            Duration::from_secs(10),
        )
        .expect("curl runs");
    (output.status.code(), started.elapsed())
}

#[test]
fn a_connection_to_a_pods_inbound_port_is_refused_not_looped() {
    let mesh = mesh("secloop");
    let open_fds = || metric_value(&mesh.metrics(), "mesh_agent_process_open_fds");
    let before = open_fds();
    let s1 = mesh.node.pod("s1").expect("s1").ip;
    // Straight at the proxy's own listener in s1: relaying it "to the application" on s1's
    // loopback would reach the listener again, and again.
    for _ in 0..5 {
        let (code, took) = curl(&mesh, "outside", &format!("http://{s1}:{INBOUND_PORT}/"));
        assert_ne!(code, Some(0), "the proxy's own port answered");
        assert_ne!(code, Some(28), "timed out: looping?\n{}", mesh.agent.log());
        assert!(took < Duration::from_secs(2), "{took:?}");
    }
    let after = open_fds();
    assert!(after < before + 20.0, "descriptors {before} → {after}");
    // The mesh still works, into s1 too.
    assert_eq!(mesh.served_by("/", &[]), "v1");
}

#[test]
fn zero_address_connects_do_not_reach_the_nodes_loopback_and_tcp_admin_is_read_only() {
    let mesh = mesh("seczero");
    // An enrolled pod outside every virtual node: its connect to 0.0.0.0:15020 stays in its
    // own namespace (nothing listens there), it never reaches the agent's admin endpoint.
    let (code, _) = curl(&mesh, "outside", "http://0.0.0.0:15020/metrics");
    assert_eq!(code, Some(7), "0.0.0.0:15020 answered from a pod");
    // The TCP admin endpoint (what pods could reach) changes nothing and shows no config.
    for (method, path) in [
        ("POST", "/enrollment?netns=anything"),
        ("GET", "/enrollment"),
        ("GET", "/config_dump"),
    ] {
        let (status, body) = mesh
            .node
            .http(method, tests::Agent::admin_addr(), path)
            .expect("admin answers");
        assert_eq!(status, 404, "{method} {path} over TCP: {body}");
    }
    let (status, _) = mesh
        .node
        .admin("GET", "/config_dump")
        .expect("admin socket");
    assert_eq!(status, 200);
}

#[test]
fn enrolling_a_fifo_is_refused_at_once_and_nothing_stalls() {
    let mesh = mesh("secfifo");
    let dir = tempfile::tempdir().expect("temporary directory");
    let fifo = dir.path().join("not-a-netns");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let started = Instant::now();
    let (status, body) = mesh
        .node
        .admin("POST", &format!("/enrollment?netns={}", fifo.display()))
        .expect("the admin socket answers");
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("not a namespace"), "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // Health and proxied traffic carry on.
    let (status, _) = mesh
        .node
        .http("GET", tests::Agent::admin_addr(), "/healthz")
        .expect("healthz");
    assert_eq!(status, 200);
    assert_eq!(mesh.served_by("/", &[]), "v1");
}

#[test]
fn a_socket_carrying_the_proxys_mark_is_redirected_all_the_same() {
    let mesh = mesh("secmark");
    // A pod with NET_ADMIN (the test runs as root) marks its socket as the proxy's upstream
    // sockets are marked (proxy.mark's default), then connects to a pod outside the mesh on a
    // port no route takes (9000).
    let s3 = mesh.node.pod("s3").expect("s3").ip;
    let script = "import socket, sys\n\
        s = socket.socket()\n\
        s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, 0x4d410001)\n\
        s.settimeout(5)\n\
        s.connect((sys.argv[1], 9000))\n\
        s.sendall(b'GET /marked HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n')\n\
        print(s.makefile('rb').read().decode())\n";
    let output = mesh
        .node
        .run_in_pod(
            "client",
            "python3",
            &["-c", script, &s3.to_string()],
            Duration::from_secs(10),
        )
        .expect("python runs");
    let answer = String::from_utf8_lossy(&output.stdout);
    // Through the proxy (ALLOW_ALL passes it on), the server sees the node's address, not
    // the pod's: the mark bought no way around the mesh.
    assert!(
        answer.contains(&format!("(client {}:", tests::node::NODE_IP)),
        "{answer}{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The capability bits of a `/proc/PID/status` line (`CapEff:`, `CapBnd:`, ...).
fn capability_mask(status: &str, line: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(line))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or_else(|| panic!("no {line} in {status}"))
}

/// The agent, started as root, keeps CAP_NET_ADMIN, CAP_SYS_ADMIN and CAP_BPF and
/// nothing else, in every set, with no_new_privs — and still enrolls a pod after the drop
/// (namespace entered, listener opened, sk_lookup attached).
#[test]
fn the_agent_keeps_only_the_capabilities_it_uses() {
    let mesh = mesh("seccaps");
    let status = std::fs::read_to_string(format!("/proc/{}/status", mesh.agent.pid()))
        .expect("the agent's status");
    let kept: u64 = [12, 21, 39].iter().map(|bit| 1u64 << bit).sum();
    for set in ["CapEff:", "CapPrm:", "CapBnd:"] {
        assert_eq!(capability_mask(&status, set), kept, "{set} of\n{status}");
    }
    for set in ["CapInh:", "CapAmb:"] {
        assert_eq!(capability_mask(&status, set), 0, "{set} of\n{status}");
    }
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");

    // s2 (virtual node v2) enrolled now: its listener port is captured from the first request.
    let captured = || metric_value(&mesh.metrics(), "mesh_agent_inbound_ports_captured");
    let before = captured();
    let s2 = mesh.node.pod("s2").expect("s2");
    let (status, body) = mesh
        .node
        .admin(
            "POST",
            &format!("/enrollment?netns={}", s2.netns_path().display()),
        )
        .expect("the admin socket answers");
    assert_eq!(status, 200, "{body}\n{}", mesh.agent.log());
    let deadline = Instant::now() + Duration::from_secs(10);
    while captured() < before + 1.0 {
        assert!(
            Instant::now() < deadline,
            "s2 not captured\n{}",
            mesh.agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = mesh
        .node
        .run_in_pod(
            "s3",
            "curl",
            &[
                "-sS",
                "--max-time",
                "5",
                &format!("http://{}:8080/who", s2.ip),
            ],
            Duration::from_secs(10),
        )
        .expect("curl runs");
    let answer = String::from_utf8_lossy(&output.stdout);
    assert!(answer.contains("(client 127.0.0.1:"), "{answer}");
}

/// Python's http.server on `[::]:PORT`, IPv6 only (beside the pod's IPv4 server on the same
/// port, as a dual-stack application with one socket per family listens), answering
/// `over ipv6 from NAME`.
const IPV6_HTTP_SERVER: &str = r#"
import http.server, socket, sys
class Server(http.server.HTTPServer):
    address_family = socket.AF_INET6
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        super().server_bind()
class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass
    def do_GET(self):
        body = ("over ipv6 from " + sys.argv[2]).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
Server(("::", int(sys.argv[1])), Handler).serve_forever()
"#;

/// A UDP echo server on 0.0.0.0:PORT.
const UDP_ECHO: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
while True:
    data, peer = s.recvfrom(512)
    s.sendto(b"echo " + data, peer)
"#;

/// Sends one UDP datagram to HOST PORT, on a connected socket (`connect`) or with sendto
/// (`sendto`), and prints the answer, `refused` (the send failed with EPERM) or `no answer`.
const UDP_SEND: &str = r#"
import socket, sys
host, port, how = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1)
try:
    if how == "connect":
        s.connect((host, port))
        s.send(b"ping")
    else:
        s.sendto(b"ping", (host, port))
    print(s.recv(512).decode())
except PermissionError:
    print("refused")
except (socket.timeout, ConnectionRefusedError):
    print("no answer")
"#;

/// The pods' IPv6 prefix: the node's bridge is `fd77::1/64`.
const IPV6_PREFIX: &str = "fd77::";

/// Gives the node's bridge and `pods` an IPv6 address (no duplicate address detection, so
/// they are usable at once); each pod's is `fd77::<last octet of its IPv4 address>`.
fn add_ipv6(mesh: &MeshNode, pods: &[&str]) {
    fn add<'a>(dev: &'a str, address: &'a str) -> [&'a str; 7] {
        ["-6", "addr", "add", address, "dev", dev, "nodad"]
    }
    mesh.node
        .netns()
        .ip(&add("br0", &format!("{IPV6_PREFIX}1/64")))
        .expect("bridge address");
    for pod in pods {
        let address = format!("{}/64", ipv6_of(mesh, pod));
        let output = mesh
            .node
            .run_in_pod(pod, "ip", &add("eth0", &address), Duration::from_secs(5))
            .expect("ip runs");
        assert!(output.status.success(), "{output:?}");
    }
}

fn ipv6_of(mesh: &MeshNode, pod: &str) -> String {
    let ip = mesh.node.pod(pod).expect("pod").ip;
    format!("{IPV6_PREFIX}{}", ip.octets()[3])
}

/// The link-local address of `pod`'s eth0, once duplicate address detection has passed.
fn link_local_of(mesh: &MeshNode, pod: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let output = mesh
            .node
            .run_in_pod(
                pod,
                "ip",
                &["-6", "-o", "addr", "show", "dev", "eth0", "scope", "link"],
                Duration::from_secs(5),
            )
            .expect("ip runs");
        let shown = String::from_utf8_lossy(&output.stdout);
        // `2: eth0    inet6 fe80::…/64 scope link \       valid_lft …`
        let address = shown
            .split_whitespace()
            .skip_while(|word| *word != "inet6")
            .nth(1)
            .and_then(|cidr| cidr.split('/').next());
        match address {
            Some(address) if !shown.contains("tentative") => return address.to_owned(),
            _ => {
                assert!(Instant::now() < deadline, "no link-local address: {shown}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// Starts [`IPV6_HTTP_SERVER`] in `pod` on `port`, answering as `name`; it stops when
/// dropped.
fn serve_ipv6(mesh: &MeshNode, pod: &str, port: u16, name: &str) -> tests::Proc {
    let server = mesh
        .node
        .spawn_in_pod(
            pod,
            "python3",
            &["-c", IPV6_HTTP_SERVER, &port.to_string(), name],
        )
        .expect("python3");
    // Asked on the pod's own loopback: from elsewhere a captured port is not reachable.
    let netns = mesh.node.pod(pod).expect("pod").netns_path();
    let addr = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !tests::netns::run_in_path(&netns, || std::net::TcpStream::connect(addr).is_ok())
        .expect("netns")
    {
        assert!(
            Instant::now() < deadline,
            "nothing listens on {addr} in {pod}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}

/// curl from `pod` to `url`: its exit code and body.
fn fetch(mesh: &MeshNode, pod: &str, url: &str, args: &[&str]) -> (Option<i32>, String) {
    let mut all = vec!["-s", "--max-time", "3"];
    all.extend_from_slice(args);
    all.push(url);
    let output = mesh
        .node
        .run_in_pod(pod, "curl", &all, Duration::from_secs(10))
        .expect("curl runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

/// [`UDP_SEND`] from `pod`: what it printed.
fn udp_send(mesh: &MeshNode, pod: &str, host: &str, port: u16, how: &str) -> String {
    let output = mesh
        .node
        .run_in_pod(
            pod,
            "python3",
            &["-c", UDP_SEND, host, &port.to_string(), how],
            Duration::from_secs(10),
        )
        .expect("python3 runs");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Where the UDP echo server listens in `outside`.
const UDP_PORT: u16 = 7001;

/// Starts [`UDP_ECHO`] in the `outside` pod and waits until it answers a pod outside the
/// mesh (s2); returns its address.
fn start_udp_echo(mesh: &mut MeshNode) -> String {
    let echo = mesh
        .node
        .spawn_in_pod(
            "outside",
            "python3",
            &["-c", UDP_ECHO, &UDP_PORT.to_string()],
        )
        .expect("python3");
    mesh.servers.insert("udp-echo", echo);
    let outside = mesh.node.pod("outside").unwrap().ip.to_string();
    let deadline = Instant::now() + Duration::from_secs(5);
    while udp_send(mesh, "s2", &outside, UDP_PORT, "sendto") != "echo ping" {
        assert!(Instant::now() < deadline, "no UDP echo from outside");
    }
    outside
}

/// A mesh node whose pods have IPv6 addresses, with `config` added to the agent's; IPv6
/// servers run in `outside` (port 7000) and s1 (the service port), held by the Procs.
fn ipv6_mesh(label: &str, config: &'static str) -> (MeshNode, Vec<tests::Proc>) {
    let mesh = MeshNode::start_with_config(
        label,
        MeshSpec {
            routes: all_to_v1(),
            // client and s1 (v1) are enrolled; s2 and outside are not.
            enrolled: &["client", "s1"],
            ..Default::default()
        },
        |_| config.to_owned(),
    );
    add_ipv6(&mesh, &["client", "s1", "s2", "outside"]);
    let servers = vec![
        serve_ipv6(&mesh, "outside", 7000, "outside"),
        serve_ipv6(&mesh, "s1", PORT, "v1"),
    ];
    (mesh, servers)
}

/// Issue 11, finding 8: native IPv6 went around the mesh — an enrolled pod's IPv6 connects
/// were not redirected, and a connection over IPv6 to a captured port reached a dual-stack
/// application around the proxy (a STRICT listener bypassed). Now both are refused, while
/// IPv4-mapped connects are still redirected; UDP passes by default, counted.
#[test]
fn native_ipv6_around_the_mesh_is_refused_both_ways_and_v4_mapped_is_redirected() {
    let (mut mesh, _servers) = ipv6_mesh("sec6", "");
    let _other_port = serve_ipv6(&mesh, "s1", 9000, "v1");
    let outside6 = ipv6_of(&mesh, "outside");
    let s1_6 = ipv6_of(&mesh, "s1");
    // The IPv6 network works for pods outside the mesh, into s1 too (a port s1's virtual
    // node does not listen on).
    let to_outside = format!("http://[{outside6}]:7000/");
    assert_eq!(
        fetch(&mesh, "s2", &to_outside, &[]),
        (Some(0), "over ipv6 from outside".into())
    );
    let (code, body) = fetch(&mesh, "outside", &format!("http://[{s1_6}]:9000/"), &[]);
    assert_eq!((code, body.as_str()), (Some(0), "over ipv6 from v1"));

    // Out of an enrolled pod: refused at connect (EPERM; curl: could not connect).
    let (code, body) = fetch(&mesh, "client", &to_outside, &[]);
    assert_eq!(code, Some(7), "{body}\n{}", mesh.agent.log());
    // Into an enrolled pod's captured port: dropped, the application never sees it — over
    // the link-local address too (the finding's way in), though that reaches s1's other port.
    let (code, body) = fetch(&mesh, "outside", &format!("http://[{s1_6}]:{PORT}/"), &[]);
    assert_eq!(code, Some(7), "{body}\n{}", mesh.agent.log());
    let link_local = format!("[{}%25eth0]", link_local_of(&mesh, "s1"));
    let (code, body) = fetch(&mesh, "outside", &format!("http://{link_local}:9000/"), &[]);
    assert_eq!((code, body.as_str()), (Some(0), "over ipv6 from v1"));
    let (code, body) = fetch(
        &mesh,
        "outside",
        &format!("http://{link_local}:{PORT}/"),
        &[],
    );
    assert_eq!(code, Some(7), "{body}\n{}", mesh.agent.log());
    // Over IPv4 that port is the proxy's.
    let s1 = mesh.node.pod("s1").unwrap().ip;
    let (_, body) = fetch(&mesh, "outside", &format!("http://{s1}:{PORT}/"), &[]);
    assert!(body.contains("(client 127.0.0.1:"), "{body}");
    // An IPv4-mapped destination is IPv4: redirected into the mesh.
    let host = format!("Host: {SERVICE}:{PORT}");
    let mapped = format!("http://[::ffff:{SERVICE_VIP}]:{PORT}/");
    let (code, body) = fetch(&mesh, "client", &mapped, &["-H", &host]);
    assert_eq!(code, Some(0), "{body}\n{}", mesh.agent.log());
    assert!(body.contains("hello from v1"), "{body}");

    // UDP passes by default (around the mesh), counted.
    let outside = start_udp_echo(&mut mesh);
    for how in ["sendto", "connect"] {
        assert_eq!(
            udp_send(&mesh, "client", &outside, UDP_PORT, how),
            "echo ping"
        );
    }

    let metrics = mesh.metrics();
    let connects = |result: &str| {
        metric_value(
            &metrics,
            &format!(r#"mesh_agent_redirect_connects_total{{result="{result}"}}"#),
        )
    };
    assert!(connects("refused_ipv6") >= 1.0, "{metrics}");
    assert!(connects("passed_udp") >= 2.0, "{metrics}");
    assert_eq!(connects("refused_udp"), 0.0, "{metrics}");
    assert!(
        metric_value(
            &metrics,
            r#"mesh_agent_inbound_refused_total{reason="ipv6"}"#
        ) >= 1.0,
        "{metrics}"
    );
    let client_ns = mesh.node.pod("client").unwrap().netns_name().to_owned();
    let by_pod = |result: &str| {
        metric_sum(
            &metrics,
            "mesh_agent_pod_connects_total",
            &[("pod", client_ns.as_str()), ("result", result)],
        )
    };
    assert!(by_pod("refused_ipv6") >= 1.0, "{metrics}");
    assert!(by_pod("passed_udp") >= 2.0, "{metrics}");
}

/// `redirect.ipv6: allow` lets enrolled pods' IPv6 go around the mesh both ways;
/// `redirect.udp: refuse` refuses their UDP but DNS and their own loopback.
#[test]
fn ipv6_allow_and_udp_refuse_are_opt_ins() {
    let (mut mesh, _servers) = ipv6_mesh("sec6allow", "redirect:\n  ipv6: allow\n  udp: refuse\n");
    let outside6 = ipv6_of(&mesh, "outside");
    let s1_6 = ipv6_of(&mesh, "s1");
    let (code, body) = fetch(&mesh, "client", &format!("http://[{outside6}]:7000/"), &[]);
    assert_eq!((code, body.as_str()), (Some(0), "over ipv6 from outside"));
    let (code, body) = fetch(&mesh, "outside", &format!("http://[{s1_6}]:{PORT}/"), &[]);
    assert_eq!((code, body.as_str()), (Some(0), "over ipv6 from v1"));

    let outside = start_udp_echo(&mut mesh);
    // From the enrolled client nothing leaves, over IPv4 or IPv6, connected or not.
    for (host, how) in [
        (outside.as_str(), "sendto"),
        (outside.as_str(), "connect"),
        (outside6.as_str(), "sendto"),
        (outside6.as_str(), "connect"),
    ] {
        assert_eq!(
            udp_send(&mesh, "client", host, UDP_PORT, how),
            "refused",
            "{host} {how}"
        );
    }
    // DNS and the pod's own loopback are not refused.
    assert_ne!(udp_send(&mesh, "client", &outside, 53, "sendto"), "refused");
    assert_ne!(
        udp_send(&mesh, "client", "127.0.0.1", 9, "sendto"),
        "refused"
    );
    let refused = metric_value(
        &mesh.metrics(),
        r#"mesh_agent_redirect_connects_total{result="refused_udp"}"#,
    );
    assert_eq!(refused, 4.0);
}
