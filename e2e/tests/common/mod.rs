//! A running mesh on a harness topology: istiod-lite on node 1, a ztunnel and a fake CNI agent
//! per node, the cluster described by YAML in a config directory.

#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use e2e::{Node, Pod, PodOpts, Proc, Topology, ZdsAgent};

/// Generous bound for anything eventually true.
pub const WAIT: Duration = Duration::from_secs(15);

/// A service for the config: selects pods by `app` label.
#[derive(Debug, Clone)]
pub struct Svc {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Cluster IP.
    pub vip: String,
    /// Service port.
    pub port: u16,
    /// Target port.
    pub target_port: u16,
    /// Selector `app` value.
    pub app: String,
}

/// The mesh under test.
pub struct Mesh {
    pub topo: Topology,
    pub nodes: Vec<Node>,
    pub config_dir: PathBuf,
    pub data_dir: PathBuf,
    pub istiod: Option<Proc>,
    pub ztunnels: BTreeMap<String, Proc>,
    pub agents: BTreeMap<String, ZdsAgent>,
    /// Namespaces labelled for ambient.
    pub ambient_namespaces: Vec<String>,
    pub services: Vec<Svc>,
    /// Use the real CNI node agent (cni-plugin) instead of the harness's fake ZDS agent.
    pub real_cni: bool,
    pub cni_agents: BTreeMap<String, Proc>,
    /// Extra environment for every ztunnel started from now on (e.g. `POD_DRAIN_SECS`).
    pub ztunnel_env: Vec<(String, String)>,
    /// Extra flags for istiod-lite started from now on (e.g. `--max-cert-ttl-secs`).
    pub istiod_args: Vec<String>,
}

fn token(node: &str) -> String {
    format!("e2e-node-token-{node}-0123456789")
}

impl Mesh {
    /// A topology with `nodes` nodes; nothing running yet.
    pub fn new(test: &str, nodes: usize) -> Mesh {
        e2e::require_root();
        let mut topo = Topology::new(test).expect("topology");
        let nodes: Vec<Node> = (1..=nodes)
            .map(|i| topo.add_node(&format!("n{i}")).expect("node"))
            .collect();
        let config_dir = topo.dir().join("config");
        let data_dir = topo.dir().join("istiod-data");
        std::fs::create_dir_all(&config_dir).expect("config dir");
        std::fs::create_dir_all(&data_dir).expect("data dir");
        let mut tokens = String::from("tokens:\n");
        for n in &nodes {
            let _ = writeln!(
                tokens,
                "  - token: {}\n    node: {}",
                token(&n.name),
                n.name
            );
            std::fs::write(topo.dir().join(format!("{}.token", n.name)), token(&n.name))
                .expect("token file");
        }
        std::fs::write(topo.dir().join("tokens.yaml"), tokens).expect("tokens");
        Mesh {
            topo,
            nodes,
            config_dir,
            data_dir,
            istiod: None,
            ztunnels: BTreeMap::new(),
            agents: BTreeMap::new(),
            ambient_namespaces: vec![],
            services: vec![],
            real_cni: false,
            cni_agents: BTreeMap::new(),
            ztunnel_env: vec![],
            istiod_args: vec![],
        }
    }

    /// Adds a pod (captured when `meshed`) on node index `node` (0-based).
    pub fn pod(
        &mut self,
        node: usize,
        ns: &str,
        name: &str,
        sa: &str,
        app: &str,
        meshed: bool,
    ) -> Pod {
        let node = self.nodes[node].clone();
        let opts = PodOpts {
            sa: sa.into(),
            labels: BTreeMap::from([("app".to_string(), app.to_string())]),
            captured: meshed,
        };
        self.topo.add_pod(&node, ns, name, opts).expect("pod")
    }

    /// Writes the cluster (namespaces, pods, services) to the config directory.
    pub fn write_config(&self) {
        let mut yaml = String::new();
        let mut namespaces: Vec<&str> = self
            .topo
            .pods()
            .iter()
            .map(|p| p.namespace.as_str())
            .collect();
        namespaces.sort();
        namespaces.dedup();
        for ns in namespaces {
            let label = if self.ambient_namespaces.iter().any(|a| a == ns) {
                "\n  labels:\n    istio.io/dataplane-mode: ambient"
            } else {
                ""
            };
            let _ = write!(
                yaml,
                "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}{label}\n"
            );
        }
        for p in self.topo.pods() {
            let app = p.labels.get("app").cloned().unwrap_or_default();
            let _ = write!(
                yaml,
                "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels:\n    app: {app}\nspec:\n  nodeName: {node}\n  serviceAccountName: {sa}\n  containers:\n  - name: app\n    image: app\nstatus:\n  phase: Running\n  podIP: {ip}\n  podIPs:\n  - ip: {ip}\n  conditions:\n  - type: Ready\n    status: \"True\"\n",
                name = p.name,
                ns = p.namespace,
                node = p.node,
                sa = p.sa,
                ip = p.ip,
            );
        }
        for s in &self.services {
            let _ = write!(
                yaml,
                "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  clusterIP: {vip}\n  clusterIPs: [\"{vip}\"]\n  selector:\n    app: {app}\n  ports:\n  - name: tcp\n    port: {port}\n    targetPort: {target}\n",
                name = s.name,
                ns = s.namespace,
                vip = s.vip,
                app = s.app,
                port = s.port,
                target = s.target_port,
            );
        }
        let tmp = self.config_dir.join(".cluster.yaml.tmp");
        std::fs::write(&tmp, yaml).expect("write config");
        std::fs::rename(&tmp, self.config_dir.join("cluster.yaml")).expect("rename config");
    }

    /// Replaces the extra objects (policies...) with `yaml`, atomically.
    pub fn apply(&self, yaml: &str) {
        let tmp = self.config_dir.join(".policies.yaml.tmp");
        std::fs::write(&tmp, yaml).expect("write policies");
        std::fs::rename(&tmp, self.config_dir.join("policies.yaml")).expect("rename policies");
    }

    /// Waits until ztunnel on node `i` holds policy `key` (`<ns>/<name>`), or no longer holds it.
    pub fn wait_policy(&self, i: usize, key: &str, present: bool) {
        let name = key.rsplit('/').next().unwrap_or(key).to_string();
        e2e::wait_until(
            &format!("node {i} policy {key} present={present}"),
            WAIT,
            || {
                let dump = self.config_dump(i);
                dump["config"]["policies"]
                    .to_string()
                    .contains(&format!("\"{name}\""))
                    == present
            },
        )
        .unwrap_or_else(|e| panic!("{e:#}\n{}", self.logs()));
    }

    fn istiod_addr(&self) -> String {
        format!("{}:15012", self.nodes[0].underlay_ip)
    }

    /// Starts istiod-lite on node 1's underlay address.
    pub fn start_istiod(&mut self) {
        let bin = Topology::binary("istiod-lite").expect("istiod-lite binary");
        let listen = self.istiod_addr();
        let monitoring = format!("{}:15014", self.nodes[0].underlay_ip);
        let tokens = self.topo.dir().join("tokens.yaml");
        let extra: Vec<&str> = self.istiod_args.iter().map(String::as_str).collect();
        let proc = self
            .topo
            .spawn_in(
                &self.nodes[0],
                bin,
                &[
                    &extra[..],
                    &[
                        "--config-dir",
                        self.config_dir.to_str().unwrap(),
                        "--data-dir",
                        self.data_dir.to_str().unwrap(),
                        "--listen",
                        &listen,
                        "--monitoring-addr",
                        &monitoring,
                        "--tokens-file",
                        tokens.to_str().unwrap(),
                        "--push-debounce-ms",
                        "50",
                    ],
                ]
                .concat(),
                &[("RUST_LOG", "info")],
            )
            .expect("start istiod-lite");
        e2e::wait_until("istiod-lite root certificate", WAIT, || {
            self.data_dir.join("root-cert.pem").exists()
        })
        .expect("istiod-lite up");
        proc.wait_for_log("istiod-lite ready", WAIT)
            .expect("istiod-lite ready");
        self.istiod = Some(proc);
    }

    /// Stops istiod-lite.
    pub fn stop_istiod(&mut self) {
        if let Some(p) = self.istiod.take() {
            let _ = p.stop();
        }
    }

    /// Starts the real CNI node agent of node `i` (0-based) and waits for its sockets.
    pub fn start_cni_agent(&mut self, i: usize) {
        let node = self.nodes[i].clone();
        let sock = self.topo.dir().join(format!("{}.sock", node.name));
        let cni_sock = self.cni_socket(&node.name);
        let proc = self
            .topo
            .spawn_in(
                &node,
                Topology::binary("cni-plugin").expect("cni-plugin binary"),
                &[
                    "agent",
                    "--zds-socket",
                    sock.to_str().unwrap(),
                    "--cni-socket",
                    cni_sock.to_str().unwrap(),
                    "--config-dir",
                    self.config_dir.to_str().unwrap(),
                    "--node-name",
                    &node.name,
                ],
                &[("RUST_LOG", "info")],
            )
            .expect("start the CNI agent");
        e2e::wait_until("CNI agent sockets", WAIT, || {
            sock.exists() && cni_sock.exists()
        })
        .unwrap_or_else(|e| panic!("{e:#}\n{}", proc.log_tail()));
        self.cni_agents.insert(node.name.clone(), proc);
    }

    /// Starts the fake CNI agent and ztunnel of node `i` (0-based).
    pub fn start_ztunnel(&mut self, i: usize) {
        let node = self.nodes[i].clone();
        let sock = self.topo.dir().join(format!("{}.sock", node.name));
        if self.real_cni && !self.cni_agents.contains_key(&node.name) {
            self.start_cni_agent(i);
        } else if !self.real_cni && !self.agents.contains_key(&node.name) {
            let agent = ZdsAgent::start(&sock).expect("zds agent");
            self.agents.insert(node.name.clone(), agent);
        }
        let proc = self.spawn_ztunnel(i);
        self.ztunnels.insert(node.name.clone(), proc);
        if let Some(agent) = self.agents.get(&node.name) {
            agent
                .wait_connections(1, WAIT)
                .expect("ztunnel connects to the CNI agent");
        }
        let ready = format!("{}:15021", node.underlay_ip);
        self.topo
            .wait_http_ok(&node, ready.parse().unwrap(), "/healthz/ready", WAIT)
            .unwrap_or_else(|e| {
                panic!(
                    "ztunnel on {} ready: {e:#}\n{}",
                    node.name,
                    self.ztunnels[&node.name].log_tail()
                )
            });
    }

    /// Upgrades node `i`'s ztunnel as a DaemonSet rolling update with surge does: starts a
    /// second ztunnel beside the running one, waits until it has taken every pod from the CNI
    /// agent (it logs `ztunnel ready`), then sends the old one SIGTERM. Returns the old one,
    /// draining; the caller waits for its exit. Needs `real_cni` (the real agent parks the
    /// old ztunnel's link; the fake one would hand the pods back and forth).
    pub fn upgrade_ztunnel(&mut self, i: usize) -> Proc {
        let name = self.nodes[i].name.clone();
        let new = self.surge_ztunnel(i);
        let old = self
            .ztunnels
            .insert(name.clone(), new)
            .unwrap_or_else(|| panic!("no ztunnel runs on {name}"));
        old.signal(nix::sys::signal::Signal::SIGTERM)
            .expect("SIGTERM the old ztunnel");
        old
    }

    /// The first half of an upgrade: starts a second ztunnel on node `i` beside the running
    /// one and waits until it has taken every pod from the CNI agent. The running one stays
    /// the node's (and is not signalled); the caller owns the new one.
    pub fn surge_ztunnel(&mut self, i: usize) -> Proc {
        assert!(self.real_cni, "an upgrade needs the real CNI agent");
        let new = self.spawn_ztunnel(i);
        new.wait_for_log("ztunnel ready", WAIT).unwrap_or_else(|e| {
            panic!(
                "the new ztunnel on {}: {e:#}\n{}",
                self.nodes[i].name,
                self.logs()
            )
        });
        new
    }

    /// Spawns a ztunnel process for node `i` (admin, metrics and readiness ports are shared
    /// with any other ztunnel of the node: they bind with `SO_REUSEPORT`).
    fn spawn_ztunnel(&self, i: usize) -> Proc {
        let node = self.nodes[i].clone();
        let sock = self.topo.dir().join(format!("{}.sock", node.name));
        let bin = Topology::binary("ztunnel").expect("ztunnel binary");
        let xds = format!("https://{}", self.istiod_addr());
        let root = self.data_dir.join("root-cert.pem");
        let token = self.topo.dir().join(format!("{}.token", node.name));
        let metrics = format!("{}:15020", node.underlay_ip);
        let ready = format!("{}:15021", node.underlay_ip);
        let mut env = vec![("RUST_LOG", "info,access=info")];
        env.extend(
            self.ztunnel_env
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        );
        self.topo
            .spawn_in(
                &node,
                bin,
                &[
                    "--node-name",
                    &node.name,
                    "--xds-address",
                    &xds,
                    "--root-ca-file",
                    root.to_str().unwrap(),
                    "--token-file",
                    token.to_str().unwrap(),
                    "--inpod-uds",
                    sock.to_str().unwrap(),
                    "--admin-addr",
                    "127.0.0.1:15000",
                    "--metrics-addr",
                    &metrics,
                    "--readiness-addr",
                    &ready,
                ],
                &env,
            )
            .expect("start ztunnel")
    }

    /// Stops ztunnel of node `i`.
    pub fn stop_ztunnel(&mut self, i: usize) {
        if let Some(p) = self.ztunnels.remove(&self.nodes[i].name) {
            let _ = p.stop();
        }
    }

    /// The node agent's socket for CNI plugin calls on `node`.
    pub fn cni_socket(&self, node: &str) -> PathBuf {
        self.topo.dir().join(format!("{node}-cni.sock"))
    }

    /// Runs the real CNI plugin binary for `pod` as a container runtime would (chained after
    /// the network plugin, with its result as `prevResult`); returns (exit code, stdout).
    pub fn cni(&self, command: &str, pod: &Pod) -> (i32, String) {
        use std::io::Write as _;
        let conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "k8s-pod-network",
            "type": "cni-plugin",
            "agent_socket": self.cni_socket(&pod.node),
            "prevResult": {
                "cniVersion": "1.0.0",
                "interfaces": [{"name": "eth0", "sandbox": format!("/var/run/netns/{}", pod.netns_name)}],
                "ips": [{"address": format!("{}/24", pod.ip), "interface": 0}],
            },
        });
        let mut child =
            std::process::Command::new(Topology::binary("cni-plugin").expect("cni-plugin"))
                .env("CNI_COMMAND", command)
                .env(
                    "CNI_CONTAINERID",
                    format!("ctr-{}-{}", pod.namespace, pod.name),
                )
                .env("CNI_NETNS", format!("/var/run/netns/{}", pod.netns_name))
                .env("CNI_IFNAME", "eth0")
                .env("CNI_PATH", "/usr/lib/cni")
                .env(
                    "CNI_ARGS",
                    format!(
                        "K8S_POD_NAMESPACE={};K8S_POD_NAME={}",
                        pod.namespace, pod.name
                    ),
                )
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("run the CNI plugin");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(conf.to_string().as_bytes())
            .expect("stdin");
        let out = child.wait_with_output().expect("plugin");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// Hands every meshed pod of each node to its ztunnel.
    pub fn enroll(&self, pod: &Pod) {
        self.agents[&pod.node].add(pod).expect("zds add");
    }

    /// The common start: namespace `demo` in ambient, a captured `client` on node 1 and a
    /// captured `server` on node 2 with a TCP echo on 7000, the mesh started, both pods
    /// enrolled, and node 1's ztunnel knowing the server. Settings such as `ztunnel_env` must
    /// be made before.
    pub fn start_client_server(&mut self) -> (Pod, Pod, Proc) {
        self.ambient_namespaces = vec!["demo".into()];
        let a = self.pod(0, "demo", "client", "client", "client", true);
        let b = self.pod(1, "demo", "server", "server", "server", true);
        self.start();
        let echo = self.topo.tcp_echo(&b, 7000).expect("echo");
        self.enroll(&a);
        self.enroll(&b);
        self.wait_workload(0, &b.uid);
        (a, b, echo)
    }

    /// Starts everything: config, istiod-lite, every node's ztunnel.
    pub fn start(&mut self) {
        self.write_config();
        self.start_istiod();
        for i in 0..self.nodes.len() {
            self.start_ztunnel(i);
        }
    }

    /// ztunnel's `/config_dump` on node `i`.
    pub fn config_dump(&self, i: usize) -> serde_json::Value {
        let node = &self.nodes[i];
        let resp = self
            .topo
            .http_get(node, "127.0.0.1:15000".parse().unwrap(), "/config_dump")
            .expect("config dump");
        serde_json::from_str(&resp.body).expect("config dump is JSON")
    }

    /// ztunnel's `/metrics` on node `i`.
    pub fn metrics(&self, i: usize) -> String {
        let node = &self.nodes[i];
        let addr = format!("{}:15020", node.underlay_ip).parse().unwrap();
        self.topo
            .http_get(node, addr, "/metrics")
            .expect("metrics")
            .body
    }

    /// Waits until ztunnel on node `i` knows workload `uid`.
    pub fn wait_workload(&self, i: usize, uid: &str) {
        e2e::wait_until(&format!("node {i} knows {uid}"), WAIT, || {
            self.config_dump(i)["config"].to_string().contains(uid)
        })
        .unwrap_or_else(|e| panic!("{e:#}\n{}", self.ztunnels[&self.nodes[i].name].log_tail()));
    }

    /// Dumps every process log (for failure messages).
    pub fn logs(&self) -> String {
        let mut out = String::new();
        if let Some(p) = &self.istiod {
            let _ = writeln!(out, "--- istiod-lite\n{}", p.log_tail());
        }
        for (n, p) in &self.ztunnels {
            let _ = writeln!(out, "--- ztunnel {n}\n{}", p.log_tail());
        }
        for (n, p) in &self.cni_agents {
            let _ = writeln!(out, "--- CNI agent {n}\n{}", p.log_tail());
        }
        out
    }

    /// A long-lived client in `from`: connects to `to`, sends `first`, and once `gate` exists
    /// sends `second` (`e2e-tcp send-gated`). Returns once the first part is sent.
    pub fn send_gated(
        &self,
        from: &Pod,
        to: std::net::SocketAddr,
        first: &str,
        gate: &std::path::Path,
        second: &str,
    ) -> Proc {
        let gate = gate.to_str().expect("utf-8 path");
        let proc = self
            .topo
            .spawn_in(
                from,
                Topology::tcp_tool().expect("e2e-tcp"),
                &["send-gated", &to.to_string(), first, gate, second],
                &[],
            )
            .expect("long-lived client");
        proc.wait_for_log("first sent", WAIT)
            .unwrap_or_else(|e| panic!("long-lived connection open: {e:#}\n{}", self.logs()));
        proc
    }
}

/// An AuthorizationPolicy `deny-<port>` in `namespace` that denies every connection to `port`.
pub fn deny_port(namespace: &str, port: u16) -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-{port}
  namespace: {namespace}
spec:
  action: DENY
  rules:
  - to:
    - operation:
        ports: [\"{port}\"]
"
    )
}

/// Sums the values of metric lines named `name` whose labels contain every `needle`.
pub fn metric_sum(text: &str, name: &str, needles: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && needles.iter().all(|n| l.contains(n)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
