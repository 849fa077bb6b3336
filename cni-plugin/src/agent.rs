//! The node agent: serves the plugin's events on a unix stream socket, captures enrolled pods,
//! hands their network namespaces to ztunnel over ZDS ([`crate::ztunnel`]), keeps the node in
//! line with the config dir's labels ([`crate::pods`], [`crate::reconcile`]) and, when asked,
//! installs itself into the node's CNI config ([`crate::install`]).
//!
//! Start-up: copy the binary (when installing), bind both sockets (mode 0600), serve the CNI
//! socket, then the start pass: one reconcile pass (pods that exist already are found by IP,
//! [`crate::scan`]), retried every reconcile interval until it could read the config source.
//! Only then are ztunnel connections accepted, so the first snapshot holds every enrolled pod
//! (an agent restart loses none) and is never the empty one a config source that cannot be
//! read would give (ztunnel would drop every pod of the node). Then the reconcile loop starts,
//! the plugin is installed into the CNI config (when installing: waits for the primary CNI's
//! config), "node agent ready" is logged, and the install is re-checked in the background.
//!
//! Tasks (one tokio runtime): the CNI listener (one task per plugin call), the ZDS listener
//! (one task per ztunnel connection), the reconcile loop, the rule check
//! ([`crate::repair`]), the install check. Every enrol and
//! release (CNI add/del, reconcile) runs under one async mutex. Rule changes and scans run on
//! the blocking pool, each namespace entered on a thread of its own ([`crate::netns`]).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use mesh::logging::LogReload;
use mesh::zds::SeqPacketListener;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::agent_proto::{AgentCommand, AgentReply, AgentRequest};
use crate::enrollment::Enrollment;
use crate::install;
use crate::metrics::AgentMetrics;
use crate::node::NodeCtx;
use crate::pods::{self, Added, Pass, Pods};
use crate::ztunnel::Hub;

/// How long one plugin call may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest request line accepted.
const MAX_REQUEST: u64 = 64 * 1024;
/// Pause after a failed accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How long ztunnel may take to ack an add before the plugin call fails.
const ZDS_ACK_TIMEOUT: Duration = Duration::from_secs(10);

pub use crate::node::{AgentConfig, InstallDirs};

/// The running agent: what every part needs ([`NodeCtx`], through `Deref`) and the pods it
/// manages, under one lock (every enrol and release happens under it, one at a time).
pub(crate) struct Agent {
    ctx: NodeCtx,
    pub(crate) pods: tokio::sync::Mutex<Pods>,
}

impl std::ops::Deref for Agent {
    type Target = NodeCtx;

    fn deref(&self) -> &NodeCtx {
        &self.ctx
    }
}

/// Binds a unix socket with `bind` at `path`, then makes it root-only: whoever can connect
/// to the CNI socket can make the agent enter any namespace path, and whoever connects to the
/// ZDS socket receives every enrolled pod's network namespace.
fn bind_private<L>(
    path: &Path,
    what: &str,
    bind: impl FnOnce(&Path) -> std::io::Result<L>,
) -> anyhow::Result<L> {
    let listener =
        bind(path).with_context(|| format!("binding the {what} socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))?;
    Ok(listener)
}

/// Binds `addr` for the `what` HTTP server, when one is configured.
async fn bind_http(
    addr: Option<std::net::SocketAddr>,
    what: &str,
) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    let Some(addr) = addr else { return Ok(None) };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr} ({what})"))?;
    tracing::info!(%addr, "serving {what}");
    Ok(Some(listener))
}

/// Starts (see the module docs), then serves until SIGTERM or SIGINT. `log_reload` backs the
/// admin endpoint's `/logging`.
pub async fn run(
    config: AgentConfig,
    enrollment: Arc<dyn Enrollment>,
    log_reload: LogReload,
) -> anyhow::Result<()> {
    for path in [&config.cni_socket, &config.zds_socket] {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
    }
    // The plugin runs with another working directory: the conflist needs an absolute path.
    let agent_socket = std::path::absolute(&config.cni_socket)
        .with_context(|| format!("resolving {}", config.cni_socket.display()))?;
    if let Some(dirs) = &config.install {
        let (target, written) = install::install_binary(Path::new("/proc/self/exe"), &dirs.bin_dir)
            .context("installing the plugin binary")?;
        tracing::info!(path = %target.display(), changed = written, "installed the plugin binary");
    }
    match std::fs::remove_file(&config.cni_socket) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing {}", config.cni_socket.display()))
        }
        _ => {}
    }
    let cni = bind_private(&config.cni_socket, "CNI", |p| UnixListener::bind(p))?;
    let zds = bind_private(&config.zds_socket, "ZDS", SeqPacketListener::bind)?;
    let monitoring = bind_http(config.monitoring_addr, "monitoring").await?;
    let admin = bind_http(config.admin_addr, "admin").await?;
    let metrics = Arc::new(AgentMetrics::default().with_process(tokio::runtime::Handle::current()));
    let hub = Arc::new(Hub::default());
    let agent = Arc::new(Agent {
        ctx: NodeCtx::new(config, enrollment, hub.clone(), metrics.clone()),
        pods: tokio::sync::Mutex::new(Pods::default()),
    });
    let mut tasks = JoinSet::new();
    if let Some(listener) = monitoring {
        let handler = crate::metrics::metrics_handler(metrics, hub);
        tasks.spawn(async move { mesh::http_server::serve(listener, handler).await });
    }
    if let Some(listener) = admin {
        let handler = crate::metrics::admin_handler(log_reload);
        tasks.spawn(async move { mesh::http_server::serve(listener, handler).await });
    }
    // Served from the start: DEL works, and ADD says why it fails while the agent starts.
    tasks.spawn(cni_loop(agent.clone(), cni));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        () = start(agent.clone(), zds, agent_socket, &mut tasks) => {}
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("node agent stopping");
    tasks.abort_all();
    // The CNI config entry stays: while the agent is down, ADD fails closed (code 11).
    let _ = std::fs::remove_file(&agent.config.cni_socket);
    let _ = std::fs::remove_file(&agent.config.zds_socket);
    Ok(())
}

/// The start-up after the sockets are bound (module docs); then waits forever (the caller
/// stops it on a signal).
async fn start(
    agent: Arc<Agent>,
    zds: SeqPacketListener,
    agent_socket: PathBuf,
    tasks: &mut JoinSet<()>,
) {
    let interval = agent.config.reconcile_interval;
    loop {
        let pass = pods::reconcile(&agent, &agent.pods, Pass::Start)
            .instrument(tracing::info_span!("start pass"))
            .await;
        match pass {
            Ok(()) => break,
            Err(e) => tracing::warn!(
                error = %e,
                retry_in = ?interval,
                "cannot read the config dir for the start pass; not accepting ztunnel until it \
                 can (an empty snapshot would make ztunnel drop every pod of this node)"
            ),
        }
        tokio::time::sleep(interval).await;
    }
    agent.mark_started();
    // From here on ztunnel's first snapshot holds every enrolled pod.
    tasks.spawn(zds_loop(agent.clone(), zds));
    tasks.spawn(reconcile_loop(agent.clone()));
    if let Some(interval) = agent.config.rule_check_interval {
        let agent = agent.clone();
        tasks.spawn(async move { crate::repair::run(&agent, &agent.pods, interval).await });
    }
    if let Some(dirs) = &agent.config.install {
        let mut keeper = install::Keeper::new(dirs.conf_dir.clone(), agent_socket);
        keeper.until_installed().await;
        tasks.spawn(keeper.keep());
    }
    tracing::info!(
        cni_socket = %agent.config.cni_socket.display(),
        zds_socket = %agent.config.zds_socket.display(),
        node = %agent.config.node_name,
        enrolled = agent.hub.enrolled_count(),
        "node agent ready"
    );
    std::future::pending::<()>().await;
}

async fn cni_loop(agent: Arc<Agent>, cni: UnixListener) {
    loop {
        match cni.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_cni(agent.clone(), stream));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accepting a plugin connection");
                // E.g. out of file descriptors: do not spin.
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

async fn zds_loop(agent: Arc<Agent>, zds: SeqPacketListener) {
    loop {
        match zds.accept().await {
            Ok(sock) => {
                tokio::spawn(agent.hub.clone().serve(sock));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accepting a ztunnel connection");
                // E.g. out of file descriptors: do not spin.
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Reconciles every `reconcile_interval`, after the start pass.
async fn reconcile_loop(agent: Arc<Agent>) {
    let mut tick = tokio::time::interval(agent.config.reconcile_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate; the start pass just ran
    let mut source_error: Option<String> = None;
    loop {
        tick.tick().await;
        let pass = pods::reconcile(&agent, &agent.pods, Pass::Periodic)
            .instrument(tracing::info_span!("reconcile"))
            .await;
        match pass {
            Ok(()) => {
                if source_error.take().is_some() {
                    tracing::info!("config dir readable again; reconciling");
                }
            }
            // Once per distinct error: the pass repeats every interval.
            Err(e) if source_error.as_ref() != Some(&e) => {
                tracing::warn!(error = %e, "cannot read the config dir; reconcile changes nothing until it can");
                source_error = Some(e);
            }
            Err(_) => {}
        }
    }
}

async fn serve_cni(agent: Arc<Agent>, stream: UnixStream) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let read = tokio::time::timeout(
        REQUEST_TIMEOUT,
        BufReader::new(read.take(MAX_REQUEST)).read_line(&mut line),
    )
    .await;
    let reply = match read {
        Err(_) => failed("no request within 10 s"),
        Ok(Err(e)) => failed(format!("reading the request: {e}")),
        Ok(Ok(_)) => match serde_json::from_str::<AgentRequest>(&line) {
            Err(e) => failed(format!("request does not decode: {e}")),
            Ok(req) => handle(&agent, req).await,
        },
    };
    let mut bytes = serde_json::to_vec(&reply).unwrap_or_default();
    bytes.push(b'\n');
    if let Err(e) = write.write_all(&bytes).await {
        tracing::warn!(error = %e, "replying to the plugin");
    }
}

fn failed(error: impl Into<String>) -> AgentReply {
    AgentReply {
        ok: false,
        enrolled: false,
        error: Some(error.into()),
    }
}

async fn handle(agent: &Arc<Agent>, req: AgentRequest) -> AgentReply {
    let span = tracing::info_span!("cni", command = ?req.command, container = %req.container_id, pod = %format!("{}/{}", req.pod_namespace, req.pod_name));
    if req.container_id.is_empty() {
        return failed("container_id is empty");
    }
    let reply = match req.command {
        AgentCommand::Add => add(agent, req).instrument(span.clone()).await,
        AgentCommand::Del => del(agent, req).instrument(span.clone()).await,
    };
    let _enter = span.enter();
    match &reply.error {
        None => tracing::info!(enrolled = reply.enrolled, "done"),
        Some(e) => tracing::warn!(error = %e, "failed"),
    }
    reply
}

async fn add(agent: &Arc<Agent>, req: AgentRequest) -> AgentReply {
    if req.netns.is_empty() || req.pod_name.is_empty() || req.pod_namespace.is_empty() {
        return failed("add needs netns, pod_name and pod_namespace");
    }
    let added = agent.pods.lock().await.add(agent, &req).await;
    // The lock is released: waiting for ztunnel does not hold up other pods.
    let ack = match added {
        Err(e) => return failed(e),
        Ok(Added::NotEnrolled) => {
            return AgentReply {
                ok: true,
                enrolled: false,
                error: None,
            }
        }
        Ok(Added::Enrolled(ack)) => ack,
    };
    // Fail closed: a pod whose traffic is captured must not start before ztunnel serves it.
    let failure = match ack {
        None => format!(
            "capture rules are installed but no ztunnel is connected to the ZDS socket {}: \
             check that the ztunnel DaemonSet pod runs on this node",
            agent.config.zds_socket.display()
        ),
        Some(ack) => match tokio::time::timeout(ZDS_ACK_TIMEOUT, ack).await {
            Ok(Ok(Ok(()))) => {
                return AgentReply {
                    ok: true,
                    enrolled: true,
                    error: None,
                }
            }
            Ok(Ok(Err(e))) => format!("ztunnel did not take the pod: {e}"),
            Ok(Err(_)) => "the ztunnel connection ended before it acked the pod".into(),
            Err(_) => format!("ztunnel did not ack the pod within {ZDS_ACK_TIMEOUT:?}"),
        },
    };
    failed(failure)
}

async fn del(agent: &Arc<Agent>, req: AgentRequest) -> AgentReply {
    // Never enrolled, or already deleted: DEL is idempotent.
    match agent.pods.lock().await.del(agent, &req).await {
        Ok(_) => AgentReply {
            ok: true,
            enrolled: false,
            error: None,
        },
        Err(e) => failed(e),
    }
}
