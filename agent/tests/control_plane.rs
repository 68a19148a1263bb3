//! The control plane and a node's xDS client as separate processes over gRPC: initial sync,
//! a file change reaching the client, a bad change rejected while the last good mesh keeps
//! being served, a control-plane restart the client rides through.
// A test's panic is its failure, with the message saying what failed.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc::{Receiver, RecvTimeoutError, channel},
    time::{Duration, Instant},
};

struct Running {
    child: Child,
    lines: Receiver<String>,
}

impl Running {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mesh-agent"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (sender, lines) = channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let sender = sender.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = sender.send(line);
                }
            });
        }
        Self { child, lines }
    }

    /// The next line containing `text`, within `timeout`.
    fn line_with(&self, text: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(text) => return Some(line),
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn copy_shop(to: &Path) {
    let shop = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/shop");
    for entry in std::fs::read_dir(shop).unwrap().flatten() {
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn control_plane_and_agent_over_grpc() {
    let dir = tempfile::tempdir().unwrap();
    copy_shop(dir.path());
    let mesh = dir.path().to_str().unwrap();
    let control = Running::start(&["control-plane", "--mesh", mesh, "--listen", "127.0.0.1:0"]);
    let serving = control
        .line_with("serving ADS on", WAIT)
        .expect("control plane serving");
    let addr = serving.rsplit(' ').next().unwrap().to_owned();
    let url = format!("http://{addr}");

    let agent = Running::start(&[
        "xds-dump",
        "--control-plane",
        &url,
        "--virtual-node",
        "shop/web",
        "--watch",
    ]);
    let first = agent
        .line_with("\"RouteConfiguration\"", WAIT)
        .expect("initial sync");
    assert!(
        first.contains(
            r#""Listener":{"names":["shop/web/inbound","shop/web/outbound"],"version":"v1"}"#
        ),
        "{first}"
    );
    assert!(first.contains(r#""Cluster":{"names":["shop/api-v1/9090","shop/api-v2/9090","shop/db/5432","shop/web/8080","shop/web/inbound/8080"],"version":"v1"}"#), "{first}");

    // A change to a mesh file reaches the agent.
    let route = dir.path().join("route-api.json");
    let text = std::fs::read_to_string(&route)
        .unwrap()
        .replace("\"weight\": 90", "\"weight\": 70")
        .replace("\"weight\": 10", "\"weight\": 30");
    let started = Instant::now();
    std::fs::write(&route, text).unwrap();
    let changed = agent
        .line_with(
            r#""RouteConfiguration":{"names":["shop/web/outbound/9090"],"version":"v2"}"#,
            WAIT,
        )
        .expect("change propagated");
    let latency = started.elapsed();
    assert!(changed.contains(r#""Cluster":{"names":["shop/api-v1/9090","shop/api-v2/9090","shop/db/5432","shop/web/8080","shop/web/inbound/8080"],"version":"v1"}"#), "{changed}");
    assert!(latency < Duration::from_secs(1), "change took {latency:?}");
    eprintln!("file change reached the agent in {latency:?}");

    // A bad change is rejected with the field path; the agent keeps the last good mesh.
    std::fs::write(dir.path().join("vn-bad.json"), r#"{"meshName": "shop", "virtualNodeName": "bad", "spec": {"listeners": [{"portMapping": {"port": 0, "protocol": "http"}}], "serviceDiscovery": {"dns": {"hostname": "b"}}}}"#).unwrap();
    let rejected = control
        .line_with("mesh change rejected", WAIT)
        .expect("rejection logged");
    assert!(
        rejected.contains("VirtualNode bad: spec.listeners[0].portMapping.port: 0 is out of range"),
        "{rejected}"
    );
    assert_eq!(
        agent.line_with("\"version\"", Duration::from_secs(1)),
        None,
        "nothing new was pushed"
    );

    // Control plane restart (killed, started again on the same address): the agent reconnects
    // and takes the new server's mesh.
    std::fs::remove_file(dir.path().join("vn-bad.json")).unwrap();
    drop(control);
    let restarted = Running::start(&["control-plane", "--mesh", mesh, "--listen", &addr]);
    restarted
        .line_with("serving ADS on", WAIT)
        .expect("control plane serving again");
    let resynced = agent.line_with(
        r#""RouteConfiguration":{"names":["shop/web/outbound/9090"],"version":"v1"}"#,
        Duration::from_secs(40),
    );
    assert!(resynced.is_some(), "agent did not resync after the restart");
}

const REGISTRY_TOKEN: &str = "test-token-0123456789abcdef";

/// `control-plane` with `source` (the mesh and registry arguments) serving ADS and the
/// registry API on free ports, callers authenticated by the token in `token_file`; the
/// registry API's address.
fn with_registry_api(source: &[&str], token_file: &Path) -> (Running, String) {
    let mut args = vec!["control-plane"];
    args.extend_from_slice(source);
    let token_file = token_file.to_str().unwrap();
    args.extend([
        "--listen",
        "127.0.0.1:0",
        "--registry-api",
        "127.0.0.1:0",
        "--registry-api-token-file",
        token_file,
    ]);
    let control = Running::start(&args);
    let api_line = control
        .line_with("serving the registry API on", WAIT)
        .expect("registry API");
    let api = api_line.rsplit(' ').next().unwrap().to_owned();
    (control, api)
}

fn registry_call(api: &str, operation: &str, body: &str) -> String {
    registry_call_as(api, Some(REGISTRY_TOKEN), operation, body).1
}

/// A registry API call with `token` (or none): the HTTP status and the body.
fn registry_call_as(
    api: &str,
    token: Option<&str>,
    operation: &str,
    body: &str,
) -> (String, String) {
    let mut command = Command::new("curl");
    command.args([
        "-sS",
        "-w",
        "\n%{http_code}",
        "-X",
        "POST",
        "-H",
        &format!("X-Amz-Target: Route53AutoNaming_v20170314.{operation}"),
        "-H",
        "Content-Type: application/x-amz-json-1.1",
        "--data-binary",
        "@-",
    ]);
    if let Some(token) = token {
        command.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    let mut child = command
        .arg(format!("http://{api}/"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("curl stdin");
        // The API may answer (413) before it has read a large body: a broken pipe is fine.
        let _ = stdin.write_all(body.as_bytes());
    }
    let output = child.wait_with_output().expect("curl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or((&text, ""));
    (status.to_owned(), body.to_owned())
}

#[test]
fn registered_instances_reach_the_agent_as_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    copy_shop(dir.path());
    let token_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token_file.path(), format!("{REGISTRY_TOKEN}\n")).unwrap();
    let (control, api) =
        with_registry_api(&["--mesh", dir.path().to_str().unwrap()], token_file.path());
    let serving = control
        .line_with("serving ADS on", WAIT)
        .expect("control plane serving");
    let url = format!("http://{}", serving.rsplit(' ').next().unwrap());
    let agent = Running::start(&["xds-dump", "--control-plane", &url, "--watch"]);
    agent
        .line_with(
            r#""ClusterLoadAssignment":{"names":["shop/db/5432"],"version":"v1"}"#,
            WAIT,
        )
        .expect("initial sync");

    let registered = registry_call(
        &api,
        "RegisterInstance",
        r#"{"ServiceId": "shop.local/db", "InstanceId": "db-1", "Attributes": {"AWS_INSTANCE_IPV4": "10.1.0.1", "zone": "a"}}"#,
    );
    assert!(registered.contains("OperationId"), "{registered}");
    agent
        .line_with(
            r#""ClusterLoadAssignment":{"names":["shop/db/5432"],"version":"v2"}"#,
            WAIT,
        )
        .expect("endpoints pushed after RegisterInstance");

    let found = registry_call(
        &api,
        "DiscoverInstances",
        r#"{"NamespaceName": "shop.local", "ServiceName": "db", "QueryParameters": {"zone": "a"}}"#,
    );
    assert!(found.contains(r#""InstanceId":"db-1""#), "{found}");
    let none = registry_call(
        &api,
        "DiscoverInstances",
        r#"{"NamespaceName": "shop.local", "ServiceName": "db", "QueryParameters": {"zone": "b"}}"#,
    );
    assert_eq!(none, r#"{"Instances":[]}"#);
    let bad = registry_call(
        &api,
        "RegisterInstance",
        r#"{"ServiceId": "shop.local/db", "InstanceId": "db-2", "Attributes": {"zone": "a"}}"#,
    );
    assert!(
        bad.contains("InvalidInput") && bad.contains("db-2 has no AWS_INSTANCE_IPV4"),
        "{bad}"
    );
    let gone = registry_call(
        &api,
        "DeregisterInstance",
        r#"{"ServiceId": "shop.local/db", "InstanceId": "db-9"}"#,
    );
    assert!(gone.contains("InstanceNotFound"), "{gone}");

    // Nobody without the token changes (or reads) the registry.
    let register = r#"{"ServiceId": "shop.local/db", "InstanceId": "evil", "Attributes": {"AWS_INSTANCE_IPV4": "10.9.9.9"}}"#;
    for token in [None, Some("wrong-token-0123456789abcdef")] {
        let (status, body) = registry_call_as(&api, token, "RegisterInstance", register);
        assert_eq!(status, "401", "{token:?}: {body}");
    }
    let found = registry_call(
        &api,
        "DiscoverInstances",
        r#"{"NamespaceName": "shop.local", "ServiceName": "db"}"#,
    );
    assert!(!found.contains("evil"), "{found}");
    // A body beyond the limit is refused, not buffered.
    let huge = format!(r#"{{"ServiceId": "{}"}}"#, "x".repeat(1 << 20));
    let (status, body) = registry_call_as(&api, Some(REGISTRY_TOKEN), "RegisterInstance", &huge);
    assert_eq!(status, "413", "{body}");
}

#[test]
fn an_invalid_mesh_is_not_served_and_an_unreachable_control_plane_is_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("vn.json"),
        r#"{"meshName": "shop", "virtualNodeName": "a", "spec": {"listenrs": []}}"#,
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_mesh-agent"))
        .args([
            "control-plane",
            "--mesh",
            dir.path().to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("VirtualNode a: spec.listenrs: unknown field"),
        "{stderr}"
    );
    assert!(stderr.contains("the mesh is not valid"), "{stderr}");

    // Nothing listens on this port (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let output = Command::new(env!("CARGO_BIN_EXE_mesh-agent"))
        .args([
            "xds-dump",
            "--control-plane",
            &format!("http://127.0.0.1:{port}"),
            "--timeout",
            "2",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "not synced with http://127.0.0.1:{port} within 2s"
        )),
        "{stderr}"
    );
}

/// `xds-dump` (the node's xDS client) against `url` with `args`, until synced or `timeout_s`:
/// (exit code, standard output, standard error).
fn xds_dump<S: AsRef<std::ffi::OsStr>>(
    url: &str,
    args: &[S],
    timeout_s: &str,
) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_mesh-agent"))
        .args(["xds-dump", "--control-plane", url, "--timeout", timeout_s])
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// ADS over TLS with node authentication (issue 11, finding 5): only a caller holding a node
/// certificate gets anything, and only as the node that certificate names; plain text and
/// callers without a certificate are refused in the handshake — seen by OpenSSL's own client
/// as well as by the agent's.
#[test]
fn ads_over_mutual_tls_serves_only_the_node_its_certificate_names() {
    use tests::certs::{IssueSpec, TestCa};
    let dir = tempfile::tempdir().unwrap();
    let mesh = dir.path().join("mesh");
    std::fs::create_dir(&mesh).unwrap();
    copy_shop(&mesh);
    let pki = dir.path().join("pki");
    std::fs::create_dir(&pki).unwrap();
    let server_ca = TestCa::new("control plane CA").unwrap();
    let node_ca = TestCa::new("node CA").unwrap();
    let server_ca_file = server_ca.write_as(&pki, "server-ca.pem").unwrap();
    let node_ca_file = node_ca.write_as(&pki, "node-ca.pem").unwrap();
    let server = server_ca
        .issue(&IssueSpec::new("control plane").ip("127.0.0.1".parse().unwrap()))
        .unwrap()
        .write_to(&pki, "server")
        .unwrap();
    let node_a = node_ca
        .issue(&IssueSpec::new("node a").uri("spiffe://cluster.local/node/node-a"))
        .unwrap()
        .write_to(&pki, "node-a")
        .unwrap();
    // Signed by the control plane's CA, not the node CA: not a node certificate.
    let stranger = server_ca
        .issue(&IssueSpec::new("stranger").uri("spiffe://cluster.local/node/node-a"))
        .unwrap()
        .write_to(&pki, "stranger")
        .unwrap();
    let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    let control = Running::start(&[
        "control-plane",
        "--mesh",
        &path(&mesh),
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        &path(&server.cert),
        "--tls-key",
        &path(&server.key),
        "--node-ca",
        &path(&node_ca_file),
        "--auto-mtls-ca-dir",
        &path(&dir.path().join("mesh-ca")),
    ]);
    let serving = control
        .line_with("serving ADS on", WAIT)
        .expect("control plane serving");
    let addr = serving.rsplit(' ').next().unwrap().to_owned();
    let https = format!("https://{addr}");
    let tls_as = |files: &tests::certs::LeafFiles, node: &str| {
        vec![
            "--control-plane-ca".to_owned(),
            path(&server_ca_file),
            "--node-cert".to_owned(),
            path(&files.cert),
            "--node-key".to_owned(),
            path(&files.key),
            "--node".to_owned(),
            node.to_owned(),
        ]
    };

    // The node its certificate names: served.
    let (code, out, err) = xds_dump(&https, &tls_as(&node_a, "node-a"), "10");
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("\"RouteConfiguration\""), "{out}");

    // Another node id with node a's certificate: refused, and the control plane says why.
    let (code, _, err) = xds_dump(&https, &tls_as(&node_a, "node-b"), "2");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not synced"), "{err}");
    let refused = control
        .line_with("ADS stream refused", WAIT)
        .expect("refusal logged");
    assert!(
        refused.contains("is not the node the client certificate names (node-a)")
            && refused.contains("node-b"),
        "{refused}"
    );

    // A certificate from another CA, no certificate at all, plain text: nothing.
    let (code, out, _) = xds_dump(&https, &tls_as(&stranger, "node-a"), "2");
    assert_eq!((code, out.as_str()), (Some(1), ""));
    let ca_only = [
        "--control-plane-ca",
        server_ca_file.to_str().unwrap(),
        "--node",
        "node-a",
    ];
    let (code, out, _) = xds_dump(&https, &ca_only, "2");
    assert_eq!((code, out.as_str()), (Some(1), ""));
    let (code, out, _) = xds_dump(&format!("http://{addr}"), &["--node", "node-a"], "2");
    assert_eq!((code, out.as_str()), (Some(1), ""));

    // Certificate signing, on the same port: only as the node the certificate names.
    let sign_as = |node: &str| {
        let tls = mesh_xds::channel::ControlPlaneTls {
            ca: server_ca_file.clone(),
            node_certificate: Some(mesh_xds::channel::NodeCertificate {
                chain: node_a.cert.clone(),
                key: node_a.key.clone(),
            }),
            server_name: None,
        };
        let request = mesh_xds::identity::SignRequest {
            csr_pem: "not a CSR".into(),
            node_id: node.into(),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime
            .block_on(mesh_xds::identity::sign(&https, Some(&tls), request, WAIT))
            .unwrap_err()
    };
    let refused = sign_as("node-b");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("(node-a)"), "{refused:?}");
    // As itself it gets as far as the request's contents.
    let bad_csr = sign_as("node-a");
    assert!(
        !bad_csr.message().contains("client certificate"),
        "{bad_csr:?}"
    );

    // OpenSSL's client: the handshake needs a node certificate; with one it agrees on h2.
    // Bounded: `timeout` ends an s_client that would wait for more.
    let openssl = |extra: &[&str]| {
        let mut command = Command::new("timeout");
        command
            .args([
                "10", "openssl", "s_client", "-connect", &addr, "-alpn", "h2",
            ])
            .arg("-CAfile")
            .arg(&server_ca_file)
            .args(extra)
            .stdin(Stdio::null());
        let output = command.output().expect("openssl");
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    };
    // TLS 1.3 refuses a missing client certificate after the client's Finished: -ign_eof keeps
    // reading until the server's alert and close, rather than racing them to exit.
    let without = openssl(&["-ign_eof"]);
    assert!(
        without.contains("alert certificate required")
            || without.contains("alert handshake failure"),
        "{without}"
    );
    let with = openssl(&[
        "-cert",
        node_a.cert.to_str().unwrap(),
        "-key",
        node_a.key.to_str().unwrap(),
    ]);
    assert!(with.contains("ALPN protocol: h2"), "{with}");
    assert!(with.contains("Verify return code: 0 (ok)"), "{with}");
}

/// The AWS CLI (awscli from PyPI) against the registry API as an App Mesh user's scripts
/// call Cloud Map: ids looked up first, then instances registered, inspected, marked
/// unhealthy, discovered by health, deregistered; signed with SigV4, the token as the secret.
struct AwsCli {
    endpoint: String,
    secret: String,
}

impl AwsCli {
    /// `aws servicediscovery <args>`: Ok(JSON answer) or Err(stderr).
    fn call(&self, args: &[&str]) -> Result<serde_json::Value, String> {
        let output = Command::new("aws")
            .arg("servicediscovery")
            .args(args)
            .args(["--endpoint-url", &self.endpoint, "--output", "json"])
            .env("AWS_ACCESS_KEY_ID", "mesh-agent")
            .env("AWS_SECRET_ACCESS_KEY", &self.secret)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            // DiscoverInstances goes to the host `data-<endpoint host>` unless told not to.
            .env("AWS_DISABLE_HOST_PREFIX_INJECTION", "true")
            .env("AWS_CONFIG_FILE", "/nonexistent")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
            .output()
            .expect("the AWS CLI (scripts/install-prereqs.sh installs awscli)");
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).into_owned());
        }
        let text = String::from_utf8_lossy(&output.stdout);
        Ok(if text.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        })
    }
}

#[test]
fn the_aws_cli_manages_the_registry_like_cloud_map() {
    let dir = tempfile::tempdir().unwrap();
    copy_shop(dir.path());
    let registry = dir.path().join("registry.json");
    // The service exists before any instance (as `aws servicediscovery create-service`
    // would have made it).
    std::fs::write(&registry, r#"{"namespaces": {"shop.local": {"db": {}}}}"#).unwrap();
    let token_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token_file.path(), REGISTRY_TOKEN).unwrap();
    let start = || {
        let (mesh, node) = (dir.path().join("mesh.json"), dir.path().join("vn-db.json"));
        let source = [
            "--mesh",
            mesh.to_str().unwrap(),
            "--mesh",
            node.to_str().unwrap(),
            "--registry",
            registry.to_str().unwrap(),
        ];
        let (control, api) = with_registry_api(&source, token_file.path());
        let cli = AwsCli {
            endpoint: format!("http://{api}"),
            secret: REGISTRY_TOKEN.into(),
        };
        (control, cli)
    };
    let (control, cli) = start();

    let namespaces = cli.call(&["list-namespaces"]).unwrap();
    let namespace = &namespaces["Namespaces"][0];
    assert_eq!(namespace["Name"], "shop.local", "{namespaces}");
    let namespace_id = namespace["Id"].as_str().unwrap();
    assert!(namespace_id.starts_with("ns-"), "{namespace_id}");
    let got = cli.call(&["get-namespace", "--id", namespace_id]).unwrap();
    assert_eq!(got["Namespace"]["Name"], "shop.local");

    let filter = format!("Name=NAMESPACE_ID,Values={namespace_id},Condition=EQ");
    let services = cli.call(&["list-services", "--filters", &filter]).unwrap();
    let service_id = services["Services"][0]["Id"].as_str().unwrap().to_owned();
    assert!(service_id.starts_with("srv-"), "{services}");
    let service = cli.call(&["get-service", "--id", &service_id]).unwrap();
    assert_eq!(service["Service"]["Name"], "db");
    assert_eq!(service["Service"]["NamespaceId"], namespace_id);

    for (instance, ip) in [("db-1", "10.1.0.1"), ("db-2", "10.1.0.2")] {
        let attributes = format!("AWS_INSTANCE_IPV4={ip},AWS_INSTANCE_PORT=5432,zone=a");
        let registered = cli
            .call(&[
                "register-instance",
                "--service-id",
                &service_id,
                "--instance-id",
                instance,
                "--attributes",
                &attributes,
            ])
            .unwrap();
        let operation = registered["OperationId"].as_str().unwrap();
        let status = cli
            .call(&["get-operation", "--operation-id", operation])
            .unwrap();
        assert_eq!(status["Operation"]["Status"], "SUCCESS", "{status}");
        assert_eq!(status["Operation"]["Type"], "REGISTER_INSTANCE");
    }
    let listed = cli
        .call(&["list-instances", "--service-id", &service_id])
        .unwrap();
    assert_eq!(listed["Instances"].as_array().unwrap().len(), 2, "{listed}");
    let one = cli
        .call(&[
            "get-instance",
            "--service-id",
            &service_id,
            "--instance-id",
            "db-1",
        ])
        .unwrap();
    assert_eq!(
        one["Instance"]["Attributes"]["AWS_INSTANCE_IPV4"],
        "10.1.0.1"
    );

    cli.call(&[
        "update-instance-custom-health-status",
        "--service-id",
        &service_id,
        "--instance-id",
        "db-1",
        "--status",
        "UNHEALTHY",
    ])
    .unwrap();
    let discover = |health: &str| -> Vec<String> {
        let found = cli
            .call(&[
                "discover-instances",
                "--namespace-name",
                "shop.local",
                "--service-name",
                "db",
                "--query-parameters",
                "zone=a",
                "--health-status",
                health,
            ])
            .unwrap();
        found["Instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                format!(
                    "{} {}",
                    i["InstanceId"].as_str().unwrap(),
                    i["HealthStatus"].as_str().unwrap()
                )
            })
            .collect()
    };
    assert_eq!(discover("HEALTHY"), ["db-2 HEALTHY"]);
    assert_eq!(discover("UNHEALTHY"), ["db-1 UNHEALTHY"]);
    assert_eq!(discover("ALL"), ["db-1 UNHEALTHY", "db-2 HEALTHY"]);
    assert_eq!(discover("HEALTHY_OR_ELSE_ALL"), ["db-2 HEALTHY"]);

    cli.call(&[
        "deregister-instance",
        "--service-id",
        &service_id,
        "--instance-id",
        "db-2",
    ])
    .unwrap();
    assert_eq!(
        discover("HEALTHY_OR_ELSE_ALL"),
        ["db-1 UNHEALTHY"],
        "fails open"
    );
    let missing = cli
        .call(&["get-service", "--id", "srv-aaaaaaaaaaaaaaaa"])
        .unwrap_err();
    assert!(missing.contains("ServiceNotFound"), "{missing}");

    // Signed with another secret: refused, nothing changed.
    let intruder = AwsCli {
        endpoint: cli.endpoint.clone(),
        secret: "not-the-token-0123456789".into(),
    };
    let refused = intruder
        .call(&[
            "deregister-instance",
            "--service-id",
            &service_id,
            "--instance-id",
            "db-1",
        ])
        .unwrap_err();
    assert!(refused.contains("AccessDeniedException"), "{refused}");
    assert_eq!(discover("ALL"), ["db-1 UNHEALTHY"]);

    // What the API was told is in the registry file: a restarted control plane has it.
    drop(control);
    let (_control, cli) = start();
    let listed = cli
        .call(&["list-instances", "--service-id", &service_id])
        .unwrap();
    let instances = listed["Instances"].as_array().unwrap();
    assert_eq!(instances.len(), 1, "{listed}");
    assert_eq!(instances[0]["Id"], "db-1");
    let found = cli
        .call(&[
            "discover-instances",
            "--namespace-name",
            "shop.local",
            "--service-name",
            "db",
            "--health-status",
            "ALL",
        ])
        .unwrap();
    assert_eq!(
        found["Instances"][0]["HealthStatus"], "UNHEALTHY",
        "{found}"
    );
}
