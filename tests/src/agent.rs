//! The real mesh-agent binary, run on a test node.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitStatus,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{node::Node, process::Proc};

pub const PROXY_PORT: u16 = 15001;
pub const ADMIN_PORT: u16 = 15020;

/// The mesh-agent binary: MESH_AGENT_BIN, or `mesh-agent` next to the running executable's
/// profile directory (target/<profile>/mesh-agent).
pub fn agent_binary() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("MESH_AGENT_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(3) {
        let candidate = dir.join("mesh-agent");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "mesh-agent binary not found near {}; build it or set MESH_AGENT_BIN",
        exe.display()
    )
}

/// A config for an agent on `node` enrolling `pods`; `extra` is appended verbatim (YAML).
pub fn config_for(node: &Node, pods: &[&str], extra: &str) -> anyhow::Result<String> {
    let mut netns = Vec::new();
    for pod in pods {
        netns.push(node.pod(pod)?.netns_name().to_owned());
    }
    Ok(format!(
        "cgroup_path: {cgroup}\nbpffs_path: {bpffs}\nproxy:\n  outbound_addr: {node_ip}:{PROXY_PORT}\n  drain_timeout: 2s\nadmin:\n  addr: 127.0.0.1:{ADMIN_PORT}\n  socket: {socket}\nenrollment:\n  netns: [{netns}]\n{extra}",
        cgroup = node.cgroup_path().display(),
        bpffs = node.bpffs().display(),
        node_ip = node.ip(),
        socket = node.admin_socket().display(),
        netns = netns.join(", "),
    ))
}

/// `config` (from [`config_for`]) also enrolling, by discovery, every pod namespace of `node`
/// whose address is an endpoint of the mesh (`enrollment.discover`): the mesh decides.
pub fn discovering_pods(node: &Node, config: &str) -> String {
    config.replace(
        "enrollment:\n",
        &format!("enrollment:\n  discover: \"{}-*\"\n", node.tag()),
    )
}

pub struct Agent {
    proc: Proc,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
}

impl Agent {
    pub fn admin_addr() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], ADMIN_PORT))
    }

    /// Starts the agent on the node's namespace with `config` and waits until /readyz is 200.
    pub fn start(node: &Node, config: &str, workdir: &Path) -> anyhow::Result<Self> {
        Self::start_with_args(node, config, workdir, &[])
    }

    /// As [`Agent::start`], with more `run` arguments (e.g. `--mesh DIR`).
    pub fn start_with_args(
        node: &Node,
        config: &str,
        workdir: &Path,
        args: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_binary(&agent_binary()?, node, config, workdir, args)
    }

    /// As [`Agent::start_with_args`], running `binary` (another build, to compare with).
    pub fn start_binary(
        binary: &Path,
        node: &Node,
        config: &str,
        workdir: &Path,
        args: &[&str],
    ) -> anyhow::Result<Self> {
        let mut agent = Self::spawn_binary(binary, node, config, workdir, args)?;
        agent.wait_until(Duration::from_secs(20), "ready", |_| {
            matches!(
                node.http("GET", Self::admin_addr(), "/readyz"),
                Ok((200, _))
            )
        })?;
        Ok(agent)
    }

    /// For a second agent beside a running one, as an upgrade has: the two share their
    /// ports, so /readyz may answer for either; this waits until this one's log says it
    /// serves (it listens only once it has its mesh).
    pub fn wait_running(&mut self) -> anyhow::Result<()> {
        self.wait_until(Duration::from_secs(40), "running", |agent| {
            agent.log().contains("mesh-agent running")
        })
    }

    /// Starts the agent without waiting for anything (see [`Agent::wait_running`]).
    pub fn spawn(node: &Node, config: &str, workdir: &Path, args: &[&str]) -> anyhow::Result<Self> {
        Self::spawn_binary(&agent_binary()?, node, config, workdir, args)
    }

    fn spawn_binary(
        binary: &Path,
        node: &Node,
        config: &str,
        workdir: &Path,
        args: &[&str],
    ) -> anyhow::Result<Self> {
        let config_path = workdir.join("agent.yaml");
        std::fs::write(&config_path, config)?;
        let log_path = workdir.join("agent.log");
        let log = std::fs::File::create(&log_path)?;
        let mut command = node.node_command(binary.to_str().context("path")?)?;
        command
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("MESH_AGENT_LOG").unwrap_or_else(|_| "info".into()),
            )
            // Access logs to /dev/stdout land in the log beside the agent's own lines.
            .stdout(log.try_clone()?)
            .stderr(log);
        let proc = Proc::spawn("mesh-agent", command)?;
        Ok(Self {
            proc,
            config_path,
            log_path,
        })
    }

    /// `mesh-agent uninstall` with this agent's configuration: the pinned redirect is
    /// detached; returns what it printed.
    pub fn uninstall(&self, node: &Node) -> anyhow::Result<String> {
        let mut command = node.node_command(agent_binary()?.to_str().context("path")?)?;
        command
            .arg("uninstall")
            .arg("--config")
            .arg(&self.config_path);
        let output = crate::process::output_within(command, Duration::from_secs(20))?;
        if !output.status.success() {
            bail!(
                "mesh-agent uninstall failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Until `up` holds (the agent is `state`), failing early if the agent exits.
    fn wait_until(
        &mut self,
        timeout: Duration,
        state: &str,
        up: impl Fn(&Self) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.proc.is_running() {
                bail!("mesh-agent exited during start-up:\n{}", self.log());
            }
            if up(self) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("mesh-agent not {state} after {timeout:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the agent captures `count` inbound listener ports (pod address and port):
    /// until then a connection to an enrolled pod reaches its application directly.
    pub fn wait_for_inbound_ports(&self, node: &Node, count: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let metrics = self.metrics(node).unwrap_or_default();
            let captured = metric_value(&metrics, "mesh_agent_inbound_ports_captured");
            if captured >= count as f64 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{captured} inbound ports captured, not {count}:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn signal(&mut self, signal: i32) -> anyhow::Result<()> {
        self.proc.signal(signal)
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
        self.proc.wait_timeout(timeout)
    }

    /// The /metrics text.
    pub fn metrics(&self, node: &Node) -> anyhow::Result<String> {
        let (status, body) = node.http("GET", Self::admin_addr(), "/metrics")?;
        if status != 200 {
            bail!("/metrics answered {status}: {body}");
        }
        Ok(body)
    }
}

/// The value of the sample `name{labels}` in a metrics text (0 when absent).
pub fn metric_value(metrics: &str, sample: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The sum of the samples of metric `name` whose labels include every `label="value"` of
/// `labels` (other labels may be anything): counts that stay right when a label the test does
/// not care about changes (e.g. `source_virtual_node` once the peer's identity is known).
pub fn metric_sum(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (set, value) = match rest.strip_prefix('{') {
                Some(rest) => rest.rsplit_once('}')?,
                None if rest.starts_with(' ') => ("", rest),
                None => return None,
            };
            let set = format!(",{set},");
            labels
                .iter()
                .all(|(key, value)| set.contains(&format!(",{key}=\"{value}\",")))
                .then(|| value.trim().parse::<f64>().ok())?
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sum_adds_the_samples_with_the_given_labels() {
        let metrics = "# HELP x\n\
            mesh_requests_total{reporter=\"inbound\",source=\"unknown\",code=\"200\"} 2\n\
            mesh_requests_total{reporter=\"inbound\",source=\"m/client\",code=\"200\"} 3\n\
            mesh_requests_total{reporter=\"inbound\",source=\"m/client\",code=\"503\"} 7\n\
            mesh_requests_total{reporter=\"outbound\",source=\"m/client\",code=\"200\"} 11\n\
            mesh_requests_total_other{reporter=\"inbound\",code=\"200\"} 100\n\
            plain 4\n";
        let sum = |labels: &[(&str, &str)]| metric_sum(metrics, "mesh_requests_total", labels);
        assert_eq!(sum(&[("reporter", "inbound"), ("code", "200")]), 5.0);
        assert_eq!(sum(&[("reporter", "inbound")]), 12.0);
        assert_eq!(sum(&[]), 23.0);
        assert_eq!(sum(&[("code", "20")]), 0.0);
        assert_eq!(metric_sum(metrics, "plain", &[]), 4.0);
        assert_eq!(metric_sum(metrics, "missing", &[]), 0.0);
    }
}
