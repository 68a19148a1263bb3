//! The SDS stand-in: named TLS secrets — a certificate with its private key, or a bundle of
//! trusted CAs — read from PEM files a secrets file lists, and served over ADS as Envoy
//! `Secret`s to the nodes whose listeners and clusters name them (App Mesh's `sds.secretName`;
//! on AWS a SPIRE agent answered these). The material goes inline, as SDS sends it.
//!
//! ```json
//! {"secrets": {
//!   "spiffe://shop.local/web": {"certificateChain": "web.pem", "privateKey": "web.key"},
//!   "spiffe://shop.local":     {"trustedCa": "ca.pem"}}}
//! ```
//! Relative paths are relative to the secrets file.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use envoy_types::pb::envoy::{
    config::core::v3::{DataSource, data_source::Specifier},
    extensions::transport_sockets::tls::v3::{
        CertificateValidationContext, Secret, TlsCertificate, secret,
    },
};
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("secret {name:?}: {reason}")]
    Invalid { name: String, reason: String },
}

/// Secrets by name, and the files they were read from (watched for rotation).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SecretStore {
    secrets: BTreeMap<String, Secret>,
    files: Vec<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretsFile {
    secrets: BTreeMap<String, SecretSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SecretSpec {
    certificate_chain: Option<PathBuf>,
    private_key: Option<PathBuf>,
    trusted_ca: Option<PathBuf>,
}

impl SecretStore {
    /// Reads the secrets file and every PEM file it names; an error names the secret and
    /// what is wrong with it.
    pub fn load(path: &Path) -> Result<Self, SecretError> {
        let text = std::fs::read(path).map_err(|source| SecretError::Read {
            path: path.to_owned(),
            source,
        })?;
        let file: SecretsFile =
            serde_json::from_slice(&text).map_err(|source| SecretError::Parse {
                path: path.to_owned(),
                source,
            })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut store = Self {
            secrets: BTreeMap::new(),
            files: vec![path.to_owned()],
        };
        for (name, spec) in file.secrets {
            let secret = store.secret(&name, spec, base)?;
            store.secrets.insert(name, secret);
        }
        Ok(store)
    }

    fn secret(&mut self, name: &str, spec: SecretSpec, base: &Path) -> Result<Secret, SecretError> {
        let invalid = |reason: String| SecretError::Invalid {
            name: name.to_owned(),
            reason,
        };
        let kind = match (spec.certificate_chain, spec.private_key, spec.trusted_ca) {
            (Some(chain), Some(key), None) => secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: Some(self.pem(name, base, &chain, "CERTIFICATE")?),
                private_key: Some(self.pem(name, base, &key, "PRIVATE KEY")?),
                ..Default::default()
            }),
            (None, None, Some(ca)) => {
                secret::Type::ValidationContext(CertificateValidationContext {
                    trusted_ca: Some(self.pem(name, base, &ca, "CERTIFICATE")?),
                    ..Default::default()
                })
            }
            _ => {
                return Err(invalid(
                    "give certificateChain and privateKey (a certificate), or trustedCa (a validation context)".into(),
                ));
            }
        };
        Ok(Secret {
            name: name.to_owned(),
            r#type: Some(kind),
        })
    }

    /// A PEM file's bytes, checked to hold a `what` block.
    fn pem(
        &mut self,
        name: &str,
        base: &Path,
        file: &Path,
        what: &str,
    ) -> Result<DataSource, SecretError> {
        let path = base.join(file);
        let bytes = std::fs::read(&path).map_err(|source| SecretError::Invalid {
            name: name.to_owned(),
            reason: format!("cannot read {}: {source}", path.display()),
        })?;
        let text = String::from_utf8_lossy(&bytes);
        let holds = text
            .lines()
            .any(|line| line.starts_with("-----BEGIN ") && line.contains(what));
        if !holds {
            return Err(SecretError::Invalid {
                name: name.to_owned(),
                reason: format!("{} holds no PEM {what}", path.display()),
            });
        }
        self.files.push(path);
        Ok(DataSource {
            specifier: Some(Specifier::InlineBytes(bytes)),
            ..Default::default()
        })
    }

    pub fn get(&self, name: &str) -> Option<&Secret> {
        self.secrets.get(name)
    }

    /// The secrets file and the PEM files it named.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n";

    fn store(secrets: &str) -> (tempfile::TempDir, Result<SecretStore, SecretError>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("web.pem"), CERT).unwrap();
        std::fs::write(dir.path().join("web.key"), KEY).unwrap();
        std::fs::write(dir.path().join("ca.pem"), CERT).unwrap();
        let file = dir.path().join("secrets.json");
        std::fs::write(&file, secrets).unwrap();
        let loaded = SecretStore::load(&file);
        (dir, loaded)
    }

    #[test]
    fn certificates_and_trust_bundles_are_read_inline() {
        let (_dir, loaded) = store(
            r#"{"secrets": {"spiffe://shop/web": {"certificateChain": "web.pem", "privateKey": "web.key"},
                            "spiffe://shop": {"trustedCa": "ca.pem"}}}"#,
        );
        let store = loaded.unwrap();
        let Some(secret::Type::TlsCertificate(certificate)) =
            &store.get("spiffe://shop/web").unwrap().r#type
        else {
            panic!("a certificate")
        };
        assert_eq!(
            certificate.private_key.as_ref().unwrap().specifier,
            Some(Specifier::InlineBytes(KEY.as_bytes().to_vec()))
        );
        assert!(matches!(
            store.get("spiffe://shop").unwrap().r#type,
            Some(secret::Type::ValidationContext(_))
        ));
        assert_eq!(store.files().len(), 4, "the file and three PEM files");
    }

    #[test]
    fn mistakes_name_the_secret() {
        let (_dir, loaded) = store(r#"{"secrets": {"a": {"certificateChain": "web.pem"}}}"#);
        let error = loaded.unwrap_err().to_string();
        assert!(
            error.starts_with("secret \"a\": give certificateChain and privateKey"),
            "{error}"
        );

        let (_dir, loaded) = store(
            r#"{"secrets": {"b": {"certificateChain": "web.key", "privateKey": "web.key"}}}"#,
        );
        let error = loaded.unwrap_err().to_string();
        assert!(error.contains("holds no PEM CERTIFICATE"), "{error}");

        let (_dir, loaded) = store(r#"{"secrets": {"c": {"trustedCa": "missing.pem"}}}"#);
        assert!(loaded.unwrap_err().to_string().contains("cannot read"));

        let (_dir, loaded) = store(r#"{"secret": {}}"#);
        assert!(matches!(loaded, Err(SecretError::Parse { .. })));
    }
}
