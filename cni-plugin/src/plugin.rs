//! Plugin mode: what runs when the container runtime executes this binary with `CNI_COMMAND`
//! set. Reads the environment and stdin, tells the node agent, answers on stdout.
//!
//! Failure policy: ADD fails closed (a pod must not start uncaptured when it should be in the
//! mesh: if the agent is unreachable the runtime gets "try again later"); DEL never fails
//! because of the agent (DEL must be idempotent and must not block pod deletion).

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::agent_proto::{self, AgentCommand, AgentRequest, CallError};
use crate::cni::{self, CniError, Code, Command, Env, NetConf};

/// What the process should print on stdout and how it should exit.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// JSON for stdout (`None`: print nothing).
    pub stdout: Option<Value>,
    /// Exit with status 0.
    pub success: bool,
}

/// Runs one plugin invocation: `get` reads the environment, `stdin` is the configuration (or
/// the error reading it).
pub fn run(
    get: impl Fn(&str) -> Option<String>,
    stdin: std::io::Result<Vec<u8>>,
    timeout: Duration,
) -> Outcome {
    let result = match &stdin {
        Ok(bytes) => dispatch(get, bytes, timeout),
        Err(e) => Err(CniError::new(
            Code::Io,
            "cannot read the network configuration from stdin",
            e.to_string(),
        )),
    };
    let version = stdin
        .ok()
        .and_then(|b| cni::sniff_version(&b))
        .unwrap_or_else(|| cni::DEFAULT_VERSION.into());
    match result {
        Ok(stdout) => Outcome {
            stdout,
            success: true,
        },
        Err(e) => {
            tracing::error!(code = e.code as u32, msg = %e.msg, details = %e.details, "CNI call failed");
            Outcome {
                stdout: Some(e.to_json(&version)),
                success: false,
            }
        }
    }
}

fn dispatch(
    get: impl Fn(&str) -> Option<String>,
    stdin: &[u8],
    timeout: Duration,
) -> Result<Option<Value>, CniError> {
    let env = Env::from_lookup(get)?;
    if env.command == Command::Version {
        return Ok(Some(cni::version_result()));
    }
    let conf = NetConf::parse(stdin)?;
    match env.command {
        Command::Version => Ok(Some(cni::version_result())),
        Command::Add => add(&env, &conf, timeout).map(Some),
        Command::Del => {
            del(&env, &conf, timeout);
            Ok(None)
        }
        Command::Check => {
            if conf.prev_result.is_none() {
                return Err(CniError::new(
                    Code::InvalidConfig,
                    "CHECK needs prevResult",
                    "this plugin is chained after the plugin that sets up the pod network",
                ));
            }
            Ok(None)
        }
        // Nothing is allocated per attachment outside the agent, which cleans up on DEL.
        Command::Gc => Ok(None),
        Command::Status => std::os::unix::net::UnixStream::connect(&conf.agent_socket)
            .map(|_| None)
            .map_err(|e| {
                CniError::new(
                    Code::NotAvailable,
                    "the ambient mesh node agent is not reachable",
                    unreachable_hint(&conf.agent_socket, &e.to_string()),
                )
            }),
    }
}

fn unreachable_hint(socket: &Path, err: &str) -> String {
    format!(
        "{err}; check that the ambient-mesh node agent DaemonSet pod runs on this node and \
         listens on {} (plugin config field agent_socket, agent flag --cni-socket)",
        socket.display()
    )
}

fn add(env: &Env, conf: &NetConf, timeout: Duration) -> Result<Value, CniError> {
    let prev = conf.prev_result.clone().ok_or_else(|| {
        CniError::new(
            Code::InvalidConfig,
            "ADD needs prevResult",
            "this plugin must be chained after the plugin that sets up the pod network \
             (it adds no interface of its own)",
        )
    })?;
    let Some(pod) = &env.pod else {
        tracing::info!("not a Kubernetes pod (no K8S_POD_NAME in CNI_ARGS): nothing to do");
        return Ok(prev);
    };
    if let Some(netns) = env.netns.as_ref().filter(|p| !p.exists()) {
        return Err(CniError::new(
            Code::UnknownContainer,
            format!("network namespace {} does not exist", netns.display()),
            "the sandbox is gone or CNI_NETNS is wrong",
        ));
    }
    let req = AgentRequest {
        command: AgentCommand::Add,
        container_id: env.container_id.clone().unwrap_or_default(),
        netns: env
            .netns
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        pod_name: pod.name.clone(),
        pod_namespace: pod.namespace.clone(),
        pod_ips: cni::pod_ips(&prev),
    };
    match agent_proto::call(&conf.agent_socket, &req, timeout) {
        Ok(reply) if reply.ok => {
            tracing::info!(pod = %format!("{}/{}", pod.namespace, pod.name), enrolled = reply.enrolled, "ADD done");
            Ok(prev)
        }
        Ok(reply) => Err(CniError::new(
            Code::AgentFailed,
            format!(
                "the ambient mesh node agent failed to set up pod {}/{}",
                pod.namespace, pod.name
            ),
            reply.error.unwrap_or_default(),
        )),
        Err(e @ CallError::Connect { .. }) | Err(e @ CallError::Exchange { .. }) => {
            Err(CniError::new(
                Code::TryAgainLater,
                "the ambient mesh node agent is not reachable; pod setup will be retried",
                unreachable_hint(&conf.agent_socket, &e.to_string()),
            ))
        }
    }
}

fn del(env: &Env, conf: &NetConf, timeout: Duration) {
    let req = AgentRequest {
        command: AgentCommand::Del,
        container_id: env.container_id.clone().unwrap_or_default(),
        netns: env
            .netns
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        pod_name: env.pod.as_ref().map(|p| p.name.clone()).unwrap_or_default(),
        pod_namespace: env
            .pod
            .as_ref()
            .map(|p| p.namespace.clone())
            .unwrap_or_default(),
        pod_ips: vec![],
    };
    match agent_proto::call(&conf.agent_socket, &req, timeout) {
        Ok(reply) if reply.ok => tracing::info!("DEL done"),
        Ok(reply) => tracing::warn!(error = ?reply.error, "node agent failed DEL; ignored"),
        Err(e) => tracing::warn!(error = %e, "node agent unreachable on DEL; ignored"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::HashMap;

    fn run_with(pairs: &[(&str, &str)], stdin: &str) -> Outcome {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        run(
            |k| m.get(k).cloned(),
            Ok(stdin.as_bytes().to_vec()),
            Duration::from_secs(1),
        )
    }

    fn base(cmd: &'static str) -> Vec<(&'static str, &'static str)> {
        vec![
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/proc/self/ns/net"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
            ("CNI_ARGS", "K8S_POD_NAMESPACE=demo;K8S_POD_NAME=sleep"),
        ]
    }

    const CONF: &str = r#"{"cniVersion":"0.4.0","name":"k8s","type":"cni-plugin",
        "agent_socket":"/nonexistent/cni.sock","prevResult":{"ips":[{"address":"10.1.0.2/24"}]}}"#;

    #[test]
    fn version_ignores_stdin() {
        let out = run_with(&[("CNI_COMMAND", "VERSION")], "garbage");
        assert!(out.success);
        assert_eq!(out.stdout, Some(cni::version_result()));
    }

    #[test]
    fn add_without_agent_is_try_again_later_with_a_hint() {
        let out = run_with(&base("ADD"), CONF);
        assert!(!out.success);
        let err = out.stdout.expect("error json");
        assert_eq!(err["code"], json!(11));
        assert_eq!(err["cniVersion"], json!("0.4.0"));
        let details = err["details"].as_str().expect("details");
        assert!(details.contains("DaemonSet") && details.contains("/nonexistent/cni.sock"));
    }

    #[test]
    fn add_of_a_non_kubernetes_container_passes_prev_result_through() {
        let mut env = base("ADD");
        env[5] = ("CNI_ARGS", "");
        let out = run_with(&env, CONF);
        assert!(out.success);
        assert_eq!(out.stdout, Some(json!({"ips":[{"address":"10.1.0.2/24"}]})));
    }

    #[test]
    fn add_and_check_need_prev_result() {
        let conf = r#"{"cniVersion":"1.0.0","name":"k8s","type":"t"}"#;
        for cmd in ["ADD", "CHECK"] {
            let out = run_with(&base(cmd), conf);
            assert!(!out.success, "{cmd}");
            assert_eq!(out.stdout.expect("json")["code"], json!(7), "{cmd}");
        }
        let out = run_with(&base("CHECK"), CONF);
        assert_eq!(
            out,
            Outcome {
                stdout: None,
                success: true
            }
        );
    }

    #[test]
    fn del_and_gc_succeed_without_agent_and_status_does_not() {
        for cmd in ["DEL", "GC"] {
            let out = run_with(&base(cmd), CONF);
            assert!(out.success, "{cmd}: {out:?}");
            assert_eq!(out.stdout, None);
        }
        let out = run_with(&base("STATUS"), CONF);
        assert!(!out.success);
        assert_eq!(out.stdout.expect("json")["code"], json!(50));
    }

    #[test]
    fn add_for_a_missing_netns_is_unknown_container() {
        let mut env = base("ADD");
        env[2] = ("CNI_NETNS", "/nonexistent/netns");
        let out = run_with(&env, CONF);
        assert_eq!(out.stdout.expect("json")["code"], json!(3));
    }

    #[test]
    fn unreadable_stdin_is_an_io_error() {
        let out = run(
            |k| (k == "CNI_COMMAND").then(|| "ADD".to_string()),
            Err(std::io::Error::other("boom")),
            Duration::from_secs(1),
        );
        assert!(!out.success);
        assert_eq!(out.stdout.expect("json")["code"], json!(5));
    }

    #[test]
    fn bad_env_and_bad_config_are_reported_as_json() {
        let out = run_with(&[("CNI_COMMAND", "ADD")], CONF);
        assert_eq!(out.stdout.expect("json")["code"], json!(4));
        let out = run_with(&base("ADD"), "{");
        let err = out.stdout.expect("json");
        assert_eq!(err["code"], json!(6));
        assert_eq!(err["cniVersion"], json!("1.0.0"));
    }
}
