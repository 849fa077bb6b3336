//! The Kubernetes API as meshctl uses it: a client from the kubeconfig, and server-side apply
//! and delete of objects given as JSON (any kind: the plural is derived from the kind).

use std::time::Duration;

use anyhow::Context as _;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams,
};
use serde_json::Value;

/// The field manager of what meshctl applies.
pub const FIELD_MANAGER: &str = "meshctl";

/// Where a command acts: the local cluster (the default) or a Kubernetes cluster.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Target {
    /// Act on a Kubernetes cluster instead of the local one, through this kubeconfig (no value:
    /// $KUBECONFIG, ~/.kube/config, or the in-cluster account).
    #[arg(long, num_args = 0..=1, default_missing_value = "")]
    pub kubeconfig: Option<std::path::PathBuf>,
}

impl Target {
    /// The kubeconfig when the command goes to a Kubernetes cluster (`Some(None)`: the
    /// default chain); `None` for the local cluster.
    pub fn kube(&self) -> Option<Option<&std::path::Path>> {
        self.kubeconfig
            .as_deref()
            .map(|p| (!p.as_os_str().is_empty()).then_some(p))
    }
}

/// Merge-patches labels of Namespace `namespace`: `Some(value)` sets, `None` removes.
pub async fn label_namespace(
    client: &kube::Client,
    namespace: &str,
    labels: &[(String, Option<String>)],
) -> anyhow::Result<()> {
    let mut map = serde_json::Map::new();
    for (k, v) in labels {
        map.insert(k.clone(), v.clone().map_or(Value::Null, Value::String));
    }
    let patch = serde_json::json!({"metadata": {"labels": map}});
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .patch(namespace, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("labelling namespace {namespace}"))?;
    Ok(())
}

pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

pub async fn client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Client> {
    Ok(kube::Client::try_from(config(kubeconfig).await?)?)
}

/// The client configuration from the kubeconfig (or the default chain).
pub async fn config(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Config> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no cluster: no kubeconfig ($KUBECONFIG, ~/.kube/config) and not in a pod")?,
    };
    Ok(config)
}

/// The API of `object`'s kind, in its namespace if it has one.
pub fn api_for(
    client: &kube::Client,
    object: &Value,
) -> anyhow::Result<(Api<DynamicObject>, String)> {
    let api_version = object["apiVersion"]
        .as_str()
        .context("an object without apiVersion")?;
    let kind = object["kind"].as_str().context("an object without kind")?;
    let name = object["metadata"]["name"]
        .as_str()
        .context("an object without a name")?;
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let resource = ApiResource::from_gvk_with_plural(&gvk, &resources::plural(kind));
    let api = match object["metadata"]["namespace"].as_str() {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    Ok((api, name.to_string()))
}

pub fn shown(object: &Value) -> String {
    let kind = object["kind"].as_str().unwrap_or("?");
    match object["metadata"]["namespace"].as_str() {
        Some(ns) => format!(
            "{kind} {ns}/{}",
            object["metadata"]["name"].as_str().unwrap_or("?")
        ),
        None => format!(
            "{kind} {}",
            object["metadata"]["name"].as_str().unwrap_or("?")
        ),
    }
}

/// Server-side apply of `object`; a kind whose CRD was just created may take a moment to be
/// served, so "not found" is retried for a few seconds.
pub async fn apply(client: &kube::Client, object: &Value) -> anyhow::Result<()> {
    let (api, name) = api_for(client, object)?;
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut attempt = 0;
    loop {
        match api.patch(&name, &params, &Patch::Apply(object)).await {
            Ok(_) => {
                progress!("applied {}", shown(object));
                return Ok(());
            }
            Err(kube::Error::Api(e)) if e.code == 404 && attempt < 20 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("applying {}", shown(object))),
        }
    }
}

pub async fn delete(client: &kube::Client, object: &Value) -> anyhow::Result<()> {
    let (api, name) = api_for(client, object)?;
    match api.delete(&name, &DeleteParams::background()).await {
        Ok(_) => progress!("deleted {}", shown(object)),
        Err(kube::Error::Api(e)) if e.code == 404 => progress!("{} was not there", shown(object)),
        Err(e) => return Err(e).with_context(|| format!("deleting {}", shown(object))),
    }
    Ok(())
}
