//! Workload certificates for automatic mTLS, signed by the control plane's CA: the agent that
//! runs a virtual node's workloads makes the key (it never leaves the node) and sends a
//! certificate signing request; the control plane checks the identity it asks for and
//! answers with the certificate chain. One unary gRPC method, on the port ADS is served on:
//! `/meshagent.identity.v1.Identity/Sign`.
use std::time::Duration;

use tonic::{Status, codegen::http};

use crate::channel::{self, ControlPlaneTls};

/// The gRPC service's name.
pub const SERVICE: &str = "meshagent.identity.v1.Identity";
/// The signing method's path.
pub const SIGN_PATH: &str = "/meshagent.identity.v1.Identity/Sign";
/// A request or answer larger than this is refused (a CSR is ~500 bytes, a chain a few KiB).
pub const MAX_MESSAGE: usize = 64 * 1024;

#[derive(Clone, PartialEq, prost::Message)]
pub struct SignRequest {
    /// A PKCS#10 request in PEM, its only subject alternative name the SPIFFE ID wanted.
    #[prost(string, tag = "1")]
    pub csr_pem: String,
    /// The asking node (its xDS node id), for the control plane's log.
    #[prost(string, tag = "2")]
    pub node_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SignResponse {
    /// The certificate, then any intermediates, in PEM.
    #[prost(string, tag = "1")]
    pub chain_pem: String,
}

/// Asks the control plane at `endpoint` (the xDS address, with its TLS settings) to sign
/// `request`.
pub async fn sign(
    endpoint: &str,
    tls: Option<&ControlPlaneTls>,
    request: SignRequest,
    timeout: Duration,
) -> Result<SignResponse, Status> {
    let channel = channel::connect(endpoint, tls, Some(timeout))
        .await
        .map_err(|e| Status::unavailable(format!("connecting to the control plane: {e}")))?;
    let mut grpc = tonic::client::Grpc::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("{endpoint}: {e}")))?;
    let path = http::uri::PathAndQuery::from_static(SIGN_PATH);
    let codec = tonic_prost::ProstCodec::<SignRequest, SignResponse>::default();
    grpc.unary(tonic::Request::new(request), path, codec)
        .await
        .map(tonic::Response::into_inner)
}
