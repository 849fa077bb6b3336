//! `meshctl apply|delete -f FILE` and `meshctl label ns`: changes to the cluster's config
//! source directory (`<state>/config`), which istiod-lite and the node agents follow.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::Args;

use crate::cluster::plan::check_k8s_name;
use crate::cluster::state::StateDir;
use crate::config_dir::ConfigDir;

/// Flags of `meshctl apply` and `meshctl delete`.
#[derive(Debug, Args)]
pub struct FileArgs {
    /// YAML file of Kubernetes/Istio objects (`-` reads stdin).
    #[arg(short = 'f', long = "filename")]
    pub file: PathBuf,
}

/// Flags of `meshctl label ns`.
#[derive(Debug, Args)]
pub struct LabelNsArgs {
    /// The namespace.
    pub namespace: String,
    /// `key=value` to set, `key-` to remove.
    #[arg(required = true)]
    pub labels: Vec<String>,
    /// A Kubernetes cluster instead of the local one.
    #[command(flatten)]
    pub target: crate::kube_api::Target,
}

/// A label change.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelChange {
    Set(String, String),
    Remove(String),
}

fn parse_label_change(s: &str) -> anyhow::Result<LabelChange> {
    if let Some((k, v)) = s.split_once('=') {
        if !k.is_empty() {
            return Ok(LabelChange::Set(k.into(), v.into()));
        }
    } else if let Some(k) = s.strip_suffix('-') {
        if !k.is_empty() {
            return Ok(LabelChange::Remove(k.into()));
        }
    }
    bail!("label {s:?}: expected key=value (set) or key- (remove)")
}

fn config(state: &StateDir) -> anyhow::Result<ConfigDir> {
    // Only a cluster's config directory: a typo in --state-dir must not create a stray one.
    state.load()?;
    Ok(ConfigDir::new(state.config_dir()))
}

fn read_input(file: &Path) -> anyhow::Result<String> {
    if file == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading stdin")?;
        return Ok(text);
    }
    std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
}

/// `meshctl apply -f FILE`; then waypoint Gateways are deployed (see
/// [`crate::waypoint::deploy`]).
pub fn apply(state: &StateDir, args: &FileArgs) -> anyhow::Result<()> {
    let config = config(state)?;
    for line in config.apply(&read_input(&args.file)?)? {
        out!("{line}");
    }
    crate::waypoint::reconcile_and_report(state)
}

/// `meshctl delete -f FILE`; then what was deployed for deleted waypoint Gateways goes.
pub fn delete(state: &StateDir, args: &FileArgs) -> anyhow::Result<()> {
    let config = config(state)?;
    for line in config.delete(&read_input(&args.file)?)? {
        out!("{line}");
    }
    crate::waypoint::reconcile_and_report(state)
}

/// `meshctl label ns NS key=value|key-...`.
pub fn label_ns(state: &StateDir, args: &LabelNsArgs) -> anyhow::Result<()> {
    check_k8s_name("namespace", &args.namespace)?;
    let changes = args
        .labels
        .iter()
        .map(|l| parse_label_change(l))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(kubeconfig) = args.target.kube() {
        let labels: Vec<(String, Option<String>)> = changes
            .iter()
            .map(|c| match c {
                LabelChange::Set(k, v) => (k.clone(), Some(v.clone())),
                LabelChange::Remove(k) => (k.clone(), None),
            })
            .collect();
        crate::kube_api::runtime()?.block_on(async {
            let client = crate::kube_api::client(kubeconfig).await?;
            crate::kube_api::label_namespace(&client, &args.namespace, &labels).await
        })?;
        out!("namespace/{} labeled", args.namespace);
        return Ok(());
    }
    let config = config(state)?;
    for change in changes {
        match &change {
            LabelChange::Set(k, v) => config.label_namespace(&args.namespace, k, Some(v))?,
            LabelChange::Remove(k) => config.label_namespace(&args.namespace, k, None)?,
        }
    }
    out!("namespace/{} labeled", args.namespace);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_changes_parse_like_kubectl() {
        assert_eq!(
            parse_label_change("istio.io/dataplane-mode=ambient").expect("set"),
            LabelChange::Set("istio.io/dataplane-mode".into(), "ambient".into())
        );
        assert_eq!(
            parse_label_change("istio.io/dataplane-mode-").expect("remove"),
            LabelChange::Remove("istio.io/dataplane-mode".into())
        );
        assert!(parse_label_change("=x").is_err());
        assert!(parse_label_change("-").is_err());
        assert!(parse_label_change("plain").is_err());
    }
}
