//! The CNI plugin side, pure: the environment and network configuration a container runtime
//! passes (CNI 1.0.0), validated into types, and the JSON answers (results, version, errors).
//!
//! Nothing here does I/O; the binary's `plugin` module wires it to the process environment, stdin,
//! stdout and the node agent.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{json, Value};

/// Versions of the CNI spec this plugin speaks (network configs naming another are refused).
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0"];
/// The version used in answers when the configuration did not say (or could not be read).
pub const DEFAULT_VERSION: &str = "1.0.0";
/// Where the node agent listens for plugin events unless the config sets `agent_socket`.
pub const DEFAULT_AGENT_SOCKET: &str = "/var/run/ambient-mesh/cni.sock";

/// CNI error codes (spec "Error" section) used by this plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// 1: incompatible CNI version.
    IncompatibleVersion = 1,
    /// 3: container unknown or does not exist.
    UnknownContainer = 3,
    /// 4: invalid necessary environment variables.
    InvalidEnv = 4,
    /// 5: I/O failure.
    Io = 5,
    /// 6: failed to decode content.
    Decode = 6,
    /// 7: invalid network config.
    InvalidConfig = 7,
    /// 11: try again later (a transient condition, here: the node agent is not reachable).
    TryAgainLater = 11,
    /// 50 (spec 1.1, STATUS): the plugin is not available.
    NotAvailable = 50,
    /// 999: the node agent refused or failed to enrol the pod.
    AgentFailed = 999,
}

/// A CNI error: printed on stdout as `{"cniVersion","code","msg","details"}`, exit status 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CNI error {}: {msg}{}", *code as u32, if details.is_empty() { String::new() } else { format!(" ({details})") })]
pub struct CniError {
    /// The spec's error code.
    pub code: Code,
    /// Short message for the operator.
    pub msg: String,
    /// Longer explanation (may be empty).
    pub details: String,
}

impl CniError {
    /// An error with `code`, `msg` and `details`.
    pub fn new(code: Code, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The error as the spec's JSON object, answering in `version`.
    pub fn to_json(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "code": self.code as u32,
            "msg": self.msg,
            "details": self.details,
        })
    }
}

/// The operation requested by `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Add the container to the network.
    Add,
    /// Remove it (must succeed when already gone).
    Del,
    /// Check it is still as ADD left it.
    Check,
    /// Report the supported versions.
    Version,
    /// Garbage-collect stale attachments (spec 1.1).
    Gc,
    /// Report readiness (spec 1.1).
    Status,
}

impl Command {
    /// Parses `CNI_COMMAND`.
    pub fn parse(s: &str) -> Result<Command, CniError> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            other => {
                return Err(CniError::new(
                    Code::InvalidEnv,
                    format!("unknown CNI_COMMAND {other:?}"),
                    "expected one of ADD, DEL, CHECK, VERSION, GC, STATUS",
                ))
            }
        })
    }
}

/// The Kubernetes pod a container belongs to, from `CNI_ARGS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    /// `K8S_POD_NAMESPACE`.
    pub namespace: String,
    /// `K8S_POD_NAME`.
    pub name: String,
}

/// The CNI environment variables, validated for the command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID` (absent only for VERSION, GC and STATUS).
    pub container_id: Option<String>,
    /// `CNI_NETNS`: required for ADD and CHECK; optional for DEL (the namespace may be gone).
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME`.
    pub ifname: Option<String>,
    /// The pod, when `CNI_ARGS` names one (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`).
    pub pod: Option<PodRef>,
    /// Every `CNI_ARGS` pair.
    pub args: BTreeMap<String, String>,
}

fn env_err(msg: impl Into<String>) -> CniError {
    CniError::new(
        Code::InvalidEnv,
        msg,
        "the container runtime must set the CNI_* variables (CNI spec, section Parameters)",
    )
}

/// Parses `CNI_ARGS`: `K=V` pairs separated by `;` (empty string: none).
pub fn parse_cni_args(s: &str) -> Result<BTreeMap<String, String>, CniError> {
    let mut out = BTreeMap::new();
    for pair in s.split(';').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| env_err(format!("CNI_ARGS: {pair:?} is not KEY=VALUE")))?;
        if k.is_empty() {
            return Err(env_err(format!("CNI_ARGS: {pair:?} has an empty key")));
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

impl Env {
    /// Reads and validates the variables through `get` (the process environment, or a map
    /// in tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Env, CniError> {
        let command =
            Command::parse(&get("CNI_COMMAND").ok_or_else(|| env_err("CNI_COMMAND is not set"))?)?;
        let non_empty = |k: &str| get(k).filter(|v| !v.is_empty());
        let needs_container = matches!(command, Command::Add | Command::Del | Command::Check);
        let container_id = non_empty("CNI_CONTAINERID");
        let netns = non_empty("CNI_NETNS").map(PathBuf::from);
        let ifname = non_empty("CNI_IFNAME");
        if needs_container {
            if container_id.is_none() {
                return Err(env_err("CNI_CONTAINERID is not set"));
            }
            if ifname.is_none() {
                return Err(env_err("CNI_IFNAME is not set"));
            }
            if non_empty("CNI_PATH").is_none() {
                return Err(env_err("CNI_PATH is not set"));
            }
        }
        if matches!(command, Command::Add | Command::Check) && netns.is_none() {
            return Err(env_err("CNI_NETNS is not set"));
        }
        let args = parse_cni_args(&get("CNI_ARGS").unwrap_or_default())?;
        let pod = match (args.get("K8S_POD_NAMESPACE"), args.get("K8S_POD_NAME")) {
            (Some(ns), Some(name)) if !ns.is_empty() && !name.is_empty() => Some(PodRef {
                namespace: ns.clone(),
                name: name.clone(),
            }),
            _ => None,
        };
        Ok(Env {
            command,
            container_id,
            netns,
            ifname,
            pod,
            args,
        })
    }
}

/// The fields of the network configuration this plugin reads; everything else is kept in
/// [`NetConf::raw`].
#[derive(Debug, Clone, Deserialize)]
struct NetConfFields {
    #[serde(rename = "cniVersion")]
    cni_version: String,
    name: String,
    #[serde(rename = "type")]
    plugin_type: String,
    #[serde(default)]
    agent_socket: Option<PathBuf>,
}

/// The network configuration from stdin, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    /// `cniVersion` (one of [`SUPPORTED_VERSIONS`]).
    pub cni_version: String,
    /// `name` of the network.
    pub name: String,
    /// `type` (this plugin's binary name).
    pub plugin_type: String,
    /// `agent_socket`: where the node agent listens.
    pub agent_socket: PathBuf,
    /// `prevResult`, exactly as given (chained plugins pass it on).
    pub prev_result: Option<Value>,
}

/// The `cniVersion` of a configuration, if it can be read at all (answers errors in it).
pub fn sniff_version(stdin: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(stdin).ok()?;
    let s = v.get("cniVersion")?.as_str()?;
    SUPPORTED_VERSIONS.contains(&s).then(|| s.to_string())
}

impl NetConf {
    /// Parses and validates the configuration bytes read from stdin.
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let value: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                Code::Decode,
                "network configuration on stdin is not JSON",
                e.to_string(),
            )
        })?;
        let Value::Object(obj) = &value else {
            return Err(CniError::new(
                Code::InvalidConfig,
                "network configuration must be a JSON object",
                "",
            ));
        };
        let fields: NetConfFields = serde_json::from_value(value.clone()).map_err(|e| {
            CniError::new(
                Code::InvalidConfig,
                "invalid network configuration",
                e.to_string(),
            )
        })?;
        if !SUPPORTED_VERSIONS.contains(&fields.cni_version.as_str()) {
            return Err(CniError::new(
                Code::IncompatibleVersion,
                format!("unsupported cniVersion {:?}", fields.cni_version),
                format!("supported: {}", SUPPORTED_VERSIONS.join(", ")),
            ));
        }
        if fields.name.is_empty() || fields.plugin_type.is_empty() {
            return Err(CniError::new(
                Code::InvalidConfig,
                "network configuration needs a non-empty name and type",
                "",
            ));
        }
        let agent_socket = fields
            .agent_socket
            .unwrap_or_else(|| PathBuf::from(DEFAULT_AGENT_SOCKET));
        if agent_socket.as_os_str().is_empty() {
            return Err(CniError::new(
                Code::InvalidConfig,
                "agent_socket must not be empty",
                "",
            ));
        }
        let prev_result = match obj.get("prevResult") {
            None | Some(Value::Null) => None,
            Some(v @ Value::Object(_)) => Some(v.clone()),
            Some(_) => {
                return Err(CniError::new(
                    Code::InvalidConfig,
                    "prevResult must be a JSON object",
                    "",
                ))
            }
        };
        Ok(NetConf {
            cni_version: fields.cni_version,
            name: fields.name,
            plugin_type: fields.plugin_type,
            agent_socket,
            prev_result,
        })
    }
}

/// The pod's addresses from a result's `ips[].address` (CIDR form; the prefix is dropped).
/// Addresses that do not parse are skipped.
pub fn pod_ips(prev_result: &Value) -> Vec<IpAddr> {
    prev_result
        .get("ips")
        .and_then(Value::as_array)
        .map(|ips| {
            ips.iter()
                .filter_map(|ip| ip.get("address")?.as_str())
                .filter_map(|cidr| cidr.split('/').next()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The VERSION answer.
pub fn version_result() -> Value {
    json!({
        "cniVersion": DEFAULT_VERSION,
        "supportedVersions": SUPPORTED_VERSIONS,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<Env, CniError> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::from_lookup(|k| m.get(k).cloned())
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/var/run/netns/p1"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=sleep",
        ),
    ];

    fn without(key: &str) -> Vec<(&'static str, &'static str)> {
        ADD.iter().copied().filter(|(k, _)| *k != key).collect()
    }

    #[test]
    fn add_env_parses_pod_from_cni_args() {
        let e = env(ADD).expect("valid");
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.container_id.as_deref(), Some("c1"));
        assert_eq!(e.netns, Some(PathBuf::from("/var/run/netns/p1")));
        assert_eq!(
            e.pod,
            Some(PodRef {
                namespace: "demo".into(),
                name: "sleep".into()
            })
        );
        assert_eq!(e.args.get("IgnoreUnknown").map(String::as_str), Some("1"));
    }

    #[test]
    fn every_command_parses_and_unknown_is_code_4() {
        for (s, c) in [
            ("ADD", Command::Add),
            ("DEL", Command::Del),
            ("CHECK", Command::Check),
            ("VERSION", Command::Version),
            ("GC", Command::Gc),
            ("STATUS", Command::Status),
        ] {
            assert_eq!(Command::parse(s), Ok(c));
        }
        let err = Command::parse("add").expect_err("case matters");
        assert_eq!(err.code, Code::InvalidEnv);
        let err = env(&[]).expect_err("no command");
        assert_eq!(err.code, Code::InvalidEnv);
        assert!(err.msg.contains("CNI_COMMAND"));
    }

    #[test]
    fn missing_required_variables_are_code_4_and_named() {
        for key in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"] {
            let err = env(&without(key)).expect_err(key);
            assert_eq!(err.code, Code::InvalidEnv, "{key}");
            assert!(err.msg.contains(key), "{key}: {}", err.msg);
        }
    }

    #[test]
    fn del_may_lack_netns_and_version_needs_nothing() {
        let mut del = without("CNI_NETNS");
        del[0] = ("CNI_COMMAND", "DEL");
        let e = env(&del).expect("del without netns");
        assert_eq!(e.netns, None);
        let e = env(&[("CNI_COMMAND", "VERSION")]).expect("version");
        assert_eq!(e.container_id, None);
        assert_eq!(e.pod, None);
    }

    #[test]
    fn cni_args_edge_cases() {
        assert!(parse_cni_args("").expect("empty").is_empty());
        assert_eq!(parse_cni_args("A=1;;B=").expect("ok").len(), 2);
        assert_eq!(
            parse_cni_args("A").expect_err("no =").code,
            Code::InvalidEnv
        );
        assert_eq!(
            parse_cni_args("=1").expect_err("no key").code,
            Code::InvalidEnv
        );
        let mut no_pod = ADD.to_vec();
        no_pod[5] = ("CNI_ARGS", "K8S_POD_NAMESPACE=demo");
        assert_eq!(env(&no_pod).expect("ok").pod, None);
    }

    #[test]
    fn netconf_parses_defaults_and_keeps_prev_result() {
        let c = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"k8s","type":"cni-plugin",
                 "prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.5/24"}],"x":[1,2]}}"#,
        )
        .expect("valid");
        assert_eq!(c.agent_socket, PathBuf::from(DEFAULT_AGENT_SOCKET));
        let prev = c.prev_result.expect("prev");
        assert_eq!(prev["x"], json!([1, 2]));
        assert_eq!(
            pod_ips(&prev),
            vec!["10.0.0.5".parse::<IpAddr>().expect("ip")]
        );
        let c = NetConf::parse(
            br#"{"cniVersion":"0.4.0","name":"k8s","type":"t","agent_socket":"/tmp/a.sock"}"#,
        )
        .expect("valid");
        assert_eq!(c.agent_socket, PathBuf::from("/tmp/a.sock"));
        assert_eq!(c.prev_result, None);
    }

    #[test]
    fn netconf_errors_map_to_their_codes() {
        let cases: &[(&[u8], Code)] = &[
            (b"not json", Code::Decode),
            (b"", Code::Decode),
            (b"[1]", Code::InvalidConfig),
            (br#"{"name":"k","type":"t"}"#, Code::InvalidConfig),
            (br#"{"cniVersion":"1.0.0","type":"t"}"#, Code::InvalidConfig),
            (br#"{"cniVersion":"1.0.0","name":"k"}"#, Code::InvalidConfig),
            (
                br#"{"cniVersion":"1.0.0","name":"","type":"t"}"#,
                Code::InvalidConfig,
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"k","type":"t","agent_socket":5}"#,
                Code::InvalidConfig,
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"k","type":"t","agent_socket":""}"#,
                Code::InvalidConfig,
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"k","type":"t","prevResult":3}"#,
                Code::InvalidConfig,
            ),
            (
                br#"{"cniVersion":"9.9.9","name":"k","type":"t"}"#,
                Code::IncompatibleVersion,
            ),
        ];
        for (input, code) in cases {
            let err = NetConf::parse(input).expect_err(&String::from_utf8_lossy(input));
            assert_eq!(err.code, *code, "{}: {err}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn answers_have_the_spec_shape() {
        assert_eq!(
            version_result(),
            json!({"cniVersion":"1.0.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0"]})
        );
        let e = CniError::new(Code::TryAgainLater, "m", "d");
        assert_eq!(
            e.to_json("0.4.0"),
            json!({"cniVersion":"0.4.0","code":11,"msg":"m","details":"d"})
        );
        assert_eq!(
            sniff_version(br#"{"cniVersion":"0.4.0"}"#).as_deref(),
            Some("0.4.0")
        );
        assert_eq!(sniff_version(br#"{"cniVersion":"7"}"#), None);
        assert!(pod_ips(&json!({"ips":[{"address":"bad"}]})).is_empty());
    }
}
