//! xDS resource names for App Mesh objects. Readable, stable, and unique per mesh.

/// The cluster of one listener port of a virtual node: `mesh/node/port`.
pub fn cluster(mesh: &str, node: &str, port: i32) -> String {
    format!("{mesh}/{node}/{port}")
}

/// The outbound listener of a virtual node: `mesh/node/outbound`.
pub fn outbound_listener(mesh: &str, node: &str) -> String {
    format!("{mesh}/{node}/outbound")
}

/// The outbound routes of a virtual node for one destination port: `mesh/node/outbound/port`.
pub fn outbound_routes(mesh: &str, node: &str, port: i32) -> String {
    format!("{mesh}/{node}/outbound/{port}")
}

/// The inbound listener of a virtual node: `mesh/node/inbound`.
pub fn inbound_listener(mesh: &str, node: &str) -> String {
    format!("{mesh}/{node}/inbound")
}

/// The local application behind one listener port of a virtual node: `mesh/node/inbound/port`.
pub fn inbound_cluster(mesh: &str, node: &str, port: i32) -> String {
    format!("{mesh}/{node}/inbound/{port}")
}
