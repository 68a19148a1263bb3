//! OTLP's two transports to the collector: gRPC (tonic, the workspace's one gRPC stack) and
//! HTTP with protobuf bodies (hyper). Each export is one request with a deadline.
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, trace_service_client::TraceServiceClient,
};
use prost::Message;
use tonic::transport::{Channel, Endpoint};

use crate::config::{OtlpProtocol, TracingConfig};

/// The most of a collector's answer the exporter reads (it only needs the status).
const MAX_ANSWER: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("tracing.endpoint {0:?} is not usable: {1}")]
    Endpoint(String, String),
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("gRPC status {code:?}: {message}")]
    Grpc { code: tonic::Code, message: String },
    #[error("HTTP {0}")]
    Status(http::StatusCode),
    #[error("{0}")]
    Http(String),
}

pub enum Transport {
    Grpc(TraceServiceClient<Channel>),
    Http(Box<HttpTransport>),
}

pub struct HttpTransport {
    client: Client<HttpConnector, Full<Bytes>>,
    uri: Uri,
}

impl Transport {
    /// A transport to the configured collector; it connects on the first export (and again
    /// after a failure), so a collector that is down delays nothing at start-up.
    pub fn new(config: &TracingConfig) -> Result<Self, TransportError> {
        let invalid = |error: String| TransportError::Endpoint(config.endpoint.clone(), error);
        match config.protocol {
            OtlpProtocol::Grpc => {
                let endpoint = Endpoint::from_shared(config.endpoint.clone())
                    .map_err(|e| invalid(e.to_string()))?
                    .connect_timeout(config.export_timeout)
                    .timeout(config.export_timeout);
                Ok(Self::Grpc(TraceServiceClient::new(endpoint.connect_lazy())))
            }
            OtlpProtocol::Http => {
                let mut connector = HttpConnector::new();
                connector.set_connect_timeout(Some(config.export_timeout));
                connector.set_nodelay(true);
                let client = Client::builder(TokioExecutor::new()).build(connector);
                Ok(Self::Http(Box::new(HttpTransport {
                    client,
                    uri: traces_uri(&config.endpoint).map_err(invalid)?,
                })))
            }
        }
    }

    pub async fn send(
        &mut self,
        request: ExportTraceServiceRequest,
        timeout: Duration,
    ) -> Result<(), ExportError> {
        let sent = async {
            match self {
                Self::Grpc(client) => {
                    client
                        .export(request)
                        .await
                        .map(drop)
                        .map_err(|status| ExportError::Grpc {
                            code: status.code(),
                            message: status.message().to_owned(),
                        })
                }
                Self::Http(http) => post(&http.client, http.uri.clone(), request).await,
            }
        };
        tokio::time::timeout(timeout, sent)
            .await
            .map_err(|_| ExportError::Timeout(timeout))?
    }
}

async fn post(
    client: &Client<HttpConnector, Full<Bytes>>,
    uri: Uri,
    request: ExportTraceServiceRequest,
) -> Result<(), ExportError> {
    let body = Full::new(Bytes::from(request.encode_to_vec()));
    let request = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/x-protobuf")
        .body(body)
        .map_err(|e| ExportError::Http(e.to_string()))?;
    let response = client
        .request(request)
        .await
        .map_err(|e| ExportError::Http(format!("{e:?}")))?;
    let status = response.status();
    // Read to the end so the connection can take the next export.
    let _ = Limited::new(response.into_body(), MAX_ANSWER)
        .collect()
        .await;
    match status.is_success() {
        true => Ok(()),
        false => Err(ExportError::Status(status)),
    }
}

/// OTLP/HTTP's traces URL: the endpoint with `/v1/traces` when it names no path of its own
/// (as `OTEL_EXPORTER_OTLP_ENDPOINT` is read), else the endpoint as it is.
fn traces_uri(endpoint: &str) -> Result<Uri, String> {
    let uri: Uri = endpoint
        .parse()
        .map_err(|e: http::uri::InvalidUri| e.to_string())?;
    match uri.path() {
        "" | "/" => format!("{}/v1/traces", endpoint.trim_end_matches('/'))
            .parse()
            .map_err(|e: http::uri::InvalidUri| e.to_string()),
        _ => Ok(uri),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_endpoints_get_the_traces_path_unless_they_name_one() {
        assert_eq!(
            traces_uri("http://c:4318").unwrap(),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            traces_uri("http://c:4318/").unwrap(),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            traces_uri("http://c:4318/custom").unwrap(),
            "http://c:4318/custom"
        );
    }
}
