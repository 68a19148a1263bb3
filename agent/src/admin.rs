//! The admin endpoint: health, readiness, metrics, and enrollment at runtime.
//!
//! * `GET /healthz` — 200 while the process runs.
//! * `GET /readyz` — 200 once programs are attached, the proxy listens and (with xDS) the
//!   first configuration is in; 503 before and while draining.
//! * `GET /config_dump` — the xDS configuration held: per type, its version and resource names.
//! * `GET /metrics` — OpenMetrics text when the Accept header asks for it, else the classic
//!   Prometheus text format.
//! * `GET /enrollment` — enrolled namespaces, one per line.
//! * `POST /enrollment?netns=NAME|PATH`, `DELETE /enrollment?netns=NAME|PATH` — enroll or
//!   unenroll a pod namespace now (until the next config reload). Only from loopback: the
//!   endpoint may listen on the node's address for scraping, and changing what is redirected
//!   must not be open to the network.
use std::{
    convert::Infallible,
    fmt::Write as _,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header};
use hyper_util::rt::TokioIo;
use mesh_xds::client::XdsState;
use tokio::{net::TcpListener, sync::watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use crate::{config::NetnsRef, redirect::Enrollments, telemetry::metrics::Metrics};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub ready: Arc<AtomicBool>,
    pub enrollments: Arc<Mutex<Enrollments>>,
    pub netns_dir: PathBuf,
    /// The configuration taken from the control plane, when there is one.
    pub xds: Option<watch::Receiver<Arc<XdsState>>>,
}

impl AdminState {
    fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
            && self.xds.as_ref().is_none_or(|x| {
                let state = x.borrow();
                state.is_synced() && !state.versions.is_empty()
            })
    }
}

pub async fn serve(listener: TcpListener, state: Arc<AdminState>, stop: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    warn!(%error, "admin accept failed");
                    continue;
                }
            },
            () = stop.cancelled() => return,
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(route(&request, peer, &state)) }
            });
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%peer, %error, "admin connection ended with an error");
            }
        });
    }
}

fn route(
    request: &Request<Incoming>,
    peer: SocketAddr,
    state: &AdminState,
) -> Response<Full<Bytes>> {
    let method = request.method();
    match request.uri().path() {
        "/healthz" if method == Method::GET => text(StatusCode::OK, "ok\n".into()),
        "/readyz" if method == Method::GET => {
            if state.ready() {
                text(StatusCode::OK, "ready\n".into())
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into())
            }
        }
        "/metrics" if method == Method::GET => match state.metrics.encode() {
            Ok(body) => {
                // OpenMetrics for scrapers that ask for it (Prometheus does), the classic
                // text format for everyone else (curl, promtool).
                let openmetrics = request
                    .headers()
                    .get(header::ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.contains("application/openmetrics-text"));
                let (body, content_type) = if openmetrics {
                    (body, OPENMETRICS)
                } else {
                    (crate::telemetry::metrics::classic_text(&body), CLASSIC)
                };
                let mut response = text(StatusCode::OK, body);
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static(content_type),
                );
                response
            }
            Err(error) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")),
        },
        "/config_dump" if method == Method::GET => match &state.xds {
            Some(xds) => {
                let mut response = text(StatusCode::OK, format!("{}\n", xds.borrow().summary()));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("application/json"),
                );
                response
            }
            None => text(
                StatusCode::NOT_FOUND,
                "no control plane configured (xds.address or run --mesh)\n".into(),
            ),
        },
        "/enrollment" if method != Method::GET && !peer.ip().is_loopback() => text(
            StatusCode::FORBIDDEN,
            format!("enrollment changes are accepted from loopback only, not from {peer}\n"),
        ),
        "/enrollment" => enrollment(method, request.uri().query(), state),
        "/healthz" | "/readyz" | "/metrics" => text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} not allowed\n"),
        ),
        path => text(StatusCode::NOT_FOUND, format!("no such endpoint {path}\n")),
    }
}

fn enrollment(method: &Method, query: Option<&str>, state: &AdminState) -> Response<Full<Bytes>> {
    let Ok(mut enrollments) = state.enrollments.lock() else {
        error!("enrollment table lock poisoned; admin enrollment request refused");
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "enrollment table poisoned\n".into(),
        );
    };
    if method == Method::GET {
        let mut body = String::new();
        for (spec, ns) in enrollments.list() {
            let _ = writeln!(
                body,
                "{spec} path={} cookie={} workload_id={}",
                ns.path.display(),
                ns.cookie,
                ns.workload_id
            );
        }
        return text(StatusCode::OK, body);
    }
    let spec = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(key, _)| key == "netns")
        .map(|(_, value)| value.into_owned());
    let Some(spec) = spec else {
        return text(
            StatusCode::BAD_REQUEST,
            "missing query parameter netns\n".into(),
        );
    };
    let result = match *method {
        Method::POST => NetnsRef::parse(&spec, &state.netns_dir)
            .map_err(|reason| format!("netns {reason}"))
            .and_then(|ns| enrollments.enroll(&ns).map_err(|e| e.to_string()))
            .map(|ns| format!("enrolled {spec} cookie={}\n", ns.cookie)),
        Method::DELETE => enrollments
            .unenroll(&spec)
            .map(|_| format!("unenrolled {spec}\n"))
            .map_err(|e| e.to_string()),
        _ => {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} not allowed\n"),
            );
        }
    };
    match result {
        Ok(body) => text(StatusCode::OK, body),
        Err(error) => {
            warn!(netns = %spec, %error, "admin enrollment request failed");
            text(StatusCode::UNPROCESSABLE_ENTITY, format!("{error}\n"))
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}
