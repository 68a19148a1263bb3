//! The proxy's two TLS sides against each other on loopback, with certificates from a test
//! CA: what each App Mesh validation setting lets through, the reason each refusal is given
//! under, the identity the server reads, and rotation of certificate files.
use std::{path::Path, time::Duration};

use mesh_xds::plan::tls::{
    CertificateSource, ClientTlsPlan, KeyPair, Pem, SanKind, SanMatcher, SanPattern, ServerTlsPlan,
    TrustSource, Validation, Versions,
};
use tests::certs::{IssueSpec, Leaf, TestCa};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;

use super::{Alpn, HandshakeResult, TlsStore, stream::MaybeTls};
use mesh_xds::names::spiffe_id;

fn inline(pem: &str) -> Pem {
    Pem::Inline(pem.as_bytes().into())
}

fn pair(leaf: &Leaf) -> CertificateSource {
    CertificateSource::Given(KeyPair {
        chain: inline(&leaf.chain_pem),
        key: inline(&leaf.key_pem),
    })
}

fn trust(ca: &TestCa, sans: &[&str]) -> Validation {
    Validation {
        trust: TrustSource::Given(inline(ca.cert_pem())),
        sans: sans
            .iter()
            .map(|san| SanMatcher {
                kind: SanKind::Uri,
                pattern: SanPattern::Exact((*san).to_owned()),
            })
            .collect(),
    }
}

fn leaf(ca: &TestCa, node: &str) -> Leaf {
    ca.issue(&IssueSpec::new(node).uri(&spiffe_id("td", "m", node)))
        .unwrap()
}

fn server_plan(certificate: CertificateSource, clients: Option<Validation>) -> ServerTlsPlan {
    ServerTlsPlan {
        require_client_certificate: clients.is_some(),
        certificate,
        validation: clients,
        versions: Versions::default(),
    }
}

fn client_plan(certificate: Option<CertificateSource>, server: Validation) -> ClientTlsPlan {
    ClientTlsPlan {
        certificate,
        validation: Some(server),
        sni: None,
        versions: Versions::default(),
    }
}

/// The outcome of one connection: the client's, and what the server saw (the client's
/// identity, or the failure).
async fn handshake(
    store: &TlsStore,
    server: &ServerTlsPlan,
    client: &ClientTlsPlan,
) -> (Result<(), String>, Result<Option<String>, HandshakeResult>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_store = store.clone();
    let server = server.clone();
    let served = tokio::spawn(async move {
        let (stream, peer) = listener.accept().await.unwrap();
        match server_store.accept(&server, Alpn::None, stream, peer).await {
            Ok(tls) => {
                let mut tls = MaybeTls::Server(Box::new(tls));
                let identity = tls.peer_identity();
                let mut byte = [0u8; 1];
                tls.read_exact(&mut byte).await.unwrap();
                tls.write_all(&byte).await.unwrap();
                tls.flush().await.unwrap();
                Ok(identity)
            }
            Err(failed) => Err(failed.result),
        }
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let client = match store.connect(client, Alpn::None, tcp, addr).await {
        Ok(tls) => {
            let mut tls = MaybeTls::Client(Box::new(tls));
            // TLS 1.3 clients finish before the server has checked their certificate: a
            // round trip shows whether the server took it.
            let echoed = async {
                tls.write_all(b"x").await?;
                tls.flush().await?;
                let mut byte = [0u8; 1];
                tls.read_exact(&mut byte).await
            };
            echoed.await.map(|_| ()).map_err(|e| e.to_string())
        }
        Err(failed) => Err(failed.to_string()),
    };
    (client, served.await.unwrap())
}

#[tokio::test]
async fn mutual_tls_passes_the_callers_identity() {
    let ca = TestCa::new("mesh CA").unwrap();
    let store = TlsStore::default();
    let server = server_plan(pair(&leaf(&ca, "api")), Some(trust(&ca, &[])));
    let client = client_plan(
        Some(pair(&leaf(&ca, "web"))),
        trust(&ca, &[&spiffe_id("td", "m", "api")]),
    );
    let (client, server) = handshake(&store, &server, &client).await;
    assert_eq!(client, Ok(()));
    assert_eq!(server, Ok(Some("m/web".to_owned())));
}

#[tokio::test]
async fn each_refusal_is_named() {
    let ca = TestCa::new("mesh CA").unwrap();
    let other = TestCa::new("another CA").unwrap();
    let store = TlsStore::default();
    let api = pair(&leaf(&ca, "api"));

    // The server's certificate carries another name than the client policy wants.
    let server = server_plan(api.clone(), None);
    let wants_web = client_plan(None, trust(&ca, &[&spiffe_id("td", "m", "db")]));
    let (client, _) = handshake(&store, &server, &wants_web).await;
    let reason = client.unwrap_err();
    assert!(
        reason.starts_with("tls handshake failed: certificate SAN does not match: presented [URI:spiffe://td/mesh/m/virtualNode/api], expected one of [URI:spiffe://td/mesh/m/virtualNode/db]"),
        "{reason}"
    );

    // Signed by a CA the client does not trust.
    let stranger = server_plan(pair(&leaf(&other, "api")), None);
    let (client, _) = handshake(&store, &stranger, &client_plan(None, trust(&ca, &[]))).await;
    assert!(client.unwrap_err().contains("unknown authority"));

    // Expired.
    let expired = ca
        .issue(
            &IssueSpec::new("api")
                .uri(&spiffe_id("td", "m", "api"))
                .expired(),
        )
        .unwrap();
    let (client, _) = handshake(
        &store,
        &server_plan(pair(&expired), None),
        &client_plan(None, trust(&ca, &[])),
    )
    .await;
    assert!(client.unwrap_err().contains("certificate expired"));

    // Mutual TLS: a client without a certificate is refused by the server.
    let mutual = server_plan(api, Some(trust(&ca, &[])));
    let (client, server) = handshake(&store, &mutual, &client_plan(None, trust(&ca, &[]))).await;
    assert!(client.is_err());
    assert_eq!(server, Err(HandshakeResult::no_certificate));

    let metrics = store.metrics.encode_for_test();
    for sample in [
        r#"side="client",result="san_mismatch""#,
        r#"side="client",result="unknown_authority""#,
        r#"side="client",result="expired""#,
        r#"side="server",result="no_certificate""#,
    ] {
        assert!(metrics.contains(sample), "{sample} in {metrics}");
    }
}

#[tokio::test]
async fn a_rotated_certificate_file_is_used_by_the_next_connection() {
    let ca = TestCa::new("mesh CA").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let files = leaf(&ca, "api").write_to(dir.path(), "api").unwrap();
    let certificate = CertificateSource::Given(KeyPair {
        chain: Pem::File(files.cert.clone()),
        key: Pem::File(files.key.clone()),
    });
    let store = TlsStore::default();
    store
        .update(
            Default::default(),
            vec![files.cert.clone(), files.key.clone()],
        )
        .await;
    let stop = CancellationToken::new();
    tokio::spawn(store.clone().follow_files(stop.clone()));
    let server = server_plan(certificate, None);
    let wants = |node: &str| client_plan(None, trust(&ca, &[&spiffe_id("td", "m", node)]));

    assert_eq!(handshake(&store, &server, &wants("api")).await.0, Ok(()));
    rotate(&ca, dir.path(), "api-v2").await;
    assert!(
        wait_for(|| async { handshake(&store, &server, &wants("api-v2")).await.0.is_ok() }).await,
        "the rotated certificate is presented within seconds"
    );
    assert!(handshake(&store, &server, &wants("api")).await.0.is_err());
    stop.cancel();
}

/// Rewrites `api.pem` / `api.key` in `dir` with a certificate for `node`.
async fn rotate(ca: &TestCa, dir: &Path, node: &str) {
    // A different size or time than the first: the agent notices by metadata.
    tokio::time::sleep(Duration::from_millis(20)).await;
    leaf(ca, node).write_to(dir, "api").unwrap();
}

async fn wait_for<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..40 {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn an_unreadable_file_names_itself_and_a_fifo_does_not_hang() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.pem");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let missing = dir.path().join("missing.pem");
    let store = TlsStore::default();
    tokio::time::timeout(
        Duration::from_secs(5),
        store.update(Default::default(), vec![fifo.clone(), missing.clone()]),
    )
    .await
    .expect("reading a FIFO does not block");
    let plan = server_plan(
        CertificateSource::Given(KeyPair {
            chain: Pem::File(fifo.clone()),
            key: Pem::File(missing),
        }),
        None,
    );
    let error = store
        .server_config(&plan, Alpn::None)
        .unwrap_err()
        .to_string();
    assert!(error.contains("fifo.pem: not a regular file"), "{error}");
}

#[test]
fn a_certificate_that_cannot_exist_here_is_named() {
    let store = TlsStore::default();
    let name = mesh_xds::names::unavailable_secret("an ACM certificate");
    let plan = server_plan(CertificateSource::Sds(name), None);
    let error = store
        .server_config(&plan, Alpn::None)
        .unwrap_err()
        .to_string();
    assert_eq!(
        error,
        "no certificate can be had here: the listener names an ACM certificate"
    );
}
