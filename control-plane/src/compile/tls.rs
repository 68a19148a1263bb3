//! TLS contexts: the server side of a virtual node listener (termination) and the client side
//! of a backend's client policy (origination), from App Mesh's certificate and validation
//! settings. Files are read by the proxy; SDS secrets come over ADS.
use envoy_types::pb::envoy::{
    config::listener::v3::{
        Filter, FilterChain, FilterChainMatch, ListenerFilter, listener_filter,
    },
    extensions::filters::listener::tls_inspector::v3::TlsInspector,
};
use envoy_types::{
    pb::{
        envoy::{
            config::core::v3::{
                DataSource, TransportSocket, data_source::Specifier, transport_socket,
            },
            extensions::transport_sockets::tls::v3::{
                CertificateValidationContext, CommonTlsContext, DownstreamTlsContext,
                SdsSecretConfig, SubjectAltNameMatcher, TlsCertificate, UpstreamTlsContext,
                common_tls_context::{CombinedCertificateValidationContext, ValidationContextType},
                subject_alt_name_matcher::SanType,
            },
            r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern},
        },
        google::protobuf::BoolValue,
    },
    util::pack_any,
};
use mesh_model::types::{
    ClientPolicyTls, ClientTlsCertificate, ListenerTls, ListenerTlsCertificate, ListenerTlsMode,
    ListenerTlsValidationContextTrust, SubjectAlternativeNames, TlsValidationContextTrust,
};
use mesh_xds::names;

use super::{
    Issues,
    index::Lookup,
    values::{ads, u32_value},
};
use crate::identity::{AutoMtls, MtlsMode};

const TLS_SOCKET: &str = "envoy.transport_sockets.tls";

/// How a listener port terminates TLS: its App Mesh `tls` when it has one (DISABLED: plain
/// text, even under automatic mTLS), else automatic mTLS when the mesh is under it.
pub struct ListenerTlsSource<'a> {
    pub tls: Option<&'a ListenerTls>,
    /// (settings, mesh, virtual node) when automatic mTLS applies.
    pub auto: Option<(&'a AutoMtls, &'a str, &'a str)>,
}

/// The filter chains of one listener port under its TLS mode: plain text (no TLS, DISABLED),
/// TLS only (STRICT), or TLS and plain text told apart by the TLS inspector (PERMISSIVE).
/// None when TLS cannot be terminated here: fail closed, the port is not served in plain text.
pub fn chains(
    port: i32,
    filter: &Filter,
    source: ListenerTlsSource<'_>,
    what: &str,
    issues: &mut Issues,
) -> Vec<FilterChain> {
    let plain = |transport: &str| FilterChain {
        filter_chain_match: Some(FilterChainMatch {
            destination_port: u32_value(i64::from(port)),
            transport_protocol: transport.to_owned(),
            ..Default::default()
        }),
        filters: vec![filter.clone()],
        ..Default::default()
    };
    let (socket, permissive) = match (source.tls, source.auto) {
        (Some(tls), _) if tls.mode == ListenerTlsMode::Disabled => return vec![plain("")],
        (Some(tls), _) => match server(tls, what, issues) {
            Some(socket) => (socket, tls.mode == ListenerTlsMode::Permissive),
            None => return Vec::new(),
        },
        (None, Some((mtls, mesh, node))) => (
            auto_server(mtls, mesh, node),
            mtls.mode(mesh) == MtlsMode::Permissive,
        ),
        (None, None) => return vec![plain("")],
    };
    if permissive {
        vec![
            FilterChain {
                transport_socket: Some(socket),
                ..plain("tls")
            },
            plain("raw_buffer"),
        ]
    } else {
        vec![FilterChain {
            transport_socket: Some(socket),
            ..plain("")
        }]
    }
}

/// Automatic mTLS, server side: the virtual node's own certificate (its agent makes it), and
/// callers' certificates required, of the same mesh.
fn auto_server(mtls: &AutoMtls, mesh: &str, node: &str) -> TransportSocket {
    let same_mesh = MatchPattern::Prefix(format!("spiffe://{}/mesh/{mesh}/", mtls.trust_domain()));
    let id = names::spiffe_id(mtls.trust_domain(), mesh, node);
    let context = DownstreamTlsContext {
        common_tls_context: Some(auto_common(mtls, &id, same_mesh)),
        require_client_certificate: Some(BoolValue { value: true }),
        ..Default::default()
    };
    socket(pack_any(context))
}

/// Automatic mTLS, client side: the certificate of the caller whose SPIFFE ID is `caller`
/// (a virtual node or gateway), the destination virtual node's identity checked.
pub fn auto_client(
    mtls: &AutoMtls,
    caller: &str,
    mesh: &str,
    destination: &str,
) -> TransportSocket {
    let expected = MatchPattern::Exact(names::spiffe_id(mtls.trust_domain(), mesh, destination));
    let context = UpstreamTlsContext {
        common_tls_context: Some(auto_common(mtls, caller, expected)),
        ..Default::default()
    };
    socket(pack_any(context))
}

/// The certificate of identity `id` and the trust domain's bundle, the peer's URI SAN
/// matched by `peer`.
fn auto_common(mtls: &AutoMtls, id: &str, peer: MatchPattern) -> CommonTlsContext {
    let peer = SubjectAltNameMatcher {
        san_type: SanType::Uri as i32,
        matcher: Some(StringMatcher {
            match_pattern: Some(peer),
            ..Default::default()
        }),
        ..Default::default()
    };
    CommonTlsContext {
        tls_certificate_sds_secret_configs: vec![sds_secret(&names::identity_secret(id))],
        validation_context_type: Some(validate_with_sds(
            &names::trust_bundle_secret(mtls.trust_domain()),
            vec![peer],
        )),
        ..Default::default()
    }
}

/// The TLS inspector, when some chain is chosen by transport protocol (PERMISSIVE).
pub fn inspector_for(chains: &[FilterChain]) -> Vec<ListenerFilter> {
    let inspects = chains.iter().any(|chain| {
        chain
            .filter_chain_match
            .as_ref()
            .is_some_and(|m| !m.transport_protocol.is_empty())
    });
    if !inspects {
        return Vec::new();
    }
    vec![ListenerFilter {
        name: "envoy.filters.listener.tls_inspector".into(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(pack_any(
            TlsInspector::default(),
        ))),
        ..Default::default()
    }]
}

/// The TLS server side of a listener, or None (with an issue) when it cannot be served here.
pub fn server(tls: &ListenerTls, what: &str, issues: &mut Issues) -> Option<TransportSocket> {
    let mut common = CommonTlsContext::default();
    match &tls.certificate {
        ListenerTlsCertificate::File(file) => common.tls_certificates.push(certificate_files(
            &file.certificate_chain,
            &file.private_key,
        )),
        ListenerTlsCertificate::Sds(sds) => common
            .tls_certificate_sds_secret_configs
            .push(sds_secret(&sds.secret_name)),
        ListenerTlsCertificate::Acm(_) => {
            issues.push(format!(
                "{what}: ACM certificates exist only inside AWS; give a file or SDS certificate. Until then the port refuses every connection"
            ));
            // Fail closed: the port is still taken from the application and refuses, rather
            // than let plain text reach it.
            common
                .tls_certificate_sds_secret_configs
                .push(sds_secret(&names::unavailable_secret(
                    "an ACM certificate, which exists only inside AWS",
                )));
        }
    }
    let mut require_client_certificate = None;
    if let Some(validation) = &tls.validation {
        let sans = san_matchers(validation.subject_alternative_names.as_ref());
        common.validation_context_type = Some(match &validation.trust {
            ListenerTlsValidationContextTrust::File(file) => {
                validate_with_file(&file.certificate_chain, sans)
            }
            ListenerTlsValidationContextTrust::Sds(sds) => {
                validate_with_sds(&sds.secret_name, sans)
            }
        });
        // A validation context on a listener means mutual TLS: clients must present a certificate.
        require_client_certificate = Some(BoolValue { value: true });
    }
    let context = DownstreamTlsContext {
        common_tls_context: Some(common),
        require_client_certificate,
        ..Default::default()
    };
    Some(socket(pack_any(context)))
}

/// The TLS client side for a backend's client policy, or None (with an issue) when its trust
/// cannot be used here.
pub fn client(
    policy: &ClientPolicyTls,
    what: &str,
    issues: &mut Issues,
) -> Option<TransportSocket> {
    let mut common = CommonTlsContext::default();
    match &policy.certificate {
        Some(ClientTlsCertificate::File(file)) => common.tls_certificates.push(certificate_files(
            &file.certificate_chain,
            &file.private_key,
        )),
        Some(ClientTlsCertificate::Sds(sds)) => common
            .tls_certificate_sds_secret_configs
            .push(sds_secret(&sds.secret_name)),
        None => {}
    }
    let sans = san_matchers(policy.validation.subject_alternative_names.as_ref());
    common.validation_context_type = Some(match &policy.validation.trust {
        TlsValidationContextTrust::File(file) => validate_with_file(&file.certificate_chain, sans),
        TlsValidationContextTrust::Sds(sds) => validate_with_sds(&sds.secret_name, sans),
        TlsValidationContextTrust::Acm(_) => {
            issues.push(format!(
                "{what}: ACM Private CA trust exists only inside AWS; give a file or SDS trust. Not routed"
            ));
            return None;
        }
    });
    let context = UpstreamTlsContext {
        common_tls_context: Some(common),
        ..Default::default()
    };
    Some(socket(pack_any(context)))
}

fn socket(context: envoy_types::pb::google::protobuf::Any) -> TransportSocket {
    TransportSocket {
        name: TLS_SOCKET.into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(context)),
    }
}

fn certificate_files(chain: &str, key: &str) -> TlsCertificate {
    TlsCertificate {
        certificate_chain: Some(file_source(chain)),
        private_key: Some(file_source(key)),
        ..Default::default()
    }
}

/// Exact subject alternative names: URI when the name has a scheme (SPIFFE ids), else DNS.
fn san_matchers(names: Option<&SubjectAlternativeNames>) -> Vec<SubjectAltNameMatcher> {
    names
        .iter()
        .flat_map(|s| s.r#match.exact.iter())
        .map(|san| SubjectAltNameMatcher {
            san_type: if san.contains("://") {
                SanType::Uri
            } else {
                SanType::Dns
            } as i32,
            matcher: Some(StringMatcher {
                match_pattern: Some(MatchPattern::Exact(san.clone())),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect()
}

fn validate_with_file(ca: &str, sans: Vec<SubjectAltNameMatcher>) -> ValidationContextType {
    ValidationContextType::ValidationContext(CertificateValidationContext {
        trusted_ca: Some(file_source(ca)),
        match_typed_subject_alt_names: sans,
        ..Default::default()
    })
}

/// Trust from the SDS secret; the subject alternative names, when given, in the default
/// context combined with it (Envoy's combined validation context).
fn validate_with_sds(secret: &str, sans: Vec<SubjectAltNameMatcher>) -> ValidationContextType {
    if sans.is_empty() {
        return ValidationContextType::ValidationContextSdsSecretConfig(sds_secret(secret));
    }
    ValidationContextType::CombinedValidationContext(CombinedCertificateValidationContext {
        default_validation_context: Some(CertificateValidationContext {
            match_typed_subject_alt_names: sans,
            ..Default::default()
        }),
        validation_context_sds_secret_config: Some(sds_secret(secret)),
        ..Default::default()
    })
}

fn file_source(path: &str) -> DataSource {
    DataSource {
        specifier: Some(Specifier::Filename(path.to_owned())),
        ..Default::default()
    }
}

fn sds_secret(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_owned(),
        sds_config: Some(ads()),
    }
}

/// Automatic mTLS from `caller` (a SPIFFE ID) to the destination of `cluster`, unless that
/// destination's listener on the cluster's port has TLS settings of its own (App Mesh's TLS
/// wins: such a listener does not take the automatic certificates), or the cluster is not a
/// virtual node's.
pub fn auto_variant(
    mtls: &AutoMtls,
    index: &dyn Lookup,
    caller: &str,
    cluster: &str,
) -> Option<TransportSocket> {
    let (mesh, destination) = names::virtual_node_of_cluster(cluster)?;
    let port = names::cluster_port(cluster)?;
    let explicit = index.listener_tls(mesh, destination, port)?;
    (!explicit).then(|| auto_client(mtls, caller, mesh, destination))
}
