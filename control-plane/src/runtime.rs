//! A control plane running in a process (`mesh-agent control-plane`, or the one
//! `mesh-agent run --mesh` embeds): serves App Mesh definitions as xDS (ADS over gRPC) to
//! node agents and watches the files; a change that validates is compiled and pushed, a
//! change that does not is reported and the last good mesh keeps being served.
use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use mesh_model::report::Diagnostic;
use mesh_xds::memory::release_free_heap;
use tokio::{net::TcpListener, sync::Notify, task::JoinError};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::{
    ads::{AdsServer, MeshSource, Publisher},
    compile::MeshIndex,
    load::{InputOptions, load},
    registry::{Registry, RegistryFileError},
    registry_api::{self, Shared},
    secrets::{SecretError, SecretStore},
    watch::{self, Fingerprint},
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
    /// Where to serve the Cloud Map–style registry API, if at all.
    pub registry_api: Option<SocketAddr>,
    /// The SDS secrets file; it and the PEM files it names are watched.
    pub secrets: Option<PathBuf>,
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
    #[error("cannot listen on {addr} for {what}")]
    Listen {
        addr: SocketAddr,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
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
        } = options;
        let index = Arc::new(compile_mesh(&paths, &input).map_err(StartError::InvalidMesh)?);
        let registry = match &registry_file {
            Some(file) => Registry::load(file)?,
            None => Registry::default(),
        };
        let shared = Shared {
            registry: Arc::new(Mutex::new(registry.clone())),
            changed: Arc::new(Notify::new()),
        };
        let secrets = match &secrets_file {
            Some(file) => Arc::new(SecretStore::load(file)?),
            None => Arc::default(),
        };
        let (server, publisher) = AdsServer::new(MeshSource::Mesh(
            Arc::clone(&index),
            Arc::new(registry),
            Arc::clone(&secrets),
        ));
        let listener = bind(listen, "xDS").await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let registry_api = match registry_api {
            Some(api) => {
                let api_listener = bind(api, "the registry API").await?;
                let bound = api_listener.local_addr()?;
                tokio::spawn(registry_api::serve(
                    api_listener,
                    shared.clone(),
                    stop.clone(),
                ));
                Some(bound)
            }
            None => None,
        };
        info!(%addr, ?registry_api, ?paths, "control plane serving");
        let watched = Watched {
            paths,
            input,
            registry_file,
            secrets_file,
            index,
            shared,
            secrets,
        };
        let task = tokio::spawn(serve(server, publisher, listener, watched, stop.clone()));
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

/// The mesh in `paths` compiled, or the validation report.
fn compile_mesh(paths: &[PathBuf], input: &InputOptions) -> Result<MeshIndex, Vec<Diagnostic>> {
    let (resources, diagnostics) = load(paths, input);
    if diagnostics.iter().any(Diagnostic::is_error) {
        return Err(diagnostics);
    }
    let index = MeshIndex::new(&resources).map_err(|e| vec![Diagnostic::error(e.to_string())]);
    drop(resources);
    release_free_heap();
    index
}

/// What the control plane serves and where it comes from.
struct Watched {
    paths: Vec<PathBuf>,
    input: InputOptions,
    registry_file: Option<PathBuf>,
    secrets_file: Option<PathBuf>,
    /// The last good mesh.
    index: Arc<MeshIndex>,
    shared: Shared,
    /// The last good secrets.
    secrets: Arc<SecretStore>,
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

    /// Re-reads mesh and registry files; publishes what is good, keeps the rest.
    fn reload(&mut self, publisher: &mut Publisher) {
        match compile_mesh(&self.paths, &self.input) {
            Ok(index) => self.index = Arc::new(index),
            Err(report) => {
                for diagnostic in &report {
                    warn!(%diagnostic, "mesh change rejected");
                }
                error!(
                    problems = report.len(),
                    "mesh change rejected; still serving the last good mesh"
                );
                return;
            }
        }
        if let Some(file) = &self.registry_file {
            match Registry::load(file) {
                Ok(registry) => match self.shared.registry() {
                    Ok(mut shared) => *shared = registry,
                    // `publish` below refuses too: agents keep the last good mesh.
                    Err(error) => error!(%error, "registry change not applied"),
                },
                Err(error) => {
                    error!(%error, "registry change rejected; keeping the last good registry")
                }
            }
        }
        if let Some(file) = &self.secrets_file {
            match SecretStore::load(file) {
                Ok(secrets) => self.secrets = Arc::new(secrets),
                Err(error) => {
                    error!(%error, "secrets change rejected; keeping the last good secrets")
                }
            }
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
        publisher.publish(MeshSource::Mesh(
            Arc::clone(&self.index),
            Arc::new(registry),
            Arc::clone(&self.secrets),
        ));
    }
}

async fn serve(
    server: AdsServer,
    mut publisher: Publisher,
    listener: TcpListener,
    mut watched: Watched,
    stop: CancellationToken,
) -> Result<(), StopError> {
    let (grpc_stop, grpc_stopped) = tokio::sync::oneshot::channel::<()>();
    let grpc = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(server.into_service())
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                async {
                    let _ = grpc_stopped.await;
                },
            ),
    );
    let mut seen = Fingerprint::of(&watched.files());
    let mut tick = tokio::time::interval(watch::INTERVAL);
    let changed = Arc::clone(&watched.shared.changed);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now = Fingerprint::of(&watched.files());
                if now != seen {
                    seen = now;
                    watched.reload(&mut publisher);
                }
            }
            () = changed.notified() => watched.publish(&mut publisher),
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
