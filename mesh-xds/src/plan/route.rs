//! Route tables as the node proxy applies them: an Envoy RouteConfiguration turned into
//! matchers that test a request directly. Whatever the proxy does not implement is refused
//! with the field named, so the xDS client NACKs it instead of silently routing differently.
use std::{collections::HashMap, sync::Arc, time::Duration};

use envoy_types::pb::envoy::{
    config::route::v3::{
        self as pb, HeaderMatcher, QueryParameterMatcher, RouteConfiguration,
        header_matcher::HeaderMatchSpecifier,
        query_parameter_matcher::QueryParameterMatchSpecifier,
        route::Action,
        route_action::{ClusterSpecifier, HostRewriteSpecifier},
        route_match::PathSpecifier,
    },
    r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern},
};
use regex::Regex;

use super::{PlanError, duration};

/// Envoy's (and App Mesh's) route timeout when none is given.
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);

/// The parts of a request that routes match on.
pub struct RequestView<'a> {
    pub method: &'a str,
    pub scheme: &'a str,
    /// Host header (HTTP/1.1) or :authority (HTTP/2), lowercase.
    pub authority: &'a str,
    /// The path without the query.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a http::HeaderMap,
}

impl RequestView<'_> {
    /// A header's value as Envoy's matchers see it: pseudo-headers from the request line,
    /// repeated headers joined with `,`.
    fn header(&self, name: &str) -> Option<String> {
        match name {
            ":method" => Some(self.method.to_owned()),
            ":scheme" => Some(self.scheme.to_owned()),
            ":authority" | "host" => Some(self.authority.to_owned()),
            ":path" => Some(match self.query {
                Some(query) => format!("{}?{query}", self.path),
                None => self.path.to_owned(),
            }),
            _ => {
                let mut values = self.headers.get_all(name).iter().peekable();
                values.peek()?;
                let joined: Vec<&str> = values.filter_map(|v| v.to_str().ok()).collect();
                Some(joined.join(","))
            }
        }
    }

    fn query_parameter(&self, name: &str) -> Option<String> {
        form_urlencoded::parse(self.query?.as_bytes())
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.into_owned())
    }
}

/// One RouteConfiguration.
#[derive(Debug)]
pub struct RouteTable {
    pub name: String,
    /// Shared with the table planned from the previous version of this one, where a host
    /// did not change ([`super::reuse`]).
    pub virtual_hosts: Vec<Arc<VirtualHost>>,
    /// Exact domain → index of the first virtual host naming it: a node's table holds a
    /// virtual host per reachable service, so a request must not scan them all.
    exact: HashMap<String, usize>,
    /// Wildcard domains with their virtual host's index, in table order (few in practice).
    wildcards: Vec<(Domain, usize)>,
}

#[derive(Debug)]
pub struct VirtualHost {
    pub name: String,
    domains: Vec<Domain>,
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Domain {
    Exact(String),
    /// `*.example.com`: the part after `*`.
    Suffix(String),
    /// `example.*`: the part before `*`.
    Prefix(String),
    Any,
}

#[derive(Debug)]
pub struct Route {
    pub name: String,
    matcher: RouteMatcher,
    pub action: RouteAction,
}

#[derive(Debug)]
struct RouteMatcher {
    path: PathMatch,
    case_sensitive: bool,
    headers: Vec<HeaderMatch>,
    query_parameters: Vec<QueryMatch>,
    grpc_only: bool,
}

#[derive(Debug)]
enum PathMatch {
    Prefix(String),
    Exact(String),
    Regex(Regex),
}

#[derive(Debug)]
struct HeaderMatch {
    name: String,
    invert: bool,
    test: ValueTest,
}

#[derive(Debug)]
enum ValueTest {
    Present(bool),
    String(StringMatch),
    /// `[start, end)`, the value parsed as an integer.
    Range(i64, i64),
}

#[derive(Debug)]
enum StringMatch {
    Exact(String, bool),
    Prefix(String, bool),
    Suffix(String, bool),
    Contains(String, bool),
    Regex(Regex),
}

#[derive(Debug)]
struct QueryMatch {
    name: String,
    /// `None`: the parameter only has to be present.
    test: Option<StringMatch>,
}

/// Where a matched request goes and how.
#[derive(Debug, Clone)]
pub struct RouteAction {
    pub clusters: WeightedClusters,
    /// Whole request, first byte to the end of the response headers; `None` disables it.
    pub timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub retry: Option<RetryPolicy>,
    pub prefix_rewrite: Option<String>,
    pub regex_rewrite: Option<(Regex, String)>,
    pub host_rewrite: Option<String>,
}

/// Clusters with weights; a pick lands on each in proportion to its weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightedClusters {
    entries: Vec<(String, u32)>,
    total: u32,
}

impl WeightedClusters {
    pub fn new(entries: Vec<(String, u32)>) -> Result<Self, PlanError> {
        let total = entries
            .iter()
            .map(|(_, w)| *w)
            .try_fold(0u32, u32::checked_add);
        match total {
            Some(total) if total > 0 => Ok(Self { entries, total }),
            Some(_) => Err(PlanError::new("weighted_clusters", "all weights are zero")),
            None => Err(PlanError::new("weighted_clusters", "weights overflow")),
        }
    }

    pub fn single(name: String) -> Self {
        Self {
            entries: vec![(name, 1)],
            total: 1,
        }
    }

    /// The cluster for a uniformly random `draw` in `0..total()`.
    pub fn pick(&self, draw: u32) -> &str {
        let mut left = draw % self.total;
        for (name, weight) in &self.entries {
            if left < *weight {
                return name;
            }
            left -= weight;
        }
        // Unreachable: the weights sum to `total` and `left < total`.
        &self.entries[self.entries.len() - 1].0
    }

    pub fn total(&self) -> u32 {
        self.total
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(n, _)| n.as_str())
    }
}

/// Envoy's `retry_on` conditions the proxy implements.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryOn {
    /// Any 5xx, a connect failure, a reset or a per-try timeout.
    pub server_error: bool,
    /// 502, 503, 504, a connect failure, a reset or a per-try timeout.
    pub gateway_error: bool,
    pub connect_failure: bool,
    pub reset: bool,
    /// HTTP/2 REFUSED_STREAM.
    pub refused_stream: bool,
    pub retriable_status_codes: bool,
    /// gRPC statuses in the response headers (trailers-only responses).
    pub grpc_cancelled: bool,
    pub grpc_deadline_exceeded: bool,
    pub grpc_internal: bool,
    pub grpc_resource_exhausted: bool,
    pub grpc_unavailable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    pub on: RetryOn,
    pub num_retries: u32,
    pub per_try_timeout: Option<Duration>,
    pub retriable_status_codes: Vec<u16>,
}

impl RetryPolicy {
    /// Whether a response with `status` (and gRPC status, if any) is worth another try.
    pub fn retries_status(&self, status: u16, grpc_status: Option<u32>) -> bool {
        let on = &self.on;
        (on.server_error && (500..600).contains(&status))
            || (on.gateway_error && matches!(status, 502..=504))
            || (on.retriable_status_codes && self.retriable_status_codes.contains(&status))
            || match grpc_status {
                Some(1) => on.grpc_cancelled,
                Some(4) => on.grpc_deadline_exceeded,
                Some(8) => on.grpc_resource_exhausted,
                Some(13) => on.grpc_internal,
                Some(14) => on.grpc_unavailable,
                _ => false,
            }
    }

    /// Whether a failure to get any response (`connect`: the connection could not be opened)
    /// is worth another try.
    pub fn retries_failure(&self, connect: bool) -> bool {
        let on = &self.on;
        on.server_error || on.gateway_error || on.reset || (connect && on.connect_failure)
    }

    /// Whether a per-try timeout is worth another try.
    pub fn retries_timeout(&self) -> bool {
        self.on.server_error || self.on.gateway_error || self.on.reset
    }
}

impl RouteTable {
    pub fn from_proto(config: &RouteConfiguration) -> Result<Self, PlanError> {
        let virtual_hosts = config
            .virtual_hosts
            .iter()
            .map(VirtualHost::planned)
            .collect::<Result<_, _>>()?;
        Ok(Self::new(config.name.clone(), virtual_hosts))
    }

    /// The table of these virtual hosts, indexed by domain.
    pub(super) fn new(name: String, virtual_hosts: Vec<Arc<VirtualHost>>) -> Self {
        let mut exact = HashMap::with_capacity(virtual_hosts.len());
        let mut wildcards = Vec::new();
        for (index, host) in virtual_hosts.iter().enumerate() {
            for domain in &host.domains {
                match domain {
                    // Envoy rejects a domain named twice; we keep the first host's.
                    Domain::Exact(name) => {
                        exact.entry(name.clone()).or_insert(index);
                    }
                    wildcard => wildcards.push((wildcard.clone(), index)),
                }
            }
        }
        Self {
            name,
            virtual_hosts,
            exact,
            wildcards,
        }
    }

    /// The virtual host for `authority` (already lower case) as Envoy picks it: an exact
    /// domain, then the longest `*.suffix`, then the longest `prefix.*`, then `*`.
    pub fn virtual_host(&self, authority: &str) -> Option<&VirtualHost> {
        if let Some(&index) = self.exact.get(authority) {
            return self.virtual_hosts.get(index).map(|host| &**host);
        }
        let mut best: Option<(u8, usize, usize)> = None;
        for (domain, index) in &self.wildcards {
            let rank = match domain {
                Domain::Suffix(s)
                    if authority.ends_with(s.as_str()) && authority.len() > s.len() =>
                {
                    Some((2, s.len()))
                }
                Domain::Prefix(p)
                    if authority.starts_with(p.as_str()) && authority.len() > p.len() =>
                {
                    Some((1, p.len()))
                }
                Domain::Any => Some((0, 0)),
                _ => None,
            };
            if let Some((class, len)) = rank
                && best.is_none_or(|(c, l, _)| (class, len) > (c, l))
            {
                best = Some((class, len, *index));
            }
        }
        best.and_then(|(_, _, index)| self.virtual_hosts.get(index))
            .map(|host| &**host)
    }
}

impl VirtualHost {
    /// A table's virtual host, errors naming it.
    pub(super) fn planned(host: &pb::VirtualHost) -> Result<Arc<Self>, PlanError> {
        Self::from_proto(host)
            .map(Arc::new)
            .map_err(|e| e.within(format!("virtual_hosts[{}]", host.name)))
    }

    fn from_proto(host: &pb::VirtualHost) -> Result<Self, PlanError> {
        let domains = host.domains.iter().map(|d| domain(d)).collect();
        let routes = host
            .routes
            .iter()
            .map(|route| {
                Route::from_proto(route).map_err(|e| e.within(format!("routes[{}]", route.name)))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            name: host.name.clone(),
            domains,
            routes,
        })
    }

    /// The host names this virtual host serves exactly, lower case, a `:port` taken off
    /// (`service` for the domains `service` and `service:8080`); wildcard domains name none.
    pub fn exact_names(&self) -> impl Iterator<Item = &str> {
        self.domains.iter().filter_map(|domain| match domain {
            Domain::Exact(name) => Some(match name.rsplit_once(':') {
                Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
                _ => name.as_str(),
            }),
            _ => None,
        })
    }

    /// The first route that matches, in order (App Mesh priorities are already the order).
    pub fn route(&self, request: &RequestView<'_>) -> Option<&Route> {
        self.routes.iter().find(|r| r.matcher.matches(request))
    }
}

fn domain(domain: &str) -> Domain {
    let domain = domain.to_ascii_lowercase();
    if domain == "*" {
        Domain::Any
    } else if let Some(suffix) = domain.strip_prefix('*') {
        Domain::Suffix(suffix.to_owned())
    } else if let Some(prefix) = domain.strip_suffix('*') {
        Domain::Prefix(prefix.to_owned())
    } else {
        Domain::Exact(domain)
    }
}

impl Route {
    fn from_proto(route: &pb::Route) -> Result<Self, PlanError> {
        let matcher = RouteMatcher::from_proto(route.r#match.as_ref())?;
        let action = match &route.action {
            Some(Action::Route(action)) => RouteAction::from_proto(action)?,
            Some(_) => {
                return Err(PlanError::new(
                    "action",
                    "only route actions are supported (no redirect, direct response)",
                ));
            }
            None => return Err(PlanError::new("action", "missing")),
        };
        Ok(Self {
            name: route.name.clone(),
            matcher,
            action,
        })
    }
}

impl RouteMatcher {
    fn from_proto(matching: Option<&pb::RouteMatch>) -> Result<Self, PlanError> {
        let Some(m) = matching else {
            return Err(PlanError::new("match", "missing"));
        };
        let path = match &m.path_specifier {
            Some(PathSpecifier::Prefix(p)) => PathMatch::Prefix(p.clone()),
            Some(PathSpecifier::Path(p)) => PathMatch::Exact(p.clone()),
            Some(PathSpecifier::SafeRegex(r)) => {
                PathMatch::Regex(anchored(&r.regex, "match.safe_regex")?)
            }
            Some(_) => {
                return Err(PlanError::new(
                    "match",
                    "only prefix, path and safe_regex path matches are supported",
                ));
            }
            None => return Err(PlanError::new("match", "no path specifier")),
        };
        if m.runtime_fraction.is_some() || !m.dynamic_metadata.is_empty() || m.tls_context.is_some()
        {
            return Err(PlanError::new(
                "match",
                "runtime_fraction, dynamic_metadata and tls_context are not supported",
            ));
        }
        let headers = m
            .headers
            .iter()
            .map(|h| {
                HeaderMatch::from_proto(h)
                    .map_err(|e| e.within(format!("match.headers[{}]", h.name)))
            })
            .collect::<Result<_, _>>()?;
        let query_parameters = m
            .query_parameters
            .iter()
            .map(|q| {
                QueryMatch::from_proto(q)
                    .map_err(|e| e.within(format!("match.query_parameters[{}]", q.name)))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            path,
            case_sensitive: m.case_sensitive.as_ref().is_none_or(|b| b.value),
            headers,
            query_parameters,
            grpc_only: m.grpc.is_some(),
        })
    }

    fn matches(&self, request: &RequestView<'_>) -> bool {
        let path_ok = match &self.path {
            PathMatch::Prefix(prefix) if self.case_sensitive => {
                request.path.starts_with(prefix.as_str())
            }
            PathMatch::Prefix(prefix) => request
                .path
                .get(..prefix.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(prefix)),
            PathMatch::Exact(path) if self.case_sensitive => request.path == path,
            PathMatch::Exact(path) => request.path.eq_ignore_ascii_case(path),
            PathMatch::Regex(regex) => regex.is_match(request.path),
        };
        path_ok
            && (!self.grpc_only
                || request
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.starts_with("application/grpc")))
            && self.headers.iter().all(|h| h.matches(request))
            && self.query_parameters.iter().all(|q| q.matches(request))
    }
}

impl HeaderMatch {
    fn from_proto(header: &HeaderMatcher) -> Result<Self, PlanError> {
        #[allow(deprecated)] // the exact/prefix/suffix/... fields older control planes still send
        let test = match &header.header_match_specifier {
            Some(HeaderMatchSpecifier::ExactMatch(v)) => {
                ValueTest::String(StringMatch::Exact(v.clone(), false))
            }
            Some(HeaderMatchSpecifier::PrefixMatch(v)) => {
                ValueTest::String(StringMatch::Prefix(v.clone(), false))
            }
            Some(HeaderMatchSpecifier::SuffixMatch(v)) => {
                ValueTest::String(StringMatch::Suffix(v.clone(), false))
            }
            Some(HeaderMatchSpecifier::ContainsMatch(v)) => {
                ValueTest::String(StringMatch::Contains(v.clone(), false))
            }
            Some(HeaderMatchSpecifier::SafeRegexMatch(r)) => {
                ValueTest::String(StringMatch::Regex(anchored(&r.regex, "safe_regex_match")?))
            }
            Some(HeaderMatchSpecifier::RangeMatch(r)) => ValueTest::Range(r.start, r.end),
            Some(HeaderMatchSpecifier::PresentMatch(p)) => ValueTest::Present(*p),
            Some(HeaderMatchSpecifier::StringMatch(s)) => ValueTest::String(string_match(s)?),
            // Envoy: no specifier means "present".
            None => ValueTest::Present(true),
        };
        Ok(Self {
            name: header.name.to_ascii_lowercase(),
            invert: header.invert_match,
            test,
        })
    }

    fn matches(&self, request: &RequestView<'_>) -> bool {
        let value = request.header(&self.name);
        let hit = match (&self.test, value) {
            (ValueTest::Present(want), value) => value.is_some() == *want,
            // A missing header fails every value test, so an inverted test matches it: the
            // rule of the Envoy releases App Mesh shipped (newer Envoy needs
            // treat_missing_header_as_empty for it), and what App Mesh routes rely on.
            (_, None) => false,
            (ValueTest::String(s), Some(v)) => s.matches(&v),
            (ValueTest::Range(start, end), Some(v)) => v
                .trim()
                .parse::<i64>()
                .is_ok_and(|n| *start <= n && n < *end),
        };
        hit != self.invert
    }
}

impl QueryMatch {
    fn from_proto(query: &QueryParameterMatcher) -> Result<Self, PlanError> {
        let test = match &query.query_parameter_match_specifier {
            Some(QueryParameterMatchSpecifier::StringMatch(s)) => Some(string_match(s)?),
            Some(QueryParameterMatchSpecifier::PresentMatch(_)) | None => None,
        };
        Ok(Self {
            name: query.name.clone(),
            test,
        })
    }

    fn matches(&self, request: &RequestView<'_>) -> bool {
        match (request.query_parameter(&self.name), &self.test) {
            (Some(value), Some(test)) => test.matches(&value),
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

fn string_match(matcher: &StringMatcher) -> Result<StringMatch, PlanError> {
    let fold = matcher.ignore_case;
    Ok(match &matcher.match_pattern {
        Some(MatchPattern::Exact(v)) => StringMatch::Exact(v.clone(), fold),
        Some(MatchPattern::Prefix(v)) => StringMatch::Prefix(v.clone(), fold),
        Some(MatchPattern::Suffix(v)) => StringMatch::Suffix(v.clone(), fold),
        Some(MatchPattern::Contains(v)) => StringMatch::Contains(v.clone(), fold),
        Some(MatchPattern::SafeRegex(r)) => {
            StringMatch::Regex(anchored(&r.regex, "string_match.safe_regex")?)
        }
        Some(MatchPattern::Custom(_)) | None => {
            return Err(PlanError::new(
                "string_match",
                "custom or empty matchers are not supported",
            ));
        }
    })
}

impl StringMatch {
    fn matches(&self, value: &str) -> bool {
        fn fold(s: &str, ignore_case: bool) -> std::borrow::Cow<'_, str> {
            if ignore_case {
                s.to_ascii_lowercase().into()
            } else {
                s.into()
            }
        }
        match self {
            Self::Exact(want, ic) => fold(value, *ic) == fold(want, *ic),
            Self::Prefix(want, ic) => fold(value, *ic).starts_with(fold(want, *ic).as_ref()),
            Self::Suffix(want, ic) => fold(value, *ic).ends_with(fold(want, *ic).as_ref()),
            Self::Contains(want, ic) => fold(value, *ic).contains(fold(want, *ic).as_ref()),
            Self::Regex(regex) => regex.is_match(value),
        }
    }
}

/// Envoy's safe_regex matches the whole value (RE2 full match).
fn anchored(regex: &str, field: &str) -> Result<Regex, PlanError> {
    Regex::new(&format!("^(?:{regex})$"))
        .map_err(|e| PlanError::new(field, format!("regex {regex:?} does not compile: {e}")))
}

impl RouteAction {
    fn from_proto(action: &pb::RouteAction) -> Result<Self, PlanError> {
        let clusters = match &action.cluster_specifier {
            Some(ClusterSpecifier::Cluster(name)) => WeightedClusters::single(name.clone()),
            Some(ClusterSpecifier::WeightedClusters(weighted)) => WeightedClusters::new(
                weighted
                    .clusters
                    .iter()
                    .map(|c| (c.name.clone(), c.weight.map_or(0, |w| w.value)))
                    .collect(),
            )?,
            _ => {
                return Err(PlanError::new(
                    "route.cluster_specifier",
                    "only cluster and weighted_clusters are supported",
                ));
            }
        };
        let timeout = match &action.timeout {
            None => Some(DEFAULT_ROUTE_TIMEOUT),
            Some(t) => Some(duration(t)).filter(|d| !d.is_zero()),
        };
        let regex_rewrite = action
            .regex_rewrite
            .as_ref()
            .map(|r| {
                let pattern = r
                    .pattern
                    .as_ref()
                    .map(|p| p.regex.as_str())
                    .unwrap_or_default();
                Regex::new(pattern)
                    .map(|regex| (regex, substitution(&r.substitution)))
                    .map_err(|e| {
                        PlanError::new(
                            "route.regex_rewrite",
                            format!("regex {pattern:?} does not compile: {e}"),
                        )
                    })
            })
            .transpose()?;
        let host_rewrite = match &action.host_rewrite_specifier {
            Some(HostRewriteSpecifier::HostRewriteLiteral(host)) => Some(host.clone()),
            Some(_) => {
                return Err(PlanError::new(
                    "route.host_rewrite_specifier",
                    "only host_rewrite_literal is supported",
                ));
            }
            None => None,
        };
        Ok(Self {
            clusters,
            timeout,
            idle_timeout: action
                .idle_timeout
                .as_ref()
                .map(duration)
                .filter(|d| !d.is_zero()),
            retry: action.retry_policy.as_ref().map(retry_policy).transpose()?,
            prefix_rewrite: Some(action.prefix_rewrite.clone()).filter(|p| !p.is_empty()),
            regex_rewrite,
            host_rewrite,
        })
    }

    /// The path sent upstream for a request to `path` that matched `route`.
    pub fn rewrite_path(&self, route: &Route, path: &str) -> Option<String> {
        if let (Some(new), PathMatch::Prefix(matched)) = (&self.prefix_rewrite, &route.matcher.path)
        {
            return Some(format!(
                "{new}{}",
                path.get(matched.len()..).unwrap_or_default()
            ));
        }
        self.regex_rewrite.as_ref().map(|(regex, substitution)| {
            regex.replace_all(path, substitution.as_str()).into_owned()
        })
    }
}

/// Envoy's (RE2's) substitution syntax in the regex crate's: `\N` is capture group N, and
/// `$` is a literal dollar (the regex crate would take `$name` for a group).
fn substitution(envoy: &str) -> String {
    let mut out = String::with_capacity(envoy.len());
    let mut chars = envoy.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '$' => out.push_str("$$"),
            '\\' => match chars.peek() {
                Some(digit) if digit.is_ascii_digit() => {
                    out.push_str(&format!("${{{digit}}}"));
                    chars.next();
                }
                Some('\\') => {
                    out.push('\\');
                    chars.next();
                }
                _ => out.push('\\'),
            },
            c => out.push(c),
        }
    }
    out
}

fn retry_policy(policy: &pb::RetryPolicy) -> Result<RetryPolicy, PlanError> {
    let mut on = RetryOn::default();
    for condition in policy
        .retry_on
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
    {
        let flag = match condition {
            "5xx" => &mut on.server_error,
            "gateway-error" => &mut on.gateway_error,
            "connect-failure" => &mut on.connect_failure,
            "reset" => &mut on.reset,
            "refused-stream" => &mut on.refused_stream,
            "retriable-status-codes" => &mut on.retriable_status_codes,
            "cancelled" => &mut on.grpc_cancelled,
            "deadline-exceeded" => &mut on.grpc_deadline_exceeded,
            "internal" => &mut on.grpc_internal,
            "resource-exhausted" => &mut on.grpc_resource_exhausted,
            "unavailable" => &mut on.grpc_unavailable,
            other => {
                return Err(PlanError::new(
                    "route.retry_policy.retry_on",
                    format!("condition {other:?} is not supported"),
                ));
            }
        };
        *flag = true;
    }
    let retriable_status_codes = policy
        .retriable_status_codes
        .iter()
        .map(|&code| {
            u16::try_from(code)
                .ok()
                .filter(|c| (100..600).contains(c))
                .ok_or_else(|| {
                    PlanError::new(
                        "route.retry_policy.retriable_status_codes",
                        format!("{code} is not an HTTP status"),
                    )
                })
        })
        .collect::<Result<_, _>>()?;
    Ok(RetryPolicy {
        on,
        // Envoy's default when a policy is given without a count.
        num_retries: policy.num_retries.map_or(1, |n| n.value),
        per_try_timeout: policy
            .per_try_timeout
            .as_ref()
            .map(duration)
            .filter(|d| !d.is_zero()),
        retriable_status_codes,
    })
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::{
        envoy::{
            config::route::v3::{RouteMatch, WeightedCluster, weighted_cluster::ClusterWeight},
            r#type::{matcher::v3::RegexMatcher, v3::Int64Range},
        },
        google::protobuf::{BoolValue, UInt32Value},
    };

    use super::*;

    #[test]
    fn envoy_substitutions_mean_the_same_here() {
        assert_eq!(substitution("/price$tag"), "/price$$tag");
        assert_eq!(substitution("/v2/\\1/x"), "/v2/${1}/x");
        assert_eq!(substitution("a\\\\b"), "a\\b");
        let regex = regex::Regex::new("^/old/(.*)$").unwrap();
        assert_eq!(
            regex.replace_all("/old/a", substitution("/new$/\\1").as_str()),
            "/new$/a"
        );
    }

    fn request<'a>(
        path: &'a str,
        query: Option<&'a str>,
        headers: &'a http::HeaderMap,
    ) -> RequestView<'a> {
        RequestView {
            method: "GET",
            scheme: "http",
            authority: "svc.local:80",
            path,
            query,
            headers,
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, http::HeaderValue::from_static(value));
        }
        map
    }

    fn matcher(m: RouteMatch) -> RouteMatcher {
        RouteMatcher::from_proto(Some(&m)).unwrap()
    }

    fn header(name: &str, spec: HeaderMatchSpecifier, invert: bool) -> HeaderMatcher {
        HeaderMatcher {
            name: name.into(),
            invert_match: invert,
            header_match_specifier: Some(spec),
            ..Default::default()
        }
    }

    fn string(pattern: MatchPattern) -> HeaderMatchSpecifier {
        HeaderMatchSpecifier::StringMatch(StringMatcher {
            match_pattern: Some(pattern),
            ..Default::default()
        })
    }

    fn with_header(h: HeaderMatcher) -> RouteMatcher {
        matcher(RouteMatch {
            path_specifier: Some(PathSpecifier::Prefix("/".into())),
            headers: vec![h],
            ..Default::default()
        })
    }

    #[test]
    fn paths_prefix_exact_regex_and_case() {
        let none = http::HeaderMap::new();
        let prefix = matcher(RouteMatch {
            path_specifier: Some(PathSpecifier::Prefix("/api".into())),
            ..Default::default()
        });
        assert!(prefix.matches(&request("/api/items", None, &none)));
        assert!(!prefix.matches(&request("/API/items", None, &none)));
        let folded = matcher(RouteMatch {
            path_specifier: Some(PathSpecifier::Prefix("/api".into())),
            case_sensitive: Some(BoolValue { value: false }),
            ..Default::default()
        });
        assert!(folded.matches(&request("/API/items", None, &none)));
        let exact = matcher(RouteMatch {
            path_specifier: Some(PathSpecifier::Path("/a".into())),
            ..Default::default()
        });
        assert!(exact.matches(&request("/a", Some("x=1"), &none)));
        assert!(!exact.matches(&request("/a/", None, &none)));
        // RE2 full match: the whole path, not a substring.
        let regex = matcher(RouteMatch {
            path_specifier: Some(PathSpecifier::SafeRegex(RegexMatcher {
                regex: "/items/[0-9]+".into(),
                ..Default::default()
            })),
            ..Default::default()
        });
        assert!(regex.matches(&request("/items/12", None, &none)));
        assert!(!regex.matches(&request("/x/items/12", None, &none)));
        assert!(!regex.matches(&request("/items/12/x", None, &none)));
    }

    #[test]
    fn header_tests_and_invert() {
        type HeaderCase = (HeaderMatcher, &'static [(&'static str, &'static str)], bool);
        // (matcher, the request's headers, whether it matches)
        let cases: [HeaderCase; 12] = [
            (
                header("x", string(MatchPattern::Exact("a".into())), false),
                &[("x", "a")],
                true,
            ),
            (
                header("x", string(MatchPattern::Exact("a".into())), false),
                &[("x", "A")],
                false,
            ),
            (
                header("x", string(MatchPattern::Prefix("ab".into())), false),
                &[("x", "abc")],
                true,
            ),
            (
                header("x", string(MatchPattern::Suffix("yz".into())), false),
                &[("x", "xyz")],
                true,
            ),
            (
                header(
                    "x",
                    string(MatchPattern::SafeRegex(RegexMatcher {
                        regex: "v[0-9]".into(),
                        ..Default::default()
                    })),
                    false,
                ),
                &[("x", "v1x")],
                false,
            ),
            (
                header(
                    "x",
                    HeaderMatchSpecifier::RangeMatch(Int64Range { start: 10, end: 20 }),
                    false,
                ),
                &[("x", "19")],
                true,
            ),
            (
                header(
                    "x",
                    HeaderMatchSpecifier::RangeMatch(Int64Range { start: 10, end: 20 }),
                    false,
                ),
                &[("x", "20")],
                false,
            ),
            (
                header(
                    "x",
                    HeaderMatchSpecifier::RangeMatch(Int64Range { start: 10, end: 20 }),
                    false,
                ),
                &[("x", "1x")],
                false,
            ),
            (
                header("x", HeaderMatchSpecifier::PresentMatch(true), false),
                &[("x", "")],
                true,
            ),
            (
                header("x", HeaderMatchSpecifier::PresentMatch(true), true),
                &[],
                true,
            ),
            // Inverted value tests match a missing header (App Mesh's Envoy rule)...
            (
                header("x", string(MatchPattern::Exact("a".into())), true),
                &[],
                true,
            ),
            // ...and repeated headers are joined with commas.
            (
                header("x", string(MatchPattern::Exact("a,b".into())), false),
                &[("x", "a"), ("x", "b")],
                true,
            ),
        ];
        for (index, (h, present, want)) in cases.into_iter().enumerate() {
            let map = headers(present);
            assert_eq!(
                with_header(h).matches(&request("/", None, &map)),
                want,
                "case {index}"
            );
        }
    }

    #[test]
    fn pseudo_headers_and_query_parameters() {
        let none = http::HeaderMap::new();
        let method = with_header(header(
            ":method",
            string(MatchPattern::Exact("GET".into())),
            false,
        ));
        assert!(method.matches(&request("/", None, &none)));
        let query = matcher(RouteMatch {
            path_specifier: Some(PathSpecifier::Prefix("/".into())),
            query_parameters: vec![QueryParameterMatcher {
                name: "beta".into(),
                query_parameter_match_specifier: Some(QueryParameterMatchSpecifier::StringMatch(
                    StringMatcher {
                        match_pattern: Some(MatchPattern::Exact("on".into())),
                        ..Default::default()
                    },
                )),
            }],
            ..Default::default()
        });
        assert!(query.matches(&request("/", Some("a=1&beta=on"), &none)));
        assert!(!query.matches(&request("/", Some("beta=off"), &none)));
        assert!(!query.matches(&request("/", None, &none)));
    }

    #[test]
    fn bad_regexes_and_retry_conditions_are_refused_by_field() {
        let error = RouteMatcher::from_proto(Some(&RouteMatch {
            path_specifier: Some(PathSpecifier::SafeRegex(RegexMatcher {
                regex: "(".into(),
                ..Default::default()
            })),
            ..Default::default()
        }))
        .err()
        .unwrap();
        assert_eq!(error.field, "match.safe_regex");
        let error = retry_policy(&pb::RetryPolicy {
            retry_on: "5xx,envoy-ratelimited".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(error.field, "route.retry_policy.retry_on");
        let policy = retry_policy(&pb::RetryPolicy {
            retry_on: "gateway-error,retriable-status-codes,unavailable".into(),
            retriable_status_codes: vec![409],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(policy.num_retries, 1, "Envoy's default");
        assert!(policy.retries_status(503, None) && !policy.retries_status(500, None));
        assert!(policy.retries_status(409, None) && policy.retries_status(200, Some(14)));
        assert!(policy.retries_failure(true) && policy.retries_timeout());
    }

    #[test]
    fn virtual_host_domains_pick_the_most_specific() {
        let host = |name: &str, domains: &[&str]| pb::VirtualHost {
            name: name.into(),
            domains: domains.iter().map(|d| (*d).into()).collect(),
            ..Default::default()
        };
        let table = RouteTable::from_proto(&RouteConfiguration {
            name: "t".into(),
            virtual_hosts: vec![
                host("any", &["*"]),
                host("suffix", &["*.shop.local"]),
                host("longer-suffix", &["*.api.shop.local"]),
                host("prefix", &["api.*"]),
                host("exact", &["api.shop.local", "api.shop.local:80"]),
            ],
            ..Default::default()
        })
        .unwrap();
        let pick = |authority: &str| table.virtual_host(authority).map(|h| h.name.as_str());
        assert_eq!(pick("api.shop.local:80"), Some("exact"));
        assert_eq!(pick("v1.api.shop.local"), Some("longer-suffix"));
        assert_eq!(pick("db.shop.local"), Some("suffix"));
        assert_eq!(pick("api.other"), Some("prefix"));
        assert_eq!(pick("elsewhere"), Some("any"));
    }

    #[test]
    fn an_exact_domain_named_twice_goes_to_the_first_host() {
        let host = |name: &str| pb::VirtualHost {
            name: name.into(),
            domains: vec!["Shop.local".into()],
            ..Default::default()
        };
        let table = RouteTable::from_proto(&RouteConfiguration {
            name: "t".into(),
            virtual_hosts: vec![host("first"), host("second")],
            ..Default::default()
        })
        .unwrap();
        let picked = table.virtual_host("shop.local").map(|h| h.name.as_str());
        assert_eq!(picked, Some("first"));
    }

    #[test]
    fn weighted_picks_follow_weights_and_skip_zero() {
        let action = RouteAction::from_proto(&pb::RouteAction {
            cluster_specifier: Some(ClusterSpecifier::WeightedClusters(WeightedCluster {
                clusters: [("a", 3), ("zero", 0), ("b", 1)]
                    .into_iter()
                    .map(|(name, weight)| ClusterWeight {
                        name: name.into(),
                        weight: Some(UInt32Value { value: weight }),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })),
            ..Default::default()
        })
        .unwrap();
        let clusters = &action.clusters;
        let picks: Vec<&str> = (0..clusters.total())
            .map(|draw| clusters.pick(draw))
            .collect();
        assert_eq!(picks, ["a", "a", "a", "b"]);
        assert_eq!(action.timeout, Some(DEFAULT_ROUTE_TIMEOUT));
        assert!(WeightedClusters::new(vec![("z".into(), 0)]).is_err());
    }
}
