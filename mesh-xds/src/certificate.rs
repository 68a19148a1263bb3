//! What a certificate says of its holder, read the same way at both ends: the node proxy
//! naming a TLS peer, the control plane naming the node agent that connected.
use x509_parser::{certificate::X509Certificate, extensions::GeneralName, prelude::FromDer};

use crate::plan::tls::SanKind;

/// The URI and DNS subject alternative names of a DER certificate (none if it does not parse:
/// the chain check has already refused such a certificate).
pub fn subject_alt_names(der: &[u8]) -> Vec<(SanKind, String)> {
    let Ok((_, parsed)) = X509Certificate::from_der(der) else {
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
