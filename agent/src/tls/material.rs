//! The bytes behind TLS contexts: SDS secrets as the last mesh state sent them, and the
//! files contexts and secrets name, as last read. Each change makes a new generation, which
//! is how cached configurations know to rebuild. Reading happens on blocking threads only.
use std::{
    collections::{BTreeSet, HashMap},
    fs,
    io::Read as _,
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use mesh_xds::plan::{
    NodePlan,
    tls::{CertificateSource, KeyPair, Pem, SanMatcher, SecretPlan, TrustSource, Validation},
};
use tracing::info;

/// A certificate, key or bundle larger than this is refused (a mistake, or an attack on
/// the agent's memory).
const MAX_PEM_FILE: u64 = 1024 * 1024;

/// The contents of a PEM file or inline source.
pub type PemBytes = Arc<[u8]>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum MaterialError {
    #[error("SDS secret {0:?} has not been received (or, for a workload certificate, signed) yet")]
    NoSecret(String),
    #[error("no certificate can be had here: the listener names {0}")]
    Unavailable(String),
    #[error("SDS secret {name:?} is not {wanted}")]
    WrongSecret { name: String, wanted: &'static str },
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
}

/// When a file was read, to notice it changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

#[derive(Debug, Clone)]
struct FileEntry {
    stamp: Option<Stamp>,
    content: Result<Arc<[u8]>, String>,
}

#[derive(Debug, Default)]
pub struct Material {
    pub generation: u64,
    secrets: HashMap<String, SecretPlan>,
    /// Secrets made on this node (automatic mTLS workload certificates), by SDS name.
    local: HashMap<String, SecretPlan>,
    files: HashMap<PathBuf, FileEntry>,
}

impl Material {
    /// The material of a new mesh state: its secrets, and `files` (read now if not read yet;
    /// files no state names any more are forgotten). None when nothing changed.
    pub fn with(&self, secrets: HashMap<String, SecretPlan>, files: &[PathBuf]) -> Option<Self> {
        let wanted: BTreeSet<&PathBuf> = files.iter().collect();
        let same_files = wanted.len() == self.files.len()
            && wanted.iter().all(|path| self.files.contains_key(*path));
        if same_files && secrets == self.secrets {
            return None;
        }
        let files = wanted
            .into_iter()
            .map(|path| {
                let entry = self.files.get(path).cloned().unwrap_or_else(|| read(path));
                (path.clone(), entry)
            })
            .collect();
        Some(Self {
            generation: self.generation + 1,
            secrets,
            local: self.local.clone(),
            files,
        })
    }

    /// The material with the local secret `name` set (or removed); None when unchanged.
    pub fn with_local(&self, name: &str, secret: Option<SecretPlan>) -> Option<Self> {
        if self.local.get(name) == secret.as_ref() {
            return None;
        }
        let mut local = self.local.clone();
        match secret {
            Some(secret) => local.insert(name.to_owned(), secret),
            None => local.remove(name),
        };
        Some(Self {
            generation: self.generation + 1,
            secrets: self.secrets.clone(),
            local,
            files: self.files.clone(),
        })
    }

    /// The material with every file that changed on disk read again; None when none did.
    pub fn reread(&self) -> Option<Self> {
        let mut files = self.files.clone();
        let mut changed = false;
        for (path, entry) in &mut files {
            if stamp(path) != entry.stamp {
                *entry = read(path);
                info!(path = %path.display(), readable = entry.content.is_ok(), "TLS file changed; new connections use it");
                changed = true;
            }
        }
        changed.then(|| Self {
            generation: self.generation + 1,
            secrets: self.secrets.clone(),
            local: self.local.clone(),
            files,
        })
    }

    /// A certificate chain and its key.
    pub fn key_pair(
        &self,
        source: &CertificateSource,
    ) -> Result<(PemBytes, PemBytes), MaterialError> {
        let pair = match source {
            CertificateSource::Given(pair) => pair,
            CertificateSource::Sds(name) => match self.secret(name)? {
                SecretPlan::Certificate(pair) => pair,
                SecretPlan::Trust(_) => {
                    return Err(MaterialError::WrongSecret {
                        name: name.clone(),
                        wanted: "a certificate",
                    });
                }
            },
        };
        let KeyPair { chain, key } = pair;
        Ok((self.pem(chain)?, self.pem(key)?))
    }

    /// Trusted CAs and the names to match: the context's names, else the secret's.
    pub fn validation(
        &self,
        validation: &Validation,
    ) -> Result<(PemBytes, Vec<SanMatcher>), MaterialError> {
        match &validation.trust {
            TrustSource::Given(pem) => Ok((self.pem(pem)?, validation.sans.clone())),
            TrustSource::Sds(name) => match self.secret(name)? {
                SecretPlan::Trust(secret) => {
                    let TrustSource::Given(pem) = &secret.trust else {
                        return Err(MaterialError::WrongSecret {
                            name: name.clone(),
                            wanted: "a validation context with trusted CAs",
                        });
                    };
                    let sans = if validation.sans.is_empty() {
                        secret.sans.clone()
                    } else {
                        validation.sans.clone()
                    };
                    Ok((self.pem(pem)?, sans))
                }
                SecretPlan::Certificate(_) => Err(MaterialError::WrongSecret {
                    name: name.clone(),
                    wanted: "a validation context",
                }),
            },
        }
    }

    fn secret(&self, name: &str) -> Result<&SecretPlan, MaterialError> {
        if let Some(reason) = mesh_xds::names::unavailable_secret_reason(name) {
            return Err(MaterialError::Unavailable(reason.to_owned()));
        }
        self.secrets
            .get(name)
            .or_else(|| self.local.get(name))
            .ok_or_else(|| MaterialError::NoSecret(name.to_owned()))
    }

    fn pem(&self, pem: &Pem) -> Result<Arc<[u8]>, MaterialError> {
        match pem {
            Pem::Inline(bytes) => Ok(Arc::clone(bytes)),
            Pem::File(path) => {
                let error = |reason: String| MaterialError::File {
                    path: path.clone(),
                    reason,
                };
                let entry = self
                    .files
                    .get(path)
                    .ok_or_else(|| error("not read yet".into()))?;
                entry.content.clone().map_err(error)
            }
        }
    }
}

fn stamp(path: &Path) -> Option<Stamp> {
    let metadata = fs::metadata(path).ok()?;
    Some(Stamp {
        modified: metadata.modified().ok(),
        len: metadata.len(),
        inode: metadata.ino(),
    })
}

/// Reads a PEM file: a regular file (opened without blocking, so a FIFO cannot hang the
/// reader) of at most MAX_PEM_FILE bytes.
fn read(path: &Path) -> FileEntry {
    let stamp = stamp(path);
    let content = (|| {
        let mut file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
            .map_err(|e| e.to_string())?;
        let metadata = file.metadata().map_err(|e| e.to_string())?;
        if !metadata.is_file() {
            return Err("not a regular file".to_owned());
        }
        if metadata.len() > MAX_PEM_FILE {
            return Err(format!("larger than {MAX_PEM_FILE} bytes"));
        }
        let mut bytes = Vec::with_capacity(metadata.len() as usize);
        file.by_ref()
            .take(MAX_PEM_FILE + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| e.to_string())?;
        Ok(Arc::from(bytes))
    })();
    FileEntry { stamp, content }
}

/// Every file the TLS contexts and secrets of a plan name.
pub fn files_of(plan: &NodePlan) -> Vec<PathBuf> {
    let mut files = Files::default();
    for tls in plan
        .clusters
        .values()
        .filter_map(|c| c.upstream_tls.as_ref())
    {
        files.certificate(tls.certificate.as_ref());
        files.validation(tls.validation.as_ref());
    }
    for port in plan
        .inbound
        .values()
        .flat_map(|inbound| inbound.ports.values())
    {
        if let Some(chain) = &port.tls {
            files.certificate(Some(&chain.tls.certificate));
            files.validation(chain.tls.validation.as_ref());
        }
    }
    for port in plan.gateways.values().flat_map(|ports| ports.values()) {
        if let Some(chain) = &port.tls {
            files.certificate(Some(&chain.tls.certificate));
            files.validation(chain.tls.validation.as_ref());
        }
    }
    for secret in plan.secrets.values() {
        match secret {
            SecretPlan::Certificate(pair) => files.key_pair(pair),
            SecretPlan::Trust(validation) => files.validation(Some(validation)),
        }
    }
    files.0.into_iter().collect()
}

#[derive(Default)]
struct Files(BTreeSet<PathBuf>);

impl Files {
    fn pem(&mut self, pem: &Pem) {
        if let Pem::File(path) = pem {
            self.0.insert(path.clone());
        }
    }

    fn key_pair(&mut self, pair: &KeyPair) {
        self.pem(&pair.chain);
        self.pem(&pair.key);
    }

    fn certificate(&mut self, source: Option<&CertificateSource>) {
        if let Some(CertificateSource::Given(pair)) = source {
            self.key_pair(pair);
        }
    }

    fn validation(&mut self, validation: Option<&Validation>) {
        if let Some(Validation {
            trust: TrustSource::Given(pem),
            ..
        }) = validation
        {
            self.pem(pem);
        }
    }
}
