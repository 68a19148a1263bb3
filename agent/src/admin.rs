//! The admin endpoints, split by what a caller may do.
//!
//! On `admin.addr` (TCP; Prometheus and the kubelet reach it, and so can pods), read-only:
//! * `GET /healthz` — 200 while the process runs.
//! * `GET /readyz` — 200 once programs are attached, the proxy listens and (with xDS) the
//!   first configuration is in; 503 before and while draining.
//! * `GET /metrics` — OpenMetrics text when the Accept header asks for it, else the classic
//!   Prometheus text format.
//!
//! On `admin.socket` (a Unix socket, mode 0600: only root on the node reaches it — a pod has
//! neither the node's filesystem nor its loopback), also:
//! * `GET /config_dump` — the xDS configuration held: per type, its version and resource names.
//! * `GET /enrollment` — enrolled namespaces, one per line.
//! * `POST /enrollment?netns=NAME|PATH`, `DELETE /enrollment?netns=NAME|PATH` — enroll or
//!   unenroll a pod namespace now (until the next config reload).
//!
//! Being reachable from loopback is not a boundary: a pod's connect to 0.0.0.0 or to the
//! node's address can end up there. So nothing that changes the mesh or shows its
//! configuration is served over TCP at all.
//!
//! Both servers bound what a caller can hold: a connection count, a time to send the request
//! head, and requests carry no body the admin reads.
use std::{
    convert::Infallible,
    fmt::Write as _,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use mesh_xds::client::XdsState;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, UnixListener},
    sync::{Semaphore, watch},
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use crate::{
    config::NetnsRef,
    listen::{Acceptor, Listen},
    redirect::Enrollments,
    telemetry::metrics::Metrics,
};

/// Connections each admin server holds at once; more wait in the kernel's queue.
const MAX_CONNECTIONS: usize = 64;
/// A client that has not sent its request head by then is disconnected (slowloris).
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// What callers of one admin server may do.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Access {
    /// Health, readiness and metrics.
    ReadOnly,
    /// Everything, including enrollment changes and the configuration dump.
    Full,
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub ready: Arc<AtomicBool>,
    /// None where nothing is enrolled (a standalone gateway).
    pub enrollments: Option<Arc<Mutex<Enrollments>>>,
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

/// Serves the read-only endpoints on `listener` (`admin.addr`) until `stop`.
pub async fn serve_tcp(listener: TcpListener, state: Arc<AdminState>, stop: CancellationToken) {
    let errors = state.metrics.proxy.accept_errors("admin");
    let acceptor = Acceptor::new(listener, "admin", errors);
    serve(acceptor, Access::ReadOnly, state, stop).await;
}

/// Serves every endpoint on `listener` (`admin.socket`) until `stop`.
pub async fn serve_socket(listener: UnixListener, state: Arc<AdminState>, stop: CancellationToken) {
    let errors = state.metrics.proxy.accept_errors("admin-socket");
    let acceptor = Acceptor::new(listener, "admin-socket", errors);
    serve(acceptor, Access::Full, state, stop).await;
}

async fn serve<L>(
    mut acceptor: Acceptor<L>,
    access: Access,
    state: Arc<AdminState>,
    stop: CancellationToken,
) where
    L: Listen,
    L::Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        // A free slot first: over the limit, connections wait in the kernel's queue instead
        // of holding the agent's descriptors.
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
            () = stop.cancelled() => return,
        };
        let (stream, _) = tokio::select! {
            accepted = acceptor.accept() => accepted,
            () = stop.cancelled() => return,
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |request| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(route(request, access, state).await) }
            });
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(?access, %error, "admin connection ended with an error");
            }
        });
    }
}

/// Binds the admin socket at `path`: its directory made (0700) if missing, a socket left by
/// an earlier run replaced, the socket itself 0600.
pub fn bind_socket(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, PermissionsExt as _};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// The admin socket file as this agent bound it. A successor binds its own at the same path
/// while this agent drains; at exit only a file that is still this agent's is removed.
pub struct SocketFile {
    path: PathBuf,
    bound: Option<(u64, u64)>,
}

impl SocketFile {
    pub fn of(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            bound: file_id(path),
        }
    }

    pub fn remove_if_unchanged(&self) {
        if self.bound.is_some() && file_id(&self.path) == self.bound {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

async fn route(
    request: Request<Incoming>,
    access: Access,
    state: Arc<AdminState>,
) -> Response<Full<Bytes>> {
    let method = request.method();
    let full = access == Access::Full;
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
        "/config_dump" | "/enrollment" if !full => text(
            StatusCode::NOT_FOUND,
            format!(
                "{} is served on the admin socket only (admin.socket), not over TCP\n",
                request.uri().path()
            ),
        ),
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
        "/enrollment" => {
            // Entering a namespace and updating kernel maps block: not on a runtime thread.
            let (method, query) = (method.clone(), request.uri().query().map(str::to_owned));
            let state = Arc::clone(&state);
            tokio::task::spawn_blocking(move || enrollment(&method, query.as_deref(), &state))
                .await
                .unwrap_or_else(|error| {
                    error!(%error, "admin enrollment task failed");
                    text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "enrollment failed\n".into(),
                    )
                })
        }
        "/healthz" | "/readyz" | "/metrics" => text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} not allowed\n"),
        ),
        path => text(StatusCode::NOT_FOUND, format!("no such endpoint {path}\n")),
    }
}

fn enrollment(method: &Method, query: Option<&str>, state: &AdminState) -> Response<Full<Bytes>> {
    let Some(enrollments) = &state.enrollments else {
        return text(
            StatusCode::NOT_FOUND,
            "nothing is enrolled here: this process serves a gateway\n".into(),
        );
    };
    let Ok(mut enrollments) = enrollments.lock() else {
        error!("enrollment table lock poisoned; admin enrollment request refused");
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "enrollment table poisoned\n".into(),
        );
    };
    if method == Method::GET {
        let mut body = String::new();
        for (spec, ns) in enrollments.list() {
            let _ = write!(
                body,
                "{spec} path={} cookie={} workload_id={}",
                ns.path.display(),
                ns.cookie,
                ns.workload_id
            );
            let _ = match &ns.virtual_node {
                Some(node) => writeln!(body, " virtual_node={node}"),
                None => writeln!(body),
            };
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
