//! TLS toward a control plane that serves ADS over `https://`, from the command line (the
//! agent's config file has the same settings as `xds.tls`).
use std::path::PathBuf;

use clap::Args;
use mesh_agent::config::XdsTlsConfig;

#[derive(Args, Clone)]
pub struct XdsTlsArgs {
    /// With an https:// control plane: the CA certificates (PEM) its certificate must chain to.
    #[arg(long = "control-plane-ca", value_name = "FILE")]
    ca: Option<PathBuf>,
    /// This node's certificate (PEM chain), for a control plane that authenticates nodes: it
    /// names the node id (spiffe://<trust domain>/node/<id>, or a DNS name that is the id).
    #[arg(long = "node-cert", value_name = "FILE", requires_all = ["ca", "key"])]
    cert: Option<PathBuf>,
    /// The private key (PEM) of --node-cert.
    #[arg(long = "node-key", value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    /// The name the control plane's certificate must carry; default: the URL's host.
    #[arg(long = "control-plane-name", value_name = "NAME", requires = "ca")]
    server_name: Option<String>,
}

impl XdsTlsArgs {
    pub fn config(&self) -> Option<XdsTlsConfig> {
        Some(XdsTlsConfig {
            ca_file: self.ca.clone()?,
            cert_file: self.cert.clone(),
            key_file: self.key.clone(),
            server_name: self.server_name.clone(),
        })
    }
}
