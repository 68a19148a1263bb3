//! Who a peer is, from its certificate: the virtual node (or gateway) its SPIFFE ID names
//! (`spiffe://<trust domain>/mesh/<mesh>/virtualNode/<name>` → `mesh/name`,
//! `…/virtualGateway/<name>` → `mesh/gateway/name`, the forms metrics and access logs use), else the first URI or DNS subject alternative name as presented —
//! App Mesh users' certificates often carry only a DNS name.
use mesh_xds::{certificate, names::workload_of_spiffe_id, plan::tls::SanKind};
use rustls::pki_types::CertificateDer;

/// The URI and DNS subject alternative names of a certificate.
pub fn subject_alt_names(certificate: &CertificateDer<'_>) -> Vec<(SanKind, String)> {
    certificate::subject_alt_names(certificate.as_ref())
}

/// The peer as metrics and access logs name it.
pub fn peer_identity(sans: &[(SanKind, String)]) -> Option<String> {
    let virtual_node = sans
        .iter()
        .find_map(|(kind, name)| (*kind == SanKind::Uri).then(|| workload_of_spiffe_id(name))?);
    virtual_node
        .or_else(|| {
            sans.iter()
                .find(|(kind, _)| *kind == SanKind::Uri)
                .map(|(_, name)| name.clone())
        })
        .or_else(|| sans.first().map(|(_, name)| name.clone()))
}

#[cfg(test)]
mod tests {
    use mesh_xds::names::spiffe_id;

    use super::*;

    #[test]
    fn a_spiffe_id_names_the_virtual_node() {
        let id = spiffe_id("shop.local", "shop", "web");
        assert_eq!(
            peer_identity(&[(SanKind::Dns, "web.shop".into()), (SanKind::Uri, id)]).as_deref(),
            Some("shop/web")
        );
        assert_eq!(
            peer_identity(&[(SanKind::Uri, "spiffe://td/ns/default/sa/web".into())]).as_deref(),
            Some("spiffe://td/ns/default/sa/web")
        );
        assert_eq!(
            peer_identity(&[(SanKind::Dns, "colorteller.default.svc.cluster.local".into())])
                .as_deref(),
            Some("colorteller.default.svc.cluster.local")
        );
        assert_eq!(peer_identity(&[]), None);
        assert_eq!(
            peer_identity(&[(SanKind::Uri, "spiffe://td/mesh/m/virtualNode/a/b".into())])
                .as_deref(),
            Some("spiffe://td/mesh/m/virtualNode/a/b")
        );
    }
}
