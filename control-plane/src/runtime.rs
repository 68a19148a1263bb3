//! A control plane running in a process (`mesh-agent control-plane`, or the one
//! `mesh-agent run --mesh` embeds): serves App Mesh definitions as xDS (ADS over gRPC) to
//! node agents and watches the files; a change that validates is compiled and pushed, a
//! change that does not is reported and the last good mesh keeps being served.
use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::Instant,
};

use mesh_model::report::Diagnostic;
use tokio::{
    net::TcpListener,
    sync::{Notify, mpsc},
    task::JoinError,
};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tracing::{debug, error, info, warn};

use crate::{
    ads::{AdsServer, MeshSource, Publisher},
    compile::{MeshIndex, ServiceEndpoints, Serving},
    identity::{AutoMtls, AutoMtlsOptions, CaError, IdentityService},
    kubernetes::{self, KubernetesError, KubernetesOptions, Update},
    load::InputOptions,
    mesh_files::MeshFiles,
    placement::Placement,
    registry::{Registry, RegistryFileError},
    registry_api::{self, Shared},
    secrets::{SecretError, SecretStore},
    watch::{self, ChangeEvents, Changes, Fingerprint, Look},
};

/// What to serve and where.
#[derive(Clone, Debug)]
pub struct Options {
    /// Files or directories of App Mesh definitions.
    pub paths: Vec<PathBuf>,
    pub input: InputOptions,
    /// Where to serve ADS; port 0 picks a free port ([`ControlPlane::addr`]).
    pub listen: SocketAddr,
    /// The service registry file (Cloud Map stand-in), watched like the mesh.
    pub registry: Option<PathBuf>,
    /// The Cloud Map–style registry API, if it is served.
    pub registry_api: Option<RegistryApiOptions>,
    /// The SDS secrets file; it and the PEM files it names are watched.
    pub secrets: Option<PathBuf>,
    /// Automatic mTLS between meshed workloads, with the CA that signs their certificates.
    pub auto_mtls: Option<AutoMtlsOptions>,
    /// TLS on the ADS port (ADS and certificate signing); plain text without it.
    pub tls: Option<ServerTlsOptions>,
    /// Read the mesh from a Kubernetes cluster's App Mesh objects (instead of `paths`).
    pub kubernetes: Option<KubernetesOptions>,
}

impl Options {
    /// The mesh in `paths` served on a free loopback port, with nothing else (no registry,
    /// secrets, automatic mTLS or TLS).
    pub fn loopback(paths: Vec<PathBuf>) -> Self {
        Self {
            paths,
            input: InputOptions::default(),
            listen: SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0)),
            registry: None,
            registry_api: None,
            secrets: None,
            auto_mtls: None,
            tls: None,
            kubernetes: None,
        }
    }
}

/// The control plane's certificate, and the CA of node certificates: with it, every caller
/// must present a certificate that CA signed, naming the node it connects as (mutual TLS).
#[derive(Clone, Debug)]
pub struct ServerTlsOptions {
    pub certificate: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

impl ServerTlsOptions {
    /// The files read and checked (off the runtime's threads: called from a blocking task).
    fn load(&self) -> Result<ServerTlsConfig, StartError> {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|source| StartError::TlsFile {
                path: path.clone(),
                source,
            })
        };
        let mut config = ServerTlsConfig::new().identity(Identity::from_pem(
            read(&self.certificate)?,
            read(&self.key)?,
        ));
        if let Some(ca) = &self.client_ca {
            config = config.client_ca_root(Certificate::from_pem(read(ca)?));
        }
        Ok(config)
    }
}

/// Where the registry API listens and the token its callers must present.
#[derive(Clone)]
pub struct RegistryApiOptions {
    pub listen: SocketAddr,
    /// Callers send `Authorization: Bearer <token>`: registering an instance moves traffic,
    /// so the API is never open to whoever can reach the address.
    pub token: String,
}

impl std::fmt::Debug for RegistryApiOptions {
    // The token stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryApiOptions")
            .field("listen", &self.listen)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The report says why; nothing is served.
    #[error("the mesh is not valid ({} problems); nothing served", .0.len())]
    InvalidMesh(Vec<Diagnostic>),
    #[error(transparent)]
    Registry(#[from] RegistryFileError),
    #[error(transparent)]
    Secrets(#[from] SecretError),
    #[error("automatic mTLS: {0}")]
    Ca(#[from] CaError),
    #[error("TLS for ADS: reading {}", path.display())]
    TlsFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS for ADS: the certificate, key or client CA is not usable")]
    Tls(#[source] tonic::transport::Error),
    #[error("cannot listen on {addr} for {what}")]
    Listen {
        addr: SocketAddr,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("loading the mesh")]
    Task(#[source] JoinError),
    #[error("the Kubernetes source")]
    Kubernetes(#[from] KubernetesError),
}

#[derive(Debug, thiserror::Error)]
pub enum StopError {
    #[error("control plane task")]
    Task(#[source] JoinError),
    #[error("gRPC server task")]
    GrpcTask(#[source] JoinError),
    #[error("gRPC server")]
    Grpc(#[source] tonic::transport::Error),
}

/// A control plane serving; [`ControlPlane::stop`] ends it.
pub struct ControlPlane {
    /// Where ADS is served.
    pub addr: SocketAddr,
    /// Where the registry API is served, if asked for.
    pub registry_api: Option<SocketAddr>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), StopError>>,
}

impl ControlPlane {
    /// Loads the mesh (refusing an invalid one) and the registry, binds `listen` (and the
    /// registry API), serves, watches the files.
    pub async fn start(options: Options) -> Result<Self, StartError> {
        let Options {
            paths,
            input,
            listen,
            registry: registry_file,
            registry_api,
            secrets: secrets_file,
            auto_mtls,
            tls,
            kubernetes,
        } = options;
        // The cluster's mesh comes once its objects are listed; until then, an empty one.
        let cluster = match &kubernetes {
            Some(options) => Some(kubernetes::client(options).await?),
            None => None,
        };
        // Parsing and compiling read files and may take a while: not on the runtime's threads.
        let mesh_files = Arc::new(Mutex::new(MeshFiles::new(input.clone())));
        let index = if cluster.is_some() {
            MeshIndex::default()
        } else {
            let (paths, files) = (paths.clone(), Arc::clone(&mesh_files));
            tokio::task::spawn_blocking(move || compile_mesh(&files, &paths, None))
                .await
                .map_err(StartError::Task)?
                .map_err(StartError::InvalidMesh)?
        };
        let index = Arc::new(index);
        let registry = match &registry_file {
            Some(file) => Registry::load(file)?,
            None => Registry::default(),
        };
        let shared = Shared {
            registry: Arc::new(Mutex::new(registry.clone())),
            changed: Arc::new(Notify::new()),
            operations: Arc::default(),
        };
        let secrets = match &secrets_file {
            Some(file) => Arc::new(SecretStore::load(file)?),
            None => Arc::default(),
        };
        let mtls = match auto_mtls {
            // The CA's files are read (or made) off the runtime's threads.
            Some(options) => Some(Arc::new(
                tokio::task::spawn_blocking(move || AutoMtls::load(options))
                    .await
                    .map_err(StartError::Task)??,
            )),
            None => None,
        };
        // From a cluster, a node runs the workloads of its pods: none until it is listed.
        let placement = cluster.as_ref().map(|_| Arc::new(Placement::default()));
        let serving = Serving {
            secrets: Arc::clone(&secrets),
            mtls: mtls.clone(),
            service_endpoints: Arc::default(),
            placement: placement.clone(),
        };
        let (server, publisher) = AdsServer::new(MeshSource::Mesh(
            Arc::clone(&index),
            Arc::new(registry),
            serving,
        ));
        let tls = match tls {
            Some(tls) => Some(
                tokio::task::spawn_blocking(move || tls.load())
                    .await
                    .map_err(StartError::Task)??,
            ),
            None => None,
        };
        let grpc = grpc_server(tls)?;
        let listener = bind(listen, "xDS").await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let registry_api = match registry_api {
            Some(api) => {
                let api_listener = bind(api.listen, "the registry API").await?;
                let bound = api_listener.local_addr()?;
                tokio::spawn(registry_api::serve(
                    api_listener,
                    shared.clone(),
                    api.token,
                    stop.clone(),
                ));
                if registry_file.is_none() {
                    warn!(
                        "no registry file: what the registry API registers is lost when the control plane restarts (--registry FILE keeps it)"
                    );
                }
                Some(bound)
            }
            None => None,
        };
        info!(%addr, ?registry_api, ?paths, "control plane serving");
        // The API server has already checked objects against the CRDs' schemas: fields the
        // CRDs keep that the mesh does not use are notes, as the controller ignored them.
        let input_for_cluster = InputOptions {
            lenient: true,
            ..input.clone()
        };
        let watched = Watched {
            paths,
            mesh_files,
            registry_file,
            secrets_file,
            index,
            shared,
            secrets,
            mtls,
            service_endpoints: Arc::default(),
            placement,
        };
        let updates = cluster.map(|client| {
            let (sender, receiver) = mpsc::channel(1);
            tokio::spawn(kubernetes::run(
                client,
                input_for_cluster,
                sender,
                stop.clone(),
            ));
            receiver
        });
        let task = tokio::spawn(serve(
            grpc,
            server,
            publisher,
            listener,
            watched,
            updates,
            stop.clone(),
        ));
        Ok(Self {
            addr,
            registry_api,
            stop,
            task,
        })
    }

    /// Stops serving: every stream ends (agents reconnect elsewhere or later).
    pub async fn stop(self) -> Result<(), StopError> {
        self.stop.cancel();
        self.task.await.map_err(StopError::Task)?
    }
}

async fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Listen { addr, what, source })
}

/// The mesh in `paths` compiled, or the validation report; only files changed since the
/// last call are read again (`changes`: which ones, as the watcher saw it).
fn compile_mesh(
    files: &Mutex<MeshFiles>,
    paths: &[PathBuf],
    changes: Option<&Changes>,
) -> Result<MeshIndex, Vec<Diagnostic>> {
    let started = Instant::now();
    // A panic while compiling leaves the cache with fewer files, never a wrong one (files
    // are replaced whole): what it holds stays usable.
    let mut files = files.lock().unwrap_or_else(PoisonError::into_inner);
    let compiled = match changes {
        Some(changes) => files.compile_changes(paths, changes),
        None => files.compile(paths),
    };
    drop(files);
    debug!(
        elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
        ok = compiled.is_ok(),
        "mesh files read, checked and indexed"
    );
    compiled
}

/// The longest diagnostic logged whole; longer ones are cut, saying so.
const MAX_LOGGED_DIAGNOSTIC: usize = 512;

/// `text`, cut to at most `max` bytes (at a character boundary) with a note of its length.
fn clipped(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… (truncated: {} bytes in all)", &text[..end], text.len())
}

/// The files a reload reads, owned so that a blocking thread can read them.
struct Sources {
    paths: Vec<PathBuf>,
    mesh_files: Arc<Mutex<MeshFiles>>,
    registry_file: Option<PathBuf>,
    secrets_file: Option<PathBuf>,
}

/// What a reload read: the mesh compiled (or why not) if it comes from files, the registry
/// and secrets if used.
struct Reloaded {
    mesh: Option<Result<MeshIndex, Vec<Diagnostic>>>,
    registry: Option<Result<Registry, RegistryFileError>>,
    secrets: Option<Result<SecretStore, SecretError>>,
}

impl Sources {
    /// Reads what changed and compiles (blocking: file reads, parsing, compiling).
    fn read(&self, changes: &Changes) -> Reloaded {
        Reloaded {
            mesh: (!self.paths.is_empty())
                .then(|| compile_mesh(&self.mesh_files, &self.paths, Some(changes))),
            registry: self.registry_file.as_deref().map(Registry::load),
            secrets: self.secrets_file.as_deref().map(SecretStore::load),
        }
    }
}

/// What a check of the watched files found: their fingerprint now, and what they hold if
/// they changed since `seen`.
fn check(
    files: &[PathBuf],
    seen: &Fingerprint,
    look: &Look,
    sources: &Sources,
) -> (Fingerprint, Option<Reloaded>) {
    let started = Instant::now();
    let now = seen.looked_again(files, look);
    let reloaded = (*seen != now).then(|| {
        debug!(
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
            "watched files changed"
        );
        sources.read(&now.changes_since(seen))
    });
    (now, reloaded)
}

/// A check under way on a blocking thread, waited on by the serving loop (never if none).
async fn checked(
    check: &mut Option<tokio::task::JoinHandle<(Fingerprint, Option<Reloaded>)>>,
) -> Result<(Fingerprint, Option<Reloaded>), JoinError> {
    match check {
        Some(handle) => handle.await,
        None => std::future::pending().await,
    }
}

/// The next change event (never, without them).
async fn change_event(events: &mut Option<ChangeEvents>) -> std::io::Result<Look> {
    match events {
        Some(events) => events.next().await,
        None => std::future::pending().await,
    }
}

/// How the serving loop watches the files. They are looked at and read on a blocking
/// thread (directory walks, parsing and compiling can take a while): the loop stays free
/// to publish registry changes and to stop meanwhile. One check at a time: a change event
/// during one makes another follow it; ticks during one are skipped.
struct Watching {
    /// The files as the last check found them; None before the first.
    seen: Option<Fingerprint>,
    in_flight: Option<tokio::task::JoinHandle<(Fingerprint, Option<Reloaded>)>>,
    /// What change events during the check under way ask to look at after it.
    again: Option<Look>,
    /// Change events from the kernel, if it gives them; else the files are polled often.
    events: Option<ChangeEvents>,
    /// The poll: rare while every watched directory reports its changes.
    tick: tokio::time::Interval,
}

impl Watching {
    fn new() -> Self {
        let events = ChangeEvents::new()
            .inspect_err(|error| warn!(%error, "no file change events (inotify): changes are seen by polling"))
            .ok();
        Self {
            seen: None,
            in_flight: None,
            again: None,
            // The first tick records what is there; until then no directory is watched.
            tick: poll(
                tokio::time::Instant::now(),
                if events.is_some() {
                    watch::UNREPORTED_INTERVAL
                } else {
                    watch::INTERVAL
                },
            ),
            events,
        }
    }

    /// Starts a check looking at `look`, or asks for one after the check under way.
    fn start(&mut self, watched: &Watched, look: Look) {
        if self.in_flight.is_some() {
            self.again = Some(match self.again.take() {
                Some(again) => again.and(look),
                None => look,
            });
            return;
        }
        let files = watched.files();
        let sources = watched.sources();
        let last = self.seen.clone();
        self.in_flight = Some(tokio::task::spawn_blocking(move || match last {
            Some(last) => check(&files, &last, &look, &sources),
            // The first look only records what is there: it was loaded at start.
            None => (Fingerprint::of(&files), None),
        }));
    }

    /// Takes a finished check: what it read, if the files changed.
    fn finish(
        &mut self,
        done: Result<(Fingerprint, Option<Reloaded>), JoinError>,
    ) -> Option<Reloaded> {
        self.in_flight = None;
        match done {
            Ok((now, reloaded)) => {
                // Directories that came since are watched too.
                if let Some(all_reported) = self.events.as_mut().map(|e| e.watch(&now)) {
                    self.poll_every(if all_reported {
                        watch::SAFETY_INTERVAL
                    } else {
                        watch::UNREPORTED_INTERVAL
                    });
                }
                self.seen = Some(now);
                reloaded
            }
            // `seen` is kept: the next check tries again.
            Err(error) => {
                error!(%error, "reading the changed files failed; still serving the last good mesh");
                None
            }
        }
    }

    fn without_events(&mut self, error: &std::io::Error) {
        warn!(%error, "file change events stopped: changes are seen by polling");
        self.events = None;
        self.poll_every(watch::INTERVAL);
    }

    /// Polls every `every` from now on (the next poll `every` from now).
    fn poll_every(&mut self, every: std::time::Duration) {
        if self.tick.period() != every {
            debug!(every_ms = every.as_millis(), "polling the watched files");
            self.tick = poll(tokio::time::Instant::now() + every, every);
        }
    }
}

fn poll(first: tokio::time::Instant, every: std::time::Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval_at(first, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

/// The next mesh the cluster makes (never, without the Kubernetes source).
async fn cluster_update(updates: &mut Option<mpsc::Receiver<Update>>) -> Option<Update> {
    match updates {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

/// What the control plane serves and where it comes from.
struct Watched {
    paths: Vec<PathBuf>,
    /// The mesh files as last read, used by reloads on blocking threads (one at a time).
    mesh_files: Arc<Mutex<MeshFiles>>,
    registry_file: Option<PathBuf>,
    secrets_file: Option<PathBuf>,
    /// The last good mesh.
    index: Arc<MeshIndex>,
    /// The endpoints Kubernetes Services give the last good mesh's nodes.
    service_endpoints: Arc<ServiceEndpoints>,
    /// Which pods run on which node (from a cluster only).
    placement: Option<Arc<Placement>>,
    shared: Shared,
    /// The last good secrets.
    secrets: Arc<SecretStore>,
    mtls: Option<Arc<AutoMtls>>,
}

impl Watched {
    fn files(&self) -> Vec<PathBuf> {
        self.paths
            .iter()
            .chain(&self.registry_file)
            // The secrets file and its PEM files (the last good store names them all).
            .chain(self.secrets.files())
            .cloned()
            .collect()
    }

    /// What a reload reads, for a blocking thread.
    fn sources(&self) -> Sources {
        Sources {
            paths: self.paths.clone(),
            mesh_files: Arc::clone(&self.mesh_files),
            registry_file: self.registry_file.clone(),
            secrets_file: self.secrets_file.clone(),
        }
    }

    /// Writes what the registry API changed into the registry file, so registrations and
    /// health survive a restart (the watcher then reads back what the registry already
    /// holds). Without a file they live in memory only. Written off the runtime's threads,
    /// one write at a time, so an older snapshot never lands after a newer one.
    async fn persist_registry(&self) {
        let Some(path) = self.registry_file.clone() else {
            return;
        };
        let Ok(snapshot) = self.shared.registry().map(|r| r.clone()) else {
            // Poisoned: `publish` said so; nothing trustworthy to write.
            return;
        };
        let saved = tokio::task::spawn_blocking(move || snapshot.save(&path)).await;
        match saved {
            Ok(Ok(())) => {}
            Ok(Err(error)) => error!(%error, "registry change not saved; it is lost at restart"),
            Err(error) => error!(%error, "registry save task failed"),
        }
    }

    /// Applies what a reload read: publishes what is good, keeps the rest.
    fn reload(&mut self, reloaded: Reloaded, publisher: &mut Publisher) {
        match reloaded.mesh {
            Some(Ok(index)) => self.index = Arc::new(index),
            None => {}
            Some(Err(report)) => {
                for diagnostic in &report {
                    // One line per problem, each of a bounded length: a diagnostic quoting a
                    // huge value must not become a huge log line.
                    let diagnostic = clipped(&diagnostic.to_string(), MAX_LOGGED_DIAGNOSTIC);
                    warn!(%diagnostic, "mesh change rejected");
                }
                error!(
                    problems = report.len(),
                    "mesh change rejected; still serving the last good mesh"
                );
                return;
            }
        }
        match reloaded.registry {
            Some(Ok(registry)) => match self.shared.registry() {
                Ok(mut shared) => *shared = registry,
                // `publish` below refuses too: agents keep the last good mesh.
                Err(error) => error!(%error, "registry change not applied"),
            },
            Some(Err(error)) => {
                error!(%error, "registry change rejected; keeping the last good registry")
            }
            None => {}
        }
        match reloaded.secrets {
            Some(Ok(secrets)) => self.secrets = Arc::new(secrets),
            Some(Err(error)) => {
                error!(%error, "secrets change rejected; keeping the last good secrets")
            }
            None => {}
        }
        self.publish(publisher);
    }

    /// Publishes the last good mesh, registry and secrets; a poisoned registry publishes
    /// nothing (agents keep what they have) rather than an empty registry.
    fn publish(&self, publisher: &mut Publisher) {
        let registry = match self.shared.registry() {
            Ok(registry) => registry.clone(),
            Err(error) => {
                error!(%error, "nothing published; agents keep the last good mesh");
                return;
            }
        };
        let serving = Serving {
            secrets: Arc::clone(&self.secrets),
            mtls: self.mtls.clone(),
            service_endpoints: Arc::clone(&self.service_endpoints),
            placement: self.placement.clone(),
        };
        publisher.publish(MeshSource::Mesh(
            Arc::clone(&self.index),
            Arc::new(registry),
            serving,
        ));
    }
}

/// The gRPC server, with TLS if asked for: a certificate that does not match its key, or a
/// client CA that is not PEM, is refused at start.
fn grpc_server(tls: Option<ServerTlsConfig>) -> Result<Server, StartError> {
    match tls {
        Some(config) => Server::builder()
            .tls_config(config)
            .map_err(StartError::Tls),
        None => Ok(Server::builder()),
    }
}

async fn serve(
    mut grpc: Server,
    server: AdsServer,
    mut publisher: Publisher,
    listener: TcpListener,
    mut watched: Watched,
    mut updates: Option<mpsc::Receiver<Update>>,
    stop: CancellationToken,
) -> Result<(), StopError> {
    let (grpc_stop, grpc_stopped) = tokio::sync::oneshot::channel::<()>();
    // Workload certificates are signed beside ADS when automatic mTLS is on.
    let identity = watched
        .mtls
        .clone()
        .map(|mtls| IdentityService::new(mtls, server.published()));
    let grpc = tokio::spawn(
        grpc.add_service(server.into_service())
            .add_optional_service(identity)
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                async {
                    let _ = grpc_stopped.await;
                },
            ),
    );
    let mut watching = Watching::new();
    let changed = Arc::clone(&watched.shared.changed);
    loop {
        tokio::select! {
            _ = watching.tick.tick(), if watching.in_flight.is_none() => {
                watching.start(&watched, Look::Everything);
            }
            event = change_event(&mut watching.events) => match event {
                Ok(look) => watching.start(&watched, look),
                Err(error) => watching.without_events(&error),
            },
            done = checked(&mut watching.in_flight) => {
                if let Some(reloaded) = watching.finish(done) {
                    watched.reload(reloaded, &mut publisher);
                }
                if let Some(look) = watching.again.take() {
                    watching.start(&watched, look);
                }
            }
            () = changed.notified() => {
                watched.publish(&mut publisher);
                watched.persist_registry().await;
            }
            Some(update) = cluster_update(&mut updates) => {
                watched.index = Arc::new(update.index);
                watched.service_endpoints = Arc::new(update.service_endpoints);
                watched.placement = Some(Arc::new(update.placement));
                watched.publish(&mut publisher);
            }
            () = stop.cancelled() => break,
        }
    }
    info!("control plane stopping");
    // Ending the publisher ends every stream, so agents reconnect at once.
    drop(publisher);
    let _ = grpc_stop.send(());
    grpc.await
        .map_err(StopError::GrpcTask)?
        .map_err(StopError::Grpc)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A changed mesh is read and compiled on a blocking thread: with a runtime of one
    /// thread, other tasks (ADS streams, the registry API) keep running while a large file
    /// (1.5 MiB, about a second to parse in a debug build) is read.
    #[tokio::test(flavor = "current_thread")]
    async fn a_reload_does_not_stall_the_runtime() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("mesh.json"),
            r#"{"meshName": "demo", "spec": {}}"#,
        )
        .unwrap();
        let control_plane = ControlPlane::start(Options::loopback(vec![dir.path().to_owned()]))
            .await
            .unwrap();
        let mut big =
            String::from("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: big}\ndata:\n");
        for i in 0..60_000 {
            big.push_str(&format!("  k{i}: [a, b, {{c: d}}]\n"));
        }
        let started = Instant::now();
        let mut last = Instant::now();
        let mut longest = Duration::ZERO;
        let mut written = false;
        while started.elapsed() < Duration::from_secs(3) {
            tokio::time::sleep(Duration::from_millis(10)).await;
            longest = longest.max(last.elapsed());
            last = Instant::now();
            if !written && started.elapsed() > Duration::from_millis(300) {
                std::fs::write(dir.path().join("big.yaml"), &big).unwrap();
                written = true;
            }
        }
        control_plane.stop().await.unwrap();
        assert!(longest < Duration::from_millis(300), "stalled {longest:?}");
    }

    #[test]
    fn a_long_diagnostic_is_clipped_in_logs_saying_so() {
        assert_eq!(clipped("short", 512), "short");
        let long = format!("é{}", "x".repeat(100_000));
        let logged = clipped(&long, 512);
        assert!(logged.len() < 600, "{}", logged.len());
        assert!(
            logged.ends_with("… (truncated: 100002 bytes in all)"),
            "{logged}"
        );
        // Cut at a character boundary.
        assert!(clipped("éé", 1).starts_with('…'));
    }
}
