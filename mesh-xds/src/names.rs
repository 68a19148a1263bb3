//! xDS resource names for App Mesh objects. Readable, stable, and unique per mesh. Every name
//! form is built here, and every one either end reads something back from is parsed here, so
//! the two cannot drift apart.
use std::fmt::Write;

/// A virtual node as the data plane names it: `mesh/node`.
pub fn virtual_node(mesh: &str, node: &str) -> String {
    format!("{mesh}/{node}")
}

/// A virtual node's identity in certificates (a URI SAN):
/// `spiffe://<trust domain>/mesh/<mesh>/virtualNode/<node>`.
pub fn spiffe_id(trust_domain: &str, mesh: &str, node: &str) -> String {
    format!("spiffe://{trust_domain}/mesh/{mesh}/virtualNode/{node}")
}

/// A virtual gateway's identity in certificates:
/// `spiffe://<trust domain>/mesh/<mesh>/virtualGateway/<gateway>`.
pub fn gateway_spiffe_id(trust_domain: &str, mesh: &str, gateway: &str) -> String {
    format!("spiffe://{trust_domain}/mesh/{mesh}/virtualGateway/{gateway}")
}

/// A node agent's identity toward the control plane, in its client certificate:
/// `spiffe://<trust domain>/node/<node id>`.
pub fn node_spiffe_id(trust_domain: &str, node: &str) -> String {
    format!("spiffe://{trust_domain}/node/{node}")
}

/// The node id a [`node_spiffe_id`] names.
pub fn node_of_spiffe_id(uri: &str) -> Option<&str> {
    let path = uri.strip_prefix("spiffe://")?.split_once('/')?.1;
    let node = path.strip_prefix("node/")?;
    (!node.is_empty() && !node.contains('/')).then_some(node)
}

/// The workload a [`spiffe_id`] or [`gateway_spiffe_id`] names, as the data plane names it:
/// `mesh/node` ([`virtual_node`]) or `mesh/gateway/name` ([`virtual_gateway`]).
pub fn workload_of_spiffe_id(uri: &str) -> Option<String> {
    let path = uri.strip_prefix("spiffe://")?.split_once('/')?.1;
    let mut parts = path.split('/');
    let (root, mesh, kind, name) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if root != "mesh" || mesh.is_empty() || name.is_empty() || parts.next().is_some() {
        return None;
    }
    match kind {
        "virtualNode" => Some(virtual_node(mesh, name)),
        "virtualGateway" => Some(virtual_gateway(mesh, name)),
        _ => None,
    }
}

/// The SDS name of a virtual node's automatic mTLS certificate: never sent by the control
/// plane; the agent that runs the node's workloads makes the key and has it signed.
pub fn identity_secret(spiffe_id: &str) -> String {
    format!("{IDENTITY_SECRET}{spiffe_id}")
}

/// The SPIFFE ID an [`identity_secret`] name asks a certificate for.
pub fn spiffe_id_of_identity_secret(name: &str) -> Option<&str> {
    name.strip_prefix(IDENTITY_SECRET)
}

const IDENTITY_SECRET: &str = "mesh-agent/identity/";

/// The SDS name of a certificate that cannot exist here (an ACM certificate off AWS): a
/// listener naming it refuses every connection instead of serving plain text (fail closed).
pub fn unavailable_secret(what: &str) -> String {
    format!("{UNAVAILABLE_SECRET}{what}")
}

/// What an [`unavailable_secret`] name stands for.
pub fn unavailable_secret_reason(name: &str) -> Option<&str> {
    name.strip_prefix(UNAVAILABLE_SECRET)
}

const UNAVAILABLE_SECRET: &str = "mesh-agent/unavailable/";

/// The SDS name of a trust domain's CA bundle (automatic mTLS), served by the control plane.
pub fn trust_bundle_secret(trust_domain: &str) -> String {
    format!("mesh-agent/trust/{trust_domain}")
}

/// The cluster of one listener port of a virtual node: `mesh/node/port`.
pub fn cluster(mesh: &str, node: &str, port: i32) -> String {
    let mut name = String::new();
    write_cluster(&mut name, mesh, node, port);
    name
}

/// [`cluster`] written over `name` (no allocation when it is large enough: a compile names
/// every listener of every virtual node to look each up).
pub fn write_cluster(name: &mut String, mesh: &str, node: &str, port: i32) {
    name.clear();
    name.reserve(mesh.len() + node.len() + 12);
    name.push_str(mesh);
    name.push('/');
    name.push_str(node);
    name.push('/');
    // Writing to a String cannot fail.
    let _ = write!(name, "{port}");
}

/// The port of a cluster named by [`cluster`]; none for its copies ([`caller_copy`],
/// [`gateway_copy`], [`gateway_tls_copy`]), whose names end in the caller or gateway.
pub fn cluster_port(name: &str) -> Option<i32> {
    name.rsplit('/').next()?.parse().ok()
}

/// The `(mesh, node)` a cluster named by [`cluster`] reaches (not its copies).
pub fn virtual_node_of_cluster(name: &str) -> Option<(&str, &str)> {
    cluster_port(name)?;
    let mut parts = name.splitn(3, '/');
    let (mesh, node, _port) = (parts.next()?, parts.next()?, parts.next()?);
    (!mesh.is_empty() && !node.is_empty()).then_some((mesh, node))
}

/// The copy of `cluster` one calling virtual node reaches it through (TLS origination from
/// its backend client policy): `cluster/from/caller`.
pub fn caller_copy(cluster: &str, caller: &str) -> String {
    format!("{cluster}/from/{caller}")
}

/// The copy of `cluster` a virtual gateway reaches it through (the gateway listener's
/// connection pool and health check): `cluster/via/gateway`.
pub fn gateway_copy(cluster: &str, gateway: &str) -> String {
    format!("{cluster}/via/{gateway}")
}

/// The copy of `cluster` a virtual gateway originates TLS through (with its pool, if any):
/// `cluster/via/gateway/tls`.
pub fn gateway_tls_copy(cluster: &str, gateway: &str) -> String {
    format!("{}/tls", gateway_copy(cluster, gateway))
}

/// The cluster that passes a mesh's traffic to other destinations through (ALLOW_ALL egress):
/// `mesh/passthrough`.
pub fn passthrough_cluster(mesh: &str) -> String {
    format!("{mesh}/passthrough")
}

/// The outbound listener of a virtual node: `mesh/node/outbound`.
pub fn outbound_listener(mesh: &str, node: &str) -> String {
    format!("{mesh}/{node}/outbound")
}

/// The virtual node (`mesh/node`) of an outbound listener's name.
pub fn virtual_node_of_outbound_listener(name: &str) -> Option<&str> {
    name.strip_suffix("/outbound")
}

/// The outbound routes of a virtual node for one destination port: `mesh/node/outbound/port`.
pub fn outbound_routes(mesh: &str, node: &str, port: i32) -> String {
    format!("{}/{port}", outbound_listener(mesh, node))
}

/// The inbound listener of a virtual node: `mesh/node/inbound`.
pub fn inbound_listener(mesh: &str, node: &str) -> String {
    format!("{mesh}/{node}/inbound")
}

/// The virtual node (`mesh/node`) of an inbound listener's name.
pub fn virtual_node_of_inbound_listener(name: &str) -> Option<&str> {
    name.strip_suffix("/inbound")
}

/// The local application behind one listener port of a virtual node: `mesh/node/inbound/port`.
pub fn inbound_cluster(mesh: &str, node: &str, port: i32) -> String {
    format!("{}/{port}", inbound_listener(mesh, node))
}

/// The ingress listener (and its routes) of a virtual gateway port: `mesh/gateway/ingress/port`.
pub fn gateway_ingress(mesh: &str, gateway: &str, port: i32) -> String {
    format!("{mesh}/{gateway}/ingress/{port}")
}

/// The gateway (as [`virtual_gateway`] names it) and port of a [`gateway_ingress`] name.
pub fn gateway_of_ingress(name: &str) -> Option<(String, u16)> {
    let mut parts = name.split('/');
    let (mesh, gateway, ingress, port) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || ingress != "ingress" {
        return None;
    }
    Some((virtual_gateway(mesh, gateway), port.parse().ok()?))
}

/// The internal listener, its routes and the cluster that reaches it, through which a virtual
/// gateway hands requests to virtual services: `mesh/gateway/internal`.
pub fn gateway_internal(mesh: &str, gateway: &str) -> String {
    format!("{mesh}/{gateway}/internal")
}

/// A virtual gateway as the data plane names it (and as a workload is pinned to it):
/// `mesh/gateway/name` — three parts, so it is never taken for a virtual node's `mesh/node`.
pub fn virtual_gateway(mesh: &str, gateway: &str) -> String {
    format!("{mesh}/gateway/{gateway}")
}

/// Whether `name` is a workload as the data plane names it: a [`virtual_node`] or a
/// [`virtual_gateway`].
pub fn is_workload(name: &str) -> bool {
    match name.split('/').collect::<Vec<_>>().as_slice() {
        [mesh, node] => !mesh.is_empty() && !node.is_empty(),
        [mesh, "gateway", gateway] => !mesh.is_empty() && !gateway.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clusters_and_their_copies_parse_back() {
        let original = cluster("shop", "api", 9090);
        assert_eq!(cluster_port(&original), Some(9090));
        for copy in [
            caller_copy(&original, "web"),
            gateway_copy(&original, "ingress"),
            gateway_tls_copy(&original, "ingress"),
        ] {
            assert_eq!(cluster_port(&copy), None, "{copy}");
        }
        assert_eq!(
            gateway_tls_copy(&original, "ingress"),
            "shop/api/9090/via/ingress/tls"
        );
        assert_eq!(virtual_node_of_cluster(&original), Some(("shop", "api")));
        assert_eq!(
            virtual_node_of_cluster(&caller_copy(&original, "web")),
            None
        );
    }

    #[test]
    fn node_identities_parse_back() {
        let id = node_spiffe_id("td", "ip-10-0-0-1");
        assert_eq!(id, "spiffe://td/node/ip-10-0-0-1");
        assert_eq!(node_of_spiffe_id(&id), Some("ip-10-0-0-1"));
        for other in [
            spiffe_id("td", "m", "web"),
            "spiffe://td/node/".to_owned(),
            "spiffe://td/node/a/b".to_owned(),
            "https://td/node/a".to_owned(),
        ] {
            assert_eq!(node_of_spiffe_id(&other), None, "{other}");
        }
    }

    #[test]
    fn gateway_listeners_parse_back() {
        assert_eq!(
            gateway_of_ingress(&gateway_ingress("shop", "ingress", 8088)),
            Some(("shop/gateway/ingress".to_owned(), 8088))
        );
        assert_eq!(
            gateway_of_ingress(&gateway_internal("shop", "ingress")),
            None
        );
        assert_eq!(gateway_of_ingress(&inbound_listener("shop", "web")), None);
    }

    #[test]
    fn identities_parse_back() {
        let id = spiffe_id("td", "shop", "web");
        assert_eq!(id, "spiffe://td/mesh/shop/virtualNode/web");
        assert_eq!(workload_of_spiffe_id(&id).as_deref(), Some("shop/web"));
        assert_eq!(
            workload_of_spiffe_id(&gateway_spiffe_id("td", "shop", "in")).as_deref(),
            Some("shop/gateway/in")
        );
        assert_eq!(
            spiffe_id_of_identity_secret(&identity_secret(&id)),
            Some(id.as_str())
        );
        assert_eq!(
            spiffe_id_of_identity_secret(&trust_bundle_secret("td")),
            None
        );
        assert_eq!(
            workload_of_spiffe_id("spiffe://td/mesh/m/virtualNode/a/b"),
            None
        );
    }

    #[test]
    fn listeners_and_routes_parse_back() {
        assert_eq!(
            virtual_node_of_outbound_listener(&outbound_listener("shop", "web")),
            Some("shop/web")
        );
        assert_eq!(
            virtual_node_of_inbound_listener(&inbound_listener("shop", "web")),
            Some("shop/web")
        );
        assert_eq!(virtual_node_of_inbound_listener("shop/web/outbound"), None);
    }
}
