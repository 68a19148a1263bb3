//! The node proxy: redirected connections of workloads in the mesh are routed by their
//! virtual node's outbound plan (HTTP routes, TCP routes, egress filter); others are relayed
//! to the destination the application asked for. Connections into captured pods pass their
//! virtual node's inbound listener.
//!
//! [`outbound`] and [`inbound`] are peers: accept loops that pick a plan per connection and
//! hand it to the shared engines, [`tcp`] (with [`relay`]) and [`http`].
mod chains;
pub mod gateway;
pub mod http;
pub mod inbound;
pub mod outbound;
mod relay;
mod tcp;

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use crate::{
    dataplane::{MeshState, workloads::Workloads},
    telemetry::{
        access_log::AccessLogWriters,
        metrics::{MeshMetrics, Metrics, ProxyMetrics},
        trace::Tracer,
    },
    tls::TlsStore,
};

/// What both peers are given: the mesh they apply, who the workloads are, what they record
/// into, how they open sockets, and when live connections are cut.
#[derive(Clone)]
pub struct ProxyInputs {
    pub state: MeshState,
    pub workloads: Workloads,
    /// Per-destination connection counters.
    pub metrics: ProxyMetrics,
    /// Per-service request series.
    pub mesh_metrics: MeshMetrics,
    pub access_logs: AccessLogWriters,
    /// Spans of HTTP requests, when tracing is configured.
    pub tracer: Option<Arc<Tracer>>,
    /// Certificates and TLS configurations of listeners that terminate TLS.
    pub tls: TlsStore,
    pub settings: ProxySettings,
    /// Fired when the drain begins: listeners stop accepting, HTTP/2 connections get a
    /// GOAWAY and HTTP/1.1 connections close after the request in flight.
    pub drain: CancellationToken,
    /// Fired when the drain period ends: live connections reset both sides.
    pub cut: CancellationToken,
}

impl ProxyInputs {
    /// Inputs applying `state` to `workloads`, recording into `metrics`, with fresh drain and
    /// cut signals.
    pub fn recording(
        state: MeshState,
        workloads: Workloads,
        metrics: &Metrics,
        tls: TlsStore,
        settings: ProxySettings,
    ) -> Self {
        Self {
            state,
            workloads,
            metrics: metrics.proxy.clone(),
            mesh_metrics: metrics.mesh.clone(),
            access_logs: metrics.access_logs.clone(),
            tracer: None,
            tls,
            settings,
            drain: CancellationToken::new(),
            cut: CancellationToken::new(),
        }
    }

    /// Inputs with no mesh loaded yet: every connection is plain TCP to its destination.
    pub fn new(settings: ProxySettings, metrics: ProxyMetrics) -> Self {
        Self {
            state: MeshState::default(),
            workloads: Workloads::default(),
            metrics,
            mesh_metrics: MeshMetrics::default(),
            access_logs: AccessLogWriters::default(),
            tracer: None,
            tls: TlsStore::default(),
            settings,
            drain: CancellationToken::new(),
            cut: CancellationToken::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// SO_MARK for upstream sockets, so the redirect leaves them alone (None in tests, which
    /// run without a redirect and without CAP_NET_ADMIN).
    pub mark: Option<u32>,
    pub connect_timeout: Duration,
}
