//! TLS in the node proxy: the server side of listeners (termination, client certificates),
//! the client side of clusters (origination, server checks), peer identities, and the
//! material behind both — certificates, keys and trusted CAs from files and SDS secrets.
//!
//! Files are read off the runtime's threads, when a mesh state names them and again whenever
//! they change on disk (checked every second), so a rotated certificate is used by the next
//! connection without a restart; connections already up keep theirs. rustls configurations
//! are built from the material on first use and cached until it changes; one that no longer
//! builds (a half-written rotation) leaves the last good one in use, said once.
pub mod identity;
mod material;
mod metrics;
pub mod stream;
#[cfg(test)]
mod tests;
mod verify;

use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use mesh_xds::plan::tls::{ClientTlsPlan, ServerTlsPlan, TlsVersion, Versions};
use rustls::{
    ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};
use tokio_util::sync::CancellationToken;
use tracing::warn;

pub use material::files_of;
pub use metrics::{HandshakeResult, TlsMetrics};

use material::{Material, MaterialError};

/// How long a peer may take to complete a handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The application protocols a side offers (ALPN).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alpn {
    /// Raw TCP: none.
    None,
    Http1,
    Http2,
    /// A listener taking both (the proxy tells HTTP/2 by its preface anyway).
    Http,
}

impl Alpn {
    fn protocols(self) -> Vec<Vec<u8>> {
        match self {
            Self::None => Vec::new(),
            Self::Http1 => vec![b"http/1.1".to_vec()],
            Self::Http2 => vec![b"h2".to_vec()],
            Self::Http => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        }
    }
}

/// Why a TLS configuration cannot be built: the material is missing or unusable.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Material(#[from] MaterialError),
    #[error("{0}")]
    Rustls(String),
}

/// A handshake that failed, with the reason as operators and callers read it.
#[derive(Debug, thiserror::Error)]
#[error("tls handshake failed: {reason} (endpoint {peer})")]
pub struct HandshakeFailed {
    pub peer: SocketAddr,
    pub reason: String,
    pub result: HandshakeResult,
}

impl HandshakeFailed {
    fn new(peer: SocketAddr, error: &io::Error) -> Self {
        let (result, reason) = metrics::classify(error);
        Self {
            peer,
            reason,
            result,
        }
    }

    fn setup(peer: SocketAddr, error: &SetupError) -> Self {
        Self {
            peer,
            reason: format!("no usable TLS configuration: {error}"),
            result: HandshakeResult::config_error,
        }
    }

    /// A refusal that arrives after the client's side of the handshake finished (TLS 1.3: the
    /// server checks the client's certificate then, and says no with an alert on the first
    /// read), as the failure it is; None for other errors.
    pub fn late(peer: SocketAddr, error: &(dyn std::error::Error + 'static)) -> Option<Self> {
        let mut current = Some(error);
        while let Some(error) = current {
            if let Some(io) = error.downcast_ref::<io::Error>()
                && io
                    .get_ref()
                    .is_some_and(|inner| inner.is::<rustls::Error>())
            {
                return Some(Self::new(peer, io));
            }
            current = error.source();
        }
        None
    }

    /// The handshake failure behind an I/O error (a connect through hyper), if it is one.
    pub fn find<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Self> {
        let mut current = Some(error);
        while let Some(error) = current {
            if let Some(failed) = error.downcast_ref::<Self>() {
                return Some(failed);
            }
            // An io::Error's source() skips the error it wraps: look inside.
            let wrapped = error
                .downcast_ref::<io::Error>()
                .and_then(io::Error::get_ref);
            if let Some(failed) = wrapped.and_then(|inner| inner.downcast_ref::<Self>()) {
                return Some(failed);
            }
            current = error.source();
        }
        None
    }
}

/// Configurations by what they were built for, with the generation of material they were
/// built from (or found unbuildable from, keeping the last good one).
type Built<K, C> = HashMap<K, (u64, Arc<C>)>;

/// The node's TLS material and the configurations built from it; cheap to clone.
#[derive(Clone)]
pub struct TlsStore {
    material: Arc<RwLock<Arc<Material>>>,
    /// One change of material at a time (a mesh state, or files changing on disk), so
    /// neither loses the other's.
    writer: Arc<tokio::sync::Mutex<()>>,
    clients: Arc<Mutex<Built<(ClientTlsPlan, Alpn), ClientConfig>>>,
    servers: Arc<Mutex<Built<(ServerTlsPlan, Alpn), ServerConfig>>>,
    provider: Arc<CryptoProvider>,
    pub metrics: TlsMetrics,
}

impl Default for TlsStore {
    fn default() -> Self {
        Self::new(TlsMetrics::default())
    }
}

impl TlsStore {
    pub fn new(metrics: TlsMetrics) -> Self {
        Self {
            material: Arc::default(),
            writer: Arc::default(),
            clients: Arc::default(),
            servers: Arc::default(),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            metrics,
        }
    }

    fn material(&self) -> Arc<Material> {
        match self.material.read() {
            Ok(material) => Arc::clone(&material),
            // Replaced whole under the lock, never left half-written: the value is sound.
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    fn install(&self, next: Material) {
        let next = Arc::new(next);
        match self.material.write() {
            Ok(mut material) => *material = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
    }

    /// Takes the secrets and files of a new mesh state: files not read yet are read (off the
    /// runtime's threads) before the state is used.
    pub async fn update(
        &self,
        secrets: HashMap<String, mesh_xds::plan::tls::SecretPlan>,
        files: Vec<std::path::PathBuf>,
    ) {
        let _writing = self.writer.lock().await;
        let current = self.material();
        let next = tokio::task::spawn_blocking(move || current.with(secrets, &files)).await;
        match next {
            Ok(Some(next)) => self.install(next),
            Ok(None) => {}
            Err(error) => warn!(%error, "reading TLS files failed"),
        }
    }

    /// Sets (or, with None, removes) a secret made on this node: a workload certificate of
    /// automatic mTLS, its key generated here.
    pub async fn set_local(&self, name: &str, secret: Option<mesh_xds::plan::tls::SecretPlan>) {
        let _writing = self.writer.lock().await;
        if let Some(next) = self.material().with_local(name, secret) {
            self.install(next);
        }
    }

    /// Re-reads changed files every second until `stop`: a rotated certificate is used by
    /// the connections that start after it.
    pub async fn follow_files(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            let _writing = self.writer.lock().await;
            let current = self.material();
            match tokio::task::spawn_blocking(move || current.reread()).await {
                Ok(Some(next)) => self.install(next),
                Ok(None) => {}
                Err(error) => warn!(%error, "re-reading TLS files failed"),
            }
        }
    }

    /// The client configuration for a cluster's TLS.
    pub fn client_config(
        &self,
        plan: &ClientTlsPlan,
        alpn: Alpn,
    ) -> Result<Arc<ClientConfig>, SetupError> {
        let material = self.material();
        cached(
            &self.clients,
            material.generation,
            (plan.clone(), alpn),
            || self.build_client(plan, alpn, &material),
        )
    }

    /// The server configuration for a listener chain's TLS.
    pub fn server_config(
        &self,
        plan: &ServerTlsPlan,
        alpn: Alpn,
    ) -> Result<Arc<ServerConfig>, SetupError> {
        let material = self.material();
        cached(
            &self.servers,
            material.generation,
            (plan.clone(), alpn),
            || self.build_server(plan, alpn, &material),
        )
    }

    fn build_client(
        &self,
        plan: &ClientTlsPlan,
        alpn: Alpn,
        material: &Material,
    ) -> Result<ClientConfig, SetupError> {
        let (roots, sans) = match &plan.validation {
            Some(validation) => {
                let (trust, sans) = material.validation(validation)?;
                (Some(Arc::new(roots(&trust)?)), sans)
            }
            None => (None, Vec::new()),
        };
        let verifier = verify::ServerVerifier::new(roots, sans, Arc::clone(&self.provider));
        let builder = ClientConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_protocol_versions(&versions(plan.versions))
            .map_err(rustls_error)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier));
        let mut config = match &plan.certificate {
            Some(source) => {
                let (chain, key) = material.key_pair(source)?;
                builder
                    .with_client_auth_cert(certificates(&chain)?, private_key(&key)?)
                    .map_err(rustls_error)?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.protocols();
        Ok(config)
    }

    fn build_server(
        &self,
        plan: &ServerTlsPlan,
        alpn: Alpn,
        material: &Material,
    ) -> Result<ServerConfig, SetupError> {
        let builder = ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_protocol_versions(&versions(plan.versions))
            .map_err(rustls_error)?;
        let builder = match &plan.validation {
            Some(validation) => {
                let (trust, sans) = material.validation(validation)?;
                let verifier = verify::ClientVerifier::new(
                    Arc::new(roots(&trust)?),
                    sans,
                    plan.require_client_certificate,
                    Arc::clone(&self.provider),
                )
                .map_err(rustls_error)?;
                builder.with_client_cert_verifier(Arc::new(verifier))
            }
            None => builder.with_no_client_auth(),
        };
        let (chain, key) = material.key_pair(&plan.certificate)?;
        let mut config = builder
            .with_single_cert(certificates(&chain)?, private_key(&key)?)
            .map_err(rustls_error)?;
        config.alpn_protocols = alpn.protocols();
        Ok(config)
    }

    /// Originates TLS on `stream` toward `peer` as the cluster's plan says.
    pub async fn connect(
        &self,
        plan: &ClientTlsPlan,
        alpn: Alpn,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> Result<client::TlsStream<TcpStream>, HandshakeFailed> {
        let config = self
            .client_config(plan, alpn)
            .map_err(|error| self.failed("client", HandshakeFailed::setup(peer, &error)))?;
        let name = match &plan.sni {
            Some(sni) => ServerName::try_from(sni.clone()),
            None => Ok(ServerName::IpAddress(peer.ip().into())),
        };
        let name = name.map_err(|_| {
            let error = io::Error::new(io::ErrorKind::InvalidInput, "invalid SNI");
            self.failed("client", HandshakeFailed::new(peer, &error))
        })?;
        let handshake = TlsConnector::from(config).connect(name, stream);
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(stream)) => {
                self.metrics.record("client", HandshakeResult::ok);
                Ok(stream)
            }
            Ok(Err(error)) => Err(self.failed("client", HandshakeFailed::new(peer, &error))),
            Err(_) => Err(self.failed("client", timed_out(peer))),
        }
    }

    /// Terminates TLS on an accepted `stream` as the listener chain's plan says.
    pub async fn accept(
        &self,
        plan: &ServerTlsPlan,
        alpn: Alpn,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> Result<server::TlsStream<TcpStream>, HandshakeFailed> {
        let config = self
            .server_config(plan, alpn)
            .map_err(|error| self.failed("server", HandshakeFailed::setup(peer, &error)))?;
        let handshake = TlsAcceptor::from(config).accept(stream);
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(stream)) => {
                self.metrics.record("server", HandshakeResult::ok);
                Ok(stream)
            }
            Ok(Err(error)) => Err(self.failed("server", HandshakeFailed::new(peer, &error))),
            Err(_) => Err(self.failed("server", timed_out(peer))),
        }
    }

    /// Counts a failure and says it the first time its kind is seen on this side (each
    /// handshake would flood the log otherwise; the counter has them all).
    pub fn failed(&self, side: &'static str, failed: HandshakeFailed) -> HandshakeFailed {
        if self.metrics.record(side, failed.result) {
            warn!(side, peer = %failed.peer, reason = %failed.reason, "TLS handshake failed (further failures of this kind are counted in mesh_agent_tls_handshakes_total)");
        }
        failed
    }
}

fn timed_out(peer: SocketAddr) -> HandshakeFailed {
    HandshakeFailed {
        peer,
        reason: format!("no handshake within {HANDSHAKE_TIMEOUT:?}"),
        result: HandshakeResult::timeout,
    }
}

/// The configuration of `key` built from material of `generation`: the cached one, or a new
/// one; when a new one does not build, the last good one (said once per generation).
fn cached<K: std::hash::Hash + Eq, C>(
    built: &Mutex<Built<K, C>>,
    generation: u64,
    key: K,
    build: impl FnOnce() -> Result<C, SetupError>,
) -> Result<Arc<C>, SetupError> {
    let mut built = match built.lock() {
        Ok(built) => built,
        // Entries are inserted whole: what is there is sound.
        Err(poisoned) => poisoned.into_inner(),
    };
    if let Some((built_at, config)) = built.get(&key)
        && *built_at == generation
    {
        return Ok(Arc::clone(config));
    }
    match build() {
        Ok(config) => {
            let config = Arc::new(config);
            built.insert(key, (generation, Arc::clone(&config)));
            Ok(config)
        }
        Err(error) => match built.get_mut(&key) {
            Some((built_at, last_good)) => {
                warn!(%error, "TLS material no longer builds; the last good configuration stays in use until it changes again");
                *built_at = generation;
                Ok(Arc::clone(last_good))
            }
            None => Err(error),
        },
    }
}

fn rustls_error(error: impl std::fmt::Display) -> SetupError {
    SetupError::Rustls(error.to_string())
}

fn versions(versions: Versions) -> Vec<&'static SupportedProtocolVersion> {
    let mut allowed = Vec::new();
    if versions.min <= TlsVersion::V1_2 && versions.max >= TlsVersion::V1_2 {
        allowed.push(&rustls::version::TLS12);
    }
    if versions.max >= TlsVersion::V1_3 {
        allowed.push(&rustls::version::TLS13);
    }
    allowed
}

fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, SetupError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| rustls_error(format!("certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(rustls_error("certificate chain: no PEM CERTIFICATE block"));
    }
    Ok(chain)
}

fn private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, SetupError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| rustls_error(format!("private key: {e}")))
}

fn roots(pem: &[u8]) -> Result<RootCertStore, SetupError> {
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certificates(pem)?);
    if added == 0 {
        return Err(rustls_error("trusted CA: no usable certificate"));
    }
    Ok(roots)
}
