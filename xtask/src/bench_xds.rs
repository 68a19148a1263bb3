//! `cargo xtask bench-xds`: a mesh of N virtual services compiled and synced to a node agent
//! over gRPC, control plane and client as separate release-build processes. Reports the
//! control plane's start-up (read, validate, index), the first sync (compile for the node,
//! transfer, decode and check), a change's propagation, and both processes' memory.
use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc::{Receiver, channel},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::build::{self, Profile, step};

pub fn run(services: usize) -> anyhow::Result<()> {
    let binaries = build::build(Profile::Release)?;
    let dir = std::env::temp_dir().join(format!("mesh-bench-xds-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    step(&format!(
        "generating a mesh of {services} virtual services in {}",
        dir.display()
    ));
    generate(&dir, services)?;

    step("control plane start-up: read, validate and index the mesh");
    let started = Instant::now();
    let control = Process::start(
        &binaries.agent,
        &[
            "control-plane",
            "--mesh",
            path(&dir)?,
            "--listen",
            "127.0.0.1:0",
        ],
    )?;
    let serving = control.wait_line("serving ADS on", Duration::from_secs(300))?;
    let startup = started.elapsed();
    let addr = serving.rsplit(' ').next().context("no address")?.to_owned();

    step("first sync of a node whose workload reaches every service");
    let started = Instant::now();
    let agent = Process::start(
        &binaries.agent,
        &[
            "xds-dump",
            "--control-plane",
            &format!("http://{addr}"),
            "--virtual-node",
            "shop/frontend",
            "--watch",
            "--timeout",
            "300",
        ],
    )?;
    agent.wait_line("\"RouteConfiguration\"", Duration::from_secs(300))?;
    let sync = started.elapsed();

    step("a change to one route propagating to the node");
    let file = dir.join("vs-svc0.json");
    let text = std::fs::read_to_string(&file)?.replace("\"svc0\"", "\"svc1\"");
    let started = Instant::now();
    std::fs::write(&file, text)?;
    agent.wait_line("\"version\":\"v2\"", Duration::from_secs(300))?;
    let change = started.elapsed();

    let (cp_rss, cp_peak) = (kib(control.pid(), "VmRSS:"), kib(control.pid(), "VmHWM:"));
    let (agent_rss, agent_peak) = (kib(agent.pid(), "VmRSS:"), kib(agent.pid(), "VmHWM:"));
    drop(agent);
    drop(control);
    let _ = std::fs::remove_dir_all(&dir);

    step(&format!(
        "results for {services} virtual services (release build, 2 cores shared)"
    ));
    println!("  control plane start-up (read + validate + index): {startup:?}");
    println!(
        "  first sync (compile for the node + gRPC + decode/check {} clusters): {sync:?}",
        services
    );
    println!(
        "  one file changed -> node has the new routes: {change:?} (seen by a file change event; the agent decodes and checks {services} clusters and the routes)"
    );
    println!("  control plane RSS: {cp_rss} KiB now, {cp_peak} KiB peak");
    println!("  node xDS client RSS: {agent_rss} KiB now, {agent_peak} KiB peak");
    Ok(())
}

fn path(dir: &Path) -> anyhow::Result<&str> {
    dir.to_str().context("temp path is not UTF-8")
}

/// One mesh, N services each provided by its own virtual node, and a `frontend` node with
/// every service as a backend (the heaviest node: all clusters, one virtual host per service).
pub(crate) fn generate(dir: &Path, services: usize) -> anyhow::Result<()> {
    std::fs::write(dir.join("mesh.json"), r#"{"meshName": "shop", "spec": {}}"#)?;
    let mut backends = Vec::with_capacity(services);
    for i in 0..services {
        std::fs::write(
            dir.join(format!("vn-svc{i}.json")),
            format!(
                r#"{{"meshName": "shop", "virtualNodeName": "svc{i}", "spec": {{"listeners": [{{"portMapping": {{"port": 8080, "protocol": "http"}}}}], "serviceDiscovery": {{"dns": {{"hostname": "svc{i}.shop.local"}}}}}}}}"#
            ),
        )?;
        std::fs::write(
            dir.join(format!("vs-svc{i}.json")),
            format!(
                r#"{{"meshName": "shop", "virtualServiceName": "svc{i}.shop.local", "spec": {{"provider": {{"virtualNode": {{"virtualNodeName": "svc{i}"}}}}}}}}"#
            ),
        )?;
        backends.push(format!(
            r#"{{"virtualService": {{"virtualServiceName": "svc{i}.shop.local"}}}}"#
        ));
    }
    std::fs::write(
        dir.join("vn-frontend.json"),
        format!(
            r#"{{"meshName": "shop", "virtualNodeName": "frontend", "spec": {{"listeners": [{{"portMapping": {{"port": 80, "protocol": "http"}}}}], "serviceDiscovery": {{"dns": {{"hostname": "frontend.shop.local"}}}}, "backends": [{}]}}}}"#,
            backends.join(",")
        ),
    )?;
    Ok(())
}

struct Process {
    child: Child,
    lines: Receiver<String>,
}

impl Process {
    fn start(binary: &Path, args: &[&str]) -> anyhow::Result<Self> {
        let mut child = Command::new(binary)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stdout = child.stdout.take().context("stdout")?;
        let (sender, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
        Ok(Self { child, lines })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait_line(&self, text: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let line = self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .with_context(|| format!("no line with {text:?} within {timeout:?}"))?;
            if line.contains(text) {
                return Ok(line);
            }
            if Instant::now() >= deadline {
                bail!("no line with {text:?} within {timeout:?}");
            }
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
