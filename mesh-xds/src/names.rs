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

/// The ingress listener (and its routes) of a virtual gateway port: `mesh/gateway/ingress/port`.
pub fn gateway_ingress(mesh: &str, gateway: &str, port: i32) -> String {
    format!("{mesh}/{gateway}/ingress/{port}")
}

/// The internal listener, its routes and the cluster that reaches it, through which a virtual
/// gateway hands requests to virtual services: `mesh/gateway/internal`.
pub fn gateway_internal(mesh: &str, gateway: &str) -> String {
    format!("{mesh}/{gateway}/internal")
}
