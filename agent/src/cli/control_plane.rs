//! `mesh-agent control-plane`: serves App Mesh definitions as xDS (ADS over gRPC) to node
//! agents. Watches the definition files; a change that validates is compiled and pushed, a
//! change that does not is reported and the last good mesh keeps being served.
use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context as _;
use clap::Args;
use control_plane::{
    ControlPlane, Options, RegistryApiOptions, ServerTlsOptions, identity::AutoMtlsOptions,
    kubernetes::KubernetesOptions, runtime::StartError,
};
use tokio::signal::unix::{SignalKind, signal};

use super::mesh::InputArgs;

#[derive(Args)]
pub struct ControlPlaneArgs {
    /// Files or directories of App Mesh definitions (any format `validate` reads). Repeatable.
    #[arg(
        long = "mesh",
        required_unless_present = "kubernetes",
        conflicts_with = "kubernetes",
        value_name = "PATH"
    )]
    paths: Vec<PathBuf>,
    #[command(flatten)]
    kubernetes: KubernetesArgs,
    /// Address to serve ADS (gRPC) on; port 0 picks a free port, printed on start.
    #[arg(long, default_value = "127.0.0.1:15010", value_name = "ADDR")]
    listen: SocketAddr,
    /// Service registry (Cloud Map stand-in) file: JSON `{"namespaces": {NS: {SERVICE:
    /// {INSTANCE_ID: {ATTRIBUTE: VALUE}}}}}`; watched like the mesh (an edit replaces what
    /// the API registered), and where the registry API's changes are kept across restarts.
    #[arg(long, value_name = "FILE")]
    registry: Option<PathBuf>,
    /// Serve the Cloud Map–style registry API (RegisterInstance, DeregisterInstance,
    /// DiscoverInstances) on this address; port 0 picks one, printed on start.
    #[arg(long, value_name = "ADDR", requires = "registry_api_token_file")]
    registry_api: Option<SocketAddr>,
    /// The bearer token registry API callers must send (`Authorization: Bearer <token>`),
    /// read from this file (surrounding whitespace ignored).
    #[arg(long, value_name = "FILE", requires = "registry_api")]
    registry_api_token_file: Option<PathBuf>,
    /// SDS secrets file (stand-in for a SPIRE agent): JSON `{"secrets": {NAME:
    /// {"certificateChain": PEM, "privateKey": PEM} | {"trustedCa": PEM}}}`; served to the
    /// nodes whose TLS contexts name them; it and the PEM files are watched (rotation).
    #[arg(long, value_name = "FILE")]
    secrets: Option<PathBuf>,
    #[command(flatten)]
    auto_mtls: AutoMtlsArgs,
    #[command(flatten)]
    tls: ServerTlsArgs,
    #[command(flatten)]
    input: InputArgs,
}

/// TLS on the ADS port, and node authentication.
#[derive(Args)]
struct ServerTlsArgs {
    /// Serve ADS (and certificate signing) over TLS with this certificate (PEM chain); agents
    /// then connect to https://.
    #[arg(long = "tls-cert", value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long = "tls-key", value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Authenticate node agents: each must present a certificate this CA (PEM) signed, naming
    /// the node id it connects as (spiffe://<trust domain>/node/<id>, or a DNS name that is
    /// the id); it gets only that node's configuration and may have certificates signed only
    /// as that node.
    #[arg(long = "node-ca", value_name = "FILE", requires = "tls_cert")]
    node_ca: Option<PathBuf>,
}

impl ServerTlsArgs {
    fn options(&self) -> Option<ServerTlsOptions> {
        Some(ServerTlsOptions {
            certificate: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            client_ca: self.node_ca.clone(),
        })
    }
}

/// The Kubernetes source: the mesh from the cluster's App Mesh objects (docs/kubernetes.md).
#[derive(Args)]
pub struct KubernetesArgs {
    /// Read the mesh from the Kubernetes API (App Mesh v1beta2 objects, Namespaces, Pods,
    /// Services, EndpointSlices), watching it; instead of --mesh.
    #[arg(long)]
    kubernetes: bool,
    /// With --kubernetes: this kubeconfig; without it, KUBECONFIG, ~/.kube/config or the
    /// in-cluster service account.
    #[arg(long, value_name = "FILE", requires = "kubernetes")]
    kubeconfig: Option<PathBuf>,
}

impl KubernetesArgs {
    fn options(&self) -> Option<KubernetesOptions> {
        self.kubernetes.then(|| KubernetesOptions {
            kubeconfig: self.kubeconfig.clone(),
        })
    }
}

/// A control plane embedded in the agent's process (`run --mesh`, `gateway --mesh`).
#[derive(Args)]
pub struct EmbeddedArgs {
    /// Embed a control plane serving these App Mesh definitions (files or directories, any
    /// format `validate` reads) and take the mesh from it; instead of a control plane's
    /// address.
    #[arg(
        long = "mesh",
        value_name = "PATH",
        conflicts_with_all = ["control_plane", "kubernetes"]
    )]
    mesh: Vec<PathBuf>,
    /// Embed a control plane reading the Kubernetes API (as `control-plane --kubernetes`).
    #[command(flatten)]
    kubernetes: KubernetesArgs,
    /// With --mesh: the Cloud Map stand-in's instances (JSON, watched), as for
    /// `control-plane --registry`.
    #[arg(long, value_name = "FILE", requires = "mesh")]
    registry: Option<PathBuf>,
    /// With --mesh: SDS secrets (JSON naming PEM files, watched), as for
    /// `control-plane --secrets`.
    #[arg(long, value_name = "FILE", requires = "mesh")]
    secrets: Option<PathBuf>,
    /// With --mesh: automatic mTLS, as for `control-plane`.
    #[command(flatten)]
    auto_mtls: AutoMtlsArgs,
    /// With --mesh: unknown fields in Kubernetes resources are ignored with a note, as the
    /// CRDs and the controller do (as for `validate --lenient`).
    #[arg(long, requires = "mesh")]
    lenient: bool,
}

impl EmbeddedArgs {
    /// The embedded control plane's options, if --mesh or --kubernetes asks for one (on a
    /// free loopback port).
    pub fn options(&self) -> Option<Options> {
        let kubernetes = self.kubernetes.options();
        // In the agent's process, reached on loopback only (no TLS, no registry API).
        (!self.mesh.is_empty() || kubernetes.is_some()).then(|| Options {
            input: control_plane::InputOptions {
                lenient: self.lenient,
                ..control_plane::InputOptions::default()
            },
            registry: self.registry.clone(),
            secrets: self.secrets.clone(),
            auto_mtls: self.auto_mtls.options(),
            kubernetes,
            ..Options::loopback(self.mesh.clone())
        })
    }
}

/// Runs `serve` with the address of a control plane started in this process from
/// `options`, and stops that control plane after.
pub async fn with_embedded<F, Fut>(options: Options, serve: F) -> anyhow::Result<()>
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let embedded = start(options).await?;
    let served = serve(format!("http://{}", embedded.addr)).await;
    let stopped = embedded.stop().await;
    served?;
    Ok(stopped?)
}

/// Automatic mTLS: on when a CA directory is given.
#[derive(Args, Clone)]
pub struct AutoMtlsArgs {
    /// Turn on automatic mutual TLS between meshed workloads (STRICT unless a mesh is listed
    /// by --auto-mtls-permissive), with the CA in this directory: `ca.pem` and `ca.key`
    /// (made there at first start when absent; an external CA's intermediate and key work
    /// too, with its roots in `trust.pem`). Agents make their workloads' keys and have them
    /// signed over the xDS connection.
    #[arg(long = "auto-mtls-ca-dir", value_name = "DIR")]
    ca_dir: Option<PathBuf>,
    /// The trust domain of workload identities (`spiffe://DOMAIN/mesh/M/virtualNode/N`).
    #[arg(
        long,
        default_value = "mesh.local",
        value_name = "DOMAIN",
        requires = "ca_dir"
    )]
    trust_domain: String,
    /// A mesh whose destinations also take plain text (callers outside the mesh, during a
    /// migration). Repeatable.
    #[arg(
        long = "auto-mtls-permissive",
        value_name = "MESH",
        requires = "ca_dir"
    )]
    permissive: Vec<String>,
    /// How long workload certificates are valid (agents renew at half); e.g. 24h, 90m.
    #[arg(long, default_value = "24h", value_parser = mesh_agent::config::parse_duration, requires = "ca_dir")]
    certificate_lifetime: std::time::Duration,
}

impl AutoMtlsArgs {
    pub fn options(&self) -> Option<AutoMtlsOptions> {
        Some(AutoMtlsOptions {
            ca_dir: self.ca_dir.clone()?,
            trust_domain: self.trust_domain.clone(),
            permissive_meshes: self.permissive.iter().cloned().collect(),
            lifetime: self.certificate_lifetime,
        })
    }
}

impl ControlPlaneArgs {
    fn options(&self) -> anyhow::Result<Options> {
        let registry_api = match (self.registry_api, &self.registry_api_token_file) {
            (Some(listen), Some(file)) => Some(RegistryApiOptions {
                listen,
                token: read_token(file)?,
            }),
            // clap requires the two together.
            _ => None,
        };
        Ok(Options {
            paths: self.paths.clone(),
            input: self.input.options(),
            listen: self.listen,
            registry: self.registry.clone(),
            registry_api,
            secrets: self.secrets.clone(),
            auto_mtls: self.auto_mtls.options(),
            tls: self.tls.options(),
            kubernetes: self.kubernetes.options(),
        })
    }
}

fn read_token(file: &std::path::Path) -> anyhow::Result<String> {
    let token = std::fs::read_to_string(file)
        .with_context(|| format!("--registry-api-token-file {}", file.display()))?
        .trim()
        .to_owned();
    if token.len() < 16 {
        anyhow::bail!(
            "--registry-api-token-file {}: the token must be at least 16 characters",
            file.display()
        );
    }
    Ok(token)
}

pub fn run(args: ControlPlaneArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(args.options()?))
}

async fn serve(options: Options) -> anyhow::Result<()> {
    let control = start(options).await?;
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
    Ok(control.stop().await?)
}

/// Starts a control plane; an invalid mesh's report goes to standard error, one line per
/// problem, before the error that nothing is served.
pub async fn start(options: Options) -> anyhow::Result<ControlPlane> {
    ControlPlane::start(options).await.map_err(|error| {
        if let StartError::InvalidMesh(report) = &error {
            for diagnostic in report {
                eprintln!("{diagnostic}");
            }
        }
        anyhow::Error::from(error)
    })
}
