//! Zipkin B3 (<https://github.com/openzipkin/b3-propagation>), as one header
//! (`b3: {trace}-{span}-{sampled}-{parent}`, or a sampling decision alone) or several
//! (`X-B3-TraceId`, `X-B3-SpanId`, `X-B3-ParentSpanId`, `X-B3-Sampled`, `X-B3-Flags`).
//! Debug (`d`, `X-B3-Flags: 1`) means sampled.
use http::HeaderMap;

use super::ids::{SpanContext, SpanId, TraceId};

pub const SINGLE: &str = "b3";
pub const TRACE_ID: &str = "x-b3-traceid";
pub const SPAN_ID: &str = "x-b3-spanid";
pub const PARENT_SPAN_ID: &str = "x-b3-parentspanid";
pub const SAMPLED: &str = "x-b3-sampled";
pub const FLAGS: &str = "x-b3-flags";

/// What a `b3` header says: a span's context, or only whether to sample.
#[derive(Debug, PartialEq, Eq)]
pub enum Single {
    Context(SpanContext),
    Decision(bool),
}

pub fn parse_single(value: &str) -> Option<Single> {
    let mut fields = value.trim().split('-');
    let first = fields.next()?;
    let Some(span) = fields.next() else {
        return sampling(first).map(Single::Decision);
    };
    let sampled = match fields.next() {
        Some(state) => Some(sampling(state)?),
        None => None,
    };
    // The parent span id (fourth field) is the caller's business: it is not checked.
    Some(Single::Context(SpanContext {
        trace_id: TraceId::from_hex(first)?,
        span_id: Some(SpanId::from_hex(span)?),
        sampled,
    }))
}

/// The context of `X-B3-*` headers; `None` without a valid trace and span id.
pub fn parse_multi(headers: &HeaderMap) -> Option<SpanContext> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let debug = text(FLAGS) == Some("1");
    let sampled = match text(SAMPLED) {
        _ if debug => Some(true),
        Some("1" | "true") => Some(true),
        Some("0" | "false") => Some(false),
        _ => None,
    };
    Some(SpanContext {
        trace_id: TraceId::from_hex(text(TRACE_ID)?)?,
        span_id: Some(SpanId::from_hex(text(SPAN_ID)?)?),
        sampled,
    })
}

fn sampling(state: &str) -> Option<bool> {
    match state {
        "1" | "d" => Some(true),
        "0" => Some(false),
        _ => None,
    }
}

/// The `b3` header of span `span` (child of `parent`) of `trace`.
pub fn format_single(
    trace: TraceId,
    span: SpanId,
    sampled: bool,
    parent: Option<SpanId>,
) -> String {
    let mut value = format!("{}-{}-{}", trace.hex(), span.hex(), u8::from(sampled));
    if let Some(parent) = parent {
        value.push('-');
        value.push_str(&parent.hex());
    }
    value
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn reads_the_single_header_forms() {
        let full = "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90";
        let Some(Single::Context(context)) = parse_single(full) else {
            panic!("{full}");
        };
        assert_eq!(context.trace_id.hex(), "80f198ee56343ba864fe8b2a57d3eff7");
        assert_eq!(context.span_id.unwrap().hex(), "e457b5a2e4d86bd1");
        assert_eq!(context.sampled, Some(true));
        let Some(Single::Context(deferred)) = parse_single("64fe8b2a57d3eff7-e457b5a2e4d86bd1")
        else {
            panic!("two fields");
        };
        assert_eq!(deferred.sampled, None);
        assert_eq!(deferred.trace_id.hex(), "000000000000000064fe8b2a57d3eff7");
        assert_eq!(parse_single("0"), Some(Single::Decision(false)));
        assert_eq!(parse_single("d"), Some(Single::Decision(true)));
    }

    #[test]
    fn malformed_single_headers_are_refused() {
        for value in [
            "",
            "x",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-2",
            "zz-e457b5a2e4d86bd1",
        ] {
            assert_eq!(parse_single(value), None, "{value:?}");
        }
    }

    #[test]
    fn reads_the_multi_headers_with_debug_as_sampled() {
        let mut headers = HeaderMap::new();
        headers.insert(
            TRACE_ID,
            HeaderValue::from_static("463ac35c9f6413ad48485a3953bb6124"),
        );
        headers.insert(SPAN_ID, HeaderValue::from_static("a2fb4a1d1a96d312"));
        headers.insert(SAMPLED, HeaderValue::from_static("0"));
        assert_eq!(parse_multi(&headers).unwrap().sampled, Some(false));
        headers.insert(FLAGS, HeaderValue::from_static("1"));
        assert_eq!(parse_multi(&headers).unwrap().sampled, Some(true));
        headers.remove(SPAN_ID);
        assert_eq!(parse_multi(&headers), None);
    }

    #[test]
    fn formats_what_it_parses() {
        let trace = TraceId::from_hex("463ac35c9f6413ad48485a3953bb6124").unwrap();
        let span = SpanId::from_hex("a2fb4a1d1a96d312").unwrap();
        let value = format_single(trace, span, true, None);
        assert_eq!(value, "463ac35c9f6413ad48485a3953bb6124-a2fb4a1d1a96d312-1");
        let Some(Single::Context(context)) = parse_single(&value) else {
            panic!("{value}");
        };
        assert_eq!((context.trace_id, context.span_id), (trace, Some(span)));
    }
}
