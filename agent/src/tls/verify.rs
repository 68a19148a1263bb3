//! Peer certificate checks as App Mesh's validation contexts define them: chained to the
//! trusted CAs, and carrying one of the listed subject alternative names. The server's name
//! is not otherwise checked (Envoy checks SANs only when the context lists some), so a
//! certificate for a virtual node is accepted wherever that node's SAN is expected.
use std::{fmt, sync::Arc};

use mesh_xds::plan::tls::{SanKind, SanMatcher};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, OtherError, RootCertStore,
    SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature},
    pki_types::{CertificateDer, ServerName, UnixTime},
    server::{
        ParsedCertificate, WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
};

use super::identity::subject_alt_names;

/// The peer's certificate carries none of the expected names.
#[derive(Debug)]
pub struct SanMismatch {
    presented: Vec<(SanKind, String)>,
    expected: Vec<SanMatcher>,
}

impl fmt::Display for SanMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let presented: Vec<String> = self
            .presented
            .iter()
            .map(|(kind, name)| match kind {
                SanKind::Dns => format!("DNS:{name}"),
                SanKind::Uri => format!("URI:{name}"),
            })
            .collect();
        let expected: Vec<String> = self.expected.iter().map(ToString::to_string).collect();
        write!(
            f,
            "certificate SAN does not match: presented [{}], expected one of [{}]",
            presented.join(", "),
            expected.join(", ")
        )
    }
}

impl std::error::Error for SanMismatch {}

/// Ok when `sans` is empty or the certificate carries one of them.
fn check_sans(certificate: &CertificateDer<'_>, sans: &[SanMatcher]) -> Result<(), Error> {
    if sans.is_empty() {
        return Ok(());
    }
    let presented = subject_alt_names(certificate);
    if presented
        .iter()
        .any(|(kind, name)| sans.iter().any(|m| m.matches(*kind, name)))
    {
        return Ok(());
    }
    Err(Error::InvalidCertificate(CertificateError::Other(
        OtherError(Arc::new(SanMismatch {
            presented,
            expected: sans.to_vec(),
        })),
    )))
}

/// Checks a server's certificate (the client side of a cluster).
#[derive(Debug)]
pub struct ServerVerifier {
    /// None: any certificate is accepted (a context without validation).
    roots: Option<Arc<RootCertStore>>,
    sans: Vec<SanMatcher>,
    provider: Arc<CryptoProvider>,
}

impl ServerVerifier {
    pub fn new(
        roots: Option<Arc<RootCertStore>>,
        sans: Vec<SanMatcher>,
        provider: Arc<CryptoProvider>,
    ) -> Self {
        Self {
            roots,
            sans,
            provider,
        }
    }
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        if let Some(roots) = &self.roots {
            let parsed = ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &parsed,
                roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )?;
        }
        check_sans(end_entity, &self.sans)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Checks a client's certificate (a listener's validation): rustls' own chain check, then
/// the subject alternative names.
#[derive(Debug)]
pub struct ClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    sans: Vec<SanMatcher>,
}

impl ClientVerifier {
    /// `required`: a client without a certificate is refused (mutual TLS); else one that
    /// presents a certificate still has it checked.
    pub fn new(
        roots: Arc<RootCertStore>,
        sans: Vec<SanMatcher>,
        required: bool,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, rustls::server::VerifierBuilderError> {
        let builder = WebPkiClientVerifier::builder_with_provider(roots, provider);
        let builder = if required {
            builder
        } else {
            builder.allow_unauthenticated()
        };
        Ok(Self {
            inner: builder.build()?,
            sans,
        })
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        check_sans(end_entity, &self.sans)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
