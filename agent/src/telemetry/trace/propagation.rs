//! Reading a request's trace context from whichever format it came in (W3C, X-Ray, B3) and
//! writing the proxy's span into the formats the next hop reads.
use http::{HeaderMap, HeaderValue};

use super::{
    b3::{self, Single},
    ids::{SpanContext, SpanId, TraceId},
    w3c, xray,
};
use crate::config::Propagation;

/// A set of formats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Formats(u8);

impl Formats {
    pub fn of(formats: &[Propagation]) -> Self {
        formats.iter().fold(Self::default(), |set, &f| set.with(f))
    }

    fn with(self, format: Propagation) -> Self {
        Self(self.0 | Self::bit(format))
    }

    pub fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    fn contains(self, format: Propagation) -> bool {
        self.0 & Self::bit(format) != 0
    }

    fn bit(format: Propagation) -> u8 {
        1 << format as u8
    }
}

/// What a request's headers say about its trace.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Extracted {
    /// The caller's span, from the first valid format in the order W3C, X-Ray, B3, B3 multi.
    pub context: Option<SpanContext>,
    /// The formats the request carried (valid or not): the proxy rewrites them all, so no
    /// hop after it reads a stale parent.
    pub arrived: Formats,
}

impl Extracted {
    /// The caller's sampling decision.
    pub fn sampled(&self) -> Option<bool> {
        self.context.and_then(|c| c.sampled)
    }
}

pub fn extract(headers: &HeaderMap) -> Extracted {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let mut extracted = Extracted::default();
    let mut take = |format, context: Option<SpanContext>| {
        extracted.arrived = extracted.arrived.with(format);
        if extracted.context.is_none() {
            extracted.context = context;
        }
    };
    if headers.contains_key(w3c::TRACEPARENT) {
        take(
            Propagation::W3c,
            text(w3c::TRACEPARENT).and_then(w3c::parse),
        );
    }
    if headers.contains_key(xray::HEADER) {
        take(Propagation::Xray, text(xray::HEADER).and_then(xray::parse));
    }
    let mut b3_decision = None;
    if headers.contains_key(b3::SINGLE) {
        let context = match text(b3::SINGLE).and_then(b3::parse_single) {
            Some(Single::Context(context)) => Some(context),
            Some(Single::Decision(sampled)) => {
                b3_decision = Some(sampled);
                None
            }
            None => None,
        };
        take(Propagation::B3, context);
    }
    if headers.contains_key(b3::TRACE_ID) {
        take(Propagation::B3multi, b3::parse_multi(headers));
    }
    // `b3: 0` alone: no trace to continue, but the caller decided not to sample.
    if extracted.context.is_none()
        && let Some(sampled) = b3_decision
    {
        extracted.context = Some(SpanContext {
            trace_id: TraceId::generate(),
            span_id: None,
            sampled: Some(sampled),
        });
    }
    extracted
}

/// The proxy's span as the next hop is told about it.
#[derive(Clone, Copy, Debug)]
pub struct Outgoing {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// The span the proxy's span is a child of (B3 names it).
    pub parent: Option<SpanId>,
    pub sampled: bool,
}

/// Writes `span` in each of `formats`; `tracestate` and B3 debug flags pass unchanged.
pub fn inject(headers: &mut HeaderMap, formats: Formats, span: &Outgoing) {
    let mut set = |name: &'static str, value: String| {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    };
    let (trace, id, sampled) = (span.trace_id, span.span_id, span.sampled);
    if formats.contains(Propagation::W3c) {
        set(w3c::TRACEPARENT, w3c::format(trace, id, sampled));
    }
    if formats.contains(Propagation::Xray) {
        set(xray::HEADER, xray::format(trace, id, sampled));
    }
    if formats.contains(Propagation::B3) {
        set(
            b3::SINGLE,
            b3::format_single(trace, id, sampled, span.parent),
        );
    }
    if formats.contains(Propagation::B3multi) {
        set(b3::TRACE_ID, trace.hex());
        set(b3::SPAN_ID, id.hex());
        set(b3::SAMPLED, u8::from(sampled).to_string());
        match span.parent {
            Some(parent) => set(b3::PARENT_SPAN_ID, parent.hex()),
            None => {
                headers.remove(b3::PARENT_SPAN_ID);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const XRAY: &str = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=0";

    #[test]
    fn w3c_wins_and_every_arrived_format_is_noted() {
        let extracted = extract(&headers(&[
            ("traceparent", TRACEPARENT),
            ("x-amzn-trace-id", XRAY),
        ]));
        let context = extracted.context.unwrap();
        assert_eq!(context.trace_id.hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            extracted.arrived,
            Formats::of(&[Propagation::W3c, Propagation::Xray])
        );
    }

    #[test]
    fn an_invalid_format_gives_way_to_a_valid_one() {
        let extracted = extract(&headers(&[
            ("traceparent", "garbage"),
            ("x-amzn-trace-id", XRAY),
        ]));
        assert_eq!(
            extracted.context.unwrap().trace_id.hex(),
            "5759e988bd862e3fe1be46a994272793"
        );
        assert_eq!(extracted.sampled(), Some(false));
    }

    #[test]
    fn b3_decision_alone_is_a_new_trace_not_to_sample() {
        let extracted = extract(&headers(&[("b3", "0")]));
        let context = extracted.context.unwrap();
        assert_eq!((context.span_id, context.sampled), (None, Some(false)));
        assert_eq!(extract(&HeaderMap::new()), Extracted::default());
    }

    #[test]
    fn injects_each_format_so_each_reads_back_the_proxys_span() {
        let span = Outgoing {
            trace_id: TraceId::from_hex("5759e988bd862e3fe1be46a994272793").unwrap(),
            span_id: SpanId::from_hex("1111111111111111").unwrap(),
            parent: SpanId::from_hex("53995c3f42cd8ad8"),
            sampled: true,
        };
        let all = [
            Propagation::W3c,
            Propagation::Xray,
            Propagation::B3,
            Propagation::B3multi,
        ];
        for format in all {
            let mut map = headers(&[("tracestate", "vendor=1")]);
            inject(&mut map, Formats::of(&[format]), &span);
            let extracted = extract(&map);
            assert_eq!(extracted.arrived, Formats::of(&[format]), "{format:?}");
            let context = extracted.context.unwrap();
            assert_eq!(context.trace_id, span.trace_id, "{format:?}");
            assert_eq!(context.span_id, Some(span.span_id), "{format:?}");
            assert_eq!(context.sampled, Some(true), "{format:?}");
            assert_eq!(map["tracestate"], "vendor=1");
        }
        let mut map = HeaderMap::new();
        inject(&mut map, Formats::of(&all), &span);
        assert_eq!(map["x-b3-parentspanid"], "53995c3f42cd8ad8");
        assert!(map["b3"].to_str().unwrap().ends_with("-1-53995c3f42cd8ad8"));
    }
}
