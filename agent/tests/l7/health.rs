//! Active health checks: an endpoint failing unhealthyThreshold checks in a row is taken out
//! of the cluster, and put back after healthyThreshold passes.
use std::time::Duration;

use serde_json::json;

use crate::harness::*;

fn health_checked() -> Spec {
    Spec {
        routes: all_to_v1(),
        // App Mesh's minimums (5 s, 2 s), made 100 ms and 200 ms after compiling.
        listener_extra: json!({"healthCheck": {
            "protocol": "http", "path": "/health", "intervalMillis": 5000,
            "timeoutMillis": 2000, "healthyThreshold": 2, "unhealthyThreshold": 3}}),
        tweak: Some(|state| {
            health_check_timing(
                state,
                Duration::from_millis(100),
                Duration::from_millis(200),
            )
        }),
        v1: vec![ServerSpec::named("v1"), ServerSpec::named("v1b")],
        ..Spec::default()
    }
}

async fn served_by_each(mesh: &Mesh, count: usize) -> (usize, usize) {
    let (v1, v1b) = (mesh.server("v1").hits(), mesh.server("v1b").hits());
    for _ in 0..count {
        mesh.served_by("/", &[]).await;
    }
    (
        mesh.server("v1").hits() - v1,
        mesh.server("v1b").hits() - v1b,
    )
}

#[tokio::test]
async fn an_endpoint_failing_its_checks_is_removed_and_restored() {
    let mesh = Mesh::start(health_checked()).await;
    let cluster = "m/v1/8080";
    let changes = format!("mesh_health_check_changes_total{{cluster=\"{cluster}\"}}");
    mesh.proxy
        .wait_until_available(cluster, 2.0, Duration::from_secs(5))
        .await;
    let (_, to_b) = served_by_each(&mesh, 20).await;
    assert!(to_b > 0, "v1b took nothing while healthy");
    mesh.server("v1b").set_healthy(false);
    let checks = mesh.server("v1b").health_checks();
    mesh.proxy
        .wait_until_available(cluster, 1.0, Duration::from_secs(5))
        .await;
    // Removed after three failed checks, not fewer.
    assert!(
        mesh.server("v1b").health_checks() - checks >= 3,
        "removed after {} failed checks",
        mesh.server("v1b").health_checks() - checks
    );
    assert_eq!(served_by_each(&mesh, 30).await, (30, 0));
    assert_eq!(mesh.proxy.metric(&changes), 1.0);
    mesh.server("v1b").set_healthy(true);
    mesh.proxy
        .wait_until_available(cluster, 2.0, Duration::from_secs(5))
        .await;
    assert!(served_by_each(&mesh, 30).await.1 > 0);
    assert_eq!(mesh.proxy.metric(&changes), 2.0);
    // Still checked, still healthy.
    assert!(mesh.server("v1").health_checks() >= 5);
}

#[tokio::test]
async fn a_dead_endpoint_is_removed_by_its_checks_and_restored_when_it_listens_again() {
    let mut mesh = Mesh::start(health_checked()).await;
    let cluster = "m/v1/8080";
    mesh.proxy
        .wait_until_available(cluster, 2.0, Duration::from_secs(5))
        .await;
    mesh.server("v1b").kill().await;
    mesh.proxy
        .wait_until_available(cluster, 1.0, Duration::from_secs(5))
        .await;
    assert_eq!(served_by_each(&mesh, 30).await, (30, 0));
    mesh.servers.get_mut("v1b").unwrap().revive();
    mesh.proxy
        .wait_until_available(cluster, 2.0, Duration::from_secs(5))
        .await;
    assert!(served_by_each(&mesh, 30).await.1 > 0);
    assert_eq!(
        mesh.proxy.metric(&format!(
            "mesh_health_check_changes_total{{cluster=\"{cluster}\"}}"
        )),
        2.0
    );
}
