//! The control plane's Cloud Map–style API over its service registry: the AWS JSON protocol
//! (`POST /` with `X-Amz-Target: Route53AutoNaming_v20170314.<Operation>`) for
//! RegisterInstance, DeregisterInstance and DiscoverInstances. A service is named
//! `namespace/service` where Cloud Map takes a ServiceId.
//!
//! Registering an instance moves a service's traffic, so every request must carry the
//! configured bearer token (Cloud Map signs with SigV4; this stand-in takes a token). The
//! server bounds what a caller can hold: connections, the time to send a request head, and
//! request bodies.
use std::{
    collections::BTreeMap,
    convert::Infallible,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, Response, StatusCode, body::Incoming, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use serde_json::json;
use tokio::{
    net::TcpListener,
    sync::{Notify, Semaphore},
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::registry::{Attributes, Registry};

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

/// The request handled when it carries the token; 401 otherwise.
async fn authorized(
    request: Request<Incoming>,
    shared: &Shared,
    token: &str,
) -> Response<Full<Bytes>> {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !presented.is_some_and(|presented| same_secret(presented.as_bytes(), token.as_bytes())) {
        return error(
            StatusCode::UNAUTHORIZED,
            "AccessDeniedException",
            "missing or wrong bearer token (Authorization: Bearer <token>)",
        );
    }
    handle(request, shared).await
}

/// Compares in time independent of where the inputs differ, so the token cannot be guessed
/// byte by byte from response times.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RegisterInstance {
    service_id: String,
    instance_id: String,
    #[serde(default)]
    attributes: Attributes,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DeregisterInstance {
    service_id: String,
    instance_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DiscoverInstances {
    namespace_name: String,
    service_name: String,
    #[serde(default)]
    query_parameters: BTreeMap<String, String>,
}

async fn handle(request: Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    let target = request
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.strip_prefix(TARGET_PREFIX))
        .map(str::to_owned);
    let Some(operation) = target else {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidInput",
            &format!("missing X-Amz-Target header ({TARGET_PREFIX}<Operation>)"),
        );
    };
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
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
    let Ok(mut registry) = shared.registry().inspect_err(|error| {
        tracing::error!(%error, operation, "registry API request refused");
    }) else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ServiceException",
            "registry lock poisoned",
        );
    };
    let result = match operation.as_str() {
        "RegisterInstance" => parse::<RegisterInstance>(&body).and_then(|r| {
            let (namespace, service) = split_service(&r.service_id)?;
            registry
                .register(namespace, service, &r.instance_id, r.attributes)
                .map_err(|e| (StatusCode::BAD_REQUEST, "InvalidInput", e.to_string()))?;
            info!(namespace, service, instance = %r.instance_id, "instance registered");
            Ok((
                json!({"OperationId": format!("register-{}", r.instance_id)}),
                true,
            ))
        }),
        "DeregisterInstance" => parse::<DeregisterInstance>(&body).and_then(|r| {
            let (namespace, service) = split_service(&r.service_id)?;
            registry
                .deregister(namespace, service, &r.instance_id)
                .map_err(|e| (StatusCode::NOT_FOUND, "InstanceNotFound", e.to_string()))?;
            info!(namespace, service, instance = %r.instance_id, "instance deregistered");
            Ok((
                json!({"OperationId": format!("deregister-{}", r.instance_id)}),
                true,
            ))
        }),
        "DiscoverInstances" => parse::<DiscoverInstances>(&body).map(|r| {
            let instances =
                registry.discover(&r.namespace_name, &r.service_name, &r.query_parameters);
            (json!({"Instances": instances}), false)
        }),
        other => Err((
            StatusCode::BAD_REQUEST,
            "InvalidInput",
            format!("unknown operation {other}"),
        )),
    };
    drop(registry);
    match result {
        Ok((body, changed)) => {
            if changed {
                shared.changed.notify_one();
            }
            let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
            response.headers_mut().insert(
                "content-type",
                hyper::header::HeaderValue::from_static("application/x-amz-json-1.1"),
            );
            response
        }
        Err((status, kind, message)) => error(status, kind, &message),
    }
}

type Failure = (StatusCode, &'static str, String);

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Failure> {
    serde_json::from_slice(body).map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            "InvalidInput",
            format!("request body: {e}"),
        )
    })
}

fn split_service(id: &str) -> Result<(&str, &str), Failure> {
    id.split_once('/')
        .filter(|(n, s)| !n.is_empty() && !s.is_empty())
        .ok_or_else(|| {
            (
                StatusCode::BAD_REQUEST,
                "InvalidInput",
                format!("ServiceId {id:?} must be namespace/service"),
            )
        })
}

fn error(status: StatusCode, kind: &str, message: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(
        json!({"__type": kind, "message": message}).to_string(),
    )));
    *response.status_mut() = status;
    response
}
