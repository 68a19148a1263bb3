//! Spans as OTLP carries them (`ExportTraceServiceRequest`): one resource per virtual node,
//! named `service.name` so a backend's service map shows the mesh's virtual nodes (the name
//! App Mesh's Envoy gave its X-Ray segments), the App Mesh names and request facts as
//! attributes.
use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value::Value},
    resource::v1::Resource,
    trace::v1::{
        ResourceSpans, ScopeSpans, Span, Status,
        span::{Event, SpanKind as ProtoKind},
        status::StatusCode,
    },
};

use super::span::{RequestSpan, SpanKind};

/// The instrumentation scope of every span.
const SCOPE: &str = "mesh-agent";
/// W3C flag "sampled", and OTLP's "parent is known to be remote" bits (0x100 says the
/// 0x200 bit is set; 0x200: remote).
const SAMPLED: u32 = 0x01;
const PARENT_REMOTE: u32 = 0x300;

/// An export request of `spans`, grouped by virtual node; `resource` is added to each.
pub fn request(
    spans: Vec<RequestSpan>,
    resource: &[(String, String)],
) -> ExportTraceServiceRequest {
    let mut by_service: BTreeMap<String, Vec<Span>> = BTreeMap::new();
    for span in spans {
        let service = span.names.virtual_node.clone();
        by_service.entry(service).or_default().push(encode(span));
    }
    let resource_spans = by_service
        .into_iter()
        .map(|(service, spans)| {
            let mesh = service.split('/').next().unwrap_or_default().to_owned();
            let mut attributes = vec![
                text("service.name", service),
                text("appmesh.mesh", mesh),
                text("telemetry.sdk.name", SCOPE.to_owned()),
            ];
            attributes.extend(resource.iter().map(|(key, value)| text(key, value.clone())));
            ResourceSpans {
                resource: Some(Resource {
                    attributes,
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: SCOPE.to_owned(),
                        version: env!("CARGO_PKG_VERSION").to_owned(),
                        ..Default::default()
                    }),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }
        })
        .collect();
    ExportTraceServiceRequest { resource_spans }
}

fn encode(span: RequestSpan) -> Span {
    let start = unix_nanos(span.start);
    let status = Status {
        code: match span.failed() {
            true => StatusCode::Error,
            false => StatusCode::Unset,
        } as i32,
        message: String::new(),
    };
    let events = span
        .first_byte
        .map(|after| Event {
            time_unix_nano: start + nanos(after),
            name: "first_byte".into(),
            ..Default::default()
        })
        .into_iter()
        .collect();
    Span {
        trace_id: span.trace_id.0.to_vec(),
        span_id: span.span_id.0.to_vec(),
        parent_span_id: span.parent.map(|p| p.0.to_vec()).unwrap_or_default(),
        flags: SAMPLED
            | if span.parent.is_some() {
                PARENT_REMOTE
            } else {
                0
            },
        name: span.name(),
        kind: match span.kind {
            SpanKind::Client => ProtoKind::Client,
            SpanKind::Server => ProtoKind::Server,
        } as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: start + nanos(span.duration),
        status: Some(status),
        events,
        attributes: attributes(span),
        ..Default::default()
    }
}

/// OpenTelemetry's HTTP and gRPC attribute names where they fit, `appmesh.*` for the
/// mesh's own.
fn attributes(span: RequestSpan) -> Vec<KeyValue> {
    let RequestSpan {
        request,
        names,
        outcome,
        first_byte,
        ..
    } = span;
    let mut out = Vec::with_capacity(24);
    out.push(text("appmesh.mesh", names.mesh().to_owned()));
    out.push(text("appmesh.reporter", names.reporter.to_owned()));
    out.push(text("http.request.method", request.method.to_string()));
    out.push(text("url.path", request.path));
    out.push(text("server.address", request.authority));
    out.push(text(
        "network.protocol.version",
        request.protocol.to_owned(),
    ));
    out.push(text("client.address", request.client.ip().to_string()));
    out.push(int(
        "http.response.status_code",
        outcome.response_code.into(),
    ));
    out.push(int("http.request.body.size", clamp(outcome.request_bytes)));
    out.push(int(
        "http.response.body.size",
        clamp(outcome.response_bytes),
    ));
    out.push(int("appmesh.retries", outcome.retries.into()));
    if let Some(first_byte) = first_byte {
        out.push(float("appmesh.time_to_first_byte_ms", millis(first_byte)));
    }
    if let Some(status) = outcome.grpc_status {
        out.push(int("rpc.grpc.status_code", status.into()));
    }
    if !outcome.flags.is_empty() {
        out.push(text("appmesh.response_flags", outcome.flags));
    }
    if let Some(id) = request.request_id {
        out.push(text("appmesh.request_id", id));
    }
    if let Some(host) = names.upstream_host {
        out.push(text("appmesh.upstream_host", host.to_string()));
    }
    let optional = [
        ("appmesh.virtual_node", Some(names.virtual_node)),
        ("appmesh.source_virtual_node", names.source_virtual_node),
        ("appmesh.virtual_service", names.virtual_service),
        (
            "appmesh.destination_virtual_node",
            names.destination_virtual_node,
        ),
        ("appmesh.route", names.route),
        ("appmesh.cluster", names.cluster),
    ];
    for (key, value) in optional {
        if let Some(value) = value {
            out.push(text(key, value));
        }
    }
    out
}

fn text(key: &str, value: String) -> KeyValue {
    attribute(key, Value::StringValue(value))
}

fn int(key: &str, value: i64) -> KeyValue {
    attribute(key, Value::IntValue(value))
}

fn float(key: &str, value: f64) -> KeyValue {
    attribute(key, Value::DoubleValue(value))
}

fn attribute(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn clamp(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, nanos)
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::trace::span::tests::sample;

    fn value<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
        attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
    }

    #[test]
    fn spans_are_grouped_by_virtual_node_with_its_name_as_the_service() {
        let mut server = sample(SpanKind::Server);
        server.names.virtual_node = "m/v1".into();
        let request = request(
            vec![sample(SpanKind::Client), server, sample(SpanKind::Client)],
            &[("deployment.environment".into(), "test".into())],
        );
        let services: Vec<(Option<&Value>, usize)> = request
            .resource_spans
            .iter()
            .map(|r| {
                let attributes = &r.resource.as_ref().unwrap().attributes;
                assert_eq!(
                    value(attributes, "deployment.environment"),
                    Some(&Value::StringValue("test".into()))
                );
                (
                    value(attributes, "service.name"),
                    r.scope_spans[0].spans.len(),
                )
            })
            .collect();
        assert_eq!(
            services,
            [
                (Some(&Value::StringValue("m/client".into())), 2),
                (Some(&Value::StringValue("m/v1".into())), 1)
            ]
        );
    }

    #[test]
    fn a_span_carries_its_ids_timings_and_names() {
        let mut span = sample(SpanKind::Client);
        span.parent = Some(super::super::ids::SpanId::generate());
        span.names.cluster = Some("m/v1/8080".into());
        span.outcome.response_code = 503;
        let (trace, id) = (span.trace_id, span.span_id);
        let encoded = encode(span);
        assert_eq!(encoded.trace_id, trace.0);
        assert_eq!(encoded.span_id, id.0);
        assert_eq!(encoded.kind, ProtoKind::Client as i32);
        assert_eq!(encoded.flags, SAMPLED | PARENT_REMOTE);
        assert_eq!(
            encoded.end_time_unix_nano - encoded.start_time_unix_nano,
            5_000_000
        );
        assert_eq!(
            encoded.events[0].time_unix_nano - encoded.start_time_unix_nano,
            3_000_000
        );
        assert_eq!(encoded.status.unwrap().code, StatusCode::Error as i32);
        assert_eq!(
            value(&encoded.attributes, "appmesh.cluster"),
            Some(&Value::StringValue("m/v1/8080".into()))
        );
        assert_eq!(
            value(&encoded.attributes, "http.response.status_code"),
            Some(&Value::IntValue(503))
        );
        assert_eq!(value(&encoded.attributes, "appmesh.virtual_service"), None);
    }
}
