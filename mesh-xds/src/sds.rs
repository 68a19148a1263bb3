//! SDS references: which secrets a TLS context asks for. The control plane serves the secrets
//! the resources it compiles name; the node's client subscribes to the ones it is sent.
use std::collections::BTreeSet;

use envoy_types::pb::envoy::{
    config::core::v3::{TransportSocket, transport_socket},
    extensions::transport_sockets::tls::v3::{
        DownstreamTlsContext, UpstreamTlsContext, common_tls_context::ValidationContextType,
    },
};
use prost::{Message, Name};

/// The SDS secret names a transport socket's TLS context asks for (its certificates and its
/// validation context).
pub fn referenced_by(socket: &TransportSocket, names: &mut BTreeSet<String>) {
    let Some(transport_socket::ConfigType::TypedConfig(any)) = &socket.config_type else {
        return;
    };
    let common = if any.type_url == DownstreamTlsContext::type_url() {
        DownstreamTlsContext::decode(any.value.as_slice())
            .ok()
            .and_then(|c| c.common_tls_context)
    } else if any.type_url == UpstreamTlsContext::type_url() {
        UpstreamTlsContext::decode(any.value.as_slice())
            .ok()
            .and_then(|c| c.common_tls_context)
    } else {
        None
    };
    let Some(common) = common else {
        return;
    };
    names.extend(
        common
            .tls_certificate_sds_secret_configs
            .into_iter()
            .map(|sds| sds.name),
    );
    match common.validation_context_type {
        Some(ValidationContextType::ValidationContextSdsSecretConfig(sds)) => {
            names.insert(sds.name);
        }
        Some(ValidationContextType::CombinedValidationContext(combined)) => {
            names.extend(
                combined
                    .validation_context_sds_secret_config
                    .map(|sds| sds.name),
            );
        }
        _ => {}
    }
}
