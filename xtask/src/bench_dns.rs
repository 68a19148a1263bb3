//! `cargo xtask bench-dns`: the agent's DNS server under dnsperf, in one run — queries/s
//! answered for a mesh name (client pod enrolled: the capture brings its queries to the agent),
//! and a name the pod's resolver (dnsmasq on the node) answers, forwarded by the agent vs asked
//! directly (a pod outside the mesh): maximum queries/s, and latency at a fixed rate; medians
//! of the rounds, with ratios.
use std::{net::Ipv4Addr, path::Path, time::Duration};

use ::tests::{Agent, Node, Proc, agent::config_for, node::NODE_IP};
use anyhow::{Context as _, bail};
use serde_json::json;

use crate::{
    bench::{cpu_seconds, median, status_kib},
    build::{self, Profile, step},
};

const MESH_NAME: &str = "api.m.local";
const OUTSIDE_NAME: &str = "outside.example.test";
/// The fixed rate latencies are compared at: well below every path's maximum.
const FIXED_QPS: u32 = 500;

/// One dnsperf run's figures.
#[derive(Debug, Clone, Copy, PartialEq)]
struct DnsperfRun {
    qps: f64,
    latency_us: f64,
    lost: u64,
}

pub fn run(rounds: usize, seconds: u32) -> anyhow::Result<()> {
    build::require_root("the benchmark")?;
    let binaries = build::build(Profile::Release)?;
    // SAFETY: set before any thread that reads the environment exists.
    unsafe { std::env::set_var("MESH_AGENT_BIN", &binaries.agent) };

    step("setting up the benchmark node: an enrolled client, a pod outside the mesh, dnsmasq");
    let mut node = Node::create("benchdns")?;
    let client = node.add_pod("client")?.ip;
    let v1 = node.add_pod("v1")?.ip;
    node.add_pod("direct")?;
    let workdir = std::env::temp_dir().join(format!("mesh-bench-dns-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&workdir);
    let mesh_dir = workdir.join("mesh");
    std::fs::create_dir_all(&mesh_dir)?;
    write_mesh(&mesh_dir, client, v1)?;
    let _resolver = start_resolver(&node)?;
    let config = config_for(&node, &["client"], "")?;
    let agent = Agent::start_with_args(
        &node,
        &config,
        &workdir,
        &["--mesh", mesh_dir.to_str().context("mesh path")?],
    )?;
    wait_for_mesh_name(&node)?;
    let mesh_file = workdir.join("mesh.txt");
    std::fs::write(&mesh_file, format!("{MESH_NAME} A\n"))?;
    let outside_file = workdir.join("outside.txt");
    std::fs::write(&outside_file, format!("{OUTSIDE_NAME} A\n"))?;

    println!(
        "  dnsperf (UDP, 4 clients, 200 outstanding), {rounds} rounds x {seconds}s per run; release build; everything shares the machine's {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    let max = |pod: &str, file: &Path| dnsperf(&node, pod, file, seconds, None);
    let fixed = |pod: &str, file: &Path| dnsperf(&node, pod, file, seconds, Some(FIXED_QPS));

    step(&format!(
        "{MESH_NAME} from the enrolled client: answered by the agent"
    ));
    let cpu_before = cpu_seconds(agent.pid())?;
    let mesh = rounds_of(rounds, || max("client", &mesh_file))?;
    let cpu = cpu_seconds(agent.pid())? - cpu_before;
    let answered: f64 = mesh.iter().map(|r| r.qps * f64::from(seconds)).sum();
    step(&format!(
        "{OUTSIDE_NAME} from the enrolled client: forwarded by the agent to dnsmasq"
    ));
    let forwarded = rounds_of(rounds, || max("client", &outside_file))?;
    step(&format!(
        "{OUTSIDE_NAME} from the pod outside the mesh: dnsmasq directly"
    ));
    let direct = rounds_of(rounds, || max("direct", &outside_file))?;
    step(&format!(
        "latency at {FIXED_QPS} queries/s: forwarded vs direct"
    ));
    let forwarded_fixed = rounds_of(rounds, || fixed("client", &outside_file))?;
    let direct_fixed = rounds_of(rounds, || fixed("direct", &outside_file))?;
    let mesh_fixed = rounds_of(rounds, || fixed("client", &mesh_file))?;

    let qps = |runs: &[DnsperfRun]| median(&runs.iter().map(|r| r.qps).collect::<Vec<_>>());
    let latency =
        |runs: &[DnsperfRun]| median(&runs.iter().map(|r| r.latency_us).collect::<Vec<_>>());
    let lost = |runs: &[DnsperfRun]| runs.iter().map(|r| r.lost).sum::<u64>();
    step("results (medians)");
    println!(
        "  {:<40} {:>12} {:>16} {:>8}",
        "path", "queries/s", "avg latency us", "lost"
    );
    for (name, runs) in [
        ("mesh name, answered by the agent (max)", &mesh),
        ("other name, forwarded by the agent (max)", &forwarded),
        ("other name, direct to dnsmasq (max)", &direct),
        ("mesh name, answered (at fixed rate)", &mesh_fixed),
        ("other name, forwarded (at fixed rate)", &forwarded_fixed),
        ("other name, direct (at fixed rate)", &direct_fixed),
    ] {
        println!(
            "  {name:<40} {:>12.0} {:>16.0} {:>8}",
            qps(runs),
            latency(runs),
            lost(runs)
        );
    }
    println!(
        "  forwarded/direct: {:.2}x max queries/s, {:.2}x latency at {FIXED_QPS}/s (+{:.0} us per query)",
        qps(&forwarded) / qps(&direct),
        latency(&forwarded_fixed) / latency(&direct_fixed),
        latency(&forwarded_fixed) - latency(&direct_fixed),
    );
    println!(
        "  mesh answers: {:.2}x the queries/s of dnsmasq answering directly; {:.0} queries per agent CPU second; agent RSS {} KiB",
        qps(&mesh) / qps(&direct),
        answered / cpu.max(1e-9),
        status_kib(agent.pid(), "VmRSS:").unwrap_or(0),
    );
    drop(agent);
    drop(node);
    let _ = std::fs::remove_dir_all(&workdir);
    Ok(())
}

fn rounds_of(
    rounds: usize,
    mut run: impl FnMut() -> anyhow::Result<DnsperfRun>,
) -> anyhow::Result<Vec<DnsperfRun>> {
    (0..rounds.max(1)).map(|_| run()).collect()
}

/// dnsperf from `pod` to the pods' resolver address (captured for the enrolled client), at
/// most `qps` queries/s when given.
fn dnsperf(
    node: &Node,
    pod: &str,
    file: &Path,
    seconds: u32,
    qps: Option<u32>,
) -> anyhow::Result<DnsperfRun> {
    let server = NODE_IP.to_string();
    let limit = seconds.to_string();
    let rate = qps.map(|q| q.to_string());
    let mut args = vec![
        "-s",
        &server,
        "-d",
        file.to_str().context("data file path")?,
        "-l",
        &limit,
        "-c",
        "4",
        "-q",
        "200",
        "-t",
        "2",
    ];
    if let Some(rate) = &rate {
        args.extend(["-Q", rate.as_str()]);
    }
    let output = node.run_in_pod(
        pod,
        "dnsperf",
        &args,
        Duration::from_secs(u64::from(seconds) + 30),
    )?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "dnsperf in {pod} failed: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    parse_dnsperf(&text)
}

/// Queries/s, average latency (µs) and lost queries of a dnsperf report.
fn parse_dnsperf(text: &str) -> anyhow::Result<DnsperfRun> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|value| value.parse::<f64>().ok())
            .with_context(|| format!("no {name:?} in dnsperf output:\n{text}"))
    };
    Ok(DnsperfRun {
        qps: field("Queries per second:")?,
        latency_us: field("Average Latency (s):")? * 1e6,
        lost: field("Queries lost:")? as u64,
    })
}

/// Mesh `m`: virtual node `client` (the enrolled pod) with backend `api.m.local`, provided by
/// virtual node `v1`.
fn write_mesh(dir: &Path, client: Ipv4Addr, v1: Ipv4Addr) -> anyhow::Result<()> {
    let files = [
        (
            "mesh",
            json!({"meshName": "m", "spec": {"egressFilter": {"type": "DROP_ALL"}}}),
        ),
        (
            "vn-client",
            json!({"meshName": "m", "virtualNodeName": "client", "spec": {
                "listeners": [{"portMapping": {"port": 80, "protocol": "http"}}],
                "serviceDiscovery": {"dns": {"hostname": client.to_string()}},
                "backends": [{"virtualService": {"virtualServiceName": MESH_NAME}}]}}),
        ),
        (
            "vn-v1",
            json!({"meshName": "m", "virtualNodeName": "v1", "spec": {
                "listeners": [{"portMapping": {"port": 8080, "protocol": "http"}}],
                "serviceDiscovery": {"dns": {"hostname": v1.to_string()}}}}),
        ),
        (
            "vs",
            json!({"meshName": "m", "virtualServiceName": MESH_NAME, "spec": {
                "provider": {"virtualNode": {"virtualNodeName": "v1"}}}}),
        ),
    ];
    for (name, value) in files {
        std::fs::write(dir.join(format!("{name}.json")), value.to_string())?;
    }
    Ok(())
}

/// dnsmasq on the node's address answering [`OUTSIDE_NAME`] (the pods' resolver).
fn start_resolver(node: &Node) -> anyhow::Result<Proc> {
    let records = [
        "--local-ttl=60".to_owned(),
        "--dns-forward-max=1000".to_owned(),
        format!("--host-record={OUTSIDE_NAME},10.77.0.99"),
    ];
    ::tests::dnsmasq::start(node, &records)
}

/// Waits until the client's virtual node is known (its endpoint resolved) and the agent
/// answers the mesh name.
fn wait_for_mesh_name(node: &Node) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let output = node.run_in_pod_resolving(
            "client",
            "dig",
            &["+short", "+time=1", "+tries=1", MESH_NAME],
            Duration::from_secs(10),
        )?;
        let answer = String::from_utf8_lossy(&output.stdout);
        if answer.trim().starts_with("240.") {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!("the agent does not answer {MESH_NAME}: {answer}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dnsperf_report() {
        let text = "Statistics:\n\n  Queries sent:         10466\n  Queries completed:    10466 (100.00%)\n  Queries lost:         3 (0.03%)\n\n  Response codes:       NOERROR 10466 (100.00%)\n  Average packet size:  request 37, response 53\n  Run time (s):         5.000418\n  Queries per second:   2093.025\n\n  Average Latency (s):  0.000412 (min 0.000085, max 0.004313)\n  Latency StdDev (s):   0.000137\n";
        let run = parse_dnsperf(text).unwrap();
        assert_eq!(run.lost, 3);
        assert!((run.qps - 2093.025).abs() < 1e-6);
        assert!((run.latency_us - 412.0).abs() < 1e-6);
    }
}
