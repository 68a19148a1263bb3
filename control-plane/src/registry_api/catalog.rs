//! Cloud Map's operations over the registry, as its JSON protocol names and shapes them:
//! namespaces and services with ids in Cloud Map's form (`ns-…`, `srv-…`, derived from
//! their names, so they survive restarts), instances, operations, health.
use std::collections::{BTreeMap, VecDeque};

use hyper::StatusCode;
use ring::digest;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::registry::{Attributes, HealthFilter, HealthStatus, Registry};

/// How many finished operations GetOperation remembers (each a few hundred bytes).
const MAX_OPERATIONS: usize = 1024;

/// A refused call: HTTP status, Cloud Map's error type, message.
pub(super) type Failure = (StatusCode, &'static str, String);

/// The region and account in the ARNs the API hands out.
const ARN_PREFIX: &str = "arn:aws:servicediscovery:us-east-1:123456789012";

/// A Cloud Map–style id: `prefix` and 16 lower-case base32 characters of `name`'s SHA-256.
fn id(prefix: &str, name: &str) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let hash = digest::digest(&digest::SHA256, name.as_bytes());
    let suffix: String = hash
        .as_ref()
        .iter()
        .take(16)
        .map(|b| ALPHABET[usize::from(b % 32)] as char)
        .collect();
    format!("{prefix}-{suffix}")
}

pub(super) fn namespace_id(namespace: &str) -> String {
    id("ns", namespace)
}

pub(super) fn service_id(namespace: &str, service: &str) -> String {
    id("srv", &format!("{namespace}/{service}"))
}

/// Operations the registry finished, newest last, at most [`MAX_OPERATIONS`].
#[derive(Default)]
pub(crate) struct Operations {
    recent: VecDeque<(String, Value)>,
    /// How many were ever recorded: each id is made from its number, so none repeats.
    issued: u64,
}

impl Operations {
    fn record(&mut self, kind: &str, service: &str, instance: &str) -> String {
        self.issued += 1;
        let id = id(
            "op",
            &format!("{kind}/{service}/{instance}/{}", self.issued),
        )
        .trim_start_matches("op-")
        .to_owned();
        if self.recent.len() == MAX_OPERATIONS {
            self.recent.pop_front();
        }
        self.recent.push_back((
            id.clone(),
            json!({"Id": id, "Type": kind, "Status": "SUCCESS",
                   "Targets": {"SERVICE": service, "INSTANCE": instance}}),
        ));
        id
    }

    fn get(&self, id: &str) -> Option<&Value> {
        self.recent
            .iter()
            .rev()
            .find(|(known, _)| known == id)
            .map(|(_, op)| op)
    }
}

fn invalid(message: String) -> Failure {
    (StatusCode::BAD_REQUEST, "InvalidInput", message)
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Failure> {
    serde_json::from_slice(body).map_err(|e| invalid(format!("request body: {e}")))
}

/// The (namespace, service) a ServiceId names: a `srv-…` id, or `namespace/service`.
fn service_of<'a>(registry: &'a Registry, service_id: &str) -> Result<(&'a str, &'a str), Failure> {
    if let Some((namespace, service)) = service_id.split_once('/')
        && let Some((namespace, services)) = registry.namespaces.get_key_value(namespace)
        && let Some((service, _)) = services.get_key_value(service)
    {
        return Ok((namespace, service));
    }
    registry
        .namespaces
        .iter()
        .flat_map(|(namespace, services)| services.keys().map(move |s| (namespace, s)))
        .find(|(namespace, service)| service_id == self::service_id(namespace, service))
        .map(|(namespace, service)| (namespace.as_str(), service.as_str()))
        .ok_or_else(|| {
            (
                StatusCode::BAD_REQUEST,
                "ServiceNotFound",
                format!("no service with id {service_id:?} (ListServices names them)"),
            )
        })
}

fn namespace_json(namespace: &str, services: usize) -> Value {
    let id = namespace_id(namespace);
    json!({"Id": id, "Arn": format!("{ARN_PREFIX}:namespace/{id}"), "Name": namespace,
           "Type": "HTTP", "ServiceCount": services,
           "Properties": {"HttpProperties": {"HttpName": namespace}}})
}

fn service_json(namespace: &str, service: &str, instances: usize) -> Value {
    let id = service_id(namespace, service);
    json!({"Id": id, "Arn": format!("{ARN_PREFIX}:service/{id}"), "Name": service,
           "NamespaceId": namespace_id(namespace), "Type": "HTTP", "InstanceCount": instances,
           "HealthCheckCustomConfig": {}})
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ById {
    id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ServiceFilter {
    name: String,
    values: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListServices {
    #[serde(default)]
    filters: Vec<ServiceFilter>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InstanceRef {
    service_id: String,
    instance_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RegisterInstance {
    service_id: String,
    instance_id: String,
    #[serde(default)]
    attributes: Attributes,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListInstances {
    service_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DiscoverInstances {
    namespace_name: String,
    service_name: String,
    #[serde(default)]
    query_parameters: BTreeMap<String, String>,
    #[serde(default)]
    health_status: HealthFilter,
    max_results: Option<usize>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UpdateHealth {
    service_id: String,
    instance_id: String,
    status: HealthStatus,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct OperationRef {
    operation_id: String,
}

/// What an operation answered, and whether it changed the registry.
pub(super) struct Answer {
    pub(super) body: Value,
    pub(super) changed: bool,
}

fn read(body: Value) -> Result<Answer, Failure> {
    Ok(Answer {
        body,
        changed: false,
    })
}

/// Runs `operation` with the JSON request `body`.
pub(super) fn call(
    operation: &str,
    body: &[u8],
    registry: &mut Registry,
    operations: &mut Operations,
) -> Result<Answer, Failure> {
    let instance_not_found = |e: crate::registry::RegistryError| {
        (StatusCode::BAD_REQUEST, "InstanceNotFound", e.to_string())
    };
    match operation {
        "ListNamespaces" => read(json!({"Namespaces": registry
            .namespaces
            .iter()
            .map(|(namespace, services)| namespace_json(namespace, services.len()))
            .collect::<Vec<_>>()})),
        "GetNamespace" => {
            let request: ById = parse(body)?;
            let (namespace, services) = registry
                .namespaces
                .iter()
                .find(|(namespace, _)| namespace_id(namespace) == request.id)
                .ok_or_else(|| {
                    (
                        StatusCode::BAD_REQUEST,
                        "NamespaceNotFound",
                        format!("no namespace with id {:?}", request.id),
                    )
                })?;
            read(json!({"Namespace": namespace_json(namespace, services.len())}))
        }
        "ListServices" => {
            let request: ListServices = parse(body)?;
            let mut namespace_ids = None;
            for filter in request.filters {
                if filter.name != "NAMESPACE_ID" {
                    return Err(invalid(format!(
                        "filter {:?} is not supported; NAMESPACE_ID is",
                        filter.name
                    )));
                }
                namespace_ids = Some(filter.values);
            }
            let services: Vec<Value> = registry
                .namespaces
                .iter()
                .filter(|(namespace, _)| {
                    namespace_ids
                        .as_ref()
                        .is_none_or(|ids| ids.contains(&namespace_id(namespace)))
                })
                .flat_map(|(namespace, services)| {
                    services.iter().map(|(service, instances)| {
                        service_json(namespace, service, instances.len())
                    })
                })
                .collect();
            read(json!({"Services": services}))
        }
        "GetService" => {
            let request: ById = parse(body)?;
            let (namespace, service) = service_of(registry, &request.id)?;
            let count = registry.namespaces[namespace][service].len();
            read(json!({"Service": service_json(namespace, service, count)}))
        }
        "ListInstances" => {
            let request: ListInstances = parse(body)?;
            let (namespace, service) = service_of(registry, &request.service_id)?;
            let instances: Vec<Value> = registry.namespaces[namespace][service]
                .iter()
                .map(|(id, attributes)| json!({"Id": id, "Attributes": attributes}))
                .collect();
            read(json!({"Instances": instances}))
        }
        "GetInstance" => {
            let request: InstanceRef = parse(body)?;
            let (namespace, service) = service_of(registry, &request.service_id)?;
            let attributes = registry.namespaces[namespace][service]
                .get(&request.instance_id)
                .ok_or_else(|| {
                    (
                        StatusCode::BAD_REQUEST,
                        "InstanceNotFound",
                        format!(
                            "no instance {} in service {service} of namespace {namespace}",
                            request.instance_id
                        ),
                    )
                })?;
            read(json!({"Instance": {"Id": request.instance_id, "Attributes": attributes}}))
        }
        "RegisterInstance" => {
            let request: RegisterInstance = parse(body)?;
            let (namespace, service) = service_of(registry, &request.service_id)
                .map(|(n, s)| (n.to_owned(), s.to_owned()))
                .or_else(|failure| {
                    // `namespace/service` may name a service the registry does not hold yet.
                    request
                        .service_id
                        .split_once('/')
                        .filter(|(n, s)| !n.is_empty() && !s.is_empty())
                        .map(|(n, s)| (n.to_owned(), s.to_owned()))
                        .ok_or(failure)
                })?;
            registry
                .register(
                    &namespace,
                    &service,
                    &request.instance_id,
                    request.attributes,
                )
                .map_err(|e| invalid(e.to_string()))?;
            tracing::info!(namespace, service, instance = %request.instance_id, "instance registered");
            let id = operations.record(
                "REGISTER_INSTANCE",
                &service_id(&namespace, &service),
                &request.instance_id,
            );
            Ok(Answer {
                body: json!({"OperationId": id}),
                changed: true,
            })
        }
        "DeregisterInstance" => {
            let request: InstanceRef = parse(body)?;
            let (namespace, service) = service_of(registry, &request.service_id)
                .map(|(n, s)| (n.to_owned(), s.to_owned()))?;
            registry
                .deregister(&namespace, &service, &request.instance_id)
                .map_err(instance_not_found)?;
            tracing::info!(namespace, service, instance = %request.instance_id, "instance deregistered");
            let id = operations.record(
                "DEREGISTER_INSTANCE",
                &service_id(&namespace, &service),
                &request.instance_id,
            );
            Ok(Answer {
                body: json!({"OperationId": id}),
                changed: true,
            })
        }
        "GetOperation" => {
            let request: OperationRef = parse(body)?;
            let operation = operations.get(&request.operation_id).ok_or_else(|| {
                (
                    StatusCode::BAD_REQUEST,
                    "OperationNotFound",
                    format!(
                        "no operation {:?} (only the last {MAX_OPERATIONS} are kept)",
                        request.operation_id
                    ),
                )
            })?;
            read(json!({"Operation": operation}))
        }
        "DiscoverInstances" => {
            let request: DiscoverInstances = parse(body)?;
            let mut instances = registry.discover_by_health(
                &request.namespace_name,
                &request.service_name,
                &request.query_parameters,
                request.health_status,
            );
            if let Some(max) = request.max_results {
                instances.truncate(max);
            }
            read(json!({"Instances": instances}))
        }
        "UpdateInstanceCustomHealthStatus" => {
            let request: UpdateHealth = parse(body)?;
            let (namespace, service) = service_of(registry, &request.service_id)
                .map(|(n, s)| (n.to_owned(), s.to_owned()))?;
            registry
                .set_health(&namespace, &service, &request.instance_id, request.status)
                .map_err(instance_not_found)?;
            tracing::info!(namespace, service, instance = %request.instance_id, status = ?request.status, "instance health set");
            Ok(Answer {
                body: json!({}),
                changed: true,
            })
        }
        other => Err(invalid(format!("unknown operation {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_look_like_cloud_maps_and_are_stable() {
        let id = service_id("shop.local", "db");
        assert!(id.starts_with("srv-") && id.len() == 20, "{id}");
        assert_eq!(id, service_id("shop.local", "db"));
        assert_ne!(id, service_id("shop.local", "dc"));
        assert!(namespace_id("shop.local").starts_with("ns-"));
    }
}
