//! Test certificates: a small CA issuing leaf certificates with the SANs, validity and issuer
//! a test needs (a SPIFFE-style URI SAN, DNS names, an expired leaf, a leaf of another CA).
//!
//! Keys are ECDSA P-256, written as PKCS#8 (`-----BEGIN PRIVATE KEY-----`). Files are plain
//! PEM, as an agent's `certificate.file` / `validation.trust.file` read them.
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// A self-signed certificate authority that signs leaf certificates.
///
/// For an "unknown authority", issue from a second `TestCa` with another common name: a
/// verifier then fails with UnknownIssuer. (With the same name, webpki takes the trusted CA
/// as the issuer and fails with BadSignature instead.)
pub struct TestCa {
    common_name: String,
    cert_pem: String,
    cert_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    /// A CA named `common_name`, valid from a day ago for ten years.
    pub fn new(common_name: &str) -> anyhow::Result<Self> {
        let key = KeyPair::generate().context("generating the CA key")?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = datetime(now - DAY)?;
        params.not_after = datetime(now + 3650 * DAY)?;
        params.serial_number = Some(serial());
        let cert = params
            .self_signed(&key)
            .with_context(|| format!("self-signing CA {common_name}"))?;
        Ok(Self {
            common_name: common_name.to_owned(),
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
        })
    }

    pub fn common_name(&self) -> &str {
        &self.common_name
    }

    /// The CA certificate (PEM): the trust bundle that validates its leaves.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// Signs a leaf certificate as `spec` says, with a key of its own.
    pub fn issue(&self, spec: &IssueSpec) -> anyhow::Result<Leaf> {
        let key = KeyPair::generate().context("generating a leaf key")?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(&spec.common_name);
        let mut sans = Vec::new();
        for uri in &spec.uri_sans {
            sans.push(SanType::URI(
                uri.as_str()
                    .try_into()
                    .with_context(|| format!("URI SAN {uri}"))?,
            ));
        }
        for dns in &spec.dns_sans {
            sans.push(SanType::DnsName(
                dns.as_str()
                    .try_into()
                    .with_context(|| format!("DNS SAN {dns}"))?,
            ));
        }
        sans.extend(spec.ip_sans.iter().copied().map(SanType::IpAddress));
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = datetime(spec.not_before)?;
        params.not_after = datetime(spec.not_after)?;
        params.serial_number = Some(serial());
        let cert = params.signed_by(&key, &self.issuer).with_context(|| {
            format!("signing {} with CA {}", spec.common_name, self.common_name)
        })?;
        let cert_pem = cert.pem();
        let chain_pem = if spec.chain_includes_ca {
            format!("{cert_pem}{}", self.cert_pem)
        } else {
            cert_pem.clone()
        };
        Ok(Leaf {
            cert_pem,
            chain_pem,
            cert_der: cert.der().to_vec(),
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
        })
    }

    /// Writes the CA certificate to `dir/ca.pem`; returns its path.
    pub fn write_to(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        self.write_as(dir, "ca.pem")
    }

    /// Writes the CA certificate to `dir/file_name` (a second trust bundle beside `ca.pem`).
    pub fn write_as(&self, dir: &Path, file_name: &str) -> anyhow::Result<PathBuf> {
        let path = dir.join(file_name);
        write(&path, &self.cert_pem)?;
        Ok(path)
    }
}

/// The concatenated certificates of `cas`: a trust bundle with more than one root.
pub fn trust_bundle(cas: &[&TestCa]) -> String {
    cas.iter().map(|ca| ca.cert_pem()).collect()
}

/// What a leaf certificate says. [`IssueSpec::new`] gives a leaf valid from an hour ago for
/// a day with no SANs; the builder methods add them.
#[derive(Clone, Debug)]
pub struct IssueSpec {
    pub common_name: String,
    /// e.g. `spiffe://td/mesh/m/virtualNode/v1` (see [`spiffe_id`]).
    pub uri_sans: Vec<String>,
    pub dns_sans: Vec<String>,
    pub ip_sans: Vec<IpAddr>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// The chain PEM holds the CA certificate after the leaf (by default the leaf alone).
    pub chain_includes_ca: bool,
}

impl IssueSpec {
    pub fn new(common_name: &str) -> Self {
        let now = SystemTime::now();
        Self {
            common_name: common_name.to_owned(),
            uri_sans: Vec::new(),
            dns_sans: Vec::new(),
            ip_sans: Vec::new(),
            not_before: now - Duration::from_secs(3600),
            not_after: now + DAY,
            chain_includes_ca: false,
        }
    }

    pub fn uri(mut self, uri: &str) -> Self {
        self.uri_sans.push(uri.to_owned());
        self
    }

    pub fn dns(mut self, name: &str) -> Self {
        self.dns_sans.push(name.to_owned());
        self
    }

    pub fn ip(mut self, ip: IpAddr) -> Self {
        self.ip_sans.push(ip);
        self
    }

    pub fn valid(mut self, not_before: SystemTime, not_after: SystemTime) -> Self {
        self.not_before = not_before;
        self.not_after = not_after;
        self
    }

    /// Valid two days ago until yesterday.
    pub fn expired(self) -> Self {
        let now = SystemTime::now();
        self.valid(now - 2 * DAY, now - DAY)
    }

    /// Valid from tomorrow for a day.
    pub fn not_yet_valid(self) -> Self {
        let now = SystemTime::now();
        self.valid(now + DAY, now + 2 * DAY)
    }

    pub fn with_ca_in_chain(mut self) -> Self {
        self.chain_includes_ca = true;
        self
    }
}

/// The identity of virtual node `node` of mesh `m` in the tests' trust domain `td`, as the
/// agent reads it from a certificate.
pub fn spiffe_id(mesh: &str, node: &str) -> String {
    mesh_xds::names::spiffe_id("td", mesh, node)
}

/// A signed leaf certificate and its private key.
#[derive(Clone, Debug)]
pub struct Leaf {
    /// The leaf certificate alone.
    pub cert_pem: String,
    /// What a TLS endpoint presents: the leaf, then the CA when the spec asked for it.
    pub chain_pem: String,
    pub cert_der: Vec<u8>,
    /// PKCS#8 (`-----BEGIN PRIVATE KEY-----`).
    pub key_pem: String,
    pub key_der: Vec<u8>,
}

/// Where [`Leaf::write_to`] put the files.
#[derive(Clone, Debug)]
pub struct LeafFiles {
    /// `<stem>.pem`: the chain.
    pub cert: PathBuf,
    /// `<stem>.key`: the private key, mode 0600.
    pub key: PathBuf,
}

impl Leaf {
    /// Writes the chain to `dir/<stem>.pem` and the key to `dir/<stem>.key` (the CA's
    /// certificate is written by [`TestCa::write_to`], so that the leaf of another CA cannot
    /// overwrite the trust bundle beside it). Overwrites existing files in place: a rotation.
    pub fn write_to(&self, dir: &Path, stem: &str) -> anyhow::Result<LeafFiles> {
        let files = LeafFiles {
            cert: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}.key")),
        };
        write(&files.cert, &self.chain_pem)?;
        write(&files.key, &self.key_pem)?;
        std::fs::set_permissions(
            &files.key,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .with_context(|| format!("chmod {}", files.key.display()))?;
        Ok(files)
    }
}

fn write(path: &Path, contents: &str) -> anyhow::Result<()> {
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

fn datetime(at: SystemTime) -> anyhow::Result<time::OffsetDateTime> {
    let seconds = at
        .duration_since(UNIX_EPOCH)
        .context("a validity time before 1970")?
        .as_secs();
    time::OffsetDateTime::from_unix_timestamp(i64::try_from(seconds)?)
        .context("a validity time out of range")
}

/// Unique per certificate of this process (and very likely across processes): the time in
/// nanoseconds and a counter. The top bit stays clear so that the DER integer is positive.
fn serial() -> SerialNumber {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&nanos.to_be_bytes());
    bytes[8..].copy_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::sync::Arc;

    use rustls::{
        CertificateError, ClientConfig, ClientConnection, Error, RootCertStore, ServerConfig,
        ServerConnection,
        client::{WebPkiServerVerifier, danger::ServerCertVerifier as _},
        pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject as _},
        server::WebPkiClientVerifier,
    };
    use x509_parser::{extensions::GeneralName, prelude::FromDer as _};

    use super::*;

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn roots(ca: &TestCa) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from(ca.cert_der().to_vec()))
            .unwrap();
        Arc::new(roots)
    }

    fn chain(leaf: &Leaf) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(leaf.chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn key(leaf: &Leaf) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap()
    }

    /// What a client-certificate verifier trusting `ca` says of `leaf` now.
    fn verify_as_client(ca: &TestCa, leaf: &Leaf) -> Result<(), Error> {
        let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca), provider())
            .build()
            .unwrap();
        let chain = chain(leaf);
        verifier
            .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
            .map(|_| ())
    }

    fn spiffe_leaf(ca: &TestCa) -> Leaf {
        ca.issue(
            &IssueSpec::new("v1")
                .uri(&spiffe_id("m", "v1"))
                .dns("v1.m.local"),
        )
        .unwrap()
    }

    #[test]
    fn leaf_carries_its_sans_and_is_valid_under_its_ca() {
        let ca = TestCa::new("mesh test CA").unwrap();
        let leaf = ca
            .issue(
                &IssueSpec::new("v1")
                    .uri("spiffe://m/v1")
                    .dns("v1.m.local")
                    .ip("10.77.2.10".parse().unwrap()),
            )
            .unwrap();
        let (_, cert) =
            x509_parser::certificate::X509Certificate::from_der(&leaf.cert_der).unwrap();
        let sans: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|name| match name {
                GeneralName::URI(uri) => format!("uri:{uri}"),
                GeneralName::DNSName(dns) => format!("dns:{dns}"),
                GeneralName::IPAddress(ip) => format!("ip:{ip:?}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            sans,
            ["uri:spiffe://m/v1", "dns:v1.m.local", "ip:[10, 77, 2, 10]"]
        );
        assert!(!cert.is_ca());
        assert_eq!(
            cert.issuer().to_string(),
            "CN=mesh test CA",
            "issued by the CA"
        );
        assert!(cert.validity().is_valid());
        verify_as_client(&ca, &leaf).unwrap();
        // As a server certificate for its DNS name too.
        let verifier = WebPkiServerVerifier::builder_with_provider(roots(&ca), provider())
            .build()
            .unwrap();
        let chain = chain(&leaf);
        verifier
            .verify_server_cert(
                &chain[0],
                &[],
                &ServerName::try_from("v1.m.local").unwrap(),
                &[],
                UnixTime::now(),
            )
            .unwrap();
    }

    #[test]
    fn pem_forms_are_leaf_only_chains_and_pkcs8_keys() {
        let ca = TestCa::new("ca").unwrap();
        let leaf = spiffe_leaf(&ca);
        assert_eq!(leaf.chain_pem, leaf.cert_pem);
        assert_eq!(
            leaf.chain_pem
                .matches("-----BEGIN CERTIFICATE-----")
                .count(),
            1
        );
        assert!(leaf.key_pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert!(matches!(key(&leaf), PrivateKeyDer::Pkcs8(_)));
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----\n"));

        let with_ca = ca
            .issue(&IssueSpec::new("v1").uri("spiffe://m/v1").with_ca_in_chain())
            .unwrap();
        let chain = chain(&with_ca);
        assert_eq!(chain.len(), 2);
        assert_eq!(chain[1].as_ref(), ca.cert_der());
        verify_as_client(&ca, &with_ca).unwrap();
    }

    #[test]
    fn expired_and_not_yet_valid_leaves_are_refused() {
        let ca = TestCa::new("ca").unwrap();
        let expired = ca
            .issue(&IssueSpec::new("old").uri("spiffe://m/old").expired())
            .unwrap();
        let error = verify_as_client(&ca, &expired).unwrap_err();
        assert!(
            matches!(
                error,
                Error::InvalidCertificate(
                    CertificateError::Expired | CertificateError::ExpiredContext { .. }
                )
            ),
            "{error:?}"
        );
        let early = ca
            .issue(&IssueSpec::new("new").uri("spiffe://m/new").not_yet_valid())
            .unwrap();
        let error = verify_as_client(&ca, &early).unwrap_err();
        assert!(
            matches!(
                error,
                Error::InvalidCertificate(
                    CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. }
                )
            ),
            "{error:?}"
        );
    }

    #[test]
    fn leaf_of_another_ca_is_an_unknown_authority() {
        let ca = TestCa::new("mesh CA").unwrap();
        let other = TestCa::new("other CA").unwrap();
        let stranger = spiffe_leaf(&other);
        let error = verify_as_client(&ca, &stranger).unwrap_err();
        assert!(
            matches!(
                error,
                Error::InvalidCertificate(CertificateError::UnknownIssuer)
            ),
            "{error:?}"
        );
        // Another CA of the same name: webpki finds the issuer by name, and then the
        // signature does not verify.
        let namesake = TestCa::new("mesh CA").unwrap();
        let error = verify_as_client(&ca, &spiffe_leaf(&namesake)).unwrap_err();
        assert!(
            matches!(
                error,
                Error::InvalidCertificate(CertificateError::BadSignature)
            ),
            "{error:?}"
        );
        // A bundle with both roots trusts both.
        let bundle = trust_bundle(&[&ca, &other]);
        assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2);
        verify_as_client(&other, &stranger).unwrap();
    }

    /// The leaves work in a real mutual TLS handshake (rustls in memory): the key matches
    /// the certificate, and both usages are allowed.
    #[test]
    fn leaves_complete_a_mutual_tls_handshake() {
        let ca = TestCa::new("ca").unwrap();
        let server_leaf = spiffe_leaf(&ca);
        let client_leaf = ca
            .issue(&IssueSpec::new("client").uri(&spiffe_id("m", "client")))
            .unwrap();
        let server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(
                WebPkiClientVerifier::builder_with_provider(roots(&ca), provider())
                    .build()
                    .unwrap(),
            )
            .with_single_cert(chain(&server_leaf), key(&server_leaf))
            .unwrap();
        let client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots(&ca))
            .with_client_auth_cert(chain(&client_leaf), key(&client_leaf))
            .unwrap();
        let mut server = ServerConnection::new(Arc::new(server)).unwrap();
        let mut client = ClientConnection::new(
            Arc::new(client),
            ServerName::try_from("v1.m.local").unwrap(),
        )
        .unwrap();
        for _ in 0..10 {
            if !client.is_handshaking() && !server.is_handshaking() {
                break;
            }
            let mut wire = Vec::new();
            client.write_tls(&mut wire).unwrap();
            server.read_tls(&mut wire.as_slice()).unwrap();
            server.process_new_packets().unwrap();
            let mut wire = Vec::new();
            server.write_tls(&mut wire).unwrap();
            client.read_tls(&mut wire.as_slice()).unwrap();
            client.process_new_packets().unwrap();
        }
        assert!(!client.is_handshaking() && !server.is_handshaking());
        let presented = server.peer_certificates().unwrap();
        assert_eq!(presented[0].as_ref(), client_leaf.cert_der.as_slice());
    }

    #[test]
    fn files_are_written_where_the_agent_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("ca").unwrap();
        let leaf = spiffe_leaf(&ca);
        let files = leaf.write_to(dir.path(), "v1").unwrap();
        let ca_path = ca.write_to(dir.path()).unwrap();
        assert_eq!(files.cert, dir.path().join("v1.pem"));
        assert_eq!(files.key, dir.path().join("v1.key"));
        assert_eq!(ca_path, dir.path().join("ca.pem"));
        assert_eq!(
            std::fs::read_to_string(&files.cert).unwrap(),
            leaf.chain_pem
        );
        assert_eq!(std::fs::read_to_string(&files.key).unwrap(), leaf.key_pem);
        assert_eq!(std::fs::read_to_string(&ca_path).unwrap(), ca.cert_pem());
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&files.key).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        // A second CA's bundle goes beside the first under its own name.
        let other = TestCa::new("other").unwrap();
        let other_path = other.write_as(dir.path(), "other-ca.pem").unwrap();
        assert_eq!(
            std::fs::read_to_string(other_path).unwrap(),
            other.cert_pem()
        );
        assert_eq!(std::fs::read_to_string(&ca_path).unwrap(), ca.cert_pem());
    }

    #[test]
    fn every_certificate_gets_its_own_serial() {
        let ca = TestCa::new("ca").unwrap();
        let serials: std::collections::HashSet<Vec<u8>> = (0..20)
            .map(|_| {
                let leaf = spiffe_leaf(&ca);
                let (_, cert) =
                    x509_parser::certificate::X509Certificate::from_der(&leaf.cert_der).unwrap();
                cert.raw_serial().to_vec()
            })
            .collect();
        assert_eq!(serials.len(), 20);
    }
}
