//! Routes: App Mesh routes of a virtual router (or a virtual node provider) as Envoy
//! virtual-host routes — matches to RouteMatch, weighted targets to weighted clusters,
//! retry policies to RetryPolicy, timeouts to route timeouts.
use envoy_types::pb::envoy::{
    config::route::v3::{
        self as route, HeaderMatcher, QueryParameterMatcher, RetryPolicy, RouteAction, RouteMatch,
        WeightedCluster, header_matcher::HeaderMatchSpecifier,
        query_parameter_matcher::QueryParameterMatchSpecifier, route_action::ClusterSpecifier,
        route_match::PathSpecifier, weighted_cluster::ClusterWeight,
    },
    r#type::{
        matcher::v3::{RegexMatcher, StringMatcher, string_matcher::MatchPattern},
        v3::Int64Range,
    },
};
use mesh_model::types::{
    CreateRouteInput, Duration, GrpcRetryPolicyEvent, GrpcRoute, HeaderMatchMethod, HttpMethod,
    HttpQueryParameter, HttpRoute, HttpScheme, MatchRange, TcpRetryPolicyEvent, WeightedTarget,
};

use super::{
    Issues,
    index::Lookup,
    values::{duration, u32_value},
};

/// The Envoy routes of one App Mesh route for listener port `port`, if the route applies.
pub fn routes(
    index: &dyn Lookup,
    app_route: &CreateRouteInput,
    port: i32,
    issues: &mut Issues,
) -> Option<route::Route> {
    let spec = &app_route.spec;
    let (matching, action) =
        if let Some(http) = spec.http_route.as_ref().or(spec.http2_route.as_ref()) {
            if http.r#match.port.is_some_and(|p| p != port) {
                return None;
            }
            (
                http_match(http),
                http_action(index, app_route, http, issues)?,
            )
        } else if let Some(grpc) = &spec.grpc_route {
            if grpc.r#match.port.is_some_and(|p| p != port) {
                return None;
            }
            (
                grpc_match(grpc),
                grpc_action(index, app_route, grpc, issues)?,
            )
        } else {
            return None;
        };
    Some(route::Route {
        name: app_route.route_name.clone(),
        r#match: Some(matching),
        action: Some(route::route::Action::Route(action)),
        ..Default::default()
    })
}

/// A route sending everything to one cluster (a virtual service provided by a virtual node).
pub fn to_cluster(name: &str, cluster: String) -> route::Route {
    route::Route {
        name: name.to_owned(),
        r#match: Some(RouteMatch {
            path_specifier: Some(PathSpecifier::Prefix("/".into())),
            ..Default::default()
        }),
        action: Some(route::route::Action::Route(RouteAction {
            cluster_specifier: Some(ClusterSpecifier::Cluster(cluster)),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn http_match(http: &HttpRoute) -> RouteMatch {
    let m = &http.r#match;
    let path = match (&m.prefix, &m.path) {
        (Some(prefix), _) => PathSpecifier::Prefix(prefix.clone()),
        (None, Some(path)) => match (&path.exact, &path.regex) {
            (Some(exact), _) => PathSpecifier::Path(exact.clone()),
            (None, Some(regex)) => PathSpecifier::SafeRegex(regex_matcher(regex)),
            (None, None) => PathSpecifier::Prefix("/".into()),
        },
        // A match on the port alone (multi-listener routers) takes every path.
        (None, None) => PathSpecifier::Prefix("/".into()),
    };
    let mut headers: Vec<HeaderMatcher> = m
        .headers
        .iter()
        .flatten()
        .map(|h| {
            header(
                &h.name,
                h.r#match.as_ref().map(header_method),
                h.invert.unwrap_or(false),
            )
        })
        .collect();
    if let Some(method) = m.method {
        headers.push(header(":method", Some(exact(http_method(method))), false));
    }
    if let Some(scheme) = m.scheme {
        let scheme = match scheme {
            HttpScheme::Http => "http",
            HttpScheme::Https => "https",
        };
        headers.push(header(":scheme", Some(exact(scheme)), false));
    }
    let query_parameters = query_parameters(m.query_parameters.as_deref());
    RouteMatch {
        path_specifier: Some(path),
        headers,
        query_parameters,
        ..Default::default()
    }
}

fn grpc_match(grpc: &GrpcRoute) -> RouteMatch {
    let m = &grpc.r#match;
    // gRPC's :path is /package.Service/Method.
    let path = match (&m.service_name, &m.method_name) {
        (Some(service), Some(method)) => PathSpecifier::Path(format!("/{service}/{method}")),
        (Some(service), None) => PathSpecifier::Prefix(format!("/{service}/")),
        _ => PathSpecifier::Prefix("/".into()),
    };
    let headers = m
        .metadata
        .iter()
        .flatten()
        .map(|md| {
            let method = md.r#match.as_ref().map(|mm| match mm {
                mesh_model::types::GrpcRouteMetadataMatchMethod::Exact(v) => {
                    HeaderMatchMethod::Exact(v.clone())
                }
                mesh_model::types::GrpcRouteMetadataMatchMethod::Prefix(v) => {
                    HeaderMatchMethod::Prefix(v.clone())
                }
                mesh_model::types::GrpcRouteMetadataMatchMethod::Suffix(v) => {
                    HeaderMatchMethod::Suffix(v.clone())
                }
                mesh_model::types::GrpcRouteMetadataMatchMethod::Regex(v) => {
                    HeaderMatchMethod::Regex(v.clone())
                }
                mesh_model::types::GrpcRouteMetadataMatchMethod::Range(r) => {
                    HeaderMatchMethod::Range(r.clone())
                }
            });
            header(
                &md.name,
                method.as_ref().map(header_method),
                md.invert.unwrap_or(false),
            )
        })
        .collect();
    RouteMatch {
        path_specifier: Some(path),
        headers,
        ..Default::default()
    }
}

fn http_action(
    index: &dyn Lookup,
    app_route: &CreateRouteInput,
    http: &HttpRoute,
    issues: &mut Issues,
) -> Option<RouteAction> {
    let mut action = weighted(index, app_route, &http.action.weighted_targets, issues)?;
    if let Some(timeout) = &http.timeout {
        set_timeouts(
            &mut action,
            timeout.per_request.as_ref(),
            timeout.idle.as_ref(),
        );
    }
    if let Some(retry) = &http.retry_policy {
        let retries = Retries {
            grpc: &[],
            http: retry.http_retry_events.as_deref().unwrap_or_default(),
            tcp: retry.tcp_retry_events.as_deref().unwrap_or_default(),
            max: retry.max_retries,
            per_try: &retry.per_retry_timeout,
        };
        action.retry_policy = Some(retries.policy(&app_route.route_name, "httpRoute", issues));
    }
    Some(action)
}

fn grpc_action(
    index: &dyn Lookup,
    app_route: &CreateRouteInput,
    grpc: &GrpcRoute,
    issues: &mut Issues,
) -> Option<RouteAction> {
    let mut action = weighted(index, app_route, &grpc.action.weighted_targets, issues)?;
    if let Some(timeout) = &grpc.timeout {
        set_timeouts(
            &mut action,
            timeout.per_request.as_ref(),
            timeout.idle.as_ref(),
        );
    }
    if let Some(retry) = &grpc.retry_policy {
        let retries = Retries {
            grpc: retry.grpc_retry_events.as_deref().unwrap_or_default(),
            http: retry.http_retry_events.as_deref().unwrap_or_default(),
            tcp: retry.tcp_retry_events.as_deref().unwrap_or_default(),
            max: retry.max_retries,
            per_try: &retry.per_retry_timeout,
        };
        action.retry_policy = Some(retries.policy(&app_route.route_name, "grpcRoute", issues));
    }
    Some(action)
}

fn set_timeouts(action: &mut RouteAction, per_request: Option<&Duration>, idle: Option<&Duration>) {
    action.timeout = per_request.and_then(duration);
    action.idle_timeout = idle.and_then(duration);
}

/// An App Mesh retry policy (HTTP and gRPC routes share its shape).
struct Retries<'a> {
    grpc: &'a [GrpcRetryPolicyEvent],
    http: &'a [String],
    tcp: &'a [TcpRetryPolicyEvent],
    max: i64,
    per_try: &'a Duration,
}

impl Retries<'_> {
    fn policy(&self, route: &str, route_type: &str, issues: &mut Issues) -> RetryPolicy {
        let mut on: Vec<&str> = self.grpc.iter().map(grpc_retry_event).collect();
        let mut codes = Vec::new();
        for event in self.http {
            match http_retry_event(event) {
                Some((name, code)) => {
                    on.push(name);
                    codes.extend(code);
                }
                None => issues.push(format!(
                    "Route {route}: spec.{route_type}.retryPolicy.httpRetryEvents: {event:?} has no Envoy retry condition; ignored"
                )),
            }
        }
        on.extend(self.tcp.iter().map(tcp_retry_event));
        on.dedup();
        RetryPolicy {
            retry_on: on.join(","),
            num_retries: u32_value(self.max),
            per_try_timeout: duration(self.per_try),
            retriable_status_codes: codes,
            ..Default::default()
        }
    }
}

fn grpc_retry_event(event: &GrpcRetryPolicyEvent) -> &'static str {
    match event {
        GrpcRetryPolicyEvent::Cancelled => "cancelled",
        GrpcRetryPolicyEvent::DeadlineExceeded => "deadline-exceeded",
        GrpcRetryPolicyEvent::Internal => "internal",
        GrpcRetryPolicyEvent::ResourceExhausted => "resource-exhausted",
        GrpcRetryPolicyEvent::Unavailable => "unavailable",
    }
}

/// App Mesh's HTTP retry events as Envoy retry conditions (the mapping App Mesh's Envoy
/// configuration used); `client-error` is HTTP 409.
fn http_retry_event(event: &str) -> Option<(&'static str, Option<u32>)> {
    match event {
        "server-error" => Some(("5xx", None)),
        "gateway-error" => Some(("gateway-error", None)),
        "client-error" => Some(("retriable-status-codes", Some(409))),
        "stream-error" => Some(("refused-stream", None)),
        _ => None,
    }
}

fn tcp_retry_event(event: &TcpRetryPolicyEvent) -> &'static str {
    match event {
        TcpRetryPolicyEvent::ConnectionError => "connect-failure",
    }
}

/// Weighted targets to weighted clusters.
pub fn weighted(
    index: &dyn Lookup,
    app_route: &CreateRouteInput,
    targets: &[WeightedTarget],
    issues: &mut Issues,
) -> Option<RouteAction> {
    let clusters: Vec<ClusterWeight> = targets
        .iter()
        .filter_map(|target| {
            let cluster =
                index.target_cluster(&app_route.mesh_name, &target.virtual_node, target.port);
            if cluster.is_none() {
                issues.push(format!(
                    "Route {}: target {} has no listener to send to; target dropped",
                    app_route.route_name, target.virtual_node
                ));
            }
            Some(ClusterWeight {
                name: cluster?,
                weight: u32_value(i64::from(target.weight)),
                ..Default::default()
            })
        })
        .collect();
    if clusters.is_empty() {
        return None;
    }
    Some(RouteAction {
        cluster_specifier: Some(ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters,
            ..Default::default()
        })),
        ..Default::default()
    })
}

/// Query-parameter matchers: exact value, or present when no value is given.
pub(super) fn query_parameters(
    parameters: Option<&[HttpQueryParameter]>,
) -> Vec<QueryParameterMatcher> {
    parameters
        .into_iter()
        .flatten()
        .map(|q| QueryParameterMatcher {
            name: q.name.clone(),
            query_parameter_match_specifier: Some(
                match q.r#match.as_ref().and_then(|m| m.exact.clone()) {
                    Some(value) => QueryParameterMatchSpecifier::StringMatch(string_matcher(
                        MatchPattern::Exact(value),
                    )),
                    None => QueryParameterMatchSpecifier::PresentMatch(true),
                },
            ),
        })
        .collect()
}

pub(super) fn http_method(method: HttpMethod) -> &'static str {
    match method {
        HttpMethod::Get => "GET",
        HttpMethod::Head => "HEAD",
        HttpMethod::Post => "POST",
        HttpMethod::Put => "PUT",
        HttpMethod::Delete => "DELETE",
        HttpMethod::Connect => "CONNECT",
        HttpMethod::Options => "OPTIONS",
        HttpMethod::Trace => "TRACE",
        HttpMethod::Patch => "PATCH",
    }
}

pub(super) fn exact(value: &str) -> HeaderMatchSpecifier {
    HeaderMatchSpecifier::StringMatch(string_matcher(MatchPattern::Exact(value.to_owned())))
}

pub(super) fn header_method(method: &HeaderMatchMethod) -> HeaderMatchSpecifier {
    match method {
        HeaderMatchMethod::Exact(v) => exact(v),
        HeaderMatchMethod::Prefix(v) => {
            HeaderMatchSpecifier::StringMatch(string_matcher(MatchPattern::Prefix(v.clone())))
        }
        HeaderMatchMethod::Suffix(v) => {
            HeaderMatchSpecifier::StringMatch(string_matcher(MatchPattern::Suffix(v.clone())))
        }
        HeaderMatchMethod::Regex(v) => HeaderMatchSpecifier::StringMatch(string_matcher(
            MatchPattern::SafeRegex(regex_matcher(v)),
        )),
        HeaderMatchMethod::Range(MatchRange { start, end }) => {
            HeaderMatchSpecifier::RangeMatch(Int64Range {
                start: *start,
                end: *end,
            })
        }
    }
}

/// A header matcher; without a match method the header only has to be present.
pub(super) fn header(
    name: &str,
    specifier: Option<HeaderMatchSpecifier>,
    invert: bool,
) -> HeaderMatcher {
    HeaderMatcher {
        name: name.to_owned(),
        invert_match: invert,
        header_match_specifier: Some(specifier.unwrap_or(HeaderMatchSpecifier::PresentMatch(true))),
        ..Default::default()
    }
}

pub(super) fn string_matcher(pattern: MatchPattern) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(pattern),
        ..Default::default()
    }
}

pub(super) fn regex_matcher(regex: &str) -> RegexMatcher {
    RegexMatcher {
        regex: regex.to_owned(),
        ..Default::default()
    }
}
