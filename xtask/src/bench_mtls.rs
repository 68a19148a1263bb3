//! `cargo xtask bench-mtls`: what two node proxies with mutual TLS between them cost, against
//! the direct connection over the same link, in one run.
//!
//! Two test nodes joined by a link (as the two-node end-to-end tests build them), each with its
//! own agent and the same mesh: virtual node `client` (pod `client` on node 1, enrolled) calls
//! virtual service `v1.m.local`, provided by virtual node `v1` (pod `s1` on node 2, enrolled).
//! Three paths to the same server processes in `s1`, differing only by port:
//!
//! * **direct**: pod `outside` on node 1 (not enrolled) to a port of `s1` that is no listener of
//!   `v1`, so neither proxy sees it — pod, bridge, link, bridge, pod;
//! * **plain 2 hops**: `client` to a listener of `v1` without TLS — node 1's outbound proxy,
//!   the link in plain text, node 2's inbound proxy, `s1`'s loopback;
//! * **mTLS 2 hops**: the same to a listener with TLS STRICT and client certificates, the
//!   client policy of `client` originating TLS with its certificate for those ports (mutual TLS
//!   1.3, file certificates, ECDSA P-256, rustls with ring).
//!
//! TCP listeners (L4: the proxies relay the bytes inside TLS) for the stream, the round trip
//! and new connections; HTTP listeners (L7: requests routed, pooled upstream connections) for a
//! second round trip. Each round runs direct, plain, mTLS in turn; medians over rounds, ratios
//! (rates) or differences (latencies) against direct, and both agents' CPU time.
use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use ::tests::{
    Agent, Node, NodeLink, Proc,
    agent::{config_for, metric_sum},
    certs::{IssueSpec, TestCa, spiffe_id},
};
use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::{
    bench::{
        Measurement, chosen, cpu_seconds, format_result, median, parse_wrk, quiet, status_kib,
    },
    build::{self, Profile, step},
};

/// The virtual service `client` calls, provided by virtual node `v1` (all its listeners).
const SERVICE: &str = "v1.m.local";
/// Open-loop rate of the round-trip runs: low, so that each request travels alone.
const RTT_RATE: u32 = 500;
const RTT_BYTES: usize = 1024;
/// Ports of the first new-connection run per path; each run takes the next (TIME_WAIT, see
/// [`Ports::new_connections`]).
const NEW_CONNECTIONS_BASE: [u16; 3] = [9100, 9200, 9300];

/// The path a client's connections take.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    Direct,
    Plain,
    Mtls,
}

const PATHS: [(Via, &str); 3] = [
    (Via::Direct, "direct"),
    (Via::Plain, "plain 2 hops"),
    (Via::Mtls, "mTLS 2 hops"),
];

impl Via {
    fn index(self) -> usize {
        self as usize
    }

    /// The pod on node 1 the client runs in.
    fn pod(self) -> &'static str {
        match self {
            Via::Direct => "outside",
            Via::Plain | Via::Mtls => "client",
        }
    }
}

/// Ports of `s1` per path: direct (no listener), plain listener, TLS listener.
#[derive(Clone, Copy)]
struct PortSet([u16; 3]);

impl PortSet {
    fn of(self, via: Via) -> u16 {
        self.0[via.index()]
    }
}

const IPERF3: PortSet = PortSet([5203, 5202, 5201]);
/// HTTP over TCP listeners (the L4 relay).
const HTTP_L4: PortSet = PortSet([7003, 7002, 7001]);
/// HTTP listeners (the L7 proxy); direct is the same server port as for L4.
const HTTP_L7: PortSet = PortSet([7003, 8002, 8001]);

/// What the proxies' CPU time is reported against.
#[derive(Clone, Copy)]
enum CpuPer {
    /// Per GB moved, from the first metric (Gbit/s) and the run's length.
    Gigabyte,
    /// Per connection, from the first metric (requests/s, one per connection).
    Connection,
}

struct Scenario {
    name: &'static str,
    run: fn(&MtlsBench, Via, Run) -> anyhow::Result<Measurement>,
    cpu: Option<CpuPer>,
}

#[derive(Clone, Copy)]
struct Run {
    seconds: u32,
    /// The round (0-based): new-connection runs take a port of their own.
    round: usize,
}

const SCENARIOS: [Scenario; 4] = [
    Scenario {
        name: "iperf3 single stream (TCP listener)",
        run: MtlsBench::iperf3,
        cpu: Some(CpuPer::Gigabyte),
    },
    Scenario {
        name: "1 KiB req/resp at 500/s (TCP listener)",
        run: |b, via, run| b.round_trip(via, run, HTTP_L4, false),
        cpu: None,
    },
    Scenario {
        name: "1 KiB req/resp at 500/s (HTTP listener)",
        run: |b, via, run| b.round_trip(via, run, HTTP_L7, true),
        cpu: None,
    },
    Scenario {
        name: "new connection per request, 8 concurrent (TCP)",
        run: MtlsBench::new_connections,
        cpu: Some(CpuPer::Connection),
    },
];

/// Names of the scenarios whose figures are compared with the peer bar.
const STREAM: &str = SCENARIOS[0].name;
const ROUND_TRIP: &str = SCENARIOS[1].name;
const ROUND_TRIP_L7: &str = SCENARIOS[2].name;
const NEW_CONNECTIONS: &str = SCENARIOS[3].name;

/// Every port the mesh and the servers use.
struct Ports {
    /// New-connection runs, per path, one per round.
    new_connections: [Vec<u16>; 3],
}

impl Ports {
    fn new(rounds: usize) -> Self {
        let per_path = |base: u16| (0..rounds).map(|r| base + r as u16).collect();
        Self {
            new_connections: NEW_CONNECTIONS_BASE.map(per_path),
        }
    }

    /// The new-connection port of `via` in `round`. Each run has its own: a run leaves
    /// thousands of TIME_WAIT sockets, and the next reusing the same 4-tuples would stall on
    /// them — a cost of the test order, not of the path.
    fn new_connections(&self, via: Via, round: usize) -> u16 {
        self.new_connections[via.index()][round]
    }

    /// `v1`'s listeners: (port, protocol, TLS).
    fn listeners(&self) -> Vec<(u16, &'static str, bool)> {
        let mut listeners = vec![
            (IPERF3.of(Via::Plain), "tcp", false),
            (IPERF3.of(Via::Mtls), "tcp", true),
            (HTTP_L4.of(Via::Plain), "tcp", false),
            (HTTP_L4.of(Via::Mtls), "tcp", true),
            (HTTP_L7.of(Via::Plain), "http", false),
            (HTTP_L7.of(Via::Mtls), "http", true),
        ];
        for (via, tls) in [(Via::Plain, false), (Via::Mtls, true)] {
            for port in &self.new_connections[via.index()] {
                listeners.push((*port, "tcp", tls));
            }
        }
        listeners
    }

    /// Ports the HTTP server in `s1` listens on.
    fn http_server(&self) -> Vec<u16> {
        let mut ports = vec![HTTP_L4.of(Via::Direct)];
        for via in [Via::Plain, Via::Mtls] {
            ports.extend([HTTP_L4.of(via), HTTP_L7.of(via)]);
        }
        ports.extend(self.new_connections.iter().flatten());
        ports
    }
}

struct MtlsBench {
    // Field order is drop order: agents, servers, the link, the nodes.
    agent1: Agent,
    agent2: Agent,
    _servers: Vec<Proc>,
    _link: NodeLink,
    node1: Node,
    node2: Node,
    s1: Ipv4Addr,
    ports: Ports,
    meshtb: String,
}

/// Removes the benchmark's scratch directory (certificates, mesh, agent logs) however the run
/// ends.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn run(rounds: usize, seconds: u32, only: Option<&str>) -> anyhow::Result<()> {
    build::require_root("the benchmark")?;
    if !(1..=99).contains(&rounds) || seconds == 0 {
        bail!("--rounds must be 1 to 99 and --seconds at least 1");
    }
    let binaries = build::build(Profile::Release)?;
    // SAFETY: set before any thread that reads the environment exists.
    unsafe { std::env::set_var("MESH_AGENT_BIN", &binaries.agent) };
    let meshtb = binaries.meshtb.to_str().context("meshtb path")?.to_owned();
    let scratch =
        Scratch(std::env::temp_dir().join(format!("mesh-bench-mtls-{}", std::process::id())));
    std::fs::create_dir_all(&scratch.0)?;

    step("setting up two nodes, a link, certificates, the mesh and an agent on each node");
    let bench = MtlsBench::start(&scratch.0, Ports::new(rounds), meshtb)?;
    bench.check_paths()?;
    let idle_rss =
        [bench.agent1.pid(), bench.agent2.pid()].map(|pid| status_kib(pid, "VmRSS:").unwrap_or(0));

    println!(
        "  {rounds} rounds x {seconds}s per run; release build; clients, servers and both agents (1 worker thread each) share the machine's {} cores, nothing pinned",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    let mut table: Vec<Row> = Vec::new();
    for scenario in SCENARIOS.iter().filter(|s| chosen(s.name, only)) {
        step(scenario.name);
        // samples[path][metric]
        let mut samples: [Vec<(&'static str, Vec<f64>)>; 3] = Default::default();
        let mut cpu: [Vec<f64>; 3] = Default::default();
        for round in 0..rounds {
            for (via, name) in PATHS {
                let before = bench.agents_cpu()?;
                let result = (scenario.run)(&bench, via, Run { seconds, round })?;
                let used = bench.agents_cpu()? - before;
                let moved = result.first().map_or(0.0, |(_, v)| *v) * f64::from(seconds);
                let per = match scenario.cpu {
                    // Gbit/s × s / 8 = GB.
                    Some(CpuPer::Gigabyte) => Some(("agents CPU s/GB", used / (moved / 8.0))),
                    Some(CpuPer::Connection) => {
                        Some(("agents CPU us/connection", used * 1e6 / moved))
                    }
                    None => None,
                };
                let mut line = format_result(&result);
                if let (Some((metric, value)), true) = (per, via != Via::Direct) {
                    cpu[via.index()].push(value);
                    line.push_str(&format!("  {metric}={value:.2}"));
                }
                println!("  round {} {name:<13} {line}", round + 1);
                for (metric, value) in result {
                    match samples[via.index()].iter_mut().find(|(m, _)| *m == metric) {
                        Some((_, values)) => values.push(value),
                        None => samples[via.index()].push((metric, vec![value])),
                    }
                }
            }
        }
        for (metric, direct) in &samples[0] {
            let value = |i: usize| {
                samples[i]
                    .iter()
                    .find(|(m, _)| m == metric)
                    .map_or(0.0, |(_, v)| median(v))
            };
            table.push(Row {
                scenario: scenario.name,
                metric: (*metric).to_owned(),
                values: [median(direct), value(1), value(2)],
                compare: if metric.contains("latency") {
                    Compare::Added
                } else {
                    Compare::Ratio
                },
            });
        }
        if let Some(per) = scenario.cpu {
            let metric = match per {
                CpuPer::Gigabyte => "agents CPU s/GB",
                CpuPer::Connection => "agents CPU us/conn",
            };
            table.push(Row {
                scenario: scenario.name,
                metric: metric.into(),
                values: [0.0, median(&cpu[1]), median(&cpu[2])],
                compare: Compare::None,
            });
        }
    }

    step("results (medians; vs direct: ratio of rates, latency added)");
    println!(
        "  {:<47} {:<24} {:>9} {:>12} {:>11} {:>10} {:>10}",
        "scenario", "metric", "direct", "plain 2 hops", "mTLS 2 hops", "plain", "mTLS"
    );
    for row in &table {
        let [direct, plain, mtls] = row.values;
        println!(
            "  {:<47} {:<24} {:>9} {:>12.1} {:>11.1} {:>10} {:>10}",
            row.scenario,
            row.metric,
            if matches!(row.compare, Compare::None) {
                "-".to_owned()
            } else {
                format!("{direct:.1}")
            },
            plain,
            mtls,
            row.against_direct(plain),
            row.against_direct(mtls)
        );
    }
    print_peer_bar(&table);
    for (agent, node, idle) in [
        (&bench.agent1, &bench.node1, idle_rss[0]),
        (&bench.agent2, &bench.node2, idle_rss[1]),
    ] {
        let metrics = agent.metrics(node)?;
        let handshakes = |result: &str| {
            metric_sum(
                &metrics,
                "mesh_agent_tls_handshakes_total",
                &[("result", result)],
            )
        };
        println!(
            "  agent on {}: RSS idle {idle} KiB, after the runs {} KiB; TLS handshakes ok {}, failed {}",
            node.tag(),
            status_kib(agent.pid(), "VmRSS:").unwrap_or(0),
            handshakes("ok"),
            metric_sum(&metrics, "mesh_agent_tls_handshakes_total", &[]) - handshakes("ok"),
        );
        let failures: Vec<&str> = metrics
            .lines()
            .filter(|l| l.starts_with("mesh_agent_proxy_connections_failed_total"))
            .collect();
        if !failures.is_empty() {
            println!(
                "    proxy connection failures during the runs:\n      {}",
                failures.join("\n      ")
            );
        }
    }
    drop(bench);
    drop(scratch);
    Ok(())
}

/// How a path's figure is compared with direct.
enum Compare {
    Ratio,
    Added,
    None,
}

struct Row {
    scenario: &'static str,
    metric: String,
    /// direct, plain 2 hops, mTLS 2 hops.
    values: [f64; 3],
    compare: Compare,
}

impl Row {
    fn against_direct(&self, value: f64) -> String {
        let direct = self.values[0];
        match self.compare {
            Compare::Ratio if direct > 0.0 => format!("{:.2}x", value / direct),
            Compare::Added => format!("{:+.0} us", value - direct),
            _ => "-".into(),
        }
    }
}

fn find<'a>(table: &'a [Row], scenario: &str, metric: &str) -> Option<&'a Row> {
    table
        .iter()
        .find(|r| r.scenario == scenario && r.metric == metric)
}

/// mTLS two hops against ztunnel's two hops over HBONE (docs/performance.md) and the goals.
fn print_peer_bar(table: &[Row]) {
    step("mTLS 2 hops against the peer bar (ztunnel, two hops over HBONE mTLS)");
    println!(
        "  {:<34} {:>12} {:>14} {:>10}  verdict",
        "", "mesh-agent", "ztunnel HBONE", "goal"
    );
    let verdict = |met: bool| if met { "met" } else { "NOT met" };
    if let Some(row) = find(table, STREAM, "Gbit/s") {
        let ratio = row.values[2] / row.values[0];
        println!(
            "  {:<34} {:>11.2}x {:>14} {:>10}  {}",
            "single stream vs direct",
            ratio,
            "0.40x",
            ">= 0.60x",
            verdict(ratio >= 0.60)
        );
    }
    for (scenario, what) in [
        (ROUND_TRIP, "1 KiB round trip added, p50 (L4)"),
        (ROUND_TRIP_L7, "1 KiB round trip added, p50 (L7)"),
    ] {
        if let Some(row) = find(table, scenario, "p50 latency us") {
            let added = row.values[2] - row.values[0];
            println!(
                "  {:<34} {:>9.0} us {:>14} {:>10}  {}",
                what,
                added,
                "+105 us",
                "<= 50 us",
                verdict(added <= 50.0)
            );
        }
    }
    if let Some(row) = find(table, NEW_CONNECTIONS, "requests/s") {
        let ratio = row.values[2] / row.values[0];
        println!(
            "  {:<34} {:>11.2}x {:>14} {:>10}  {}",
            "new connections/s vs direct",
            ratio,
            "0.087x",
            ">= 0.20x",
            verdict(ratio >= 0.20)
        );
    }
    if let Some(row) = find(table, STREAM, "agents CPU s/GB") {
        println!(
            "  {:<34} {:>10.2} s {:>14} {:>10}",
            "CPU per GB (both proxies)", row.values[2], "1.8-1.9 s", "-"
        );
    }
}

impl MtlsBench {
    fn start(scratch: &Path, ports: Ports, meshtb: String) -> anyhow::Result<Self> {
        let mut node1 = Node::create_numbered("mtlsb1", 1)?;
        let mut node2 = Node::create_numbered("mtlsb2", 2)?;
        for pod in ["client", "outside"] {
            node1.add_pod(pod)?;
        }
        let s1 = node2.add_pod("s1")?.ip;
        let link = NodeLink::connect(&node1, &node2)?;

        let mut servers = Vec::new();
        let mut listening = Vec::new();
        for port in IPERF3.0 {
            let port_arg = port.to_string();
            servers.push(quiet(&node2, "s1", "iperf3", &["-s", "-p", &port_arg])?);
            listening.push(port);
        }
        let mut http_args = vec!["http-server".to_owned(), "--name".into(), "v1".into()];
        for port in ports.http_server() {
            http_args.extend(["--port".to_owned(), port.to_string()]);
            listening.push(port);
        }
        let http_args: Vec<&str> = http_args.iter().map(String::as_str).collect();
        servers.push(quiet(&node2, "s1", &meshtb, &http_args)?);
        // Before the agents start: afterwards node 2's proxy answers on the listener ports.
        for port in listening {
            node2.wait_for_listener(SocketAddr::from((s1, port)), Duration::from_secs(10))?;
        }

        let certs = scratch.join("certs");
        let mesh_dir = scratch.join("mesh");
        std::fs::create_dir_all(&certs)?;
        std::fs::create_dir_all(&mesh_dir)?;
        let ca = TestCa::new("mesh m CA")?;
        ca.write_to(&certs)?;
        for (stem, spec) in [
            ("client", IssueSpec::new("client")),
            ("v1", IssueSpec::new("v1").dns(SERVICE)),
        ] {
            ca.issue(&spec.uri(&spiffe_id("m", stem)))?
                .write_to(&certs, stem)?;
        }
        let client_ip = node1.pod("client")?.ip;
        write_mesh(&mesh_dir, &certs, &ports, client_ip, s1)?;

        let mesh_arg = mesh_dir.to_str().context("path")?;
        let start_agent = |node: &Node, pod: &str, dir: &str| -> anyhow::Result<Agent> {
            let dir = scratch.join(dir);
            std::fs::create_dir_all(&dir)?;
            let config = config_for(node, &[pod], "")?;
            Agent::start_with_args(node, &config, &dir, &["--mesh", mesh_arg])
        };
        let agent1 = start_agent(&node1, "client", "node1")?;
        let agent2 = start_agent(&node2, "s1", "node2")?;
        Ok(Self {
            agent1,
            agent2,
            _servers: servers,
            _link: link,
            node1,
            node2,
            s1,
            ports,
            meshtb,
        })
    }

    /// User + system CPU seconds of both agents.
    fn agents_cpu(&self) -> anyhow::Result<f64> {
        Ok(cpu_seconds(self.agent1.pid())? + cpu_seconds(self.agent2.pid())?)
    }

    fn handshakes_ok(&self) -> anyhow::Result<f64> {
        let count = |agent: &Agent, node: &Node| -> anyhow::Result<f64> {
            Ok(metric_sum(
                &agent.metrics(node)?,
                "mesh_agent_tls_handshakes_total",
                &[("result", "ok")],
            ))
        };
        Ok(count(&self.agent1, &self.node1)? + count(&self.agent2, &self.node2)?)
    }

    /// Every HTTP path answers before anything is measured: direct reaches the server
    /// itself, the two-hop paths reach it through node 2's proxy (the server sees a loopback
    /// client), the mTLS ports after handshakes and the plain ports without any.
    fn check_paths(&self) -> anyhow::Result<()> {
        let mut checks = vec![(Via::Direct, HTTP_L4.of(Via::Direct), false)];
        for via in [Via::Plain, Via::Mtls] {
            checks.extend([(via, HTTP_L4.of(via), false), (via, HTTP_L7.of(via), true)]);
        }
        for round in 0..self.ports.new_connections[0].len() {
            for (via, _) in PATHS {
                checks.push((via, self.ports.new_connections(via, round), false));
            }
        }
        for (via, port, l7) in checks {
            let before = self.handshakes_ok()?;
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let answer = self.curl(via, port, l7)?;
                let expected = match via {
                    Via::Direct => format!("(client {}:", self.node1.pod("outside")?.ip),
                    Via::Plain | Via::Mtls => "(client 127.0.0.1:".to_owned(),
                };
                if answer.starts_with("hello from v1 ") && answer.contains(&expected) {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "port {port} from pod {} does not answer as expected: {answer}\n--- node 1 agent:\n{}\n--- node 2 agent:\n{}",
                        via.pod(),
                        self.agent1.log(),
                        self.agent2.log()
                    );
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            let handshakes = self.handshakes_ok()? - before;
            match via {
                Via::Mtls if handshakes < 2.0 => {
                    bail!("port {port}: answered without TLS handshakes on both nodes")
                }
                Via::Direct | Via::Plain if handshakes > 0.0 => {
                    bail!("port {port}: TLS handshakes on a path meant to be plain")
                }
                _ => {}
            }
        }
        println!("  every path answers; TLS handshakes on the mTLS ports only");
        Ok(())
    }

    fn curl(&self, via: Via, port: u16, l7: bool) -> anyhow::Result<String> {
        let url = format!("http://{}:{port}/check", self.s1);
        let host = format!("Host: {SERVICE}");
        let mut args = vec!["-sS", "--max-time", "5"];
        if l7 {
            args.extend(["-H", &host]);
        }
        args.push(&url);
        let output = self
            .node1
            .run_in_pod(via.pod(), "curl", &args, Duration::from_secs(10))?;
        Ok(format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }

    /// Runs a load generator in `via`'s pod on node 1; fails if it does.
    fn client(
        &self,
        via: Via,
        program: &str,
        args: &[&str],
        seconds: u32,
    ) -> anyhow::Result<String> {
        let output = self.node1.run_in_pod(
            via.pod(),
            program,
            args,
            Duration::from_secs(u64::from(seconds) + 30),
        )?;
        if !output.status.success() {
            bail!(
                "{program} failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    fn iperf3(&self, via: Via, run: Run) -> anyhow::Result<Measurement> {
        let (server, port, time) = (
            self.s1.to_string(),
            IPERF3.of(via).to_string(),
            run.seconds.to_string(),
        );
        let json = self.client(
            via,
            "iperf3",
            &["-c", &server, "-p", &port, "-t", &time, "-J"],
            run.seconds,
        )?;
        let received = json
            .split("\"sum_received\"")
            .nth(1)
            .and_then(|rest| rest.split("\"bits_per_second\":").nth(1))
            .and_then(|rest| rest.split([',', '\n', '}']).next())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .context("no sum_received.bits_per_second in iperf3 output")?;
        Ok(vec![("Gbit/s", received / 1e9)])
    }

    /// HTTP/1.1 POSTs of 1 KiB answered with 1 KiB, open loop at a low rate over keep-alive
    /// connections: each request travels alone, so p50 is the round trip.
    fn round_trip(
        &self,
        via: Via,
        run: Run,
        ports: PortSet,
        l7: bool,
    ) -> anyhow::Result<Measurement> {
        let url = format!("http://{}:{}/rtt", self.s1, ports.of(via));
        let (rate, seconds, bytes) = (
            RTT_RATE.to_string(),
            run.seconds.to_string(),
            RTT_BYTES.to_string(),
        );
        let mut args = vec![
            "load",
            "--url",
            &url,
            "--rate",
            &rate,
            "--seconds",
            &seconds,
            "--body-bytes",
            &bytes,
            "--reply-bytes",
            &bytes,
        ];
        if l7 && via != Via::Direct {
            args.extend(["--host", SERVICE]);
        }
        let text = self.client(via, &self.meshtb, &args, run.seconds)?;
        let field = |key: &str| {
            text.split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
                .and_then(|v| v.parse::<f64>().ok())
                .with_context(|| format!("no {key} in {text}"))
        };
        if field("errors")? > 0.0 {
            bail!("requests failed at the fixed rate: {text}");
        }
        Ok(vec![
            ("p50 latency us", field("p50_us")?),
            ("p99 latency us", field("p99_us")?),
        ])
    }

    /// wrk with `Connection: close`: every request a new client connection, and through a
    /// TCP listener a new TLS connection between the proxies (resumed after the first).
    fn new_connections(&self, via: Via, run: Run) -> anyhow::Result<Measurement> {
        let port = self.ports.new_connections(via, run.round);
        let url = format!("http://{}:{port}/", self.s1);
        let duration = format!("{}s", run.seconds);
        let args = [
            "-t",
            "2",
            "-c",
            "8",
            "-d",
            &duration,
            "--latency",
            "-H",
            "Connection: close",
            &url,
        ];
        let text = self.client(via, "wrk", &args, run.seconds)?;
        let mut measurement = parse_wrk(&text)?;
        // Only the rate: connection latency is the round trip above plus handshakes.
        measurement.truncate(1);
        Ok(measurement)
    }
}

/// The mesh both agents read: `client` (node 1) with backend `v1.m.local` and a client policy
/// originating mutual TLS on the TLS ports; `v1` (node 2) with the listeners of
/// [`Ports::listeners`], TLS STRICT with client validation on the TLS ports.
fn write_mesh(
    dir: &Path,
    certs: &Path,
    ports: &Ports,
    client_ip: Ipv4Addr,
    s1: Ipv4Addr,
) -> anyhow::Result<()> {
    let file = |name: &str| certs.join(name).display().to_string();
    let certificate = |stem: &str| {
        json!({"file": {"certificateChain": file(&format!("{stem}.pem")),
                        "privateKey": file(&format!("{stem}.key"))}})
    };
    let validation = |stem: &str| {
        json!({"trust": {"file": {"certificateChain": file("ca.pem")}},
               "subjectAlternativeNames": {"match": {"exact": [spiffe_id("m", stem)]}}})
    };
    let listeners = ports.listeners();
    let tls_ports: Vec<u16> = listeners
        .iter()
        .filter(|(_, _, tls)| *tls)
        .map(|(port, _, _)| *port)
        .collect();
    let v1_listeners: Vec<Value> = listeners
        .iter()
        .map(|(port, protocol, tls)| {
            let mut listener = json!({"portMapping": {"port": port, "protocol": protocol}});
            if *tls {
                listener["tls"] = json!({"mode": "STRICT", "certificate": certificate("v1"),
                                         "validation": validation("client")});
            }
            listener
        })
        .collect();
    let files = [
        (
            "mesh",
            json!({"meshName": "m", "spec": {"egressFilter": {"type": "DROP_ALL"}}}),
        ),
        (
            "vn-client",
            json!({"meshName": "m", "virtualNodeName": "client", "spec": {
                "listeners": [{"portMapping": {"port": 80, "protocol": "http"}}],
                "serviceDiscovery": {"dns": {"hostname": client_ip.to_string()}},
                "backends": [{"virtualService": {"virtualServiceName": SERVICE}}],
                "backendDefaults": {"clientPolicy": {"tls": {
                    "enforce": true, "ports": tls_ports,
                    "certificate": certificate("client"), "validation": validation("v1")}}}}}),
        ),
        (
            "vn-v1",
            json!({"meshName": "m", "virtualNodeName": "v1", "spec": {
                "listeners": v1_listeners,
                "serviceDiscovery": {"dns": {"hostname": s1.to_string()}}}}),
        ),
        (
            "vs",
            json!({"meshName": "m", "virtualServiceName": SERVICE, "spec": {
                "provider": {"virtualNode": {"virtualNodeName": "v1"}}}}),
        ),
    ];
    for (name, value) in files {
        std::fs::write(dir.join(format!("{name}.json")), value.to_string())?;
    }
    Ok(())
}
