//! The Kubernetes source (`--kubernetes`): the control plane reads the App Mesh custom
//! resources (`appmesh.k8s.aws/v1beta2`), Namespaces, Pods, Services and EndpointSlices from
//! the API server (list and watch, through kube-rs's watcher and reflector stores) and
//! serves the mesh they make, with each node's pods (by podSelector) listed to that node's
//! agent ([`pods`]). A burst of changes is built once (debounced); a cluster whose
//! objects do not validate is reported on those objects ([`report`]) and the last good mesh
//! keeps being served.
mod build;
mod endpoints;
mod kinds;
mod pods;
mod report;
mod snapshot;
mod stores;

use std::{path::PathBuf, time::Duration};

use futures::StreamExt as _;
use kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};
use mesh_model::report::Diagnostic;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::{
    compile::{MeshIndex, ServiceEndpoints},
    load::InputOptions,
    placement::Placement,
};

/// After a change, how long the cluster must stay quiet before the mesh is built.
const QUIET: Duration = Duration::from_millis(200);
/// The longest a burst of changes delays a build.
const MAX_DELAY: Duration = Duration::from_secs(2);

/// Where the API server is.
#[derive(Clone, Debug, Default)]
pub struct KubernetesOptions {
    /// A kubeconfig file; without it, `KUBECONFIG`, `~/.kube/config`, or the in-cluster
    /// service account.
    pub kubeconfig: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    #[error("reading kubeconfig {}", path.display())]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("no Kubernetes configuration (KUBECONFIG, ~/.kube/config or in-cluster)")]
    Infer(#[source] kube::config::InferConfigError),
    #[error("the Kubernetes client")]
    Client(#[source] kube::Error),
}

/// A mesh built from the cluster: what the control plane serves next.
pub(crate) struct Update {
    pub(crate) index: MeshIndex,
    pub(crate) service_endpoints: ServiceEndpoints,
    /// Which pods run on which node.
    pub(crate) placement: Placement,
}

/// A client for the API server `options` name (no request is made yet).
pub(crate) async fn client(options: &KubernetesOptions) -> Result<Client, KubernetesError> {
    let config = match &options.kubeconfig {
        Some(path) => {
            let kubeconfig =
                Kubeconfig::read_from(path).map_err(|source| KubernetesError::Kubeconfig {
                    path: path.clone(),
                    source,
                })?;
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|source| KubernetesError::Kubeconfig {
                    path: path.clone(),
                    source,
                })?
        }
        None => Config::infer().await.map_err(KubernetesError::Infer)?,
    };
    Client::try_from(config).map_err(KubernetesError::Client)
}

/// Watches the cluster until `stop`, sending each mesh it makes that validates.
pub(crate) async fn run(
    client: Client,
    input: InputOptions,
    updates: mpsc::Sender<Update>,
    stop: CancellationToken,
) {
    let (stores, mut changes) = stores::watch(client.clone());
    let mut reports = report::Reports::new(client);
    // Nothing is built from a partial list: every store has had its first list.
    tokio::select! {
        () = stores.ready() => {}
        () = drain_until_stopped(&mut changes, &stop) => return,
    }
    info!("Kubernetes objects listed; building the mesh");
    loop {
        let snapshot = stores.snapshot();
        let built = {
            let input = input.clone();
            tokio::task::spawn_blocking(move || build::build(&snapshot, &input)).await
        };
        match built {
            Ok(built) => {
                reports.report(&built.verdicts).await;
                match built.mesh {
                    Ok(update) => {
                        info!(
                            service_endpoints = update.service_endpoints.addresses().count(),
                            pods = update.placement.pods(),
                            "mesh built from the cluster"
                        );
                        if updates.send(update).await.is_err() {
                            return;
                        }
                    }
                    Err(report) => rejected(&report),
                }
            }
            Err(error) => error!(%error, "building the mesh from the cluster failed"),
        }
        if !debounced(&mut changes, &stop).await {
            return;
        }
    }
}

fn rejected(report: &[Diagnostic]) {
    for diagnostic in report.iter().filter(|d| d.is_error()) {
        warn!(%diagnostic, "cluster change rejected");
    }
    error!(
        problems = report.len(),
        "cluster change rejected; still serving the last good mesh"
    );
}

/// Waits for a change, then for the cluster to be quiet for [`QUIET`] (at most
/// [`MAX_DELAY`] from the first change). False when stopped.
async fn debounced(changes: &mut stores::Changes, stop: &CancellationToken) -> bool {
    tokio::select! {
        change = changes.next() => if change.is_none() { return false },
        () = stop.cancelled() => return false,
    }
    let deadline = tokio::time::Instant::now() + MAX_DELAY;
    loop {
        let quiet = tokio::time::sleep(QUIET);
        tokio::select! {
            change = changes.next() => if change.is_none() { return false },
            () = quiet => return true,
            () = tokio::time::sleep_until(deadline) => return true,
            () = stop.cancelled() => return false,
        }
    }
}

/// Keeps the watches going (they fill the stores) until `stop`.
async fn drain_until_stopped(changes: &mut stores::Changes, stop: &CancellationToken) {
    loop {
        tokio::select! {
            change = changes.next() => if change.is_none() { return },
            () = stop.cancelled() => return,
        }
    }
}
