//! Who a peer is, from its certificate: the virtual node (or gateway) its SPIFFE ID names
//! (`spiffe://<trust domain>/mesh/<mesh>/virtualNode/<name>` → `mesh/name`,
//! `…/virtualGateway/<name>` → `mesh/gateway/name`, the forms metrics and access logs use), else the first URI or DNS subject alternative name as presented —
//! App Mesh users' certificates often carry only a DNS name.
use mesh_xds::{names::workload_of_spiffe_id, plan::tls::SanKind};
use rustls::pki_types::CertificateDer;
use x509_parser::{certificate::X509Certificate, extensions::GeneralName, prelude::FromDer};

/// The URI and DNS subject alternative names of a DER certificate (none if it does not parse:
/// the chain check has already refused such a certificate).
pub fn subject_alt_names(certificate: &CertificateDer<'_>) -> Vec<(SanKind, String)> {
    let Ok((_, parsed)) = X509Certificate::from_der(certificate.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(extension)) = parsed.subject_alternative_name() else {
        return Vec::new();
    };
    extension
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some((SanKind::Uri, (*uri).to_owned())),
            GeneralName::DNSName(dns) => Some((SanKind::Dns, (*dns).to_owned())),
            _ => None,
        })
        .collect()
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
