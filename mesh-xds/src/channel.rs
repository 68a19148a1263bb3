//! The connection from a node agent (or an xDS tool) to the control plane: gRPC over plain
//! HTTP/2 (`http://`, for a loopback or a network the operator trusts) or over TLS
//! (`https://`): the control plane's certificate checked against a CA, and the node's own
//! certificate presented, so that the control plane knows which node asks (mutual TLS) and a
//! pod that reaches the port gets nothing. The files are read at each connect: a rotated node
//! certificate is used from the next reconnect on.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// TLS toward the control plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlPlaneTls {
    /// PEM: the CA certificates the control plane's certificate must chain to.
    pub ca: PathBuf,
    /// This node's certificate, presented when the control plane asks for one.
    pub node_certificate: Option<NodeCertificate>,
    /// The name the control plane's certificate must carry; default: the address's host.
    pub server_name: Option<String>,
}

/// A PEM certificate chain and its PEM private key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeCertificate {
    pub chain: PathBuf,
    pub key: PathBuf,
}

/// Why an address cannot be the control plane's. Refused where the operator sees it once
/// (config check, command line): a client would otherwise retry an unusable one forever.
#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    #[error("{0:?} is not a URL: {1}")]
    NotUrl(String, String),
    #[error("{0:?} must be an http:// or https:// URL")]
    Scheme(String),
    /// Fail closed: an https:// address that connected in plain text would send the mesh's
    /// configuration (and secrets) unencrypted while the operator believes otherwise.
    #[error(
        "{0:?} is https:// but no TLS settings name the CA that signed the control plane's certificate"
    )]
    TlsMissing(String),
    #[error("{0:?} is http:// (plain text) but TLS settings are given: use https://")]
    TlsUnused(String),
    #[error("{0:?} has no host")]
    NoHost(String),
    #[error("{0:?} needs a port other than 0")]
    PortZero(String),
}

/// Checks a control plane address against whether TLS settings are given for it.
pub fn check_address(address: &str, tls: bool) -> Result<(), AddressError> {
    let uri: http::Uri = address.parse().map_err(|error: http::uri::InvalidUri| {
        AddressError::NotUrl(address.to_owned(), error.to_string())
    })?;
    match (uri.scheme_str(), tls) {
        (Some("http"), false) | (Some("https"), true) => {}
        (Some("https"), false) => return Err(AddressError::TlsMissing(address.to_owned())),
        (Some("http"), true) => return Err(AddressError::TlsUnused(address.to_owned())),
        _ => return Err(AddressError::Scheme(address.to_owned())),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(AddressError::NoHost(address.to_owned()));
    }
    if uri.port_u16() == Some(0) {
        return Err(AddressError::PortZero(address.to_owned()));
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error(transparent)]
    Address(#[from] AddressError),
    #[error("reading the {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{address}: {source}")]
    Transport {
        address: String,
        source: tonic::transport::Error,
    },
}

/// A channel to the control plane at `address`, connected.
pub async fn connect(
    address: &str,
    tls: Option<&ControlPlaneTls>,
    timeout: Option<Duration>,
) -> Result<Channel, ChannelError> {
    check_address(address, tls.is_some())?;
    let transport = |source| ChannelError::Transport {
        address: address.to_owned(),
        source,
    };
    let mut endpoint = Endpoint::from_shared(address.to_owned()).map_err(transport)?;
    if let Some(timeout) = timeout {
        endpoint = endpoint.connect_timeout(timeout).timeout(timeout);
    }
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(client_config(tls).await?)
            .map_err(transport)?;
    }
    endpoint.connect().await.map_err(transport)
}

async fn client_config(tls: &ControlPlaneTls) -> Result<ClientTlsConfig, ChannelError> {
    let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(
        read("control plane CA", &tls.ca).await?,
    ));
    if let Some(node) = &tls.node_certificate {
        let chain = read("node certificate", &node.chain).await?;
        let key = read("node certificate key", &node.key).await?;
        config = config.identity(Identity::from_pem(chain, key));
    }
    if let Some(name) = &tls.server_name {
        config = config.domain_name(name.clone());
    }
    Ok(config)
}

/// A PEM file (read off the runtime's threads); one larger than any certificate bundle is
/// refused rather than read whole.
async fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, ChannelError> {
    use tokio::io::AsyncReadExt as _;
    const LIMIT: u64 = 1024 * 1024;
    let error = |source| ChannelError::Read {
        what,
        path: path.to_owned(),
        source,
    };
    let file = tokio::fs::File::open(path).await.map_err(error)?;
    let mut contents = Vec::new();
    file.take(LIMIT + 1)
        .read_to_end(&mut contents)
        .await
        .map_err(error)?;
    if contents.len() as u64 > LIMIT {
        return Err(error(std::io::Error::other(format!(
            "larger than {LIMIT} bytes, no PEM bundle is"
        ))));
    }
    Ok(contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheme_says_whether_tls_is_used() {
        assert!(check_address("http://cp:15010", false).is_ok());
        assert!(check_address("https://cp:15010", true).is_ok());
        for (address, tls, expected) in [
            ("https://cp:15010", false, "no TLS settings"),
            ("http://cp:15010", true, "use https://"),
            ("cp:15010", false, "must be an http:// or https:// URL"),
            (
                "grpc://cp:15010",
                true,
                "must be an http:// or https:// URL",
            ),
            ("http://cp:0", false, "port other than 0"),
            ("http://[::1:15010", false, "is not a URL"),
        ] {
            let error = check_address(address, tls).unwrap_err().to_string();
            assert!(error.contains(expected), "{address}: {error}");
        }
    }
}
