//! What a pod can send must not take the node's mesh down or steer it (issue findings, each
//! reproduced through the real redirect): a connection to the proxy's own inbound port, a
//! connect to 0.0.0.0 reaching the node's loopback, a FIFO handed to enrollment.
use std::time::{Duration, Instant};

use tests::agent::metric_value;

use super::l7::{MeshNode, MeshSpec, all_to_v1};

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
