//! A wire between two test nodes: a veth pair from one node namespace to the other, with
//! routes so that each node's pods reach the other's, as two machines on one network.
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::bail;

use crate::{
    capture::Capture,
    netns::{self, NETNS_DIR},
    node::Node,
};

/// The veth pair between nodes A and B, deleted on drop (the namespaces go with the nodes).
///
/// Addressing: the pair is the /30 10.78.`lo`.(4 × (`hi` − `lo` − 1)), where `lo` < `hi` are
/// the node numbers; the lower-numbered node takes the first address (for nodes 1 and 2:
/// 10.78.1.1 and 10.78.1.2). Each node routes the other's pod subnet over the link with its
/// own bridge address as the source, so a node's traffic to the other's pods comes from
/// 10.77.`n`.1 — the node's address, as between real machines. Both nodes forward.
///
/// Interfaces: `to-node<b>` in A's namespace and `to-node<a>` in B's.
#[derive(Debug)]
pub struct NodeLink {
    a_netns: String,
    a_interface: String,
    b_interface: String,
    a_addr: Ipv4Addr,
    b_addr: Ipv4Addr,
}

impl NodeLink {
    /// Wires `a` to `b` (nodes with different numbers).
    pub fn connect(a: &Node, b: &Node) -> anyhow::Result<Self> {
        let (lo, hi) = (a.number().min(b.number()), a.number().max(b.number()));
        if lo == hi {
            bail!(
                "nodes {} and {} have the same number {lo}: use Node::create_numbered",
                a.tag(),
                b.tag()
            );
        }
        if hi - lo > 64 {
            bail!("node numbers {lo} and {hi} are more than 64 apart");
        }
        let base = 4 * (hi - lo - 1);
        let (lo_addr, hi_addr) = (
            Ipv4Addr::new(10, 78, lo, base + 1),
            Ipv4Addr::new(10, 78, lo, base + 2),
        );
        let (a_addr, b_addr) = if a.number() == lo {
            (lo_addr, hi_addr)
        } else {
            (hi_addr, lo_addr)
        };
        let link = Self {
            a_netns: a.netns().name().to_owned(),
            a_interface: format!("to-node{}", b.number()),
            b_interface: format!("to-node{}", a.number()),
            a_addr,
            b_addr,
        };
        // From here on, a failure deletes the pair (drop).
        a.netns().ip(&[
            "link",
            "add",
            &link.a_interface,
            "type",
            "veth",
            "peer",
            "name",
            &link.b_interface,
            "netns",
            b.netns().name(),
        ])?;
        for (node, interface, addr, peer, other) in [
            (a, &link.a_interface, a_addr, b_addr, b),
            (b, &link.b_interface, b_addr, a_addr, a),
        ] {
            let ns = node.netns();
            ns.ip(&["addr", "add", &format!("{addr}/30"), "dev", interface])?;
            ns.ip(&["link", "set", interface, "up"])?;
            ns.ip(&[
                "route",
                "add",
                &other.subnet(),
                "via",
                &peer.to_string(),
                "dev",
                interface,
                "src",
                &node.ip().to_string(),
            ])?;
            enable_forwarding(ns.name())?;
        }
        Ok(link)
    }

    /// The link's interface in node A's namespace.
    pub fn interface(&self) -> &str {
        &self.a_interface
    }

    /// The link's interface in node B's namespace.
    pub fn peer_interface(&self) -> &str {
        &self.b_interface
    }

    /// The transit addresses of A's and B's ends.
    pub fn addrs(&self) -> (Ipv4Addr, Ipv4Addr) {
        (self.a_addr, self.b_addr)
    }

    fn a_netns_path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.a_netns)
    }

    /// Starts tcpdump on A's end of the link, writing a pcap to `file`, keeping the packets
    /// that match the pcap `filter` ("" for all, e.g. "tcp port 8080"). Stop it with
    /// [`Capture::stop`], which returns the packets.
    pub fn capture(&self, file: &Path, filter: &str) -> anyhow::Result<Capture> {
        Capture::start(&self.a_netns_path(), &self.a_interface, file, filter)
    }
}

impl Drop for NodeLink {
    fn drop(&mut self) {
        // Deleting one end deletes the pair and the routes over it. When A's namespace is
        // already gone, so is the pair.
        if self.a_netns_path().exists() {
            let _ = netns::run(
                "ip",
                &["-n", &self.a_netns, "link", "del", &self.a_interface],
            );
        }
    }
}

/// net.ipv4.ip_forward=1 in the named namespace (its own; the machine's is untouched).
fn enable_forwarding(netns_name: &str) -> anyhow::Result<()> {
    netns::run(
        "ip",
        &[
            "netns",
            "exec",
            netns_name,
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.ip_forward=1",
        ],
    )
}
