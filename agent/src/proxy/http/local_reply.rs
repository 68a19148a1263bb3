//! Replies the proxy makes itself (no route, no cluster, no endpoint, timeouts): the status
//! and reason for HTTP callers, a trailers-only response with the matching grpc-status for
//! gRPC callers, as Envoy makes them.
use http::{HeaderValue, Response, StatusCode, header};

use super::body::full;
use crate::{dataplane::upstream::Body, telemetry::access_log::ResponseFlags};

/// A reply the proxy makes itself: why, and the response flag it is logged with.
pub struct LocalReply {
    pub status: StatusCode,
    pub service: Option<String>,
    pub reason: String,
    pub flag: ResponseFlags,
}

impl LocalReply {
    pub fn new(status: StatusCode, reason: impl Into<String>, flag: ResponseFlags) -> Self {
        Self {
            status,
            service: None,
            reason: reason.into(),
            flag,
        }
    }

    /// A reply the proxy makes: for gRPC callers a trailers-only response with the matching
    /// grpc-status (as Envoy does), else the status with the reason as text.
    pub fn into_response(self, grpc: bool) -> Response<Body> {
        let reply = self;
        let mut response = Response::new(full(format!("{}\n", reply.reason)));
        *response.status_mut() = reply.status;
        let headers = response.headers_mut();
        if let Some(service) = &reply.service
            && let Ok(value) = HeaderValue::from_str(service)
        {
            headers.insert("x-mesh-virtual-service", value);
        }
        if let Ok(value) = HeaderValue::from_str(&reply.reason) {
            headers.insert("x-mesh-reason", value.clone());
            if grpc {
                headers.insert("grpc-message", value);
            }
        }
        if grpc {
            let code = match reply.status {
                StatusCode::NOT_FOUND => "12",
                StatusCode::GATEWAY_TIMEOUT => "4",
                _ => "14",
            };
            *response.status_mut() = StatusCode::OK;
            *response.body_mut() = full(String::new());
            let headers = response.headers_mut();
            headers.insert("grpc-status", HeaderValue::from_static(code));
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
        } else {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        }
        response
    }
}
