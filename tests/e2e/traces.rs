//! Traces end to end: the node proxy's spans of real requests (curl in the client pod, an
//! instrumented application in v1's pod) at a real OTLP receiver built on the official
//! OpenTelemetry protobuf definitions (tests/interop/otlp_receiver.py), over gRPC and HTTP;
//! W3C, X-Ray and B3 context continued; a collector that is down costing spans, not requests.
use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tests::{
    Agent, Node, Proc,
    agent::metric_value,
    mesh::{PORT, all_to_v1},
    node::NODE_IP,
};

use super::{
    TIMEOUT,
    gateway::{GatewayNode, GatewaySpec, gateway_route, to_api},
    interop::peer,
    l7::{MeshNode, MeshSpec},
};

const GRPC_PORT: u16 = 4317;
const HTTP_PORT: u16 = 4318;

/// The OTLP receiver on the node's address, writing what it receives to a file.
struct Collector {
    _proc: Proc,
    spans: PathBuf,
    _dir: tempfile::TempDir,
}

impl Collector {
    fn start(node: &Node) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let spans = dir.path().join("spans.jsonl");
        let mut command = node.node_command("python3").unwrap();
        command.args([
            &peer("otlp_receiver.py"),
            "serve",
            "--host",
            &NODE_IP.to_string(),
            "--grpc-port",
            &GRPC_PORT.to_string(),
            "--http-port",
            &HTTP_PORT.to_string(),
            "--out",
            spans.to_str().unwrap(),
        ]);
        command.stdout(std::process::Stdio::null());
        let proc = Proc::spawn("otlp receiver", command).unwrap();
        for port in [GRPC_PORT, HTTP_PORT] {
            node.wait_for_listener((NODE_IP, port).into(), TIMEOUT)
                .expect("receiver listening");
        }
        Self {
            _proc: proc,
            spans,
            _dir: dir,
        }
    }

    fn received(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.spans)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    /// The spans of `trace`, once `count` of them arrived.
    fn trace(&self, trace: &str, count: usize, agent: &Agent) -> Vec<Value> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let spans: Vec<Value> = self
                .received()
                .into_iter()
                .filter(|s| s["trace_id"] == trace)
                .collect();
            if spans.len() >= count {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {count} spans of trace {trace} arrived: {spans:#?}\nagent log:\n{}",
                spans.len(),
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The instrumented application (tests/interop/otlp_app.py) in `pod`, exporting its own
/// spans to the receiver.
fn instrumented_app(node: &Node, pod: &str, name: &str) -> Proc {
    let collector = format!("{NODE_IP}:{GRPC_PORT}");
    let app = node
        .spawn_in_pod(
            pod,
            "python3",
            &[
                &peer("otlp_app.py"),
                "--port",
                &PORT.to_string(),
                "--name",
                name,
                "--collector",
                &collector,
            ],
        )
        .expect("application");
    let addr = format!("{}:{PORT}", node.pod(pod).unwrap().ip);
    node.wait_for_listener(addr.parse().unwrap(), TIMEOUT)
        .expect("application listening");
    app
}

/// The mesh of l7.rs with every virtual node's pod enrolled (the request passes the client's
/// outbound and v1's inbound), v1 running the instrumented application, and `tracing`.
fn traced_mesh(label: &str, tracing: &str) -> MeshNode {
    // The application's own exports go straight to the collector.
    let config = format!("{tracing}redirect:\n  exclude_ports: [{GRPC_PORT}]\n");
    MeshNode::start_with_config(
        label,
        MeshSpec {
            routes: all_to_v1(),
            enrolled: &["client", "s1", "s2"],
            server: instrumented_app,
            ..Default::default()
        },
        |_| config.clone(),
    )
}

/// curl through the mesh; the trace headers the application received.
fn call(mesh: &MeshNode, args: &[&str]) -> Value {
    let (status, body, _) = mesh.curl("/hello", args);
    assert_eq!(status, 200, "{body}\nagent log:\n{}", mesh.agent.log());
    let answer: Value = serde_json::from_str(&body).unwrap();
    answer["headers"].clone()
}

fn with_kind<'a>(spans: &'a [Value], service: &str, kind: &str) -> &'a Value {
    spans
        .iter()
        .find(|s| s["service"] == service && s["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} span of {service}: {spans:#?}"))
}

/// The trace id in a traceparent value.
fn traceparent_trace(headers: &Value) -> String {
    let value = headers["traceparent"].as_str().expect("a traceparent");
    value.split('-').nth(1).unwrap().to_owned()
}

#[test]
fn one_request_is_one_trace_of_client_server_and_application_spans() {
    let tracing = format!(
        "tracing:\n  endpoint: http://{NODE_IP}:{GRPC_PORT}\n  batch_delay: 100ms\n  propagation: [w3c]\n"
    );
    let mesh = traced_mesh("trgrpc", &tracing);
    let collector = Collector::start(&mesh.node);
    let s1 = mesh.node.pod("s1").unwrap().ip;

    // No context arrives: the client's outbound starts the trace.
    let seen = call(&mesh, &[]);
    let trace = traceparent_trace(&seen);
    let spans = collector.trace(&trace, 3, &mesh.agent);
    let client = with_kind(&spans, "m/client", "CLIENT");
    let server = with_kind(&spans, "m/v1", "SERVER");
    let app = with_kind(&spans, "app-v1", "SERVER");
    assert_eq!(client["parent_span_id"], "", "the client span is the root");
    assert_eq!(server["parent_span_id"], client["span_id"]);
    assert_eq!(app["parent_span_id"], server["span_id"]);
    assert_eq!(
        seen["traceparent"],
        format!("00-{trace}-{}-01", server["span_id"].as_str().unwrap()).as_str(),
        "the application is told of the inbound span"
    );
    let attributes = &client["attributes"];
    for (key, value) in [
        ("appmesh.mesh", "m"),
        ("appmesh.reporter", "outbound"),
        ("appmesh.virtual_node", "m/client"),
        ("appmesh.virtual_service", "api.m.local"),
        ("appmesh.route", "all"),
        ("appmesh.cluster", "m/v1/8080"),
        ("appmesh.destination_virtual_node", "m/v1"),
        ("http.request.method", "GET"),
        ("url.path", "/hello"),
    ] {
        assert_eq!(attributes[key], value, "{key}: {client:#}");
    }
    assert_eq!(
        attributes["appmesh.upstream_host"],
        format!("{s1}:{PORT}").as_str()
    );
    assert_eq!(attributes["http.response.status_code"], 200);
    assert_eq!(attributes["appmesh.retries"], 0);
    assert!(attributes["http.response.body.size"].as_i64().unwrap() > 0);
    assert_eq!(client["name"], "GET all");
    assert_eq!(server["attributes"]["appmesh.reporter"], "inbound");
    assert_eq!(server["attributes"]["appmesh.route"], "m/v1/inbound/8080");
    assert_eq!(server["attributes"]["http.response.status_code"], 200);
    // Timings: the server span lies within the client span; the first byte within each.
    let span_start = |s: &Value| s["start"].as_u64().unwrap();
    let span_end = |s: &Value| s["end"].as_u64().unwrap();
    assert!(span_start(server) >= span_start(client) && span_end(server) <= span_end(client));
    for span in [client, server] {
        let first_byte = span["events"]["first_byte"].as_u64().expect("first_byte");
        assert!(first_byte <= span_end(span) - span_start(span), "{span:#}");
        assert_eq!(span["status"], "UNSET");
    }

    // An X-Ray context arrives (a caller behind an ALB or an X-Ray SDK): its trace goes on.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let root = format!("1-{now:08x}-0123456789abcdef01234567");
    let header = format!("X-Amzn-Trace-Id: Root={root};Parent=53995c3f42cd8ad8;Sampled=1");
    let seen = call(&mesh, &["-H", &header]);
    let trace = format!("{now:08x}0123456789abcdef01234567");
    let spans = collector.trace(&trace, 3, &mesh.agent);
    let client = with_kind(&spans, "m/client", "CLIENT");
    let server = with_kind(&spans, "m/v1", "SERVER");
    assert_eq!(client["parent_span_id"], "53995c3f42cd8ad8");
    assert_eq!(server["parent_span_id"], client["span_id"]);
    with_kind(&spans, "app-v1", "SERVER");
    let server_id = server["span_id"].as_str().unwrap();
    assert_eq!(
        seen["x-amzn-trace-id"],
        format!("Root={root};Parent={server_id};Sampled=1").as_str(),
        "the X-Ray header the application reads names the inbound span"
    );
    assert_eq!(traceparent_trace(&seen), trace);
}

#[test]
fn http_export_b3_context_sampling_and_a_collector_that_is_down() {
    let tracing = format!(
        "tracing:\n  endpoint: http://{NODE_IP}:{HTTP_PORT}\n  protocol: http\n  sampling_rate: 0\n  batch_delay: 100ms\n  export_timeout: 5s\n  propagation: [b3multi]\n"
    );
    let mesh = traced_mesh("trhttp", &tracing);
    let collector = Collector::start(&mesh.node);

    // Rate 0: a trace started here is not sampled, and the next hops are told so.
    let unsampled = call(&mesh, &[]);
    assert_eq!(unsampled["x-b3-sampled"], "0", "{unsampled}");
    let unsampled_trace = unsampled["x-b3-traceid"].as_str().unwrap().to_owned();

    // A caller's B3 decision to sample stands.
    let trace = "80f198ee56343ba864fe8b2a57d3eff7";
    let seen = call(&mesh, &["-H", &format!("b3: {trace}-e457b5a2e4d86bd1-1")]);
    let spans = collector.trace(trace, 2, &mesh.agent);
    let client = with_kind(&spans, "m/client", "CLIENT");
    let server = with_kind(&spans, "m/v1", "SERVER");
    assert_eq!(client["parent_span_id"], "e457b5a2e4d86bd1");
    assert_eq!(server["parent_span_id"], client["span_id"]);
    let server_id = server["span_id"].as_str().unwrap();
    assert_eq!(seen["x-b3-traceid"], trace);
    assert_eq!(seen["x-b3-spanid"], server_id);
    assert_eq!(seen["x-b3-parentspanid"], client["span_id"]);
    assert_eq!(seen["x-b3-sampled"], "1");
    // The single header it came in is rewritten too, so no hop reads a stale parent.
    assert_eq!(
        seen["b3"],
        format!(
            "{trace}-{server_id}-1-{}",
            client["span_id"].as_str().unwrap()
        )
        .as_str()
    );
    assert!(
        collector
            .received()
            .iter()
            .all(|s| s["trace_id"] != unsampled_trace.as_str()),
        "the unsampled trace was exported"
    );

    // The agent counted that export (the receiver may write spans before it answers).
    let deadline = Instant::now() + TIMEOUT;
    while metric_value(&mesh.metrics(), "mesh_agent_trace_spans_exported_total") < 2.0 {
        assert!(
            Instant::now() < deadline,
            "the export is not counted:\n{}",
            mesh.metrics()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The collector goes away: requests still pass, their spans are dropped and counted.
    drop(collector);
    for _ in 0..3 {
        call(&mesh, &["-H", &format!("b3: {trace}-e457b5a2e4d86bd1-1")]);
    }
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let metrics = mesh.metrics();
        let dropped = metric_value(
            &metrics,
            r#"mesh_agent_trace_spans_dropped_total{reason="export_failed"}"#,
        );
        if dropped >= 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "no dropped spans:\n{metrics}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_gateway_request_is_the_gateways_span_then_the_destinations() {
    let gateway = GatewayNode::start_with(
        "trgw",
        GatewaySpec {
            gateway_routes: vec![gateway_route("api", to_api(json!({"prefix": "/"}), None))],
            agent_config: format!(
                "tracing:\n  endpoint: http://{NODE_IP}:{GRPC_PORT}\n  batch_delay: 100ms\n  propagation: [xray]\n"
            ),
            ..Default::default()
        },
    );
    // The collector comes up after the gateway's readiness probes failed to export: the
    // exporter waits that out, then spans flow again; requests go on until one's trace
    // arrives whole (a request's two spans may straddle the last batch dropped in the wait).
    let collector = Collector::start(&gateway.node);
    let deadline = Instant::now() + TIMEOUT;
    let spans = loop {
        let (status, body, _) = gateway.curl("/items", &[]);
        assert_eq!(status, 200, "{body}");
        std::thread::sleep(Duration::from_millis(200));
        let received = collector.received();
        let whole = received
            .iter()
            .filter(|s| s["service"] == "m/gateway/gw" && s["attributes"]["url.path"] == "/items")
            .map(|entry| {
                received
                    .iter()
                    .filter(|s| s["trace_id"] == entry["trace_id"])
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .find(|trace| trace.len() >= 2);
        if let Some(spans) = whole {
            break spans;
        }
        assert!(
            Instant::now() < deadline,
            "no whole gateway trace: {received:#?}\n{}",
            gateway.agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // The X-Ray header alone carries the context from the gateway to v1's inbound side.
    let entry = with_kind(&spans, "m/gateway/gw", "SERVER");
    let destination = with_kind(&spans, "m/v1", "SERVER");
    assert_eq!(
        entry["parent_span_id"], "",
        "the trace starts at the gateway"
    );
    assert_eq!(destination["parent_span_id"], entry["span_id"]);
    let attributes = &entry["attributes"];
    for (key, value) in [
        ("appmesh.reporter", "gateway"),
        ("appmesh.virtual_node", "m/gateway/gw"),
        ("appmesh.virtual_service", "api.m.local"),
        ("appmesh.destination_virtual_node", "m/v1"),
        ("appmesh.cluster", "m/v1/8080"),
        ("url.path", "/items"),
    ] {
        assert_eq!(attributes[key], value, "{key}: {entry:#}");
    }
    assert_eq!(destination["attributes"]["url.path"], "/items");
}
