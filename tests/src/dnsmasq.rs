//! dnsmasq on a test node's address, port 53: the resolver the node's pods name in their
//! resolv.conf ([`crate::Node::run_in_pod_resolving`]), or the agent's own. It answers only
//! what its arguments give it (no upstream, no /etc/hosts).
use std::time::Duration;

use crate::{node::Node, process::Proc};

/// Starts dnsmasq on `node`'s address with `records` (dnsmasq options such as
/// `--host-record=NAME,IP`, `--txt-record=…`, `--local-ttl=N`, `--addn-hosts=FILE`) and waits
/// until it listens.
pub fn start(node: &Node, records: &[String]) -> anyhow::Result<Proc> {
    let mut command = node.node_command("dnsmasq")?;
    command.args([
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        "--user=root",
        "--pid-file=",
        "--log-facility=/dev/null",
    ]);
    command.arg(format!("--listen-address={}", node.ip()));
    command.args(records);
    let server = Proc::spawn("dnsmasq", command)?;
    node.wait_for_listener((node.ip(), 53).into(), Duration::from_secs(30))?;
    Ok(server)
}
