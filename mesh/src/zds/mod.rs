//! ZDS: how the CNI node agent hands pod network namespaces to ztunnel.
//!
//! A unix `SOCK_SEQPACKET` socket, one protobuf message per datagram. The agent listens,
//! ztunnel connects and says hello; the agent sends an `add` per enrolled pod (with the pod's
//! netns as the one attached descriptor), then `snapshot_sent`, then incremental add/del;
//! ztunnel acks each. Both sides live here so that ztunnel, the node agent and the e2e
//! harness speak the same code.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use prost::Message;
use proto::zds::{
    workload_request, workload_response, Ack, AddWorkload, DelWorkload, KeepWorkload, SnapshotSent,
    Version, WorkloadInfo, WorkloadRequest, WorkloadResponse, ZdsHello,
};

mod socket;

pub use socket::{SeqPacket, SeqPacketListener, MAX_MESSAGE};

/// Default path of the agent's socket.
pub const DEFAULT_SOCKET: &str = "/var/run/ztunnel/ztunnel.sock";

/// What went wrong on a ZDS link.
#[derive(Debug, thiserror::Error)]
pub enum ZdsError {
    /// Socket I/O failed or the peer went away.
    #[error("ZDS socket: {0}")]
    Io(#[from] std::io::Error),
    /// A message did not decode.
    #[error("ZDS message does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
    /// A message decoded but breaks the protocol (missing payload, wrong descriptor count...).
    #[error("ZDS protocol violation: {0}")]
    Protocol(String),
    /// The other side answered with an error ack.
    #[error("peer refused: {0}")]
    Refused(String),
}

/// One instruction from the agent, validated.
#[derive(Debug)]
pub enum Request {
    /// Start serving a pod; `netns` is its network namespace.
    Add {
        /// The pod's uid (`<cluster>//v1/Pod/<ns>/<name>` or the Kubernetes uid).
        uid: String,
        /// Name, namespace and service account, when the agent knows them.
        info: Option<WorkloadInfo>,
        /// The pod's network namespace.
        netns: OwnedFd,
    },
    /// Keep serving a pod ztunnel already has (after a ztunnel restart, with no fd).
    Keep {
        /// The pod's uid.
        uid: String,
    },
    /// Stop serving a pod.
    Del {
        /// The pod's uid.
        uid: String,
    },
    /// Every existing pod has been announced: forget pods that were not.
    SnapshotSent,
}

impl Request {
    /// Validates a decoded message and its descriptors. Descriptors that do not belong are
    /// closed when this returns (they are dropped).
    pub fn from_parts(msg: WorkloadRequest, mut fds: Vec<OwnedFd>) -> Result<Request, ZdsError> {
        let payload = msg
            .payload
            .ok_or_else(|| ZdsError::Protocol("request has no payload".into()))?;
        let expect_fd = matches!(payload, workload_request::Payload::Add(_));
        match (expect_fd, fds.len()) {
            (true, 1) | (false, 0) => {}
            (true, n) => {
                return Err(ZdsError::Protocol(format!(
                    "add must carry exactly one network namespace descriptor, got {n}"
                )))
            }
            (false, n) => {
                return Err(ZdsError::Protocol(format!(
                    "only add carries descriptors, got {n}"
                )))
            }
        }
        let non_empty = |uid: String| {
            if uid.is_empty() {
                Err(ZdsError::Protocol("empty workload uid".into()))
            } else {
                Ok(uid)
            }
        };
        Ok(match payload {
            workload_request::Payload::Add(AddWorkload { uid, workload_info }) => Request::Add {
                uid: non_empty(uid)?,
                info: workload_info,
                netns: fds
                    .pop()
                    .ok_or_else(|| ZdsError::Protocol("missing fd".into()))?,
            },
            workload_request::Payload::Keep(KeepWorkload { uid }) => Request::Keep {
                uid: non_empty(uid)?,
            },
            workload_request::Payload::Del(DelWorkload { uid }) => Request::Del {
                uid: non_empty(uid)?,
            },
            workload_request::Payload::SnapshotSent(SnapshotSent {}) => Request::SnapshotSent,
        })
    }
}

/// ztunnel's end of the link.
#[derive(Debug)]
pub struct ZdsClient {
    sock: SeqPacket,
}

impl ZdsClient {
    /// Connects to the agent at `path` and says hello.
    pub async fn connect(path: &Path) -> Result<Self, ZdsError> {
        Self::over(SeqPacket::connect(path).await?).await
    }

    /// Says hello over an already connected socket.
    pub async fn over(sock: SeqPacket) -> Result<Self, ZdsError> {
        let hello = ZdsHello {
            version: Version::V1 as i32,
        };
        sock.send(&hello.encode_to_vec(), &[]).await?;
        Ok(ZdsClient { sock })
    }

    /// The next request. A message that breaks the protocol is answered with an error ack
    /// here and returned as `Err`; the link stays usable (the caller just continues).
    pub async fn next(&self) -> Result<Request, ZdsError> {
        let (bytes, fds) = self.sock.recv().await?;
        let parsed = WorkloadRequest::decode(bytes.as_slice())
            .map_err(ZdsError::from)
            .and_then(|msg| Request::from_parts(msg, fds));
        if let Err(e) = &parsed {
            if !matches!(e, ZdsError::Io(_)) {
                self.ack(Err(e.to_string())).await?;
            }
        }
        parsed
    }

    /// Acknowledges the last request: `Ok(())`, or the reason it failed.
    pub async fn ack(&self, result: Result<(), String>) -> Result<(), ZdsError> {
        let resp = WorkloadResponse {
            payload: Some(workload_response::Payload::Ack(Ack {
                error: result.err().unwrap_or_default(),
            })),
        };
        self.sock.send(&resp.encode_to_vec(), &[]).await?;
        Ok(())
    }
}

/// The agent's end of one ztunnel connection.
#[derive(Debug)]
pub struct ZdsServerConn {
    sock: SeqPacket,
}

impl ZdsServerConn {
    /// Waits for ztunnel's hello on an accepted socket.
    pub async fn accept(sock: SeqPacket) -> Result<Self, ZdsError> {
        let (bytes, _fds) = sock.recv().await?;
        let hello = ZdsHello::decode(bytes.as_slice())?;
        if hello.version != Version::V1 as i32 {
            return Err(ZdsError::Protocol(format!(
                "unsupported ZDS version {}",
                hello.version
            )));
        }
        Ok(ZdsServerConn { sock })
    }

    /// Announces a pod with its network namespace and waits for the ack.
    pub async fn add(
        &self,
        uid: &str,
        info: Option<WorkloadInfo>,
        netns: &impl AsFd,
    ) -> Result<(), ZdsError> {
        let req = WorkloadRequest {
            payload: Some(workload_request::Payload::Add(AddWorkload {
                uid: uid.to_string(),
                workload_info: info,
            })),
        };
        self.request(&req, &[netns.as_fd()]).await
    }

    /// Tells ztunnel to keep a pod it already serves.
    pub async fn keep(&self, uid: &str) -> Result<(), ZdsError> {
        let req = WorkloadRequest {
            payload: Some(workload_request::Payload::Keep(KeepWorkload {
                uid: uid.to_string(),
            })),
        };
        self.request(&req, &[]).await
    }

    /// Tells ztunnel to stop serving a pod.
    pub async fn del(&self, uid: &str) -> Result<(), ZdsError> {
        let req = WorkloadRequest {
            payload: Some(workload_request::Payload::Del(DelWorkload {
                uid: uid.to_string(),
            })),
        };
        self.request(&req, &[]).await
    }

    /// Marks the end of the initial snapshot.
    pub async fn snapshot_sent(&self) -> Result<(), ZdsError> {
        let req = WorkloadRequest {
            payload: Some(workload_request::Payload::SnapshotSent(SnapshotSent {})),
        };
        self.request(&req, &[]).await
    }

    /// Sends raw bytes with descriptors and waits for the ack (tests of malformed input).
    pub async fn send_raw(
        &self,
        bytes: &[u8],
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> Result<(), ZdsError> {
        self.sock.send(bytes, fds).await?;
        self.wait_ack().await
    }

    /// Resolves when ztunnel closes the link. It sends nothing unasked, so whatever arrives
    /// meanwhile is ignored; the agent uses this to hold an older ztunnel's link open, idle,
    /// until that ztunnel exits.
    pub async fn closed(&self) {
        while self.sock.recv().await.is_ok() {}
    }

    async fn request(
        &self,
        req: &WorkloadRequest,
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> Result<(), ZdsError> {
        self.sock.send(&req.encode_to_vec(), fds).await?;
        self.wait_ack().await
    }

    async fn wait_ack(&self) -> Result<(), ZdsError> {
        let (bytes, _fds) = self.sock.recv().await?;
        let resp = WorkloadResponse::decode(bytes.as_slice())?;
        match resp.payload {
            Some(workload_response::Payload::Ack(Ack { error })) if error.is_empty() => Ok(()),
            Some(workload_response::Payload::Ack(Ack { error })) => Err(ZdsError::Refused(error)),
            None => Err(ZdsError::Protocol("response has no payload".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn linked() -> (ZdsServerConn, ZdsClient) {
        let (a, b) = SeqPacket::pair().expect("pair");
        let (server, client) = tokio::join!(ZdsServerConn::accept(a), ZdsClient::over(b));
        (server.expect("hello"), client.expect("client"))
    }

    fn netns_fd() -> OwnedFd {
        std::fs::File::open("/proc/self/ns/net")
            .expect("own netns")
            .into()
    }

    #[tokio::test]
    async fn add_carries_one_netns_fd_and_is_acked() {
        let (server, client) = linked().await;
        let fd = netns_fd();
        let serve = async {
            let req = client.next().await.expect("request");
            let Request::Add { uid, info, netns } = req else {
                panic!("expected add, got {req:?}");
            };
            assert_eq!(uid, "Kubernetes//v1/Pod/demo/sleep");
            assert_eq!(info.map(|i| i.service_account), Some("sleep".into()));
            // The received descriptor refers to the same namespace.
            let ino = |f: &OwnedFd| {
                std::fs::metadata(format!(
                    "/proc/self/fd/{}",
                    std::os::fd::AsRawFd::as_raw_fd(f)
                ))
                .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
                .expect("stat")
            };
            assert_eq!(ino(&netns), ino(&netns_fd()));
            client.ack(Ok(())).await.expect("ack");
        };
        let info = WorkloadInfo {
            name: "sleep".into(),
            namespace: "demo".into(),
            service_account: "sleep".into(),
        };
        let (sent, ()) = tokio::join!(
            server.add("Kubernetes//v1/Pod/demo/sleep", Some(info), &fd),
            serve
        );
        sent.expect("acked");
    }

    #[tokio::test]
    async fn add_without_fd_or_with_two_fds_is_refused_and_the_link_survives() {
        let (server, client) = linked().await;
        let add = WorkloadRequest {
            payload: Some(workload_request::Payload::Add(AddWorkload {
                uid: "u1".into(),
                workload_info: None,
            })),
        }
        .encode_to_vec();
        let (a, b) = (netns_fd(), netns_fd());
        let reader = async {
            for _ in 0..3 {
                let _ = client.next().await;
            }
        };
        let sender = async {
            let none = server.send_raw(&add, &[]).await;
            assert!(
                matches!(&none, Err(ZdsError::Refused(m)) if m.contains("exactly one")),
                "{none:?}"
            );
            let two = server.send_raw(&add, &[a.as_fd(), b.as_fd()]).await;
            assert!(
                matches!(&two, Err(ZdsError::Refused(m)) if m.contains("got 2")),
                "{two:?}"
            );
            let garbage = server.send_raw(&[0xff, 0xff, 0xff], &[]).await;
            assert!(matches!(garbage, Err(ZdsError::Refused(_))), "{garbage:?}");
        };
        tokio::join!(sender, reader);
        // Still usable afterwards.
        let (ok, ()) = tokio::join!(server.del("u1"), async {
            assert!(matches!(client.next().await, Ok(Request::Del { .. })));
            client.ack(Ok(())).await.expect("ack");
        });
        ok.expect("del acked");
    }

    #[tokio::test]
    async fn listener_and_connect_over_a_socket_path() {
        let dir = std::env::temp_dir().join(format!("zds-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("ztunnel.sock");
        let listener = SeqPacketListener::bind(&path).expect("bind");
        let (accepted, client) = tokio::join!(listener.accept(), ZdsClient::connect(&path));
        let server = ZdsServerConn::accept(accepted.expect("accept"))
            .await
            .expect("hello");
        let client = client.expect("connect");
        let (sent, got) = tokio::join!(server.snapshot_sent(), async {
            let r = client.next().await;
            client.ack(Ok(())).await.expect("ack");
            r
        });
        sent.expect("acked");
        assert!(matches!(got, Ok(Request::SnapshotSent)));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
