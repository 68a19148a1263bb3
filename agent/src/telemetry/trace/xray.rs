//! AWS X-Ray's `X-Amzn-Trace-Id`: `Root=1-{8 hex time}-{24 hex};Parent={16 hex};Sampled=1`,
//! fields in any order. The trace id is the 32 hex digits of Root without the version and
//! dashes, as OpenTelemetry's X-Ray propagator maps it, so both name one trace.
use super::ids::{SpanContext, SpanId, TraceId};

pub const HEADER: &str = "x-amzn-trace-id";

/// The context of an `X-Amzn-Trace-Id` value; `None` without a valid Root. `Sampled=?`
/// (the decision left to the receiver) and no Sampled field are no decision.
pub fn parse(value: &str) -> Option<SpanContext> {
    let mut trace_id = None;
    let mut span_id = None;
    let mut sampled = None;
    for field in value.split(';') {
        let Some((key, text)) = field.trim().split_once('=') else {
            continue;
        };
        match key.trim() {
            "Root" => trace_id = Some(parse_root(text.trim())?),
            "Parent" => span_id = Some(SpanId::from_hex(text.trim())?),
            "Sampled" => {
                sampled = match text.trim() {
                    "1" => Some(true),
                    "0" => Some(false),
                    _ => None,
                }
            }
            _ => {}
        }
    }
    Some(SpanContext {
        trace_id: trace_id?,
        span_id,
        sampled,
    })
}

fn parse_root(root: &str) -> Option<TraceId> {
    let mut parts = root.split('-');
    let (version, time, random) = (parts.next()?, parts.next()?, parts.next()?);
    if version != "1" || time.len() != 8 || random.len() != 24 || parts.next().is_some() {
        return None;
    }
    let mut hex = String::with_capacity(32);
    hex.push_str(time);
    hex.push_str(random);
    TraceId::from_hex(&hex)
}

/// The header of span `span` of `trace`.
pub fn format(trace: TraceId, span: SpanId, sampled: bool) -> String {
    let hex = trace.hex();
    format!(
        "Root=1-{}-{};Parent={};Sampled={}",
        &hex[..8],
        &hex[8..],
        span.hex(),
        u8::from(sampled)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_documented_example() {
        let context =
            parse("Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1")
                .unwrap();
        assert_eq!(context.trace_id.hex(), "5759e988bd862e3fe1be46a994272793");
        assert_eq!(context.span_id.unwrap().hex(), "53995c3f42cd8ad8");
        assert_eq!(context.sampled, Some(true));
    }

    #[test]
    fn a_load_balancers_root_alone_and_deferred_sampling_are_no_parent_and_no_decision() {
        let context = parse("Root=1-67891233-abcdef012345678912345678").unwrap();
        assert_eq!(context.span_id, None);
        assert_eq!(context.sampled, None);
        let deferred =
            parse("Sampled=?; Root=1-67891233-abcdef012345678912345678;Self=1-x").unwrap();
        assert_eq!(deferred.sampled, None);
    }

    #[test]
    fn malformed_roots_and_parents_are_refused() {
        for value in [
            "",
            "Parent=53995c3f42cd8ad8;Sampled=1",
            "Root=2-5759e988-bd862e3fe1be46a994272793",
            "Root=1-5759e988bd862e3fe1be46a994272793",
            "Root=1-5759e98-8bd862e3fe1be46a994272793",
            "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=xyz",
        ] {
            assert_eq!(parse(value), None, "{value:?}");
        }
    }

    #[test]
    fn formats_what_it_parses() {
        let trace = TraceId::from_hex("5759e988bd862e3fe1be46a994272793").unwrap();
        let span = SpanId::from_hex("53995c3f42cd8ad8").unwrap();
        let value = format(trace, span, false);
        assert_eq!(
            value,
            "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=0"
        );
        assert_eq!(
            parse(&value),
            Some(SpanContext {
                trace_id: trace,
                span_id: Some(span),
                sampled: Some(false)
            })
        );
    }
}
