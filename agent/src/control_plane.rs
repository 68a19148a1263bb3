//! `mesh-agent control-plane`: serves App Mesh definitions as xDS (ADS over gRPC) to node
//! agents. Watches the definition files; a change that validates is compiled and pushed, a
//! change that does not is reported and the last good mesh keeps being served.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use clap::Args;
use mesh_model::report::Diagnostic;
use mesh_xds::{
    compile::MeshIndex,
    server::{AdsServer, MeshSource, Publisher},
};
use mesh_xds::{registry::Registry, secrets::SecretStore};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::{
    mesh_cmd::{self, InputArgs},
    registry_api::{self, Shared},
};

/// How often the definition files are checked for changes.
const WATCH_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Args)]
pub struct ControlPlaneArgs {
    /// Files or directories of App Mesh definitions (any format `validate` reads). Repeatable.
    #[arg(long = "mesh", required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Address to serve ADS (gRPC) on; port 0 picks a free port, printed on start.
    #[arg(long, default_value = "127.0.0.1:15010", value_name = "ADDR")]
    listen: SocketAddr,
    /// Service registry (Cloud Map stand-in) file: JSON `{"namespaces": {NS: {SERVICE:
    /// {INSTANCE_ID: {ATTRIBUTE: VALUE}}}}}`; watched like the mesh (a change replaces what
    /// the API registered).
    #[arg(long, value_name = "FILE")]
    registry: Option<PathBuf>,
    /// Serve the Cloud Map–style registry API (RegisterInstance, DeregisterInstance,
    /// DiscoverInstances) on this address; port 0 picks one, printed on start.
    #[arg(long, value_name = "ADDR")]
    registry_api: Option<SocketAddr>,
    /// SDS secrets file (stand-in for a SPIRE agent): JSON `{"secrets": {NAME:
    /// {"certificateChain": PEM, "privateKey": PEM} | {"trustedCa": PEM}}}`; served to the
    /// nodes whose TLS contexts name them; it and the PEM files are watched (rotation).
    #[arg(long, value_name = "FILE")]
    secrets: Option<PathBuf>,
    #[command(flatten)]
    input: InputArgs,
}

pub fn run(args: ControlPlaneArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(args))
}

/// The mesh in `paths` compiled, or the validation report.
fn load(paths: &[PathBuf], input: &InputArgs) -> Result<MeshIndex, Vec<Diagnostic>> {
    let (resources, diagnostics) = mesh_cmd::load(paths, input);
    if diagnostics.iter().any(Diagnostic::is_error) {
        return Err(diagnostics);
    }
    let index = MeshIndex::new(&resources).map_err(|e| vec![Diagnostic::error(e.to_string())]);
    drop(resources);
    crate::memory::release_free_heap();
    index
}

async fn serve(args: ControlPlaneArgs) -> anyhow::Result<()> {
    let control = Embedded::start(
        args.paths,
        args.input,
        args.listen,
        args.registry,
        args.registry_api,
        args.secrets,
    )
    .await?;
    // Tests and scripts read the bound addresses from standard output.
    if let Some(api) = control.registry_api {
        println!("serving the registry API on {api}");
    }
    println!("serving ADS on {}", control.addr);
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    control.stop().await
}

/// A control plane running in this process: `mesh-agent control-plane`, or the one
/// `mesh-agent run --mesh` embeds.
pub struct Embedded {
    pub addr: SocketAddr,
    pub registry_api: Option<SocketAddr>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Embedded {
    /// Loads the mesh (refusing an invalid one) and the registry, binds `listen` (and the
    /// registry API), serves, watches the files.
    pub async fn start(
        paths: Vec<PathBuf>,
        input: InputArgs,
        listen: SocketAddr,
        registry_file: Option<PathBuf>,
        registry_api: Option<SocketAddr>,
        secrets_file: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        let index = Arc::new(load(&paths, &input).map_err(|report| {
            for diagnostic in &report {
                eprintln!("{diagnostic}");
            }
            anyhow::anyhow!(
                "the mesh is not valid ({} problems); nothing served",
                report.len()
            )
        })?);
        let registry = match &registry_file {
            Some(file) => load_registry(file)?,
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
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen} for xDS"))?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let registry_api = match registry_api {
            Some(api) => {
                let api_listener = tokio::net::TcpListener::bind(api)
                    .await
                    .with_context(|| format!("cannot listen on {api} for the registry API"))?;
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
        let task = tokio::spawn(run_control_plane(
            server,
            publisher,
            listener,
            watched,
            stop.clone(),
        ));
        Ok(Self {
            addr,
            registry_api,
            stop,
            task,
        })
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.task.await.context("control plane task")?
    }
}

/// What the control plane serves and where it comes from.
struct Watched {
    paths: Vec<PathBuf>,
    input: InputArgs,
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
        match load(&self.paths, &self.input) {
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
            match load_registry(file) {
                Ok(registry) => {
                    if let Ok(mut shared) = self.shared.registry.lock() {
                        *shared = registry;
                    }
                }
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

    fn publish(&self, publisher: &mut Publisher) {
        let registry = self
            .shared
            .registry
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default();
        publisher.publish(MeshSource::Mesh(
            Arc::clone(&self.index),
            Arc::new(registry),
            Arc::clone(&self.secrets),
        ));
    }
}

fn load_registry(file: &Path) -> anyhow::Result<Registry> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read registry {}", file.display()))?;
    let registry: Registry =
        serde_json::from_str(&text).with_context(|| format!("registry {}", file.display()))?;
    registry
        .check()
        .with_context(|| format!("registry {}", file.display()))?;
    Ok(registry)
}

async fn run_control_plane(
    server: AdsServer,
    mut publisher: Publisher,
    listener: tokio::net::TcpListener,
    mut watched: Watched,
    stop: CancellationToken,
) -> anyhow::Result<()> {
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
    let mut seen = fingerprint(&watched.files());
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    let changed = Arc::clone(&watched.shared.changed);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now = fingerprint(&watched.files());
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
        .context("gRPC server task")?
        .context("gRPC server")?;
    Ok(())
}

/// (path, modified, length) of every file under `paths`: a change in any means reload.
fn fingerprint(paths: &[PathBuf]) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    let mut files = Vec::new();
    for path in paths {
        collect(path, &mut files);
    }
    files.sort();
    files
}

fn collect(path: &Path, files: &mut Vec<(PathBuf, Option<SystemTime>, u64)>) {
    let Ok(metadata) = std::fs::metadata(path) else {
        return;
    };
    if metadata.is_dir() {
        for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
            collect(&entry.path(), files);
        }
    } else {
        files.push((path.to_owned(), metadata.modified().ok(), metadata.len()));
    }
}
