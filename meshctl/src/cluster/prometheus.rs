//! `meshctl cluster up --prometheus`: a real Prometheus (Debian's `prometheus`) scraping the
//! cluster with the shipped `manifests/prometheus/` config and rules, for a person's browser at
//! `http://127.0.0.1:<port>/` on this machine.
//!
//! The cluster's addresses (underlay `10.250.0.x`, pod CIDRs) exist only inside its network
//! namespaces, never in the host's, so Prometheus runs in node n1's namespace, whose routes
//! reach every node's underlay address and every pod CIDR; there it listens on
//! `127.0.0.1:9090`. Its UI reaches the host through the *sidecar*, a detached
//! `meshctl cluster prometheus-sidecar` in the host's namespace that
//! - forwards `127.0.0.1:<port>` on the host to `127.0.0.1:9090` in n1 (each upstream socket is
//!   opened by a thread inside n1's namespace), and
//! - every [`REFRESH`] rewrites the file_sd target files from `cluster.json` and the pod
//!   records, so waypoints that come and go are scraped (Prometheus watches the files).
//!
//! ```text
//! <state>/prometheus/prometheus.yml, recording-rules.yml, alert-rules.yml   the shipped files
//! <state>/prometheus/targets/{ztunnel,istiod,cni-agent,waypoint}.json       file_sd targets
//! <state>/prometheus/data/                                                  the TSDB
//! <state>/prometheus/url                                                    http://127.0.0.1:<port>
//! ```
//!
//! Both run as recorded daemons (`prometheus`, `prometheus-sidecar`), so `cluster down` stops
//! them with the rest and removes the directory.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use serde_json::{json, Value};

use super::state::{write_atomic, ClusterState, StateDir};
use crate::process::{self, ProcRecord};

/// The shipped scrape config (file-based discovery, rule files beside it).
const CONFIG: &str = include_str!("../../../manifests/prometheus/prometheus.yml");
/// The shipped recording rules.
const RECORDING_RULES: &str = include_str!("../../../manifests/prometheus/recording-rules.yml");
/// The shipped alert rules.
const ALERT_RULES: &str = include_str!("../../../manifests/prometheus/alert-rules.yml");

/// Prometheus' listen address inside node n1's namespace.
pub const INNER_ADDR: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9090);
/// The default port of its UI on the host.
pub const DEFAULT_PORT: u16 = 9090;
/// How often the sidecar rewrites the target files.
pub const REFRESH: Duration = Duration::from_secs(2);
/// Key of Prometheus in `cluster.json` and its log's name.
pub const KEY: &str = "prometheus";
/// Key of the sidecar in `cluster.json` and its log's name.
pub const SIDECAR_KEY: &str = "prometheus-sidecar";
/// How long Prometheus and the sidecar may take to be ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// `<state>/prometheus`.
pub fn dir(state: &StateDir) -> PathBuf {
    state.root().join("prometheus")
}

fn url_file(state: &StateDir) -> PathBuf {
    dir(state).join("url")
}

/// The URL of the running Prometheus, if `up --prometheus` started one.
pub fn url(state: &StateDir, cluster: &ClusterState) -> Option<String> {
    cluster.daemons.get(KEY)?;
    std::fs::read_to_string(url_file(state))
        .ok()
        .map(|u| u.trim().to_string())
}

/// The shipped config with its global scrape and evaluation intervals (and the scrape timeout,
/// which may not exceed them) set to `interval`, e.g. `1s` for a test; unchanged for `None`.
pub fn config(interval: Option<&str>) -> anyhow::Result<String> {
    let Some(interval) = interval else {
        return Ok(CONFIG.to_string());
    };
    ensure!(
        interval.starts_with(|c: char| c.is_ascii_digit())
            && interval.ends_with(|c: char| c.is_ascii_alphabetic())
            && interval.chars().all(|c| c.is_ascii_alphanumeric()),
        "--prometheus-interval {interval:?}: a Prometheus duration such as 1s, 5s or 1m"
    );
    let mut text = String::with_capacity(CONFIG.len());
    let mut replaced = 0;
    for line in CONFIG.lines() {
        let key = line.trim_start().split(':').next().unwrap_or_default();
        if line.starts_with("  ")
            && !line.starts_with("   ")
            && ["scrape_interval", "scrape_timeout", "evaluation_interval"].contains(&key)
        {
            text.push_str(&format!("  {key}: {interval}\n"));
            replaced += 1;
        } else {
            text.push_str(line);
            text.push('\n');
        }
    }
    // The shipped file's `global:` section must keep all three keys for this to hold.
    ensure!(
        replaced == 3,
        "the shipped prometheus.yml has {replaced} of its 3 global interval keys"
    );
    Ok(text)
}

/// The file_sd target files, by job: every node's ztunnel, istiod-lite, every node's CNI agent
/// (when it serves metrics), and every waypoint pod with an IP. Each target carries `node`.
pub fn targets(
    cluster: &ClusterState,
    pods: &[crate::pod::PodRuntime],
) -> BTreeMap<&'static str, Value> {
    let group = |addr: String, node: &str| json!({"targets": [addr], "labels": {"node": node}});
    let mut files = BTreeMap::new();
    files.insert(
        "ztunnel",
        cluster
            .nodes
            .iter()
            .map(|n| group(n.ztunnel_metrics().to_string(), &n.name))
            .collect(),
    );
    let control = cluster.nodes.first().map_or("n1", |n| n.name.as_str());
    files.insert(
        "istiod",
        json!([group(cluster.istiod_monitoring_addr.to_string(), control)]),
    );
    let agents: Vec<Value> = cluster
        .nodes
        .iter()
        .map(|n| group(n.agent_monitoring().to_string(), &n.name))
        .collect();
    files.insert("cni-agent", Value::Array(agents));
    let mut waypoints: Vec<(String, String)> = pods
        .iter()
        .filter(|p| {
            p.labels
                .contains_key(resources::waypoint::GATEWAY_NAME_LABEL)
        })
        .filter_map(|p| {
            Some((
                format!("{}:{}", p.ip?, WAYPOINT_METRICS_PORT),
                p.node.clone(),
            ))
        })
        .collect();
    waypoints.sort();
    files.insert(
        "waypoint",
        waypoints.into_iter().map(|(a, n)| group(a, &n)).collect(),
    );
    files
}

/// The waypoint's metrics port (it listens on every address of its pod).
const WAYPOINT_METRICS_PORT: u16 = 15020;

/// Writes the target files that changed; returns whether any did.
pub fn write_targets(state: &StateDir, cluster: &ClusterState) -> anyhow::Result<bool> {
    let pods = crate::pod::records(state)?;
    let mut changed = false;
    for (job, content) in targets(cluster, &pods) {
        let path = dir(state).join("targets").join(format!("{job}.json"));
        let text = serde_json::to_string_pretty(&content).context("encoding targets")? + "\n";
        if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            write_atomic(&path, text.as_bytes())?;
            changed = true;
        }
    }
    Ok(changed)
}

/// Starts Prometheus (in n1) and its sidecar (on the host), records both in `cluster` (the
/// caller saves) and returns the URL. `port` 0 picks a free one.
pub fn start(
    state: &StateDir,
    cluster: &mut ClusterState,
    port: u16,
    interval: Option<&str>,
) -> anyhow::Result<String> {
    let binary = crate::sys::tool("prometheus")?;
    let dir = dir(state);
    std::fs::create_dir_all(dir.join("data")).context("creating Prometheus' directory")?;
    write_atomic(&dir.join("prometheus.yml"), config(interval)?.as_bytes())?;
    write_atomic(&dir.join("recording-rules.yml"), RECORDING_RULES.as_bytes())?;
    write_atomic(&dir.join("alert-rules.yml"), ALERT_RULES.as_bytes())?;
    write_targets(state, cluster)?;
    let port = if port == 0 { free_port()? } else { port };
    let url = format!("http://127.0.0.1:{port}");
    write_atomic(&url_file(state), format!("{url}\n").as_bytes())?;
    std::fs::create_dir_all(state.logs_dir()).context("creating the log directory")?;

    let node = cluster.control_node()?.netns.clone();
    let s = |p: &Path| p.display().to_string();
    let argv_owned = [
        s(&binary),
        format!("--config.file={}", s(&dir.join("prometheus.yml"))),
        format!("--storage.tsdb.path={}", s(&dir.join("data"))),
        format!("--web.listen-address={INNER_ADDR}"),
        format!("--web.external-url={url}/"),
    ];
    let record = spawn(&node, &argv_owned, &[], &state.log(KEY))?;
    cluster.daemons.insert(KEY.into(), record);
    progress!(
        "{KEY}: started (pid {}) in {node}, waiting until ready",
        record.pid
    );
    wait(KEY, record, &state.log(KEY), || {
        crate::netns::http_get(
            &node,
            SocketAddr::V4(INNER_ADDR),
            "/-/ready",
            Duration::from_secs(1),
        )
        .is_ok_and(|r| r.status == 200)
    })?;

    let me = std::env::current_exe().context("finding meshctl's own executable")?;
    let argv_owned = [
        s(&me),
        "--state-dir".into(),
        s(state.root()),
        "cluster".into(),
        "prometheus-sidecar".into(),
        "--port".into(),
        port.to_string(),
    ];
    // An empty namespace: the host's, where the UI port must be. A plain-text log.
    let env = [("RUST_LOG", "info"), ("NO_COLOR", "1")];
    let record = spawn("", &argv_owned, &env, &state.log(SIDECAR_KEY))?;
    cluster.daemons.insert(SIDECAR_KEY.into(), record);
    wait(SIDECAR_KEY, record, &state.log(SIDECAR_KEY), || {
        get_local(port, "/-/ready").is_ok_and(|body| body.contains("Ready"))
    })?;
    progress!("{KEY}: ready at {url}");
    Ok(url)
}

fn spawn(
    netns: &str,
    argv: &[String],
    env: &[(&str, &str)],
    log: &Path,
) -> anyhow::Result<ProcRecord> {
    let argv: Vec<&OsStr> = argv.iter().map(OsStr::new).collect();
    process::spawn_detached(&process::Spawn {
        netns,
        argv: &argv,
        env,
        log,
    })
}

/// Waits until `ready`; on failure the error carries the end of the log (the caller's
/// teardown stops the process).
fn wait(
    key: &str,
    record: ProcRecord,
    log: &Path,
    mut ready: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    while !ready() {
        let why = if !record.is_alive() {
            "exited before it was ready".to_string()
        } else if Instant::now() >= deadline {
            format!("was not ready within {READY_TIMEOUT:?}")
        } else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        bail!(
            "{key} {why}; the end of {}:\n{}",
            log.display(),
            super::components::log_tail(log, 25)
        );
    }
    Ok(())
}

/// A free port on the host's loopback (the kernel's pick; free again once returned).
fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// `GET path` on the host's `127.0.0.1:port`; the body.
fn get_local(port: u16, path: &str) -> anyhow::Result<String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut body = String::new();
    stream.read_to_string(&mut body)?;
    Ok(body)
}

/// The sidecar (`meshctl cluster prometheus-sidecar`, started by [`start`]): forwards the
/// host's `127.0.0.1:port` to Prometheus in n1 and keeps the target files current, until
/// `cluster.json` is gone.
pub fn run_sidecar(state: &StateDir, port: u16) -> anyhow::Result<()> {
    let cluster = state.load()?;
    let netns = cluster.control_node()?.netns.clone();
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).with_context(|| {
        format!("listening on 127.0.0.1:{port} (pass another --prometheus-port)")
    })?;
    tracing::info!(port, %netns, upstream = %INNER_ADDR, "prometheus sidecar forwarding");
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let netns = netns.clone();
            std::thread::spawn(move || {
                if let Err(e) = forward(client, &netns) {
                    tracing::debug!(error = %e, "forwarded connection ended with an error");
                }
            });
        }
    });
    loop {
        let cluster = match state.load_opt() {
            Ok(Some(c)) => c,
            Ok(None) => {
                tracing::info!("cluster.json is gone: stopping");
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading cluster.json");
                std::thread::sleep(REFRESH);
                continue;
            }
        };
        match write_targets(state, &cluster) {
            Ok(true) => tracing::info!("target files rewritten"),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "writing the target files"),
        }
        std::thread::sleep(REFRESH);
    }
}

/// Copies bytes both ways between `client` and a new connection to Prometheus in `netns`.
fn forward(client: TcpStream, netns: &str) -> anyhow::Result<()> {
    let upstream = crate::netns::run_in(netns, || {
        TcpStream::connect_timeout(&SocketAddr::V4(INNER_ADDR), Duration::from_secs(5))
    })??;
    splice(client, upstream);
    Ok(())
}

/// Copies bytes both ways until both sides have closed; each end's close is passed on as a
/// half-close, so a request body and its response are never cut short.
fn splice(client: TcpStream, upstream: TcpStream) {
    let halves = client
        .try_clone()
        .and_then(|c| Ok((c, upstream.try_clone()?)));
    let Ok((mut c_read, mut u_write)) = halves else {
        return;
    };
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut c_read, &mut u_write);
        let _ = u_write.shutdown(Shutdown::Write);
    });
    let (mut u_read, mut c_write) = (upstream, client);
    let _ = std::io::copy(&mut u_read, &mut c_write);
    let _ = c_write.shutdown(Shutdown::Write);
    let _ = up.join();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::PodRuntime;

    fn pod(name: &str, node: &str, ip: Option<[u8; 4]>, waypoint: bool) -> PodRuntime {
        let mut labels = BTreeMap::new();
        if waypoint {
            labels.insert(
                resources::waypoint::GATEWAY_NAME_LABEL.to_string(),
                "waypoint".to_string(),
            );
        }
        serde_json::from_value(json!({
            "name": name, "namespace": "shop", "uid": "u", "node": node,
            "netns": format!("mesh-shop-{name}"), "ip": ip.map(Ipv4Addr::from),
            "service_account": "default", "labels": labels, "container_id": "c",
            "cni_result": null, "command": [], "env": {}, "pause": null, "main": null,
        }))
        .expect("a pod record")
    }

    #[test]
    fn targets_list_every_ztunnel_istiod_and_waypoint_pods_with_their_node() {
        let pods = [
            pod("waypoint-abcde", "n2", Some([10, 244, 2, 3]), true),
            pod("web", "n2", Some([10, 244, 2, 4]), false),
            pod("waypoint-fghij", "n1", None, true),
        ];
        let files = targets(&ClusterState::example(), &pods);
        assert_eq!(
            files["ztunnel"],
            json!([
                {"targets": ["10.250.0.1:15020"], "labels": {"node": "n1"}},
                {"targets": ["10.250.0.2:15020"], "labels": {"node": "n2"}},
            ])
        );
        assert_eq!(
            files["istiod"],
            json!([{"targets": ["10.250.0.1:15014"], "labels": {"node": "n1"}}])
        );
        // Only waypoint pods, and only once they have an address.
        assert_eq!(
            files["waypoint"],
            json!([{"targets": ["10.244.2.3:15020"], "labels": {"node": "n2"}}])
        );
        assert_eq!(files["cni-agent"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn the_interval_override_sets_the_three_global_durations_only() {
        assert_eq!(config(None).expect("shipped"), CONFIG);
        let text = config(Some("1s")).expect("1s");
        for key in ["scrape_interval", "scrape_timeout", "evaluation_interval"] {
            assert!(text.contains(&format!("\n  {key}: 1s\n")), "{key}: {text}");
        }
        assert!(!text.contains("15s"), "{text}");
        assert_eq!(text.lines().count(), CONFIG.lines().count());
        assert!(text.contains("- job_name: ztunnel\n"), "{text}");
        for bad in ["", "1", "1 s", "s"] {
            assert!(config(Some(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_sidecar_forwards_a_connection_both_ways() {
        // The forwarding half, without namespaces: an echo upstream on the loopback.
        let upstream = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let addr = upstream.local_addr().expect("addr");
        std::thread::spawn(move || {
            let (mut s, _) = upstream.accept().expect("accept");
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).expect("read");
            s.write_all(&buf).expect("echo");
        });
        let front = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let front_addr = front.local_addr().expect("addr");
        std::thread::spawn(move || {
            let (client, _) = front.accept().expect("accept");
            let upstream = TcpStream::connect(addr).expect("connect");
            splice(client, upstream);
        });
        let mut c = TcpStream::connect(front_addr).expect("connect");
        c.write_all(b"hello").expect("write");
        c.shutdown(Shutdown::Write).expect("shutdown");
        let mut back = String::new();
        c.read_to_string(&mut back).expect("read");
        assert_eq!(back, "hello");
    }
}
