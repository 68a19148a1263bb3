//! `cargo xtask bench-memory`: what an idle proxied connection costs the proxy, against
//! HAProxy in the same run, and mesh-agent's idle memory with a mesh of 100 services.
//!
//! Connections are opened from the enrolled client pod, one answered request each (so every
//! buffer a request needs has been allocated), then held idle; the proxy's RSS before and
//! after, divided by the connections, is the per-connection figure.
use std::{path::Path, time::Duration};

use ::tests::{
    Agent, Proc,
    agent::{config_for, metric_value},
};
use anyhow::{Context as _, bail};

use crate::{
    bench::{SETTLE, status_kib},
    bench_l7::{L7Bench, Via},
    bench_xds,
    build::step,
};

/// HAProxy's `maxconn` in the benchmark's configuration: it is held at most that many.
const HAPROXY_MAX_CONNECTIONS: usize = 4000;

pub fn run(connections: usize, services: usize) -> anyhow::Result<()> {
    let (mut bench, _servers) = L7Bench::build_and_set_up("the benchmark")?;
    let script = bench.workdir.join("idle_connections.py");
    std::fs::write(&script, include_str!("idle_connections.py"))?;

    let haproxy_connections = connections.min(HAPROXY_MAX_CONNECTIONS);
    step(&format!(
        "{connections} idle keep-alive connections through mesh-agent, {haproxy_connections} through HAProxy"
    ));
    let mesh = per_connection(&bench, &script, Via::Mesh, connections, bench.agent.pid())?;
    let haproxy = per_connection(
        &bench,
        &script,
        Via::Haproxy,
        haproxy_connections,
        bench.haproxy.pid(),
    )?;

    step(&format!(
        "mesh-agent idle with a mesh of {services} virtual services"
    ));
    let idle_large = idle_with_services(&mut bench, services)?;

    step("results");
    println!(
        "  {:<44} {:>12} {:>12} {:>10}",
        "", "mesh-agent", "haproxy", "ratio"
    );
    println!(
        "  {:<44} {:>12.0} {:>12.0} {:>9.2}x",
        "bytes of RSS per idle proxied connection",
        mesh.per_connection_bytes(),
        haproxy.per_connection_bytes(),
        mesh.per_connection_bytes() / haproxy.per_connection_bytes().max(1.0)
    );
    if let (Some(bytes), Some((_, heap))) = (mesh.heap_per_connection_bytes(), &mesh.heap) {
        println!(
            "  {:<44} {:>12.0} {:>12}",
            "heap bytes in use per idle connection", bytes, "-"
        );
        println!(
            "  {:<44} {:>12.0} {:>12}",
            "connections parked (no HTTP buffers)", heap.parked, "-"
        );
    }
    println!(
        "  {:<44} {:>12} {:>12}",
        "RSS KiB before -> with the connections",
        format!("{} -> {}", mesh.before_kib, mesh.after_kib),
        format!("{} -> {}", haproxy.before_kib, haproxy.after_kib),
    );
    println!(
        "  goal: <= 4096 bytes per idle connection; mesh-agent idle RSS {} KiB with the benchmark's mesh (before the connections), {} KiB with {services} virtual services (goal <= 15360 KiB): {} KiB anonymous, {} KiB of mapped files",
        mesh.before_kib, idle_large.total_kib, idle_large.anonymous_kib, idle_large.file_kib
    );
    Ok(())
}

/// RSS of a proxy before and while holding `connections` idle ones.
struct Held {
    connections: usize,
    before_kib: u64,
    after_kib: u64,
    /// mesh-agent only: its heap and parked connections before and with the connections.
    heap: Option<(Heap, Heap)>,
}

impl Held {
    fn per_connection_bytes(&self) -> f64 {
        self.after_kib.saturating_sub(self.before_kib) as f64 * 1024.0 / self.connections as f64
    }

    fn heap_per_connection_bytes(&self) -> Option<f64> {
        let (before, after) = self.heap.as_ref()?;
        Some((after.in_use - before.in_use).max(0.0) / self.connections as f64)
    }
}

fn per_connection(
    bench: &L7Bench,
    script: &Path,
    via: Via,
    connections: usize,
    proxy_pid: u32,
) -> anyhow::Result<Held> {
    bench.enroll_client(via == Via::Mesh)?;
    let target = bench.target(via, false);
    let url = target
        .url
        .strip_prefix("http://")
        .and_then(|rest| rest.strip_suffix('/'))
        .context("target URL")?;
    let (host, port) = url.rsplit_once(':').context("target port")?;
    let authority = target.host.unwrap_or_else(|| url.to_owned());
    // What start-up and the warm-up requests freed goes back first (mesh-agent's allocator
    // returns pages a second after they were freed), so that it is not taken as room the
    // connections then fill.
    std::thread::sleep(SETTLE);
    let before_kib = status_kib(proxy_pid, "VmRSS:").unwrap_or(0);
    let heap_before = agent_heap(bench, via)?;
    let output = bench.workdir.join("idle_connections.out");
    let mut command = bench.node.pod_command("client", "python3")?;
    command
        .arg(script)
        .args([host, port, &authority, &connections.to_string()])
        .stdout(std::fs::File::create(&output)?);
    let mut holder = Proc::spawn("idle connections", command)?;
    wait_for_open(&output, &mut holder, Duration::from_secs(300))?;
    // Let the proxy finish with what the last requests left behind: mesh-agent parks an
    // HTTP/1.1 connection one to two seconds after it went idle, and its allocator returns
    // the freed buffers a second later.
    std::thread::sleep(Duration::from_secs(9));
    let after_kib = status_kib(proxy_pid, "VmRSS:").unwrap_or(0);
    let heap = heap_before.zip(agent_heap(bench, via)?);
    drop(holder);
    Ok(Held {
        connections,
        before_kib,
        after_kib,
        heap,
    })
}

/// mesh-agent's own account of its heap and its parked connections.
struct Heap {
    in_use: f64,
    parked: f64,
}

/// What mesh-agent says of its heap and parked connections; nothing through HAProxy.
fn agent_heap(bench: &L7Bench, via: Via) -> anyhow::Result<Option<Heap>> {
    if via != Via::Mesh {
        return Ok(None);
    }
    let metrics = bench.agent.metrics(&bench.node)?;
    Ok(Some(Heap {
        in_use: metric_value(&metrics, r#"mesh_agent_heap_bytes{state="in_use"}"#),
        parked: metric_value(&metrics, "mesh_http_connections_parked"),
    }))
}

fn wait_for_open(output: &Path, holder: &mut Proc, timeout: Duration) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if std::fs::read_to_string(output)?.starts_with("open ") {
            return Ok(());
        }
        if !holder.is_running() {
            bail!("the connection holder exited before opening its connections");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("the connections were not open within {timeout:?}")
}

/// Restarts the node's agent with a generated mesh of `services` virtual services (every one
/// a backend of one virtual node) and returns its RSS once it has settled.
fn idle_with_services(bench: &mut L7Bench, services: usize) -> anyhow::Result<IdleRss> {
    let mesh_dir = bench.workdir.join(format!("mesh-{services}"));
    std::fs::create_dir_all(&mesh_dir)?;
    bench_xds::generate(&mesh_dir, services)?;
    bench.agent.signal(libc::SIGTERM)?;
    bench.agent.wait_exit(Duration::from_secs(30))?;
    let config = config_for(&bench.node, &[], "")?;
    bench.agent = Agent::start_with_args(
        &bench.node,
        &config,
        &bench.workdir,
        &["--mesh", mesh_dir.to_str().context("path")?],
    )?;
    std::thread::sleep(SETTLE);
    let pid = bench.agent.pid();
    Ok(IdleRss {
        total_kib: status_kib(pid, "VmRSS:").unwrap_or(0),
        anonymous_kib: status_kib(pid, "RssAnon:").unwrap_or(0),
        file_kib: status_kib(pid, "RssFile:").unwrap_or(0),
    })
}

/// Idle RSS, and what it is made of: anonymous memory (heap, stacks) and the pages of the
/// executable and libraries that were touched (shared with any other copy running).
struct IdleRss {
    total_kib: u64,
    anonymous_kib: u64,
    file_kib: u64,
}
