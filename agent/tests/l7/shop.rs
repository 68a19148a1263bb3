//! The shop example of deploy/examples as the node proxy applies it to web's traffic: the
//! canary route's 90/10 split, its inverted header match, its retry events.
use std::{net::SocketAddrV4, path::Path, time::Duration};

use control_plane::registry::Registry;
use http_body_util::Full;
use serde_json::Value;

use crate::harness::*;

const API: &str = "api.shop.local";
const API_PORT: u16 = 9090;

#[tokio::test]
async fn the_shop_examples_canary_route() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/shop");
    let dir = tempfile::tempdir().unwrap();
    // api-v1 and api-v2 are found by DNS names: here, loopback addresses of their own on the
    // listener port.
    let mut servers = Vec::new();
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
        let mut definition: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        if let Some(node @ ("api-v1" | "api-v2")) = definition["virtualNodeName"].as_str() {
            let name = if node == "api-v1" { "api-v1" } else { "api-v2" };
            let server = Server::start_on_port(ServerSpec::named(name), API_PORT).await;
            definition["spec"]["serviceDiscovery"]["dns"]["hostname"] =
                server.addr.ip().to_string().into();
            servers.push(server);
        }
        std::fs::write(
            dir.path().join(path.file_name().unwrap()),
            definition.to_string(),
        )
        .unwrap();
    }
    assert_eq!(servers.len(), 2);
    let state = compile_state(&index_of(dir.path()), &Registry::default());
    let proxy = Proxy::start(state, "shop/web").await;
    for cluster in ["shop/api-v1/9090", "shop/api-v2/9090"] {
        proxy
            .wait_until_available(cluster, 1.0, Duration::from_secs(5))
            .await;
    }
    let listener = proxy.listen_for(SocketAddrV4::new(SERVICE_VIP, API_PORT));
    let mut client = Http1::connect(listener).await;
    let get = |headers: &[(&str, &str)]| {
        let mut request = request_to(API, API_PORT, "GET", "/");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(Full::default()).unwrap()
    };
    let mut to_v2 = 0;
    for _ in 0..1000 {
        let reply = client.send(get(&[])).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        to_v2 += usize::from(reply.served_by() == "api-v2");
    }
    // 100 expected, σ ≈ 9.5.
    assert!((55..=145).contains(&to_v2), "api-v2 took {to_v2} of 1000");
    // The route is for requests without x-canary: yes; nothing else matches.
    let reply = client.send(get(&[("x-canary", "yes")])).await;
    assert_eq!(reply.status, 404, "{reply:?}");
    // client-error: a 409 is retried, twice at most.
    let reply = client.send(get(&[("x-status", "409")])).await;
    assert_eq!(reply.status, 409);
    let retries = |node: &str| {
        metric_value(
            &proxy.metrics_text(),
            &format!(
                r#"mesh_request_retries_total{{reporter="outbound",source_virtual_node="shop/web",destination_virtual_service="{API}",destination_virtual_node="shop/{node}",route="canary"}}"#
            ),
        )
    };
    assert_eq!(retries("api-v1") + retries("api-v2"), 2.0);
}
