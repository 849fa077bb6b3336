//! meshctl: the command line of the mesh.
//!
//! A command-line tool, not a daemon: results on stdout, progress lines and logs (off unless
//! `RUST_LOG` asks) on stderr. It runs a local cluster on this machine's kernel networking
//! (`cluster`, `pod`, `get`), changes its config (`apply`, `delete`, `label`), explains policy
//! decisions (`authz check`), deploys waypoints (`waypoint`); `demo` narrates the mesh on a local cluster. See `ARCHITECTURE.md`.

#![forbid(unsafe_code)]

/// Prints a result line on stdout. A closed stdout (`meshctl get pods | head`) is not an error.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// Prints a progress or warning line on stderr.
macro_rules! progress {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod admin;
mod authz;
mod cluster;
mod cni_runtime;
mod config_dir;
mod debug;
mod demo;
mod http_echo;
mod inspect;
mod install;
mod kube_api;
mod netns;
mod pod;
mod port_forward;
mod process;
mod proxy_status;
mod reach;
mod resources;
mod sys;
mod table;
mod top;
mod waypoint;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use cluster::state::StateDir;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// meshctl, the command line of the ambient mesh (Istio ambient compatible).
///
/// `cluster up` builds a local cluster out of network namespaces (nodes and pods on real
/// kernel networking) running istiod-lite, a ztunnel and a CNI node agent per node; `pod run`
/// starts pods in it, `label ns` and `apply` enrol them and set policy, `get pods` shows
/// which are captured, `authz check` explains a policy decision, `waypoint apply` deploys a
/// namespace's L7 proxy. Needs root.
#[derive(Debug, Parser)]
#[command(name = "meshctl", version)]
struct Cli {
    /// The local cluster's state directory (cluster.json, config, logs, node and pod files).
    #[arg(
        long,
        global = true,
        env = "MESHCTL_STATE_DIR",
        default_value = "/var/lib/meshctl"
    )]
    state_dir: PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A local cluster: up, down, status, start|stop|restart COMPONENT.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Roll a component over to a new process without dropping a connection:
    /// `rollout restart ztunnel --node N` (as a DaemonSet rolling update would).
    #[command(subcommand)]
    Rollout(cluster::rollout::RolloutCommand),
    /// Pods: run, exec, delete.
    #[command(subcommand)]
    Pod(PodCommand),
    /// List objects.
    #[command(subcommand)]
    Get(GetCommand),
    /// Create or update the objects of a YAML file (policies, services, namespaces).
    Apply(resources::FileArgs),
    /// Delete the objects of a YAML file.
    Delete(resources::FileArgs),
    /// Set (`key=value`) or remove (`key-`) labels.
    #[command(subcommand)]
    Label(LabelCommand),
    /// Authorization policy tools.
    #[command(subcommand)]
    Authz(AuthzCommand),
    /// Waypoints (the L7 proxy of a namespace): apply, list, delete.
    #[command(subcommand)]
    Waypoint(waypoint::WaypointCommand),
    /// The mesh in five minutes: a 2-node cluster, a request before and after enrolment, the
    /// identities and metrics it produced; then tear down (or `--keep`).
    Demo(demo::DemoArgs),
    /// What a node's ztunnel holds: workloads, services, policies, certificates.
    #[command(name = "ztunnel-config", subcommand)]
    ZtunnelConfig(debug::ZtunnelConfig),
    /// Every proxy connected to istiod-lite, and per resource type whether it is SYNCED,
    /// STALE or NACKed (with the error).
    ProxyStatus(proxy_status::ProxyStatusArgs),
    /// A live view of the mesh's traffic per node (and `-w` per workload), from the
    /// components' metrics; `-o json` prints one snapshot.
    Top(top::TopArgs),
    /// A component's log: istiod-lite, ztunnel, cni (`--node`), waypoint (`-n`); `-f` follows.
    Logs(debug::LogsArgs),
    /// Install the mesh on a Kubernetes cluster (server-side apply through the kubeconfig),
    /// or print its manifests (`--dry-run`).
    Install(install::InstallArgs),
    /// Remove the mesh from a Kubernetes cluster (the CRDs stay unless `--purge`).
    Uninstall(install::UninstallArgs),
    /// A tiny HTTP/1.1 server answering with the caller's address and the request head (the
    /// demo's workload; needs no image).
    HttpEcho(http_echo::HttpEchoArgs),
}

#[derive(Debug, Subcommand)]
enum PodCommand {
    /// Start a pod: network namespace, CNI ADD, the command detached. Prints its IP.
    Run(pod::RunArgs),
    /// Run a command in a pod's network namespace, in the foreground; its exit status.
    Exec(pod::ExecArgs),
    /// Stop a pod's processes, CNI DEL, delete its network namespace.
    Delete(pod::DeleteArgs),
}

#[derive(Debug, Subcommand)]
enum GetCommand {
    /// Pods: NAME NAMESPACE NODE IP SERVICE-ACCOUNT CAPTURED.
    #[command(alias = "pod")]
    Pods(inspect::GetPodsArgs),
}

#[derive(Debug, Subcommand)]
enum LabelCommand {
    /// Label a namespace (`istio.io/dataplane-mode=ambient` enrols its pods).
    #[command(alias = "namespace")]
    Ns(resources::LabelNsArgs),
}

#[derive(Debug, Subcommand)]
enum AuthzCommand {
    /// Would the destination's ztunnel allow FROM → TO:PORT? Exit status 0 allowed,
    /// 1 denied, 2 could not tell (an error).
    Check(inspect::AuthzCheckArgs),
}

fn init_tracing() {
    // A CLI: quiet unless asked. Logs go to stderr so stdout stays the results.
    let (filter, refused) =
        mesh::logging::filter_from_env(tracing_subscriber::filter::LevelFilter::WARN);
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .init();
    if let Some(refused) = refused {
        tracing::warn!("{refused}");
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let state = StateDir::new(&cli.state_dir);
    let done = |r: anyhow::Result<()>| r.map(|()| ExitCode::SUCCESS);
    match cli.command {
        Command::Cluster(cmd) => done(cluster::run(&state, &cmd)),
        Command::Rollout(cmd) => done(cluster::rollout::run(&state, &cmd)),
        Command::Pod(PodCommand::Run(args)) => done(pod::run(&state, &args)),
        Command::Pod(PodCommand::Exec(args)) => pod::exec(&state, &args),
        Command::Pod(PodCommand::Delete(args)) => done(pod::delete(&state, &args)),
        Command::Get(GetCommand::Pods(args)) => done(inspect::get_pods(&state, &args)),
        Command::Apply(args) => done(resources::apply(&state, &args)),
        Command::Delete(args) => done(resources::delete(&state, &args)),
        Command::Label(LabelCommand::Ns(args)) => done(resources::label_ns(&state, &args)),
        Command::Authz(AuthzCommand::Check(args)) => inspect::authz_check(&state, &args),
        Command::Waypoint(cmd) => done(waypoint::run(&state, &cmd)),
        Command::Demo(args) => done(demo::run(&args, &cli.state_dir)),
        Command::ZtunnelConfig(what) => done(debug::ztunnel_config(&state, &what)),
        Command::Logs(args) => done(debug::logs(&state, &args)),
        Command::ProxyStatus(args) => done(proxy_status::run(&state, &args)),
        Command::Top(args) => done(top::run(&state, &args)),
        Command::Install(args) => done(install::install(&args)),
        Command::Uninstall(args) => done(install::uninstall(&args)),
        Command::HttpEcho(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            done(runtime.block_on(http_echo::run(args)))
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    tracing::debug!(?cli, "arguments");
    // `authz check` keeps 1 for "denied"; its errors are 2, like grep's.
    let error_code = match cli.command {
        Command::Authz(_) => 2,
        _ => 1,
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            progress!("meshctl: error: {e:#}");
            ExitCode::from(error_code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("meshctl").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    #[test]
    fn cluster_commands_parse() {
        let cli = parse(&["cluster", "up", "--nodes", "3", "--no-mesh", "--name", "t1"]);
        let Command::Cluster(cluster::ClusterCommand::Up(up)) = cli.command else {
            panic!("not up: {cli:?}");
        };
        assert_eq!((up.nodes, up.no_mesh, up.name.as_str()), (3, true, "t1"));
        let cli = parse(&["cluster", "up"]);
        let Command::Cluster(cluster::ClusterCommand::Up(up)) = cli.command else {
            panic!("not up");
        };
        assert_eq!((up.nodes, up.no_mesh, up.name.as_str()), (2, false, "mesh"));
        assert!(Cli::try_parse_from(["meshctl", "cluster", "up", "--nodes", "0"]).is_err());
        let cli = parse(&["cluster", "restart", "ztunnel", "--node", "n2"]);
        let Command::Cluster(cluster::ClusterCommand::Restart(c)) = cli.command else {
            panic!("not restart");
        };
        assert_eq!(c.component, cluster::Component::Ztunnel);
        assert_eq!(c.node.as_deref(), Some("n2"));
        assert!(Cli::try_parse_from(["meshctl", "cluster", "start", "proxy"]).is_err());
    }

    #[test]
    fn pod_commands_keep_the_command_after_the_double_dash() {
        let cli = parse(&[
            "--state-dir",
            "/tmp/s",
            "pod",
            "run",
            "web",
            "-n",
            "demo",
            "--sa",
            "web",
            "--labels",
            "app=web,tier=front",
            "--node",
            "n2",
            "--",
            "sleep",
            "--flag",
        ]);
        assert_eq!(cli.state_dir, PathBuf::from("/tmp/s"));
        let Command::Pod(PodCommand::Run(run)) = cli.command else {
            panic!("not pod run");
        };
        assert_eq!(run.namespace, "demo");
        assert_eq!(run.service_account, "web");
        assert_eq!(run.labels, ["app=web", "tier=front"]);
        assert_eq!(run.node.as_deref(), Some("n2"));
        assert_eq!(run.command, ["sleep", "--flag"]);
        let cli = parse(&["pod", "exec", "web", "-n", "demo", "--", "ip", "-4", "addr"]);
        let Command::Pod(PodCommand::Exec(exec)) = cli.command else {
            panic!("not pod exec");
        };
        assert_eq!(exec.command, ["ip", "-4", "addr"]);
        assert!(Cli::try_parse_from(["meshctl", "pod", "exec", "web"]).is_err());
    }

    #[test]
    fn waypoint_commands_parse_with_istioctl_s_flags() {
        let cli = parse(&[
            "waypoint",
            "apply",
            "-n",
            "shop",
            "--for",
            "all",
            "--enroll-namespace",
        ]);
        let Command::Waypoint(waypoint::WaypointCommand::Apply(a)) = cli.command else {
            panic!("not waypoint apply");
        };
        assert_eq!(
            (a.namespace.as_str(), a.name.as_str(), a.traffic_type),
            ("shop", "waypoint", waypoint::gateway::TrafficType::All)
        );
        assert!(a.enroll_namespace && !a.wait);
        let cli = parse(&["waypoint", "apply"]);
        let Command::Waypoint(waypoint::WaypointCommand::Apply(a)) = cli.command else {
            panic!("not waypoint apply");
        };
        assert_eq!(a.traffic_type, waypoint::gateway::TrafficType::Service);
        assert_eq!(a.namespace, "default");
        assert!(Cli::try_parse_from(["meshctl", "waypoint", "apply", "--for", "pods"]).is_err());
        let cli = parse(&["waypoint", "list", "-A", "-o", "json"]);
        let Command::Waypoint(waypoint::WaypointCommand::List(l)) = cli.command else {
            panic!("not waypoint list");
        };
        assert!(l.all_namespaces && l.namespace.is_none());
        assert_eq!(l.output, waypoint::list::Output::Json);
        assert!(Cli::try_parse_from(["meshctl", "waypoint", "list", "-A", "-n", "x"]).is_err());
        let cli = parse(&["waypoint", "delete", "-n", "shop", "--name", "wp"]);
        let Command::Waypoint(waypoint::WaypointCommand::Delete(d)) = cli.command else {
            panic!("not waypoint delete");
        };
        assert_eq!((d.namespace.as_str(), d.name.as_str()), ("shop", "wp"));
    }

    #[test]
    fn config_and_inspection_commands_parse() {
        let cli = parse(&["get", "pods", "-n", "demo"]);
        let Command::Get(GetCommand::Pods(get)) = cli.command else {
            panic!("not get pods");
        };
        assert_eq!(get.namespace.as_deref(), Some("demo"));
        let cli = parse(&["apply", "-f", "policy.yaml"]);
        assert!(matches!(cli.command, Command::Apply(a) if a.file.as_os_str() == "policy.yaml"));
        let cli = parse(&[
            "label",
            "ns",
            "demo",
            "istio.io/dataplane-mode=ambient",
            "x-",
        ]);
        let Command::Label(LabelCommand::Ns(label)) = cli.command else {
            panic!("not label ns");
        };
        assert_eq!(label.labels, ["istio.io/dataplane-mode=ambient", "x-"]);
        let cli = parse(&[
            "authz",
            "check",
            "--from",
            "a/client",
            "--to",
            "b/server:80",
        ]);
        let Command::Authz(AuthzCommand::Check(check)) = cli.command else {
            panic!("not authz check");
        };
        assert_eq!(
            (check.from.as_str(), check.to.as_str()),
            ("a/client", "b/server:80")
        );
    }
}
