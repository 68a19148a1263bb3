//! `mesh-agent xds-dump`: connect to an xDS server as a node agent would, and print the
//! configuration it gets — once synced, or every accepted change with `--watch`.
use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::Args;
use envoy_types::pb::{
    envoy::config::core::v3::Node,
    google::protobuf::{ListValue, Struct, Value, value::Kind},
};
use mesh_xds::client::{self, Settings, XdsState};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Args)]
pub struct XdsDumpArgs {
    /// The ADS server, e.g. http://127.0.0.1:15010.
    #[arg(long, value_name = "URL")]
    control_plane: String,
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
    let settings = Settings {
        endpoint: args.control_plane.clone(),
        node: node(&args.node, &args.virtual_nodes),
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
    println!("{}", summary(&synced));
    if args.watch {
        let mut last = synced;
        while state.changed().await.is_ok() {
            let now = Arc::clone(&state.borrow_and_update());
            if now.is_synced() && now.versions != last.versions {
                println!("{}", summary(&now));
                last = now;
            }
        }
    }
    stop.cancel();
    let _ = client.await;
    Ok(())
}

fn node(id: &str, virtual_nodes: &[String]) -> Node {
    let metadata = (!virtual_nodes.is_empty()).then(|| Struct {
        fields: [(
            "virtual_nodes".to_owned(),
            Value {
                kind: Some(Kind::ListValue(ListValue {
                    values: virtual_nodes
                        .iter()
                        .map(|v| Value {
                            kind: Some(Kind::StringValue(v.clone())),
                        })
                        .collect(),
                })),
            },
        )]
        .into(),
    });
    Node {
        id: id.to_owned(),
        cluster: "mesh-agent".into(),
        metadata,
        ..Default::default()
    }
}

/// One line of JSON: per type (short name), its version and resource names.
fn summary(state: &XdsState) -> String {
    let types: serde_json::Map<String, serde_json::Value> = state
        .resources
        .by_type
        .iter()
        .map(|(type_url, resources)| {
            let short = type_url.rsplit('.').next().unwrap_or(type_url);
            (
                short.to_owned(),
                serde_json::json!({
                    "version": state.versions.get(type_url),
                    "names": resources.keys().collect::<Vec<_>>(),
                }),
            )
        })
        .collect();
    serde_json::Value::Object(types).to_string()
}
