//! Pods of a local cluster: a network namespace wired by the node's CNI network list, a pause
//! process holding it, and the user's command; `meshctl pod run|exec|delete`.
//!
//! `run`, in order: reserve the runtime record (refusing an existing pod), pick the node,
//! publish the pod without an IP to the config source (so the node agent can decide
//! enrolment), create the namespace, CNI ADD, publish again with the IP, start the pause
//! process (`sleep infinity`: the node agent finds pre-existing pods by a process in their
//! namespace) and the command, both detached. Any failure undoes the steps already done,
//! quoting the CNI plugin's error (a fail-closed agent refuses a pod it cannot serve).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::cluster::plan::{self, check_k8s_name};
use crate::cluster::state::{write_atomic, ClusterState, StateDir};
use crate::cni_runtime::{self, Runtime, Sandbox};
use crate::config_dir::{ConfigDir, PodRecord};
use crate::netns;
use crate::process::{self, ProcRecord};
use crate::sys;

/// Flags of `meshctl pod run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Pod name.
    pub name: String,
    /// Kubernetes namespace.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Service account (the identity's last part).
    #[arg(long = "sa", default_value = "default")]
    pub service_account: String,
    /// Labels, `key=value` comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub labels: Vec<String>,
    /// Node to run on (default: the node with the fewest pods).
    #[arg(long)]
    pub node: Option<String>,
    /// The pod's command, run detached with its output in `<state>/logs/pod-<ns>-<name>.log`
    /// (none: the pod only holds its network).
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// Flags of `meshctl pod exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Pod name.
    pub name: String,
    /// Kubernetes namespace.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// The command, run in the foreground inside the pod's network namespace.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// Flags of `meshctl pod delete`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Pod name.
    pub name: String,
    /// Kubernetes namespace.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
}

/// A pod's runtime record, `<state>/pods/<ns>/<name>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodRuntime {
    /// Pod name.
    pub name: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// `metadata.uid`.
    pub uid: String,
    /// Node it runs on.
    pub node: String,
    /// Its network namespace.
    pub netns: String,
    /// IP on `eth0`, once CNI ADD succeeded.
    pub ip: Option<Ipv4Addr>,
    /// Service account.
    pub service_account: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// `CNI_CONTAINERID` of its sandbox.
    pub container_id: String,
    /// The CNI ADD result, given back on DEL.
    pub cni_result: Option<serde_json::Value>,
    /// The user's command.
    pub command: Vec<String>,
    /// Its environment (beyond meshctl's own), as given to it.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The pause process.
    pub pause: Option<ProcRecord>,
    /// The user's command's process.
    pub main: Option<ProcRecord>,
}

impl PodRuntime {
    /// The pod as the config source records it.
    pub fn config_record(&self) -> PodRecord {
        PodRecord {
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            uid: self.uid.clone(),
            node: self.node.clone(),
            ip: self.ip,
            service_account: self.service_account.clone(),
            labels: self.labels.clone(),
        }
    }

    /// Its workload uid as ztunnel and istiod-lite know it.
    pub fn workload_uid(&self) -> String {
        format!("Kubernetes//v1/Pod/{}/{}", self.namespace, self.name)
    }

    fn sandbox(&self) -> Sandbox {
        Sandbox {
            container_id: self.container_id.clone(),
            netns_path: netns::path(&self.netns),
            ifname: "eth0".into(),
            pod_namespace: self.namespace.clone(),
            pod_name: self.name.clone(),
        }
    }

    /// The base name of its log file (`<state>/logs/<name>.log`).
    pub fn log_name(&self) -> String {
        format!("pod-{}-{}", self.namespace, self.name)
    }
}

/// Every pod's runtime record, sorted by namespace and name.
pub fn records(state: &StateDir) -> anyhow::Result<Vec<PodRuntime>> {
    let mut pods = Vec::new();
    let dir = state.pods_dir();
    let Ok(namespaces) = std::fs::read_dir(&dir) else {
        return Ok(pods);
    };
    for ns in namespaces.flatten() {
        let Ok(files) = std::fs::read_dir(ns.path()) else {
            continue;
        };
        for file in files.flatten() {
            let path = file.path();
            if path.extension().is_some_and(|e| e == "json") {
                // One damaged record must not hide the others (nor stop `down`).
                match read_record(&path) {
                    Ok(p) => pods.push(p),
                    Err(e) => progress!("warning: skipping {e:#}"),
                }
            }
        }
    }
    pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Ok(pods)
}

fn read_record(path: &Path) -> anyhow::Result<PodRuntime> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a pod record", path.display()))
}

/// One pod's record; the error says it does not exist.
pub fn load(state: &StateDir, namespace: &str, name: &str) -> anyhow::Result<PodRuntime> {
    // The names become a path: only valid Kubernetes names (no `..`, no `/`).
    check_k8s_name("namespace", namespace)?;
    check_k8s_name("pod name", name)?;
    let path = state.pod_file(namespace, name);
    if !path.exists() {
        bail!("pod {namespace}/{name} not found (see `meshctl get pods`)");
    }
    read_record(&path)
}

fn save(state: &StateDir, pod: &PodRuntime) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(pod).context("encoding the pod record")?;
    write_atomic(&state.pod_file(&pod.namespace, &pod.name), json.as_bytes())
}

/// The CNI runtime of a node.
fn runtime(state: &StateDir, cluster: &ClusterState, node: &str) -> anyhow::Result<Runtime> {
    Ok(Runtime {
        conf_dir: state.cni_conf_dir(node),
        cni_path: vec![state.cni_bin_dir(node), PathBuf::from(sys::SYSTEM_CNI_DIR)],
        host_netns: cluster.node(node)?.netns.clone(),
    })
}

/// The value of an environment variable of a pod's command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvValue {
    /// This text.
    Value(String),
    /// The pod's IP, once CNI ADD gave it one (Kubernetes' `fieldRef: status.podIP`).
    PodIp,
}

/// What a pod is made of: `pod run`'s flags, or what a deployer asks for.
#[derive(Debug, Clone, Default)]
pub struct PodSpec {
    /// Pod name.
    pub name: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// Service account.
    pub service_account: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Node to run on (default: the node with the fewest pods).
    pub node: Option<String>,
    /// The command (none: the pod only holds its network).
    pub command: Vec<String>,
    /// Environment of the command.
    pub env: Vec<(String, EnvValue)>,
}

/// `meshctl pod run`.
pub fn run(state: &StateDir, args: &RunArgs) -> anyhow::Result<()> {
    let spec = PodSpec {
        name: args.name.clone(),
        namespace: args.namespace.clone(),
        service_account: args.service_account.clone(),
        labels: parse_labels(&args.labels)?,
        node: args.node.clone(),
        command: args.command.clone(),
        env: Vec::new(),
    };
    let pod = create(state, &state.load()?, &spec)?;
    out!("{}", pod.ip.map(|ip| ip.to_string()).unwrap_or_default());
    Ok(())
}

/// Starts a pod of `cluster` (see the module's doc for the steps); on failure undoes what
/// was done. Returns its record.
pub fn create(
    state: &StateDir,
    cluster: &ClusterState,
    spec: &PodSpec,
) -> anyhow::Result<PodRuntime> {
    sys::preflight()?;
    check_k8s_name("namespace", &spec.namespace)?;
    check_k8s_name("pod name", &spec.name)?;
    let existing = records(state)?;
    let node = pick_node(cluster, &existing, spec.node.as_deref())?;
    let mut pod = PodRuntime {
        name: spec.name.clone(),
        namespace: spec.namespace.clone(),
        uid: random_uid(),
        node,
        netns: plan::pod_netns(&cluster.name, &spec.namespace, &spec.name),
        ip: None,
        service_account: spec.service_account.clone(),
        labels: spec.labels.clone(),
        container_id: plan::random_hex(32),
        cni_result: None,
        command: spec.command.clone(),
        env: BTreeMap::new(),
        pause: None,
        main: None,
    };
    reserve(state, &pod)?;
    match start(state, cluster, &mut pod, &spec.env) {
        Ok(()) => Ok(pod),
        Err(e) => {
            for warning in teardown(state, cluster, &pod) {
                progress!(
                    "warning: while undoing pod {}/{}: {warning}",
                    pod.namespace,
                    pod.name
                );
            }
            Err(e.context(format!("pod {}/{} not started", pod.namespace, pod.name)))
        }
    }
}

/// Creates the record file, failing if the pod exists: two `pod run` of one pod never both
/// proceed. Written aside and hard-linked into place, so the file appears whole or not at all.
fn reserve(state: &StateDir, pod: &PodRuntime) -> anyhow::Result<()> {
    let path = state.pod_file(&pod.namespace, &pod.name);
    let dir = path.parent().context("pod record without a directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = serde_json::to_string_pretty(pod).context("encoding the pod record")?;
    let tmp = dir.join(format!(".{}.reserve{}", pod.name, std::process::id()));
    std::fs::write(&tmp, json).with_context(|| format!("writing {}", tmp.display()))?;
    let linked = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => bail!(
            "pod {ns}/{name} exists already (delete it with `meshctl pod delete {name} -n {ns}`)",
            ns = pod.namespace,
            name = pod.name,
        ),
        Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
    }
    if netns::exists(&pod.netns) {
        let _ = std::fs::remove_file(&path);
        bail!(
            "network namespace {ns} exists already (another pod's names map to it, or a \
             leftover: `ip netns del {ns}`)",
            ns = pod.netns
        );
    }
    Ok(())
}

fn start(
    state: &StateDir,
    cluster: &ClusterState,
    pod: &mut PodRuntime,
    env: &[(String, EnvValue)],
) -> anyhow::Result<()> {
    let config = ConfigDir::new(state.config_dir());
    config
        .put_pod(&pod.config_record())
        .context("publishing the pod to the config source")?;
    netns::add(&pod.netns)?;
    let result = runtime(state, cluster, &pod.node)?
        .add(&pod.sandbox())
        .context("CNI ADD")?;
    pod.ip = Some(
        cni_runtime::result_ipv4(&result)
            .with_context(|| format!("the CNI result has no IPv4 address: {result}"))?,
    );
    pod.cni_result = Some(result);
    pod.env = env
        .iter()
        .map(|(k, v)| {
            let value = match v {
                EnvValue::Value(text) => text.clone(),
                EnvValue::PodIp => pod.ip.map(|ip| ip.to_string()).unwrap_or_default(),
            };
            (k.clone(), value)
        })
        .collect();
    save(state, pod)?;
    config
        .put_pod(&pod.config_record())
        .context("publishing the pod's IP to the config source")?;
    std::fs::create_dir_all(state.logs_dir()).context("creating the log directory")?;
    let log = state.log(&pod.log_name());
    let sleep = sys::tool("sleep")?;
    pod.pause = Some(process::spawn_detached(&process::Spawn {
        netns: &pod.netns,
        argv: &[sleep.as_os_str(), OsStr::new("infinity")],
        env: &[],
        log: &log,
    })?);
    save(state, pod)?;
    if !pod.command.is_empty() {
        let argv: Vec<&OsStr> = pod.command.iter().map(OsStr::new).collect();
        let env: Vec<(&str, &str)> = pod
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let main = process::spawn_detached(&process::Spawn {
            netns: &pod.netns,
            argv: &argv,
            env: &env,
            log: &log,
        })?;
        pod.main = Some(main);
        save(state, pod)?;
        // A command that cannot even start (not found) says so at once: tell the user.
        std::thread::sleep(Duration::from_millis(100));
        if !main.is_alive() {
            progress!(
                "note: the pod's command exited already; its log ({}):\n{}",
                log.display(),
                crate::cluster::components::log_tail(&log, 10)
            );
        }
    }
    progress!(
        "pod {}/{} on {} (netns {}), IP {}",
        pod.namespace,
        pod.name,
        pod.node,
        pod.netns,
        pod.ip.map(|ip| ip.to_string()).unwrap_or_default()
    );
    Ok(())
}

/// Undoes whatever exists of a pod: its processes, CNI DEL, its namespace, its config-source
/// entry and its record. Best effort: returns what could not be done.
pub fn teardown(state: &StateDir, cluster: &ClusterState, pod: &PodRuntime) -> Vec<String> {
    let mut warnings = Vec::new();
    for record in [pod.main, pod.pause].into_iter().flatten() {
        if let Err(e) = record.stop() {
            warnings.push(format!("{e:#}"));
        }
    }
    let del = runtime(state, cluster, &pod.node)
        .and_then(|rt| Ok(rt.del(&pod.sandbox(), pod.cni_result.as_ref())?));
    if let Err(e) = del {
        warnings.push(format!("CNI DEL: {e:#}"));
    }
    if let Err(e) = netns::delete(&pod.netns) {
        warnings.push(format!("{e:#}"));
    }
    if let Err(e) = ConfigDir::new(state.config_dir()).remove_pod(&pod.namespace, &pod.name) {
        warnings.push(format!("removing the pod from the config source: {e:#}"));
    }
    let path = state.pod_file(&pod.namespace, &pod.name);
    if let Err(e) = std::fs::remove_file(&path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            warnings.push(format!("removing {}: {e}", path.display()));
        }
    }
    if let Some(dir) = path.parent() {
        // Only succeeds once the namespace has no pods left.
        let _ = std::fs::remove_dir(dir);
    }
    warnings
}

/// `meshctl pod delete`.
pub fn delete(state: &StateDir, args: &DeleteArgs) -> anyhow::Result<()> {
    sys::require_root()?;
    let cluster = state.load()?;
    let pod = load(state, &args.namespace, &args.name)?;
    let warnings = teardown(state, &cluster, &pod);
    for w in &warnings {
        progress!("warning: {w}");
    }
    out!("pod {}/{} deleted", pod.namespace, pod.name);
    Ok(())
}

/// `meshctl pod exec`: the command's exit status (128 + signal when killed).
pub fn exec(state: &StateDir, args: &ExecArgs) -> anyhow::Result<ExitCode> {
    sys::require_root()?;
    let pod = load(state, &args.namespace, &args.name)?;
    let (program, rest) = args.command.split_first().context("no command given")?;
    let status = netns::command_in(&pod.netns, program)?
        .args(rest)
        .status()
        .with_context(|| format!("running {program} in pod {}/{}", pod.namespace, pod.name))?;
    let code = match status.code() {
        Some(c) => c,
        None => {
            use std::os::unix::process::ExitStatusExt as _;
            128 + status.signal().unwrap_or(0)
        }
    };
    Ok(ExitCode::from(u8::try_from(code & 0xff).unwrap_or(1)))
}

/// `k=v` strings into a map.
fn parse_labels(labels: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    labels
        .iter()
        .filter(|l| !l.is_empty())
        .map(|l| match l.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => bail!("label {l:?}: expected key=value"),
        })
        .collect()
}

/// The requested node, else the node with the fewest pods (the first of those).
pub fn pick_node(
    cluster: &ClusterState,
    pods: &[PodRuntime],
    wanted: Option<&str>,
) -> anyhow::Result<String> {
    if let Some(name) = wanted {
        return Ok(cluster.node(name)?.name.clone());
    }
    cluster
        .nodes
        .iter()
        .min_by_key(|n| pods.iter().filter(|p| p.node == n.name).count())
        .map(|n| n.name.clone())
        .context("the cluster has no nodes")
}

/// A random `metadata.uid` in UUID v4 form.
fn random_uid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> ClusterState {
        ClusterState::example()
    }

    fn pod(name: &str, node: &str) -> PodRuntime {
        PodRuntime {
            name: name.into(),
            namespace: "demo".into(),
            uid: random_uid(),
            node: node.into(),
            netns: plan::pod_netns("mesh", "demo", name),
            ip: None,
            service_account: "default".into(),
            labels: BTreeMap::new(),
            container_id: plan::random_hex(32),
            cni_result: None,
            command: vec![],
            env: BTreeMap::new(),
            pause: None,
            main: None,
        }
    }

    #[test]
    fn pod_names_that_are_not_kubernetes_names_never_become_paths() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(dir.path());
        for (ns, name) in [("..", "x"), ("default", "../../etc/passwd"), ("a/b", "c")] {
            let err = load(&state, ns, name).expect_err("refused");
            assert!(
                !format!("{err:#}").contains("not found"),
                "{ns}/{name}: {err:#}"
            );
        }
    }

    #[test]
    fn nodes_fill_evenly_unless_one_is_asked_for() {
        let c = cluster();
        assert_eq!(pick_node(&c, &[], None).expect("node"), "n1");
        assert_eq!(pick_node(&c, &[pod("a", "n1")], None).expect("node"), "n2");
        let both = [pod("a", "n1"), pod("b", "n2")];
        assert_eq!(pick_node(&c, &both, None).expect("node"), "n1");
        assert_eq!(pick_node(&c, &both, Some("n2")).expect("node"), "n2");
        assert!(pick_node(&c, &both, Some("n9")).is_err());
    }

    #[test]
    fn labels_parse() {
        let l = parse_labels(&["app=web".into(), "tier=".into()]).expect("labels");
        assert_eq!(l["app"], "web");
        assert_eq!(l["tier"], "");
        assert!(parse_labels(&["novalue".into()]).is_err());
        assert!(parse_labels(&["=x".into()]).is_err());
    }

    #[test]
    fn uids_look_like_uuids() {
        let uid = random_uid();
        assert_eq!(uid.len(), 36);
        assert_eq!(uid.as_bytes()[14], b'4');
    }

    #[test]
    fn records_round_trip_and_a_pod_is_reserved_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(dir.path());
        let mut p = pod("web", "n1");
        reserve(&state, &p).expect("first reservation");
        assert!(reserve(&state, &p).is_err());
        p.ip = Some(Ipv4Addr::new(10, 244, 1, 2));
        save(&state, &p).expect("save");
        assert_eq!(records(&state).expect("records"), vec![p.clone()]);
        assert_eq!(load(&state, "demo", "web").expect("load"), p);
        assert_eq!(p.workload_uid(), "Kubernetes//v1/Pod/demo/web");
        assert_eq!(p.config_record().ip, p.ip);
    }
}
