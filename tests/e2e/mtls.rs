//! App Mesh's TLS model across two nodes: listener TLS (STRICT with client validation, i.e.
//! mutual TLS) terminated by the destination's node proxy, client policy TLS originated by
//! the caller's, certificates from files and from SDS. What crosses the link is captured;
//! TLS clients and servers we did not write (curl, OpenSSL's s_client, Python's ssl) meet
//! the proxy's two sides.
use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tests::{
    agent::{metric_sum, metric_value},
    certs::{IssueSpec, TestCa, spiffe_id},
    mesh::PORT,
};

use super::{
    TIMEOUT,
    interop::peer,
    two_nodes::{MeshFiles, TwoNodeSpec, TwoNodes},
};

/// Certificates of mesh `m` in one directory: `ca.pem`, and `<node>.pem` / `<node>.key`
/// for virtual nodes `client` and `v1` (URI SAN = their SPIFFE ID; v1 also `v1.m.local`).
struct Pki {
    ca: TestCa,
    _dir: tempfile::TempDir,
    files: Files,
}

/// Where the certificates are, as mesh definitions name them.
#[derive(Clone)]
struct Files(PathBuf);

impl Pki {
    fn new() -> Self {
        let ca = TestCa::new("mesh m CA").expect("CA");
        let dir = tempfile::tempdir().unwrap();
        ca.write_to(dir.path()).unwrap();
        let files = Files(dir.path().to_owned());
        let pki = Self {
            ca,
            _dir: dir,
            files,
        };
        pki.issue("client", IssueSpec::new("client"));
        pki.issue("v1", IssueSpec::new("v1").dns("v1.m.local"));
        pki
    }

    /// (Re)writes `<stem>.pem` / `<stem>.key` from `spec`, with `stem`'s SPIFFE ID added.
    fn issue(&self, stem: &str, spec: IssueSpec) {
        let leaf = self.ca.issue(&spec.uri(&spiffe_id("m", stem))).unwrap();
        leaf.write_to(&self.files.0, stem).unwrap();
    }
}

impl Files {
    fn path(&self, file: &str) -> String {
        self.0.join(file).display().to_string()
    }

    fn certificate(&self, stem: &str) -> Value {
        json!({"file": {"certificateChain": self.path(&format!("{stem}.pem")),
                        "privateKey": self.path(&format!("{stem}.key"))}})
    }

    fn trust(&self) -> Value {
        json!({"file": {"certificateChain": self.path("ca.pem")}})
    }

    /// v1's listener: STRICT, its certificate, clients checked against the CA and `sans`.
    fn strict_listener(&self, sans: &[String]) -> Value {
        json!({"mode": "STRICT", "certificate": self.certificate("v1"),
               "validation": {"trust": self.trust(),
                              "subjectAlternativeNames": {"match": {"exact": sans}}}})
    }

    /// client's policy toward its backends: the server's SAN must be one of `sans`; the
    /// client's certificate presented when `present`.
    fn client_policy(&self, sans: &[String], present: bool) -> Value {
        let mut tls = json!({"enforce": true,
            "validation": {"trust": self.trust(),
                           "subjectAlternativeNames": {"match": {"exact": sans}}}});
        if present {
            tls["certificate"] = self.certificate("client");
        }
        json!({"clientPolicy": {"tls": tls}})
    }

    /// Mutual TLS between client and v1, each expecting the other's identity.
    fn mutual(&self, mesh: &mut MeshFiles) {
        set_listener_tls(mesh, self.strict_listener(&[client_id()]));
        set_backend_defaults(mesh, self.client_policy(&[v1_id()], true));
    }
}

fn set_listener_tls(mesh: &mut MeshFiles, tls: Value) {
    mesh.get_mut("vn-v1").unwrap()["spec"]["listeners"][0]["tls"] = tls;
}

fn set_backend_defaults(mesh: &mut MeshFiles, defaults: Value) {
    mesh.get_mut("vn-client").unwrap()["spec"]["backendDefaults"] = defaults;
}

fn client_id() -> String {
    spiffe_id("m", "client")
}

fn v1_id() -> String {
    spiffe_id("m", "v1")
}

/// Two nodes whose mesh `edit` sets up with the certificates in `files`.
fn start(
    label: &str,
    files: &Files,
    spec: TwoNodeSpec,
    edit: impl Fn(&Files, &mut MeshFiles) + 'static,
) -> TwoNodes {
    let files = files.clone();
    TwoNodes::start(
        label,
        TwoNodeSpec {
            edit_mesh: Box::new(move |mesh| edit(&files, mesh)),
            ..spec
        },
    )
}

/// How many more TLS handshakes `after` counts than `before` on `side` with `result`.
fn handshakes(before: &str, after: &str, side: &str, result: &str) -> f64 {
    let labels = [("side", side), ("result", result)];
    metric_sum(after, "mesh_agent_tls_handshakes_total", &labels)
        - metric_sum(before, "mesh_agent_tls_handshakes_total", &labels)
}

/// Retries `attempt` until it returns Some, for changes that take a reload to apply.
fn eventually<T>(what: &str, nodes: &TwoNodes, mut attempt: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(value) = attempt() {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}\n{}", nodes.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// curl from `pod` on node 1 straight to v1's port on s1 (no mesh on node 1's side), as
/// `https://v1.m.local:8080/path` with `args`: (exit success, stdout, stderr).
fn curl_https_to_s1(nodes: &TwoNodes, pod: &str, path: &str, args: &[&str]) -> (bool, String) {
    let s1 = nodes.node2.pod("s1").unwrap().ip;
    let resolve = format!("v1.m.local:{PORT}:{s1}");
    let url = format!("https://v1.m.local:{PORT}{path}");
    let mut all = vec!["-sS", "--max-time", "5", "--resolve", &resolve];
    all.extend_from_slice(args);
    all.push(&url);
    let output = nodes
        .node1
        .run_in_pod(pod, "curl", &all, TIMEOUT)
        .expect("curl runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn strict_mutual_tls_across_nodes_hides_the_payload_and_names_the_caller() {
    let pki = Pki::new();
    let nodes = start("mtls", &pki.files, TwoNodeSpec::default(), |files, mesh| {
        files.mutual(mesh);
        // v1's access log names the caller its certificate says.
        mesh.get_mut("vn-v1").unwrap()["spec"]["logging"] = json!({"accessLog": {"file": {
            "path": "/dev/stdout",
            "format": {"text": "inbound-log src=%SOURCE_VIRTUAL_NODE% path=%REQ(:PATH)%\n"}}}});
    });
    nodes.wait_for_inbound_capture_tls();
    let before1 = nodes.metrics1();
    let before2 = nodes.metrics2();
    let marker = format!("secret-marker-{}", std::process::id());
    let ((status, body, headers), captured) = nodes.captured_while("mtls", || {
        nodes.curl(
            "/encrypted",
            &["-H", "Content-Type: text/plain", "--data-binary", &marker],
        )
    });
    assert_eq!(status, 200, "{body}\n{headers}\n{}", nodes.logs());
    assert!(
        body.contains("hello from v1 path=/encrypted (client 127.0.0.1:"),
        "{body}"
    );
    // The request crossed the link, encrypted: neither the body nor the request line shows.
    assert!(
        captured.packet_count() >= 6,
        "the capture saw no connection: {}",
        captured.summary()
    );
    assert!(
        !captured.contains(marker.as_bytes()) && !captured.contains(b"POST /encrypted"),
        "plain text on the wire: {}",
        captured.summary()
    );
    // Node 2 knows the caller from its certificate; node 1 counted a handshake as client.
    let after1 = nodes.metrics1();
    let after2 = nodes.metrics2();
    let inbound = [
        ("reporter", "inbound"),
        ("source_virtual_node", "m/client"),
        ("destination_virtual_node", "m/v1"),
        ("response_code", "200"),
    ];
    assert_eq!(
        metric_sum(&after2, "mesh_requests_total", &inbound)
            - metric_sum(&before2, "mesh_requests_total", &inbound),
        1.0,
        "{after2}"
    );
    assert!(
        handshakes(&before1, &after1, "client", "ok") >= 1.0,
        "{after1}"
    );
    eventually("v1's access log line names the caller", &nodes, || {
        let log = nodes.agent2.log();
        log.contains("inbound-log src=m/client path=/encrypted")
            .then_some(())
    });
    assert!(
        handshakes(&before2, &after2, "server", "ok") >= 1.0,
        "{after2}"
    );

    // A pod outside the mesh speaking plain text to the STRICT port is refused.
    let (answer, error) = nodes.curl_s1_directly("outside", PORT, "/plain");
    assert!(!answer.contains("hello from v1"), "{answer}{error}");
    let after2 = nodes.metrics2();
    assert!(
        handshakes(&before2, &after2, "server", "not_tls") >= 1.0,
        "{after2}"
    );

    // curl (OpenSSL) as the TLS client of the proxy's server side: refused without a client
    // certificate, served with the client's.
    let ca = pki.files.path("ca.pem");
    let (ok, text) = curl_https_to_s1(&nodes, "outside", "/curl", &["--cacert", &ca]);
    assert!(!ok && !text.contains("hello from v1"), "{text}");
    let (cert, key) = (pki.files.path("client.pem"), pki.files.path("client.key"));
    let (ok, text) = curl_https_to_s1(
        &nodes,
        "outside",
        "/curl",
        &["--cacert", &ca, "--cert", &cert, "--key", &key],
    );
    assert!(ok && text.contains("hello from v1 path=/curl"), "{text}");
}

#[test]
fn a_client_policy_whose_san_does_not_match_fails_by_name_until_it_matches() {
    let pki = Pki::new();
    let nodes = start(
        "mtlssan",
        &pki.files,
        TwoNodeSpec::default(),
        |files, mesh| {
            set_listener_tls(mesh, files.strict_listener(&[client_id()]));
            set_backend_defaults(mesh, files.client_policy(&[spiffe_id("m", "db")], true));
        },
    );
    nodes.wait_for_inbound_capture_tls();
    let (status, body, headers) = nodes.curl("/san", &[]);
    assert_eq!(status, 503, "{body}\n{headers}");
    let reason = headers
        .lines()
        .find_map(|line| line.strip_prefix("x-mesh-reason: "))
        .unwrap_or_default();
    assert!(
        reason.contains(&format!(
            "tls handshake failed: certificate SAN does not match: presented [URI:{}, DNS:v1.m.local], expected one of [URI:{}]",
            v1_id(),
            spiffe_id("m", "db")
        )),
        "{headers}"
    );
    assert!(
        metric_value(
            &nodes.metrics1(),
            r#"mesh_agent_tls_handshakes_total{side="client",result="san_mismatch"}"#
        ) >= 1.0
    );

    // The policy corrected (and reloaded by both agents): served.
    let mut client = client_definition(&nodes);
    client["spec"]["backendDefaults"] = pki.files.client_policy(&[v1_id()], true);
    nodes.write_mesh_file("vn-client", &client);
    eventually("the corrected policy applies", &nodes, || {
        let (status, body, _) = nodes.curl("/san", &[]);
        (status == 200).then_some(body)
    });
}

#[test]
fn a_listener_requiring_client_certificates_refuses_a_caller_without_one() {
    let pki = Pki::new();
    let nodes = start(
        "mtlscert",
        &pki.files,
        TwoNodeSpec::default(),
        |files, mesh| {
            set_listener_tls(mesh, files.strict_listener(&[client_id()]));
            set_backend_defaults(mesh, files.client_policy(&[v1_id()], false));
        },
    );
    nodes.wait_for_inbound_capture_tls();
    let before1 = nodes.metrics1();
    let before2 = nodes.metrics2();
    let (status, body, headers) = nodes.curl("/no-certificate", &[]);
    assert_eq!(status, 503, "{body}\n{headers}");
    assert!(
        headers
            .contains("tls handshake failed: the peer refused the handshake: CertificateRequired"),
        "{headers}"
    );
    let after2 = nodes.metrics2();
    assert!(
        handshakes(&before2, &after2, "server", "no_certificate") >= 1.0,
        "{after2}"
    );
    // The client side learns it after its handshake (TLS 1.3), and counts it too.
    let after1 = nodes.metrics1();
    assert!(
        handshakes(&before1, &after1, "client", "no_certificate") >= 1.0,
        "{after1}"
    );

    let mut client = client_definition(&nodes);
    client["spec"]["backendDefaults"] = pki.files.client_policy(&[v1_id()], true);
    nodes.write_mesh_file("vn-client", &client);
    eventually("the client certificate is presented", &nodes, || {
        let (status, body, _) = nodes.curl("/with-certificate", &[]);
        (status == 200).then_some(body)
    });
}

#[test]
fn an_expired_server_certificate_is_refused() {
    let pki = Pki::new();
    pki.issue("v1", IssueSpec::new("v1").dns("v1.m.local").expired());
    let nodes = start("mtlsexp", &pki.files, TwoNodeSpec::default(), Files::mutual);
    nodes.wait_for_inbound_capture_tls();
    let (status, body, headers) = nodes.curl("/expired", &[]);
    assert_eq!(status, 503, "{body}\n{headers}");
    assert!(
        headers.contains("tls handshake failed: certificate expired"),
        "{headers}"
    );
}

/// The SDS stand-in's secrets file: v1's certificate and the mesh's CA by name.
fn secrets_file(pki: &Pki) -> PathBuf {
    let path = pki.files.0.join("secrets.json");
    let secrets = json!({"secrets": {
        v1_id(): {"certificateChain": "v1.pem", "privateKey": "v1.key"},
        "m-trust": {"trustedCa": "ca.pem"}}});
    std::fs::write(&path, secrets.to_string()).unwrap();
    path
}

#[test]
fn sds_certificates_rotate_without_a_restart_or_a_broken_connection() {
    let pki = Pki::new();
    let secrets = secrets_file(&pki);
    let spec = TwoNodeSpec {
        agent_args: vec!["--secrets".into(), secrets.display().to_string()],
        ..TwoNodeSpec::default()
    };
    let nodes = start("mtlssds", &pki.files, spec, |files, mesh| {
        set_listener_tls(
            mesh,
            json!({"mode": "STRICT",
                "certificate": {"sds": {"secretName": v1_id()}},
                "validation": {"trust": {"sds": {"secretName": "m-trust"}},
                               "subjectAlternativeNames": {"match": {"exact": [client_id()]}}}}),
        );
        set_backend_defaults(mesh, files.client_policy(&[v1_id()], true));
    });
    nodes.wait_for_inbound_capture_tls();
    let (status, body, _) = nodes.curl("/before", &[]);
    assert_eq!(status, 200, "{body}\n{}", nodes.logs());
    assert_eq!(served_subject(&nodes, &pki.files), "v1");

    // Rotate v1's certificate (same identity, a new subject to tell them apart).
    pki.issue("v1", IssueSpec::new("v1-rotated").dns("v1.m.local"));
    eventually(
        "a new connection gets the rotated certificate",
        &nodes,
        || (served_subject(&nodes, &pki.files) == "v1-rotated").then_some(()),
    );
    // Meanwhile the mesh keeps serving (the pooled connection from node 1 is still good).
    let (status, body, _) = nodes.curl("/after", &[]);
    assert_eq!(status, 200, "{body}\n{}", nodes.logs());
    // The keys the SDS secrets carried are in neither agent's log nor on the admin socket.
    let (_, dump) = nodes.node2.admin("GET", "/config_dump").unwrap();
    assert!(dump.contains(&v1_id()), "the dump names the secret: {dump}");
    for text in [nodes.logs(), dump] {
        assert!(!text.contains("PRIVATE KEY"), "a key is exposed:\n{text}");
    }
}

/// The common name of the certificate s1's port presents to a new connection (OpenSSL's
/// s_client from the pod outside the mesh, with the client's certificate).
fn served_subject(nodes: &TwoNodes, files: &Files) -> String {
    let s1 = nodes.node2.pod("s1").unwrap().ip;
    let connect = format!("{s1}:{PORT}");
    let (cert, key, ca) = (
        files.path("client.pem"),
        files.path("client.key"),
        files.path("ca.pem"),
    );
    let output = nodes
        .node1
        .run_in_pod(
            "outside",
            "openssl",
            &[
                "s_client", "-connect", &connect, "-cert", &cert, "-key", &key, "-CAfile", &ca,
                "-brief",
            ],
            TIMEOUT,
        )
        .expect("openssl runs");
    let text = String::from_utf8_lossy(&output.stderr).into_owned();
    text.lines()
        .find_map(|line| line.strip_prefix("Peer certificate: "))
        .and_then(|subject| subject.rsplit("CN = ").next())
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn client_definition(nodes: &TwoNodes) -> Value {
    let path = nodes.mesh_dir.path().join("vn-client.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Python's ssl (OpenSSL) as the server the proxy's client side meets: an HTTPS service
/// outside the mesh (pod `ext` on node 2, not enrolled) reached through a client policy
/// with the client's certificate; the server requires it and says what it saw.
#[test]
fn client_policy_tls_to_a_server_outside_the_mesh_interoperates_with_openssl() {
    let pki = Pki::new();
    pki.issue("ext", IssueSpec::new("ext").dns("ext.m.local"));
    let spec = TwoNodeSpec {
        node2_pods: vec!["ext"],
        ..TwoNodeSpec::default()
    };
    let ext_ip = tests::node::node_ip(2).octets();
    // ext is node 2's second pod: 10.77.2.11.
    let ext = std::net::Ipv4Addr::new(ext_ip[0], ext_ip[1], ext_ip[2], 11);
    let nodes = start("mtlsext", &pki.files, spec, move |files, mesh| {
        mesh.insert(
            "vn-ext".into(),
            json!({"meshName": "m", "virtualNodeName": "ext", "spec": {
                "listeners": [{"portMapping": {"port": 8443, "protocol": "http"}}],
                "serviceDiscovery": {"dns": {"hostname": ext.to_string()}}}}),
        );
        mesh.insert(
            "vs-ext".into(),
            json!({"meshName": "m", "virtualServiceName": "ext.m.local", "spec": {
                "provider": {"virtualNode": {"virtualNodeName": "ext"}}}}),
        );
        let client = mesh.get_mut("vn-client").unwrap();
        client["spec"]["backends"]
            .as_array_mut()
            .unwrap()
            .push(json!({"virtualService": {"virtualServiceName": "ext.m.local",
                "clientPolicy": files.client_policy(&[spiffe_id("m", "ext")], true)["clientPolicy"].clone()}}));
    });
    assert_eq!(nodes.node2.pod("ext").unwrap().ip, ext);
    let args = [
        peer("tls_peer.py"),
        "--port".into(),
        "8443".into(),
        "--cert".into(),
        pki.files.path("ext.pem"),
        "--key".into(),
        pki.files.path("ext.key"),
        "--ca".into(),
        pki.files.path("ca.pem"),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _server = nodes
        .node2
        .spawn_in_pod("ext", "python3", &args)
        .expect("Python TLS server");
    nodes
        .node2
        .wait_for_listener((ext, 8443).into(), TIMEOUT)
        .expect("the TLS server listens");
    let body = eventually("ext answers through the mesh", &nodes, || {
        let (status, body, _) = nodes.curl_service("ext.m.local", 8443, "/who", &[]);
        (status == 200).then_some(body)
    });
    assert!(
        body.contains(&format!("peer {}", client_id())) && body.contains("over TLSv1.3"),
        "{body}"
    );
}

impl TwoNodes {
    /// As [`TwoNodes::wait_for_inbound_capture`], for a STRICT port: node 2's proxy answers
    /// a plain-text probe by ending the connection instead of the application answering.
    fn wait_for_inbound_capture_tls(&self) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let handshakes = metric_sum(
                &self.metrics2(),
                "mesh_agent_tls_handshakes_total",
                &[("side", "server")],
            );
            if handshakes > 0.0 {
                return;
            }
            let (_answer, _error) = self.curl_s1_directly("outside", PORT, "/ready");
            assert!(
                Instant::now() < deadline,
                "s1's port {PORT} not captured on node 2\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Two nodes under automatic mTLS (the CA made by node 1's control plane in a directory both
/// share), the mesh with no TLS settings at all.
fn start_auto(label: &str, ca_dir: &std::path::Path, extra: &[&str]) -> TwoNodes {
    start_auto_with(label, ca_dir, extra, TwoNodeSpec::default())
}

fn start_auto_with(
    label: &str,
    ca_dir: &std::path::Path,
    extra: &[&str],
    spec: TwoNodeSpec,
) -> TwoNodes {
    let mut agent_args = vec![
        "--auto-mtls-ca-dir".to_owned(),
        ca_dir.display().to_string(),
        "--trust-domain".into(),
        "td".into(),
    ];
    agent_args.extend(extra.iter().map(|arg| (*arg).to_owned()));
    let nodes = TwoNodes::start(label, TwoNodeSpec { agent_args, ..spec });
    // Each node has its workload's certificate signed once its pod is known.
    for (metrics, node) in [
        (TwoNodes::metrics1 as fn(&TwoNodes) -> String, 1),
        (TwoNodes::metrics2, 2),
    ] {
        eventually(
            &format!("node {node}'s workload certificate"),
            &nodes,
            || {
                let text = metrics(&nodes);
                (metric_value(
                    &text,
                    r#"mesh_agent_workload_certificate_requests_total{result="ok"}"#,
                ) >= 1.0)
                    .then_some(())
            },
        );
    }
    nodes
}

#[test]
fn automatic_mtls_encrypts_cross_node_traffic_with_no_tls_in_the_mesh() {
    let ca_dir = tempfile::tempdir().unwrap();
    let ca = ca_dir.path().join("ca");
    let nodes = start_auto("automtls", &ca, &[]);
    let before2 = nodes.metrics2();
    let marker = format!("auto-marker-{}", std::process::id());
    let ((status, body, headers), captured) = nodes.captured_while("auto", || {
        nodes.curl(
            "/auto",
            &["-H", "Content-Type: text/plain", "--data-binary", &marker],
        )
    });
    assert_eq!(status, 200, "{body}\n{headers}\n{}", nodes.logs());
    assert!(captured.packet_count() >= 6, "{}", captured.summary());
    assert!(
        !captured.contains(marker.as_bytes()) && !captured.contains(b"POST /auto"),
        "plain text on the wire: {}",
        captured.summary()
    );
    let after2 = nodes.metrics2();
    let inbound = [
        ("reporter", "inbound"),
        ("source_virtual_node", "m/client"),
        ("destination_virtual_node", "m/v1"),
    ];
    assert_eq!(
        metric_sum(&after2, "mesh_requests_total", &inbound)
            - metric_sum(&before2, "mesh_requests_total", &inbound),
        1.0,
        "{after2}"
    );
    // Each node holds only the identity of the workloads it runs.
    for text in [nodes.metrics1(), after2] {
        assert_eq!(
            metric_value(
                &text,
                r#"mesh_agent_workload_certificate_requests_total{result="ok"}"#
            ),
            1.0,
            "{text}"
        );
    }
    // STRICT by default: plain text from outside the mesh is refused.
    let (answer, error) = nodes.curl_s1_directly("outside", PORT, "/plain");
    assert!(!answer.contains("hello from v1"), "{answer}{error}");
    // The CA was made with its key readable by its owner only.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(ca.join("ca.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "ca.key mode {mode:o}");
}

#[test]
fn a_permissive_mesh_also_takes_plain_text_from_outside_the_mesh() {
    let ca_dir = tempfile::tempdir().unwrap();
    let nodes = start_auto(
        "automtlsp",
        &ca_dir.path().join("ca"),
        &["--auto-mtls-permissive", "m"],
    );
    let marker = format!("permissive-marker-{}", std::process::id());
    let ((status, body, _), captured) = nodes.captured_while("permissive", || {
        nodes.curl("/meshed", &["--data-binary", &marker])
    });
    assert_eq!(status, 200, "{body}\n{}", nodes.logs());
    assert!(
        !captured.contains(marker.as_bytes()),
        "{}",
        captured.summary()
    );
    let (answer, error) = nodes.curl_s1_directly("outside", PORT, "/plain");
    assert!(
        answer.contains("hello from v1 path=/plain"),
        "{answer}{error}"
    );
}

/// HTTP/2 (negotiated by ALPN between the proxies) and TCP routes cross the nodes inside
/// automatic mTLS too.
#[test]
fn http2_and_tcp_routes_cross_nodes_inside_automatic_mtls() {
    let tcp_route = tests::mesh::route_of_kind(
        "tcpRoute",
        "all",
        None,
        Value::Null,
        &[("v1", 1)],
        json!({}),
    );
    for (label, protocol, routes) in [
        ("automtlsh2", "http2", tests::mesh::all_to_v1_over_http2()),
        ("automtlstcp", "tcp", vec![tcp_route]),
    ] {
        let ca_dir = tempfile::tempdir().unwrap();
        let spec = TwoNodeSpec {
            protocol,
            routes,
            ..TwoNodeSpec::default()
        };
        let nodes = start_auto_with(label, &ca_dir.path().join("ca"), &[], spec);
        let marker = format!("{protocol}-marker-{}", std::process::id());
        let ((status, body, headers), captured) =
            nodes.captured_while(label, || nodes.curl("/inside", &["--data-binary", &marker]));
        assert_eq!(
            status,
            200,
            "{protocol}: {body}\n{headers}\n{}",
            nodes.logs()
        );
        assert!(
            body.contains("hello from v1 path=/inside"),
            "{protocol}: {body}"
        );
        assert!(
            captured.packet_count() >= 6,
            "{protocol}: {}",
            captured.summary()
        );
        assert!(
            !captured.contains(marker.as_bytes()),
            "{protocol}: plain text on the wire: {}",
            captured.summary()
        );
        let ok = |text: &str, side: &str| {
            metric_value(
                text,
                &format!(r#"mesh_agent_tls_handshakes_total{{side="{side}",result="ok"}}"#),
            )
        };
        assert!(ok(&nodes.metrics1(), "client") >= 1.0, "{protocol}");
        assert!(ok(&nodes.metrics2(), "server") >= 1.0, "{protocol}");
    }
}

/// App Mesh's PERMISSIVE listener takes TLS and plain text on the same port; a client policy
/// applies on its `ports` only, and `enforce: false` turns it off.
#[test]
fn a_permissive_listener_takes_both_and_client_policies_keep_to_their_ports() {
    let pki = Pki::new();
    let nodes = start(
        "mtlsperm",
        &pki.files,
        TwoNodeSpec::default(),
        |files, mesh| {
            let mut listener = files.strict_listener(&[client_id()]);
            listener["mode"] = json!("PERMISSIVE");
            set_listener_tls(mesh, listener);
            // TLS on another port only: 8080 goes in plain text.
            let mut policy = files.client_policy(&[v1_id()], true);
            policy["clientPolicy"]["tls"]["ports"] = json!([9999]);
            set_backend_defaults(mesh, policy);
        },
    );
    let marker = format!("permissive-{}", std::process::id());
    let send = |name: &str| {
        let ((status, body, _), captured) = nodes.captured_while(name, || {
            nodes.curl("/permissive", &["--data-binary", &marker])
        });
        assert_eq!(status, 200, "{name}: {body}\n{}", nodes.logs());
        captured.contains(marker.as_bytes())
    };
    assert!(
        send("plain"),
        "policy on other ports: plain text, which PERMISSIVE takes"
    );

    let mut client = client_definition(&nodes);
    client["spec"]["backendDefaults"]["clientPolicy"]["tls"]["ports"] = json!([PORT]);
    nodes.write_mesh_file("vn-client", &client);
    eventually("TLS on the policy's port", &nodes, || {
        (!send("tls")).then_some(())
    });

    client["spec"]["backendDefaults"]["clientPolicy"]["tls"]["enforce"] = json!(false);
    nodes.write_mesh_file("vn-client", &client);
    eventually("enforce: false turns the policy off", &nodes, || {
        send("off").then_some(())
    });
}
