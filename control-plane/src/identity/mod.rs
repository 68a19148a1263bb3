//! Automatic mTLS: the control plane's certificate authority and what it signs. With it on,
//! every virtual node's listeners take TLS with client certificates (STRICT, or PERMISSIVE per
//! mesh during a migration) and every caller originates TLS to meshed destinations, checking
//! the destination's SPIFFE ID — no certificates to manage. App Mesh TLS settings in the
//! definitions take precedence where a mesh has them.
//!
//! Agents make their workloads' keys and send signing requests (see [`mesh_xds::identity`]);
//! the CA signs a request only for the SPIFFE ID of a virtual node or gateway that exists in
//! the mesh, for a short lifetime; agents renew at half of it.
//!
//! The CA is `ca.pem` + `ca.key` in the CA directory (made at first start when absent, the
//! key readable by the owner only); an external CA plugs in as those files, its certificate
//! an intermediate, with `trust.pem` holding the roots agents trust (default: `ca.pem`).
use std::{
    collections::BTreeSet,
    fs,
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use envoy_types::pb::envoy::{
    config::core::v3::{DataSource, data_source::Specifier},
    extensions::transport_sockets::tls::v3::{CertificateValidationContext, Secret, secret},
};
use mesh_xds::names;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

mod service;

pub use service::IdentityService;

/// How meshed destinations take connections when automatic mTLS is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MtlsMode {
    /// TLS with a client certificate only.
    Strict,
    /// TLS, or plain text from callers outside the mesh (a migration).
    Permissive,
}

/// How automatic mTLS is set up.
#[derive(Clone, Debug)]
pub struct AutoMtlsOptions {
    pub trust_domain: String,
    /// Meshes that take plain text too (every other: STRICT).
    pub permissive_meshes: BTreeSet<String>,
    /// Where the CA's files are (made there when absent).
    pub ca_dir: PathBuf,
    /// How long a workload certificate is valid.
    pub lifetime: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("making the CA: {0}")]
    Generate(rcgen::Error),
}

/// Why a signing request is refused; the agent is told this text.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("the certificate signing request does not parse or its signature is wrong: {0}")]
    Csr(rcgen::Error),
    #[error(
        "the request must name exactly one SPIFFE ID (a URI subject alternative name) and nothing else"
    )]
    Names,
    #[error("{0} is not the SPIFFE ID of a virtual node or gateway in trust domain {1}")]
    NotAVirtualNode(String, String),
    #[error("{0} is not a virtual node or gateway of the mesh")]
    Unknown(String),
    #[error("{workload} has no pod on node {node}: a node is signed for the workloads it runs")]
    NotOnNode { workload: String, node: String },
    #[error("signing: {0}")]
    Sign(rcgen::Error),
}

pub struct AutoMtls {
    options: AutoMtlsOptions,
    issuer: Issuer<'static, KeyPair>,
    /// The CA's certificate, appended to what it signs when the roots are others.
    ca_pem: String,
    /// What agents trust.
    trust_pem: String,
}

impl std::fmt::Debug for AutoMtls {
    // The CA key stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AutoMtls")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl AutoMtls {
    /// Loads the CA from its directory, making one there first if there is none (blocking:
    /// file system work).
    pub fn load(options: AutoMtlsOptions) -> Result<Self, CaError> {
        let dir = &options.ca_dir;
        let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
        if !cert_path.exists() && !key_path.exists() {
            make_ca(dir, &options.trust_domain)?;
        }
        let ca_pem = read(&cert_path)?;
        let key_pem = read(&key_path)?;
        let invalid = |path: &Path, reason: String| CaError::Invalid {
            path: path.to_owned(),
            reason,
        };
        let key = KeyPair::from_pem(&key_pem).map_err(|e| invalid(&key_path, e.to_string()))?;
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, key)
            .map_err(|e| invalid(&cert_path, e.to_string()))?;
        let trust_path = dir.join("trust.pem");
        let trust_pem = if trust_path.exists() {
            read(&trust_path)?
        } else {
            ca_pem.clone()
        };
        Ok(Self {
            options,
            issuer,
            ca_pem,
            trust_pem,
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.options.trust_domain
    }

    pub fn mode(&self, mesh: &str) -> MtlsMode {
        match self.options.permissive_meshes.contains(mesh) {
            true => MtlsMode::Permissive,
            false => MtlsMode::Strict,
        }
    }

    /// The SDS secret of the trust bundle agents check peers against.
    pub fn trust_bundle(&self) -> Secret {
        Secret {
            name: names::trust_bundle_secret(self.trust_domain()),
            r#type: Some(secret::Type::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: Some(DataSource {
                        specifier: Some(Specifier::InlineBytes(self.trust_pem.as_bytes().to_vec())),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )),
        }
    }

    /// Signs `csr_pem` if it asks for the SPIFFE ID of a workload (`mesh/node`,
    /// `mesh/gateway/name`) the mesh has (`known`): the chain.
    pub fn sign(
        &self,
        csr_pem: &str,
        allowed: impl Fn(&str) -> Result<(), SignError>,
    ) -> Result<String, SignError> {
        let mut request =
            CertificateSigningRequestParams::from_pem(csr_pem).map_err(SignError::Csr)?;
        let [SanType::URI(uri)] = request.params.subject_alt_names.as_slice() else {
            return Err(SignError::Names);
        };
        let id = uri.as_str().to_owned();
        let workload = names::workload_of_spiffe_id(&id)
            .filter(|_| {
                id.strip_prefix("spiffe://")
                    .and_then(|rest| rest.split_once('/'))
                    .is_some_and(|(domain, _)| domain == self.trust_domain())
            })
            .ok_or_else(|| SignError::NotAVirtualNode(id.clone(), self.trust_domain().into()))?;
        allowed(&workload)?;
        let params = &mut request.params;
        let now = SystemTime::now();
        // A minute back: the peers' clocks may be a little behind ours.
        params.not_before = (now - Duration::from_secs(60)).into();
        params.not_after = (now + self.options.lifetime).into();
        params.serial_number = Some(serial());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let certificate = request.signed_by(&self.issuer).map_err(SignError::Sign)?;
        let mut chain = certificate.pem();
        if self.trust_pem != self.ca_pem {
            chain.push_str(&self.ca_pem);
        }
        Ok(chain)
    }
}

fn read(path: &Path) -> Result<String, CaError> {
    fs::read_to_string(path).map_err(|source| CaError::Io {
        path: path.to_owned(),
        source,
    })
}

/// A self-signed CA for the trust domain, written to `dir` (the key readable by its owner).
fn make_ca(dir: &Path, trust_domain: &str) -> Result<(), CaError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| CaError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io(dir))?;
    let key = KeyPair::generate().map_err(CaError::Generate)?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(
        DnType::CommonName,
        format!("mesh-agent CA for {trust_domain}"),
    );
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(3600)).into();
    params.not_after = (now + Duration::from_secs(10 * 365 * 24 * 3600)).into();
    params.serial_number = Some(serial());
    let certificate = params.self_signed(&key).map_err(CaError::Generate)?;
    let key_path = dir.join("ca.key");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&key_path)
        .map_err(io(&key_path))?;
    file.write_all(key.serialize_pem().as_bytes())
        .map_err(io(&key_path))?;
    fs::set_permissions(&key_path, fs::Permissions::from_mode(0o600)).map_err(io(&key_path))?;
    let cert_path = dir.join("ca.pem");
    fs::write(&cert_path, certificate.pem()).map_err(io(&cert_path))?;
    Ok(())
}

/// 16 random bytes, positive.
fn serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

#[cfg(test)]
pub(super) mod tests {
    use std::path::PathBuf;

    use mesh_model::source::{self, LoadOptions};

    use super::*;
    use crate::compile::MeshIndex;

    pub(super) fn shop() -> MeshIndex {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/shop");
        MeshIndex::new(&source::load(&[dir], &LoadOptions::default()).resources).unwrap()
    }

    pub(super) fn options(dir: &Path) -> AutoMtlsOptions {
        AutoMtlsOptions {
            trust_domain: "td".into(),
            permissive_meshes: BTreeSet::new(),
            ca_dir: dir.join("ca"),
            lifetime: Duration::from_secs(3600),
        }
    }

    /// A CSR for these URI SANs.
    pub(super) fn csr(uris: &[&str]) -> String {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = uris
            .iter()
            .map(|uri| SanType::URI((*uri).try_into().unwrap()))
            .collect();
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    #[test]
    fn the_ca_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = AutoMtls::load(options(dir.path())).unwrap();
        let key = dir.path().join("ca/ca.key");
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let again = AutoMtls::load(options(dir.path())).unwrap();
        assert_eq!(first.trust_pem, again.trust_pem, "loaded, not made again");
        assert!(!format!("{first:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn only_an_existing_virtual_nodes_identity_is_signed() {
        let dir = tempfile::tempdir().unwrap();
        let mtls = AutoMtls::load(options(dir.path())).unwrap();
        let index = shop();
        let known = |workload: &str| {
            index
                .has_workload(workload)
                .then_some(())
                .ok_or_else(|| SignError::Unknown(workload.to_owned()))
        };
        let chain = mtls
            .sign(&csr(&["spiffe://td/mesh/shop/virtualNode/web"]), known)
            .unwrap();
        assert!(chain.starts_with("-----BEGIN CERTIFICATE-----"));
        let refused = |uris: &[&str]| mtls.sign(&csr(uris), known).unwrap_err().to_string();
        assert!(
            refused(&["spiffe://td/mesh/shop/virtualNode/nobody"])
                .contains("not a virtual node or gateway of the mesh")
        );
        assert!(
            mtls.sign(
                &csr(&["spiffe://td/mesh/shop/virtualGateway/ingress"]),
                known
            )
            .is_ok(),
            "the shop's gateway"
        );
        assert!(
            refused(&["spiffe://other/mesh/shop/virtualNode/web"])
                .contains("not the SPIFFE ID of a virtual node or gateway in trust domain td")
        );
        assert!(
            refused(&[
                "spiffe://td/mesh/shop/virtualNode/web",
                "spiffe://td/mesh/shop/virtualNode/db"
            ])
            .contains("exactly one SPIFFE ID")
        );
        assert!(
            mtls.sign("not a CSR", known)
                .unwrap_err()
                .to_string()
                .contains("does not parse")
        );
    }
}
