//! mesh-agent: a sidecarless, eBPF-accelerated service mesh node agent.

use std::{io::IsTerminal, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use cli::{mesh, xds_dump};
use mesh_agent::{app, config, privileges};
use tracing_subscriber::EnvFilter;

mod cli;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc reads its options from this symbol (its `malloc_conf`, a C string pointer, under
/// the prefix the crate builds it with).
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &[u8; mesh_agent::heap::MALLOC_CONF.len()] = mesh_agent::heap::MALLOC_CONF;

#[derive(Parser)]
#[command(
    name = "mesh-agent",
    version,
    about = "Sidecarless service mesh node agent: eBPF redirect of pod traffic into a node proxy",
    long_about = "mesh-agent runs once per node. It attaches eBPF programs to the node's cgroup v2 \
        hierarchy that move the outbound TCP connections of enrolled pod network namespaces \
        into its node proxy, which relays them to the destination the application asked for.\n\n\
        Logging is controlled by RUST_LOG (default: info), e.g. RUST_LOG=mesh_agent=debug."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as text (coloured only on a terminal) or as one JSON object each, for log
    /// collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "MESH_AGENT_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: attach the redirect, serve the node proxy and the admin endpoint.
    ///
    /// Needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN), cgroup v2 and a kernel with BTF.
    /// The redirect is pinned in bpffs (bpffs_path) and stays attached when the agent exits: a
    /// new agent takes it over, even while the old one still runs (an upgrade without a gap).
    /// SIGHUP reloads the config file (exclusions and enrollment); SIGTERM or SIGINT close the
    /// listeners, drain live connections for proxy.drain_timeout and exit 0. `uninstall`
    /// detaches the redirect.
    Run {
        /// The agent's YAML configuration file (see docs/config.md).
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        #[command(flatten)]
        embedded: cli::control_plane::EmbeddedArgs,
        /// Take the mesh from this control plane (ADS), e.g. http://10.0.0.5:15010; overrides
        /// `xds.address` in the config file.
        #[arg(long, value_name = "URL")]
        control_plane: Option<String>,
    },
    /// Validate App Mesh definitions against the App Mesh API model and its rules; print
    /// every problem with file, resource and field path. Exit 0 if valid, 1 if not.
    Validate(mesh::ValidateArgs),
    /// Convert valid App Mesh definitions to another format: Kubernetes appmesh.k8s.aws/v1beta2
    /// manifests or App Mesh API JSON request files.
    Convert(mesh::ConvertArgs),
    /// Compile valid App Mesh definitions to the xDS resources a node agent gets, and print
    /// them as JSON (Envoy's config-dump form) for inspection.
    Compile(mesh::CompileArgs),
    /// Serve one virtual gateway standalone on this host (no eBPF, no privileges): its
    /// listener ports bound here, its gateway routes into the mesh. For a Deployment behind a
    /// load balancer, or any host.
    Gateway(cli::gateway::GatewayArgs),
    /// Serve App Mesh definitions to node agents over xDS (ADS, gRPC). Watches the files:
    /// a valid change is pushed to every agent, an invalid one is reported and the last good
    /// mesh keeps being served.
    ControlPlane(cli::control_plane::ControlPlaneArgs),
    /// Connect to an xDS server as a node agent and print the configuration it serves.
    XdsDump(xds_dump::XdsDumpArgs),
    /// Print the appmesh.k8s.aws/v1beta2 CustomResourceDefinitions generated from the App Mesh
    /// API model (the ones deploy/kubernetes/crds holds), or write one file per kind to --out.
    Crds {
        /// Directory to write `appmesh.k8s.aws_<plural>.yaml` files into.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Detach the redirect the agent of this configuration pinned (its cgroup's programs and
    /// maps in bpffs_path), once the agent is stopped (refused while its admin socket
    /// answers): pods then connect directly again.
    Uninstall {
        /// The agent's YAML configuration file (see docs/config.md).
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Check a configuration file and exit: 0 if it is valid, 1 with the offending key if not.
    CheckConfig {
        /// The agent's YAML configuration file (see docs/config.md).
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Validate(args) => {
            return if mesh::validate(args) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
        Command::Convert(args) => mesh::convert(args),
        Command::Compile(args) => mesh::compile(args),
        Command::ControlPlane(args) => cli::control_plane::run(args),
        Command::XdsDump(args) => xds_dump::run(args),
        Command::Run {
            config,
            embedded,
            control_plane,
        } => run(&config, embedded.options(), control_plane),
        Command::Gateway(args) => cli::gateway::run(args),
        Command::Crds { out } => mesh::crds(out.as_deref()),
        Command::Uninstall { config } => uninstall(&config),
        Command::CheckConfig { config } => check_config(&config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", cli::error_line(&error));
            ExitCode::FAILURE
        }
    }
}

/// `check-config`: the file as `run` would take it, and where the mesh would come from.
fn check_config(path: &std::path::Path) -> anyhow::Result<()> {
    let config = config::Config::load(path)?;
    let source = match &config.xds {
        Some(xds) => format!("mesh from {}", xds.address),
        None => {
            eprintln!(
                "warning: no xds.address: this agent serves a mesh only when started with --mesh or --control-plane"
            );
            "no mesh source".to_owned()
        }
    };
    println!(
        "{}: valid ({} namespaces to enroll, proxy on {}, {source})",
        path.display(),
        config.enrollment.netns.len(),
        config.proxy.outbound_addr
    );
    Ok(())
}

/// `uninstall`: removes the pins of the agent `config_path` configures.
fn uninstall(config_path: &std::path::Path) -> anyhow::Result<()> {
    let config = config::Config::load(config_path)?;
    // Detaching under a running agent would leave it proxying nothing while pods go direct.
    if std::os::unix::net::UnixStream::connect(&config.admin.socket).is_ok() {
        anyhow::bail!(
            "an agent is running (its admin.socket {} answers): stop it first",
            config.admin.socket.display()
        );
    }
    let cgroup = mesh_agent::redirect::cgroup::resolve(config.cgroup_path.as_deref())?;
    let pins = mesh_agent::redirect::pins::Pins::for_cgroup(&config.bpffs_path, &cgroup)?;
    let links = pins.remove()?;
    println!(
        "{}: {links} programs detached from {}, pins removed",
        pins.dir().display(),
        cgroup.display()
    );
    Ok(())
}

/// Logs on standard error, filtered by RUST_LOG (default info); colour codes only when it is
/// a terminal, so files and collectors get plain text.
fn init_logging(format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// The runtime the proxy runs on. One worker (the default) is a current-thread runtime: its
/// run queue is first in, first out, so a task woken by the running one waits behind those
/// already runnable. An HTTP/2 connection's task then writes the responses of every stream
/// that ran before it in one `writev`, where the multi-thread scheduler runs the woken task
/// next (its "LIFO slot") and the connection writes each response alone. Nothing is handed
/// between the thread that starts the agent and a worker either.
fn proxy_runtime(workers: usize) -> tokio::runtime::Builder {
    match workers {
        1 => tokio::runtime::Builder::new_current_thread(),
        workers => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(workers);
            builder
        }
    }
}

/// `run`: the agent, taking the mesh from the control plane `--control-plane` or the config
/// file names, or from one embedded in this process (`--mesh`).
fn run(
    config_path: &std::path::Path,
    embedded: Option<control_plane::Options>,
    control_plane: Option<String>,
) -> anyhow::Result<()> {
    let mut config = config::Config::load(config_path)?;
    if let Some(address) = control_plane {
        let tls = config.xds.as_ref().and_then(|xds| xds.tls.as_ref());
        mesh_xds::channel::check_address(&address, tls.is_some())
            .map_err(|error| anyhow::anyhow!("--control-plane {error}"))?;
        let xds = config.xds.get_or_insert_with(|| config::XdsConfig {
            address: address.clone(),
            node_id: None,
            virtual_nodes: Vec::new(),
            tls: None,
        });
        xds.address = address;
    }
    if embedded.is_some() && config.xds.is_some() {
        anyhow::bail!(
            "--mesh embeds a control plane; the config file also names one in xds.address: use one"
        );
    }
    // Before the runtime's threads start: they inherit what is kept.
    let by_process = config
        .enrollment
        .find_pods_by_process
        .then_some(&privileges::FIND_PODS_BY_PROCESS);
    privileges::keep_only(privileges::NODE_AGENT.iter().chain(by_process))
        .map_err(|e| anyhow::anyhow!("dropping capabilities: {e}"))?;
    let runtime = proxy_runtime(config.proxy.worker_threads)
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async {
        let Some(options) = embedded else {
            return app::run(config_path, config).await;
        };
        cli::control_plane::with_embedded(options, |address| {
            // The config names no control plane (refused above), so no node id or virtual
            // nodes either: the agent presents its host name and takes every virtual node's
            // resources.
            config.xds = Some(config::XdsConfig {
                address,
                node_id: None,
                virtual_nodes: Vec::new(),
                tls: None,
            });
            app::run(config_path, config)
        })
        .await
    })
}
