//! Every kind of route match App Mesh has, as the proxy applies it: path (prefix, exact,
//! regex), headers (exact, prefix, suffix, regex, range, present; inverted), method, scheme,
//! query parameters, listener port, gRPC service, method and metadata, and route priority.
use bytes::Bytes;
use http_body_util::Full;
use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn path_prefix_exact_and_regex_matches() {
    let mesh = Mesh::start(Spec {
        routes: vec![
            route(
                "exact",
                Some(1),
                json!({"path": {"exact": "/exact"}}),
                &[("v2", 1)],
                json!({}),
            ),
            route(
                "regex",
                Some(2),
                json!({"path": {"regex": "/items/[0-9]+"}}),
                &[("v2", 1)],
                json!({}),
            ),
            route(
                "prefix",
                Some(3),
                json!({"prefix": "/v2/"}),
                &[("v2", 1)],
                json!({}),
            ),
            route(
                "default",
                Some(100),
                json!({"prefix": "/"}),
                &[("v1", 1)],
                json!({}),
            ),
        ],
        ..Spec::default()
    })
    .await;
    for (path, want) in [
        ("/exact", "v2"),
        ("/exact/more", "v1"),
        ("/exact?x=1", "v2"),
        ("/items/42", "v2"),
        ("/items/42x", "v1"),
        ("/v2/anything", "v2"),
        ("/v2", "v1"),
        ("/", "v1"),
    ] {
        assert_eq!(mesh.served_by(path, &[]).await, want, "{path}");
    }
    let metrics = mesh.proxy.metrics_text();
    assert_eq!(
        metric_value(&metrics, &requests_sample("v2", "exact", 200, "")),
        2.0,
        "{metrics}"
    );
    assert_eq!(
        metric_value(&metrics, &requests_sample("v1", "default", 200, "")),
        4.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn request_ids_are_assigned_and_trace_context_passes() {
    let mesh = Mesh::start(Spec {
        routes: all_to_v1(),
        ..Spec::default()
    })
    .await;
    let reply = mesh
        .send(mesh.get("/").body(Full::default()).unwrap())
        .await;
    let id = reply.header("x-echo-request-id");
    assert_eq!(id.len(), 36, "{reply:?}");
    let again = mesh
        .send(mesh.get("/").body(Full::default()).unwrap())
        .await;
    assert_ne!(again.header("x-echo-request-id"), id);
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let reply = mesh
        .send(
            mesh.get("/")
                .header("x-request-id", "mine")
                .header("traceparent", traceparent)
                .body(Full::default())
                .unwrap(),
        )
        .await;
    assert_eq!(reply.header("x-echo-request-id"), "mine");
    assert_eq!(reply.header("x-echo-traceparent"), traceparent);
}

#[tokio::test]
async fn header_matches_with_invert() {
    let header_route = |name: &str, priority: i64, header: serde_json::Value| {
        route(
            name,
            Some(priority),
            json!({"prefix": "/", "headers": [header]}),
            &[("v2", 1)],
            json!({}),
        )
    };
    let mesh = Mesh::start(Spec {
        routes: vec![
            header_route(
                "exact",
                1,
                json!({"name": "x-exact", "match": {"exact": "yes"}}),
            ),
            header_route(
                "prefix",
                2,
                json!({"name": "x-prefix", "match": {"prefix": "ab"}}),
            ),
            header_route(
                "suffix",
                3,
                json!({"name": "x-suffix", "match": {"suffix": "yz"}}),
            ),
            header_route(
                "regex",
                4,
                json!({"name": "x-regex", "match": {"regex": "v[0-9]+"}}),
            ),
            header_route(
                "range",
                5,
                json!({"name": "x-range", "match": {"range": {"start": 10, "end": 20}}}),
            ),
            header_route("present", 6, json!({"name": "x-present"})),
            route(
                "invert",
                Some(7),
                json!({"prefix": "/inv", "headers": [{"name": "x-user", "invert": true, "match": {"exact": "admin"}}]}),
                &[("v2", 1)],
                json!({}),
            ),
            route(
                "default",
                Some(100),
                json!({"prefix": "/"}),
                &[("v1", 1)],
                json!({}),
            ),
        ],
        ..Spec::default()
    })
    .await;
    for ((name, value), want) in [
        (("x-exact", "yes"), "v2"),
        (("x-exact", "yes!"), "v1"),
        (("x-prefix", "abc"), "v2"),
        (("x-prefix", "xabc"), "v1"),
        (("x-suffix", "xyz"), "v2"),
        (("x-suffix", "yzx"), "v1"),
        (("x-regex", "v12"), "v2"),
        (("x-regex", "v12a"), "v1"),
        (("x-range", "10"), "v2"),
        (("x-range", "19"), "v2"),
        (("x-range", "20"), "v1"),
        (("x-range", "9"), "v1"),
        (("x-range", "ten"), "v1"),
        (("x-present", "anything"), "v2"),
        (("x-other", "1"), "v1"),
    ] {
        assert_eq!(
            mesh.served_by("/", &[(name, value)]).await,
            want,
            "{name}: {value}"
        );
    }
    // Inverted: everyone but admin (and a request without the header) goes to v2.
    assert_eq!(mesh.served_by("/inv", &[("x-user", "bob")]).await, "v2");
    assert_eq!(mesh.served_by("/inv", &[]).await, "v2");
    assert_eq!(mesh.served_by("/inv", &[("x-user", "admin")]).await, "v1");
}

#[tokio::test]
async fn method_scheme_and_query_parameter_matches() {
    let mesh = Mesh::start(Spec {
        routes: vec![
            route(
                "post",
                Some(1),
                json!({"prefix": "/", "method": "POST"}),
                &[("v2", 1)],
                json!({}),
            ),
            route(
                "query",
                Some(2),
                json!({"prefix": "/", "queryParameters": [{"name": "beta", "match": {"exact": "on"}}]}),
                &[("v2", 1)],
                json!({}),
            ),
            route(
                "https",
                Some(3),
                json!({"prefix": "/secure", "scheme": "https"}),
                &[("v2", 1)],
                json!({}),
            ),
            route(
                "http",
                Some(4),
                json!({"prefix": "/plain", "scheme": "http"}),
                &[("v2", 1)],
                json!({}),
            ),
            route(
                "default",
                Some(100),
                json!({"prefix": "/"}),
                &[("v1", 1)],
                json!({}),
            ),
        ],
        ..Spec::default()
    })
    .await;
    let post = request_to(SERVICE, PORT, "POST", "/")
        .body(Full::new(Bytes::from_static(b"x")))
        .unwrap();
    let reply = mesh.send(post).await;
    assert_eq!((reply.status, reply.served_by()), (200, "v2"), "{reply:?}");
    let put = request_to(SERVICE, PORT, "PUT", "/")
        .body(Full::new(Bytes::from_static(b"x")))
        .unwrap();
    assert_eq!(mesh.send(put).await.served_by(), "v1");
    assert_eq!(mesh.served_by("/", &[]).await, "v1");
    assert_eq!(mesh.served_by("/?beta=on", &[]).await, "v2");
    assert_eq!(mesh.served_by("/?beta=off&x=1", &[]).await, "v1");
    assert_eq!(mesh.served_by("/?x=1&beta=on", &[]).await, "v2");
    assert_eq!(mesh.served_by("/?beta", &[]).await, "v1");
    // Plain HTTP is not https, and is http.
    assert_eq!(mesh.served_by("/secure", &[]).await, "v1");
    assert_eq!(mesh.served_by("/plain", &[]).await, "v2");
}

#[tokio::test]
async fn priority_orders_routes_ties_go_by_name_and_no_match_is_404() {
    let mesh = Mesh::start(Spec {
        routes: vec![
            // Same match: the lower priority number wins, whatever the file order.
            route(
                "b-low",
                Some(5),
                json!({"prefix": "/p"}),
                &[("v1", 1)],
                json!({}),
            ),
            route(
                "a-high",
                Some(0),
                json!({"prefix": "/p"}),
                &[("v2", 1)],
                json!({}),
            ),
            // A tie: App Mesh's order after priority is the route name.
            route(
                "tie-b",
                Some(7),
                json!({"prefix": "/t"}),
                &[("v1", 1)],
                json!({}),
            ),
            route(
                "tie-a",
                Some(7),
                json!({"prefix": "/t"}),
                &[("v2", 1)],
                json!({}),
            ),
        ],
        ..Spec::default()
    })
    .await;
    assert_eq!(mesh.served_by("/p", &[]).await, "v2");
    assert_eq!(mesh.served_by("/t", &[]).await, "v2");
    // Nothing matches: 404 naming the virtual service.
    let reply = mesh
        .send(mesh.get("/nothing").body(Full::default()).unwrap())
        .await;
    assert_eq!(reply.status, 404, "{reply:?}");
    assert_eq!(reply.header("x-mesh-virtual-service"), SERVICE, "{reply:?}");
    // A host that is not a backend of the client: 404 too.
    let reply = mesh
        .send(
            request_to("other.m.local", PORT, "GET", "/p")
                .body(Full::default())
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, 404, "{reply:?}");
    assert_eq!(
        mesh.server("v1").hits() + mesh.server("v2").hits(),
        2,
        "only the routed requests reached a server"
    );
}

#[tokio::test]
async fn routes_match_on_the_listener_port() {
    let mesh = Mesh::start(Spec {
        router_ports: &[PORT, 9000],
        routes: vec![
            route(
                "on-9000",
                None,
                json!({"prefix": "/", "port": 9000}),
                &[("v2", 1)],
                json!({}),
            ),
            route(
                "on-8080",
                None,
                json!({"prefix": "/", "port": PORT}),
                &[("v1", 1)],
                json!({}),
            ),
        ],
        ..Spec::default()
    })
    .await;
    assert_eq!(mesh.served_by("/", &[]).await, "v1");
    let reply = send_http1(
        mesh.listener(9000),
        request_to(SERVICE, 9000, "GET", "/")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!((reply.status, reply.served_by()), (200, "v2"), "{reply:?}");
}

#[tokio::test]
async fn http2_routes_are_matched_and_multiplexed() {
    let h2_route = |name: &str, priority: i64, matching: serde_json::Value, node: &str| {
        route_of_kind(
            "http2Route",
            name,
            Some(priority),
            matching,
            &[(node, 1)],
            json!({}),
        )
    };
    let mesh = Mesh::start(Spec {
        protocol: "http2",
        routes: vec![
            h2_route(
                "canary",
                1,
                json!({"prefix": "/", "headers": [{"name": "x-canary", "match": {"exact": "yes"}}]}),
                "v2",
            ),
            h2_route("rest", 2, json!({"prefix": "/"}), "v1"),
        ],
        ..Spec::default()
    })
    .await;
    let url = format!("http://{SERVICE}:{PORT}/m");
    let client = Http2::connect(mesh.listener(PORT)).await;
    let canary = client
        .clone()
        .send(
            http::Request::get(&url)
                .header("x-canary", "yes")
                .body(Full::default())
                .unwrap(),
        )
        .await;
    assert_eq!((canary.status, canary.served_by()), (200, "v2"));
    // 500 requests, 50 at a time, over the one connection.
    let mut served = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..10 {
        let batch = (0..50).map(|_| {
            let mut client = client.clone();
            let request = http::Request::get(&url).body(Full::default()).unwrap();
            tokio::spawn(async move { client.send(request).await })
        });
        for reply in batch {
            let reply = reply.await.unwrap();
            assert_eq!(reply.status, 200, "{reply:?}");
            *served.entry(reply.served_by().to_owned()).or_default() += 1;
        }
    }
    assert_eq!(served, [("v1".to_owned(), 500)].into());
    assert_eq!(
        mesh.proxy.metric(&requests_sample("v1", "rest", 200, "")),
        500.0
    );
}

#[tokio::test]
async fn grpc_routes_by_service_method_and_metadata() {
    let grpc_route = |name: &str, priority: i64, matching: serde_json::Value, node: &str| {
        route_of_kind(
            "grpcRoute",
            name,
            Some(priority),
            matching,
            &[(node, 1)],
            json!({}),
        )
    };
    let mesh = Mesh::start(Spec {
        protocol: "grpc",
        routes: vec![
            grpc_route(
                "gold",
                1,
                json!({"serviceName": "grpc.health.v1.Health", "metadata": [{"name": "x-tier", "match": {"exact": "gold"}}]}),
                "v2",
            ),
            grpc_route(
                "check",
                2,
                json!({"serviceName": "grpc.health.v1.Health", "methodName": "Check"}),
                "v1",
            ),
            grpc_route("echo", 3, json!({"serviceName": "test.Echo"}), "v2"),
        ],
        ..Spec::default()
    })
    .await;
    let client = Http2::connect(mesh.listener(PORT)).await;
    let call = |method: &str, metadata: &[(&str, &str)]| {
        let mut request = http::Request::post(format!("http://{SERVICE}:{PORT}/{method}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        for (name, value) in metadata {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::default()).unwrap();
        let mut client = client.clone();
        async move { client.send(request).await }
    };
    let check = "grpc.health.v1.Health/Check";
    let reply = call(check, &[]).await;
    assert_eq!(
        (reply.status, reply.served_by(), reply.header("grpc-status")),
        (200, "v1", "0"),
        "{reply:?}"
    );
    // Metadata x-tier: gold takes any method of the service to v2.
    assert_eq!(call(check, &[("x-tier", "gold")]).await.served_by(), "v2");
    assert_eq!(
        call("grpc.health.v1.Health/Watch", &[("x-tier", "gold")])
            .await
            .served_by(),
        "v2"
    );
    // Another method without the metadata matches no route: the proxy answers, in gRPC.
    let unmatched = call("grpc.health.v1.Health/Watch", &[]).await;
    assert_eq!(unmatched.served_by(), "", "{unmatched:?}");
    assert_ne!(unmatched.header("grpc-status"), "0", "{unmatched:?}");
    // A service name alone matches all its methods.
    assert_eq!(call("test.Echo/Say", &[]).await.served_by(), "v2");
    assert_eq!(call("test.EchoMore/Say", &[]).await.served_by(), "");
    // A gRPC status in trailers-only headers is counted as the gRPC status.
    let reply = call(check, &[("x-grpc-status", "5")]).await;
    assert_eq!(reply.header("grpc-status"), "5");
    let metrics = mesh.proxy.metrics_text();
    for (node, route, status, count) in [
        ("v1", "check", "0", 1.0),
        ("v1", "check", "5", 1.0),
        ("v2", "gold", "0", 2.0),
        ("v2", "echo", "0", 1.0),
    ] {
        assert_eq!(
            metric_value(&metrics, &requests_sample(node, route, 200, status)),
            count,
            "{node} {route} {status}\n{metrics}"
        );
    }
}
