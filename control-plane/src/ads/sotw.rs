//! State-of-the-world ADS over a [`Session`]: each response carries every subscribed resource
//! of its type, with a version and a nonce. A request echoing the latest nonce with that
//! version is an ACK, one with `error_detail` is a NACK (logged, counted, nothing resent until
//! the mesh changes); a request with an older nonce is stale and ignored. Empty resource names
//! subscribe to all Listeners / Clusters (wildcard). After a mesh change only the types whose
//! resources changed are sent again.
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, atomic::Ordering},
};

use envoy_types::pb::{
    envoy::{
        config::core::v3::Node,
        service::discovery::v3::{DiscoveryRequest, DiscoveryResponse},
    },
    google::protobuf::Any,
};
use tonic::Status;
use tracing::{debug, warn};

use super::session::{Protocol, Session, wildcard_by_default};

pub(super) struct StateOfTheWorld;

/// What one type's subscription has seen.
#[derive(Default)]
pub(super) struct Subscription {
    /// None: wildcard.
    names: Option<BTreeSet<String>>,
    /// The last response: its nonce, version, and the node's resources of the type it was
    /// selected from (shared with the compiled mesh, not copied: with thousands of resources
    /// per node, copies per stream add up).
    nonce: String,
    version: String,
    sent: Option<Arc<BTreeMap<String, Any>>>,
}

impl Protocol for StateOfTheWorld {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;
    type Subscription = Subscription;
    const NAME: &'static str = "state of the world";
    const REQUEST: &'static str = "DiscoveryRequest";

    fn node(request: &DiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    async fn on_request(
        session: &mut Session<Self>,
        request: DiscoveryRequest,
    ) -> Result<(), Status> {
        let node = session.node_id().to_owned();
        let type_url = request.type_url.clone();
        let subscription = session.subscriptions.entry(type_url.clone()).or_default();
        if !request.response_nonce.is_empty() && request.response_nonce != subscription.nonce {
            debug!(%node, %type_url, nonce = %request.response_nonce, "stale request ignored");
            return Ok(());
        }
        if let Some(error) = &request.error_detail {
            warn!(%node, %type_url, rejected = %subscription.version, kept = %request.version_info, error = %error.message, "NACK");
            session.stats().nacks.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let wildcard = request.resource_names.is_empty() && wildcard_by_default(&type_url);
        let names = (!wildcard).then(|| {
            request
                .resource_names
                .iter()
                .cloned()
                .collect::<BTreeSet<_>>()
        });
        let resubscribed = subscription.names != names || subscription.sent.is_none();
        subscription.names = names;
        let acked =
            !request.response_nonce.is_empty() && request.version_info == subscription.version;
        if acked {
            session.stats().acks.fetch_add(1, Ordering::Relaxed);
            debug!(%node, %type_url, version = %request.version_info, "ACK");
        }
        if resubscribed {
            send(session, &type_url).await?;
        }
        Ok(())
    }

    /// Every subscribed type whose resources differ from what was sent is sent again.
    async fn on_change(session: &mut Session<Self>) -> Result<(), Status> {
        let types: Vec<String> = session.subscriptions.keys().cloned().collect();
        for type_url in types {
            if !same_as_sent(session, &type_url) {
                send(session, &type_url).await?;
            }
        }
        Ok(())
    }
}

/// The node's resources of `type_url` that its subscription names, by name (borrowed: only
/// what is sent is copied).
fn selected<'a>(
    session: &'a Session<StateOfTheWorld>,
    type_url: &str,
) -> impl Iterator<Item = (&'a String, &'a Any)> {
    subscribed(session, type_url, session.resources(type_url))
}

/// Of `resources`, those the subscription to `type_url` names.
fn subscribed<'a>(
    session: &'a Session<StateOfTheWorld>,
    type_url: &str,
    resources: impl Iterator<Item = (&'a String, &'a Any)>,
) -> impl Iterator<Item = (&'a String, &'a Any)> {
    let names = session
        .subscriptions
        .get(type_url)
        .and_then(|s| s.names.as_ref());
    resources.filter(move |(name, _)| names.is_none_or(|n| n.contains(*name)))
}

/// Whether the subscribed resources of `type_url` are what was last sent: the same compiled
/// map (nothing to compare), or equal ones.
fn same_as_sent(session: &Session<StateOfTheWorld>, type_url: &str) -> bool {
    let Some(sent) = session
        .subscriptions
        .get(type_url)
        .and_then(|s| s.sent.as_ref())
    else {
        return false;
    };
    let now = session.resources_shared(type_url);
    Arc::ptr_eq(sent, &now)
        || subscribed(session, type_url, sent.iter()).eq(selected(session, type_url))
}

async fn send(session: &mut Session<StateOfTheWorld>, type_url: &str) -> Result<(), Status> {
    let sent = session.resources_shared(type_url);
    let resources: Vec<Any> = selected(session, type_url)
        .map(|(_, any)| any.clone())
        .collect();
    let nonce = session.next_nonce();
    let version = session.version();
    let response = DiscoveryResponse {
        version_info: version.clone(),
        resources,
        type_url: type_url.to_owned(),
        nonce: nonce.clone(),
        ..Default::default()
    };
    let subscription = session
        .subscriptions
        .entry(type_url.to_owned())
        .or_default();
    subscription.nonce = nonce;
    subscription.version = version;
    subscription.sent = Some(sent);
    session.respond(response).await
}
