//! [`KubeSource`]: the cluster as the Kubernetes API server has it, followed with kube-rs
//! watchers, feeding the same [`ClusterState`] snapshots as the directory source.
//!
//! One watcher per kind ([`Kind::ALL`]: Namespaces, Pods, Services, ServiceAccounts,
//! EndpointSlices and the Istio and Gateway API custom resources), cluster-wide. Each keeps its
//! kind's objects; after a burst of changes (20 ms of quiet gathering, so a re-list or a rollout
//! costs one rebuild, not one per object) a publisher task builds a new snapshot from all of them
//! and publishes it if it differs.
//!
//! - **Start:** [`KubeSource::start`] returns only once every watcher has finished its initial
//!   list, so proxies never see a half-empty cluster; it fails after the given timeout, naming
//!   the kinds still missing. A custom resource whose CRD is not installed (404) counts as an
//!   empty list, with a warning, and keeps being retried.
//! - **Broken watches:** a dropped stream resumes from the last resourceVersion; a `410 Gone`
//!   (history compacted) makes the watcher list again, and the new list replaces that kind's
//!   objects whole, so a deletion missed while disconnected is not kept. Errors are retried
//!   with backoff and logged.
//! - **Invalid objects** (what an admission webhook would have refused, if it slipped in): the
//!   object's last good version stays in force, or the object is left out if it never had
//!   one, with a problem naming the field ([`ConfigSource::problems`]).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt as _;
use kube::{Api, Client};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use super::parse::key as object_key;
use super::{ClusterState, ConfigProblem, ConfigSource, ObjectKey};
use crate::resources::{
    AuthorizationPolicy, DestinationRule, Gateway, GrpcRoute, HttpRoute, Kind, Object,
    PeerAuthentication, RequestAuthentication, VirtualService,
};

/// Why the Kubernetes source could not start.
#[derive(Debug, thiserror::Error)]
pub enum KubeSourceError {
    /// Some initial lists did not finish in time.
    #[error("the initial lists of {} did not finish within {timeout:?} (is the API server reachable, and may istiod-lite list them?)", missing.join(", "))]
    NotSynced {
        /// The kinds still missing.
        missing: Vec<String>,
        /// How long it waited.
        timeout: Duration,
    },
    /// Watching needs a tokio runtime, and none is running on this thread.
    #[error("the Kubernetes watchers must be started inside a tokio runtime")]
    NoRuntime,
}

/// The cluster as the API server has it. Dropping it stops the watchers.
pub struct KubeSource {
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource").finish_non_exhaustive()
    }
}

struct Shared {
    snapshots: watch::Sender<Arc<ClusterState>>,
    synced: watch::Sender<usize>,
    /// Something changed since the last snapshot: the publisher builds the next one.
    dirty: tokio::sync::Notify,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    kinds: BTreeMap<Kind, KindObjects>,
    /// The last valid version of each object, kept when a newer one is invalid.
    last_good: BTreeMap<(Kind, ObjectKey), Object>,
    problems: Vec<ConfigProblem>,
    rejected: u64,
}

#[derive(Default)]
struct KindObjects {
    objects: BTreeMap<ObjectKey, Object>,
    /// A re-list in progress: the objects it has listed so far.
    relisting: Option<BTreeMap<ObjectKey, Object>>,
    synced: bool,
}

impl KubeSource {
    /// Starts a watcher per kind and waits, at most `timeout`, until each has listed its
    /// objects; then publishes the first snapshot.
    pub async fn start(client: Client, timeout: Duration) -> Result<KubeSource, KubeSourceError> {
        tokio::runtime::Handle::try_current().map_err(|_| KubeSourceError::NoRuntime)?;
        let (snapshots, _) = watch::channel(Arc::new(ClusterState::default()));
        let (synced, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            snapshots,
            synced,
            dirty: tokio::sync::Notify::new(),
            state: Mutex::new(State::default()),
        });
        let tasks = vec![
            spawn::<Namespace>(&client, &shared, Kind::Namespace, Object::Namespace),
            spawn::<Pod>(&client, &shared, Kind::Pod, Object::Pod),
            spawn::<Service>(&client, &shared, Kind::Service, Object::Service),
            spawn::<ServiceAccount>(
                &client,
                &shared,
                Kind::ServiceAccount,
                Object::ServiceAccount,
            ),
            spawn::<EndpointSlice>(&client, &shared, Kind::EndpointSlice, Object::EndpointSlice),
            spawn::<AuthorizationPolicy>(
                &client,
                &shared,
                Kind::AuthorizationPolicy,
                Object::AuthorizationPolicy,
            ),
            spawn::<PeerAuthentication>(
                &client,
                &shared,
                Kind::PeerAuthentication,
                Object::PeerAuthentication,
            ),
            spawn::<RequestAuthentication>(
                &client,
                &shared,
                Kind::RequestAuthentication,
                Object::RequestAuthentication,
            ),
            spawn::<Gateway>(&client, &shared, Kind::Gateway, Object::Gateway),
            spawn::<HttpRoute>(&client, &shared, Kind::HttpRoute, Object::HttpRoute),
            spawn::<GrpcRoute>(&client, &shared, Kind::GrpcRoute, Object::GrpcRoute),
            spawn::<VirtualService>(
                &client,
                &shared,
                Kind::VirtualService,
                Object::VirtualService,
            ),
            spawn::<DestinationRule>(
                &client,
                &shared,
                Kind::DestinationRule,
                Object::DestinationRule,
            ),
        ];
        let mut tasks = tasks;
        tasks.push(tokio::spawn(publisher(shared.clone())));
        let source = KubeSource { shared, tasks };
        let mut synced = source.shared.synced.subscribe();
        let all = Kind::ALL.len();
        let waited = tokio::time::timeout(timeout, synced.wait_for(|n| *n >= all)).await;
        if waited.is_err() {
            let state = source.shared.state();
            let missing = Kind::ALL
                .iter()
                .filter(|k| !state.kinds.get(k).is_some_and(|o| o.synced))
                .map(|k| k.name().to_string())
                .collect();
            return Err(KubeSourceError::NotSynced { missing, timeout });
        }
        // The first snapshot is in force before anyone subscribes.
        let objects = {
            let mut state = source.shared.state();
            source.shared.publish(&mut state);
            state.kinds.values().map(|k| k.objects.len()).sum::<usize>()
        };
        tracing::info!(objects, "cluster listed; following it");
        Ok(source)
    }
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl ConfigSource for KubeSource {
    fn subscribe(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.shared.snapshots.subscribe()
    }

    fn problems(&self) -> Vec<ConfigProblem> {
        self.shared.state().problems.clone()
    }

    fn rejected_reloads(&self) -> u64 {
        self.shared.state().rejected
    }
}

/// Starts the watcher of kind `kind` (type `K`, wrapped into an [`Object`] by `wrap`).
fn spawn<K>(
    client: &Client,
    shared: &Arc<Shared>,
    kind: Kind,
    wrap: fn(K) -> Object,
) -> tokio::task::JoinHandle<()>
where
    K: kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let api: Api<K> = Api::all(client.clone());
    let shared = shared.clone();
    tokio::spawn(async move {
        let mut stream = watcher::watcher(api, watcher::Config::default().any_semantic())
            .default_backoff()
            .boxed();
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => shared.on_event(kind, wrapped(event, wrap)),
                Err(watcher::Error::InitialListFailed(kube::Error::Api(status)))
                    if status.code == 404 =>
                {
                    // The CRD is not installed: nothing of this kind exists (yet).
                    tracing::warn!(kind = kind.name(), "not served by the API server (is its CRD installed?); treated as empty, retrying");
                    shared.on_event(kind, Event::Init);
                    shared.on_event(kind, Event::InitDone);
                }
                Err(error) => {
                    tracing::warn!(kind = kind.name(), %error, "watch failed; retrying");
                }
            }
        }
    })
}

/// How long the publisher lets changes gather before it builds a snapshot: a burst of events
/// (a re-list, a rollout) costs one rebuild, not one per object.
const COALESCE: Duration = Duration::from_millis(20);

/// Builds a snapshot after each burst of changes (every object is validated and the cluster
/// state rebuilt, so this is kept off the per-event path).
async fn publisher(shared: Arc<Shared>) {
    loop {
        shared.dirty.notified().await;
        tokio::time::sleep(COALESCE).await;
        let mut state = shared.state();
        shared.publish(&mut state);
    }
}

/// The event with its object wrapped.
fn wrapped<K>(event: Event<K>, wrap: fn(K) -> Object) -> Event<Object> {
    match event {
        Event::Init => Event::Init,
        Event::InitApply(k) => Event::InitApply(wrap(k)),
        Event::InitDone => Event::InitDone,
        Event::Apply(k) => Event::Apply(wrap(k)),
        Event::Delete(k) => Event::Delete(wrap(k)),
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn on_event(&self, kind: Kind, event: Event<Object>) {
        let mut state = self.state();
        let objects = state.kinds.entry(kind).or_default();
        let changed = match event {
            Event::Init => {
                objects.relisting = Some(BTreeMap::new());
                false
            }
            Event::InitApply(object) => {
                let listing = objects.relisting.get_or_insert_with(BTreeMap::new);
                listing.insert(object_key(&object), object);
                false
            }
            Event::InitDone => {
                objects.objects = objects.relisting.take().unwrap_or_default();
                if !objects.synced {
                    objects.synced = true;
                    self.synced.send_modify(|n| *n += 1);
                }
                true
            }
            Event::Apply(object) => {
                objects.objects.insert(object_key(&object), object);
                true
            }
            Event::Delete(object) => {
                objects.objects.remove(&object_key(&object));
                true
            }
        };
        let all_synced = Kind::ALL
            .iter()
            .all(|k| state.kinds.get(k).is_some_and(|o| o.synced));
        if changed && all_synced {
            self.dirty.notify_one();
        }
    }

    /// Builds the snapshot from every kind's objects and publishes it if it changed.
    fn publish(&self, state: &mut State) {
        let mut problems = Vec::new();
        let mut valid = Vec::new();
        let State {
            kinds, last_good, ..
        } = state;
        for (kind, objects) in kinds.iter() {
            for (key, object) in &objects.objects {
                let slot = (*kind, key.clone());
                match object.validate() {
                    Ok(()) => {
                        last_good.insert(slot, object.clone());
                        valid.push(object.clone());
                    }
                    Err(reason) => {
                        let kept = match last_good.get(&slot) {
                            Some(good) => {
                                valid.push(good.clone());
                                "keeping its last good version"
                            }
                            None => "it has no earlier good version, so it is left out",
                        };
                        problems.push(ConfigProblem {
                            file: PathBuf::from(format!("kubernetes:{}", kind.resource())),
                            document: None,
                            item: None,
                            reason: format!(
                                "{kind} {key} refused ({kept}): invalid {kind}: {reason}"
                            ),
                        });
                    }
                }
            }
        }
        // Objects gone from the cluster do not come back as "last good".
        let present: std::collections::BTreeSet<(Kind, ObjectKey)> = kinds
            .iter()
            .flat_map(|(k, o)| o.objects.keys().map(move |key| (*k, key.clone())))
            .collect();
        last_good.retain(|slot, _| present.contains(slot));
        for p in &problems {
            tracing::warn!(problem = %p, "invalid object");
        }
        if !problems.is_empty() {
            state.rejected += 1;
        }
        state.problems = problems;
        let snapshot = ClusterState::from_objects(valid);
        self.snapshots.send_if_modified(|current| {
            if **current == snapshot {
                return false;
            }
            *current = Arc::new(snapshot);
            true
        });
    }
}
