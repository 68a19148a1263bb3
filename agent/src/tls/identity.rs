//! Who a peer is, from its certificate: the virtual node its SPIFFE ID names
//! (`spiffe://<trust domain>/mesh/<mesh>/virtualNode/<name>` → `mesh/name`, the form metrics
//! and access logs use), else the first URI or DNS subject alternative name as presented —
//! App Mesh users' certificates often carry only a DNS name.
use mesh_xds::plan::tls::SanKind;
use rustls::pki_types::CertificateDer;
use x509_parser::{extensions::GeneralName, prelude::FromDer, certificate::X509Certificate};

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

/// The SPIFFE ID of a virtual node.
pub fn spiffe_id(trust_domain: &str, mesh: &str, node: &str) -> String {
    format!("spiffe://{trust_domain}/mesh/{mesh}/virtualNode/{node}")
}

/// The peer as metrics and access logs name it.
pub fn peer_identity(sans: &[(SanKind, String)]) -> Option<String> {
    let virtual_node = sans.iter().find_map(|(kind, name)| {
        (*kind == SanKind::Uri).then(|| virtual_node_of_spiffe_id(name))?
    });
    virtual_node
        .or_else(|| {
            sans.iter()
                .find(|(kind, _)| *kind == SanKind::Uri)
                .map(|(_, name)| name.clone())
        })
        .or_else(|| sans.first().map(|(_, name)| name.clone()))
}

/// `mesh/name` from `spiffe://<trust domain>/mesh/<mesh>/virtualNode/<name>`.
fn virtual_node_of_spiffe_id(uri: &str) -> Option<String> {
    let path = uri.strip_prefix("spiffe://")?.split_once('/')?.1;
    let (mesh, node) = path.strip_prefix("mesh/")?.split_once("/virtualNode/")?;
    (!mesh.is_empty() && !node.is_empty() && !node.contains('/')).then(|| format!("{mesh}/{node}"))
}

#[cfg(test)]
mod tests {
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
        assert_eq!(virtual_node_of_spiffe_id("spiffe://td/mesh/m/virtualNode/a/b"), None);
    }
}
