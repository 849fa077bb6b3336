//! The node agent: serves the plugin's events on a unix stream socket, captures enrolled pods
//! and hands their network namespaces to ztunnel over ZDS.
//!
//! Tasks (one tokio runtime): the CNI listener (one task per plugin call), the ZDS listener
//! (one task per ztunnel connection; a newer connection replaces the older one). Rule changes
//! run on the blocking pool, each inside the pod's namespace on a thread of its own
//! ([`crate::netns`]).
//!
//! State, in memory only: the enrolled pods by container id, with their namespace handles.
//! It is lost on restart (reconciliation on start is not built).

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context;
use mesh::capture::CaptureOptions;
use mesh::zds::{SeqPacket, SeqPacketListener, ZdsServerConn};
use proto::zds::WorkloadInfo;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::agent_proto::{AgentCommand, AgentReply, AgentRequest};
use crate::enrollment::Enrollment;
use crate::{netns, rules};

/// How long one plugin call may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest request line accepted.
const MAX_REQUEST: u64 = 64 * 1024;
/// How long ztunnel may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long ztunnel may take to ack an add before the plugin call fails.
const ZDS_ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// The agent's settings.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Where ztunnel connects (ZDS).
    pub zds_socket: PathBuf,
    /// Where the plugin connects.
    pub cni_socket: PathBuf,
    /// The cluster id in workload uids (`<cluster>//v1/Pod/<ns>/<name>`).
    pub cluster_id: String,
    /// Capture options (DNS).
    pub capture: CaptureOptions,
}

/// A pod the agent enrolled.
#[derive(Debug, Clone)]
struct Enrolled {
    uid: String,
    info: WorkloadInfo,
    netns: Arc<File>,
}

/// ztunnel's answer to one add: `Err` carries why it was not served.
type AckSender = oneshot::Sender<Result<(), String>>;

#[derive(Debug)]
enum ZdsEvent {
    Add(Enrolled, AckSender),
    Del(String),
}

#[derive(Debug, Default)]
struct State {
    pods: BTreeMap<String, Enrolled>,
    /// The connected ztunnel: its connection number and event queue.
    ztunnel: Option<(u64, mpsc::UnboundedSender<ZdsEvent>)>,
    connections: u64,
}

/// The running agent's shared parts.
struct Agent {
    config: AgentConfig,
    enrollment: Arc<dyn Enrollment>,
    state: Mutex<State>,
}

impl Agent {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a change and forwards it to the connected ztunnel, if any (otherwise the next
    /// connection's snapshot carries it). Returns whether a ztunnel took the event.
    fn publish(
        &self,
        change: impl FnOnce(&mut BTreeMap<String, Enrolled>) -> Option<ZdsEvent>,
    ) -> bool {
        let mut state = self.state();
        let Some(event) = change(&mut state.pods) else {
            return false;
        };
        let sent = state
            .ztunnel
            .as_ref()
            .is_some_and(|(_, tx)| tx.send(event).is_ok());
        if !sent {
            state.ztunnel = None;
        }
        sent
    }
}

/// Binds both sockets, then serves until SIGTERM or SIGINT.
pub async fn run(config: AgentConfig, enrollment: Arc<dyn Enrollment>) -> anyhow::Result<()> {
    for path in [&config.cni_socket, &config.zds_socket] {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
    }
    match std::fs::remove_file(&config.cni_socket) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing {}", config.cni_socket.display()))
        }
        _ => {}
    }
    let cni = UnixListener::bind(&config.cni_socket)
        .with_context(|| format!("binding the CNI socket {}", config.cni_socket.display()))?;
    // Whoever can connect can make the agent enter any namespace path: root only.
    std::fs::set_permissions(&config.cni_socket, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", config.cni_socket.display()))?;
    let zds = SeqPacketListener::bind(&config.zds_socket)
        .with_context(|| format!("binding the ZDS socket {}", config.zds_socket.display()))?;
    tracing::info!(cni_socket = %config.cni_socket.display(), zds_socket = %config.zds_socket.display(), "node agent ready");
    let agent = Arc::new(Agent {
        config,
        enrollment,
        state: Mutex::new(State::default()),
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            accepted = cni.accept() => match accepted {
                Ok((stream, _)) => { tokio::spawn(serve_cni(agent.clone(), stream)); }
                Err(e) => tracing::warn!(error = %e, "accepting a plugin connection"),
            },
            accepted = zds.accept() => match accepted {
                Ok(sock) => { tokio::spawn(serve_ztunnel(agent.clone(), sock)); }
                Err(e) => tracing::warn!(error = %e, "accepting a ztunnel connection"),
            },
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    tracing::info!("node agent stopping");
    let _ = std::fs::remove_file(&agent.config.cni_socket);
    let _ = std::fs::remove_file(&agent.config.zds_socket);
    Ok(())
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

async fn blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> Result<R, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("internal: {e}"))
}

async fn add(agent: &Arc<Agent>, req: AgentRequest) -> AgentReply {
    if req.netns.is_empty() || req.pod_name.is_empty() || req.pod_namespace.is_empty() {
        return failed("add needs netns, pod_name and pod_namespace");
    }
    let enrollment = agent.enrollment.clone();
    let (ns, name) = (req.pod_namespace.clone(), req.pod_name.clone());
    let decision = match blocking(move || enrollment.decide(&ns, &name)).await {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => return failed(format!("deciding enrolment: {e}")),
        Err(e) => return failed(e),
    };
    if !decision.enrolled {
        return AgentReply {
            ok: true,
            enrolled: false,
            error: None,
        };
    }
    let path = PathBuf::from(&req.netns);
    let opts = agent.config.capture.clone();
    let installed = blocking(move || -> Result<File, String> {
        let file = netns::open(&path)
            .map_err(|e| format!("opening network namespace {}: {e}", path.display()))?;
        rules::install(&file, &opts).map_err(|e| format!("installing capture rules: {e}"))?;
        Ok(file)
    })
    .await
    .and_then(|r| r);
    let file = match installed {
        Ok(f) => f,
        Err(e) => return failed(e),
    };
    let pod = Enrolled {
        uid: format!(
            "{}//v1/Pod/{}/{}",
            agent.config.cluster_id, req.pod_namespace, req.pod_name
        ),
        info: WorkloadInfo {
            name: req.pod_name.clone(),
            namespace: req.pod_namespace.clone(),
            service_account: decision.service_account,
        },
        netns: Arc::new(file),
    };
    // The pod is recorded whatever ztunnel says: a later snapshot retries it, and the DEL that
    // follows a failed ADD removes it with its rules.
    let (ack_tx, ack_rx) = oneshot::channel();
    let sent = agent.publish(|pods| {
        pods.insert(req.container_id.clone(), pod.clone());
        Some(ZdsEvent::Add(pod, ack_tx))
    });
    // Fail closed: a pod whose traffic is captured must not start before ztunnel serves it.
    let failure = if !sent {
        format!(
            "capture rules are installed but no ztunnel is connected to the ZDS socket {}: \
             check that the ztunnel DaemonSet pod runs on this node",
            agent.config.zds_socket.display()
        )
    } else {
        match tokio::time::timeout(ZDS_ACK_TIMEOUT, ack_rx).await {
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
        }
    };
    failed(failure)
}

async fn del(agent: &Arc<Agent>, req: AgentRequest) -> AgentReply {
    let mut removed = None;
    agent.publish(|pods| {
        removed = pods.remove(&req.container_id);
        removed.as_ref().map(|p| ZdsEvent::Del(p.uid.clone()))
    });
    let Some(pod) = removed else {
        // Never enrolled, or already deleted: DEL is idempotent.
        return AgentReply {
            ok: true,
            enrolled: false,
            error: None,
        };
    };
    let netns = pod.netns.clone();
    match blocking(move || rules::remove(&netns)).await {
        Ok(Ok(())) => AgentReply {
            ok: true,
            enrolled: false,
            error: None,
        },
        Ok(Err(e)) => failed(format!("removing capture rules: {e}")),
        Err(e) => failed(e),
    }
}

async fn serve_ztunnel(agent: Arc<Agent>, sock: SeqPacket) {
    let conn = match tokio::time::timeout(HELLO_TIMEOUT, ZdsServerConn::accept(sock)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return tracing::warn!(error = %e, "ztunnel hello failed"),
        Err(_) => return tracing::warn!("ztunnel did not say hello in time"),
    };
    // Snapshot and subscription under one lock: no change falls between them.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (id, snapshot): (u64, Vec<Enrolled>) = {
        let mut state = agent.state();
        state.connections += 1;
        let id = state.connections;
        state.ztunnel = Some((id, tx));
        (id, state.pods.values().cloned().collect())
    };
    tracing::info!(pods = snapshot.len(), "ztunnel connected; sending snapshot");
    let result = async {
        for pod in &snapshot {
            // A refused pod is logged by send_add; the snapshot goes on.
            let _refused = send_add(&conn, pod).await?;
        }
        conn.snapshot_sent().await?;
        while let Some(event) = rx.recv().await {
            match event {
                ZdsEvent::Add(pod, ack) => {
                    let result = send_add(&conn, &pod).await;
                    let answer = match result {
                        Ok(answer) => answer,
                        Err(e) => {
                            let _ = ack.send(Err(e.to_string()));
                            return Err(e);
                        }
                    };
                    let _ = ack.send(answer);
                }
                ZdsEvent::Del(uid) => {
                    conn.del(&uid).await?;
                    tracing::info!(uid = %uid, "sent del to ztunnel");
                }
            }
        }
        Ok::<(), mesh::zds::ZdsError>(())
    }
    .await;
    match result {
        Ok(()) => tracing::info!("ztunnel connection replaced by a newer one"),
        Err(e) => {
            tracing::warn!(error = %e, "ztunnel connection ended; the next one gets a snapshot")
        }
    }
    let mut state = agent.state();
    if state
        .ztunnel
        .as_ref()
        .is_some_and(|(current, _)| *current == id)
    {
        state.ztunnel = None;
    }
}

/// Sends one add. `Ok(Err)`: ztunnel refused this pod (the link stays usable); `Err`: the
/// link failed.
async fn send_add(
    conn: &ZdsServerConn,
    pod: &Enrolled,
) -> Result<Result<(), String>, mesh::zds::ZdsError> {
    match conn
        .add(&pod.uid, Some(pod.info.clone()), pod.netns.as_ref())
        .await
    {
        Ok(()) => {
            tracing::info!(uid = %pod.uid, "ztunnel took the pod");
            Ok(Ok(()))
        }
        Err(mesh::zds::ZdsError::Refused(why)) => {
            tracing::warn!(uid = %pod.uid, error = %why, "ztunnel refused the pod");
            Ok(Err(why))
        }
        Err(e) => Err(e),
    }
}
