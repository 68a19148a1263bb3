//! A cluster at run time: its endpoints (from EDS, DNS or static config), the choice of one
//! per request (power of two choices by outstanding requests, or round robin), outlier
//! ejection, active health state, the circuit breakers, and a connection pool per endpoint.
use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use mesh_xds::plan::{
    cluster::{Balancer, ClusterPlan, OutlierPlan},
    tls::ClientTlsPlan,
};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    telemetry::{lock_poisoned, metrics::ClusterMetrics},
    tls::{Alpn, HandshakeFailed, TlsStore, stream::MaybeTls},
};

/// Request bodies sent upstream.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where upstream sockets are made: in the agent's own network namespace, or in a pod's
/// (the inbound side reaches the application on the pod's loopback).
pub trait SocketFactory: Send + Sync {
    /// A new, unconnected TCP socket for connecting to `addr`.
    fn stream_socket(&self, addr: SocketAddr) -> io::Result<Socket>;
}

/// Sockets in the agent's own network namespace.
pub struct HostSockets;

impl SocketFactory for HostSockets {
    fn stream_socket(&self, addr: SocketAddr) -> io::Result<Socket> {
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
    }
}

/// Opens upstream connections to one endpoint, marked so the redirect leaves them alone,
/// with TLS when the cluster originates it.
#[derive(Clone)]
pub struct Connector {
    addr: SocketAddr,
    mark: Option<u32>,
    timeout: Duration,
    sockets: Arc<dyn SocketFactory>,
    tls: Option<UpstreamTls>,
}

/// The TLS a cluster's connections originate, and where its configuration comes from.
#[derive(Clone)]
pub struct UpstreamTls {
    plan: Arc<ClientTlsPlan>,
    store: TlsStore,
    alpn: Alpn,
}

impl Connector {
    pub fn new(addr: SocketAddr, mark: Option<u32>, timeout: Duration) -> Self {
        Self::with_sockets(addr, mark, timeout, Arc::new(HostSockets))
    }

    /// Connects with sockets made by `sockets` (e.g. inside a pod's network namespace).
    pub fn with_sockets(
        addr: SocketAddr,
        mark: Option<u32>,
        timeout: Duration,
        sockets: Arc<dyn SocketFactory>,
    ) -> Self {
        Self {
            addr,
            mark,
            timeout,
            sockets,
            tls: None,
        }
    }

    /// The same connector, originating `tls` on its connections.
    pub fn with_tls(mut self, tls: Option<UpstreamTls>) -> Self {
        self.tls = tls;
        self
    }

    /// The same socket settings toward another address (a health check's port).
    pub fn to(&self, addr: SocketAddr) -> Self {
        Self {
            addr,
            ..self.clone()
        }
    }

    /// A connection to the endpoint, TLS established when the cluster originates it; a
    /// failed handshake is an error whose source is the [`crate::tls::HandshakeFailed`].
    pub async fn connect(&self) -> io::Result<MaybeTls> {
        let tcp = self.connect_tcp().await?;
        let Some(tls) = &self.tls else {
            return Ok(MaybeTls::Plain(tcp));
        };
        match tls.store.connect(&tls.plan, tls.alpn, tcp, self.addr).await {
            Ok(stream) => Ok(MaybeTls::Client(Box::new(stream))),
            Err(failed) => Err(io::Error::other(failed)),
        }
    }

    /// A plain TCP connection to the endpoint.
    pub async fn connect_tcp(&self) -> io::Result<TcpStream> {
        let socket = self.sockets.stream_socket(self.addr)?;
        if let Some(mark) = self.mark {
            socket.set_mark(mark)?;
        }
        socket.set_tcp_nodelay(true)?;
        socket.set_nonblocking(true)?;
        let socket = TcpSocket::from_std_stream(socket.into());
        tokio::time::timeout(self.timeout, socket.connect(self.addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
    }
}

/// hyper's pool asks for a connection per URI; every URI of this endpoint's pool goes to the
/// endpoint, so requests keep their own Host/:authority.
impl tower_service::Service<http::Uri> for Connector {
    type Response = TokioIo<MaybeTls>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let connector = self.clone();
        Box::pin(async move { connector.connect().await.map(TokioIo::new) })
    }
}

pub struct Endpoint {
    pub addr: SocketAddr,
    /// Requests in flight, for least-request balancing.
    active: AtomicU32,
    /// Active health checking's verdict (true without a health check).
    healthy: AtomicBool,
    outlier: Mutex<OutlierState>,
    pub client: Client<Connector, Body>,
    pub connector: Connector,
}

#[derive(Default)]
struct OutlierState {
    consecutive_errors: u32,
    ejected_until: Option<Instant>,
    times_ejected: u32,
}

impl Endpoint {
    fn new(connector: Connector, plan: &ClusterPlan) -> Self {
        let addr = connector.addr;
        let client = Client::builder(TokioExecutor::new())
            .http2_only(plan.http2)
            .pool_idle_timeout(Duration::from_secs(60))
            // Without a timer the pool only drops an idle connection when it is next asked
            // for one: an endpoint no longer used kept its sockets open for good (the soak).
            .pool_timer(TokioTimer::new())
            .build(connector.clone());
        Self {
            addr,
            active: AtomicU32::new(0),
            healthy: AtomicBool::new(true),
            outlier: Mutex::new(OutlierState::default()),
            client,
            connector,
        }
    }

    fn available(&self, now: Instant) -> bool {
        self.healthy.load(Ordering::Relaxed) && !self.ejected(now)
    }

    /// Ejected by outlier detection; an endpoint whose outlier state cannot be read
    /// (poisoned, said once) counts as ejected: it is not picked.
    fn ejected(&self, now: Instant) -> bool {
        match self.outlier.lock() {
            Ok(outlier) => outlier.ejected_until.is_some_and(|until| until > now),
            Err(_) => {
                outlier_poisoned();
                true
            }
        }
    }

    pub fn set_healthy(&self, healthy: bool) -> bool {
        self.healthy.swap(healthy, Ordering::Relaxed) != healthy
    }
}

/// An endpoint's request in flight; finishing (dropping) it frees its slot.
pub struct InFlight {
    pub endpoint: Arc<Endpoint>,
    _permits: Vec<OwnedSemaphorePermit>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.endpoint.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why no request could be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PickError {
    #[error("cluster {0} has no endpoints")]
    NoEndpoints(String),
    #[error(
        "cluster {cluster}: no healthy endpoint ({total} endpoints, all failing health checks or ejected)"
    )]
    NoHealthy { cluster: String, total: usize },
    #[error("cluster {0}: connection pool full (circuit breaker), request not sent")]
    Overflow(String),
    #[error(transparent)]
    Poisoned(#[from] EndpointsPoisoned),
}

/// A thread panicked replacing a cluster's endpoints: they can no longer be trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cluster {0}: the endpoint list lock is poisoned (a thread panicked holding it)")]
pub struct EndpointsPoisoned(pub String);

fn outlier_poisoned() {
    static REPORTED: AtomicBool = AtomicBool::new(false);
    lock_poisoned(&REPORTED, "an endpoint's outlier state lock");
}

/// How one try went, for outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// A 5xx, a reset, a timeout or a failed connect.
    Error,
}

pub struct Upstream {
    /// Shared with the planner that keeps it for the next state.
    pub plan: Arc<ClusterPlan>,
    endpoints: RwLock<Arc<Vec<Arc<Endpoint>>>>,
    /// HTTP/1.1: one request per connection, `max_connections` of them.
    connections: Arc<Semaphore>,
    /// HTTP/2: `max_requests` in flight.
    requests: Arc<Semaphore>,
    pending: AtomicU32,
    retries_in_flight: AtomicU32,
    next: AtomicUsize,
    mark: Option<u32>,
    /// Where the endpoints' sockets are made (the inbound side: inside the pod).
    sockets: Arc<dyn SocketFactory>,
    tls: Option<UpstreamTls>,
    /// Bumped when the endpoint addresses change.
    changes: EndpointChanges,
    pub metrics: ClusterMetrics,
    /// Stops this cluster's DNS and health-check tasks when it goes away.
    pub tasks: CancellationToken,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.tasks.cancel();
    }
}

/// Bumped whenever a cluster's endpoint addresses change, so what is built from the
/// endpoints of a set of clusters (the data plane's address → virtual node index) knows when
/// to build again. Shared by the clusters of one mesh state.
#[derive(Clone, Debug, Default)]
pub struct EndpointChanges(Arc<AtomicU64>);

impl EndpointChanges {
    /// How many endpoint changes there have been; equal values mean no endpoint moved between.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    fn bump(&self) {
        self.0.fetch_add(1, Ordering::Release);
    }
}

impl Upstream {
    pub fn new(
        plan: impl Into<Arc<ClusterPlan>>,
        mark: Option<u32>,
        metrics: ClusterMetrics,
    ) -> Self {
        let plan = plan.into();
        Self {
            connections: Arc::new(Semaphore::new(plan.limits.max_connections as usize)),
            requests: Arc::new(Semaphore::new(plan.limits.max_requests as usize)),
            plan,
            endpoints: RwLock::new(Arc::new(Vec::new())),
            pending: AtomicU32::new(0),
            retries_in_flight: AtomicU32::new(0),
            next: AtomicUsize::new(0),
            mark,
            sockets: Arc::new(HostSockets),
            tls: None,
            changes: EndpointChanges::default(),
            metrics,
            tasks: CancellationToken::new(),
        }
    }

    /// The cluster with its endpoints' sockets made by `sockets` (e.g. inside a pod).
    pub fn with_sockets(mut self, sockets: Arc<dyn SocketFactory>) -> Self {
        self.sockets = sockets;
        self
    }

    /// The cluster originating the TLS its plan asks for, configured from `store`.
    pub fn with_tls(mut self, store: &TlsStore) -> Self {
        let alpn = if self.plan.http2 {
            Alpn::Http2
        } else {
            Alpn::Http1
        };
        self.tls = self.plan.upstream_tls.clone().map(|plan| UpstreamTls {
            plan,
            store: store.clone(),
            alpn,
        });
        self
    }

    /// Counts (and says once) a TLS refusal the endpoint sent after the handshake (TLS 1.3:
    /// our client certificate refused on the first read).
    pub fn tls_refused(&self, failed: HandshakeFailed) -> HandshakeFailed {
        match &self.tls {
            Some(tls) => tls.store.failed("client", failed),
            None => failed,
        }
    }

    /// The cluster with endpoint changes counted in `changes`.
    pub fn counting_changes(mut self, changes: EndpointChanges) -> Self {
        self.changes = changes;
        self
    }

    pub fn name(&self) -> &str {
        &self.plan.name
    }

    /// The virtual node the cluster reaches, as metrics name it.
    pub fn virtual_node(&self) -> &str {
        self.plan.virtual_node.as_deref().unwrap_or("unknown")
    }

    /// The endpoint set; an error (said once) once a thread panicked replacing it.
    pub fn endpoints(&self) -> Result<Arc<Vec<Arc<Endpoint>>>, EndpointsPoisoned> {
        match self.endpoints.read() {
            Ok(endpoints) => Ok(Arc::clone(&endpoints)),
            Err(_) => {
                static REPORTED: AtomicBool = AtomicBool::new(false);
                lock_poisoned(&REPORTED, "a cluster's endpoint list lock");
                Err(EndpointsPoisoned(self.plan.name.clone()))
            }
        }
    }

    /// Replaces the endpoint set; endpoints that stay keep their pools and their health.
    pub fn set_endpoints(&self, mut addrs: Vec<SocketAddr>) {
        addrs.sort();
        addrs.dedup();
        let Ok(current) = self.endpoints() else {
            return;
        };
        if current.iter().map(|e| e.addr).eq(addrs.iter().copied()) {
            return;
        }
        let next: Vec<Arc<Endpoint>> = addrs
            .into_iter()
            .map(|addr| {
                current
                    .iter()
                    .find(|e| e.addr == addr)
                    .cloned()
                    .unwrap_or_else(|| {
                        let connector = Connector::with_sockets(
                            addr,
                            self.mark,
                            self.plan.connect_timeout,
                            Arc::clone(&self.sockets),
                        )
                        .with_tls(self.tls.clone());
                        Arc::new(Endpoint::new(connector, &self.plan))
                    })
            })
            .collect();
        info!(cluster = %self.plan.name, endpoints = ?next.iter().map(|e| e.addr).collect::<Vec<_>>(), "endpoints updated");
        let Ok(mut endpoints) = self.endpoints.write() else {
            // Said once by `endpoints()` on the next read; the old set stays.
            return;
        };
        *endpoints = Arc::new(next);
        self.changes.bump();
    }

    /// Chooses an endpoint and takes a request slot on it, or says why not.
    pub async fn pick(&self) -> Result<InFlight, PickError> {
        let endpoint = self.choose()?;
        let permits = self.admit().await?;
        endpoint.active.fetch_add(1, Ordering::Relaxed);
        Ok(InFlight {
            endpoint,
            _permits: permits,
        })
    }

    fn choose(&self) -> Result<Arc<Endpoint>, PickError> {
        let endpoints = self.endpoints()?;
        if endpoints.is_empty() {
            return Err(PickError::NoEndpoints(self.plan.name.clone()));
        }
        let now = Instant::now();
        let available: Vec<&Arc<Endpoint>> =
            endpoints.iter().filter(|e| e.available(now)).collect();
        let chosen = match (available.len(), self.plan.balancer) {
            (0, _) => {
                return Err(PickError::NoHealthy {
                    cluster: self.plan.name.clone(),
                    total: endpoints.len(),
                });
            }
            (1, _) => available[0],
            (n, Balancer::RoundRobin) => available[self.next.fetch_add(1, Ordering::Relaxed) % n],
            (n, Balancer::Random) => available[rand::random_range(0..n)],
            (n, Balancer::LeastRequest) => {
                // Power of two choices: two distinct random endpoints, the less busy wins.
                let a = rand::random_range(0..n);
                let b = (a + rand::random_range(1..n)) % n;
                let (ea, eb) = (available[a], available[b]);
                if eb.active.load(Ordering::Relaxed) < ea.active.load(Ordering::Relaxed) {
                    eb
                } else {
                    ea
                }
            }
        };
        Ok(Arc::clone(chosen))
    }

    /// The circuit breakers: HTTP/2 takes a request slot or overflows at once; HTTP/1.1 waits
    /// for a connection slot with at most `max_pending_requests` others, else overflows.
    async fn admit(&self) -> Result<Vec<OwnedSemaphorePermit>, PickError> {
        let overflow = || {
            self.metrics.overflows.inc();
            PickError::Overflow(self.plan.name.clone())
        };
        let request = Arc::clone(&self.requests)
            .try_acquire_owned()
            .map_err(|_| overflow())?;
        if self.plan.http2 {
            return Ok(vec![request]);
        }
        if let Ok(connection) = Arc::clone(&self.connections).try_acquire_owned() {
            return Ok(vec![request, connection]);
        }
        if self.pending.fetch_add(1, Ordering::Relaxed) >= self.plan.limits.max_pending_requests {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            return Err(overflow());
        }
        let connection = Arc::clone(&self.connections).acquire_owned().await;
        self.pending.fetch_sub(1, Ordering::Relaxed);
        Ok(vec![request, connection.map_err(|_| overflow())?])
    }

    /// Takes a retry slot (`max_retries` retries in flight per cluster), or `None`.
    pub fn begin_retry(self: &Arc<Self>) -> Option<RetrySlot> {
        let taken = self.retries_in_flight.fetch_add(1, Ordering::Relaxed);
        if taken >= self.plan.limits.max_retries {
            self.retries_in_flight.fetch_sub(1, Ordering::Relaxed);
            self.metrics.retry_overflows.inc();
            return None;
        }
        Some(RetrySlot(Arc::clone(self)))
    }

    /// Outlier detection: consecutive errors eject an endpoint for base × times ejected,
    /// unless that would put more than max_ejection_percent out (one is always allowed).
    pub fn record(&self, endpoint: &Endpoint, outcome: Outcome) {
        let Some(policy) = &self.plan.outlier else {
            return;
        };
        let now = Instant::now();
        let Ok(mut state) = endpoint.outlier.lock() else {
            outlier_poisoned();
            return;
        };
        if outcome == Outcome::Success {
            state.consecutive_errors = 0;
            return;
        }
        state.consecutive_errors += 1;
        if state.consecutive_errors < policy.consecutive_5xx
            || state.ejected_until.is_some_and(|u| u > now)
        {
            return;
        }
        drop(state);
        if !self.may_eject(policy, now) {
            return;
        }
        let Ok(mut state) = endpoint.outlier.lock() else {
            outlier_poisoned();
            return;
        };
        state.consecutive_errors = 0;
        state.times_ejected += 1;
        let period = policy.base_ejection * state.times_ejected;
        state.ejected_until = Some(now + period);
        self.metrics.ejections.inc();
        warn!(cluster = %self.plan.name, endpoint = %endpoint.addr, ?period, "endpoint ejected after consecutive errors");
    }

    fn may_eject(&self, policy: &OutlierPlan, now: Instant) -> bool {
        let Ok(endpoints) = self.endpoints() else {
            return false;
        };
        let ejected = endpoints.iter().filter(|e| e.ejected(now)).count();
        ejected == 0
            || (ejected + 1) * 100 <= policy.max_ejection_percent as usize * endpoints.len()
    }

    /// Endpoints (healthy and available, total), for metrics and logs.
    pub fn health(&self) -> Result<(usize, usize), EndpointsPoisoned> {
        let endpoints = self.endpoints()?;
        let now = Instant::now();
        Ok((
            endpoints.iter().filter(|e| e.available(now)).count(),
            endpoints.len(),
        ))
    }
}

/// A retry in flight, counted against the cluster's max_retries until dropped.
pub struct RetrySlot(Arc<Upstream>);

impl Drop for RetrySlot {
    fn drop(&mut self) {
        self.0.retries_in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use mesh_xds::plan::cluster::{Discovery, Limits};

    use super::*;

    fn plan(balancer: Balancer, outlier: Option<OutlierPlan>, limits: Limits) -> ClusterPlan {
        ClusterPlan {
            name: "m/node/80".into(),
            virtual_node: Some("m/node".into()),
            discovery: Discovery::Static(Vec::new()),
            balancer,
            connect_timeout: Duration::from_secs(1),
            http2: false,
            upstream_tls: None,
            outlier,
            limits,
            health_check: None,
        }
    }

    fn limits(connections: u32, pending: u32) -> Limits {
        Limits {
            max_connections: connections,
            max_pending_requests: pending,
            max_requests: 1024,
            max_retries: 3,
        }
    }

    fn addrs(n: u16) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([10, 0, 0, 1], 8000 + i)))
            .collect()
    }

    #[tokio::test]
    async fn least_request_prefers_idle_endpoints() {
        let upstream = Upstream::new(
            plan(Balancer::LeastRequest, None, limits(1024, 1024)),
            None,
            ClusterMetrics::default(),
        );
        upstream.set_endpoints(addrs(2));
        // With one request held on the first endpoint picked, every later pick draws both
        // endpoints (there are two) and takes the idle one.
        let busy = upstream.pick().await.unwrap();
        for _ in 0..20 {
            assert_ne!(
                upstream.pick().await.unwrap().endpoint.addr,
                busy.endpoint.addr
            );
        }
    }

    #[tokio::test]
    async fn round_robin_cycles() {
        let upstream = Upstream::new(
            plan(Balancer::RoundRobin, None, limits(1024, 1024)),
            None,
            ClusterMetrics::default(),
        );
        upstream.set_endpoints(addrs(3));
        let mut seen = Vec::new();
        for _ in 0..6 {
            seen.push(upstream.pick().await.unwrap().endpoint.addr.port());
        }
        assert_eq!(seen, [8000, 8001, 8002, 8000, 8001, 8002]);
    }

    #[tokio::test]
    async fn consecutive_errors_eject_within_max_percent() {
        let outlier = OutlierPlan {
            consecutive_5xx: 3,
            interval: Duration::from_secs(10),
            base_ejection: Duration::from_secs(30),
            max_ejection_percent: 50,
        };
        let upstream = Upstream::new(
            plan(Balancer::RoundRobin, Some(outlier), limits(1024, 1024)),
            None,
            ClusterMetrics::default(),
        );
        upstream.set_endpoints(addrs(2));
        let endpoints = upstream.endpoints().unwrap();
        for _ in 0..3 {
            upstream.record(&endpoints[0], Outcome::Error);
        }
        assert_eq!(upstream.health().unwrap(), (1, 2));
        assert_eq!(upstream.metrics.ejections.get(), 1);
        // The second would put 100% out, above the 50% cap.
        for _ in 0..3 {
            upstream.record(&endpoints[1], Outcome::Error);
        }
        assert_eq!(upstream.health().unwrap(), (1, 2));
        for _ in 0..4 {
            assert_eq!(
                upstream.pick().await.unwrap().endpoint.addr,
                endpoints[1].addr
            );
        }
        // A success resets the count.
        upstream.record(&endpoints[1], Outcome::Success);
    }

    #[tokio::test]
    async fn http1_pool_overflows_beyond_connections_plus_pending() {
        let upstream = Arc::new(Upstream::new(
            plan(Balancer::RoundRobin, None, limits(1, 1)),
            None,
            ClusterMetrics::default(),
        ));
        upstream.set_endpoints(addrs(1));
        let first = upstream.pick().await.unwrap();
        // The second waits for the connection...
        let waiter = {
            let upstream = Arc::clone(&upstream);
            tokio::spawn(async move { upstream.pick().await.map(|f| f.endpoint.addr) })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        // ...the third overflows.
        assert_eq!(
            upstream.pick().await.err(),
            Some(PickError::Overflow("m/node/80".into()))
        );
        assert_eq!(upstream.metrics.overflows.get(), 1);
        drop(first);
        assert!(waiter.await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn endpoints_that_stay_keep_their_state() {
        let upstream = Upstream::new(
            plan(Balancer::RoundRobin, None, limits(1024, 1024)),
            None,
            ClusterMetrics::default(),
        );
        upstream.set_endpoints(addrs(2));
        let before = upstream.endpoints().unwrap();
        before[1].set_healthy(false);
        upstream.set_endpoints(addrs(3));
        let after = upstream.endpoints().unwrap();
        assert!(Arc::ptr_eq(&before[1], &after[1]));
        assert_eq!(upstream.health().unwrap(), (2, 3));
    }
}
