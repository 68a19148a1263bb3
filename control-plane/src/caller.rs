//! Which node agent is calling, as its client certificate says (mutual TLS on the ADS port):
//! a stream or a signing request that presents another node id than its certificate names is
//! refused, so no node can ask for another node's configuration and secrets; whoever has no
//! node certificate gets nothing at all (the TLS handshake already refuses them).
use mesh_xds::{certificate::subject_alt_names, names::node_of_spiffe_id, plan::tls::SanKind};
use tonic::{Request, Status};

/// The node ids a caller may present, from its certificate: a URI subject alternative name
/// `spiffe://<trust domain>/node/<id>`, or a DNS name that is the id. `None` when the caller
/// is not authenticated (plain text, or TLS without client certificates).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caller(Option<Vec<String>>);

impl Caller {
    pub fn of<T>(request: &Request<T>) -> Self {
        let Some(certificates) = request.peer_certs() else {
            return Self(None);
        };
        let names = certificates
            .first()
            .map(|leaf| node_names(leaf.as_ref()))
            .unwrap_or_default();
        Self(Some(names))
    }

    /// Whether the caller may present itself as `node_id`.
    pub fn admit(&self, node_id: &str) -> Result<(), Status> {
        match &self.0 {
            None => Ok(()),
            Some(names) if names.iter().any(|name| name == node_id) => Ok(()),
            Some(names) => Err(Status::permission_denied(format!(
                "node {node_id:?} is not the node the client certificate names ({})",
                if names.is_empty() {
                    "none: no spiffe://<trust domain>/node/<id> URI or DNS name".to_owned()
                } else {
                    names.join(", ")
                }
            ))),
        }
    }
}

fn node_names(der: &[u8]) -> Vec<String> {
    subject_alt_names(der)
        .into_iter()
        .filter_map(|(kind, name)| match kind {
            SanKind::Uri => node_of_spiffe_id(&name).map(str::to_owned),
            SanKind::Dns => Some(name),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(sans: Vec<rcgen::SanType>) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = sans;
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn a_certificate_names_its_node_by_spiffe_id_or_dns_name() {
        let uri = |s: &str| rcgen::SanType::URI(s.try_into().unwrap());
        let dns = |s: &str| rcgen::SanType::DnsName(s.try_into().unwrap());
        let der = certificate(vec![
            uri("spiffe://td/node/ip-10-0-0-1"),
            uri("spiffe://td/mesh/m/virtualNode/web"),
            dns("node-b.example"),
        ]);
        assert_eq!(node_names(&der), ["ip-10-0-0-1", "node-b.example"]);
        let caller = Caller(Some(node_names(&der)));
        assert!(caller.admit("ip-10-0-0-1").is_ok());
        assert!(caller.admit("node-b.example").is_ok());
        let refused = caller.admit("ip-10-0-0-2").unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(
            refused.message().contains("ip-10-0-0-1, node-b.example"),
            "{refused:?}"
        );
        assert!(Caller(None).admit("anyone").is_ok());
        let nameless = Caller(Some(node_names(&certificate(vec![uri(
            "spiffe://td/mesh/m/virtualNode/web",
        )]))));
        assert!(
            nameless
                .admit("web")
                .unwrap_err()
                .message()
                .contains("none")
        );
    }
}
