//! The ZDS side of the agent: the enrolled pods as ztunnel must know them, and the connection
//! to the node's ztunnel (`mesh::zds`, the agent is the server).
//!
//! Per connection, after hello: an add (uid, `WorkloadInfo`, netns fd) for every enrolled pod,
//! then `snapshot_sent`, then incremental add/del as they happen. Snapshot and subscription
//! are taken under one lock, so no change falls between them. While no ztunnel is connected,
//! changes are only recorded: the next connection's snapshot carries them.
//!
//! A newer connection (a ztunnel upgrade: the new one starts while the old one runs) takes
//! over at once: in the same locked step that takes its snapshot, the older connection's queue
//! closes, so every later change goes to the newer one only. The older connection is then
//! *parked*, not closed: it stays open and idle until its ztunnel closes it (on exit, after its
//! drain). Closing it would look to that ztunnel like an agent restart, and it would reconnect
//! and take the pods back. The old ztunnel learns it is replaced from SIGTERM (`meshctl rollout
//! restart ztunnel`, or the kubelet once the new DaemonSet pod is ready, which needs its
//! snapshot applied), and drains.

use std::collections::BTreeMap;
use std::fs::File;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use mesh::zds::{SeqPacket, ZdsServerConn};
use proto::zds::WorkloadInfo;
use tokio::sync::{mpsc, oneshot};

/// How long ztunnel may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// A pod handed to ztunnel.
#[derive(Debug, Clone)]
pub struct Enrolled {
    /// `<cluster>//v1/Pod/<ns>/<name>`.
    pub uid: String,
    /// Name, namespace, service account.
    pub info: WorkloadInfo,
    /// Its network namespace (kept open while enrolled: ztunnel gets a copy of this fd).
    pub netns: Arc<File>,
}

/// ztunnel's answer to one add: `Err` carries why it did not take the pod.
pub type Ack = oneshot::Receiver<Result<(), String>>;

#[derive(Debug)]
enum Event {
    Add(Enrolled, oneshot::Sender<Result<(), String>>),
    Del(String),
}

#[derive(Debug, Default)]
struct State {
    /// Enrolled pods by uid.
    pods: BTreeMap<String, Enrolled>,
    /// The connected ztunnel: its connection number and event queue.
    ztunnel: Option<(u64, mpsc::UnboundedSender<Event>)>,
    connections: u64,
}

/// The enrolled pods and the ztunnel connection.
#[derive(Debug, Default)]
pub struct Hub {
    state: Mutex<State>,
}

impl Hub {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send(state: &mut State, event: Event) -> bool {
        let sent = state
            .ztunnel
            .as_ref()
            .is_some_and(|(_, tx)| tx.send(event).is_ok());
        if !sent {
            state.ztunnel = None;
        }
        sent
    }

    /// Records `pod` as enrolled (replacing an entry of the same uid) and sends an add to the
    /// connected ztunnel. `None`: no ztunnel is connected (the next snapshot carries the pod).
    pub fn add(&self, pod: Enrolled) -> Option<Ack> {
        let mut state = self.state();
        state.pods.insert(pod.uid.clone(), pod.clone());
        let (tx, rx) = oneshot::channel();
        Self::send(&mut state, Event::Add(pod, tx)).then_some(rx)
    }

    /// Forgets pod `uid` and sends a del to the connected ztunnel; the entry, if there was one.
    pub fn del(&self, uid: &str) -> Option<Enrolled> {
        let mut state = self.state();
        let removed = state.pods.remove(uid)?;
        Self::send(&mut state, Event::Del(uid.to_string()));
        Some(removed)
    }

    /// The enrolled pod `uid`, if it is.
    pub fn get(&self, uid: &str) -> Option<Enrolled> {
        self.state().pods.get(uid).cloned()
    }

    /// Every enrolled pod.
    pub fn all(&self) -> Vec<Enrolled> {
        self.state().pods.values().cloned().collect()
    }

    /// Announces pod `uid` again with `service_account` when ztunnel was told another one: a
    /// del, then an add with the same namespace (ztunnel takes a workload's identity from its
    /// add). Whether it was re-announced (`false`: not enrolled, or already so).
    pub fn reannounce(&self, uid: &str, service_account: &str) -> bool {
        let mut state = self.state();
        let Some(pod) = state.pods.get_mut(uid) else {
            return false;
        };
        if pod.info.service_account == service_account {
            return false;
        }
        pod.info.service_account = service_account.to_string();
        let pod = pod.clone();
        Self::send(&mut state, Event::Del(uid.to_string()));
        // Nobody waits for this ack: a refusal is logged by the connection's task, and the
        // next snapshot carries the pod again.
        let (tx, _ack) = oneshot::channel();
        Self::send(&mut state, Event::Add(pod, tx));
        true
    }

    /// Whether a ztunnel is connected now.
    pub fn ztunnel_connected(&self) -> bool {
        self.state()
            .ztunnel
            .as_ref()
            .is_some_and(|(_, tx)| !tx.is_closed())
    }

    /// How many pods are enrolled.
    pub fn enrolled_count(&self) -> usize {
        self.state().pods.len()
    }

    /// Serves one ztunnel connection until it fails or a newer one replaces it.
    pub async fn serve(self: Arc<Self>, sock: SeqPacket) {
        let conn = match tokio::time::timeout(HELLO_TIMEOUT, ZdsServerConn::accept(sock)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return tracing::warn!(error = %e, "ztunnel hello failed"),
            Err(_) => return tracing::warn!("ztunnel did not say hello in time"),
        };
        // Snapshot and subscription under one lock: no change falls between them.
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (id, snapshot): (u64, Vec<Enrolled>) = {
            let mut state = self.state();
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
                    Event::Add(pod, ack) => {
                        let answer = match send_add(&conn, &pod).await {
                            Ok(answer) => answer,
                            Err(e) => {
                                let _ = ack.send(Err(e.to_string()));
                                return Err(e);
                            }
                        };
                        let _ = ack.send(answer);
                    }
                    Event::Del(uid) => {
                        conn.del(&uid).await?;
                        tracing::info!(uid = %uid, "sent del to ztunnel");
                    }
                }
            }
            Ok::<(), mesh::zds::ZdsError>(())
        }
        .await;
        match result {
            Ok(()) => {
                tracing::info!(
                    connection = id,
                    "a newer ztunnel took over; keeping this connection open until its ztunnel exits"
                );
                conn.closed().await;
                tracing::info!(connection = id, "replaced ztunnel closed its connection");
            }
            Err(e) => {
                tracing::warn!(error = %e, "ztunnel connection ended; the next one gets a snapshot")
            }
        }
        let mut state = self.state();
        if state
            .ztunnel
            .as_ref()
            .is_some_and(|(current, _)| *current == id)
        {
            state.ztunnel = None;
        }
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

#[cfg(test)]
mod tests;
