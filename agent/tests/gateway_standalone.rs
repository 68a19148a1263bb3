//! `mesh-agent gateway`: a virtual gateway served standalone (no eBPF, no privileges), its
//! mesh from an embedded control plane, in front of a service on loopback: the gateway
//! routes with App Mesh's rewrite defaults, the target service's routing, metrics under
//! reporter="gateway", and a clean stop on SIGTERM.
// A test's panic is its failure, with the message saying what failed.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::json;

/// A loopback HTTP server answering `hello from NAME path=PATH host=HOST`.
fn http_server(ip: Ipv4Addr, name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind((ip, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || answer(stream, name));
        }
    });
    addr
}

fn answer(stream: TcpStream, name: &str) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_owned();
        let mut host = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            if let Some(value) = line.to_ascii_lowercase().strip_prefix("host:") {
                host = value.trim().to_owned();
            }
        }
        let body = format!("hello from {name} path={path} host={host}\n");
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if (&stream).write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET `path` on `addr` with `Host: host` (HTTP/1.0): status and body.
fn get(addr: SocketAddr, host: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_owned()))
}

struct Gateway(Child);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_standalone_gateway_routes_outside_clients_into_the_mesh() {
    let server = http_server(Ipv4Addr::LOCALHOST, "v1");
    let (gateway_port, admin_port) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let files = [
        ("mesh", json!({"meshName": "m", "spec": {}})),
        (
            "vn-v1",
            json!({"meshName": "m", "virtualNodeName": "v1", "spec": {
                "listeners": [{"portMapping": {"port": server.port(), "protocol": "http"}}],
                "serviceDiscovery": {"dns": {"hostname": "127.0.0.1"}}}}),
        ),
        (
            "vs",
            json!({"meshName": "m", "virtualServiceName": "api.m.local", "spec": {
                "provider": {"virtualNode": {"virtualNodeName": "v1"}}}}),
        ),
        (
            "vg",
            json!({"meshName": "m", "virtualGatewayName": "gw", "spec": {"listeners": [
                {"portMapping": {"port": gateway_port, "protocol": "http"}}]}}),
        ),
        (
            "gr",
            json!({"meshName": "m", "virtualGatewayName": "gw", "gatewayRouteName": "api",
                "spec": {"httpRoute": {"match": {"prefix": "/api/"},
                    "action": {"target": {"virtualService": {"virtualServiceName": "api.m.local"}}}}}}),
        ),
    ];
    for (name, value) in files {
        std::fs::write(dir.path().join(format!("{name}.json")), value.to_string()).unwrap();
    }
    let admin = format!("127.0.0.1:{admin_port}");
    let mut gateway = Gateway(
        Command::new(env!("CARGO_BIN_EXE_mesh-agent"))
            .args([
                "gateway",
                "--virtual-gateway",
                "m/gw",
                "--listen",
                "127.0.0.1",
            ])
            .args(["--admin", &admin, "--mesh", dir.path().to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let entry = SocketAddr::from((Ipv4Addr::LOCALHOST, gateway_port));
    let deadline = Instant::now() + Duration::from_secs(20);
    let (status, body) = loop {
        if let Ok((200, body)) = get(entry, "gateway.example.com", "/api/items") {
            break (200, body);
        }
        assert!(Instant::now() < deadline, "the gateway does not answer");
        std::thread::sleep(Duration::from_millis(100));
    };
    // The matched prefix became /, the Host the target service.
    assert_eq!(status, 200);
    assert!(
        body.starts_with("hello from v1 path=/items host=api.m.local"),
        "{body}"
    );
    let (status, _) = get(entry, "gateway.example.com", "/elsewhere").unwrap();
    assert_eq!(status, 404, "no gateway route matches");
    let (_, metrics) = get(admin.parse().unwrap(), "admin", "/metrics").unwrap();
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("mesh_requests_total{")
                && line.contains("reporter=\"gateway\"")
                && line.contains("source_virtual_node=\"m/gateway/gw\"")
                && line.contains("destination_virtual_node=\"m/v1\"")),
        "{metrics}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(gateway.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = gateway.0.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}
