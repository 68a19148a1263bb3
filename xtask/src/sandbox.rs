//! `cargo xtask sandbox`: a throwaway mesh node running an App Mesh mesh — a client pod
//! calling `products` and `prices`, prices split 80/20 between v1 and v2, and a virtual
//! gateway taking an `internet` pod outside the mesh to both — through the real redirect and
//! node proxy, with per-service counts from the agent's /metrics and the trace of one request
//! as an OTLP receiver got it.
use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use ::tests::{Agent, Node, Proc, agent::config_for, node::NODE_IP};
use anyhow::{Context as _, bail};

use crate::build::{self, Profile, step};

const SHORT: Duration = Duration::from_secs(10);
const PORT: u16 = 8080;
const PRODUCTS: &str = "products.sandbox.local";
const PRICES: &str = "prices.sandbox.local";
/// A port no virtual node of the mesh listens on.
const LEGACY_PORT: u16 = 7000;
/// Virtual gateway `ingress`'s listener port (deploy/examples/sandbox/vg-ingress.json).
const GATEWAY: &str = "sandbox/gateway/ingress";
const GATEWAY_PORT: u16 = 8088;

pub fn run(once: bool) -> anyhow::Result<()> {
    build::require_root("the sandbox")?;
    let binaries = build::build(Profile::Dev)?;
    // SAFETY: set before any thread that reads the environment exists.
    unsafe { std::env::set_var("MESH_AGENT_BIN", &binaries.agent) };
    let meshtb = binaries.meshtb.to_str().context("meshtb path")?.to_owned();

    // Ctrl-C reaches the whole foreground process group: the agent drains and exits, the
    // servers end, and this process stops between steps and tears the node down.
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&interrupted);
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("installing the Ctrl-C handler")?;

    step("creating the sandbox node (leftovers of earlier runs are removed first)");
    let mut node = Node::create("sandbox")?;
    let mut ips = BTreeMap::new();
    for pod in [
        "client",
        "products",
        "prices-v1",
        "prices-v2",
        "legacy",
        "ingress",
        "internet",
    ] {
        let ip = node.add_pod(pod)?.ip;
        println!(
            "  pod {pod:<10} {ip:<12} netns {}",
            node.pod(pod)?.netns_name()
        );
        ips.insert(pod, ip);
    }
    println!("  cgroup         {}", node.cgroup_path().display());

    step("starting the services: meshtb http-server in products, prices-v1, prices-v2, legacy");
    let mut servers: Vec<Proc> = Vec::new();
    for (pod, port) in [
        ("products", PORT),
        ("prices-v1", PORT),
        ("prices-v2", PORT),
        ("legacy", LEGACY_PORT),
    ] {
        let port_arg = port.to_string();
        servers.push(node.spawn_in_pod(
            pod,
            &meshtb,
            &["http-server", "--port", &port_arg, "--name", pod],
        )?);
        node.wait_for_listener((ips[pod], port).into(), SHORT)?;
    }

    let workdir = std::env::temp_dir().join(format!("mesh-sandbox-{}", std::process::id()));
    std::fs::create_dir_all(&workdir)?;
    let mesh_dir = build::workspace_root().join("deploy/examples/sandbox");
    let registry = workdir.join("registry.json");
    std::fs::write(&registry, registry_json(&ips))?;
    step(
        "starting mesh-agent: the mesh from deploy/examples/sandbox (embedded control plane), pod addresses from a Cloud Map-style registry, automatic mTLS (a CA made in the work directory)",
    );
    println!("{}", indent(&registry_json(&ips)));
    // Every pod but legacy and internet is enrolled; which virtual node each is comes from
    // the mesh's endpoints (their addresses in the registry), but for the ingress pod, which
    // is enrolled as the virtual gateway.
    let (receiver, spans) = start_trace_receiver(&node, &workdir)?;
    servers.push(receiver);
    let config = config_for(
        &node,
        &["client", "products", "prices-v1", "prices-v2"],
        &tracing_config(),
    )?
    .replace(
        "netns: [",
        &format!(
            "netns: [\"{}={GATEWAY}\", ",
            node.pod("ingress")?.netns_name()
        ),
    );
    let mut agent = Agent::start_with_args(
        &node,
        &config,
        &workdir,
        &[
            "--mesh",
            mesh_dir.to_str().context("mesh path")?,
            "--registry",
            registry.to_str().context("registry path")?,
            "--auto-mtls-ca-dir",
            workdir.join("ca").to_str().context("CA path")?,
        ],
    )?;
    println!(
        "  agent pid {} ready; log {}",
        agent.pid(),
        agent.log_path.display()
    );
    wait_for_endpoints(&node, &agent)?;
    wait_for_certificates(&node, &agent)?;
    wait_for_gateway(&node, &agent, ips["ingress"])?;
    check(&interrupted)?;

    step(&format!(
        "client resolves {PRODUCTS} and {PRICES}: the agent's DNS answers mesh names with VIPs (dig)"
    ));
    for name in [PRODUCTS, PRICES] {
        let output = node.run_in_pod_resolving("client", "dig", &["+short", name], SHORT)?;
        println!(
            "  {name}: {}",
            String::from_utf8_lossy(&output.stdout).trim()
        );
    }
    step(&format!(
        "client -> {PRODUCTS}: plain curl by name, routed by Host to virtual node products"
    ));
    let answer = curl(&node, PRODUCTS, "/", &[])?;
    println!("  {}", answer.trim());
    step(&format!(
        "client -> {PRICES}: 1000 requests on one keep-alive connection, canary 80/20"
    ));
    let answers = curl(&node, PRICES, "/[1-1000]", &[])?;
    for version in ["prices-v1", "prices-v2"] {
        println!(
            "  {version}: {}",
            answers.matches(&format!("hello from {version} ")).count()
        );
    }
    step(&format!(
        "client -> {PRICES} with x-canary: yes (route `testers`, priority 0)"
    ));
    let answers = curl(&node, PRICES, "/[1-20]", &["-H", "x-canary: yes"])?;
    println!(
        "  prices-v2: {} of 20",
        answers.matches("hello from prices-v2 ").count()
    );
    step(
        "client -> legacy pod on port 7000: not a backend of client and the mesh is DROP_ALL, so reset",
    );
    let legacy = format!("http://{}:{LEGACY_PORT}/", ips["legacy"]);
    let output = node.run_in_pod(
        "client",
        "curl",
        &["-sS", "--max-time", "5", &legacy],
        SHORT,
    )?;
    println!(
        "  {}{}",
        String::from_utf8_lossy(&output.stdout).trim(),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    step(&format!(
        "legacy (outside the mesh) -> products pod on port {PORT} in plain text: refused, the mesh takes only mutual TLS there (STRICT)"
    ));
    let products = format!("http://{}:{PORT}/", ips["products"]);
    let output = node.run_in_pod(
        "legacy",
        "curl",
        &["-sS", "--max-time", "5", &products],
        SHORT,
    )?;
    println!(
        "  {}{}",
        String::from_utf8_lossy(&output.stdout).trim(),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    check(&interrupted)?;

    let ingress = format!("http://{}:{GATEWAY_PORT}", ips["ingress"]);
    step(&format!(
        "internet (outside the mesh) -> virtual gateway ingress ({ingress}): 1000 requests to /prices/..., gateway route `prices` (the prefix becomes /, the Host {PRICES}), then prices' canary 80/20"
    ));
    let answers = internet_curl(&node, &format!("{ingress}/prices/[1-1000]"), &[])?;
    for version in ["prices-v1", "prices-v2"] {
        println!(
            "  {version}: {}",
            answers.matches(&format!("hello from {version} ")).count()
        );
    }
    step(
        "internet -> ingress with Host: shop.example.com: gateway route `shop` (hostname match) to products",
    );
    let answer = internet_curl(
        &node,
        &format!("{ingress}/"),
        &["-H", "Host: shop.example.com"],
    )?;
    println!("  {}", answer.trim());
    step(
        "internet -> ingress /catalog: gateway route `catalog` (path rewrite to /products/list) to products",
    );
    let answer = internet_curl(&node, &format!("{ingress}/catalog"), &[])?;
    println!("  {}", answer.trim());
    step("internet -> ingress /nothing: no gateway route matches, 404 said by the gateway");
    let answer = internet_curl(
        &node,
        &format!("{ingress}/nothing"),
        &["-o", "/dev/null", "-D", "-"],
    )?;
    for line in answer
        .lines()
        .filter(|l| l.starts_with("HTTP/") || l.starts_with("x-mesh-"))
    {
        println!("  {}", line.trim());
    }
    check(&interrupted)?;

    step(
        "per-service counts from the agent's /metrics (inbound sources: the callers' certificates; reporter gateway: requests through the ingress gateway)",
    );
    print_service_counts(&agent.metrics(&node)?);
    step(
        "access logs (logging.accessLog.file: /dev/stdout): the client's in Envoy's default format, the gateway's in its own text format; the last 3 lines of each",
    );
    let log = agent.log();
    for tag in ["[20", "ingress ["] {
        let lines: Vec<&str> = log.lines().filter(|l| l.starts_with(tag)).collect();
        for line in &lines[lines.len().saturating_sub(3)..] {
            println!("  {line}");
        }
    }

    step(
        "traces (tracing: OTLP to a receiver on the node, sampling_rate 0): client -> prices and internet -> ingress /catalog, each with a sampled traceparent of its caller; each trace as the receiver got it",
    );
    let caller_span = "00f067aa0ba902b7";
    let client_trace = trace_id(1);
    let traceparent = format!("traceparent: 00-{client_trace}-{caller_span}-01");
    curl(&node, PRICES, "/traced", &["-H", &traceparent])?;
    let gateway_trace = trace_id(2);
    let traceparent = format!("traceparent: 00-{gateway_trace}-{caller_span}-01");
    internet_curl(&node, &format!("{ingress}/catalog"), &["-H", &traceparent])?;
    for trace in [client_trace, gateway_trace] {
        println!("{}", indent(&trace_tree(&spans, &trace)?));
    }
    check(&interrupted)?;

    if !once {
        println!(
            "\nThe mesh keeps serving. Try, in another shell:\n  \
             nsenter --net={client} sh -c 'echo $$ > {cgroup}/cgroup.procs; curl -s http://{PRICES}:{PORT}/'\n  \
             nsenter --net={internet} curl -s {ingress}/prices/\n  \
             nsenter --net={node_ns} curl -s http://127.0.0.1:15020/metrics | grep ^mesh_requests\n\
             Ctrl-C ends it.",
            client = node.pod("client")?.netns_path().display(),
            internet = node.pod("internet")?.netns_path().display(),
            cgroup = node.cgroup_path().display(),
            node_ns = node.netns().path().display(),
        );
        while !interrupted.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    step(
        "stopping mesh-agent (SIGTERM): drain, exit (its pinned redirect goes with the node's own bpffs)",
    );
    let _ = agent.signal(libc::SIGTERM);
    match agent.wait_exit(Duration::from_secs(15))? {
        Some(status) => println!("  agent exited: {status}"),
        None => bail!("agent did not exit within 15s"),
    }
    step("removing the sandbox node");
    drop(servers);
    drop(node);
    let _ = std::fs::remove_dir_all(&workdir);
    println!("  done: namespaces, veths, cgroup and processes removed");
    Ok(())
}

/// The registry (Cloud Map stand-in) the mesh's virtual nodes discover their pods in.
fn registry_json(ips: &BTreeMap<&str, Ipv4Addr>) -> String {
    let instance = |pod: &str, version: Option<&str>| {
        let mut attributes = serde_json::json!({"AWS_INSTANCE_IPV4": ips[pod].to_string(), "AWS_INSTANCE_PORT": PORT.to_string()});
        if let Some(version) = version {
            attributes["version"] = version.into();
        }
        attributes
    };
    serde_json::json!({"namespaces": {"sandbox.local": {
        "client": {"client-1": instance("client", None)},
        "products": {"products-1": instance("products", None)},
        "prices": {"prices-v1-1": instance("prices-v1", Some("v1")), "prices-v2-1": instance("prices-v2", Some("v2"))},
    }}})
    .to_string()
}

/// The prices endpoints come by EDS and pass their first health check: wait for both.
fn wait_for_endpoints(node: &Node, agent: &Agent) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + SHORT;
    loop {
        let metrics = agent.metrics(node)?;
        let ready = [
            "sandbox/prices-v1/8080",
            "sandbox/prices-v2/8080",
            "sandbox/products/8080",
        ]
        .iter()
        .all(|c| {
            metrics.contains(&format!(
                "mesh_upstream_endpoints{{cluster=\"{c}\",state=\"available\"}} 1"
            ))
        });
        if ready {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            bail!("endpoints not available after {SHORT:?}:\n{}", agent.log());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the four enrolled virtual nodes and the gateway have their workload
/// certificates.
fn wait_for_certificates(node: &Node, agent: &Agent) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + SHORT;
    let sample = "mesh_agent_workload_certificate_requests_total{result=\"ok\"} 5";
    while !agent.metrics(node)?.contains(sample) {
        if std::time::Instant::now() >= deadline {
            bail!(
                "workload certificates not issued after {SHORT:?}:\n{}",
                agent.log()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Waits until the ingress pod's gateway port is captured: a connection from outside is
/// taken by the proxy instead of refused (nothing in the pod listens).
fn wait_for_gateway(node: &Node, agent: &Agent, ingress: Ipv4Addr) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + SHORT;
    let url = format!("http://{ingress}:{GATEWAY_PORT}/");
    loop {
        let output =
            node.run_in_pod("internet", "curl", &["-s", "--max-time", "2", &url], SHORT)?;
        // 7: could not connect.
        if output.status.code() != Some(7) {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            bail!(
                "the gateway port {GATEWAY_PORT} of the ingress pod is not captured after {SHORT:?}:\n{}",
                agent.log()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// curl from the internet pod (outside the mesh) to `url` (URL globbing allowed).
fn internet_curl(node: &Node, url: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut all = vec!["-sS", "--max-time", "30"];
    all.extend_from_slice(args);
    all.push(url);
    let output = node.run_in_pod("internet", "curl", &all, Duration::from_secs(60))?;
    if !output.status.success() {
        bail!("curl {url}: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// curl from the client pod to `http://service:8080{path}` (URL globbing allowed), by name:
/// the agent's DNS answers it, as it would for any application in the pod.
fn curl(node: &Node, service: &str, path: &str, args: &[&str]) -> anyhow::Result<String> {
    let url = format!("http://{service}:{PORT}{path}");
    let mut all = vec!["-sS", "--max-time", "30"];
    all.extend_from_slice(args);
    all.push(&url);
    let output = node.run_in_pod_resolving("client", "curl", &all, Duration::from_secs(60))?;
    if !output.status.success() {
        bail!("curl {url}: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `mesh_requests_total` summed per source, service, target node and code.
fn print_service_counts(metrics: &str) {
    println!(
        "  {:<9} {:<24} {:<24} {:<20} {:<32} {:<5} {:>6}",
        "reporter", "source", "virtual service", "virtual node", "route", "code", "count"
    );
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("mesh_requests_total{"))
    {
        let label = |name: &str| {
            line.split(&format!("{name}=\""))
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or("?")
                .to_owned()
        };
        let count = line.rsplit(' ').next().unwrap_or("?");
        println!(
            "  {:<9} {:<24} {:<24} {:<20} {:<32} {:<5} {:>6}",
            label("reporter"),
            label("source_virtual_node"),
            label("destination_virtual_service"),
            label("destination_virtual_node"),
            label("route"),
            label("response_code"),
            count
        );
    }
    for line in metrics.lines().filter(|l| {
        l.starts_with("mesh_agent_tls_handshakes_total")
            || l.starts_with("mesh_agent_workload_certificate_requests_total")
            || l.starts_with("mesh_denied_connections_total")
            || l.starts_with("mesh_request_retries_total")
            || l.starts_with("mesh_agent_pod_connects_total")
            || l.starts_with("mesh_agent_dns_")
    }) {
        println!("  {line}");
    }
}

const OTLP_GRPC_PORT: u16 = 4317;

/// The OTLP receiver of the tests (tests/interop/otlp_receiver.py) on the node's address;
/// the file it writes the spans to.
fn start_trace_receiver(
    node: &Node,
    workdir: &std::path::Path,
) -> anyhow::Result<(Proc, std::path::PathBuf)> {
    let spans = workdir.join("spans.jsonl");
    let mut command = node.node_command("python3")?;
    command
        .arg(receiver_script())
        .args(["serve", "--host", &NODE_IP.to_string()])
        .args(["--grpc-port", &OTLP_GRPC_PORT.to_string(), "--out"])
        .arg(&spans)
        .stdout(std::process::Stdio::null());
    let receiver = Proc::spawn("otlp receiver", command)?;
    node.wait_for_listener((NODE_IP, OTLP_GRPC_PORT).into(), SHORT)?;
    Ok((receiver, spans))
}

fn receiver_script() -> std::path::PathBuf {
    build::workspace_root().join("tests/interop/otlp_receiver.py")
}

/// Spans only of requests whose caller sampled them, exported quickly.
fn tracing_config() -> String {
    format!(
        "tracing:\n  endpoint: http://{NODE_IP}:{OTLP_GRPC_PORT}\n  sampling_rate: 0\n  batch_delay: 200ms\n"
    )
}

/// A trace id of this run: the time, then `n`.
fn trace_id(n: u8) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{:08x}{:022x}{n:02x}", now.as_secs(), now.subsec_nanos())
}

/// `trace` as a tree of its spans, once at least two arrived.
fn trace_tree(spans: &std::path::Path, trace: &str) -> anyhow::Result<String> {
    let deadline = std::time::Instant::now() + SHORT;
    loop {
        let received = std::fs::read_to_string(spans).unwrap_or_default();
        if received
            .matches(&format!("\"trace_id\": \"{trace}\""))
            .count()
            >= 2
        {
            break;
        }
        if std::time::Instant::now() >= deadline {
            bail!("the spans of trace {trace} did not arrive in {SHORT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = std::process::Command::new("python3")
        .arg(receiver_script())
        .args(["tree", "--trace", trace, "--spans"])
        .arg(spans)
        .output()
        .context("python3 otlp_receiver.py tree")?;
    if !output.status.success() {
        bail!("tree: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn check(interrupted: &AtomicBool) -> anyhow::Result<()> {
    if interrupted.load(Ordering::SeqCst) {
        bail!("interrupted; the sandbox node was removed");
    }
    Ok(())
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
