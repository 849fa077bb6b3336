//! A fake CNI node agent: the listening side of ZDS, driven by the test.
//!
//! It runs on its own thread with its own tokio runtime, so its blocking methods work from
//! plain and async tests alike (as long as whatever must answer — ztunnel, a separate
//! process — is not on the blocked thread).

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Context};
use mesh::zds::{SeqPacketListener, ZdsError, ZdsServerConn};
use proto::zds::WorkloadInfo;
use tokio::sync::mpsc;

use crate::topology::Pod;

/// How long ztunnel may take to say hello after connecting.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long ztunnel may take to ack one message.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// What happened to an add or del.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// ztunnel is connected and acked it.
    Acked,
    /// No ztunnel is connected (or its link just broke): the change is recorded and goes out
    /// with the next connection's snapshot.
    Queued,
}

/// How the agent behaves.
#[derive(Debug, Clone)]
pub struct ZdsAgentOptions {
    /// On every new ztunnel connection, send an add for each recorded pod, then
    /// `snapshot_sent` (what the real agent does). When false, nothing is sent until the
    /// test does it (`add`, `keep`, `snapshot_sent`, `send_raw`).
    pub auto_snapshot: bool,
}

impl Default for ZdsAgentOptions {
    fn default() -> Self {
        ZdsAgentOptions {
            auto_snapshot: true,
        }
    }
}

type Reply<T> = std_mpsc::Sender<anyhow::Result<T>>;

enum Cmd {
    Add {
        uid: String,
        info: Option<WorkloadInfo>,
        netns: File,
        reply: Reply<Delivery>,
    },
    Del {
        uid: String,
        reply: Reply<Delivery>,
    },
    Keep {
        uid: String,
        reply: Reply<()>,
    },
    SnapshotSent {
        reply: Reply<()>,
    },
    Raw {
        bytes: Vec<u8>,
        fds: Vec<OwnedFd>,
        reply: Reply<()>,
    },
    Shutdown,
}

/// The fake CNI agent: listens on a ZDS socket and sends pods to whichever ztunnel is
/// connected (a reconnecting ztunnel replaces the previous link and gets the snapshot again).
#[derive(Debug)]
pub struct ZdsAgent {
    path: PathBuf,
    cmds: mpsc::UnboundedSender<Cmd>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Shared {
    connections: AtomicU64,
    events: Mutex<Vec<String>>,
}

impl Shared {
    fn event(&self, e: String) {
        self.events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(e);
    }
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cmd")
    }
}

impl ZdsAgent {
    /// Listens at `socket_path` (replacing a stale socket file) with default options.
    pub fn start(socket_path: &Path) -> anyhow::Result<ZdsAgent> {
        ZdsAgent::start_with(socket_path, ZdsAgentOptions::default())
    }

    /// Listens at `socket_path` with `opts`.
    pub fn start_with(socket_path: &Path, opts: ZdsAgentOptions) -> anyhow::Result<ZdsAgent> {
        let (cmds, cmds_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::default());
        let (ready_tx, ready_rx) = std_mpsc::channel();
        let path = socket_path.to_path_buf();
        let thread = {
            let shared = shared.clone();
            let path = path.clone();
            std::thread::Builder::new()
                .name("zds-agent".into())
                .spawn(move || {
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = ready_tx.send(Err(anyhow!("tokio runtime: {e}")));
                            return;
                        }
                    };
                    rt.block_on(async move {
                        let listener = match SeqPacketListener::bind(&path) {
                            Ok(l) => l,
                            Err(e) => {
                                let _ =
                                    ready_tx.send(Err(anyhow!("binding {}: {e}", path.display())));
                                return;
                            }
                        };
                        let _ = ready_tx.send(Ok(()));
                        run(listener, cmds_rx, opts, shared).await;
                    });
                })?
        };
        ready_rx
            .recv()
            .context("the ZDS agent thread died while starting")??;
        Ok(ZdsAgent {
            path,
            cmds,
            shared,
            thread: Some(thread),
        })
    }

    /// The socket path ztunnel connects to (`--inpod-uds`).
    pub fn socket_path(&self) -> &Path {
        &self.path
    }

    /// How many ztunnel connections have said hello and, with `auto_snapshot`, acked the
    /// whole snapshot.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Waits until [`ZdsAgent::connections`] reaches `n`.
    pub fn wait_connections(&self, n: u64, timeout: Duration) -> anyhow::Result<()> {
        crate::wait_until(
            &format!("ztunnel connection #{n} on {}", self.path.display()),
            timeout,
            || self.connections() >= n,
        )
        .with_context(|| format!("agent events: {:?}", self.events()))
    }

    /// What happened so far, one line per event (connections, acks, refusals, broken links).
    pub fn events(&self) -> Vec<String> {
        self.shared
            .events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Cmd) -> anyhow::Result<T> {
        let (tx, rx) = std_mpsc::channel();
        self.cmds
            .send(make(tx))
            .map_err(|_| anyhow!("the ZDS agent has stopped"))?;
        rx.recv()
            .map_err(|_| anyhow!("the ZDS agent has stopped"))?
    }

    /// Enrols `pod`: records it and, when ztunnel is connected, sends an add carrying the
    /// pod's network namespace and waits for the ack. An error ack is an error (and the pod
    /// is not recorded).
    pub fn add(&self, pod: &Pod) -> anyhow::Result<Delivery> {
        let info = WorkloadInfo {
            name: pod.name.clone(),
            namespace: pod.namespace.clone(),
            service_account: pod.sa.clone(),
        };
        self.add_with(&pod.uid, Some(info), &pod.netns_name)
    }

    /// [`ZdsAgent::add`] with explicit fields: `netns` is a name under `/var/run/netns/`.
    pub fn add_with(
        &self,
        uid: &str,
        info: Option<WorkloadInfo>,
        netns: &str,
    ) -> anyhow::Result<Delivery> {
        let path = Path::new("/var/run/netns").join(netns);
        let netns = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        self.call(|reply| Cmd::Add {
            uid: uid.to_string(),
            info,
            netns,
            reply,
        })
    }

    /// Un-enrols the pod with `uid`: forgets it and, when connected, sends a del.
    pub fn del(&self, uid: &str) -> anyhow::Result<Delivery> {
        self.call(|reply| Cmd::Del {
            uid: uid.to_string(),
            reply,
        })
    }

    /// Sends a keep for `uid` on the current link (no descriptor).
    pub fn keep(&self, uid: &str) -> anyhow::Result<()> {
        self.call(|reply| Cmd::Keep {
            uid: uid.to_string(),
            reply,
        })
    }

    /// Sends `snapshot_sent` on the current link.
    pub fn snapshot_sent(&self) -> anyhow::Result<()> {
        self.call(|reply| Cmd::SnapshotSent { reply })
    }

    /// Sends raw bytes with descriptors on the current link and waits for the ack (malformed
    /// input tests): an error ack comes back as an error mentioning ztunnel's reason.
    pub fn send_raw(&self, bytes: Vec<u8>, fds: Vec<OwnedFd>) -> anyhow::Result<()> {
        self.call(|reply| Cmd::Raw { bytes, fds, reply })
    }
}

impl Drop for ZdsAgent {
    fn drop(&mut self) {
        let _ = self.cmds.send(Cmd::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

struct PodEntry {
    uid: String,
    info: Option<WorkloadInfo>,
    netns: File,
}

/// One request to ztunnel.
enum Op<'a> {
    Add(&'a PodEntry),
    Del(&'a str),
    Keep(&'a str),
    SnapshotSent,
    Raw(&'a [u8], &'a [OwnedFd]),
}

impl Op<'_> {
    fn describe(&self) -> String {
        match self {
            Op::Add(p) => format!("add {}", p.uid),
            Op::Del(uid) => format!("del {uid}"),
            Op::Keep(uid) => format!("keep {uid}"),
            Op::SnapshotSent => "snapshot_sent".into(),
            Op::Raw(bytes, fds) => format!("raw {} bytes, {} fds", bytes.len(), fds.len()),
        }
    }
}

struct State {
    pods: Vec<PodEntry>,
    conn: Option<ZdsServerConn>,
    shared: Arc<Shared>,
}

async fn run(
    listener: SeqPacketListener,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    opts: ZdsAgentOptions,
    shared: Arc<Shared>,
) {
    let (conn_tx, mut conns) = mpsc::unbounded_channel();
    let accept_shared = shared.clone();
    tokio::spawn(async move {
        loop {
            let sock = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    accept_shared.event(format!("accept failed: {e}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let shared = accept_shared.clone();
            let conn_tx = conn_tx.clone();
            // Hello in its own task: a silent peer must not hold up the next connection.
            tokio::spawn(async move {
                match tokio::time::timeout(HELLO_TIMEOUT, ZdsServerConn::accept(sock)).await {
                    Ok(Ok(conn)) => {
                        let _ = conn_tx.send(conn);
                    }
                    Ok(Err(e)) => shared.event(format!("bad hello: {e}")),
                    Err(_) => shared.event("no hello in time".into()),
                }
            });
        }
    });
    let mut state = State {
        pods: Vec::new(),
        conn: None,
        shared: shared.clone(),
    };
    loop {
        tokio::select! {
            Some(conn) = conns.recv() => {
                shared.event("ztunnel connected".into());
                // A newer connection replaces the old one (ztunnel restarted).
                state.conn = Some(conn);
                if opts.auto_snapshot && !state.snapshot().await {
                    continue;
                }
                shared.connections.fetch_add(1, Ordering::SeqCst);
            }
            cmd = cmds.recv() => match cmd {
                None | Some(Cmd::Shutdown) => break,
                Some(cmd) => state.handle(cmd).await,
            },
        }
    }
}

impl State {
    /// Sends one request on the current link and waits for the ack (bounded by
    /// [`ACK_TIMEOUT`]). `None` when no ztunnel is connected; a broken link is dropped.
    async fn exchange(&mut self, op: Op<'_>) -> Option<Result<(), ZdsError>> {
        let what = op.describe();
        let conn = self.conn.as_ref()?;
        let request = async {
            match op {
                Op::Add(p) => conn.add(&p.uid, p.info.clone(), &p.netns).await,
                Op::Del(uid) => conn.del(uid).await,
                Op::Keep(uid) => conn.keep(uid).await,
                Op::SnapshotSent => conn.snapshot_sent().await,
                Op::Raw(bytes, fds) => {
                    let borrowed: Vec<_> = fds.iter().map(AsFd::as_fd).collect();
                    conn.send_raw(bytes, &borrowed).await
                }
            }
        };
        let res = match tokio::time::timeout(ACK_TIMEOUT, request).await {
            Ok(r) => r,
            Err(_) => Err(ZdsError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no ack in time",
            ))),
        };
        match &res {
            Ok(()) => self.shared.event(format!("{what}: acked")),
            Err(ZdsError::Refused(e)) => self.shared.event(format!("{what}: refused: {e}")),
            Err(e) => {
                self.shared.event(format!("{what}: link lost: {e}"));
                self.conn = None;
            }
        }
        Some(res)
    }

    /// Sends every recorded pod, then `snapshot_sent`. False when the link broke.
    async fn snapshot(&mut self) -> bool {
        let pods = std::mem::take(&mut self.pods);
        let mut kept = Vec::with_capacity(pods.len());
        let mut broken = false;
        for pod in pods {
            if !broken {
                match self.exchange(Op::Add(&pod)).await {
                    // Refused: ztunnel does not want it; forget it as the real agent would.
                    Some(Err(ZdsError::Refused(_))) => continue,
                    Some(Err(_)) | None => broken = true,
                    Some(Ok(())) => {}
                }
            }
            kept.push(pod);
        }
        self.pods = kept;
        !broken && matches!(self.exchange(Op::SnapshotSent).await, Some(Ok(())))
    }

    /// An add or del: recorded either way, sent when connected.
    fn delivery(what: &str, res: Option<Result<(), ZdsError>>) -> anyhow::Result<Delivery> {
        match res {
            None | Some(Err(ZdsError::Io(_))) => Ok(Delivery::Queued),
            Some(Ok(())) => Ok(Delivery::Acked),
            Some(Err(ZdsError::Refused(e))) => Err(anyhow!("ztunnel refused {what}: {e}")),
            Some(Err(e)) => Err(anyhow!("{what}: {e}")),
        }
    }

    /// Keep, snapshot_sent, raw: need a link; every failure is an error.
    fn required(what: &str, res: Option<Result<(), ZdsError>>) -> anyhow::Result<()> {
        match res {
            None => Err(anyhow!("{what}: no ztunnel is connected")),
            Some(Ok(())) => Ok(()),
            Some(Err(ZdsError::Refused(e))) => Err(anyhow!("ztunnel refused {what}: {e}")),
            Some(Err(e)) => Err(anyhow!("{what}: {e}")),
        }
    }

    async fn handle(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Add {
                uid,
                info,
                netns,
                reply,
            } => {
                let entry = PodEntry { uid, info, netns };
                let res = self.exchange(Op::Add(&entry)).await;
                let res = State::delivery(&format!("add {}", entry.uid), res);
                if res.is_ok() {
                    self.pods.retain(|p| p.uid != entry.uid);
                    self.pods.push(entry);
                }
                let _ = reply.send(res);
            }
            Cmd::Del { uid, reply } => {
                self.pods.retain(|p| p.uid != uid);
                let res = self.exchange(Op::Del(&uid)).await;
                let _ = reply.send(State::delivery(&format!("del {uid}"), res));
            }
            Cmd::Keep { uid, reply } => {
                let res = self.exchange(Op::Keep(&uid)).await;
                let _ = reply.send(State::required(&format!("keep {uid}"), res));
            }
            Cmd::SnapshotSent { reply } => {
                let res = self.exchange(Op::SnapshotSent).await;
                let _ = reply.send(State::required("snapshot_sent", res));
            }
            Cmd::Raw { bytes, fds, reply } => {
                let res = self.exchange(Op::Raw(&bytes, &fds)).await;
                let _ = reply.send(State::required("raw message", res));
            }
            Cmd::Shutdown => {}
        }
    }
}
