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
//!
//! If the newer connection ends while an older one is parked (the new ztunnel crashed before
//! the old one was told to go), the newest parked connection serves the pods again: it first
//! gets what changed since it was parked (a del for each pod gone or changed, an add for each
//! pod new or changed), then every later change. Without that, a pod enrolled after the new
//! ztunnel took over would have no ztunnel at all: its captured traffic would go to ports
//! nobody listens on.

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

/// A queue of events for one connection's task.
type Queue = mpsc::UnboundedSender<Event>;

/// The connection that gets every change.
#[derive(Debug)]
struct Active {
    /// Its connection number.
    id: u64,
    /// Its event queue.
    queue: Queue,
    /// Hands it a new queue should it serve the pods again after being parked.
    resume: mpsc::UnboundedSender<mpsc::UnboundedReceiver<Event>>,
}

/// A connection replaced by a newer one, open and idle until its ztunnel exits.
#[derive(Debug)]
struct Parked {
    id: u64,
    resume: mpsc::UnboundedSender<mpsc::UnboundedReceiver<Event>>,
    /// The pods its ztunnel was told of when it was parked.
    known: BTreeMap<String, Enrolled>,
}

#[derive(Debug, Default)]
struct State {
    /// Enrolled pods by uid.
    pods: BTreeMap<String, Enrolled>,
    /// The connected ztunnel.
    ztunnel: Option<Active>,
    /// Older connections, oldest first.
    parked: Vec<Parked>,
    connections: u64,
}

impl State {
    /// Makes the newest parked connection whose task still runs the active one, its queue
    /// primed with what changed since it was parked; none left: no ztunnel is connected.
    fn resume_parked(&mut self) {
        while let Some(parked) = self.parked.pop() {
            let (queue, rx) = mpsc::unbounded_channel();
            for event in catch_up(&parked.known, &self.pods) {
                // The receiver is in hand: this cannot fail.
                let _ = queue.send(event);
            }
            if parked.resume.send(rx).is_ok() {
                tracing::info!(
                    connection = parked.id,
                    "the newer ztunnel went away; the one it replaced serves the pods again"
                );
                self.ztunnel = Some(Active {
                    id: parked.id,
                    queue,
                    resume: parked.resume,
                });
                return;
            }
        }
    }
}

/// What a ztunnel told of `known` must hear to serve `now`: a del for every pod gone or
/// changed (another network namespace or service account), then an add for every pod new or
/// changed. Nobody waits for these adds: a refusal is logged by the connection's task.
fn catch_up(known: &BTreeMap<String, Enrolled>, now: &BTreeMap<String, Enrolled>) -> Vec<Event> {
    let same = |a: &Enrolled, b: &Enrolled| {
        a.info.service_account == b.info.service_account && same_netns(&a.netns, &b.netns)
    };
    let mut events = Vec::new();
    for (uid, was) in known {
        if !now.get(uid).is_some_and(|pod| same(pod, was)) {
            events.push(Event::Del(uid.clone()));
        }
    }
    for (uid, pod) in now {
        if !known.get(uid).is_some_and(|was| same(pod, was)) {
            let (ack, _nobody) = oneshot::channel();
            events.push(Event::Add(pod.clone(), ack));
        }
    }
    events
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

    /// Queues `event` for the active connection. A queue found closed (its task ended without
    /// saying so, which only a panic does) is dropped, and a parked connection takes over: the
    /// event is already in what it catches up on.
    fn send(state: &mut State, event: Event) -> bool {
        let sent = state
            .ztunnel
            .as_ref()
            .is_some_and(|active| active.queue.send(event).is_ok());
        if !sent && state.ztunnel.take().is_some() {
            state.resume_parked();
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
            .is_some_and(|active| !active.queue.is_closed())
    }

    /// How many pods are enrolled.
    pub fn enrolled_count(&self) -> usize {
        self.state().pods.len()
    }

    /// Serves one ztunnel connection until it fails or its ztunnel closes it; while a newer one
    /// has replaced it, it is parked (see the module docs).
    pub async fn serve(self: Arc<Self>, sock: SeqPacket) {
        let conn = match tokio::time::timeout(HELLO_TIMEOUT, ZdsServerConn::accept(sock)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return tracing::warn!(error = %e, "ztunnel hello failed"),
            Err(_) => return tracing::warn!("ztunnel did not say hello in time"),
        };
        // Snapshot and subscription under one lock: no change falls between them, and the
        // connection this one replaces is parked knowing exactly the pods queued to it.
        let (queue, mut rx) = mpsc::unbounded_channel();
        let (resume, mut resumed) = mpsc::unbounded_channel();
        let (id, snapshot): (u64, Vec<Enrolled>) = {
            let mut state = self.state();
            state.connections += 1;
            let id = state.connections;
            if let Some(older) = state.ztunnel.take() {
                let known = state.pods.clone();
                state.parked.push(Parked {
                    id: older.id,
                    resume: older.resume,
                    known,
                });
            }
            state.ztunnel = Some(Active { id, queue, resume });
            (id, state.pods.values().cloned().collect())
        };
        tracing::info!(pods = snapshot.len(), "ztunnel connected; sending snapshot");
        let mut snapshot = Some(snapshot);
        let result = loop {
            if let Err(e) = relay(&conn, snapshot.take(), &mut rx).await {
                break Err(e);
            }
            tracing::info!(
                connection = id,
                "a newer ztunnel took over; keeping this connection open until its ztunnel exits"
            );
            tokio::select! {
                () = conn.closed() => break Ok(()),
                Some(queue) = resumed.recv() => rx = queue,
            }
        };
        match result {
            Ok(()) => tracing::info!(connection = id, "replaced ztunnel closed its connection"),
            Err(e) => {
                tracing::warn!(connection = id, error = %e, "ztunnel connection ended")
            }
        }
        let mut state = self.state();
        state.parked.retain(|parked| parked.id != id);
        if state.ztunnel.as_ref().is_some_and(|active| active.id == id) {
            state.ztunnel = None;
            state.resume_parked();
        }
    }
}

/// Whether two descriptors are the same network namespace: a pod enrolled again (a retried
/// `ADD`) holds a new descriptor of the namespace ztunnel already serves. One that cannot be
/// read counts as another.
fn same_netns(a: &File, b: &File) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (a.metadata(), b.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Sends `snapshot` (the first time) and then every queued event, until the queue closes
/// (`Ok`: a newer connection took over) or the link fails. A link that closes while nothing
/// is queued fails at once, not at the next change, so a parked connection resumes promptly.
async fn relay(
    conn: &ZdsServerConn,
    snapshot: Option<Vec<Enrolled>>,
    rx: &mut mpsc::UnboundedReceiver<Event>,
) -> Result<(), mesh::zds::ZdsError> {
    if let Some(snapshot) = snapshot {
        for pod in &snapshot {
            // A refused pod is logged by send_add; the snapshot goes on.
            let _refused = send_add(conn, pod).await?;
        }
        conn.snapshot_sent().await?;
    }
    loop {
        // ztunnel sends nothing unasked, so between requests the link is only read for its
        // end; both futures are cancel-safe.
        let event = tokio::select! {
            biased;
            event = rx.recv() => event,
            () = conn.closed() => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "ztunnel closed the link",
                )
                .into())
            }
        };
        let Some(event) = event else {
            return Ok(());
        };
        match event {
            Event::Add(pod, ack) => {
                let answer = match send_add(conn, &pod).await {
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
