//! Active health checks of a cluster's endpoints (the listener's `healthCheck` in App Mesh):
//! every interval each endpoint is probed — HTTP GET of the path expecting 2xx, or a TCP
//! connect (also for gRPC, whose health service the proxy does not call yet) — and marked
//! unhealthy after `unhealthy_threshold` failures in a row, healthy again after
//! `healthy_threshold` successes.
use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    sync::{Arc, Weak},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_xds::plan::cluster::{HealthCheckKind, HealthCheckPlan};
use tracing::{info, warn};

use super::upstream::{Endpoint, Upstream};

/// Why one probe failed; logged when the endpoint is marked unhealthy.
#[derive(Debug, thiserror::Error)]
enum ProbeError {
    #[error("connect: {0}")]
    Connect(io::Error),
    #[error("{0}")]
    Request(http::Error),
    #[error("{0}")]
    Http(hyper::Error),
    #[error("status {0}")]
    Status(http::StatusCode),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

#[derive(Default)]
struct Streak {
    successes: u32,
    failures: u32,
}

/// Checks the cluster's endpoints until the cluster goes away.
pub async fn check_cluster(upstream: Weak<Upstream>) {
    let mut streaks: HashMap<SocketAddr, Streak> = HashMap::new();
    loop {
        let Some(cluster) = upstream.upgrade() else {
            return;
        };
        let Some(plan) = cluster.plan.health_check.clone() else {
            return;
        };
        let stop = cluster.tasks.clone();
        // Endpoints that cannot be read (poisoned, said once): nothing left to check.
        let Ok(endpoints) = cluster.endpoints() else {
            return;
        };
        streaks.retain(|addr, _| endpoints.iter().any(|e| e.addr == *addr));
        // Probes run in turn, each bounded by the check's timeout.
        for endpoint in endpoints.iter() {
            let result = probe(endpoint, &plan).await;
            let streak = streaks.entry(endpoint.addr).or_default();
            judge(&cluster, endpoint, streak, &plan, result);
        }
        drop(cluster);
        tokio::select! {
            () = tokio::time::sleep(plan.interval) => {}
            () = stop.cancelled() => return,
        }
    }
}

fn judge(
    cluster: &Upstream,
    endpoint: &Arc<Endpoint>,
    streak: &mut Streak,
    plan: &HealthCheckPlan,
    result: Result<(), ProbeError>,
) {
    match result {
        Ok(()) => {
            streak.failures = 0;
            streak.successes += 1;
            if streak.successes >= plan.healthy_threshold && endpoint.set_healthy(true) {
                cluster.metrics.health_changes.inc();
                info!(cluster = %cluster.name(), endpoint = %endpoint.addr, "endpoint healthy again");
            }
        }
        Err(reason) => {
            streak.successes = 0;
            streak.failures += 1;
            if streak.failures >= plan.unhealthy_threshold && endpoint.set_healthy(false) {
                cluster.metrics.health_changes.inc();
                warn!(cluster = %cluster.name(), endpoint = %endpoint.addr, %reason, "endpoint failed its health check; removed");
            }
        }
    }
}

/// One probe on a fresh connection (so a pooled connection cannot hide a dead listener).
async fn probe(endpoint: &Endpoint, plan: &HealthCheckPlan) -> Result<(), ProbeError> {
    let target = match plan.port {
        Some(port) => SocketAddr::new(endpoint.addr.ip(), port),
        None => endpoint.addr,
    };
    let attempt = async {
        let stream = endpoint
            .connector
            .to(target)
            .connect()
            .await
            .map_err(ProbeError::Connect)?;
        let HealthCheckKind::Http { path, http2 } = &plan.kind else {
            return Ok(());
        };
        let request = http::Request::get(path.as_str())
            .header(http::header::HOST, target.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(ProbeError::Request)?;
        let io = TokioIo::new(stream);
        let status = if *http2 {
            let (mut sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(ProbeError::Http)?;
            tokio::spawn(connection);
            sender
                .send_request(request)
                .await
                .map_err(ProbeError::Http)?
                .status()
        } else {
            let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(ProbeError::Http)?;
            tokio::spawn(connection);
            sender
                .send_request(request)
                .await
                .map_err(ProbeError::Http)?
                .status()
        };
        if status.is_success() {
            Ok(())
        } else {
            Err(ProbeError::Status(status))
        }
    };
    tokio::time::timeout(plan.timeout, attempt)
        .await
        .map_err(|_| ProbeError::Timeout(plan.timeout))?
}
