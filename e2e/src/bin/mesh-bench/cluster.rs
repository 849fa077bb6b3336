//! The benchmark's `meshctl` local cluster: up, pods, exec, and a `down` that runs exactly once
//! (end of run, error, or signal).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Mutex};

use anyhow::{bail, Context as _};

use crate::WAIT;

/// `meshctl --state-dir <state> cluster down` of the running cluster, once: taken by whoever
/// gets there first (the end of the run, an error unwinding, or the signal thread).
pub(crate) static DOWN: Mutex<Option<(PathBuf, PathBuf)>> = Mutex::new(None);

/// What to stop before the cluster goes down that meshctl does not know (upstream ztunnel,
/// a child of this process), registered by whoever started it.
static BEFORE_DOWN: Mutex<Vec<fn()>> = Mutex::new(Vec::new());

/// Runs `hook` before the cluster goes down (once per registration).
pub(crate) fn before_down(hook: fn()) {
    BEFORE_DOWN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(hook);
}

pub(crate) fn cluster_down_once() {
    let hooks = std::mem::take(
        &mut *BEFORE_DOWN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    for hook in hooks {
        hook();
    }
    let mut pending = DOWN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some((meshctl, state)) = pending.take() else {
        return;
    };
    eprintln!("taking the cluster down...");
    match Command::new(&meshctl)
        .arg("--state-dir")
        .arg(&state)
        .args(["cluster", "down"])
        .output()
    {
        Ok(out) if out.status.success() => {
            eprint!("{}", String::from_utf8_lossy(&out.stdout));
        }
        Ok(out) => eprintln!(
            "mesh-bench: meshctl cluster down failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => eprintln!("mesh-bench: running meshctl cluster down: {e}"),
    }
}

/// Takes the cluster down, then exits, on SIGINT, SIGTERM or SIGHUP: a thread with a tokio
/// runtime waits for them. (Handlers, not a blocked signal mask: the mask would be inherited by
/// meshctl and, through it, by ztunnel and the pods, which could then not be stopped.)
pub(crate) fn down_on_signals() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let (ready_tx, ready) = mpsc::channel::<anyhow::Result<()>>();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let waited = rt.map_err(anyhow::Error::from).and_then(|rt| {
                rt.block_on(async {
                    let mut int = signal(SignalKind::interrupt())?;
                    let mut term = signal(SignalKind::terminate())?;
                    let mut hup = signal(SignalKind::hangup())?;
                    let _ = ready_tx.send(Ok(()));
                    anyhow::Ok(tokio::select! {
                        _ = int.recv() => "SIGINT",
                        _ = term.recv() => "SIGTERM",
                        _ = hup.recv() => "SIGHUP",
                    })
                })
            });
            match waited {
                Ok(name) => {
                    eprintln!("mesh-bench: {name}: stopping");
                    cluster_down_once();
                    std::process::exit(130);
                }
                Err(e) => drop(ready_tx.send(Err(e))),
            }
        })?;
    ready.recv()?
}

/// A pod of the benchmark.
#[derive(Debug, Clone)]
pub(crate) struct PodRef {
    pub(crate) namespace: &'static str,
    pub(crate) name: &'static str,
    pub(crate) node: &'static str,
    pub(crate) ip: Ipv4Addr,
}

impl PodRef {
    pub(crate) fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.ip, port))
    }

    pub(crate) fn uid(&self) -> String {
        format!("Kubernetes//v1/Pod/{}/{}", self.namespace, self.name)
    }
}

/// One row of `meshctl get pods`.
#[derive(Debug)]
pub(crate) struct Row {
    pub(crate) name: String,
    pub(crate) captured: bool,
}

/// The local cluster, taken down on drop.
pub(crate) struct Cluster {
    pub(crate) meshctl: PathBuf,
    pub(crate) state: PathBuf,
    pub(crate) name: String,
}

impl Cluster {
    /// `meshctl cluster up --nodes 2` in a fresh state directory.
    pub(crate) fn up(meshctl: PathBuf) -> anyhow::Result<Cluster> {
        let name = format!("mb{}", std::process::id() % 100_000);
        let state = std::env::temp_dir().join(format!("mesh-bench-{name}"));
        if state.join("cluster.json").exists() {
            bail!(
                "{} holds a cluster already: take it down with `meshctl --state-dir {} cluster down`",
                state.display(),
                state.display()
            );
        }
        std::fs::create_dir_all(&state).with_context(|| format!("creating {}", state.display()))?;
        *DOWN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((meshctl.clone(), state.clone()));
        let c = Cluster {
            meshctl,
            state,
            name,
        };
        eprintln!(
            "meshctl cluster up --nodes 2 --name {} (state {})...",
            c.name,
            c.state.display()
        );
        c.ok(&["cluster", "up", "--nodes", "2", "--name", &c.name])?;
        Ok(c)
    }

    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.meshctl);
        cmd.arg("--state-dir").arg(&self.state).args(args);
        cmd
    }

    pub(crate) fn run(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.command(args)
            .output()
            .with_context(|| format!("running {}", self.meshctl.display()))
    }

    /// Runs meshctl; its stdout, or an error with its output and the daemons' log tails.
    pub(crate) fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.run(args)?;
        if !out.status.success() {
            bail!(
                "meshctl {} failed ({}):\n{}{}\n{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.logs()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The last lines of every log of the cluster, for error messages.
    pub(crate) fn logs(&self) -> String {
        let mut all = String::new();
        let Ok(entries) = std::fs::read_dir(self.state.join("logs")) else {
            return all;
        };
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            all.push_str(&format!("--- {}\n", path.display()));
            for line in &lines[lines.len().saturating_sub(15)..] {
                all.push_str(line);
                all.push('\n');
            }
        }
        all
    }

    /// `meshctl pod run NAME -n NS --node NODE --sa SA -- CMD...`; the pod with the IP it
    /// printed.
    pub(crate) fn pod_run(
        &self,
        namespace: &'static str,
        name: &'static str,
        node: &'static str,
        sa: &str,
        labels: &str,
        cmd: &[&str],
    ) -> anyhow::Result<PodRef> {
        let mut args = vec![
            "pod", "run", name, "-n", namespace, "--node", node, "--sa", sa,
        ];
        if !labels.is_empty() {
            args.extend_from_slice(&["--labels", labels]);
        }
        if !cmd.is_empty() {
            args.push("--");
            args.extend_from_slice(cmd);
        }
        let out = self.ok(&args)?;
        let ip = out
            .lines()
            .last()
            .and_then(|l| l.trim().parse().ok())
            .with_context(|| format!("meshctl pod run {namespace}/{name} printed no IP: {out}"))?;
        eprintln!("  pod {namespace}/{name} on {node}: {ip}");
        Ok(PodRef {
            namespace,
            name,
            node,
            ip,
        })
    }

    /// `meshctl get pods -n NS`.
    pub(crate) fn pods(&self, namespace: &str) -> anyhow::Result<Vec<Row>> {
        let out = self.ok(&["get", "pods", "-n", namespace])?;
        let mut lines = out.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        let col = |name: &str| {
            header
                .iter()
                .position(|h| *h == name)
                .with_context(|| format!("no column {name} in `meshctl get pods`: {out}"))
        };
        let (name_col, captured_col) = (col("NAME")?, col("CAPTURED")?);
        Ok(lines
            .map(|l| {
                let cells: Vec<&str> = l.split_whitespace().collect();
                Row {
                    name: cells.get(name_col).unwrap_or(&"").to_string(),
                    captured: cells.get(captured_col) == Some(&"yes"),
                }
            })
            .collect())
    }

    pub(crate) fn wait_captured(&self, pods: &[&PodRef]) -> anyhow::Result<()> {
        e2e::retry_until("the mesh pods to show CAPTURED yes", WAIT, || {
            for p in pods {
                let rows = self.pods(p.namespace)?;
                let captured = rows.iter().any(|r| r.name == p.name && r.captured);
                anyhow::ensure!(captured, "{}/{} not captured yet", p.namespace, p.name);
            }
            Ok(())
        })
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", self.logs()))
    }

    /// `/config_dump` of ztunnel on `node` (admin on 127.0.0.1:15000 inside the node).
    pub(crate) fn config_dump(&self, node: &str) -> anyhow::Result<serde_json::Value> {
        let out = Command::new("ip")
            .args(["netns", "exec", &format!("{}-{node}", self.name)])
            .args(["curl", "-s", "--max-time", "3"])
            .arg("http://127.0.0.1:15000/config_dump")
            .output()
            .context("running curl in the node's namespace")?;
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Waits until ztunnel on `node` knows every pod of `pods` as an HBONE workload.
    pub(crate) fn wait_hbone(&self, node: &str, pods: &[&PodRef]) -> anyhow::Result<()> {
        e2e::retry_until(
            &format!("ztunnel on {node} to know HBONE workloads"),
            WAIT,
            || {
                let dump = self.config_dump(node)?;
                let workloads = dump["config"]["workloads"].as_array().cloned();
                for p in pods {
                    let uid = p.uid();
                    let hbone = workloads.as_ref().is_some_and(|ws| {
                        ws.iter()
                            .any(|w| w["uid"] == uid.as_str() && w["tunnelProtocol"] == "HBONE")
                    });
                    anyhow::ensure!(hbone, "{uid} is not an HBONE workload on {node} yet");
                }
                Ok(())
            },
        )
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", self.logs()))
    }

    /// A pod's log: what its command wrote.
    pub(crate) fn pod_log(&self, p: &PodRef) -> String {
        let path = self
            .state
            .join("logs")
            .join(format!("pod-{}-{}.log", p.namespace, p.name));
        std::fs::read_to_string(path).unwrap_or_default()
    }

    pub(crate) fn wait_pod_log(&self, p: &PodRef, needles: &[&str]) -> anyhow::Result<()> {
        e2e::wait_until(
            &format!("{}/{} to start", p.namespace, p.name),
            WAIT,
            || {
                let log = self.pod_log(p);
                needles.iter().all(|n| log.contains(n))
            },
        )
        .map_err(|e| anyhow::anyhow!("{e:#}; its log:\n{}", self.pod_log(p)))
    }

    /// The pid of a daemon (`ztunnel-n1`...) from `<state>/cluster.json`.
    pub(crate) fn daemon_pid(&self, key: &str) -> anyhow::Result<u32> {
        let state = self.state_json()?;
        let pid = state["daemons"][key]["pid"]
            .as_u64()
            .with_context(|| format!("no running daemon {key} in cluster.json"))?;
        Ok(u32::try_from(pid)?)
    }

    /// `<state>/cluster.json`.
    fn state_json(&self) -> anyhow::Result<serde_json::Value> {
        let path = self.state.join("cluster.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
    }

    /// istiod-lite's address (CA and xDS), from `<state>/cluster.json`.
    pub(crate) fn istiod_addr(&self) -> anyhow::Result<String> {
        let state = self.state_json()?;
        state["istiod_addr"]
            .as_str()
            .map(str::to_string)
            .context("no istiod_addr in cluster.json")
    }

    /// A node's underlay address, from `<state>/cluster.json`.
    pub(crate) fn node_ip(&self, node: &str) -> anyhow::Result<String> {
        let state = self.state_json()?;
        state["nodes"]
            .as_array()
            .and_then(|ns| ns.iter().find(|n| n["name"] == node))
            .and_then(|n| n["underlay_ip"].as_str())
            .map(str::to_string)
            .with_context(|| format!("no node {node} in cluster.json"))
    }

    /// `meshctl pod exec` of `cmd` in pod `p`, to completion; its stdout.
    pub(crate) fn exec(&self, p: &PodRef, cmd: &[&str]) -> anyhow::Result<String> {
        let mut args = vec!["pod", "exec", p.name, "-n", p.namespace, "--"];
        args.extend_from_slice(cmd);
        let out = self.run(&args)?;
        if !out.status.success() {
            bail!(
                "{} in {}/{} failed ({}): {}{}",
                cmd.join(" "),
                p.namespace,
                p.name,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `meshctl pod exec` of `cmd` in pod `p`, started with its stdin and stdout piped.
    pub(crate) fn exec_spawn(&self, p: &PodRef, cmd: &[&str]) -> anyhow::Result<Child> {
        let mut args = vec!["pod", "exec", p.name, "-n", p.namespace, "--"];
        args.extend_from_slice(cmd);
        self.command(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting meshctl pod exec")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        cluster_down_once();
        // meshctl removes the state directory once empty; this is for a failed `down`.
        let _ = std::fs::remove_dir(&self.state);
    }
}

/// `s` quoted for `sh`.
pub(crate) fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Fails naming the package when a tool the benchmark runs is missing.
pub(crate) fn require_tool(name: &str, package: &str) -> anyhow::Result<()> {
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain(["/usr/sbin", "/usr/bin"].map(PathBuf::from))
        .any(|d| d.join(name).is_file());
    anyhow::ensure!(found, "`{name}` not found: apt-get install {package}");
    Ok(())
}
