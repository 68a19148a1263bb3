//! Observability for real: a Prometheus server scraping the agent while the mesh carries a
//! known number of requests, queried through its HTTP API; promtool checking the exposition.
use std::{io::Write, process::Stdio, time::Duration};

use serde_json::Value;
use tests::{Agent, Proc};

use super::l7::{MeshNode, MeshSpec, all_to_v1};

const PROMETHEUS: &str = "127.0.0.1:19090";

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Prometheus' answer to an instant query (`None` if it refused it).
fn answer(mesh: &MeshNode, promql: &str) -> Option<Value> {
    let path = format!("/api/v1/query?query={}", percent_encode(promql));
    let (status, body) = mesh
        .node
        .http("GET", PROMETHEUS.parse().ok()?, &path)
        .ok()?;
    if status != 200 {
        return None;
    }
    serde_json::from_str(&body).ok()
}

/// The value of an instant query's single result, if there is one.
fn query(mesh: &MeshNode, promql: &str) -> Option<f64> {
    answer(mesh, promql)?["data"]["result"][0]["value"][1]
        .as_str()?
        .parse()
        .ok()
}

fn repo_file(path: &str) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every panel query of the Grafana dashboard, with Grafana's variables filled in.
fn dashboard_queries() -> Vec<String> {
    let dashboard: Value = serde_json::from_str(&repo_file(
        "deploy/kubernetes/monitoring/mesh-agent-dashboard.json",
    ))
    .expect("the dashboard is JSON");
    dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .map(|e| {
            e.replace("$__rate_interval", "1m")
                .replace("$service", ".*")
        })
        .collect()
}

#[test]
fn prometheus_scrapes_the_per_service_counts_that_were_sent() {
    let mesh = MeshNode::start(
        "obsprom",
        MeshSpec {
            routes: all_to_v1(),
            ..Default::default()
        },
    );
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: mesh-agent\n    static_configs:\n      - targets: ['{}']\n",
            Agent::admin_addr()
        ),
    )
    .unwrap();
    let mut command = mesh.node.node_command("prometheus").unwrap();
    command
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            work.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={PROMETHEUS}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _prometheus = Proc::spawn("prometheus", command).unwrap();
    mesh.node
        .wait_for_listener(PROMETHEUS.parse().unwrap(), Duration::from_secs(30))
        .unwrap();

    let answers = mesh.load(300, &[]);
    assert_eq!(answers.matches("hello from v1 ").count(), 300);
    let sent = r#"sum(mesh_requests_total{reporter="outbound",source_virtual_node="m/client",destination_virtual_service="api.m.local",destination_virtual_node="m/v1",route="all",response_code="200"})"#;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while query(&mesh, sent) != Some(300.0) {
        assert!(
            std::time::Instant::now() < deadline,
            "Prometheus never saw 300 requests: {:?}",
            query(&mesh, sent)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // Latency from the histogram: the requests were sub-millisecond to a few milliseconds.
    let p99 = query(
        &mesh,
        r#"histogram_quantile(0.99, sum by (le) (mesh_request_duration_seconds_bucket{route="all"}))"#,
    )
    .expect("a p99 from the histogram");
    assert!(p99 > 0.0 && p99 <= 0.1, "p99 {p99}");

    // Every dashboard query is valid PromQL, and the per-service ones see the traffic.
    let queries = dashboard_queries();
    assert!(queries.len() >= 10);
    for promql in &queries {
        let reply = answer(&mesh, promql).unwrap_or_else(|| panic!("Prometheus refused {promql}"));
        assert_eq!(reply["status"], "success", "{promql}: {reply}");
    }
    // rate() needs two scrapes of the series.
    let graph = &queries[0];
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while answer(&mesh, graph)
        .is_none_or(|r| r["data"]["result"].as_array().is_none_or(Vec::is_empty))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the service graph shows nothing: {graph}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    // promtool accepts the exposition as Prometheus lints it.
    let text = mesh.metrics();
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = promtool.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// (promtool checks the rules themselves: agent/tests/install.rs.)
#[test]
fn alert_rules_and_dashboard_name_only_documented_metrics() {
    // Every mesh metric the rules and the dashboard use is one docs/metrics.md lists.
    let documented = repo_file("docs/metrics.md");
    let rules = repo_file("deploy/kubernetes/monitoring/prometheus-rule.yaml");
    let mut text = rules;
    for promql in dashboard_queries() {
        text.push('\n');
        text.push_str(&promql);
    }
    let used: std::collections::BTreeSet<String> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("mesh_"))
        .map(|w| w.trim_end_matches("_bucket").to_owned())
        .collect();
    assert!(used.len() >= 8, "{used:?}");
    for metric in used {
        assert!(
            documented.contains(&format!("`{metric}`")),
            "{metric} is not in docs/metrics.md"
        );
    }
}

/// Lines of a log file (empty if it is not there yet).
fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn wait_for_lines(path: &std::path::Path, count: usize) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let found = lines(path);
        if found.len() >= count || std::time::Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn access_logs_write_a_line_per_request_in_json_and_text_and_follow_rotation() {
    let logs = tempfile::tempdir().unwrap();
    let outbound = logs.path().join("client.log");
    let inbound = logs.path().join("v1.log");
    let json_format: Vec<Value> = [
        ("method", "%REQ(:METHOD)%"),
        ("path", "%REQ(:PATH)%"),
        ("code", "%RESPONSE_CODE%"),
        ("flags", "%RESPONSE_FLAGS%"),
        ("received", "%BYTES_RECEIVED%"),
        ("sent", "%BYTES_SENT%"),
        ("cluster", "%UPSTREAM_CLUSTER%"),
        ("upstream", "%UPSTREAM_HOST%"),
        ("request_id", "%REQ(X-REQUEST-ID)%"),
        ("node", "%VIRTUAL_NODE%"),
        ("start", "%START_TIME%"),
    ]
    .iter()
    .map(|(key, value)| serde_json::json!({"key": key, "value": value}))
    .collect();
    let text_format = "%REQ(:METHOD)% %REQ(:PATH)% %PROTOCOL% %RESPONSE_CODE% %BYTES_RECEIVED% %REQ(X-REQUEST-ID)% %VIRTUAL_NODE%\n";
    let mut mesh = MeshNode::start(
        "obslog",
        MeshSpec {
            routes: all_to_v1(),
            enrolled: &["client", "s1"],
            logging: vec![
                (
                    "client",
                    serde_json::json!({"accessLog": {"file": {"path": outbound, "format": {"json": json_format}}}}),
                ),
                (
                    "v1",
                    serde_json::json!({"accessLog": {"file": {"path": inbound, "format": {"text": text_format}}}}),
                ),
            ],
            ..MeshSpec::default()
        },
    );
    let mut bodies = Vec::new();
    for index in 0..5 {
        let (status, body, _) = mesh.curl(&format!("/get/{index}"), &[]);
        assert_eq!(status, 200, "{body}");
        bodies.push(body);
    }
    let (status, _, _) = mesh.curl("/post", &["-d", "hello"]);
    assert_eq!(status, 200);
    let (status, _, _) = mesh.curl("/", &["-H", "Host: nowhere.m.local"]);
    assert_eq!(status, 404);

    let outbound_lines = wait_for_lines(&outbound, 7);
    assert_eq!(outbound_lines.len(), 7, "{outbound_lines:#?}");
    let entries: Vec<Value> = outbound_lines
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}")))
        .collect();
    for (index, entry) in entries[..5].iter().enumerate() {
        assert_eq!(entry["method"], "GET");
        assert_eq!(entry["path"], format!("/get/{index}"));
        assert_eq!(entry["code"], 200, "{entry}");
        assert_eq!(entry["flags"], "-");
        assert_eq!(entry["received"], 0);
        assert_eq!(entry["sent"], bodies[index].len(), "{entry}");
        assert_eq!(entry["cluster"], "m/v1/8080");
        assert_eq!(
            entry["upstream"],
            format!("{}:8080", mesh.node.pod("s1").unwrap().ip)
        );
        assert_eq!(entry["node"], "m/client");
        assert!(entry["start"].as_str().unwrap().ends_with('Z'), "{entry}");
    }
    assert_eq!(entries[5]["method"], "POST");
    assert_eq!(entries[5]["received"], 5, "{}", entries[5]);
    assert_eq!(entries[6]["code"], 404);
    assert_eq!(entries[6]["flags"], "NR");
    assert_eq!(entries[6]["cluster"], Value::Null);

    // The destination's side logs the same requests, with the id the caller's side gave them.
    let inbound_lines = wait_for_lines(&inbound, 6);
    assert_eq!(inbound_lines.len(), 6, "{inbound_lines:#?}");
    for (line, entry) in inbound_lines.iter().zip(&entries) {
        let id = entry["request_id"].as_str().unwrap();
        assert_eq!(id.len(), 36, "a generated UUID: {entry}");
        let method = entry["method"].as_str().unwrap();
        let path = entry["path"].as_str().unwrap();
        let received = &entry["received"];
        assert_eq!(
            line,
            &format!("{method} {path} HTTP/1.1 200 {received} {id} m/v1"),
        );
    }

    // logrotate moves the file and signals: the next request goes to a new file.
    let rotated = logs.path().join("client.log.1");
    std::fs::rename(&outbound, &rotated).unwrap();
    mesh.signal_agent(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    let (status, _, _) = mesh.curl("/after-rotation", &[]);
    assert_eq!(status, 200);
    let fresh = wait_for_lines(&outbound, 1);
    assert_eq!(fresh.len(), 1, "{fresh:#?}");
    assert!(fresh[0].contains("/after-rotation"), "{}", fresh[0]);

    // A client that gives up before the answer: still a line, code 0, flag DC.
    let (status, _, _) = mesh.curl(
        "/slow",
        &["-H", "x-meshtb-delay-ms: 3000", "--max-time", "1"],
    );
    assert_eq!(status, 0, "curl gave up");
    let fresh = wait_for_lines(&outbound, 2);
    assert_eq!(fresh.len(), 2, "{fresh:#?}");
    let gave_up: Value = serde_json::from_str(&fresh[1]).unwrap();
    assert_eq!(
        (&gave_up["path"], &gave_up["code"], &gave_up["flags"]),
        (&Value::from("/slow"), &Value::from(0), &Value::from("DC")),
        "{gave_up}"
    );
    assert_eq!(lines(&rotated).len(), 7);
    let metrics = mesh.metrics();
    let written = tests::agent::metric_value(
        &metrics,
        &format!(
            "mesh_agent_access_log_lines_total{{path=\"{}\",result=\"written\"}}",
            outbound.display()
        ),
    );
    assert_eq!(written, 9.0, "{metrics}");
    // The kernel counted the client pod's connects, one per curl, under its virtual node.
    let pod = mesh.node.pod("client").unwrap().netns_name().to_owned();
    let connects = tests::agent::metric_value(
        &metrics,
        &format!(
            "mesh_agent_pod_connects_total{{pod=\"{pod}\",virtual_node=\"m/client\",destination_virtual_node=\"unknown\",port=\"8080\",result=\"redirected\"}}"
        ),
    );
    assert_eq!(connects, 9.0, "{metrics}");
}
