//! `mesh-agent xds-dump`: connect to an xDS server as a node agent would, and print the
//! configuration it gets — once synced, or every accepted change with `--watch`.
use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::Args;
use mesh_xds::{
    channel::check_address,
    client::{self, Settings, XdsState},
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::xds_tls::XdsTlsArgs;

#[derive(Args)]
pub struct XdsDumpArgs {
    /// The ADS server, e.g. http://127.0.0.1:15010.
    #[arg(long, value_name = "URL")]
    control_plane: String,
    #[command(flatten)]
    tls: XdsTlsArgs,
    /// Node id to present.
    #[arg(long, default_value = "xds-dump")]
    node: String,
    /// Virtual nodes served by this node (`mesh/name`), sent as node metadata; without any,
    /// the server sends what every virtual node needs.
    #[arg(long = "virtual-node", value_name = "MESH/NAME")]
    virtual_nodes: Vec<String>,
    /// Keep running and print every accepted change.
    #[arg(long)]
    watch: bool,
    /// Give up if not synced within this many seconds.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
}

pub fn run(args: XdsDumpArgs) -> anyhow::Result<()> {
    // The client would retry an unusable address forever ("transport error"): said once here.
    check_address(&args.control_plane, args.tls.config().is_some())
        .map_err(|error| anyhow::anyhow!("--control-plane {error}"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(dump(args))
}

async fn dump(args: XdsDumpArgs) -> anyhow::Result<()> {
    let (sender, mut state) = watch::channel(Arc::new(XdsState::default()));
    let stop = CancellationToken::new();
    let tls = args.tls.config().map(|tls| tls.settings());
    let settings = Settings {
        endpoint: args.control_plane.clone(),
        tls,
        node: client::node(&args.node, &args.virtual_nodes),
    };
    let client = tokio::spawn(client::run(settings, sender, stop.clone()));
    let synced = tokio::time::timeout(
        Duration::from_secs(args.timeout),
        state.wait_for(|s| s.is_synced() && !s.versions.is_empty()),
    )
    .await
    .with_context(|| {
        format!(
            "not synced with {} within {}s",
            args.control_plane, args.timeout
        )
    })?
    .map(|s| Arc::clone(&s))
    .context("xDS client stopped")?;
    println!("{}", synced.summary());
    if args.watch {
        let mut last = synced;
        while state.changed().await.is_ok() {
            let now = Arc::clone(&state.borrow_and_update());
            if now.is_synced() && now.versions != last.versions {
                println!("{}", now.summary());
                last = now;
            }
        }
    }
    stop.cancel();
    let _ = client.await;
    Ok(())
}
