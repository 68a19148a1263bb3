//! `cargo xtask bench-xds`: a mesh of N virtual services compiled and synced to a node agent
//! over gRPC, control plane and client as separate release-build processes. Reports the
//! control plane's start-up (read, validate, index), the first sync (compile for the node,
//! transfer, decode and check), changes' propagation, and both processes' memory.
use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc::{Receiver, channel},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    bench::{cpu_seconds, status_kib},
    build::{self, Profile, step},
};

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
    let files = std::fs::read_dir(&dir)?.count();
    // Files modified within a second of being read are read again at the next reload (their
    // stamp may not show a second write in the same tick): started later, the control plane
    // trusts the stamps, as it would a mesh not written just before it started.
    std::thread::sleep(RACY);

    step("control plane start-up: read, validate and index the mesh");
    let started = Instant::now();
    // Its log (JSON) says how long each reload of the mesh files and each compile of the
    // mesh for the node took.
    let log_path = std::env::temp_dir().join(format!("mesh-bench-xds-{}.log", std::process::id()));
    let log = std::fs::File::create(&log_path)?;
    let control = Process::start(
        &binaries.agent,
        &[
            "control-plane",
            "--mesh",
            path(&dir)?,
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ],
        "warn,control_plane::ads=debug,control_plane::runtime=debug",
        log.into(),
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
        "warn",
        Stdio::inherit(),
    )?;
    agent.wait_line("\"RouteConfiguration\"", Duration::from_secs(300))?;
    let sync = started.elapsed();

    step("changes to one route each propagating to the node");
    let mut changes = Vec::new();
    for (n, version) in (2..2 + CHANGES).enumerate() {
        // Virtual service svcN is now provided by svcN+1's node: its route changes.
        let file = dir.join(format!("vs-svc{n}.json"));
        let text = std::fs::read_to_string(&file)?
            .replace(&format!("\"svc{n}\""), &format!("\"svc{}\"", n + 1));
        let started = Instant::now();
        std::fs::write(&file, text)?;
        agent.wait_line_where(Duration::from_secs(300), |line| {
            routes_version(line).as_deref() == Some(&format!("v{version}"))
        })?;
        changes.push(started.elapsed());
        std::thread::sleep(BETWEEN_CHANGES);
    }

    step("the control plane while nothing changes");
    // What watching the files costs (polls); meanwhile both processes settle: they run on
    // jemalloc, which gives back what a compile freed about a second later.
    let cpu_before = cpu_seconds(control.pid())?;
    std::thread::sleep(IDLE);
    let idle_cpu = cpu_seconds(control.pid())? - cpu_before;
    let kib = |pid, field| status_kib(pid, field).unwrap_or(0);
    let (cp_rss, cp_peak) = (kib(control.pid(), "VmRSS:"), kib(control.pid(), "VmHWM:"));
    let (agent_rss, agent_peak) = (kib(agent.pid(), "VmRSS:"), kib(agent.pid(), "VmHWM:"));
    drop(agent);
    drop(control);
    let _ = std::fs::remove_dir_all(&dir);
    let entries = log_entries(&std::fs::read_to_string(&log_path)?);
    let (reloads, compiles) = (
        logged_times(&entries, RELOADED),
        logged_times(&entries, COMPILED_FOR_NODE),
    );
    let _ = std::fs::remove_file(&log_path);

    step(&format!(
        "results for {services} virtual services (release build, 2 cores shared)"
    ));
    println!("  control plane start-up (read + validate + index): {startup:?}");
    println!(
        "  first sync (compile for the node + gRPC + decode/check {} clusters): {sync:?}",
        services
    );
    println!(
        "  one file changed -> node has the new routes, {CHANGES} changes {}s apart: {} (the file seen changed by inotify; the node decodes and checks what changed: a cluster, the route table of {services} virtual hosts)",
        BETWEEN_CHANGES.as_secs_f64(),
        changes
            .iter()
            .map(|d| format!("{:.0} ms", d.as_secs_f64() * 1e3))
            .collect::<Vec<_>>()
            .join(", ")
    );
    print_against_first(
        "reading, checking and indexing the mesh files",
        &reloads,
        "at start-up (every file)",
        "the changed file read; what spans files redone",
    );
    print_against_first(
        "compiling the mesh for the node",
        &compiles,
        "at the first sync (every resource)",
        "what they touched; the rest reused",
    );
    println!(
        "  control plane CPU while nothing changes: {:.1} ms per second over {} s (watching {} files)",
        idle_cpu * 1e3 / IDLE.as_secs_f64(),
        IDLE.as_secs(),
        files
    );
    println!(
        "  control plane RSS: {cp_rss} KiB settled ({} s after the last change), {cp_peak} KiB peak",
        IDLE.as_secs()
    );
    println!("  node xDS client RSS: {agent_rss} KiB settled, {agent_peak} KiB peak");
    Ok(())
}

/// How long after it was modified a file's stamp is trusted (`mesh_files.rs`), with margin.
const RACY: Duration = Duration::from_millis(1100);

/// Changes measured one after the other, and the pause between them.
const CHANGES: usize = 3;
const BETWEEN_CHANGES: Duration = Duration::from_millis(1500);

/// How long the control plane is watched doing nothing: the longest interval between polls
/// of files whose changes are reported (watch.rs), so a poll falls in it.
const IDLE: Duration = Duration::from_secs(30);

/// The route configurations' version in a line of `xds-dump --watch` (its summary JSON).
fn routes_version(line: &str) -> Option<String> {
    let summary: serde_json::Value = serde_json::from_str(line).ok()?;
    Some(
        summary["RouteConfiguration"]["version"]
            .as_str()?
            .to_owned(),
    )
}

/// A step's times: the first (which did everything), then each change's with its ratio to it.
fn print_against_first(step: &str, times: &[f64], first_was: &str, changes_do: &str) {
    if let Some((first, rest)) = times.split_first() {
        let changes: Vec<String> = rest
            .iter()
            .map(|ms| format!("{ms:.1} ms ({:.3}x)", ms / first))
            .collect();
        println!(
            "  {step}: {first:.1} ms {first_was}, {} for the changes ({changes_do})",
            changes.join(", ")
        );
    }
}

/// The control plane's log messages that time a reload of the mesh files and a compile for
/// a node view.
const RELOADED: &str = "mesh files read, checked and indexed";
const COMPILED_FOR_NODE: &str = "mesh compiled for a node view";

/// The control plane's JSON log entries; its warnings and errors (and lines that are not
/// JSON) are passed on.
fn log_entries(log: &str) -> Vec<serde_json::Value> {
    let mut entries = Vec::new();
    for line in log.lines() {
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(entry) => {
                if entry["level"] == "WARN" || entry["level"] == "ERROR" {
                    eprintln!("{line}");
                }
                entries.push(entry);
            }
            Err(_) => eprintln!("{line}"),
        }
    }
    entries
}

/// How long each step logged with `message` took, in order.
fn logged_times(entries: &[serde_json::Value], message: &str) -> Vec<f64> {
    entries
        .iter()
        .filter(|entry| entry["message"] == message)
        .filter_map(|entry| entry["elapsed_ms"].as_f64())
        .collect()
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
    /// Starts `binary` logging at `log` (RUST_LOG) to `stderr`.
    fn start(binary: &Path, args: &[&str], log: &str, stderr: Stdio) -> anyhow::Result<Self> {
        let mut child = Command::new(binary)
            .args(args)
            .env("RUST_LOG", log)
            .stdout(Stdio::piped())
            .stderr(stderr)
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
        self.wait_line_where(timeout, |line| line.contains(text))
            .with_context(|| format!("no line with {text:?}"))
    }

    fn wait_line_where(
        &self,
        timeout: Duration,
        wanted: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let line = self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .with_context(|| format!("not within {timeout:?}"))?;
            if wanted(&line) {
                return Ok(line);
            }
            if Instant::now() >= deadline {
                bail!("not within {timeout:?}");
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
