//! Weighted targets: each request picks a target by weight; weight 0 gets nothing.
use std::collections::BTreeMap;

use http_body_util::Full;
use serde_json::json;

use crate::harness::*;

/// `count` requests over one keep-alive connection; how many each server answered.
async fn load(mesh: &Mesh, count: usize) -> BTreeMap<String, usize> {
    let mut client = Http1::connect(mesh.listener(PORT)).await;
    let mut served = BTreeMap::new();
    for n in 0..count {
        let reply = client
            .send(
                mesh.get(&format!("/load/{n}"))
                    .body(Full::default())
                    .unwrap(),
            )
            .await;
        assert_eq!(reply.status, 200, "{reply:?}");
        *served.entry(reply.served_by().to_owned()).or_default() += 1;
    }
    served
}

#[tokio::test]
async fn canary_split_follows_weights_per_request() {
    let mesh = Mesh::start(Spec {
        routes: vec![route(
            "canary",
            None,
            json!({"prefix": "/"}),
            &[("v1", 80), ("v2", 20)],
            json!({}),
        )],
        ..Spec::default()
    })
    .await;
    let served = load(&mesh, 2000).await;
    let (v1, v2) = (served["v1"], served["v2"]);
    assert_eq!(v1 + v2, 2000, "{served:?}");
    // 400 expected, σ ≈ 18: ±70 is almost 4σ.
    let share = v2 as f64 / 2000.0;
    assert!(
        (0.165..=0.235).contains(&share),
        "v2 got {share:.3} of requests, want 0.20 ± 0.035"
    );
    let metrics = mesh.proxy.metrics_text();
    assert_eq!(
        metric_value(&metrics, &requests_sample("v2", "canary", 200, "")),
        v2 as f64
    );
    assert_eq!(
        metric_value(&metrics, &requests_sample("v1", "canary", 200, "")),
        v1 as f64
    );
}

#[tokio::test]
async fn weight_zero_receives_nothing() {
    let mesh = Mesh::start(Spec {
        routes: vec![route(
            "canary",
            None,
            json!({"prefix": "/"}),
            &[("v1", 1), ("v2", 0)],
            json!({}),
        )],
        ..Spec::default()
    })
    .await;
    assert_eq!(load(&mesh, 500).await, [("v1".to_owned(), 500)].into());
    assert_eq!(mesh.server("v2").hits(), 0);
}
