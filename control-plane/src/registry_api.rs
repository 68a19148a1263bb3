//! The control plane's Cloud Map–style API over its service registry: the AWS JSON protocol
//! (`POST /` with `X-Amz-Target: Route53AutoNaming_v20170314.<Operation>`), the operations
//! App Mesh users' scripts and SDKs call ([`catalog`]): ListNamespaces, GetNamespace,
//! ListServices, GetService (ids `ns-…`, `srv-…`), RegisterInstance, DeregisterInstance,
//! ListInstances, GetInstance, GetOperation, DiscoverInstances (attribute and health
//! filters), UpdateInstanceCustomHealthStatus. A ServiceId may also be `namespace/service`.
//!
//! Registering an instance moves a service's traffic, so every request must carry the
//! configured token: as a bearer token, or as the secret access key of an AWS Signature
//! Version 4 ([`sigv4`]), which is how the AWS CLI and SDKs sign. The server bounds what a
//! caller can hold: connections, the time to send a request head, and request bodies.
mod catalog;
mod sigv4;

use std::{
    convert::Infallible,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, Response, StatusCode, body::Incoming, header, http::request::Parts};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::{
    net::TcpListener,
    sync::{Notify, Semaphore},
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::registry::Registry;
pub(crate) use catalog::Operations;

const TARGET_PREFIX: &str = "Route53AutoNaming_v20170314.";
/// Cloud Map's own limit for a request is far below this; a registration is a few hundred bytes.
const MAX_BODY: usize = 64 * 1024;
const MAX_CONNECTIONS: usize = 64;
/// A client that has not sent its request head by then is disconnected (slowloris).
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// The registry and who to tell when it changes.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) registry: Arc<Mutex<Registry>>,
    pub(crate) changed: Arc<Notify>,
    /// What GetOperation answers about.
    pub(crate) operations: Arc<Mutex<Operations>>,
}

/// A thread panicked holding the registry: it can no longer be trusted, so it is neither
/// changed nor published again.
#[derive(Debug, thiserror::Error)]
#[error("the registry lock is poisoned (a thread panicked holding it)")]
pub struct RegistryPoisoned;

impl Shared {
    pub(crate) fn registry(&self) -> Result<MutexGuard<'_, Registry>, RegistryPoisoned> {
        self.registry.lock().map_err(|_| RegistryPoisoned)
    }
}

pub(crate) async fn serve(
    listener: TcpListener,
    shared: Shared,
    token: String,
    stop: CancellationToken,
) {
    let token: Arc<str> = token.into();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut backoff = Duration::ZERO;
    loop {
        // Over the limit, connections wait in the kernel's queue, not in the control plane.
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
            () = stop.cancelled() => return,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => {
                    backoff = Duration::ZERO;
                    accepted
                }
                Err(error) => {
                    // Out of descriptors, accept fails at once again: wait it out.
                    backoff = (backoff * 2).clamp(Duration::from_millis(5), Duration::from_secs(1));
                    warn!(%error, ?backoff, "registry API accept failed");
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            },
            () = stop.cancelled() => return,
        };
        let (shared, token) = (shared.clone(), Arc::clone(&token));
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |request| {
                let (shared, token) = (shared.clone(), Arc::clone(&token));
                async move { Ok::<_, Infallible>(authorized(request, &shared, &token).await) }
            });
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%peer, %error, "registry API connection ended with an error");
            }
        });
    }
}

/// The request handled when it carries the token (as a bearer token, or as the secret key
/// of an AWS Signature Version 4); 401 otherwise.
async fn authorized(
    request: Request<Incoming>,
    shared: &Shared,
    token: &str,
) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    // The signature covers the body: read it (bounded) first.
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "InvalidInput",
                &format!("request body over {MAX_BODY} bytes"),
            );
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, "InvalidInput", &e.to_string()),
    };
    let presented = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let allowed = match presented.strip_prefix("Bearer ") {
        Some(bearer) => same_secret(bearer.as_bytes(), token.as_bytes()),
        None => match sigv4::verify(&parts, &body, presented, token, SystemTime::now()) {
            Ok(()) => true,
            Err(problem) => {
                return error(
                    StatusCode::UNAUTHORIZED,
                    "AccessDeniedException",
                    &format!("{problem}; or send Authorization: Bearer <token>"),
                );
            }
        },
    };
    if !allowed {
        return error(
            StatusCode::UNAUTHORIZED,
            "AccessDeniedException",
            "missing or wrong bearer token (Authorization: Bearer <token>)",
        );
    }
    handle(&parts, &body, shared)
}

/// Compares in time independent of where the inputs differ, so the token cannot be guessed
/// byte by byte from response times.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn handle(parts: &Parts, body: &[u8], shared: &Shared) -> Response<Full<Bytes>> {
    let target = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.strip_prefix(TARGET_PREFIX));
    let Some(operation) = target else {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidInput",
            &format!("missing X-Amz-Target header ({TARGET_PREFIX}<Operation>)"),
        );
    };
    let (Ok(mut registry), Ok(mut operations)) = (shared.registry(), shared.operations.lock())
    else {
        tracing::error!(
            operation,
            "registry API request refused: a lock is poisoned"
        );
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ServiceException",
            "registry lock poisoned",
        );
    };
    let result = catalog::call(operation, body, &mut registry, &mut operations);
    drop(operations);
    drop(registry);
    match result {
        Ok(answer) => {
            if answer.changed {
                shared.changed.notify_one();
            }
            let mut response = Response::new(Full::new(Bytes::from(answer.body.to_string())));
            response.headers_mut().insert(
                "content-type",
                hyper::header::HeaderValue::from_static("application/x-amz-json-1.1"),
            );
            response
        }
        Err((status, kind, message)) => error(status, kind, &message),
    }
}

fn error(status: StatusCode, kind: &str, message: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(
        json!({"__type": kind, "message": message}).to_string(),
    )));
    *response.status_mut() = status;
    response
}
