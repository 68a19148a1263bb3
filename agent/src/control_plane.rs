//! `mesh-agent control-plane`: serves App Mesh definitions as xDS (ADS over gRPC) to node
//! agents. Watches the definition files; a change that validates is compiled and pushed, a
//! change that does not is reported and the last good mesh keeps being served.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use clap::Args;
use mesh_model::report::Diagnostic;
use mesh_xds::{
    compile::MeshIndex,
    server::{AdsServer, MeshSource, Publisher},
};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::mesh_cmd::{self, InputArgs};

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
    MeshIndex::new(&resources).map_err(|e| vec![Diagnostic::error(e.to_string())])
}

async fn serve(args: ControlPlaneArgs) -> anyhow::Result<()> {
    let control = Embedded::start(args.paths, args.input, args.listen).await?;
    // Tests and scripts read the bound address from the first line of standard output.
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
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Embedded {
    /// Loads the mesh (refusing an invalid one), binds `listen`, serves, watches the files.
    pub async fn start(
        paths: Vec<PathBuf>,
        input: InputArgs,
        listen: SocketAddr,
    ) -> anyhow::Result<Self> {
        let index = load(&paths, &input).map_err(|report| {
            for diagnostic in &report {
                eprintln!("{diagnostic}");
            }
            anyhow::anyhow!(
                "the mesh is not valid ({} problems); nothing served",
                report.len()
            )
        })?;
        let (server, publisher) = AdsServer::new(MeshSource::Mesh(index));
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen} for xDS"))?;
        let addr = listener.local_addr()?;
        info!(%addr, ?paths, "control plane serving");
        let stop = CancellationToken::new();
        let task = tokio::spawn(run_control_plane(
            server,
            publisher,
            listener,
            paths,
            input,
            stop.clone(),
        ));
        Ok(Self { addr, stop, task })
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.task.await.context("control plane task")?
    }
}

async fn run_control_plane(
    server: AdsServer,
    mut publisher: Publisher,
    listener: tokio::net::TcpListener,
    paths: Vec<PathBuf>,
    input: InputArgs,
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
    let mut seen = fingerprint(&paths);
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now = fingerprint(&paths);
                if now != seen {
                    seen = now;
                    reload(&paths, &input, &mut publisher);
                }
            }
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

fn reload(paths: &[PathBuf], input: &InputArgs, publisher: &mut Publisher) {
    match load(paths, input) {
        Ok(index) => publisher.publish(MeshSource::Mesh(index)),
        Err(report) => {
            for diagnostic in &report {
                warn!(%diagnostic, "mesh change rejected");
            }
            error!(
                problems = report.len(),
                "mesh change rejected; still serving the last good mesh"
            );
        }
    }
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
