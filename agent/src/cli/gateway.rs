//! `mesh-agent gateway`: one virtual gateway served standalone, its mesh from a control
//! plane (remote, or embedded with --mesh).
use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use anyhow::Context as _;
use clap::Args;
use mesh_agent::{
    app::{self, GatewayOptions},
    config::{self, XdsConfig},
    privileges,
};
use mesh_xds::{channel::check_address, names};

use super::{
    control_plane::{EmbeddedArgs, with_embedded},
    xds_tls::XdsTlsArgs,
};

#[derive(Args)]
pub struct GatewayArgs {
    /// The virtual gateway to serve: mesh/name.
    #[arg(long, value_name = "MESH/NAME")]
    virtual_gateway: String,
    #[command(flatten)]
    embedded: EmbeddedArgs,
    /// Take the mesh from this control plane (ADS), e.g. http://10.0.0.5:15010.
    #[arg(long, value_name = "URL", required_unless_present_any = ["mesh", "kubernetes"])]
    control_plane: Option<String>,
    #[command(flatten)]
    tls: XdsTlsArgs,
    /// The node id presented to the control plane; default: the host name.
    #[arg(long, value_name = "ID")]
    node_id: Option<String>,
    /// The address the gateway's listener ports are bound on.
    #[arg(long, default_value = "0.0.0.0", value_name = "IP")]
    listen: IpAddr,
    /// Where /metrics, /healthz and /readyz are served.
    #[arg(long, default_value = "127.0.0.1:15021", value_name = "ADDR")]
    admin: SocketAddr,
    /// How long a gateway waits for an upstream connection.
    #[arg(long, default_value = "5s", value_parser = config::parse_duration, value_name = "DURATION")]
    connect_timeout: Duration,
    /// On SIGTERM, how long live connections may finish.
    #[arg(long, default_value = "5s", value_parser = config::parse_duration, value_name = "DURATION")]
    drain_timeout: Duration,
}

pub fn run(args: GatewayArgs) -> anyhow::Result<()> {
    let (mesh, name) = args
        .virtual_gateway
        .split_once('/')
        .filter(|(mesh, name)| !mesh.is_empty() && !name.is_empty() && !name.contains('/'))
        .with_context(|| {
            format!(
                "--virtual-gateway {:?}: write it mesh/name",
                args.virtual_gateway
            )
        })?;
    let gateway = names::virtual_gateway(mesh, name);
    let tls = args.tls.config();
    if let Some(address) = &args.control_plane {
        check_address(address, tls.is_some())
            .map_err(|error| anyhow::anyhow!("--control-plane {error}"))?;
    }
    let options = |address: String| GatewayOptions {
        gateway: gateway.clone(),
        listen: args.listen,
        admin: args.admin,
        xds: XdsConfig {
            address,
            node_id: args.node_id.clone(),
            virtual_nodes: Vec::new(),
            tls: tls.clone(),
        },
        connect_timeout: args.connect_timeout,
        drain_timeout: args.drain_timeout,
    };
    // Before the runtime's threads start: they inherit what is kept.
    privileges::keep_only(privileges::GATEWAY).context("dropping capabilities")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        match (args.embedded.options(), &args.control_plane) {
            (Some(embedded), _) => {
                with_embedded(embedded, |address| app::run_gateway(options(address))).await
            }
            (None, Some(address)) => app::run_gateway(options(address.clone())).await,
            // clap requires one of the two.
            (None, None) => anyhow::bail!("give --mesh or --control-plane"),
        }
    })
}
