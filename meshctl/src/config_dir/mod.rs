//! The local cluster's config source: every Kubernetes object it has, one YAML file each, in
//! one directory.
//!
//! istiod-lite (`--config-dir`) and every node agent read this directory (all `*.yaml`,
//! recursively, skipping names that start with `.`); meshctl is its only writer. Layout:
//!
//! - `namespaces/<name>.yaml`: Namespaces (their labels enrol pods in the mesh);
//! - `pods/<namespace>/<name>.yaml`: Pods, written by [`ConfigDir::put_pod`] or `apply`;
//! - `objects/<kind>[.<group>]/<namespace>/<name>.yaml`: everything else `apply` accepts,
//!   e.g. `objects/authorizationpolicy.security.istio.io/demo/allow-same.yaml`.
//!
//! Every write goes to a dot-named temporary file in the same directory and is then renamed
//! over the target, so a reader sees the old file or the new one, never half of one.
//!
//! One document istiod-lite cannot read makes it refuse the whole directory (it keeps serving
//! the last good config; an invalid routing object is refused alone and keeps its last good
//! version), so `apply` checks what it is given the way istiod-lite reads it ([`manifest`],
//! with the shared `resources` types and their `validate()` for the routing kinds) and writes
//! nothing unless every document passes. Writers are meshctl
//! commands run one at a time; two concurrent `label_namespace` calls on one namespace could
//! lose one of the changes.

mod admission;
mod cluster_ip;
mod manifest;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{bail, Context as _};
use k8s_openapi::api::core::v1::{
    Container, Namespace, Pod, PodCondition, PodIP, PodSpec, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

use cluster_ip::ClusterIps;
pub(crate) use manifest::Kind;
use manifest::{check_label_key, check_label_value, Object};
use resources::NameRule;

/// A pod of the local cluster, as meshctl records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRecord {
    /// Pod name (a DNS-1123 label).
    pub name: String,
    /// Namespace (a DNS-1123 label).
    pub namespace: String,
    /// Kubernetes uid (`metadata.uid`).
    pub uid: String,
    /// Node it runs on (`spec.nodeName`).
    pub node: String,
    /// Its address; `None` until its network is set up (then the pod has no `status`, and
    /// istiod-lite makes no workload of it yet).
    pub ip: Option<Ipv4Addr>,
    /// `spec.serviceAccountName`: with the namespace, its SPIFFE identity.
    pub service_account: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
}

/// An object as stored by `apply`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StoredObject {
    /// `metadata.namespace`.
    pub(crate) namespace: String,
    /// `metadata.name`.
    pub(crate) name: String,
    /// The document.
    pub(crate) value: Value,
}

/// The directory of Kubernetes YAML that the local cluster's control plane and agents read.
#[derive(Debug, Clone)]
pub struct ConfigDir {
    root: PathBuf,
}

impl ConfigDir {
    /// The config directory at `root`; created, with its subdirectories, on first write.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ConfigDir { root: root.into() }
    }

    /// Writes `pod` to `pods/<namespace>/<name>.yaml` (replacing any earlier version) and makes
    /// sure its Namespace object exists.
    pub fn put_pod(&self, pod: &PodRecord) -> anyhow::Result<()> {
        let at = format!("pod {}/{}", pod.namespace, pod.name);
        NameRule::Label
            .check(&pod.namespace)
            .with_context(|| format!("{at}: namespace"))?;
        NameRule::Label
            .check(&pod.name)
            .with_context(|| format!("{at}: name"))?;
        NameRule::Subdomain
            .check(&pod.node)
            .with_context(|| format!("{at}: node"))?;
        NameRule::Subdomain
            .check(&pod.service_account)
            .with_context(|| format!("{at}: service account"))?;
        if pod.uid.trim().is_empty() {
            bail!("{at}: uid is empty");
        }
        check_labels(&pod.labels).with_context(|| format!("{at}: labels"))?;
        self.ensure_namespace(&pod.namespace)?;
        let text = serde_saphyr::to_string(&pod_object(pod)).context("encoding a Pod")?;
        write_atomic(&self.pod_path(&pod.namespace, &pod.name), &text)
    }

    /// Removes the pod's file; removing a pod that is not there is not an error.
    pub fn remove_pod(&self, namespace: &str, name: &str) -> anyhow::Result<()> {
        NameRule::Label.check(namespace).context("namespace")?;
        NameRule::Label.check(name).context("pod name")?;
        remove_file(&self.pod_path(namespace, name))
    }

    /// Every pod of the directory, by namespace and name (those written by `apply` included).
    pub fn pods(&self) -> anyhow::Result<Vec<PodRecord>> {
        let mut pods = Vec::new();
        for ns_dir in visible_entries(&self.root.join("pods"))? {
            if !ns_dir.is_dir() {
                continue;
            }
            for file in visible_entries(&ns_dir)? {
                if file.extension().is_some_and(|e| e == "yaml") {
                    pods.push(read_pod(&file)?);
                }
            }
        }
        pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        Ok(pods)
    }

    /// Creates `namespaces/<ns>.yaml` (without labels) unless it exists.
    pub fn ensure_namespace(&self, ns: &str) -> anyhow::Result<()> {
        NameRule::Label.check(ns).context("namespace")?;
        let path = self.namespace_path(ns);
        if path.exists() {
            return Ok(());
        }
        let text =
            serde_saphyr::to_string(&namespace_object(ns)).context("encoding a Namespace")?;
        write_atomic(&path, &text)
    }

    /// Sets label `key` of namespace `ns` to `value`, or removes it when `value` is `None`;
    /// creates the namespace if absent. The rest of the Namespace object is kept.
    pub fn label_namespace(&self, ns: &str, key: &str, value: Option<&str>) -> anyhow::Result<()> {
        NameRule::Label.check(ns).context("namespace")?;
        check_label_key(key).with_context(|| format!("label key {key:?}"))?;
        if let Some(v) = value {
            check_label_value(v).with_context(|| format!("label {key}={v:?}"))?;
        }
        let path = self.namespace_path(ns);
        let mut object = match read_value(&path)? {
            Some(v) => v,
            None => serde_json::to_value(namespace_object(ns)).context("encoding a Namespace")?,
        };
        let before = object.clone();
        let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) else {
            bail!("{}: no metadata mapping", path.display());
        };
        let labels = meta
            .entry("labels")
            .or_insert_with(|| Value::Object(Default::default()));
        if labels.is_null() {
            *labels = Value::Object(Default::default());
        }
        let Some(map) = labels.as_object_mut() else {
            bail!("{}: metadata.labels is not a mapping", path.display());
        };
        match value {
            Some(v) => {
                map.insert(key.into(), v.into());
            }
            None => {
                map.remove(key);
            }
        }
        if map.is_empty() {
            meta.remove("labels");
        }
        // Unchanged files are not rewritten: every write makes istiod-lite reload.
        if object == before && path.exists() {
            return Ok(());
        }
        let text = serde_saphyr::to_string(&object).context("encoding a Namespace")?;
        write_atomic(&path, &text)
    }

    /// Stores every object of `yaml` (one or more documents), kubectl-style: returns one line
    /// per object (`<kind>[.<group>]/[<namespace>/]<name> created|configured|unchanged`),
    /// after a `Warning: ...` line for each rule ztunnel will enforce differently from what
    /// it says. Writes nothing when any document is unusable, or is an AuthorizationPolicy
    /// with action AUDIT or CUSTOM (which the mesh does not support), or is a Service whose
    /// cluster IP cannot be had. A Service without a cluster IP gets one (see [`cluster_ip`]),
    /// stored with it.
    pub fn apply(&self, yaml: &str) -> anyhow::Result<Vec<String>> {
        let mut manifest = manifest::parse(yaml)?;
        self.assign_cluster_ips(&mut manifest.objects)?;
        let mut lines: Vec<String> = manifest
            .warnings
            .iter()
            .map(|w| format!("Warning: {w}"))
            .collect();
        for object in &manifest.objects {
            let path = self.object_path(object);
            let outcome = match read_value(&path).ok().flatten() {
                None => "created",
                Some(old) if old == object.value => "unchanged",
                Some(_) => "configured",
            };
            if outcome != "unchanged" {
                let text = serde_saphyr::to_string(&object.value)
                    .with_context(|| format!("encoding {}", object.id()))?;
                write_atomic(&path, &text).with_context(|| {
                    format!("{} not stored (objects listed before it were)", object.id())
                })?;
            }
            lines.push(format!("{} {outcome}", object.id()));
        }
        Ok(lines)
    }

    /// Removes the objects named by the documents of `yaml` (only `apiVersion`, `kind` and
    /// `metadata` are read); returns `<object> deleted` lines. Fails, removing nothing, if any
    /// of them does not exist or is a Namespace that still holds objects.
    pub fn delete(&self, yaml: &str) -> anyhow::Result<Vec<String>> {
        let objects = manifest::parse_names(yaml)?;
        let mut missing = Vec::new();
        for object in &objects {
            if !self.object_path(object).exists() {
                missing.push(format!("{} not found", object.id()));
            } else if object.kind == Kind::Namespace {
                let held = self.held_by_namespace(&object.name)?;
                let later = |p: &String| objects.iter().any(|o| &self.object_path(o) == p);
                let kept: Vec<_> = held.iter().filter(|p| !later(p)).collect();
                if !kept.is_empty() {
                    missing.push(format!(
                        "{} still holds {} object(s) (e.g. {}); delete them first",
                        object.id(),
                        kept.len(),
                        kept[0]
                    ));
                }
            }
        }
        if !missing.is_empty() {
            bail!("nothing was deleted:\n  {}", missing.join("\n  "));
        }
        let mut lines = Vec::new();
        for object in &objects {
            remove_file(&self.object_path(object))?;
            lines.push(format!("{} deleted", object.id()));
        }
        Ok(lines)
    }

    /// Every stored object of `kind` (not Namespaces or Pods, which have their own
    /// directories), by namespace and name.
    pub(crate) fn objects(&self, kind: Kind) -> anyhow::Result<Vec<StoredObject>> {
        let mut out = Vec::new();
        let kind_dir = self.root.join("objects").join(kind.resource());
        for ns_dir in visible_entries(&kind_dir)? {
            if !ns_dir.is_dir() {
                continue;
            }
            let namespace = ns_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            for file in visible_entries(&ns_dir)? {
                let Some(name) = file
                    .file_name()
                    .and_then(|n| n.to_string_lossy().strip_suffix(".yaml").map(String::from))
                else {
                    continue;
                };
                if let Some(value) = read_value(&file)? {
                    out.push(StoredObject {
                        namespace: namespace.clone(),
                        name,
                        value,
                    });
                }
            }
        }
        Ok(out)
    }

    /// One stored object of `kind`, if it exists.
    pub(crate) fn object(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<Option<Value>> {
        read_value(&self.stored_path(kind, namespace, name)?)
    }

    /// Removes a stored object of `kind`; returns whether it was there.
    pub(crate) fn remove_object(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<bool> {
        let path = self.stored_path(kind, namespace, name)?;
        let existed = path.exists();
        remove_file(&path)?;
        Ok(existed)
    }

    /// The labels of namespace `ns` (none if it has no object).
    pub fn namespace_labels(&self, ns: &str) -> anyhow::Result<BTreeMap<String, String>> {
        NameRule::Label.check(ns).context("namespace")?;
        let Some(value) = read_value(&self.namespace_path(ns))? else {
            return Ok(BTreeMap::new());
        };
        Ok(value
            .get("metadata")
            .and_then(|m| m.get("labels"))
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
            .collect())
    }

    /// The file of an object named by the caller (checked, so the names never escape the
    /// directory).
    fn stored_path(&self, kind: Kind, namespace: &str, name: &str) -> anyhow::Result<PathBuf> {
        NameRule::Label.check(namespace).context("namespace")?;
        NameRule::Subdomain.check(name).context("name")?;
        Ok(self.object_path(&Object {
            kind,
            namespace: Some(namespace.to_string()),
            name: name.to_string(),
            value: Value::Null,
        }))
    }

    /// Gives each Service of `objects` its cluster IP, against those stored; refuses the
    /// input, naming every Service that cannot have the address it asks for.
    fn assign_cluster_ips(&self, objects: &mut [Object]) -> anyhow::Result<()> {
        let mut ips = ClusterIps::default();
        for stored in self.objects(Kind::Service)? {
            let ip = stored
                .value
                .get("spec")
                .and_then(|s| s.get("clusterIP"))
                .and_then(Value::as_str);
            if let Some(ip) = ip.filter(|ip| !ip.is_empty()) {
                ips.record(&format!("{}/{}", stored.namespace, stored.name), ip);
            }
        }
        let mut problems = Vec::new();
        for object in objects.iter_mut().filter(|o| o.kind == Kind::Service) {
            let key = format!(
                "{}/{}",
                object.namespace.as_deref().unwrap_or_default(),
                object.name
            );
            if let Err(e) = ips.assign(&key, &mut object.value) {
                problems.push(format!("{}: {e}", object.id()));
            }
        }
        if !problems.is_empty() {
            bail!(
                "{} Service(s) cannot have their cluster IP; nothing was applied:\n  {}",
                problems.len(),
                problems.join("\n  ")
            );
        }
        Ok(())
    }

    fn namespace_path(&self, ns: &str) -> PathBuf {
        self.root.join("namespaces").join(format!("{ns}.yaml"))
    }

    fn pod_path(&self, ns: &str, name: &str) -> PathBuf {
        self.root.join("pods").join(ns).join(format!("{name}.yaml"))
    }

    /// Where `object` lives: Namespaces and Pods in their own directories, so that `apply`
    /// and `put_pod`/`label_namespace` work on the same files.
    fn object_path(&self, object: &Object) -> PathBuf {
        let ns = object.namespace.as_deref().unwrap_or_default();
        match object.kind {
            Kind::Namespace => self.namespace_path(&object.name),
            Kind::Pod => self.pod_path(ns, &object.name),
            kind => self
                .root
                .join("objects")
                .join(kind.resource())
                .join(ns)
                .join(format!("{}.yaml", object.name)),
        }
    }

    /// Files of objects in namespace `ns`, as paths.
    fn held_by_namespace(&self, ns: &str) -> anyhow::Result<Vec<String>> {
        let mut dirs = vec![self.root.join("pods").join(ns)];
        for kind_dir in visible_entries(&self.root.join("objects"))? {
            dirs.push(kind_dir.join(ns));
        }
        let mut held = Vec::new();
        for dir in dirs {
            for file in visible_entries(&dir)? {
                held.push(file.display().to_string());
            }
        }
        Ok(held)
    }
}

/// The Pod object istiod-lite and the agents read for `pod`.
fn pod_object(pod: &PodRecord) -> Pod {
    let status = pod.ip.map(|ip| PodStatus {
        phase: Some("Running".into()),
        pod_ip: Some(ip.to_string()),
        pod_ips: Some(vec![PodIP { ip: ip.to_string() }]),
        // istiod-lite marks a workload healthy only when Ready is True.
        conditions: Some(vec![PodCondition {
            type_: "Ready".into(),
            status: "True".into(),
            ..Default::default()
        }]),
        ..Default::default()
    });
    Pod {
        metadata: ObjectMeta {
            name: Some(pod.name.clone()),
            namespace: Some(pod.namespace.clone()),
            uid: Some(pod.uid.clone()),
            labels: (!pod.labels.is_empty()).then(|| pod.labels.clone()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(pod.node.clone()),
            service_account_name: Some(pod.service_account.clone()),
            containers: vec![Container {
                name: "main".into(),
                image: Some("local".into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status,
    }
}

fn namespace_object(ns: &str) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(ns.into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Reads a pod file, written by `put_pod` or `apply`.
fn read_pod(path: &Path) -> anyhow::Result<PodRecord> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let pod: Pod =
        resources::yaml_parse(&text).with_context(|| format!("{} is not a Pod", path.display()))?;
    let meta = pod.metadata;
    let spec = pod.spec.unwrap_or_default();
    let status = pod.status.unwrap_or_default();
    let ip_text = status
        .pod_ips
        .iter()
        .flatten()
        .map(|p| p.ip.clone())
        .chain(status.pod_ip)
        .find(|ip| !ip.is_empty());
    let ip = match ip_text {
        None => None,
        Some(ip) => Some(ip.parse::<Ipv4Addr>().with_context(|| {
            format!(
                "{}: pod IP {ip:?} is not an IPv4 address (the local cluster is IPv4 only)",
                path.display()
            )
        })?),
    };
    Ok(PodRecord {
        name: meta.name.unwrap_or_default(),
        namespace: meta.namespace.unwrap_or_else(|| "default".into()),
        uid: meta.uid.unwrap_or_default(),
        node: spec.node_name.unwrap_or_default(),
        ip,
        service_account: spec
            .service_account_name
            .filter(|sa| !sa.is_empty())
            .unwrap_or_else(|| mesh::model::DEFAULT_SERVICE_ACCOUNT.into()),
        labels: meta.labels.unwrap_or_default(),
    })
}

fn check_labels(labels: &BTreeMap<String, String>) -> anyhow::Result<()> {
    for (k, v) in labels {
        check_label_key(k).with_context(|| format!("key {k:?}"))?;
        check_label_value(v).with_context(|| format!("{k}={v:?}"))?;
    }
    Ok(())
}

/// The parsed YAML of `path`; `None` if there is no such file.
fn read_value(path: &Path) -> anyhow::Result<Option<Value>> {
    match std::fs::read_to_string(path) {
        Ok(text) => resources::yaml_parse(&text)
            .map(Some)
            .with_context(|| format!("{} is not YAML", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The entries of `dir` whose names do not start with `.` (temporary files), sorted; none if
/// `dir` does not exist.
fn visible_entries(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        if !entry.file_name().to_string_lossy().starts_with('.') {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

fn remove_file(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// Replaces `path` with `contents` in one step: a dot-named temporary file (which readers
/// skip) in the same directory, flushed to disk, then renamed over `path`.
fn write_atomic(path: &Path, contents: &str) -> anyhow::Result<()> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        bail!("{} is not a file path", path.display());
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.{}-{}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let written = std::fs::File::create_new(&tmp)
        .and_then(|mut f| {
            f.write_all(contents.as_bytes())?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    Ok(())
}
