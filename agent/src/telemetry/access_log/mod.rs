//! Access logs as App Mesh's `logging.accessLog.file` asked Envoy for them: one line per
//! request (HTTP) or connection (TCP), in the virtual node's text or JSON format, written to
//! its path by a writer thread per file. Paths are the agent's own (the node proxy writes
//! for every pod of the node): `/dev/stdout` ends up in the agent's container log.
mod render;
mod writer;

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use http::{HeaderMap, Method, Uri};
use mesh_xds::plan::AccessLogs;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use tracing::warn;

pub use render::render;
use writer::{LogWriter, WriterCounters};

/// The writers of every access log path in use, shared by the whole proxy.
#[derive(Clone, Default)]
pub struct AccessLogWriters {
    writers: Arc<Mutex<HashMap<String, Arc<LogWriter>>>>,
    reopen: Arc<AtomicU64>,
    lines: Family<LineLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LineLabels {
    path: String,
    result: &'static str,
}

/// The access logs of one listener filter, with their writers: resolved once per connection.
#[derive(Clone)]
pub struct Loggers {
    plans: AccessLogs,
    writers: Vec<Arc<LogWriter>>,
}

impl AccessLogWriters {
    /// The writers for `plans`, starting any that are not running yet.
    pub fn loggers(&self, plans: &AccessLogs) -> Option<Loggers> {
        if plans.is_empty() {
            return None;
        }
        let Ok(mut writers) = self.writers.lock() else {
            // The connection goes on without its access log rather than be refused.
            static REPORTED: AtomicBool = AtomicBool::new(false);
            super::lock_poisoned(&REPORTED, "the access-log writers lock");
            return None;
        };
        let mut resolved = Vec::with_capacity(plans.len());
        for plan in plans.iter() {
            if let Some(writer) = writers.get(&plan.path) {
                resolved.push(Arc::clone(writer));
                continue;
            }
            let counters = WriterCounters {
                written: self.counter(&plan.path, "written"),
                dropped: self.counter(&plan.path, "dropped"),
            };
            match LogWriter::start(
                PathBuf::from(&plan.path),
                Arc::clone(&self.reopen),
                counters,
            ) {
                Ok(writer) => {
                    let writer = Arc::new(writer);
                    writers.insert(plan.path.clone(), Arc::clone(&writer));
                    resolved.push(writer);
                }
                Err(error) => {
                    warn!(path = %plan.path, %error, "cannot start the access log writer");
                    return None;
                }
            }
        }
        Some(Loggers {
            plans: Arc::clone(plans),
            writers: resolved,
        })
    }

    fn counter(&self, path: &str, result: &'static str) -> Counter {
        self.lines
            .get_or_create(&LineLabels {
                path: path.to_owned(),
                result,
            })
            .clone()
    }

    /// Every writer reopens its file (SIGHUP, after log rotation).
    pub fn reopen(&self) {
        self.reopen.fetch_add(1, Ordering::Relaxed);
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "mesh_agent_access_log_lines",
            "Access log lines by file and result (written, or dropped: queue full or file not writable)",
            self.lines.clone(),
        );
    }
}

impl Loggers {
    pub fn log(&self, entry: &Entry) {
        for (plan, writer) in self.plans.iter().zip(&self.writers) {
            writer.write(render(&plan.format, entry));
        }
    }
}

/// What one request (or TCP connection) did, as the access log operators read it.
#[derive(Debug)]
pub struct Entry {
    pub start: SystemTime,
    /// `HTTP/1.1`, `HTTP/2`; none for TCP.
    pub protocol: Option<&'static str>,
    pub request: Option<RequestHead>,
    pub response_code: Option<u16>,
    pub response_headers: Option<HeaderMap>,
    pub trailers: Option<HeaderMap>,
    pub flags: ResponseFlags,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// Start to the end of the response (or connection).
    pub duration: Duration,
    /// Start to the response headers.
    pub response_duration: Option<Duration>,
    pub upstream_host: Option<SocketAddr>,
    pub upstream_cluster: Option<String>,
    pub failure_reason: Option<String>,
    pub attempts: u32,
    pub downstream_remote: SocketAddr,
    pub downstream_local: SocketAddr,
    pub route: Option<String>,
    pub grpc_status: Option<u32>,
    pub virtual_node: String,
    /// The caller's virtual node, as its certificate names it (None without one).
    pub source_virtual_node: Option<String>,
}

/// The request line and headers, kept only when a format reads them.
#[derive(Debug)]
pub struct RequestHead {
    pub method: Method,
    pub uri: Uri,
    pub authority: String,
    pub headers: HeaderMap,
}

impl Entry {
    pub fn new(
        downstream_remote: SocketAddr,
        downstream_local: SocketAddr,
        virtual_node: &str,
    ) -> Self {
        Self {
            start: SystemTime::now(),
            protocol: None,
            request: None,
            response_code: None,
            response_headers: None,
            trailers: None,
            flags: ResponseFlags::default(),
            bytes_received: 0,
            bytes_sent: 0,
            duration: Duration::ZERO,
            response_duration: None,
            upstream_host: None,
            upstream_cluster: None,
            failure_reason: None,
            attempts: 0,
            downstream_remote,
            downstream_local,
            route: None,
            grpc_status: None,
            virtual_node: virtual_node.to_owned(),
            source_virtual_node: None,
        }
    }
}

/// Envoy's response flags: why a request did not get an upstream's answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResponseFlags(u16);

impl ResponseFlags {
    /// No route (or virtual host) matched: NR.
    pub const NO_ROUTE: Self = Self(1);
    /// The route's cluster is not loaded: NC.
    pub const NO_CLUSTER: Self = Self(1 << 1);
    /// No healthy endpoint: UH.
    pub const NO_HEALTHY_UPSTREAM: Self = Self(1 << 2);
    /// The connection pool (circuit breaker) was full: UO.
    pub const UPSTREAM_OVERFLOW: Self = Self(1 << 3);
    /// Connecting to the endpoint failed: UF.
    pub const UPSTREAM_CONNECT_FAILURE: Self = Self(1 << 4);
    /// The upstream connection ended before the response: UC.
    pub const UPSTREAM_CONNECTION_TERMINATION: Self = Self(1 << 5);
    /// The route or per-try timeout fired: UT.
    pub const UPSTREAM_TIMEOUT: Self = Self(1 << 6);
    /// Retries ran out and the last try still failed: URX.
    pub const RETRY_LIMIT_EXCEEDED: Self = Self(1 << 7);
    /// The client went away before the response ended: DC.
    pub const DOWNSTREAM_TERMINATION: Self = Self(1 << 8);
    /// Refused by the egress filter (DROP_ALL): UAEX-like; Envoy has no exact flag, mesh-agent
    /// writes DENIED.
    pub const DENIED: Self = Self(1 << 9);

    const NAMES: [(Self, &'static str); 10] = [
        (Self::NO_ROUTE, "NR"),
        (Self::NO_CLUSTER, "NC"),
        (Self::NO_HEALTHY_UPSTREAM, "UH"),
        (Self::UPSTREAM_OVERFLOW, "UO"),
        (Self::UPSTREAM_CONNECT_FAILURE, "UF"),
        (Self::UPSTREAM_CONNECTION_TERMINATION, "UC"),
        (Self::UPSTREAM_TIMEOUT, "UT"),
        (Self::RETRY_LIMIT_EXCEEDED, "URX"),
        (Self::DOWNSTREAM_TERMINATION, "DC"),
        (Self::DENIED, "DENIED"),
    ];

    pub fn insert(&mut self, other: Self) {
        self.0 |= other.0;
    }

    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// `UF,URX` (Envoy's spelling); `-` when none.
    pub fn to_text(self) -> String {
        let names: Vec<&str> = Self::NAMES
            .iter()
            .filter(|(flag, _)| self.contains(*flag))
            .map(|(_, name)| *name)
            .collect();
        if names.is_empty() {
            "-".into()
        } else {
            names.join(",")
        }
    }

    /// Envoy's `%RESPONSE_CODE_DETAILS%` for a request that ended with these flags.
    pub fn details(self) -> &'static str {
        const DETAILS: [(ResponseFlags, &str); 9] = [
            (ResponseFlags::NO_ROUTE, "route_not_found"),
            (ResponseFlags::NO_CLUSTER, "cluster_not_found"),
            (ResponseFlags::UPSTREAM_OVERFLOW, "upstream_overflow"),
            (ResponseFlags::NO_HEALTHY_UPSTREAM, "no_healthy_upstream"),
            (
                ResponseFlags::UPSTREAM_CONNECT_FAILURE,
                "upstream_reset_before_response_started{connection_failure}",
            ),
            (
                ResponseFlags::UPSTREAM_CONNECTION_TERMINATION,
                "upstream_reset_before_response_started{connection_termination}",
            ),
            (ResponseFlags::UPSTREAM_TIMEOUT, "upstream_response_timeout"),
            (ResponseFlags::DENIED, "egress_denied"),
            (
                ResponseFlags::DOWNSTREAM_TERMINATION,
                "downstream_remote_disconnect",
            ),
        ];
        DETAILS
            .iter()
            .find(|(flag, _)| self.contains(*flag))
            .map_or("via_upstream", |(_, details)| details)
    }
}
