//! The control plane's Cloud Map–style API over its service registry: the AWS JSON protocol
//! (`POST /` with `X-Amz-Target: Route53AutoNaming_v20170314.<Operation>`) for
//! RegisterInstance, DeregisterInstance and DiscoverInstances. A service is named
//! `namespace/service` where Cloud Map takes a ServiceId.
use std::{
    collections::BTreeMap,
    convert::Infallible,
    sync::{Arc, Mutex, MutexGuard},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode, body::Incoming};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::json;
use tokio::{net::TcpListener, sync::Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::registry::{Attributes, Registry};

const TARGET_PREFIX: &str = "Route53AutoNaming_v20170314.";

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

pub(crate) async fn serve(listener: TcpListener, shared: Shared, stop: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    warn!(%error, "registry API accept failed");
                    continue;
                }
            },
            () = stop.cancelled() => return,
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(request, &shared).await) }
            });
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%peer, %error, "registry API connection ended with an error");
            }
        });
    }
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
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
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
