//! Virtual gateways. A request goes through two route tables, as in App Mesh: the gateway
//! routes of the listener port (match, then rewrite — by default the Host becomes the target
//! virtual service's name and the matched prefix becomes `/`), then the target virtual
//! service's own routing (its router's routes, or its node). The first table is the ingress
//! listener's; it hands every request to an internal listener (Envoy's internal listener, no
//! socket) whose table holds one virtual host per target service, built as for a virtual
//! node's backends.
use std::sync::Arc;

use envoy_types::pb::envoy::{
    config::{
        accesslog::v3::AccessLog,
        cluster::v3::{Cluster, cluster},
        core::v3::{
            Address, EnvoyInternalAddress, TransportSocket, address,
            envoy_internal_address::AddressNameSpecifier,
        },
        endpoint::v3 as endpoint,
        listener::v3::{
            FilterChain, Listener, listener::InternalListenerConfig, listener::ListenerSpecifier,
        },
        route::v3::{
            Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
            route::Action,
            route_action::{ClusterSpecifier, HostRewriteSpecifier},
            route_match::PathSpecifier,
        },
    },
    r#type::matcher::v3::{RegexMatchAndSubstitute, string_matcher::MatchPattern},
};
use mesh_model::types::{
    ClientPolicyTls, CreateGatewayRouteInput, CreateVirtualGatewayInput,
    DefaultGatewayRouteRewrite, GatewayRouteHostnameMatch, GrpcMetadataMatchMethod,
    HeaderMatchMethod, HealthCheckPolicy, HttpGatewayRoute, HttpGatewayRouteRewrite, ListenerTls,
    VirtualGatewayAccessLog, VirtualGatewayClientPolicyTls, VirtualGatewayConnectionPool,
    VirtualGatewayHealthCheckPolicy, VirtualGatewayListenerTls, VirtualGatewayPortProtocol,
    VirtualNodeConnectionPool,
};

use mesh_xds::names;

use super::{
    AutoMtls, Issues, access_log,
    cluster::circuit_breakers,
    hosts::hosts_of,
    index::MeshIndex,
    listener::{http_connection_manager, rds},
    output::Output,
    route, tls,
    values::socket_address,
    variant::ClusterVariant,
};

/// What one virtual gateway compiles to.
pub struct Gateway {
    pub listeners: Vec<Listener>,
    pub routes: Vec<RouteConfiguration>,
    pub clusters: Vec<Cluster>,
    /// Services the gateway routes to: their virtual hosts go into the internal table.
    pub targets: Vec<String>,
}

pub fn gateway(
    gateway: &CreateVirtualGatewayInput,
    gateway_routes: &[Arc<CreateGatewayRouteInput>],
    issues: &mut Issues,
) -> Gateway {
    let (mesh, name) = (&gateway.mesh_name, &gateway.virtual_gateway_name);
    let internal = names::gateway_internal(mesh, name);
    let mut result = Gateway {
        listeners: Vec::new(),
        routes: Vec::new(),
        clusters: vec![internal_cluster(&internal)],
        targets: Vec::new(),
    };
    for listener in &gateway.spec.listeners {
        let port = listener.port_mapping.port;
        let what = format!("VirtualGateway {name} listener {port}");
        let tls = match listener.tls.as_ref().map(as_listener_tls).transpose() {
            Ok(tls) => tls,
            Err(error) => {
                issues.push(format!("{what}: TLS settings: {error}; not served"));
                continue;
            }
        };
        let protocol = listener.port_mapping.protocol;
        let routes: Vec<Route> = gateway_routes
            .iter()
            .filter_map(|gr| ingress_route(gr, protocol, port, &internal, &mut result.targets))
            .collect();
        let table = names::gateway_ingress(mesh, name, port);
        result.routes.push(RouteConfiguration {
            name: table.clone(),
            virtual_hosts: vec![VirtualHost {
                name: table.clone(),
                domains: vec!["*".into()],
                routes,
                ..Default::default()
            }],
            ..Default::default()
        });
        let filter = http_connection_manager(table.clone(), rds(table.clone()));
        // Gateways take no automatic mTLS from callers outside the mesh.
        let source = tls::ListenerTlsSource {
            tls: tls.as_ref(),
            auto: None,
        };
        let filter_chains = tls::chains(port, &filter, source, &what, issues);
        if filter_chains.is_empty() {
            // Fail closed: TLS that cannot be terminated is not served in plain text.
            continue;
        }
        result.listeners.push(Listener {
            name: table.clone(),
            address: Some(socket_address("0.0.0.0", port as u32)),
            listener_filters: tls::inspector_for(&filter_chains),
            filter_chains,
            ..Default::default()
        });
    }
    result.targets.sort();
    result.targets.dedup();
    result.listeners.push(Listener {
        name: internal.clone(),
        listener_specifier: Some(ListenerSpecifier::InternalListener(
            InternalListenerConfig {},
        )),
        filter_chains: vec![FilterChain {
            filters: vec![http_connection_manager(
                internal.clone(),
                rds(internal.clone()),
            )],
            ..Default::default()
        }],
        ..Default::default()
    });
    result
}

/// A gateway's setting as the virtual node setting of the same shape: the API model gives
/// gateways their own types (listener TLS, connection pool, health check, client policy) with
/// the same fields as the node's, or a subset, so one serializes into the other.
fn same_shape<A: serde::Serialize, B: serde::de::DeserializeOwned>(
    gateway: &A,
) -> Result<B, serde_json::Error> {
    serde_json::to_value(gateway).and_then(serde_json::from_value)
}

fn as_listener_tls(tls: &VirtualGatewayListenerTls) -> Result<ListenerTls, serde_json::Error> {
    same_shape(tls)
}

/// The TLS a gateway originates toward its targets (backend defaults' client policy).
pub(super) fn as_client_tls(
    tls: &VirtualGatewayClientPolicyTls,
) -> Result<ClientPolicyTls, serde_json::Error> {
    same_shape(tls)
}

/// A gateway listener's connection pool (http, http2, grpc: a subset of the node's kinds).
pub(super) fn as_node_pool(
    pool: &VirtualGatewayConnectionPool,
) -> Result<VirtualNodeConnectionPool, serde_json::Error> {
    same_shape(pool)
}

/// A gateway listener's health check as a virtual node's (its protocols are a subset). The
/// gateway probes the endpoints it routes to on their own ports: `port` is dropped.
pub(super) fn as_node_health_check(
    policy: &VirtualGatewayHealthCheckPolicy,
) -> Result<HealthCheckPolicy, serde_json::Error> {
    let mut node: HealthCheckPolicy = same_shape(policy)?;
    node.port = None;
    Ok(node)
}

fn internal_cluster(name: &str) -> Cluster {
    Cluster {
        name: name.to_owned(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32,
        )),
        load_assignment: Some(endpoint::ClusterLoadAssignment {
            cluster_name: name.to_owned(),
            endpoints: vec![endpoint::LocalityLbEndpoints {
                lb_endpoints: vec![endpoint::LbEndpoint {
                    host_identifier: Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(
                        endpoint::Endpoint {
                            address: Some(Address {
                                address: Some(address::Address::EnvoyInternalAddress(
                                    EnvoyInternalAddress {
                                        address_name_specifier: Some(
                                            AddressNameSpecifier::ServerListenerName(
                                                name.to_owned(),
                                            ),
                                        ),
                                        ..Default::default()
                                    },
                                )),
                            }),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// One gateway route as an ingress route, if it applies to a listener of `protocol` on `port`.
fn ingress_route(
    gateway_route: &CreateGatewayRouteInput,
    protocol: VirtualGatewayPortProtocol,
    port: i32,
    internal: &str,
    targets: &mut Vec<String>,
) -> Option<Route> {
    let spec = &gateway_route.spec;
    let http = match protocol {
        VirtualGatewayPortProtocol::Http => spec.http_route.as_ref(),
        VirtualGatewayPortProtocol::Http2 => spec.http2_route.as_ref(),
        VirtualGatewayPortProtocol::Grpc => None,
    };
    let (matching, target, host_rewrite, path_rewrite) = if let Some(http) = http {
        if http.r#match.port.is_some_and(|p| p != port) {
            return None;
        }
        let target = &http.action.target;
        (
            http_match(http),
            target,
            host_rewrite_of(
                http.action
                    .rewrite
                    .as_ref()
                    .and_then(|r| r.hostname.as_ref()),
            ),
            Some(http),
        )
    } else if protocol == VirtualGatewayPortProtocol::Grpc
        && let Some(grpc) = &spec.grpc_route
    {
        if grpc.r#match.port.is_some_and(|p| p != port) {
            return None;
        }
        let mut matching = RouteMatch {
            path_specifier: Some(match &grpc.r#match.service_name {
                Some(service) => PathSpecifier::Prefix(format!("/{service}/")),
                None => PathSpecifier::Prefix("/".into()),
            }),
            ..Default::default()
        };
        matching
            .headers
            .extend(hostname_header(grpc.r#match.hostname.as_ref()));
        for metadata in grpc.r#match.metadata.iter().flatten() {
            let method = metadata.r#match.as_ref().map(|m| match m {
                GrpcMetadataMatchMethod::Exact(v) => HeaderMatchMethod::Exact(v.clone()),
                GrpcMetadataMatchMethod::Prefix(v) => HeaderMatchMethod::Prefix(v.clone()),
                GrpcMetadataMatchMethod::Suffix(v) => HeaderMatchMethod::Suffix(v.clone()),
                GrpcMetadataMatchMethod::Regex(v) => HeaderMatchMethod::Regex(v.clone()),
                GrpcMetadataMatchMethod::Range(r) => HeaderMatchMethod::Range(r.clone()),
            });
            matching.headers.push(route::header(
                &metadata.name,
                method.as_ref().map(route::header_method),
                metadata.invert.unwrap_or(false),
            ));
        }
        let host = host_rewrite_of(
            grpc.action
                .rewrite
                .as_ref()
                .and_then(|r| r.hostname.as_ref()),
        );
        (matching, &grpc.action.target, host, None)
    } else {
        return None;
    };
    let service = &target.virtual_service.virtual_service_name;
    targets.push(service.clone());
    let mut action = RouteAction {
        cluster_specifier: Some(ClusterSpecifier::Cluster(internal.to_owned())),
        ..Default::default()
    };
    if host_rewrite {
        // The service's own routing is found by its name (and port, when the route names one).
        let host = match target.port {
            Some(port) => format!("{service}:{port}"),
            None => service.clone(),
        };
        action.host_rewrite_specifier = Some(HostRewriteSpecifier::HostRewriteLiteral(host));
    }
    if let Some(http) = path_rewrite {
        rewrite_path(http, http.action.rewrite.as_ref(), &mut action);
    }
    Some(Route {
        name: gateway_route.gateway_route_name.clone(),
        r#match: Some(matching),
        action: Some(Action::Route(action)),
        ..Default::default()
    })
}

fn http_match(http: &HttpGatewayRoute) -> RouteMatch {
    let m = &http.r#match;
    let path = match (&m.prefix, &m.path) {
        (Some(prefix), _) => PathSpecifier::Prefix(prefix.clone()),
        (None, Some(path)) => match (&path.exact, &path.regex) {
            (Some(exact), _) => PathSpecifier::Path(exact.clone()),
            (None, Some(regex)) => PathSpecifier::SafeRegex(route::regex_matcher(regex)),
            (None, None) => PathSpecifier::Prefix("/".into()),
        },
        (None, None) => PathSpecifier::Prefix("/".into()),
    };
    let mut headers: Vec<_> = m
        .headers
        .iter()
        .flatten()
        .map(|h| {
            route::header(
                &h.name,
                h.r#match.as_ref().map(route::header_method),
                h.invert.unwrap_or(false),
            )
        })
        .collect();
    headers.extend(hostname_header(m.hostname.as_ref()));
    if let Some(method) = m.method {
        headers.push(route::header(
            ":method",
            Some(route::exact(route::http_method(method))),
            false,
        ));
    }
    RouteMatch {
        path_specifier: Some(path),
        headers,
        query_parameters: route::query_parameters(m.query_parameters.as_deref()),
        ..Default::default()
    }
}

/// A hostname match on `:authority`, which may carry a port.
fn hostname_header(
    hostname: Option<&GatewayRouteHostnameMatch>,
) -> Option<envoy_types::pb::envoy::config::route::v3::HeaderMatcher> {
    let hostname = hostname?;
    let pattern = match (&hostname.exact, &hostname.suffix) {
        (Some(exact), _) => format!("^{}(:[0-9]+)?$", regex::escape(exact)),
        (None, Some(suffix)) => format!("^.*{}(:[0-9]+)?$", regex::escape(suffix)),
        (None, None) => return None,
    };
    Some(route::header(
        ":authority",
        Some(envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier::StringMatch(
            route::string_matcher(MatchPattern::SafeRegex(route::regex_matcher(&pattern))),
        )),
        false,
    ))
}

/// App Mesh rewrites the Host to the target service unless told not to.
fn host_rewrite_of(rewrite: Option<&mesh_model::types::GatewayRouteHostnameRewrite>) -> bool {
    rewrite.and_then(|r| r.default_target_hostname) != Some(DefaultGatewayRouteRewrite::Disabled)
}

/// Path rewrites: `path.exact` replaces the path; `prefix.value` replaces the matched prefix;
/// by default (prefix routes) the matched prefix becomes `/`, unless `defaultPrefix: DISABLED`.
/// The default leaves one `/` where the prefix was, as App Mesh documents it: with the match
/// `/red`, `/red/tell` goes on as `/tell` (not `//tell`), `/red1` as `/1`, `/red` as `/`.
fn rewrite_path(
    http: &HttpGatewayRoute,
    rewrite: Option<&HttpGatewayRouteRewrite>,
    action: &mut RouteAction,
) {
    if let Some(exact) = rewrite
        .and_then(|r| r.path.as_ref())
        .and_then(|p| p.exact.clone())
    {
        action.regex_rewrite = Some(RegexMatchAndSubstitute {
            pattern: Some(route::regex_matcher("^.*$")),
            substitution: exact,
        });
        return;
    }
    let Some(matched) = &http.r#match.prefix else {
        return;
    };
    let prefix = rewrite.and_then(|r| r.prefix.as_ref());
    match (
        prefix.and_then(|p| p.value.clone()),
        prefix.and_then(|p| p.default_prefix),
    ) {
        (Some(value), _) => action.prefix_rewrite = value,
        (None, Some(DefaultGatewayRouteRewrite::Disabled)) => {}
        (None, _) if matched.ends_with('/') => action.prefix_rewrite = "/".into(),
        // A prefix rewrite would keep the `/` that follows the prefix after the new `/`.
        (None, _) => {
            action.regex_rewrite = Some(RegexMatchAndSubstitute {
                pattern: Some(route::regex_matcher(&format!(
                    "^{}/?",
                    regex::escape(matched)
                ))),
                substitution: "/".into(),
            });
        }
    }
}

/// A virtual gateway's ingress tables and its internal table of target services.
pub(super) fn resources(
    index: &MeshIndex,
    virtual_gateway: &CreateVirtualGatewayInput,
    gateway_routes: Option<&[Arc<CreateGatewayRouteInput>]>,
    mtls: Option<&AutoMtls>,
    out: &mut Output,
) {
    let compiled = gateway(
        virtual_gateway,
        gateway_routes.unwrap_or_default(),
        &mut out.issues,
    );
    let what = format!("VirtualGateway {}", virtual_gateway.virtual_gateway_name);
    let targets = compiled.targets.iter().map(String::as_str);
    let mut hosts = hosts_of(
        index,
        &virtual_gateway.mesh_name,
        targets,
        &what,
        &mut out.issues,
    );
    let pool = gateway_variant(virtual_gateway, &mut out.issues);
    let tls = gateway_tls(virtual_gateway, &mut out.issues);
    let gateway_name = virtual_gateway.virtual_gateway_name.as_str();
    let mut variants = Vec::new();
    // TLS ports first (with the pool too), then the pool alone on the rest: a copy is not
    // copied again.
    let explicit_tls = virtual_gateway
        .spec
        .backend_defaults
        .as_ref()
        .and_then(|d| d.client_policy.as_ref())
        .is_some_and(|p| p.tls.is_some());
    if let Some((socket, ports)) = tls {
        let change = ClusterVariant {
            transport_socket: Some(socket),
            ..pool.clone().unwrap_or_default()
        };
        hosts.through_variants(
            |cluster| names::gateway_tls_copy(cluster, gateway_name),
            ports.as_deref(),
            &change,
            &mut variants,
        );
    } else if let (false, Some(mtls)) = (explicit_tls, mtls) {
        // Automatic mTLS: the gateway calls meshed services with its own identity.
        let id = names::gateway_spiffe_id(
            mtls.trust_domain(),
            &virtual_gateway.mesh_name,
            gateway_name,
        );
        let change = |cluster: &str| {
            Some(ClusterVariant {
                transport_socket: Some(tls::auto_variant(mtls, index, &id, cluster)?),
                ..pool.clone().unwrap_or_default()
            })
        };
        hosts.through_variants_by(
            |cluster| names::gateway_tls_copy(cluster, gateway_name),
            None,
            change,
            &mut variants,
        );
    }
    if let Some(change) = &pool {
        hosts.through_variants(
            |cluster| names::gateway_copy(cluster, gateway_name),
            None,
            change,
            &mut variants,
        );
    }
    out.add_variants(variants);
    out.reached.extend(hosts.clusters);
    if !hosts.tcp.is_empty() {
        out.issues.push(format!(
            "{what}: gateway routes cannot reach TCP services; those ports are left out"
        ));
    }
    out.routes(RouteConfiguration {
        name: names::gateway_internal(
            &virtual_gateway.mesh_name,
            &virtual_gateway.virtual_gateway_name,
        ),
        virtual_hosts: hosts.http.into_values().flatten().collect(),
        ..Default::default()
    });
    let logs: Vec<AccessLog> = match virtual_gateway
        .spec
        .logging
        .as_ref()
        .and_then(|l| l.access_log.as_ref())
    {
        Some(VirtualGatewayAccessLog::File(file)) => {
            vec![access_log::file(&file.path, file.format.as_ref())]
        }
        None => Vec::new(),
    };
    for mut listener in compiled.listeners {
        access_log::attach(&mut listener, &logs);
        out.listener(listener);
    }
    compiled.routes.into_iter().for_each(|r| out.routes(r));
    compiled.clusters.into_iter().for_each(|c| out.cluster(c));
}

/// What a gateway's listener connection pool and health check change in the clusters it
/// routes to (App Mesh applies them to the gateway's upstream connections). The gateway's
/// internal table is shared by its listeners, so listeners that disagree get neither, with
/// an issue.
fn gateway_variant(
    gateway: &CreateVirtualGatewayInput,
    issues: &mut Issues,
) -> Option<ClusterVariant> {
    let what = format!("VirtualGateway {}", gateway.virtual_gateway_name);
    let mut policies = gateway
        .spec
        .listeners
        .iter()
        .map(|l| (l.connection_pool.as_ref(), l.health_check.as_ref()))
        .filter(|policy| *policy != (None, None));
    let first = policies.next()?;
    if policies.any(|other| other != first) {
        issues.push(format!(
            "{what}: listeners with different connection pools or health checks share the gateway's routes; neither is applied"
        ));
        return None;
    }
    let (pool, health_check) = first;
    let converted = pool
        .map(as_node_pool)
        .transpose()
        .and_then(|pool| Ok((pool, health_check.map(as_node_health_check).transpose()?)));
    match converted {
        Ok((pool, health_check)) => Some(ClusterVariant {
            transport_socket: None,
            circuit_breakers: pool.as_ref().map(circuit_breakers),
            health_checks: health_check
                .iter()
                .map(super::cluster::health_check)
                .collect(),
        }),
        Err(error) => {
            issues.push(format!(
                "{what}: listener connection pool / health check: {error}"
            ));
            None
        }
    }
}

/// The TLS a gateway originates to its targets (`backendDefaults.clientPolicy.tls`, unless
/// `enforce: false`), and the ports it is limited to.
fn gateway_tls(
    gateway: &CreateVirtualGatewayInput,
    issues: &mut Issues,
) -> Option<(TransportSocket, Option<Vec<i32>>)> {
    let policy = gateway
        .spec
        .backend_defaults
        .as_ref()?
        .client_policy
        .as_ref()?
        .tls
        .as_ref()
        .filter(|tls| tls.enforce != Some(false))?;
    let what = format!(
        "VirtualGateway {} backend defaults",
        gateway.virtual_gateway_name
    );
    let policy = match as_client_tls(policy) {
        Ok(policy) => policy,
        Err(error) => {
            issues.push(format!("{what}: client policy TLS: {error}"));
            return None;
        }
    };
    let socket = tls::client(&policy, &what, issues)?;
    Some((socket, policy.ports))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn gateway_with_tls(tls: serde_json::Value) -> (Gateway, Issues) {
        let input: CreateVirtualGatewayInput = serde_json::from_value(json!({
            "meshName": "m",
            "virtualGatewayName": "ingress",
            "spec": {"listeners": [{"portMapping": {"port": 8443, "protocol": "http"}, "tls": tls}]}
        }))
        .unwrap();
        let mut issues = Issues::new();
        let compiled = gateway(&input, &[], &mut issues);
        (compiled, issues)
    }

    fn ingress(gateway: &Gateway) -> Option<&Listener> {
        gateway.listeners.iter().find(|l| l.name.ends_with("8443"))
    }

    const FILE_CERTIFICATE: &str =
        r#"{"file": {"certificateChain": "/certs/gw.pem", "privateKey": "/certs/gw.key"}}"#;

    #[test]
    fn strict_listener_tls_terminates_on_the_only_chain() {
        let certificate: serde_json::Value = serde_json::from_str(FILE_CERTIFICATE).unwrap();
        let (compiled, issues) =
            gateway_with_tls(json!({"mode": "STRICT", "certificate": certificate}));
        assert!(issues.is_empty(), "{issues:?}");
        let listener = ingress(&compiled).expect("served");
        assert_eq!(listener.filter_chains.len(), 1);
        assert!(listener.filter_chains[0].transport_socket.is_some());
        assert!(listener.listener_filters.is_empty());
    }

    #[test]
    fn permissive_listener_tls_also_takes_plain_text() {
        let certificate: serde_json::Value = serde_json::from_str(FILE_CERTIFICATE).unwrap();
        let (compiled, _) =
            gateway_with_tls(json!({"mode": "PERMISSIVE", "certificate": certificate,
            "validation": {"trust": {"file": {"certificateChain": "/certs/ca.pem"}}}}));
        let listener = ingress(&compiled).expect("served");
        let transports: Vec<&str> = listener
            .filter_chains
            .iter()
            .map(|c| {
                c.filter_chain_match
                    .as_ref()
                    .unwrap()
                    .transport_protocol
                    .as_str()
            })
            .collect();
        assert_eq!(transports, ["tls", "raw_buffer"]);
        assert_eq!(listener.listener_filters.len(), 1, "the TLS inspector");
    }

    /// The path rewrite of an httpRoute gateway route, as (prefix_rewrite, regex_rewrite).
    fn path_rewrite(route: serde_json::Value) -> (String, Option<(String, String)>) {
        let http: HttpGatewayRoute = serde_json::from_value(route).unwrap();
        let mut action = RouteAction::default();
        rewrite_path(&http, http.action.rewrite.as_ref(), &mut action);
        let regex = action.regex_rewrite.map(|r| {
            (
                r.pattern.map(|p| p.regex).unwrap_or_default(),
                r.substitution,
            )
        });
        (action.prefix_rewrite, regex)
    }

    fn to(matching: serde_json::Value, rewrite: serde_json::Value) -> serde_json::Value {
        json!({"match": matching, "action": {"rewrite": rewrite,
            "target": {"virtualService": {"virtualServiceName": "api.m.local"}}}})
    }

    #[test]
    fn the_default_prefix_rewrite_leaves_one_slash_where_the_prefix_was() {
        // `/api/` + `/api/items` → `/items`: a prefix rewrite does it.
        assert_eq!(
            path_rewrite(to(json!({"prefix": "/api/"}), json!(null))),
            ("/".into(), None)
        );
        // `/red` + `/red/tell` → `/tell`, `/red1` → `/1`, `/red` → `/` (App Mesh's user
        // guide); a prefix rewrite to `/` would send `//tell`.
        let (prefix, regex) = path_rewrite(to(json!({"prefix": "/red.v1"}), json!(null)));
        assert_eq!(prefix, "");
        let (pattern, substitution) = regex.unwrap();
        assert_eq!(
            (pattern.as_str(), substitution.as_str()),
            (r"^/red\.v1/?", "/")
        );
        let regex = regex::Regex::new(&pattern).unwrap();
        for (path, rewritten) in [
            ("/red.v1/tell", "/tell"),
            ("/red.v11", "/1"),
            ("/red.v1", "/"),
        ] {
            assert_eq!(regex.replace_all(path, substitution.as_str()), rewritten);
        }
        // DISABLED keeps the path; a value replaces the prefix as given.
        assert_eq!(
            path_rewrite(to(
                json!({"prefix": "/red"}),
                json!({"prefix": {"defaultPrefix": "DISABLED"}})
            )),
            (String::new(), None)
        );
        assert_eq!(
            path_rewrite(to(
                json!({"prefix": "/maroon/"}),
                json!({"prefix": {"value": "/red/"}})
            )),
            ("/red/".into(), None)
        );
    }

    #[test]
    fn acm_certificates_fail_closed_with_an_issue() {
        let (compiled, issues) = gateway_with_tls(json!({"mode": "STRICT",
            "certificate": {"acm": {"certificateArn": "arn:aws:acm:eu-west-1:1:certificate/x"}}}));
        // The port is served and refuses: its only chain is TLS with a certificate that
        // cannot be had, never plain text.
        let listener = ingress(&compiled).expect("the port is still served");
        let [chain] = listener.filter_chains.as_slice() else {
            panic!("one chain: {listener:?}")
        };
        let mut secrets = std::collections::BTreeSet::new();
        mesh_xds::sds::referenced_by(chain.transport_socket.as_ref().unwrap(), &mut secrets);
        assert!(
            secrets
                .iter()
                .all(|s| names::unavailable_secret_reason(s).is_some()),
            "{secrets:?}"
        );
        assert!(
            issues[0].contains("VirtualGateway ingress listener 8443")
                && issues[0].contains("refuses every connection"),
            "{issues:?}"
        );
    }
}
