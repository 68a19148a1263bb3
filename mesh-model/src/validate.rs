//! Validation of a set of resources: the API model's constraints on every field, then the
//! rules App Mesh enforces beyond its model (one route type per route, regexes that compile,
//! ranges, weights, unique names and ports, references to resources that exist).
mod across;
mod documented;

pub use across::{Across, Links, validate_across};

use std::collections::HashMap;

use serde_json::Value;

use crate::{
    Path,
    access_log::{LogFormat, Template},
    report::Diagnostic,
    resource::{Format, Kind, Resource},
    schema,
};

#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Check that referenced meshes, nodes, services, routers and gateways are in the set.
    /// Off for partial inputs (an update file applied to a mesh defined elsewhere).
    pub check_references: bool,
    /// Unknown fields in Kubernetes resources are notes, not errors: the CRDs preserve
    /// unknown fields and the controller ignores them.
    pub lenient: bool,
}

pub fn validate(resources: &[Resource], options: Options) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for resource in resources {
        validate_resource(resource, options, &mut out);
    }
    let links: Vec<Links> = resources.iter().map(Links::of).collect();
    validate_across(&links.iter().collect::<Vec<_>>(), options, &mut out);
    out
}

/// What [`validate`] finds about one resource on its own: the model's constraints on every
/// field and the rules within its spec. The same resource always gets the same findings, so
/// they can be kept while it does not change.
pub fn validate_resource(resource: &Resource, options: Options, out: &mut Vec<Diagnostic>) {
    let body = Value::Object(resource.body.clone());
    for violation in schema::model().validate(&resource.kind.create_shape(), &body, &Path::root(""))
    {
        let ignored = options.lenient
            && resource.format == Format::Kubernetes
            && violation.message.starts_with(schema::UNKNOWN_FIELD);
        let diagnostic = if ignored {
            Diagnostic::note(format!(
                "{} (ignored, as the controller does)",
                violation.message
            ))
        } else {
            Diagnostic::error(violation.message)
        };
        out.push(diagnostic.on(resource).path(violation.path));
    }
    if let Some(spec) = resource.spec() {
        spec_rules(resource, spec, out);
        acm_notes(resource, spec, &Path::root("spec"), out);
    }
}

/// `--lenient`: the unknown fields of Kubernetes resources (reported as notes by
/// [`validate`]) removed, so that what is compiled or converted is what the controller
/// would have sent App Mesh.
pub fn drop_unknown_kubernetes_fields(resources: &mut [Resource]) {
    for resource in resources
        .iter_mut()
        .filter(|r| r.format == Format::Kubernetes)
    {
        let mut body = Value::Object(std::mem::take(&mut resource.body));
        schema::model().remove_unknown(&resource.kind.create_shape(), &mut body);
        if let Value::Object(body) = body {
            resource.body = body;
        }
    }
}

/// ACM certificates and ACM Private CA trust are valid App Mesh but exist only inside AWS:
/// said at validation, with what to use instead (compiling then fails closed on them).
fn acm_notes(resource: &Resource, value: &Value, path: &Path, out: &mut Vec<Diagnostic>) {
    match value {
        Value::Object(fields) => {
            for (name, child) in fields {
                let path = path.field(name);
                if name == "acm" {
                    out.push(
                        Diagnostic::note(
                            "ACM certificates and ACM Private CA trust exist only inside AWS: mesh-agent serves no TLS from them (a listener is not served, a backend not routed); give a file or SDS certificate or trust instead, or use automatic mTLS (docs/migrating-from-app-mesh.md)",
                        )
                        .on(resource)
                        .path(path.to_string()),
                    );
                } else {
                    acm_notes(resource, child, &path, out);
                }
            }
        }
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                acm_notes(resource, item, &path.index(index), out);
            }
        }
        _ => {}
    }
}

fn get<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.get(key))
}

const ROUTE_TYPES: [&str; 4] = ["httpRoute", "http2Route", "grpcRoute", "tcpRoute"];
const GATEWAY_ROUTE_TYPES: [&str; 3] = ["httpRoute", "http2Route", "grpcRoute"];

fn spec_rules(resource: &Resource, spec: &Value, out: &mut Vec<Diagnostic>) {
    let spec_path = Path::root("spec");
    let mut error = |path: &Path, message: String| {
        out.push(
            Diagnostic::error(message)
                .on(resource)
                .path(path.to_string()),
        )
    };
    match resource.kind {
        Kind::Route => exactly_one_route_type(spec, &ROUTE_TYPES, &spec_path, &mut error),
        Kind::GatewayRoute => {
            exactly_one_route_type(spec, &GATEWAY_ROUTE_TYPES, &spec_path, &mut error)
        }
        Kind::VirtualNode
            if get(spec, &["listeners"])
                .and_then(Value::as_array)
                .is_some_and(|l| !l.is_empty())
                && get(spec, &["serviceDiscovery"]).is_none() =>
        {
            error(
                &spec_path.field("serviceDiscovery"),
                "is required when the virtual node has listeners".into(),
            );
        }
        _ => {}
    }
    if let Some(format) = get(spec, &["logging", "accessLog", "file", "format"]) {
        access_log_format(
            format,
            &spec_path
                .field("logging")
                .field("accessLog")
                .field("file")
                .field("format"),
            &mut error,
        );
    }
    if let Some(listeners) = get(spec, &["listeners"]).and_then(Value::as_array) {
        unique_listener_ports(listeners, &spec_path.field("listeners"), &mut error);
    }
    if matches!(resource.kind, Kind::Route | Kind::GatewayRoute) {
        walk_route(spec, &spec_path, &mut error);
        for route_type in ["httpRoute", "http2Route"] {
            if let Some(prefix) =
                get(spec, &[route_type, "match", "prefix"]).and_then(Value::as_str)
                && !prefix.starts_with('/')
            {
                error(
                    &spec_path.field(route_type).field("match").field("prefix"),
                    format!("\"{prefix}\" must start with /"),
                );
            }
        }
    }
    documented::check(resource.kind, spec, &mut error);
    if resource.format == Format::Kubernetes {
        controller_rules(resource, spec, &spec_path, &mut error);
    }
    if resource.kind == Kind::Route {
        for route_type in ROUTE_TYPES {
            if let Some(targets) =
                get(spec, &[route_type, "action", "weightedTargets"]).and_then(Value::as_array)
                && !targets.is_empty()
                && targets
                    .iter()
                    .all(|t| t.get("weight").and_then(Value::as_i64) == Some(0))
            {
                error(
                    &spec_path
                        .field(route_type)
                        .field("action")
                        .field("weightedTargets"),
                    "every weight is 0: the route would send traffic nowhere".into(),
                );
            }
        }
    }
}

/// Access log formats parse (App Mesh left that to Envoy, which rejected them at runtime).
fn access_log_format(format: &Value, path: &Path, error: &mut impl FnMut(&Path, String)) {
    if let Some(text) = format.get("text").and_then(Value::as_str)
        && let Err(problem) = LogFormat::text(text)
    {
        error(&path.field("text"), problem.to_string());
    }
    for (index, pair) in format
        .get("json")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        if let Some(value) = pair.get("value").and_then(Value::as_str)
            && let Err(problem) = Template::parse(value)
        {
            error(
                &path.field("json").index(index).field("value"),
                problem.to_string(),
            );
        }
    }
}

/// What the App Mesh controller's webhooks reject beyond the API (API.md §11.5), for
/// resources that came in as Kubernetes objects.
fn controller_rules(
    resource: &Resource,
    spec: &Value,
    spec_path: &Path,
    error: &mut impl FnMut(&Path, String),
) {
    for route_type in ["httpRoute", "http2Route"] {
        let Some(matching) = get(spec, &[route_type, "match"]) else {
            continue;
        };
        let path = spec_path.field(route_type).field("match");
        let has = |key: &str| matching.get(key).is_some();
        match resource.kind {
            Kind::Route if has("prefix") == has("path") => error(
                &path,
                "must set exactly one of prefix, path (the App Mesh controller requires it)".into(),
            ),
            Kind::GatewayRoute if has("prefix") && has("path") => error(
                &path,
                "sets both prefix and path; the App Mesh controller allows one".into(),
            ),
            Kind::GatewayRoute if !(has("prefix") || has("path") || has("hostname")) => error(
                &path,
                "must set prefix, path or hostname (the App Mesh controller requires it)".into(),
            ),
            _ => {}
        }
        if let Some(path_match) = matching.get("path")
            && path_match.get("exact").is_some() == path_match.get("regex").is_some()
        {
            error(
                &path.field("path"),
                "must set exactly one of exact, regex (the App Mesh controller requires it)".into(),
            );
        }
    }
}

fn exactly_one_route_type(
    spec: &Value,
    types: &[&str],
    path: &Path,
    error: &mut impl FnMut(&Path, String),
) {
    let set: Vec<&str> = types
        .iter()
        .copied()
        .filter(|t| spec.get(t).is_some())
        .collect();
    if set.len() != 1 {
        error(
            path,
            match set.as_slice() {
                [] => format!("must set exactly one of: {}", types.join(", ")),
                many => format!(
                    "sets {}; exactly one route type is allowed",
                    many.join(" and ")
                ),
            },
        );
    }
}

fn unique_listener_ports(listeners: &[Value], path: &Path, error: &mut impl FnMut(&Path, String)) {
    let mut seen = HashMap::new();
    for (index, listener) in listeners.iter().enumerate() {
        if let Some(port) = get(listener, &["portMapping", "port"]).and_then(Value::as_i64)
            && let Some(first) = seen.insert(port, index)
        {
            error(
                &path.index(index).field("portMapping").field("port"),
                format!("port {port} is already used by listeners[{first}]"),
            );
        }
    }
}

/// Route-wide checks found by key anywhere in a route spec: regexes compile (Envoy uses RE2;
/// Rust's regex crate accepts the same syntax), ranges are non-empty.
fn walk_route(value: &Value, path: &Path, error: &mut impl FnMut(&Path, String)) {
    match value {
        Value::Object(object) => {
            for (key, child) in object {
                let child_path = path.field(key);
                match (key.as_str(), child) {
                    ("regex", Value::String(pattern)) => {
                        if let Err(problem) = regex::Regex::new(pattern) {
                            error(
                                &child_path,
                                format!(
                                    "regex does not compile: {}",
                                    first_line(&problem.to_string())
                                ),
                            );
                        }
                    }
                    ("range", Value::Object(range)) => {
                        let (start, end) = (
                            range.get("start").and_then(Value::as_i64),
                            range.get("end").and_then(Value::as_i64),
                        );
                        if let (Some(start), Some(end)) = (start, end)
                            && end <= start
                        {
                            error(
                                &child_path,
                                format!("end ({end}) must be greater than start ({start})"),
                            );
                        }
                    }
                    _ => {}
                }
                walk_route(child, &child_path, error);
            }
        }
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                walk_route(item, &path.index(index), error);
            }
        }
        _ => {}
    }
}

fn first_line(text: &str) -> String {
    text.lines().last().unwrap_or(text).trim().to_owned()
}
