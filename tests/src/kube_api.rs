//! The stand-in Kubernetes API server (tests/kube/apiserver.py) on a test node: started in
//! the node's namespace (where the agent runs), with a kubeconfig naming it, and driven by
//! the test through its /_test/ endpoints (objects put and deleted, history compacted, what
//! the control plane reported read back).
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::{Node, Proc};

pub struct KubeApi {
    addr: SocketAddr,
    kubeconfig: PathBuf,
    netns: PathBuf,
    _server: Proc,
}

impl KubeApi {
    /// Starts the stand-in on the node's loopback; its log and kubeconfig go in `dir`.
    pub fn start(node: &Node, dir: &Path) -> anyhow::Result<Self> {
        let script = format!("{}/kube/apiserver.py", env!("CARGO_MANIFEST_DIR"));
        let port_file = dir.join("apiserver.port");
        let log = std::fs::File::create(dir.join("apiserver.log"))?;
        let mut command = node.node_command("python3")?;
        command
            .args([&script, "--listen", "127.0.0.1", "--port-file"])
            .arg(&port_file)
            .stdout(log.try_clone()?)
            .stderr(log);
        let mut server = Proc::spawn("apiserver.py", command)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let port: u16 = loop {
            if let Ok(text) = std::fs::read_to_string(&port_file) {
                break text.trim().parse().context("port file")?;
            }
            if !server.is_running() || Instant::now() > deadline {
                bail!("the stand-in API server did not start");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster: {{server: \"http://{addr}\"}}\n\
                 users:\n- name: test\n  user: {{}}\ncontexts:\n- name: test\n  context: {{cluster: test, user: test}}\n\
                 current-context: test\n"
            ),
        )?;
        Ok(Self {
            addr,
            kubeconfig,
            netns: node.netns().path(),
            _server: server,
        })
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Creates or replaces these objects (each a separate change, in order).
    pub fn put(&self, objects: &[Value]) -> anyhow::Result<()> {
        let body = serde_json::json!({ "items": objects });
        self.request("PUT", "/_test/objects", Some(&body)).map(drop)
    }

    pub fn delete(&self, objects: &[Value]) -> anyhow::Result<()> {
        let body = serde_json::json!({ "items": objects });
        self.request("DELETE", "/_test/objects", Some(&body))
            .map(drop)
    }

    /// Forgets the watch history and ends every watch: watchers resuming from an older
    /// resourceVersion get 410 Gone and must relist.
    pub fn compact(&self) -> anyhow::Result<()> {
        self.request("POST", "/_test/compact", None).map(drop)
    }

    /// `{"status_patches": [...], "events": [...]}` the control plane wrote.
    pub fn recorded(&self) -> anyhow::Result<Value> {
        self.request("GET", "/_test/recorded", None)
    }

    /// `{"lists": {PLURAL: N}, "gone": N, "watches": N}`.
    pub fn stats(&self) -> anyhow::Result<Value> {
        self.request("GET", "/_test/stats", None)
    }

    fn request(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let addr = self.addr;
        let mut stream = crate::netns::run_in_path(&self.netns, || {
            TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        })?
        .with_context(|| format!("connect {addr}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let body = body.map(Value::to_string).unwrap_or_default();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        if !head.starts_with("HTTP/1.1 200") {
            bail!("{method} {path}: {head}\n{body}");
        }
        serde_json::from_str(body).with_context(|| format!("{method} {path}: {body}"))
    }
}
