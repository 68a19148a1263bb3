//! Incremental (delta) ADS: per type, the client subscribes to names (or `*`, or — for
//! Listeners and Clusters — nothing, meaning wildcard) and tells the versions it already has;
//! each response carries only resources that changed for it and the names that went away.
//! Versions are digests of the encoded resource, so unchanged resources are never resent,
//! across mesh versions and reconnects.
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, atomic::Ordering},
};

use envoy_types::pb::{
    envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource},
    google::protobuf::Any,
};
use tokio::sync::{mpsc, watch};
use tonic::{Status, Streaming};
use tracing::{debug, warn};

use crate::{
    resources::{CLUSTER, LISTENER},
    server::{NodeView, Published, Stats},
};

/// A resource's version: a digest of its type and bytes.
pub fn version_of(any: &Any) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    any.type_url.hash(&mut hasher);
    any.value.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

#[derive(Default)]
struct Subscription {
    wildcard: bool,
    names: BTreeSet<String>,
    /// What the client holds: name -> version.
    known: BTreeMap<String, String>,
}

pub struct DeltaSession {
    view: NodeView,
    stats: Arc<Stats>,
    sender: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    subscriptions: BTreeMap<String, Subscription>,
    nonce: u64,
}

impl DeltaSession {
    pub fn new(
        published: watch::Receiver<Arc<Published>>,
        stats: Arc<Stats>,
        sender: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    ) -> Self {
        Self {
            view: NodeView::new(published),
            stats,
            sender,
            subscriptions: BTreeMap::new(),
            nonce: 0,
        }
    }

    pub async fn run(
        mut self,
        mut requests: Streaming<DeltaDiscoveryRequest>,
    ) -> Result<(), Status> {
        loop {
            tokio::select! {
                request = requests.message() => match request? {
                    Some(request) => self.on_request(request).await?,
                    None => return Ok(()),
                },
                changed = self.view.changed() => {
                    if changed? {
                        let types: Vec<String> = self.subscriptions.keys().cloned().collect();
                        for type_url in types {
                            self.send_changes(&type_url, false).await?;
                        }
                    }
                }
            }
        }
    }

    async fn on_request(&mut self, request: DeltaDiscoveryRequest) -> Result<(), Status> {
        self.view
            .identify(request.node.as_ref(), "DeltaDiscoveryRequest")?;
        let type_url = request.type_url.clone();
        if !request.response_nonce.is_empty() {
            if let Some(error) = &request.error_detail {
                self.stats.nacks.fetch_add(1, Ordering::Relaxed);
                warn!(%type_url, error = %error.message, "delta NACK");
            } else {
                self.stats.acks.fetch_add(1, Ordering::Relaxed);
                debug!(%type_url, nonce = %request.response_nonce, "delta ACK");
            }
        }
        let first = !self.subscriptions.contains_key(&type_url);
        let subscription = self.subscriptions.entry(type_url.clone()).or_default();
        if first {
            // Legacy wildcard: the first request for Listeners or Clusters naming nothing.
            subscription.wildcard = request.resource_names_subscribe.is_empty()
                && (type_url == LISTENER || type_url == CLUSTER);
            subscription.known = request
                .initial_resource_versions
                .clone()
                .into_iter()
                .collect();
        }
        let changed_subscription = !request.resource_names_subscribe.is_empty()
            || !request.resource_names_unsubscribe.is_empty();
        for name in &request.resource_names_subscribe {
            if name == "*" {
                subscription.wildcard = true;
            } else {
                subscription.names.insert(name.clone());
            }
        }
        for name in &request.resource_names_unsubscribe {
            if name == "*" {
                subscription.wildcard = false;
            } else {
                subscription.names.remove(name);
            }
            // The client drops what it unsubscribed from; it must not count as known.
            subscription.known.remove(name);
        }
        if first || changed_subscription {
            self.send_changes(&type_url, first).await?;
        }
        Ok(())
    }

    /// Sends what changed for `type_url` since the client's known versions; `always` sends a
    /// response even when nothing did (the answer to a first subscription).
    async fn send_changes(&mut self, type_url: &str, always: bool) -> Result<(), Status> {
        let Some(subscription) = self.subscriptions.get(type_url) else {
            return Ok(());
        };
        let selected: BTreeMap<&String, &Any> = self
            .view
            .current
            .1
            .of_type(type_url)
            .into_iter()
            .flatten()
            .filter(|(name, _)| subscription.wildcard || subscription.names.contains(*name))
            .collect();
        let resources: Vec<Resource> = selected
            .iter()
            .filter_map(|(name, any)| {
                let version = version_of(any);
                (subscription.known.get(*name) != Some(&version)).then(|| Resource {
                    name: (*name).clone(),
                    version,
                    resource: Some((*any).clone()),
                    ..Default::default()
                })
            })
            .collect();
        let removed: Vec<String> = subscription
            .known
            .keys()
            .filter(|name| !selected.contains_key(name))
            .cloned()
            .collect();
        if resources.is_empty() && removed.is_empty() && !always {
            return Ok(());
        }
        self.nonce += 1;
        let subscription = self.subscriptions.entry(type_url.to_owned()).or_default();
        for resource in &resources {
            subscription
                .known
                .insert(resource.name.clone(), resource.version.clone());
        }
        for name in &removed {
            subscription.known.remove(name);
        }
        let response = DeltaDiscoveryResponse {
            system_version_info: format!("v{}", self.view.current.0),
            resources,
            type_url: type_url.to_owned(),
            removed_resources: removed,
            nonce: self.nonce.to_string(),
            ..Default::default()
        };
        self.stats.responses.fetch_add(1, Ordering::Relaxed);
        self.sender
            .send(Ok(response))
            .await
            .map_err(|_| Status::cancelled("client went away"))
    }
}
