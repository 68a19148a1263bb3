//! What a listener or cluster names of the other resource types: the route configurations a
//! listener loads by RDS, the EDS assignment a cluster needs, and the SDS secrets their TLS
//! contexts ask for. The node's client subscribes to those names; it works them out once per
//! resource it accepts, so a response of another type, or a readiness check, decodes
//! nothing again.
use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::{
    envoy::{
        config::{
            cluster::v3::{Cluster, cluster::ClusterDiscoveryType, cluster::DiscoveryType},
            listener::v3::{Listener, filter::ConfigType},
        },
        extensions::filters::network::http_connection_manager::v3::{
            HttpConnectionManager, http_connection_manager::RouteSpecifier,
        },
    },
    google::protobuf::Any,
};
use prost::Message;

use crate::{
    resources::{CLUSTER, LISTENER},
    sds,
};

/// The names one listener or cluster depends on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct References {
    /// Route configurations (a listener's, by RDS).
    pub routes: BTreeSet<String>,
    /// The EDS assignment (a cluster's).
    pub endpoints: Option<String>,
    /// SDS secrets its TLS contexts name.
    pub secrets: BTreeSet<String>,
}

impl References {
    /// What `any` names; nothing for other types, or what does not decode (the check says
    /// why).
    pub fn of(any: &Any) -> Self {
        match any.type_url.as_str() {
            LISTENER => Listener::decode(any.value.as_slice())
                .map(|listener| Self::of_listener(&listener))
                .unwrap_or_default(),
            CLUSTER => Cluster::decode(any.value.as_slice())
                .map(Self::of_cluster)
                .unwrap_or_default(),
            _ => Self::default(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty() && self.endpoints.is_none() && self.secrets.is_empty()
    }

    fn of_listener(listener: &Listener) -> Self {
        let mut references = Self::default();
        for chain in listener
            .filter_chains
            .iter()
            .chain(listener.default_filter_chain.iter())
        {
            if let Some(socket) = &chain.transport_socket {
                sds::referenced_by(socket, &mut references.secrets);
            }
            for filter in &chain.filters {
                if let Some(ConfigType::TypedConfig(config)) = &filter.config_type
                    && let Ok(manager) = HttpConnectionManager::decode(config.value.as_slice())
                    && let Some(RouteSpecifier::Rds(rds)) = manager.route_specifier
                {
                    references.routes.insert(rds.route_config_name);
                }
            }
        }
        references
    }

    fn of_cluster(cluster: Cluster) -> Self {
        let mut references = Self::default();
        if let Some(socket) = &cluster.transport_socket {
            sds::referenced_by(socket, &mut references.secrets);
        }
        if cluster.cluster_discovery_type
            == Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32))
        {
            let service = cluster
                .eds_cluster_config
                .map(|c| c.service_name)
                .unwrap_or_default();
            references.endpoints = Some(if service.is_empty() {
                cluster.name
            } else {
                service
            });
        }
        references
    }
}

/// The references of accepted resources, by type URL and name; resources that name nothing
/// are left out.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReferenceSet {
    pub by_type: BTreeMap<String, BTreeMap<String, References>>,
}

impl ReferenceSet {
    /// Route configurations the listeners load by RDS.
    pub fn routes(&self) -> Vec<String> {
        self.collect(LISTENER, |r| r.routes.iter().cloned().collect())
    }

    /// EDS assignments the clusters need.
    pub fn endpoints(&self) -> Vec<String> {
        self.collect(CLUSTER, |r| r.endpoints.iter().cloned().collect())
    }

    /// SDS secrets the listeners' and clusters' TLS contexts name.
    pub fn secrets(&self) -> Vec<String> {
        let mut names: BTreeSet<String> = BTreeSet::new();
        for type_url in [LISTENER, CLUSTER] {
            names.extend(self.collect(type_url, |r| r.secrets.iter().cloned().collect()));
        }
        names.into_iter().collect()
    }

    fn collect(&self, type_url: &str, names: impl Fn(&References) -> Vec<String>) -> Vec<String> {
        let set: BTreeSet<String> = self
            .by_type
            .get(type_url)
            .into_iter()
            .flat_map(BTreeMap::values)
            .flat_map(names)
            .collect();
        set.into_iter().collect()
    }
}
