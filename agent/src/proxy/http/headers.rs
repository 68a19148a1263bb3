//! The header rules the proxy applies to requests and responses it forwards.
use http::{HeaderMap, HeaderValue, header};

/// Headers that describe one connection, not the message: never forwarded.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
];

const REQUEST_ID: &str = "x-request-id";

/// Host (HTTP/1.1) or :authority (HTTP/2).
pub fn authority(parts: &http::request::Parts) -> &str {
    parts
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .unwrap_or_default()
}

/// Gives a request that has none an `x-request-id` (a random UUID, as Envoy does), so every
/// hop and log line of it can be correlated. Trace headers (`traceparent`, `tracestate`,
/// `x-amzn-trace-id`, B3) pass through unchanged.
pub fn ensure_request_id(headers: &mut HeaderMap) {
    if headers.contains_key(REQUEST_ID) {
        return;
    }
    let bits: u128 = rand::random();
    // Version 4, variant 1.
    let bits = (bits & !(0xf << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62);
    let hex = format!("{bits:032x}");
    let id = format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    );
    if let Ok(value) = HeaderValue::from_str(&id) {
        headers.insert(REQUEST_ID, value);
    }
}

pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The gRPC status of a response's headers or trailers.
pub fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_get_a_uuid_request_id_unless_they_have_one() {
        let mut headers = HeaderMap::new();
        ensure_request_id(&mut headers);
        let id = headers[REQUEST_ID].to_str().unwrap().to_owned();
        let groups: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12], "{id}");
        assert_eq!(&id[14..15], "4", "version 4: {id}");
        assert!("89ab".contains(&id[19..20]), "variant: {id}");
        ensure_request_id(&mut headers);
        assert_eq!(headers[REQUEST_ID], id.as_str(), "an existing id is kept");
    }
}
