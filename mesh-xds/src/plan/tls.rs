//! TLS as the node proxy applies it: the server side of a listener's filter chain (a
//! `DownstreamTlsContext`), the client side of a cluster (an `UpstreamTlsContext`), and SDS
//! secrets. Certificates, keys and trust bundles are named here — a file, inline bytes or an
//! SDS secret — and read by the agent, which re-reads files when they change (rotation).
//!
//! Only what the proxy enforces is accepted: a context asking for something it would not do
//! (cipher lists, OCSP, CRLs, several certificates, SAN matchers other than exact / prefix /
//! suffix) is refused with the field, rather than served weaker than asked.
use std::{path::PathBuf, sync::Arc};

use envoy_types::pb::envoy::{
    config::core::v3::{DataSource, TransportSocket, data_source::Specifier, transport_socket},
    extensions::transport_sockets::tls::v3::{
        CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, Secret,
        SubjectAltNameMatcher, TlsCertificate, TlsParameters, UpstreamTlsContext,
        common_tls_context::ValidationContextType, secret, subject_alt_name_matcher::SanType,
        tls_parameters::TlsProtocol,
    },
    r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern},
};
use prost::{Message, Name};

use super::PlanError;

/// Envoy's name for the TLS transport socket; `raw_buffer` is plain text.
pub const TLS_SOCKET: &str = "envoy.transport_sockets.tls";
const RAW_BUFFER: &str = "envoy.transport_sockets.raw_buffer";

/// Where PEM bytes come from.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Pem {
    /// A file on the node, read by the agent and re-read when it changes.
    File(PathBuf),
    Inline(Arc<[u8]>),
}

/// Inline bytes may be a private key: their length only.
impl std::fmt::Debug for Pem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => f.debug_tuple("File").field(path).finish(),
            Self::Inline(bytes) => write!(f, "Inline({} bytes)", bytes.len()),
        }
    }
}

/// A certificate chain with its private key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyPair {
    pub chain: Pem,
    pub key: Pem,
}

/// A certificate: given in the context, or the SDS secret of that name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CertificateSource {
    Given(KeyPair),
    Sds(String),
}

/// Trusted CAs: given in the context, or the SDS validation-context secret of that name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TrustSource {
    Given(Pem),
    Sds(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SanKind {
    Dns,
    Uri,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SanPattern {
    Exact(String),
    Prefix(String),
    Suffix(String),
}

/// One acceptable subject alternative name of the peer's certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SanMatcher {
    pub kind: SanKind,
    pub pattern: SanPattern,
}

impl SanMatcher {
    pub fn matches(&self, kind: SanKind, name: &str) -> bool {
        kind == self.kind
            && match &self.pattern {
                SanPattern::Exact(value) => name == value,
                SanPattern::Prefix(value) => name.starts_with(value.as_str()),
                SanPattern::Suffix(value) => name.ends_with(value.as_str()),
            }
    }
}

impl std::fmt::Display for SanMatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            SanKind::Dns => "DNS",
            SanKind::Uri => "URI",
        };
        match &self.pattern {
            SanPattern::Exact(value) => write!(f, "{kind}:{value}"),
            SanPattern::Prefix(value) => write!(f, "{kind}:{value}*"),
            SanPattern::Suffix(value) => write!(f, "{kind}:*{value}"),
        }
    }
}

/// How the peer's certificate is checked: chained to `trust`, and (when any are given)
/// carrying one of `sans`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Validation {
    pub trust: TrustSource,
    pub sans: Vec<SanMatcher>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TlsVersion {
    V1_2,
    V1_3,
}

/// The protocol versions a context allows (Envoy's defaults: 1.2 to 1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Versions {
    pub min: TlsVersion,
    pub max: TlsVersion,
}

impl Default for Versions {
    fn default() -> Self {
        Self {
            min: TlsVersion::V1_2,
            max: TlsVersion::V1_3,
        }
    }
}

/// The server side of a listener's filter chain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerTlsPlan {
    pub certificate: CertificateSource,
    /// Client certificates are checked against this when presented.
    pub validation: Option<Validation>,
    /// Mutual TLS: a client without a certificate is refused.
    pub require_client_certificate: bool,
    pub versions: Versions,
}

/// The client side of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientTlsPlan {
    /// Presented when the server asks for one.
    pub certificate: Option<CertificateSource>,
    /// None: the server's certificate is not checked (Envoy's behaviour without a
    /// validation context).
    pub validation: Option<Validation>,
    /// Server name indication, when the context names one.
    pub sni: Option<String>,
    pub versions: Versions,
}

/// An SDS secret.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SecretPlan {
    Certificate(KeyPair),
    Trust(Validation),
}

/// The TLS a transport socket asks for: None for plain text (no socket, or raw_buffer).
fn tls_config(socket: Option<&TransportSocket>) -> Result<Option<&[u8]>, PlanError> {
    let Some(socket) = socket else {
        return Ok(None);
    };
    if socket.name == RAW_BUFFER {
        return Ok(None);
    }
    match &socket.config_type {
        Some(transport_socket::ConfigType::TypedConfig(any)) => Ok(Some(any.value.as_slice())),
        None => Err(PlanError::new(
            "transport_socket",
            format!("transport socket {} has no typed config", socket.name),
        )),
    }
}

impl ServerTlsPlan {
    /// The server TLS of a filter chain's transport socket; None for plain text.
    pub fn from_socket(socket: Option<&TransportSocket>) -> Result<Option<Self>, PlanError> {
        let Some(bytes) = tls_config(socket)? else {
            return Ok(None);
        };
        let within = |e: PlanError| e.within("transport_socket");
        let context = decode::<DownstreamTlsContext>(bytes).map_err(within)?;
        Self::from_context(&context).map(Some).map_err(within)
    }

    fn from_context(context: &DownstreamTlsContext) -> Result<Self, PlanError> {
        if context.require_sni.is_some_and(|v| v.value) || context.ocsp_staple_policy != 0 {
            return Err(PlanError::new(
                "require_sni",
                "require_sni and OCSP stapling are not supported",
            ));
        }
        let common = common(context.common_tls_context.as_ref())?;
        let certificate = common.certificate.ok_or_else(|| {
            PlanError::new(
                "common_tls_context",
                "a server needs a certificate (tls_certificates or tls_certificate_sds_secret_configs)",
            )
        })?;
        let require_client_certificate =
            context.require_client_certificate.is_some_and(|v| v.value);
        if require_client_certificate && common.validation.is_none() {
            return Err(PlanError::new(
                "require_client_certificate",
                "client certificates are required but there is no validation context to check them",
            ));
        }
        Ok(Self {
            certificate,
            validation: common.validation,
            require_client_certificate,
            versions: common.versions,
        })
    }
}

impl ClientTlsPlan {
    /// The client TLS of a cluster's transport socket; None for plain text.
    pub fn from_socket(socket: Option<&TransportSocket>) -> Result<Option<Self>, PlanError> {
        let Some(bytes) = tls_config(socket)? else {
            return Ok(None);
        };
        let within = |e: PlanError| e.within("transport_socket");
        let context = decode::<UpstreamTlsContext>(bytes).map_err(within)?;
        let common = common(context.common_tls_context.as_ref()).map_err(within)?;
        Ok(Some(Self {
            certificate: common.certificate,
            validation: common.validation,
            sni: Some(context.sni).filter(|s| !s.is_empty()),
            versions: common.versions,
        }))
    }
}

impl SecretPlan {
    pub fn from_secret(secret: &Secret) -> Result<Self, PlanError> {
        match &secret.r#type {
            Some(secret::Type::TlsCertificate(certificate)) => key_pair(certificate)
                .map(Self::Certificate)
                .map_err(|e| e.within("tls_certificate")),
            Some(secret::Type::ValidationContext(context)) => validation(context)
                .map(Self::Trust)
                .map_err(|e| e.within("validation_context")),
            _ => Err(PlanError::new(
                "type",
                "only tls_certificate and validation_context secrets are supported",
            )),
        }
    }
}

fn decode<M: Message + Default + Name>(bytes: &[u8]) -> Result<M, PlanError> {
    M::decode(bytes).map_err(|e| PlanError::new("typed_config", format!("not a {}: {e}", M::NAME)))
}

struct Common {
    certificate: Option<CertificateSource>,
    validation: Option<Validation>,
    versions: Versions,
}

fn common(context: Option<&CommonTlsContext>) -> Result<Common, PlanError> {
    let Some(context) = context else {
        return Ok(Common {
            certificate: None,
            validation: None,
            versions: Versions::default(),
        });
    };
    let within = |e: PlanError| e.within("common_tls_context");
    if context.tls_certificates.len() + context.tls_certificate_sds_secret_configs.len() > 1 {
        return Err(within(PlanError::new(
            "tls_certificates",
            "one certificate per context is supported",
        )));
    }
    if context.tls_certificate_provider_instance.is_some()
        || context.custom_handshaker.is_some()
        || context.key_log.is_some()
        || context.custom_tls_certificate_selector.is_some()
    {
        return Err(within(PlanError::new(
            "tls_certificate_provider_instance",
            "certificate providers, custom handshakers and key logs are not supported",
        )));
    }
    let certificate = match (
        context.tls_certificates.first(),
        context.tls_certificate_sds_secret_configs.first(),
    ) {
        (Some(given), _) => Some(CertificateSource::Given(
            key_pair(given).map_err(|e| within(e.within("tls_certificates[0]")))?,
        )),
        (None, Some(sds)) => Some(CertificateSource::Sds(sds.name.clone())),
        (None, None) => None,
    };
    let validation = match &context.validation_context_type {
        None => None,
        Some(ValidationContextType::ValidationContext(given)) => {
            Some(validation(given).map_err(|e| within(e.within("validation_context")))?)
        }
        Some(ValidationContextType::ValidationContextSdsSecretConfig(sds)) => Some(Validation {
            trust: TrustSource::Sds(sds.name.clone()),
            sans: Vec::new(),
        }),
        Some(ValidationContextType::CombinedValidationContext(combined)) => {
            let field = "combined_validation_context";
            #[allow(deprecated)] // still on the wire from older control planes
            let providers = combined.validation_context_certificate_provider.is_some()
                || combined
                    .validation_context_certificate_provider_instance
                    .is_some();
            if providers {
                return Err(within(PlanError::new(
                    field,
                    "certificate providers are not supported",
                )));
            }
            let sds = combined
                .validation_context_sds_secret_config
                .as_ref()
                .ok_or_else(|| {
                    within(PlanError::new(
                        field,
                        "no validation_context_sds_secret_config",
                    ))
                })?;
            let sans = match &combined.default_validation_context {
                Some(default) => {
                    if default.trusted_ca.is_some() {
                        return Err(within(PlanError::new(
                            format!("{field}.default_validation_context.trusted_ca"),
                            "trust comes from the SDS secret; give it there",
                        )));
                    }
                    san_matchers(default).map_err(|e| {
                        within(e.within(format!("{field}.default_validation_context")))
                    })?
                }
                None => Vec::new(),
            };
            Some(Validation {
                trust: TrustSource::Sds(sds.name.clone()),
                sans,
            })
        }
        Some(_) => {
            return Err(within(PlanError::new(
                "validation_context_certificate_provider_instance",
                "certificate providers are not supported",
            )));
        }
    };
    let versions = versions(context.tls_params.as_ref()).map_err(within)?;
    Ok(Common {
        certificate,
        validation,
        versions,
    })
}

fn versions(params: Option<&TlsParameters>) -> Result<Versions, PlanError> {
    let Some(params) = params else {
        return Ok(Versions::default());
    };
    if !params.cipher_suites.is_empty()
        || !params.ecdh_curves.is_empty()
        || !params.signature_algorithms.is_empty()
    {
        return Err(PlanError::new(
            "tls_params",
            "cipher suites, curves and signature algorithms are the proxy's own (TLS 1.2 and 1.3 AEAD suites); lists are not supported",
        ));
    }
    let version = |value: i32, default: TlsVersion, field: &str| match TlsProtocol::try_from(value)
    {
        Ok(TlsProtocol::TlsAuto) => Ok(default),
        Ok(TlsProtocol::TlSv12) => Ok(TlsVersion::V1_2),
        Ok(TlsProtocol::TlSv13) => Ok(TlsVersion::V1_3),
        _ => Err(PlanError::new(
            format!("tls_params.{field}"),
            "only TLS 1.2 and 1.3 are supported",
        )),
    };
    let min = version(
        params.tls_minimum_protocol_version,
        TlsVersion::V1_2,
        "tls_minimum_protocol_version",
    )?;
    let max = version(
        params.tls_maximum_protocol_version,
        TlsVersion::V1_3,
        "tls_maximum_protocol_version",
    )?;
    if min > max {
        return Err(PlanError::new(
            "tls_params",
            "the minimum protocol version is above the maximum",
        ));
    }
    Ok(Versions { min, max })
}

fn key_pair(certificate: &TlsCertificate) -> Result<KeyPair, PlanError> {
    if certificate.password.is_some() || certificate.private_key_provider.is_some() {
        return Err(PlanError::new(
            "private_key",
            "encrypted keys and private key providers are not supported",
        ));
    }
    Ok(KeyPair {
        chain: pem(certificate.certificate_chain.as_ref())
            .map_err(|e| e.within("certificate_chain"))?,
        key: pem(certificate.private_key.as_ref()).map_err(|e| e.within("private_key"))?,
    })
}

fn validation(context: &CertificateValidationContext) -> Result<Validation, PlanError> {
    if context.crl.is_some()
        || !context.verify_certificate_spki.is_empty()
        || !context.verify_certificate_hash.is_empty()
        || context.trust_chain_verification != 0
        || context.custom_validator_config.is_some()
    {
        return Err(PlanError::new(
            "crl",
            "CRLs, SPKI/hash pinning, ACCEPT_UNTRUSTED and custom validators are not supported",
        ));
    }
    Ok(Validation {
        trust: TrustSource::Given(
            pem(context.trusted_ca.as_ref()).map_err(|e| e.within("trusted_ca"))?,
        ),
        sans: san_matchers(context)?,
    })
}

fn san_matchers(context: &CertificateValidationContext) -> Result<Vec<SanMatcher>, PlanError> {
    #[allow(deprecated)] // still sent by older control planes: DNS names
    let legacy = context
        .match_subject_alt_names
        .iter()
        .map(|m| (SanKind::Dns, m));
    let typed = context
        .match_typed_subject_alt_names
        .iter()
        .enumerate()
        .map(|(index, matcher)| san_kind(matcher, index).map(|kind| (kind, &matcher.matcher)));
    let mut matchers = Vec::new();
    for (index, entry) in typed.enumerate() {
        let (kind, matcher) = entry?;
        let field = format!("match_typed_subject_alt_names[{index}].matcher");
        let matcher = matcher
            .as_ref()
            .ok_or_else(|| PlanError::new(field.clone(), "missing"))?;
        matchers.push(SanMatcher {
            kind,
            pattern: pattern(matcher).map_err(|e| e.within(field))?,
        });
    }
    for (index, (kind, matcher)) in legacy.enumerate() {
        matchers.push(SanMatcher {
            kind,
            pattern: pattern(matcher)
                .map_err(|e| e.within(format!("match_subject_alt_names[{index}]")))?,
        });
    }
    Ok(matchers)
}

fn san_kind(matcher: &SubjectAltNameMatcher, index: usize) -> Result<SanKind, PlanError> {
    match SanType::try_from(matcher.san_type) {
        Ok(SanType::Dns) => Ok(SanKind::Dns),
        Ok(SanType::Uri) => Ok(SanKind::Uri),
        _ => Err(PlanError::new(
            format!("match_typed_subject_alt_names[{index}].san_type"),
            "only DNS and URI subject alternative names are matched",
        )),
    }
}

fn pattern(matcher: &StringMatcher) -> Result<SanPattern, PlanError> {
    if matcher.ignore_case {
        return Err(PlanError::new("ignore_case", "not supported"));
    }
    match &matcher.match_pattern {
        Some(MatchPattern::Exact(value)) => Ok(SanPattern::Exact(value.clone())),
        Some(MatchPattern::Prefix(value)) => Ok(SanPattern::Prefix(value.clone())),
        Some(MatchPattern::Suffix(value)) => Ok(SanPattern::Suffix(value.clone())),
        _ => Err(PlanError::new(
            "match_pattern",
            "only exact, prefix and suffix are supported",
        )),
    }
}

fn pem(source: Option<&DataSource>) -> Result<Pem, PlanError> {
    match source.and_then(|s| s.specifier.as_ref()) {
        Some(Specifier::Filename(path)) if !path.is_empty() => Ok(Pem::File(PathBuf::from(path))),
        Some(Specifier::InlineBytes(bytes)) => Ok(Pem::Inline(bytes.as_slice().into())),
        Some(Specifier::InlineString(text)) => Ok(Pem::Inline(text.as_bytes().into())),
        Some(Specifier::EnvironmentVariable(_)) => Err(PlanError::new(
            "environment_variable",
            "not supported: give a file or inline bytes",
        )),
        _ => Err(PlanError::new("", "missing")),
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::{
        envoy::{
            config::core::v3::TransportSocket,
            extensions::transport_sockets::tls::v3::{
                SdsSecretConfig, common_tls_context::ValidationContextType,
            },
        },
        google::protobuf::BoolValue,
    };
    use envoy_types::util::pack_any;

    use super::*;

    fn file(path: &str) -> Option<DataSource> {
        Some(DataSource {
            specifier: Some(Specifier::Filename(path.into())),
            ..Default::default()
        })
    }

    fn socket(any: envoy_types::pb::google::protobuf::Any) -> TransportSocket {
        TransportSocket {
            name: TLS_SOCKET.into(),
            config_type: Some(transport_socket::ConfigType::TypedConfig(any)),
        }
    }

    fn exact_uri(value: &str) -> SubjectAltNameMatcher {
        SubjectAltNameMatcher {
            san_type: SanType::Uri as i32,
            matcher: Some(StringMatcher {
                match_pattern: Some(MatchPattern::Exact(value.into())),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_mutual_tls_listener_names_its_certificate_trust_and_sans() {
        let context = DownstreamTlsContext {
            common_tls_context: Some(CommonTlsContext {
                tls_certificates: vec![TlsCertificate {
                    certificate_chain: file("/certs/web.pem"),
                    private_key: file("/certs/web.key"),
                    ..Default::default()
                }],
                validation_context_type: Some(ValidationContextType::ValidationContext(
                    CertificateValidationContext {
                        trusted_ca: file("/certs/ca.pem"),
                        match_typed_subject_alt_names: vec![exact_uri("spiffe://shop/api")],
                        ..Default::default()
                    },
                )),
                ..Default::default()
            }),
            require_client_certificate: Some(BoolValue { value: true }),
            ..Default::default()
        };
        let plan = ServerTlsPlan::from_socket(Some(&socket(pack_any(context))))
            .unwrap()
            .unwrap();
        assert!(plan.require_client_certificate);
        assert_eq!(
            plan.certificate,
            CertificateSource::Given(KeyPair {
                chain: Pem::File("/certs/web.pem".into()),
                key: Pem::File("/certs/web.key".into()),
            })
        );
        let validation = plan.validation.unwrap();
        assert_eq!(
            validation.trust,
            TrustSource::Given(Pem::File("/certs/ca.pem".into()))
        );
        assert!(validation.sans[0].matches(SanKind::Uri, "spiffe://shop/api"));
        assert!(!validation.sans[0].matches(SanKind::Dns, "spiffe://shop/api"));
    }

    #[test]
    fn sds_trust_with_sans_comes_as_a_combined_context() {
        let context = UpstreamTlsContext {
            common_tls_context: Some(CommonTlsContext {
                tls_certificate_sds_secret_configs: vec![SdsSecretConfig {
                    name: "spiffe://shop/web".into(),
                    ..Default::default()
                }],
                validation_context_type: Some(ValidationContextType::CombinedValidationContext(
                    envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::CombinedCertificateValidationContext {
                        default_validation_context: Some(CertificateValidationContext {
                            match_typed_subject_alt_names: vec![exact_uri("spiffe://shop/api")],
                            ..Default::default()
                        }),
                        validation_context_sds_secret_config: Some(SdsSecretConfig {
                            name: "spiffe://shop".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            }),
            ..Default::default()
        };
        let plan = ClientTlsPlan::from_socket(Some(&socket(pack_any(context))))
            .unwrap()
            .unwrap();
        assert_eq!(
            plan.certificate,
            Some(CertificateSource::Sds("spiffe://shop/web".into()))
        );
        let validation = plan.validation.unwrap();
        assert_eq!(validation.trust, TrustSource::Sds("spiffe://shop".into()));
        assert_eq!(validation.sans.len(), 1);
    }

    #[test]
    fn what_the_proxy_would_not_enforce_is_refused_with_its_field() {
        let context = DownstreamTlsContext {
            common_tls_context: Some(CommonTlsContext {
                tls_certificates: vec![TlsCertificate {
                    certificate_chain: file("/c.pem"),
                    private_key: file("/c.key"),
                    ..Default::default()
                }],
                tls_params: Some(TlsParameters {
                    cipher_suites: vec!["ECDHE-RSA-AES128-SHA".into()],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let error = ServerTlsPlan::from_socket(Some(&socket(pack_any(context)))).unwrap_err();
        assert_eq!(
            error.field,
            "transport_socket.common_tls_context.tls_params"
        );

        let no_certificate = DownstreamTlsContext::default();
        let error =
            ServerTlsPlan::from_socket(Some(&socket(pack_any(no_certificate)))).unwrap_err();
        assert!(
            error.reason.contains("a server needs a certificate"),
            "{error}"
        );

        let plain = TransportSocket {
            name: RAW_BUFFER.into(),
            ..Default::default()
        };
        assert_eq!(ServerTlsPlan::from_socket(Some(&plain)).unwrap(), None);
    }
}
