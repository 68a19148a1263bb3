//! One watch per kind the source reads, each feeding a reflector store: the watcher lists
//! (paged), then watches from the list's resourceVersion, relists when the server says the
//! version is gone (410), and retries with backoff when the server cannot be reached. The
//! watches' events are merged into one stream of changes.
use std::fmt::Debug;

use futures::{FutureExt as _, Stream, StreamExt as _, future::join_all, stream::BoxStream};
use k8s_openapi::api::{
    core::v1::{Namespace, Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client, Resource,
    api::DynamicObject,
    runtime::{
        WatchStreamExt as _,
        reflector::{self, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tracing::warn;

use super::{
    kinds::{AppMeshKind, KINDS},
    pods,
    snapshot::Snapshot,
};

/// Every watch's events, merged: an item is "something may have changed".
pub(super) type Changes = futures::stream::SelectAll<BoxStream<'static, ()>>;

/// The stores the watches fill.
pub(super) struct Stores {
    app_mesh: Vec<(AppMeshKind, Store<DynamicObject>)>,
    namespaces: Store<Namespace>,
    pods: Store<Pod>,
    services: Store<Service>,
    endpoint_slices: Store<EndpointSlice>,
}

/// Starts nothing by itself: the watches run as `Changes` is polled.
pub(super) fn watch(client: Client) -> (Stores, Changes) {
    let mut changes = Changes::new();
    let app_mesh = KINDS
        .iter()
        .map(|kind| {
            let resource = kind.api_resource();
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
            let writer = reflector::store::Writer::new(resource);
            let store = writer.as_reader();
            let stream = watcher(api, watcher::Config::default())
                .default_backoff()
                .reflect(writer);
            changes.push(changed(stream, kind.kind));
            (*kind, store)
        })
        .collect();
    let stores = Stores {
        app_mesh,
        namespaces: typed(&client, &mut changes, "Namespace", |ns: &mut Namespace| {
            ns.spec = None;
            ns.status = None;
        }),
        pods: typed(&client, &mut changes, "Pod", pods::trim),
        services: typed(&client, &mut changes, "Service", |_: &mut Service| {}),
        endpoint_slices: typed(
            &client,
            &mut changes,
            "EndpointSlice",
            |_: &mut EndpointSlice| {},
        ),
    };
    (stores, changes)
}

/// A store of `K` in every namespace, filled by a watch added to `changes`; `trim` drops
/// what is never read before the object is kept.
fn typed<K>(
    client: &Client,
    changes: &mut Changes,
    kind: &'static str,
    mut trim: impl FnMut(&mut K) + Send + 'static,
) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let api: Api<K> = Api::all(client.clone());
    let (store, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(move |object: &mut K| {
            object.meta_mut().managed_fields = None;
            trim(object);
        })
        .reflect(writer);
    changes.push(changed(stream, kind));
    store
}

/// The watch's events as changes; an error is logged (the watcher retries by itself).
fn changed<S, K>(stream: S, kind: &'static str) -> BoxStream<'static, ()>
where
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
{
    stream
        .map(move |event| {
            if let Err(error) = event {
                warn!(kind, %error, "Kubernetes watch failed; retrying");
            }
        })
        .boxed()
}

impl Stores {
    /// Resolves once every store has its first complete list.
    pub(super) async fn ready(&self) {
        let mut waits: Vec<futures::future::BoxFuture<'_, _>> = self
            .app_mesh
            .iter()
            .map(|(_, store)| store.wait_until_ready().boxed())
            .collect();
        waits.push(self.namespaces.wait_until_ready().boxed());
        waits.push(self.pods.wait_until_ready().boxed());
        waits.push(self.services.wait_until_ready().boxed());
        waits.push(self.endpoint_slices.wait_until_ready().boxed());
        // A store whose writer is gone never fills: its watch ended, and so does the source.
        join_all(waits).await;
    }

    pub(super) fn snapshot(&self) -> Snapshot {
        Snapshot {
            app_mesh: self
                .app_mesh
                .iter()
                .flat_map(|(kind, store)| store.state().into_iter().map(|o| (*kind, o)))
                .collect(),
            namespaces: self.namespaces.state(),
            pods: self.pods.state(),
            services: self.services.state(),
            endpoint_slices: self.endpoint_slices.state(),
        }
    }
}
