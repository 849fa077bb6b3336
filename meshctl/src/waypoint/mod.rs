//! `meshctl waypoint apply|list|delete`: a namespace's waypoint (Istio ambient's L7 proxy) on
//! the local cluster, with `istioctl waypoint`'s names.
//!
//! `apply` stores a Gateway API Gateway of class `istio-waypoint` ([`gateway`]) in the config
//! source, as `meshctl apply -f` would, then [`deploy`] runs the waypoint the way Istio's
//! deployer does on Kubernetes (ServiceAccount, Service with a cluster IP, a pod of its own).
//! `meshctl apply|delete -f` run the same [`deploy::reconcile`], so a Gateway applied by hand
//! has the same effect. `list` ([`list`]) shows each waypoint's address, traffic type and
//! readiness.

pub mod deploy;
pub mod drain;
pub mod gateway;
pub mod kube;
pub mod list;

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};

use crate::cluster::plan::check_k8s_name;
use crate::cluster::state::StateDir;
use crate::config_dir::{ConfigDir, Kind};
use gateway::{TrafficType, USE_WAYPOINT_LABEL};

/// How long `apply --wait` waits for the waypoint to be ready.
const WAIT_TIMEOUT: Duration = Duration::from_secs(30);

/// `meshctl waypoint` subcommands.
#[derive(Debug, Subcommand)]
pub enum WaypointCommand {
    /// Deploy (or update) a waypoint in a namespace: its Gateway, then its pod, Service and
    /// service account.
    Apply(ApplyArgs),
    /// Show waypoints: NAME NAMESPACE ADDRESS TRAFFIC-TYPE READY.
    List(ListArgs),
    /// Remove a waypoint: its Gateway, pod, Service and service account (and the
    /// namespace's `istio.io/use-waypoint` label when it names this waypoint).
    Delete(DeleteArgs),
}

/// Flags of `meshctl waypoint apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Namespace of the waypoint.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Name of the waypoint (its Gateway, service account and Service).
    #[arg(long, default_value = "waypoint")]
    pub name: String,
    /// Which traffic it handles (label `istio.io/waypoint-for`).
    #[arg(long = "for", value_enum, default_value_t = TrafficType::Service)]
    pub traffic_type: TrafficType,
    /// Also label the namespace `istio.io/use-waypoint=<name>`, so its services (or
    /// workloads) use it.
    #[arg(long)]
    pub enroll_namespace: bool,
    /// Wait (up to 30 s) until the waypoint is ready.
    #[arg(long)]
    pub wait: bool,
    /// A Kubernetes cluster instead of the local one.
    #[command(flatten)]
    pub target: crate::kube_api::Target,
}

/// Flags of `meshctl waypoint list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this namespace (default: all).
    #[arg(short = 'n', long, conflicts_with = "all_namespaces")]
    pub namespace: Option<String>,
    /// Every namespace (the default).
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = list::Output::Table)]
    pub output: list::Output,
    /// A Kubernetes cluster instead of the local one.
    #[command(flatten)]
    pub target: crate::kube_api::Target,
}

/// Flags of `meshctl waypoint delete`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Namespace of the waypoint.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Name of the waypoint.
    #[arg(long, default_value = "waypoint")]
    pub name: String,
    /// A Kubernetes cluster instead of the local one.
    #[command(flatten)]
    pub target: crate::kube_api::Target,
}

/// Runs a `meshctl waypoint` subcommand.
pub fn run(state: &StateDir, command: &WaypointCommand) -> anyhow::Result<()> {
    match command {
        WaypointCommand::Apply(args) => match args.target.kube() {
            Some(kubeconfig) => kube::apply(kubeconfig, args),
            None => apply(state, args),
        },
        WaypointCommand::List(args) if args.target.kube().is_some() => {
            let rows = kube::list(args.target.kube().flatten(), args)?;
            if rows.is_empty() && args.output == list::Output::Table {
                progress!("no waypoints");
                return Ok(());
            }
            out!("{}", kube::render(&rows, args.output)?.trim_end());
            Ok(())
        }
        WaypointCommand::Delete(args) if args.target.kube().is_some() => {
            kube::delete(args.target.kube().flatten(), args)
        }
        WaypointCommand::List(args) => {
            if let Some(ns) = &args.namespace {
                check_k8s_name("namespace", ns)?;
            }
            let rows = list::rows(state, args.namespace.as_deref())?;
            if rows.is_empty() && args.output == list::Output::Table {
                progress!("no waypoints");
                return Ok(());
            }
            out!("{}", list::render(&rows, args.output)?.trim_end());
            Ok(())
        }
        WaypointCommand::Delete(args) => delete(state, args),
    }
}

/// Reconciles and prints what was done; an error when a waypoint could not be deployed.
pub fn reconcile_and_report(state: &StateDir) -> anyhow::Result<()> {
    deploy::reconcile(state, &mut |line| out!("{line}"))?.into_result()
}

fn apply(state: &StateDir, args: &ApplyArgs) -> anyhow::Result<()> {
    check_k8s_name("namespace", &args.namespace)?;
    // Also a Service's name: a DNS label.
    check_k8s_name("waypoint name", &args.name)?;
    state.load()?;
    let config = ConfigDir::new(state.config_dir());
    let gateway = gateway::render(&args.namespace, &args.name, args.traffic_type);
    let yaml = serde_saphyr::to_string(&gateway).context("encoding the Gateway")?;
    for line in config.apply(&yaml)? {
        out!("{line}");
    }
    if args.enroll_namespace {
        config.label_namespace(&args.namespace, USE_WAYPOINT_LABEL, Some(&args.name))?;
        out!(
            "namespace/{} labeled {USE_WAYPOINT_LABEL}={}",
            args.namespace,
            args.name
        );
    }
    reconcile_and_report(state)?;
    if args.wait {
        wait_ready(state, &args.namespace, &args.name)?;
        out!("waypoint {}/{} is ready", args.namespace, args.name);
    } else {
        out!("waypoint {}/{} applied", args.namespace, args.name);
    }
    Ok(())
}

fn wait_ready(state: &StateDir, namespace: &str, name: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + WAIT_TIMEOUT;
    loop {
        let rows = list::rows(state, Some(namespace))?;
        let row = rows
            .iter()
            .find(|r| r.name == name)
            .with_context(|| format!("waypoint {namespace}/{name} is gone"))?;
        if row.ready {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "waypoint {namespace}/{name} was not ready within {WAIT_TIMEOUT:?}: {}",
                row.reason.as_deref().unwrap_or("-")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn delete(state: &StateDir, args: &DeleteArgs) -> anyhow::Result<()> {
    check_k8s_name("namespace", &args.namespace)?;
    check_k8s_name("waypoint name", &args.name)?;
    state.load()?;
    let config = ConfigDir::new(state.config_dir());
    let (ns, name) = (&args.namespace, &args.name);
    let is_waypoint = config
        .object(Kind::Gateway, ns, name)?
        .is_some_and(|g| gateway::as_waypoint(ns, name, &g).is_some());
    if !is_waypoint {
        bail!("no waypoint {ns}/{name} (see `meshctl waypoint list`)");
    }
    config.remove_object(Kind::Gateway, ns, name)?;
    out!("gateway.gateway.networking.k8s.io/{ns}/{name} deleted");
    if config.namespace_labels(ns)?.get(USE_WAYPOINT_LABEL) == Some(name) {
        config.label_namespace(ns, USE_WAYPOINT_LABEL, None)?;
        out!("namespace/{ns} unlabeled {USE_WAYPOINT_LABEL}");
    }
    reconcile_and_report(state)?;
    out!("waypoint {ns}/{name} deleted");
    Ok(())
}
