//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): `traceparent` is
//! `version-traceid-parentid-flags`; `tracestate` belongs to the vendors and passes unchanged.
use super::ids::{SpanContext, SpanId, TraceId};

pub const TRACEPARENT: &str = "traceparent";

/// The context of a `traceparent` value; `None` if it is not one (the spec: start a new
/// trace then). Versions above 00 are read as 00 when they begin like it (the spec's
/// forward compatibility); version ff is invalid.
pub fn parse(value: &str) -> Option<SpanContext> {
    let mut fields = value.trim().split('-');
    let version = fields.next()?;
    let (trace, span, flags) = (fields.next()?, fields.next()?, fields.next()?);
    if version.len() != 2 || version.eq_ignore_ascii_case("ff") {
        return None;
    }
    let version = u8::from_str_radix(version, 16).ok()?;
    if version == 0 && fields.next().is_some() {
        return None;
    }
    if flags.len() != 2 {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    // Upper case is invalid in version 00 (lower-case hex only).
    if [trace, span]
        .iter()
        .any(|id| id.bytes().any(|b| b.is_ascii_uppercase()))
    {
        return None;
    }
    Some(SpanContext {
        trace_id: TraceId::from_hex(trace).filter(|_| trace.len() == 32)?,
        span_id: Some(SpanId::from_hex(span)?),
        sampled: Some(flags & 1 == 1),
    })
}

/// The `traceparent` of span `span` of `trace`.
pub fn format(trace: TraceId, span: SpanId, sampled: bool) -> String {
    format!(
        "00-{}-{}-{}",
        trace.hex(),
        span.hex(),
        if sampled { "01" } else { "00" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_specs_example() {
        let context = parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(context.trace_id.hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(context.span_id.unwrap().hex(), "00f067aa0ba902b7");
        assert_eq!(context.sampled, Some(true));
        let unsampled = parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert_eq!(unsampled.sampled, Some(false));
    }

    #[test]
    fn future_versions_are_read_by_their_00_prefix() {
        let context =
            parse("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds");
        assert!(context.is_some());
    }

    #[test]
    fn invalid_values_start_a_new_trace() {
        for value in [
            "",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736",
        ] {
            assert_eq!(parse(value), None, "{value:?}");
        }
    }

    #[test]
    fn formats_what_it_parses() {
        let trace = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        let span = SpanId::from_hex("00f067aa0ba902b7").unwrap();
        let value = format(trace, span, true);
        assert_eq!(
            value,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert_eq!(parse(&value).unwrap().span_id, Some(span));
    }
}
