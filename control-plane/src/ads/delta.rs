//! Incremental (delta) ADS over a [`Session`]: per type, the client subscribes to names (or
//! `*`, or — for Listeners and Clusters — nothing, meaning wildcard) and tells the versions it
//! already has; each response carries only resources that changed for it and the names that
//! went away. Versions are digests of the encoded resource, so unchanged resources are never
//! resent, across mesh versions and reconnects.
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::atomic::Ordering,
};

use envoy_types::pb::{
    envoy::{
        config::core::v3::Node,
        service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource},
    },
    google::protobuf::Any,
};
use tonic::Status;
use tracing::{debug, warn};

use super::session::{Protocol, Session, wildcard_by_default};

pub(super) struct Delta;

/// A resource's version: a digest of its type and bytes.
fn version_of(any: &Any) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    any.type_url.hash(&mut hasher);
    any.value.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

#[derive(Default)]
pub(super) struct Subscription {
    wildcard: bool,
    names: BTreeSet<String>,
    /// What the client holds: name -> version.
    known: BTreeMap<String, String>,
}

impl Protocol for Delta {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;
    type Subscription = Subscription;
    const NAME: &'static str = "delta";
    const REQUEST: &'static str = "DeltaDiscoveryRequest";

    fn node(request: &DeltaDiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    async fn on_request(
        session: &mut Session<Self>,
        request: DeltaDiscoveryRequest,
    ) -> Result<(), Status> {
        let type_url = request.type_url.clone();
        if !request.response_nonce.is_empty() {
            if let Some(error) = &request.error_detail {
                session.stats().nacks.fetch_add(1, Ordering::Relaxed);
                warn!(%type_url, error = %error.message, "delta NACK");
            } else {
                session.stats().acks.fetch_add(1, Ordering::Relaxed);
                debug!(%type_url, nonce = %request.response_nonce, "delta ACK");
            }
        }
        let first = !session.subscriptions.contains_key(&type_url);
        let subscription = session.subscriptions.entry(type_url.clone()).or_default();
        if first {
            // Legacy wildcard: the first request for Listeners or Clusters naming nothing.
            subscription.wildcard =
                request.resource_names_subscribe.is_empty() && wildcard_by_default(&type_url);
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
            send_changes(session, &type_url, first).await?;
        }
        Ok(())
    }

    async fn on_change(session: &mut Session<Self>) -> Result<(), Status> {
        let types: Vec<String> = session.subscriptions.keys().cloned().collect();
        for type_url in types {
            send_changes(session, &type_url, false).await?;
        }
        Ok(())
    }
}

/// Sends what changed for `type_url` since the client's known versions; `always` sends a
/// response even when nothing did (the answer to a first subscription).
async fn send_changes(
    session: &mut Session<Delta>,
    type_url: &str,
    always: bool,
) -> Result<(), Status> {
    let Some(subscription) = session.subscriptions.get(type_url) else {
        return Ok(());
    };
    let selected: BTreeMap<&String, &Any> = session
        .resources(type_url)
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
    let nonce = session.next_nonce();
    let subscription = session
        .subscriptions
        .entry(type_url.to_owned())
        .or_default();
    for resource in &resources {
        subscription
            .known
            .insert(resource.name.clone(), resource.version.clone());
    }
    for name in &removed {
        subscription.known.remove(name);
    }
    let response = DeltaDiscoveryResponse {
        system_version_info: session.version(),
        resources,
        type_url: type_url.to_owned(),
        removed_resources: removed,
        nonce,
        ..Default::default()
    };
    session.respond(response).await
}
