//! A minimal CNI runtime, like libcni: runs a node's network list for a pod sandbox.
//!
//! ADD runs each plugin of the list in order; each gets on stdin its own object plus the
//! list's `cniVersion` and `name` and, from the second on, the previous plugin's result as
//! `prevResult`; the last result is the pod's. DEL runs them in reverse order, each with the
//! cached ADD result as `prevResult`. Plugins are executables named by `type`, looked up in
//! `CNI_PATH`, run inside the node's network namespace (the node is their "host"), with
//! `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`, `CNI_ARGS` and `CNI_PATH`.
//!
//! The list is read afresh on every call: the node agent edits it (it appends its plugin).
//! The chaining and the stdin documents are pure functions, tested without processes.

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::{Map, Value};

/// Errors of a CNI call, each naming the file or plugin at fault.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// The config directory could not be read.
    #[error("reading the CNI config directory {dir}: {source}")]
    ConfDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// No network list in the config directory.
    #[error("no *.conflist in {0}")]
    NoConflist(PathBuf),
    /// The network list is not valid.
    #[error("CNI network list {path}: {reason}")]
    BadConflist {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// No executable for a plugin type.
    #[error("CNI plugin `{plugin}` not found in CNI_PATH {path}{hint}")]
    PluginNotFound {
        /// The plugin type.
        plugin: String,
        /// The search path.
        path: String,
        /// What to install, for the reference plugins.
        hint: &'static str,
    },
    /// The plugin could not be run.
    #[error("running CNI plugin {plugin}: {source}")]
    Exec {
        /// The plugin type.
        plugin: String,
        /// Why.
        source: std::io::Error,
    },
    /// The plugin returned a CNI error object.
    #[error("CNI plugin {plugin} failed {command} (code {code}): {msg}{details}")]
    Plugin {
        /// The plugin type.
        plugin: String,
        /// ADD or DEL.
        command: &'static str,
        /// The CNI error code.
        code: u64,
        /// The message.
        msg: String,
        /// `: <details>`, or empty.
        details: String,
    },
    /// The plugin failed without an error object, or answered ADD with no valid result.
    #[error("CNI plugin {plugin} failed {command}: {reason}")]
    BadOutput {
        /// The plugin type.
        plugin: String,
        /// ADD or DEL.
        command: &'static str,
        /// Exit status, stdout and stderr.
        reason: String,
    },
}

/// A network list (`*.conflist`).
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkList {
    /// The file it was read from.
    pub path: PathBuf,
    /// `cniVersion`.
    pub cni_version: String,
    /// `name`.
    pub name: String,
    /// The plugin objects, in order; each has a string `type`.
    pub plugins: Vec<Map<String, Value>>,
}

impl NetworkList {
    /// Reads the first `*.conflist` (by file name) of `dir`, as libcni picks it.
    pub fn load(dir: &Path) -> Result<NetworkList, CniError> {
        let conf_dir_err = |source| CniError::ConfDir {
            dir: dir.to_path_buf(),
            source,
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(conf_dir_err)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "conflist"))
            .collect();
        files.sort();
        let path = files
            .into_iter()
            .next()
            .ok_or_else(|| CniError::NoConflist(dir.to_path_buf()))?;
        let text = std::fs::read_to_string(&path).map_err(conf_dir_err)?;
        NetworkList::parse(&path, &text)
    }

    /// Parses a network list.
    pub fn parse(path: &Path, text: &str) -> Result<NetworkList, CniError> {
        let bad = |reason: &str| CniError::BadConflist {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        let v: Value = serde_json::from_str(text).map_err(|e| bad(&format!("not JSON: {e}")))?;
        let cni_version = v["cniVersion"]
            .as_str()
            .ok_or_else(|| bad("no string `cniVersion`"))?;
        let name = v["name"].as_str().ok_or_else(|| bad("no string `name`"))?;
        let plugins = v["plugins"]
            .as_array()
            .ok_or_else(|| bad("no `plugins` array"))?;
        let plugins = plugins
            .iter()
            .map(|p| match p.as_object() {
                Some(o) if o.get("type").is_some_and(Value::is_string) => Ok(o.clone()),
                _ => Err(bad("a plugin that is not an object with a string `type`")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if plugins.is_empty() {
            return Err(bad("`plugins` is empty"));
        }
        Ok(NetworkList {
            path: path.to_path_buf(),
            cni_version: cni_version.to_string(),
            name: name.to_string(),
            plugins,
        })
    }

    /// The stdin document of `plugin`: its object plus the list's `cniVersion` and `name`,
    /// and `prevResult` when given.
    pub fn plugin_config(&self, plugin: &Map<String, Value>, prev: Option<&Value>) -> Value {
        let mut conf = plugin.clone();
        conf.insert("cniVersion".into(), Value::String(self.cni_version.clone()));
        conf.insert("name".into(), Value::String(self.name.clone()));
        match prev {
            Some(prev) => conf.insert("prevResult".into(), prev.clone()),
            None => conf.remove("prevResult"),
        };
        Value::Object(conf)
    }

    /// ADD through the chain; `exec(type, stdin)` runs one plugin and returns its result.
    pub fn add_with(
        &self,
        mut exec: impl FnMut(&str, &Value) -> Result<Value, CniError>,
    ) -> Result<Value, CniError> {
        let mut prev: Option<Value> = None;
        for plugin in &self.plugins {
            let stdin = self.plugin_config(plugin, prev.as_ref());
            prev = Some(exec(plugin_type(plugin), &stdin)?);
        }
        // `parse` refuses an empty list, so there is always a last result.
        prev.ok_or_else(|| CniError::BadConflist {
            path: self.path.clone(),
            reason: "`plugins` is empty".into(),
        })
    }

    /// DEL through the chain in reverse; every plugin runs even after a failure (so the
    /// others still release what they hold); the first error is returned.
    pub fn del_with(
        &self,
        prev: Option<&Value>,
        mut exec: impl FnMut(&str, &Value) -> Result<(), CniError>,
    ) -> Result<(), CniError> {
        let mut first_err = None;
        for plugin in self.plugins.iter().rev() {
            let stdin = self.plugin_config(plugin, prev);
            if let Err(e) = exec(plugin_type(plugin), &stdin) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

fn plugin_type(plugin: &Map<String, Value>) -> &str {
    plugin
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// `CNI_ARGS` as the kubelet's runtimes set them.
pub fn cni_args(pod_namespace: &str, pod_name: &str, container_id: &str) -> String {
    format!(
        "K8S_POD_NAMESPACE={pod_namespace};K8S_POD_NAME={pod_name};\
         K8S_POD_INFRA_CONTAINER_ID={container_id};IgnoreUnknown=1"
    )
}

/// The first IPv4 address of a CNI result (`ips[].address`, prefix dropped).
pub fn result_ipv4(result: &Value) -> Option<Ipv4Addr> {
    result["ips"].as_array()?.iter().find_map(|ip| {
        let addr = ip["address"].as_str()?;
        addr.split('/').next()?.parse().ok()
    })
}

/// One pod sandbox as the plugins see it.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`.
    pub netns_path: PathBuf,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// Kubernetes namespace.
    pub pod_namespace: String,
    /// Pod name.
    pub pod_name: String,
}

/// The runtime of one node.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// Where the node's `*.conflist` lives.
    pub conf_dir: PathBuf,
    /// `CNI_PATH`, searched in order.
    pub cni_path: Vec<PathBuf>,
    /// The node's network namespace, where plugins run.
    pub host_netns: String,
}

impl Runtime {
    /// ADD: the final result.
    pub fn add(&self, sandbox: &Sandbox) -> Result<Value, CniError> {
        let list = NetworkList::load(&self.conf_dir)?;
        list.add_with(|plugin, stdin| {
            let out = self.exec(plugin, "ADD", sandbox, stdin)?;
            serde_json::from_str(&out).map_err(|e| CniError::BadOutput {
                plugin: plugin.to_string(),
                command: "ADD",
                reason: format!("its result is not JSON ({e}): {out:?}"),
            })
        })
    }

    /// DEL, with the ADD result when there is one.
    pub fn del(&self, sandbox: &Sandbox, prev: Option<&Value>) -> Result<(), CniError> {
        let list = NetworkList::load(&self.conf_dir)?;
        list.del_with(prev, |plugin, stdin| {
            self.exec(plugin, "DEL", sandbox, stdin).map(drop)
        })
    }

    fn find(&self, plugin: &str) -> Result<PathBuf, CniError> {
        let found = (!plugin.contains('/'))
            .then(|| {
                self.cni_path
                    .iter()
                    .map(|d| d.join(plugin))
                    .find(|p| p.is_file())
            })
            .flatten();
        found.ok_or_else(|| CniError::PluginNotFound {
            plugin: plugin.to_string(),
            path: self.path_var(),
            hint: if ["bridge", "host-local"].contains(&plugin) {
                ": install the Debian package containernetworking-plugins"
            } else {
                ""
            },
        })
    }

    fn path_var(&self) -> String {
        self.cni_path
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }

    /// Runs one plugin in the node's namespace; its stdout on success.
    fn exec(
        &self,
        plugin: &str,
        command: &'static str,
        sandbox: &Sandbox,
        stdin: &Value,
    ) -> Result<String, CniError> {
        let binary = self.find(plugin)?;
        let exec_err = |source| CniError::Exec {
            plugin: plugin.to_string(),
            source,
        };
        let mut cmd = crate::netns::command_in(&self.host_netns, &binary).map_err(|e| {
            exec_err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{e:#}"),
            ))
        })?;
        let mut child = cmd
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &sandbox.container_id)
            .env("CNI_NETNS", &sandbox.netns_path)
            .env("CNI_IFNAME", &sandbox.ifname)
            .env(
                "CNI_ARGS",
                cni_args(
                    &sandbox.pod_namespace,
                    &sandbox.pod_name,
                    &sandbox.container_id,
                ),
            )
            .env("CNI_PATH", self.path_var())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(exec_err)?;
        if let Some(mut pipe) = child.stdin.take() {
            pipe.write_all(stdin.to_string().as_bytes())
                .map_err(exec_err)?;
        }
        let out = child.wait_with_output().map_err(exec_err)?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            return Ok(stdout);
        }
        Err(
            plugin_error(plugin, command, &stdout).unwrap_or_else(|| CniError::BadOutput {
                plugin: plugin.to_string(),
                command,
                reason: format!(
                    "{}; stdout: {:?}; stderr: {:?}",
                    out.status,
                    stdout.trim(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            }),
        )
    }
}

/// The CNI error object `{"code","msg","details"}` a failed plugin printed, as an error.
fn plugin_error(plugin: &str, command: &'static str, stdout: &str) -> Option<CniError> {
    let v: Value = serde_json::from_str(stdout.trim()).ok()?;
    let code = v["code"].as_u64()?;
    let details = v["details"]
        .as_str()
        .filter(|d| !d.is_empty())
        .map(|d| format!(": {d}"))
        .unwrap_or_default();
    Some(CniError::Plugin {
        plugin: plugin.to_string(),
        command,
        code,
        msg: v["msg"].as_str().unwrap_or_default().to_string(),
        details,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn list() -> NetworkList {
        let text = json!({
            "cniVersion": "1.0.0",
            "name": "meshnet",
            "plugins": [
                {"type": "bridge", "bridge": "cni0"},
                {"type": "ambient-mesh-cni", "agent_socket": "/s/cni.sock"},
            ],
        })
        .to_string();
        NetworkList::parse(Path::new("/s/10-meshnet.conflist"), &text).expect("parses")
    }

    #[test]
    fn add_chains_each_result_into_the_next_plugins_prev_result() {
        let mut seen = Vec::new();
        let result = list()
            .add_with(|plugin, stdin| {
                seen.push((plugin.to_string(), stdin.clone()));
                Ok(json!({"cniVersion": "1.0.0", "from": plugin, "ips": [{"address": "10.244.1.2/24"}]}))
            })
            .expect("add");
        assert_eq!(result["from"], "ambient-mesh-cni");
        assert_eq!(result_ipv4(&result), Some(Ipv4Addr::new(10, 244, 1, 2)));
        assert_eq!(seen.len(), 2);
        let (first, stdin) = &seen[0];
        assert_eq!(first, "bridge");
        assert_eq!(
            stdin,
            &json!({"type": "bridge", "bridge": "cni0", "cniVersion": "1.0.0", "name": "meshnet"})
        );
        let (second, stdin) = &seen[1];
        assert_eq!(second, "ambient-mesh-cni");
        assert_eq!(stdin["agent_socket"], "/s/cni.sock");
        assert_eq!(stdin["name"], "meshnet");
        assert_eq!(stdin["prevResult"]["from"], "bridge");
    }

    #[test]
    fn add_stops_at_the_first_failure() {
        let mut calls = 0;
        let err = list()
            .add_with(|plugin, _| {
                calls += 1;
                Err(CniError::Plugin {
                    plugin: plugin.into(),
                    command: "ADD",
                    code: 11,
                    msg: "try again later".into(),
                    details: String::new(),
                })
            })
            .expect_err("fails");
        assert_eq!(calls, 1);
        assert_eq!(
            err.to_string(),
            "CNI plugin bridge failed ADD (code 11): try again later"
        );
    }

    #[test]
    fn del_runs_in_reverse_with_the_cached_result_and_keeps_going() {
        let cached = json!({"cniVersion": "1.0.0", "ips": []});
        let mut order = Vec::new();
        let err = list()
            .del_with(Some(&cached), |plugin, stdin| {
                order.push(plugin.to_string());
                assert_eq!(stdin["prevResult"], cached);
                if plugin == "ambient-mesh-cni" {
                    return Err(CniError::BadOutput {
                        plugin: plugin.into(),
                        command: "DEL",
                        reason: "boom".into(),
                    });
                }
                Ok(())
            })
            .expect_err("first error is returned");
        assert_eq!(order, ["ambient-mesh-cni", "bridge"]);
        assert!(err.to_string().contains("boom"), "{err}");
        // Without a cached result there is no prevResult at all.
        list()
            .del_with(None, |_, stdin| {
                assert!(stdin.get("prevResult").is_none());
                Ok(())
            })
            .expect("del");
    }

    #[test]
    fn cni_args_carry_the_pod() {
        assert_eq!(
            cni_args("demo", "web", "abc123"),
            "K8S_POD_NAMESPACE=demo;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=abc123;IgnoreUnknown=1"
        );
    }

    #[test]
    fn invalid_lists_are_refused_with_the_reason() {
        let p = Path::new("/x.conflist");
        let err = NetworkList::parse(p, "{}").expect_err("no version");
        assert!(err.to_string().contains("cniVersion"), "{err}");
        let err = NetworkList::parse(p, r#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#)
            .expect_err("empty");
        assert!(err.to_string().contains("empty"), "{err}");
        let err = NetworkList::parse(p, r#"{"cniVersion":"1.0.0","name":"n","plugins":[{}]}"#)
            .expect_err("no type");
        assert!(err.to_string().contains("type"), "{err}");
    }

    #[test]
    fn plugin_error_objects_are_quoted() {
        let err = plugin_error(
            "ambient-mesh-cni",
            "ADD",
            r#"{"cniVersion":"1.0.0","code":999,"msg":"pod not enrolled","details":"no ztunnel"}"#,
        )
        .expect("error object");
        assert_eq!(
            err.to_string(),
            "CNI plugin ambient-mesh-cni failed ADD (code 999): pod not enrolled: no ztunnel"
        );
        assert!(plugin_error("x", "ADD", "not json").is_none());
    }

    #[test]
    fn the_first_conflist_by_name_is_read_afresh() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            NetworkList::load(dir.path()),
            Err(CniError::NoConflist(_))
        ));
        let one = r#"{"cniVersion":"1.0.0","name":"a","plugins":[{"type":"bridge"}]}"#;
        let two = r#"{"cniVersion":"1.0.0","name":"b","plugins":[{"type":"bridge"}]}"#;
        std::fs::write(dir.path().join("20-b.conflist"), two).expect("write");
        std::fs::write(dir.path().join("10-a.conflist"), one).expect("write");
        std::fs::write(dir.path().join("00-x.conf"), "ignored").expect("write");
        assert_eq!(NetworkList::load(dir.path()).expect("load").name, "a");
        let runtime = Runtime {
            conf_dir: dir.path().into(),
            cni_path: vec![dir.path().into()],
            host_netns: "none".into(),
        };
        let err = runtime.find("bridge").expect_err("not there");
        assert!(
            err.to_string().contains("containernetworking-plugins"),
            "{err}"
        );
    }
}
