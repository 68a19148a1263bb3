//! The header rules the proxy applies to requests and responses it forwards.
use http::{HeaderMap, HeaderName, HeaderValue, header};

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1, RFC 9113
/// §8.2.2): never forwarded as they came.
/// Names, not strings: removing by a string parses it again on every request.
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TE,
    header::TRAILER,
];

pub const REQUEST_ID: &str = "x-request-id";

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
/// `x-amzn-trace-id`, B3) pass through unchanged, unless tracing is configured: then the
/// tracer writes the proxy's own span into them (docs/tracing.md).
pub fn ensure_request_id(headers: &mut HeaderMap) {
    if headers.contains_key(REQUEST_ID) {
        return;
    }
    let Ok(mut value) = HeaderValue::from_bytes(&uuid_v4(rand::random())) else {
        return;
    };
    // Never indexed (RFC 7541 §6.2.3): a value no other request repeats would only churn
    // HPACK's dynamic table, evicting the headers every request does repeat.
    value.set_sensitive(true);
    headers.insert(REQUEST_ID, value);
}

/// `bits` as a version 4, variant 1 UUID in its text form (8-4-4-4-12 hex digits).
fn uuid_v4(bits: u128) -> [u8; 36] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits = (bits & !(0xf << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62);
    let mut text = [b'-'; 36];
    let mut out = 0;
    for nibble in (0..32).rev() {
        if matches!(out, 8 | 13 | 18 | 23) {
            out += 1;
        }
        text[out] = HEX[((bits >> (nibble * 4)) & 0xf) as usize];
        out += 1;
    }
    text
}

pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// Which kind of message a header map belongs to: requests may carry `te: trailers` on.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Message {
    Request,
    Response,
}

/// Removes what describes the connection rather than the message: the hop-by-hop headers and
/// every header the `connection` header names (RFC 9110 §7.6.1). A request keeps
/// `te: trailers` — the one TE value HTTP/2 allows (RFC 9113 §8.2.2), and one gRPC requires:
/// servers built on gRPC's C core reset requests without it. Other TE values go, as Envoy
/// drops them.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, message: Message) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    let te_trailers = message == Message::Request && asks_for_trailers(headers);
    for name in listed {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// The request's TE header lists `trailers` (a list, values case-insensitive, RFC 9110 §10.1.4).
fn asks_for_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|coding| {
            let coding = coding.split(';').next().unwrap_or_default().trim();
            coding.eq_ignore_ascii_case("trailers")
        })
}

/// The gRPC status of a response's headers or trailers.
pub fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn te_trailers_stays_on_requests_and_other_te_values_go() {
        for te in ["trailers", "Trailers", "gzip, trailers", "trailers;q=1"] {
            let mut request = headers(&[("te", te), ("content-type", "application/grpc")]);
            strip_hop_by_hop(&mut request, Message::Request);
            assert_eq!(request["te"], "trailers", "{te}");
        }
        let mut request = headers(&[("te", "gzip, deflate")]);
        strip_hop_by_hop(&mut request, Message::Request);
        assert!(!request.contains_key("te"));
        let mut response = headers(&[("te", "trailers")]);
        strip_hop_by_hop(&mut response, Message::Response);
        assert!(!response.contains_key("te"));
    }

    #[test]
    fn connection_listed_and_hop_by_hop_headers_go_the_rest_stays() {
        let mut request = headers(&[
            ("connection", "keep-alive, x-hop"),
            ("connection", "X-Other"),
            ("x-hop", "1"),
            ("x-other", "2"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-connection", "keep-alive"),
            ("trailer", "grpc-status"),
            ("x-end-to-end", "3"),
        ]);
        strip_hop_by_hop(&mut request, Message::Request);
        let left: Vec<&str> = request.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-end-to-end"]);
    }

    #[test]
    fn requests_get_a_uuid_request_id_unless_they_have_one() {
        assert_eq!(
            &uuid_v4(u128::MAX),
            b"ffffffff-ffff-4fff-bfff-ffffffffffff",
            "version and variant bits set"
        );
        assert_eq!(&uuid_v4(0), b"00000000-0000-4000-8000-000000000000");
        let mut headers = HeaderMap::new();
        ensure_request_id(&mut headers);
        let id = headers[REQUEST_ID].to_str().unwrap().to_owned();
        let groups: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12], "{id}");
        assert_eq!(&id[14..15], "4", "version 4: {id}");
        assert!("89ab".contains(&id[19..20]), "variant: {id}");
        assert!(headers[REQUEST_ID].is_sensitive(), "never indexed by HPACK");
        ensure_request_id(&mut headers);
        assert_eq!(headers[REQUEST_ID], id.as_str(), "an existing id is kept");
    }
}
