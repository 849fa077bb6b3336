//! The plugin ↔ node agent protocol: one JSON request line, one JSON reply line, over a unix
//! stream socket; one request per connection.
//!
//! ```text
//! plugin → agent  {"command":"add","container_id":"..","netns":"/var/run/netns/..",
//!                  "pod_name":"..","pod_namespace":"..","pod_ips":["10.0.0.5"]}\n
//! agent → plugin  {"ok":true,"enrolled":true}\n   or   {"ok":false,"enrolled":false,"error":".."}\n
//! ```

use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Longest the plugin waits for the agent's reply (the agent applies rules in that time).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(20);

/// What the plugin asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentCommand {
    /// A pod's sandbox was created.
    Add,
    /// A pod's sandbox is going away.
    Del,
}

/// One plugin event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRequest {
    /// add or del.
    pub command: AgentCommand,
    /// `CNI_CONTAINERID`: the key the agent keeps the pod under.
    pub container_id: String,
    /// `CNI_NETNS` (may be empty on del).
    #[serde(default)]
    pub netns: String,
    /// `K8S_POD_NAME`.
    #[serde(default)]
    pub pod_name: String,
    /// `K8S_POD_NAMESPACE`.
    #[serde(default)]
    pub pod_namespace: String,
    /// The pod's addresses from `prevResult`.
    #[serde(default)]
    pub pod_ips: Vec<IpAddr>,
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentReply {
    /// The request was handled (for add: the pod is either enrolled and captured, or not in
    /// the mesh).
    pub ok: bool,
    /// The pod is in the mesh (capture rules installed, handed to ztunnel).
    pub enrolled: bool,
    /// Why `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Why a call to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Could not connect: the agent is not running, or listens elsewhere.
    #[error("cannot connect to the node agent at {path}: {source}")]
    Connect {
        /// The socket path tried.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Connected, but the exchange failed (timeout, closed, garbage).
    #[error("node agent at {path} did not answer properly: {reason}")]
    Exchange {
        /// The socket path.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

/// Sends `req` to the agent at `path` and waits (at most `timeout`) for its reply.
pub fn call(path: &Path, req: &AgentRequest, timeout: Duration) -> Result<AgentReply, CallError> {
    let shown = path.display().to_string();
    let stream = UnixStream::connect(path).map_err(|source| CallError::Connect {
        path: shown.clone(),
        source,
    })?;
    let fail = |reason: String| CallError::Exchange {
        path: shown.clone(),
        reason,
    };
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| fail(e.to_string()))?;
    let mut line = serde_json::to_vec(req).map_err(|e| fail(e.to_string()))?;
    line.push(b'\n');
    (&stream)
        .write_all(&line)
        .map_err(|e| fail(format!("sending: {e}")))?;
    let mut reply = String::new();
    BufReader::new(&stream)
        .read_line(&mut reply)
        .map_err(|e| fail(format!("reading the reply: {e}")))?;
    if reply.is_empty() {
        return Err(fail("closed the connection without a reply".into()));
    }
    serde_json::from_str(&reply).map_err(|e| fail(format!("reply does not decode: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_is_the_documented_json() {
        let req = AgentRequest {
            command: AgentCommand::Add,
            container_id: "c1".into(),
            netns: "/var/run/netns/p".into(),
            pod_name: "sleep".into(),
            pod_namespace: "demo".into(),
            pod_ips: vec!["10.0.0.5".parse().expect("ip")],
        };
        let v = serde_json::to_value(&req).expect("encodes");
        assert_eq!(
            v,
            serde_json::json!({"command":"add","container_id":"c1","netns":"/var/run/netns/p",
                "pod_name":"sleep","pod_namespace":"demo","pod_ips":["10.0.0.5"]})
        );
        let del: AgentRequest =
            serde_json::from_str(r#"{"command":"del","container_id":"c1"}"#).expect("minimal");
        assert_eq!(del.command, AgentCommand::Del);
        let r: AgentReply =
            serde_json::from_str(r#"{"ok":false,"enrolled":false,"error":"x"}"#).expect("reply");
        assert_eq!(r.error.as_deref(), Some("x"));
        let ok = serde_json::to_string(&AgentReply {
            ok: true,
            enrolled: false,
            error: None,
        })
        .expect("encodes");
        assert_eq!(ok, r#"{"ok":true,"enrolled":false}"#);
    }

    #[test]
    fn call_without_agent_is_a_connect_error() {
        let req = AgentRequest {
            command: AgentCommand::Del,
            container_id: "c".into(),
            netns: String::new(),
            pod_name: String::new(),
            pod_namespace: String::new(),
            pod_ips: vec![],
        };
        let err = call(
            Path::new("/nonexistent/agent.sock"),
            &req,
            Duration::from_secs(1),
        )
        .expect_err("no agent");
        assert!(matches!(err, CallError::Connect { .. }), "{err}");
    }
}
