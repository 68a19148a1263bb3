//! Interoperability through the real redirect, with implementations the project did not
//! write on both ends: gRPC's C core (Python grpcio) as client and server, tonic against it
//! both ways, and a WebSocket client and server (Python websockets). Each cell runs the same
//! client twice — through the mesh (the client pod's outbound, v1's pod's inbound capture)
//! and directly to an identical server outside the mesh — and asserts the same results.
use std::time::Duration;

use serde_json::{Value, json};
use tests::{
    Node, Proc,
    mesh::{PORT, SERVICE},
};

use super::{
    TIMEOUT,
    l7::{MeshNode, MeshSpec, SERVICE_VIP, route},
    meshtb,
};

pub(super) fn peer(script: &str) -> String {
    format!("{}/interop/{script}", env!("CARGO_MANIFEST_DIR"))
}

/// s1 (v1, in the mesh) and s3 (outside it) run the grpcio peer; s2 (v2) runs tonic's.
fn grpc_servers(node: &Node, pod: &str, _name: &str) -> Proc {
    let server = match pod {
        "s2" => node.spawn_in_pod(
            pod,
            meshtb(),
            &["grpc-server", "--port", "8080", "--name", "tonic"],
        ),
        _ => node.spawn_in_pod(
            pod,
            "python3",
            &[
                &peer("grpc_peer.py"),
                "serve",
                "--port",
                "8080",
                "--name",
                "peer",
            ],
        ),
    }
    .expect("gRPC server");
    let addr = format!("{}:{PORT}", node.pod(pod).expect("pod").ip);
    node.wait_for_listener(addr.parse().expect("address"), TIMEOUT)
        .expect("gRPC server listening");
    server
}

/// Every pod's application is the WebSocket echo peer.
fn websocket_servers(node: &Node, pod: &str, _name: &str) -> Proc {
    let server = node
        .spawn_in_pod(
            pod,
            "python3",
            &[&peer("ws_peer.py"), "serve", "--port", "8080"],
        )
        .expect("WebSocket server");
    let addr = format!("{}:{PORT}", node.pod(pod).expect("pod").ip);
    node.wait_for_listener(addr.parse().expect("address"), TIMEOUT)
        .expect("WebSocket server listening");
    server
}

/// Runs `program` in `pod` and returns its standard output (failing with its error output).
fn run(mesh: &MeshNode, pod: &str, program: &str, args: &[&str]) -> String {
    let output = mesh
        .node
        .run_in_pod(pod, program, args, Duration::from_secs(120))
        .expect("client runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{program} {args:?} in {pod}: {stdout}\n{}\n{}",
        String::from_utf8_lossy(&output.stderr),
        mesh.agent.log()
    );
    stdout
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn grpc_implementations_see_the_same_calls_through_the_mesh_as_direct() {
    // Health checks with `x-impl: tonic` metadata go to v2 (tonic's server); the rest to v1.
    let grpc_route = |name: &str, priority: i64, matching: Value, node: &str| {
        json!({"meshName": "m", "virtualRouterName": "api", "routeName": name, "spec": {
            "priority": priority,
            "grpcRoute": {
                "match": matching,
                "action": {"weightedTargets": [{"virtualNode": node, "weight": 1}]}}}})
    };
    let health = "grpc.health.v1.Health";
    let routes = vec![
        grpc_route(
            "tonic",
            0,
            json!({"serviceName": health, "metadata": [{"name": "x-impl", "match": {"exact": "tonic"}}]}),
            "v2",
        ),
        grpc_route("health", 1, json!({"serviceName": health}), "v1"),
        grpc_route("echo", 2, json!({"serviceName": "interop.Echo"}), "v1"),
    ];
    let mesh = MeshNode::start(
        "interopgrpc",
        MeshSpec {
            protocol: "grpc",
            routes,
            enrolled: &["client", "s1"],
            server: grpc_servers,
            ..Default::default()
        },
    );
    let authority = format!("{SERVICE}:{PORT}");
    let through_mesh = format!("{SERVICE_VIP}:{PORT}");
    let outside_peer = format!("{}:{PORT}", mesh.node.pod("s3").expect("s3").ip);
    let tonic_server = format!("{}:{PORT}", mesh.node.pod("s2").expect("s2").ip);
    let grpc_peer = peer("grpc_peer.py");

    // grpcio ↔ grpcio: unary, large messages, error status, all three kinds of streaming,
    // a deadline, a cancelled call — the same results both ways.
    let call = |pod: &str, target: &str| {
        json_of(&run(
            &mesh,
            pod,
            "python3",
            &[
                &grpc_peer,
                "call",
                "--target",
                target,
                "--authority",
                &authority,
            ],
        ))
    };
    let direct = call("outside", &outside_peer);
    let meshed = call("client", &through_mesh);
    assert_eq!(meshed, direct, "through the mesh vs direct");
    // And what they agree on is what the cases ask for.
    assert_eq!(
        direct["unary"]["trailing"],
        json!([["x-echo", "m1"], ["x-served-by", "peer"]])
    );
    assert_eq!(
        direct["large_unary"],
        json!({"bytes": 4194304, "same": true})
    );
    assert_eq!(direct["status"]["error"]["code"], "NOT_FOUND");
    assert_eq!(direct["server_stream"]["messages"], 200);
    assert_eq!(direct["client_stream"]["response"], "45150");
    assert_eq!(direct["bidi"], json!({"messages": 100, "same": true}));
    assert_eq!(
        direct["deadline"],
        json!({"code": "DEADLINE_EXCEEDED", "within_1s": true})
    );
    assert_eq!(
        direct["cancel"],
        json!({"client": "CANCELLED", "server_saw_cancellation": true})
    );

    // tonic's client → grpcio's server.
    let tonic_check = |pod: &str, to: &str| {
        run(
            &mesh,
            pod,
            meshtb(),
            &[
                "grpc-check",
                "--to",
                to,
                "--authority",
                &authority,
                "--service",
                "interop",
            ],
        )
    };
    assert_eq!(
        tonic_check("outside", &outside_peer).trim(),
        "status=SERVING"
    );
    assert_eq!(
        tonic_check("client", &through_mesh).trim(),
        "status=SERVING"
    );

    // grpcio's client → tonic's server (routed by metadata to v2).
    let grpcio_check = |pod: &str, target: &str| {
        run(
            &mesh,
            pod,
            "python3",
            &[
                &grpc_peer,
                "check",
                "--target",
                target,
                "--authority",
                &authority,
                "--metadata",
                "x-impl=tonic",
            ],
        )
    };
    assert_eq!(
        grpcio_check("outside", &tonic_server).trim(),
        "status=SERVING"
    );
    assert_eq!(
        grpcio_check("client", &through_mesh).trim(),
        "status=SERVING"
    );
}

#[test]
fn websockets_pass_through_the_mesh_as_direct() {
    let mesh = MeshNode::start(
        "interopws",
        MeshSpec {
            routes: vec![route(
                "all",
                None,
                json!({"prefix": "/"}),
                &[("v1", 1)],
                json!({}),
            )],
            enrolled: &["client", "s1"],
            server: websocket_servers,
            ..Default::default()
        },
    );
    let ws_peer = peer("ws_peer.py");
    let uri = format!("ws://{SERVICE}:{PORT}/echo");
    let call = |pod: &str, connect: &str| {
        json_of(&run(
            &mesh,
            pod,
            "python3",
            &[&ws_peer, "call", "--connect", connect, "--uri", &uri],
        ))
    };
    let outside = format!("{}:{PORT}", mesh.node.pod("s3").expect("s3").ip);
    let direct = call("outside", &outside);
    let meshed = call("client", &format!("{SERVICE_VIP}:{PORT}"));
    assert_eq!(meshed, direct, "through the mesh vs direct");
    assert_eq!(
        direct,
        json!({"binary": [0, 1, 2], "close_code": 4000, "large_same": true, "path": "/echo", "text": "hello"})
    );
    // The upgrade was routed and counted like any request: a 101 from v1.
    let metrics = mesh.metrics();
    assert!(
        metrics.contains(r#"destination_virtual_node="m/v1",route="all",response_code="101""#),
        "{metrics}"
    );
}

/// Every pod's application is meshtb's HTTP server answering as `app`, so answers through
/// the mesh and direct differ only in the client address the server saw.
fn same_http_servers(node: &Node, pod: &str, _name: &str) -> Proc {
    let server = node
        .spawn_in_pod(
            pod,
            meshtb(),
            &["http-server", "--port", "8080", "--name", "app"],
        )
        .expect("HTTP server");
    let addr = format!("{}:{PORT}", node.pod(pod).expect("pod").ip);
    node.wait_for_listener(addr.parse().expect("address"), TIMEOUT)
        .expect("HTTP server listening");
    server
}

/// An answer without the client address the server saw (the proxy's, or the pod's).
fn without_client(text: &str) -> String {
    text.lines()
        .map(|line| line.split(" (client ").next().unwrap_or(line))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `N succeeded, M failed` line of h2load's summary.
fn h2load_outcome(text: &str) -> String {
    text.lines()
        .find(|line| line.starts_with("requests:"))
        .map(|line| {
            line.split(", ")
                .skip(3)
                .take(2)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_else(|| panic!("no h2load summary in {text}"))
}

#[test]
fn http_clients_see_the_same_through_the_mesh_as_direct() {
    // HTTP/2 toward the endpoints: HTTP/1.1 clients are translated on the way.
    let mesh = MeshNode::start(
        "interophttp",
        MeshSpec {
            protocol: "http2",
            routes: vec![
                json!({"meshName": "m", "virtualRouterName": "api", "routeName": "all",
                "spec": {"http2Route": {"match": {"prefix": "/"},
                "action": {"weightedTargets": [{"virtualNode": "v1", "weight": 1}]}}}}),
            ],
            enrolled: &["client", "s1"],
            server: same_http_servers,
            ..Default::default()
        },
    );
    let outside = mesh.node.pod("s3").expect("s3").ip.to_string();
    let resolve_mesh = format!("{SERVICE}:{PORT}:{SERVICE_VIP}");
    let resolve_direct = format!("{SERVICE}:{PORT}:{outside}");
    let url = format!("http://{SERVICE}:{PORT}");
    // Each client, direct (outside → s3, no mesh) and through the mesh (client → v1).
    let both = |program: &str, args: &dyn Fn(&str) -> Vec<String>| {
        let run_with = |pod: &str, resolve: &str| {
            let args = args(resolve);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run(&mesh, pod, program, &args)
        };
        (
            run_with("outside", &resolve_direct),
            run_with("client", &resolve_mesh),
        )
    };

    // curl, HTTP/1.1: a GET, and a 3 MB upload that waits for 100-continue.
    let files = tempfile::tempdir().expect("temporary directory");
    let upload = files.path().join("upload.bin");
    std::fs::write(&upload, vec![7u8; 3 << 20]).expect("upload file");
    let (direct, meshed) = both("curl", &|resolve| {
        vec![
            "-sS".into(),
            "--resolve".into(),
            resolve.into(),
            "-H".into(),
            "Expect: 100-continue".into(),
            "-w".into(),
            "|%{http_code} %{http_version}\n".into(),
            format!("{url}/get"),
            "-T".into(),
            upload.display().to_string(),
            format!("{url}/put"),
        ]
    });
    assert_eq!(without_client(&meshed), without_client(&direct));
    assert_eq!(
        without_client(&direct),
        "hello from app path=/get\n|200 1.1\nhello from app path=/put\n|200 1.1",
        "{direct}"
    );

    // curl, HTTP/2 with prior knowledge.
    let (direct, meshed) = both("curl", &|resolve| {
        vec![
            "-sS".into(),
            "--http2-prior-knowledge".into(),
            "--resolve".into(),
            resolve.into(),
            "-w".into(),
            "|%{http_code} %{http_version}\n".into(),
            format!("{url}/h2"),
        ]
    });
    assert_eq!(without_client(&meshed), without_client(&direct));
    assert_eq!(
        without_client(&direct),
        "hello from app path=/h2\n|200 2",
        "{direct}"
    );

    // h2load (nghttp2): 600 requests over 3 connections, 20 streams each at a time.
    let h2load = |target: &str, pod: &str| {
        run(
            &mesh,
            pod,
            "h2load",
            &[
                "-n",
                "600",
                "-c",
                "3",
                "-m",
                "20",
                "-H",
                &format!(":authority: {SERVICE}:{PORT}"),
                target,
            ],
        )
    };
    let direct = h2load(&format!("http://{outside}:{PORT}/load"), "outside");
    let meshed = h2load(&format!("http://{SERVICE_VIP}:{PORT}/load"), "client");
    assert_eq!(h2load_outcome(&meshed), h2load_outcome(&direct), "{meshed}");
    assert_eq!(h2load_outcome(&direct), "600 succeeded, 0 failed");

    // Python's httpx over HTTP/2 (prior knowledge): a GET and a streamed POST.
    let script = "import httpx, sys\n\
        with httpx.Client(http1=False, http2=True, timeout=10) as c:\n\
        \x20   for method, body in [('GET', None), ('POST', b'x' * 100000)]:\n\
        \x20       r = c.request(method, 'http://' + sys.argv[1] + ':8080/httpx', content=body,\n\
        \x20                     headers={'host': 'api.m.local:8080'})\n\
        \x20       print(r.status_code, r.http_version, r.headers.get('x-served-by'), r.text.strip())\n";
    let httpx = |pod: &str, host: &str| run(&mesh, pod, "python3", &["-c", script, host]);
    let direct = httpx("outside", &outside);
    let meshed = httpx("client", SERVICE_VIP);
    assert_eq!(without_client(&meshed), without_client(&direct));
    assert_eq!(
        without_client(&direct),
        "200 HTTP/2 app hello from app path=/httpx\n200 HTTP/2 app hello from app path=/httpx"
    );

    // wrk (HTTP/1.1 keep-alive load): two seconds, every answer a 2xx both ways.
    let wrk = |pod: &str, host: &str| {
        run(
            &mesh,
            pod,
            "wrk",
            &[
                "-t1",
                "-c4",
                "-d2s",
                "-H",
                &format!("Host: {SERVICE}:{PORT}"),
                &format!("http://{host}:{PORT}/wrk"),
            ],
        )
    };
    for (side, summary) in [
        ("direct", wrk("outside", &outside)),
        ("mesh", wrk("client", SERVICE_VIP)),
    ] {
        assert!(!summary.contains("Non-2xx"), "{side}: {summary}");
        assert!(!summary.contains("Socket errors"), "{side}: {summary}");
        let requests: u64 = summary
            .lines()
            .find_map(|line| line.trim().split_once(" requests in "))
            .and_then(|(n, _)| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("{side}: no request count in {summary}"));
        assert!(requests > 100, "{side}: {summary}");
    }

    // Python's http.client: a GET and a chunked POST on one keep-alive connection.
    let script = "import http.client, sys\n\
        c = http.client.HTTPConnection(sys.argv[1], 8080, timeout=10)\n\
        for method, body in [('GET', None), ('POST', iter([b'abc', b'defg']))]:\n\
        \x20   c.request(method, '/py', body=body, headers={'Host': 'api.m.local:8080'})\n\
        \x20   r = c.getresponse()\n\
        \x20   print(r.status, r.version, r.getheader('x-served-by'), r.read().decode().strip())\n";
    let python = |pod: &str, host: &str| run(&mesh, pod, "python3", &["-c", script, host]);
    let direct = python("outside", &outside);
    let meshed = python("client", SERVICE_VIP);
    assert_eq!(without_client(&meshed), without_client(&direct));
    assert_eq!(
        without_client(&direct),
        "200 11 app hello from app path=/py\n200 11 app hello from app path=/py"
    );
}
