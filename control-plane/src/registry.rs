//! A stand-in for AWS Cloud Map: service instances by namespace and service, each with
//! attributes (`AWS_INSTANCE_IPV4`, `AWS_INSTANCE_IPV6`, `AWS_INSTANCE_PORT` and any others).
//! Virtual nodes discovered through `awsCloudMap` get the instances of their service whose
//! attributes match the node's `attributes` filter, as EDS endpoints.
//!
//! The registry is read from a file and changed through a Cloud Map–style API
//! ([`crate::registry_api`]), served by the control plane. Instances have a custom health
//! status (UpdateInstanceCustomHealthStatus); endpoints are the healthy instances, or all of
//! them when none is healthy (Cloud Map's HEALTHY_OR_ELSE_ALL: failing open).
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

pub const IPV4: &str = "AWS_INSTANCE_IPV4";
pub const IPV6: &str = "AWS_INSTANCE_IPV6";
pub const PORT: &str = "AWS_INSTANCE_PORT";

/// Attributes of one instance.
pub type Attributes = BTreeMap<String, String>;

/// namespace -> service -> instance id -> attributes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    #[serde(default)]
    pub namespaces: BTreeMap<String, BTreeMap<String, BTreeMap<String, Attributes>>>,
    /// (namespace, service, instance) reported unhealthy; every other instance is healthy.
    /// Kept in the file with the instances, so a restart keeps what the API was told.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    unhealthy: BTreeSet<(String, String, String)>,
}

/// An instance's custom health status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HealthStatus {
    Healthy,
    Unhealthy,
}

/// Which instances DiscoverInstances returns by health (Cloud Map's `HealthStatus`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HealthFilter {
    Healthy,
    Unhealthy,
    All,
    /// Healthy ones, or all when none is healthy.
    #[default]
    HealthyOrElseAll,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistryError {
    #[error("instance {id} has no {IPV4} or {IPV6} attribute")]
    NoAddress { id: String },
    #[error("instance {id}: {attribute} {value:?} is not {expected}")]
    BadAttribute {
        id: String,
        attribute: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("no instance {id} in service {service} of namespace {namespace}")]
    NotFound {
        namespace: String,
        service: String,
        id: String,
    },
}

/// A registry file that cannot be served; the message names the file, the source says why.
#[derive(Debug, thiserror::Error)]
pub enum RegistryFileError {
    #[error("cannot read registry {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("registry {}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot write registry {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("registry {}", path.display())]
    Invalid {
        path: PathBuf,
        #[source]
        source: RegistryError,
    },
}

/// One instance as DiscoverInstances returns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Instance {
    pub instance_id: String,
    pub namespace_name: String,
    pub service_name: String,
    pub health_status: HealthStatus,
    pub attributes: Attributes,
}

impl Registry {
    /// Reads a registry file (JSON) and checks every instance in it.
    pub fn load(path: &Path) -> Result<Self, RegistryFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| RegistryFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        let registry: Self =
            serde_json::from_str(&text).map_err(|source| RegistryFileError::Parse {
                path: path.to_owned(),
                source,
            })?;
        registry
            .check()
            .map_err(|source| RegistryFileError::Invalid {
                path: path.to_owned(),
                source,
            })?;
        Ok(registry)
    }

    /// Writes the registry to `path` whole or not at all (a temporary file beside it, renamed
    /// over it): a crash mid-write leaves the previous registry, never half of one.
    pub fn save(&self, path: &Path) -> Result<(), RegistryFileError> {
        let write_error = |source| RegistryFileError::Write {
            path: path.to_owned(),
            source,
        };
        let text =
            serde_json::to_string_pretty(self).map_err(|source| RegistryFileError::Parse {
                path: path.to_owned(),
                source,
            })?;
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(".tmp");
        let temporary = PathBuf::from(temporary);
        std::fs::write(&temporary, text + "\n").map_err(write_error)?;
        std::fs::rename(&temporary, path).map_err(write_error)
    }

    /// Checks every instance (an address, a numeric port), naming the first bad one.
    pub fn check(&self) -> Result<(), RegistryError> {
        for services in self.namespaces.values() {
            for instances in services.values() {
                for (id, attributes) in instances {
                    check_instance(id, attributes)?;
                }
            }
        }
        Ok(())
    }

    pub fn register(
        &mut self,
        namespace: &str,
        service: &str,
        id: &str,
        attributes: Attributes,
    ) -> Result<(), RegistryError> {
        check_instance(id, &attributes)?;
        // A (re-)registered instance starts healthy, as in Cloud Map.
        self.unhealthy
            .remove(&(namespace.to_owned(), service.to_owned(), id.to_owned()));
        self.namespaces
            .entry(namespace.to_owned())
            .or_default()
            .entry(service.to_owned())
            .or_default()
            .insert(id.to_owned(), attributes);
        Ok(())
    }

    pub fn deregister(
        &mut self,
        namespace: &str,
        service: &str,
        id: &str,
    ) -> Result<(), RegistryError> {
        let not_found = || RegistryError::NotFound {
            namespace: namespace.to_owned(),
            service: service.to_owned(),
            id: id.to_owned(),
        };
        let instances = self
            .namespaces
            .get_mut(namespace)
            .and_then(|s| s.get_mut(service))
            .ok_or_else(not_found)?;
        instances.remove(id).ok_or_else(not_found)?;
        self.unhealthy
            .remove(&(namespace.to_owned(), service.to_owned(), id.to_owned()));
        Ok(())
    }

    /// Sets an instance's custom health status.
    pub fn set_health(
        &mut self,
        namespace: &str,
        service: &str,
        id: &str,
        status: HealthStatus,
    ) -> Result<(), RegistryError> {
        let exists = self
            .namespaces
            .get(namespace)
            .and_then(|s| s.get(service))
            .is_some_and(|instances| instances.contains_key(id));
        if !exists {
            return Err(RegistryError::NotFound {
                namespace: namespace.to_owned(),
                service: service.to_owned(),
                id: id.to_owned(),
            });
        }
        let key = (namespace.to_owned(), service.to_owned(), id.to_owned());
        match status {
            HealthStatus::Healthy => self.unhealthy.remove(&key),
            HealthStatus::Unhealthy => self.unhealthy.insert(key),
        };
        Ok(())
    }

    /// The endpoints of a service: its instances whose attributes include every `filter`
    /// pair, healthy ones (or all when none is).
    pub fn discover(&self, namespace: &str, service: &str, filter: &Attributes) -> Vec<Instance> {
        self.discover_by_health(namespace, service, filter, HealthFilter::HealthyOrElseAll)
    }

    /// The instances of a service whose attributes include every `filter` pair and whose
    /// health passes `health`.
    pub fn discover_by_health(
        &self,
        namespace: &str,
        service: &str,
        filter: &Attributes,
        health: HealthFilter,
    ) -> Vec<Instance> {
        let matching: Vec<Instance> = self
            .namespaces
            .get(namespace)
            .and_then(|s| s.get(service))
            .into_iter()
            .flatten()
            .filter(|(_, attributes)| filter.iter().all(|(k, v)| attributes.get(k) == Some(v)))
            .map(|(id, attributes)| Instance {
                instance_id: id.clone(),
                namespace_name: namespace.to_owned(),
                service_name: service.to_owned(),
                health_status: self.health(namespace, service, id),
                attributes: attributes.clone(),
            })
            .collect();
        let healthy = |i: &Instance| i.health_status == HealthStatus::Healthy;
        match health {
            HealthFilter::All => matching,
            HealthFilter::Healthy => matching.into_iter().filter(healthy).collect(),
            HealthFilter::Unhealthy => matching.into_iter().filter(|i| !healthy(i)).collect(),
            HealthFilter::HealthyOrElseAll if matching.iter().any(healthy) => {
                matching.into_iter().filter(healthy).collect()
            }
            HealthFilter::HealthyOrElseAll => matching,
        }
    }

    pub fn health(&self, namespace: &str, service: &str, id: &str) -> HealthStatus {
        let key = (namespace.to_owned(), service.to_owned(), id.to_owned());
        if self.unhealthy.contains(&key) {
            HealthStatus::Unhealthy
        } else {
            HealthStatus::Healthy
        }
    }
}

fn check_instance(id: &str, attributes: &Attributes) -> Result<(), RegistryError> {
    let bad = |attribute, value: &String, expected| RegistryError::BadAttribute {
        id: id.to_owned(),
        attribute,
        value: value.clone(),
        expected,
    };
    match (attributes.get(IPV4), attributes.get(IPV6)) {
        (None, None) => return Err(RegistryError::NoAddress { id: id.to_owned() }),
        (Some(v4), _) if v4.parse::<std::net::Ipv4Addr>().is_err() => {
            return Err(bad(IPV4, v4, "an IPv4 address"));
        }
        (_, Some(v6)) if v6.parse::<std::net::Ipv6Addr>().is_err() => {
            return Err(bad(IPV6, v6, "an IPv6 address"));
        }
        _ => {}
    }
    if let Some(port) = attributes.get(PORT)
        && port.parse::<u16>().map_or(true, |p| p == 0)
    {
        return Err(bad(PORT, port, "a port number"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(&str, &str)]) -> Attributes {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn register_discover_deregister() {
        let mut registry = Registry::default();
        registry
            .register(
                "shop.local",
                "db",
                "db-1",
                attrs(&[(IPV4, "10.0.0.5"), ("color", "blue")]),
            )
            .unwrap();
        registry
            .register(
                "shop.local",
                "db",
                "db-2",
                attrs(&[(IPV4, "10.0.0.6"), ("color", "green")]),
            )
            .unwrap();
        let blue = registry.discover("shop.local", "db", &attrs(&[("color", "blue")]));
        assert_eq!(
            blue.iter()
                .map(|i| i.instance_id.as_str())
                .collect::<Vec<_>>(),
            ["db-1"]
        );
        assert_eq!(
            registry
                .discover("shop.local", "db", &Attributes::new())
                .len(),
            2
        );
        registry.deregister("shop.local", "db", "db-1").unwrap();
        assert_eq!(
            registry
                .discover("shop.local", "db", &Attributes::new())
                .len(),
            1
        );
        assert!(matches!(
            registry.deregister("shop.local", "db", "db-1"),
            Err(RegistryError::NotFound { .. })
        ));
    }

    #[test]
    fn endpoints_are_the_healthy_instances_or_else_all() {
        let mut registry = Registry::default();
        for (id, ip) in [("a", "10.0.0.1"), ("b", "10.0.0.2")] {
            registry
                .register("n", "s", id, attrs(&[(IPV4, ip)]))
                .unwrap();
        }
        let ids = |instances: Vec<Instance>| -> Vec<String> {
            instances.into_iter().map(|i| i.instance_id).collect()
        };
        let none = Attributes::new();
        registry
            .set_health("n", "s", "a", HealthStatus::Unhealthy)
            .unwrap();
        assert_eq!(ids(registry.discover("n", "s", &none)), ["b"]);
        assert_eq!(
            ids(registry.discover_by_health("n", "s", &none, HealthFilter::Unhealthy)),
            ["a"]
        );
        assert_eq!(
            ids(registry.discover_by_health("n", "s", &none, HealthFilter::All)),
            ["a", "b"]
        );
        registry
            .set_health("n", "s", "b", HealthStatus::Unhealthy)
            .unwrap();
        assert_eq!(
            ids(registry.discover("n", "s", &none)),
            ["a", "b"],
            "fails open"
        );
        assert!(
            registry
                .discover_by_health("n", "s", &none, HealthFilter::Healthy)
                .is_empty()
        );
        assert!(matches!(
            registry.set_health("n", "s", "c", HealthStatus::Healthy),
            Err(RegistryError::NotFound { .. })
        ));
        // Registering again starts healthy.
        registry
            .register("n", "s", "a", attrs(&[(IPV4, "10.0.0.1")]))
            .unwrap();
        assert_eq!(registry.health("n", "s", "a"), HealthStatus::Healthy);
    }

    #[test]
    fn a_saved_registry_loads_back_with_its_health() {
        let mut registry = Registry::default();
        let attributes = attrs(&[(IPV4, "10.0.0.1"), (PORT, "80")]);
        registry.register("ns", "svc", "a", attributes).unwrap();
        registry
            .set_health("ns", "svc", "a", HealthStatus::Unhealthy)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.json");
        registry.save(&path).unwrap();
        assert_eq!(Registry::load(&path).unwrap(), registry);
        assert!(!dir.path().join("registry.json.tmp").exists());
        let unwritable = dir.path().join("missing").join("registry.json");
        let error = registry.save(&unwritable).unwrap_err().to_string();
        assert!(error.contains("cannot write registry"), "{error}");
    }

    #[test]
    fn bad_instances_are_named() {
        let mut registry = Registry::default();
        let err = registry
            .register("n", "s", "i-1", attrs(&[("color", "x")]))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "instance i-1 has no AWS_INSTANCE_IPV4 or AWS_INSTANCE_IPV6 attribute"
        );
        let err = registry
            .register("n", "s", "i-2", attrs(&[(IPV4, "10.0.0.300")]))
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("AWS_INSTANCE_IPV4 \"10.0.0.300\" is not an IPv4 address")
        );
        let err = registry
            .register("n", "s", "i-3", attrs(&[(IPV4, "10.0.0.1"), (PORT, "0")]))
            .unwrap_err();
        assert!(err.to_string().contains("AWS_INSTANCE_PORT"));
    }
}
