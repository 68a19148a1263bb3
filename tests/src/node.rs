//! A test node: a node network namespace with a bridge, pods on veth pairs, one cgroup.
use std::{
    fs,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::{
    cgroup::{self, TestCgroup},
    netns::{self, NETNS_DIR, NetNs},
    process::{Placement, Proc, output_within},
};

/// Every test node's resources carry this prefix and the pid of the process that made them,
/// so a later run can tell leftovers (dead pid) from a concurrent run's (live pid).
const PREFIX: &str = "meshtb";
/// The bridge address of a node made by [`Node::create`] (node number 0). A numbered node's is
/// [`node_ip`]`(n)`; use [`Node::ip`] for a given node.
pub const NODE_IP: Ipv4Addr = node_ip(0);
/// Node numbers stop below 200: 10.77.200.1 is the tests' virtual-service address.
pub const MAX_NODE_NUMBER: u8 = 199;

/// The bridge address of node number `n`: 10.77.n.1 (its subnet 10.77.n.0/24).
pub const fn node_ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, n, 1)
}

pub struct Pod {
    pub name: String,
    pub ip: Ipv4Addr,
    netns: NetNs,
}

impl Pod {
    pub fn netns_path(&self) -> PathBuf {
        self.netns.path()
    }

    pub fn netns_name(&self) -> &str {
        self.netns.name()
    }
}

pub struct Node {
    tag: String,
    number: u8,
    // Field order is drop order: pods before the node namespace, the cgroup last.
    pods: Vec<Pod>,
    netns: NetNs,
    cgroup: TestCgroup,
}

impl Node {
    /// Creates an empty node, number 0 (bridge 10.77.0.1/24); `label` tells nodes of one run
    /// apart.
    pub fn create(label: &str) -> anyhow::Result<Self> {
        Self::create_numbered(label, 0)
    }

    /// Creates an empty node number `number`: bridge 10.77.`number`.1/24, pods at
    /// 10.77.`number`.(10 + index). Nodes of one test that are linked ([`crate::NodeLink`])
    /// need distinct numbers; `label`s must differ in any case.
    pub fn create_numbered(label: &str, number: u8) -> anyhow::Result<Self> {
        if number > MAX_NODE_NUMBER {
            bail!("node number {number} is above {MAX_NODE_NUMBER}");
        }
        remove_leftovers();
        let tag = format!("{PREFIX}{}-{label}", std::process::id());
        let netns = NetNs::create(&format!("{tag}-node"))?;
        let cgroup = TestCgroup::create(&tag)?;
        netns.ip(&["link", "add", "br0", "type", "bridge"])?;
        netns.ip(&[
            "addr",
            "add",
            &format!("{}/24", node_ip(number)),
            "dev",
            "br0",
        ])?;
        netns.ip(&["link", "set", "br0", "up"])?;
        Ok(Self {
            tag,
            number,
            pods: Vec::new(),
            netns,
            cgroup,
        })
    }

    /// The node's number (0 for [`Node::create`]).
    pub fn number(&self) -> u8 {
        self.number
    }

    /// The node's address on its bridge (the pods' gateway): 10.77.`number`.1.
    pub fn ip(&self) -> Ipv4Addr {
        node_ip(self.number)
    }

    /// The pods' subnet, `10.77.number.0/24`.
    pub fn subnet(&self) -> String {
        format!("10.77.{}.0/24", self.number)
    }

    /// What tells this node's namespaces, cgroup and admin socket apart: `meshtb<pid>-<label>`.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Adds a pod at 10.77.`number`.(10 + index) wired to the node's bridge.
    pub fn add_pod(&mut self, name: &str) -> anyhow::Result<&Pod> {
        let index = self.pods.len();
        if index >= 200 {
            bail!("too many pods");
        }
        let ip = Ipv4Addr::new(10, 77, self.number, 10 + index as u8);
        let pod_ns = NetNs::create(&format!("{}-{name}", self.tag))?;
        let host_if = format!("veth{index}");
        self.netns.ip(&[
            "link",
            "add",
            &host_if,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            pod_ns.name(),
        ])?;
        self.netns
            .ip(&["link", "set", &host_if, "master", "br0", "up"])?;
        pod_ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        pod_ns.ip(&["link", "set", "eth0", "up"])?;
        pod_ns.ip(&["route", "add", "default", "via", &self.ip().to_string()])?;
        self.pods.push(Pod {
            name: name.to_owned(),
            ip,
            netns: pod_ns,
        });
        self.pod(name)
    }

    pub fn pod(&self, name: &str) -> anyhow::Result<&Pod> {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .with_context(|| format!("no pod {name}"))
    }

    pub fn cgroup_path(&self) -> &Path {
        self.cgroup.path()
    }

    pub fn netns(&self) -> &NetNs {
        &self.netns
    }

    /// A command that will run in pod `pod` (its namespace, the node's cgroup).
    pub fn pod_command(&self, pod: &str, program: &str) -> anyhow::Result<Command> {
        let pod = self.pod(pod)?;
        let mut command = Command::new(program);
        let procs = self.cgroup.procs_file();
        Placement {
            netns: &pod.netns_path(),
            cgroup_procs: Some(&procs),
        }
        .apply(&mut command)?;
        Ok(command)
    }

    /// A command that will run on the node (its namespace, outside the pods' cgroup).
    pub fn node_command(&self, program: &str) -> anyhow::Result<Command> {
        let mut command = Command::new(program);
        Placement {
            netns: &self.netns.path(),
            cgroup_procs: None,
        }
        .apply(&mut command)?;
        Ok(command)
    }

    pub fn spawn_in_pod(&self, pod: &str, program: &str, args: &[&str]) -> anyhow::Result<Proc> {
        let mut command = self.pod_command(pod, program)?;
        command.args(args);
        Proc::spawn(&format!("{program} in {pod}"), command)
    }

    /// Runs a short command in a pod and returns its output.
    pub fn run_in_pod(
        &self,
        pod: &str,
        program: &str,
        args: &[&str],
        timeout: Duration,
    ) -> anyhow::Result<Output> {
        let mut command = self.pod_command(pod, program)?;
        command.args(args);
        output_within(command, timeout)
    }

    /// Where the pods' resolv.conf is: the node's address as their nameserver (see
    /// [`Node::run_in_pod_resolving`]).
    pub fn pods_resolv_conf(&self) -> PathBuf {
        std::env::temp_dir().join(format!("{}-resolv.conf", self.tag))
    }

    /// Runs a short command in a pod as its applications run: with a resolv.conf of the pod's
    /// own (bind-mounted over /etc/resolv.conf in a mount namespace of the command, as a
    /// container runtime does) naming the node's address as the nameserver — whatever the
    /// host's resolv.conf says (a loopback resolver such as systemd-resolved's would be the
    /// pod's own loopback).
    pub fn run_in_pod_resolving(
        &self,
        pod: &str,
        program: &str,
        args: &[&str],
        timeout: Duration,
    ) -> anyhow::Result<Output> {
        let resolv_conf = self.pods_resolv_conf();
        fs::write(
            &resolv_conf,
            format!("nameserver {}\noptions timeout:2 attempts:2\n", self.ip()),
        )?;
        let mut all = vec![
            "--mount",
            "--",
            "sh",
            "-c",
            "mount --bind \"$0\" /etc/resolv.conf && exec \"$@\"",
            resolv_conf.to_str().context("resolv.conf path")?,
            program,
        ];
        all.extend_from_slice(args);
        self.run_in_pod(pod, "unshare", &all, timeout)
    }

    /// curl from `pod` to `http://{service}:{port}{path}` with `args`: (status, body,
    /// response headers); the headers go through `scratch` (a file path). With `vip` (an
    /// address only the mesh routes) the name resolves to it (`--resolve`); without, the pod
    /// resolves it (an enrolled pod: the agent's DNS answers mesh names).
    pub fn curl_service(
        &self,
        pod: &str,
        (service, port, vip): (&str, u16, Option<&str>),
        path: &str,
        args: &[&str],
        scratch: &Path,
        timeout: Duration,
    ) -> anyhow::Result<(u16, String, String)> {
        let url = format!("http://{service}:{port}{path}");
        let headers_file = scratch.to_str().context("scratch path")?;
        let mut all = vec![
            "-sS",
            "--max-time",
            "20",
            "-D",
            headers_file,
            "-w",
            "\n%{http_code}",
        ];
        let resolve = vip.map(|vip| format!("{service}:{port}:{vip}"));
        if let Some(resolve) = &resolve {
            all.extend(["--resolve", resolve.as_str()]);
        }
        all.extend_from_slice(args);
        all.push(&url);
        let output = match vip {
            Some(_) => self.run_in_pod(pod, "curl", &all, timeout)?,
            None => self.run_in_pod_resolving(pod, "curl", &all, timeout)?,
        };
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let (body, status) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
        let headers = fs::read_to_string(scratch).unwrap_or_default();
        Ok((status.trim().parse().unwrap_or(0), body.to_owned(), headers))
    }

    /// Waits until something listens on `addr` (reachable from the node namespace).
    pub fn wait_for_listener(&self, addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let up = self
                .netns
                .run_in(|| TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok())?;
            if up {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                bail!("nothing listening on {addr} after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A plain HTTP/1.0 request from the node namespace (for the agent's admin endpoint).
    /// Where an agent on this node serves its admin socket (see [`crate::agent::config_for`]).
    pub fn admin_socket(&self) -> PathBuf {
        std::env::temp_dir().join(format!("{}-admin.sock", self.tag))
    }

    /// The BPF filesystem an agent on this node pins its redirect in (see
    /// [`crate::agent::config_for`]): the agent mounts it; dropping the node unmounts it, so
    /// no pin outlives the test, whatever the agent left.
    pub fn bpffs(&self) -> PathBuf {
        std::env::temp_dir().join(format!("{}-bpffs", self.tag))
    }

    /// `method path` on the agent's admin socket (enrollment, config dump): the status and
    /// the body.
    pub fn admin(&self, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
        let socket = self.admin_socket();
        let mut stream = std::os::unix::net::UnixStream::connect(&socket)
            .with_context(|| format!("connect {}", socket.display()))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(stream, "{method} {path} HTTP/1.0\r\nHost: admin\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        parse_response(&response, path)
    }

    pub fn http(
        &self,
        method: &str,
        addr: SocketAddr,
        path: &str,
    ) -> anyhow::Result<(u16, String)> {
        let mut stream = self
            .netns
            .run_in(|| TcpStream::connect_timeout(&addr, Duration::from_secs(2)))?
            .with_context(|| format!("connect {addr}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(stream, "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        parse_response(&response, &format!("{addr}{path}"))
    }
}

/// The status and body of an HTTP/1.0 response read whole.
fn parse_response(response: &str, what: &str) -> anyhow::Result<(u16, String)> {
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad HTTP response from {what}: {head}"))?;
    Ok((status, body.to_owned()))
}

impl Drop for Node {
    fn drop(&mut self) {
        // The agent removes its socket when it stops; not when it was killed.
        let _ = fs::remove_file(self.admin_socket());
        let _ = fs::remove_file(self.pods_resolv_conf());
        remove_bpffs(&self.bpffs());
    }
}

/// Unmounts a test node's BPF filesystem (its pins go with it: the programs detach) and
/// removes the mount point.
fn remove_bpffs(path: &Path) {
    while nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH).is_ok() {}
    let _ = fs::remove_dir(path);
}

/// Removes namespaces and cgroups of test nodes whose creating process is gone.
pub fn remove_leftovers() {
    let dead = |name: &str| -> bool {
        let Some(rest) = name.strip_prefix(PREFIX) else {
            return false;
        };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        match pid.parse::<u32>() {
            Ok(pid) => !Path::new(&format!("/proc/{pid}")).exists(),
            Err(_) => false,
        }
    };
    if let Ok(entries) = fs::read_dir(NETNS_DIR) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if dead(&name) {
                let _ = netns::run("ip", &["netns", "del", &name]);
            }
        }
    }
    if let Ok(entries) = fs::read_dir(std::env::temp_dir()) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with("-bpffs") && dead(&name) {
                remove_bpffs(&entry.path());
            }
        }
    }
    if let Ok(root) = cgroup::cgroup2_root()
        && let Ok(entries) = fs::read_dir(&root)
    {
        for entry in entries.flatten() {
            if dead(&entry.file_name().to_string_lossy()) {
                cgroup::remove(&entry.path());
            }
        }
    }
}
