//! Outlier detection: an endpoint with consecutive server errors, or that died, is ejected
//! and traffic goes to the others; never more than maxEjectionPercent are out.
use serde_json::json;

use crate::harness::*;

fn outlier_detection() -> serde_json::Value {
    json!({"outlierDetection": {
        "maxServerErrors": 3,
        "interval": {"unit": "s", "value": 10},
        "baseEjectionDuration": {"unit": "s", "value": 30},
        "maxEjectionPercent": 50}})
}

/// `count` GETs in turn; the statuses.
async fn statuses(mesh: &Mesh, count: usize) -> Vec<u16> {
    let mut statuses = Vec::new();
    for _ in 0..count {
        let reply = mesh
            .send(mesh.get("/").body(http_body_util::Full::default()).unwrap())
            .await;
        statuses.push(reply.status);
    }
    statuses
}

#[tokio::test]
async fn an_endpoint_answering_5xx_is_ejected_and_the_other_takes_the_traffic() {
    let mesh = Mesh::start(Spec {
        routes: all_to_v1(),
        listener_extra: outlier_detection(),
        v1: vec![
            ServerSpec::named("v1"),
            ServerSpec::named("v1-bad").failing_first(1_000_000),
        ],
        ..Spec::default()
    })
    .await;
    let cluster = "m/v1/8080";
    assert_eq!(mesh.proxy.available(cluster), 2.0);
    let statuses = statuses(&mesh, 40).await;
    // Its three 503s in a row got through (no retry policy); then it was out.
    assert_eq!(
        statuses.iter().filter(|s| **s == 503).count(),
        3,
        "{statuses:?}"
    );
    assert_eq!(mesh.server("v1-bad").hits(), 3);
    assert_eq!(mesh.server("v1").hits(), 37);
    assert!(
        statuses[statuses.len() - 20..].iter().all(|s| *s == 200),
        "{statuses:?}"
    );
    assert_eq!(
        mesh.proxy.metric(&format!(
            "mesh_outlier_ejections_total{{cluster=\"{cluster}\"}}"
        )),
        1.0
    );
    assert_eq!(mesh.proxy.available(cluster), 1.0);
}

#[tokio::test]
async fn a_killed_endpoint_is_ejected() {
    let mesh = Mesh::start(Spec {
        routes: all_to_v1(),
        listener_extra: outlier_detection(),
        v1: vec![ServerSpec::named("v1"), ServerSpec::named("v1b")],
        ..Spec::default()
    })
    .await;
    let cluster = "m/v1/8080";
    // Both serve (and the proxy pools connections to both)...
    assert!(statuses(&mesh, 20).await.iter().all(|s| *s == 200));
    assert!(mesh.server("v1b").hits() > 0 && mesh.server("v1").hits() > 0);
    // ...then v1b dies: its connects are refused, three in a row eject it.
    mesh.server("v1b").kill().await;
    let statuses = statuses(&mesh, 40).await;
    let failed = statuses.iter().filter(|s| **s != 200).count();
    assert_eq!(failed, 3, "{statuses:?}");
    assert!(
        statuses[statuses.len() - 30..].iter().all(|s| *s == 200),
        "{statuses:?}"
    );
    assert_eq!(
        mesh.proxy.metric(&format!(
            "mesh_outlier_ejections_total{{cluster=\"{cluster}\"}}"
        )),
        1.0
    );
    assert_eq!(mesh.proxy.available(cluster), 1.0);
}

#[tokio::test]
async fn no_more_than_max_ejection_percent_are_ejected() {
    let mesh = Mesh::start(Spec {
        routes: all_to_v1(),
        listener_extra: outlier_detection(),
        v1: vec![
            ServerSpec::named("bad-a").failing_first(1_000_000),
            ServerSpec::named("bad-b").failing_first(1_000_000),
        ],
        ..Spec::default()
    })
    .await;
    let cluster = "m/v1/8080";
    let statuses = statuses(&mesh, 30).await;
    assert!(statuses.iter().all(|s| *s == 503), "{statuses:?}");
    // 50% of two endpoints: one is ejected, the other keeps taking (and failing) requests.
    assert_eq!(
        mesh.proxy.metric(&format!(
            "mesh_outlier_ejections_total{{cluster=\"{cluster}\"}}"
        )),
        1.0
    );
    assert_eq!(mesh.proxy.available(cluster), 1.0);
    let (a, b) = (mesh.server("bad-a").hits(), mesh.server("bad-b").hits());
    assert!(a.min(b) == 3 && a.max(b) == 27, "{a} {b}");
}
