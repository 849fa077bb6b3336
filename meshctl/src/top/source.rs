//! Where `meshctl top` reads metrics: each node's ztunnel and each waypoint pod of the local
//! cluster (`:15020/metrics` inside their network namespaces), or a Prometheus' HTTP API
//! (`--prometheus URL`, for Kubernetes: the series its scrape config labels `job` =
//! ztunnel|waypoint and `node`).

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, ToSocketAddrs as _};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};

use super::expo::{self, Sample};
use super::stats::{Round, Scrape, Source};
use crate::cluster::state::{ClusterState, StateDir};
use crate::{netns, pod};

/// How long one scrape may take.
const TIMEOUT: Duration = Duration::from_secs(2);

/// The label of a waypoint's pods.
const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

/// The window a Prometheus' rates are taken over (a few of its scrape intervals).
pub const PROMETHEUS_WINDOW: Duration = Duration::from_secs(60);

/// The metrics `top` reads from a Prometheus.
const PROMETHEUS_SELECTOR: &str = "{__name__=~\"istio_tcp_.*|istio_requests_total|\
istio_request_duration_milliseconds_bucket|process_cpu_seconds_total|\
process_resident_memory_bytes|ztunnel_connections_active|ztunnel_authorization_decisions_total\",\
job=~\"ztunnel|waypoint\"}";

/// A source of rounds.
pub enum Metrics {
    /// The local cluster in a state directory.
    Local {
        /// Its state directory (pods come and go).
        state: StateDir,
        /// The cluster.
        cluster: ClusterState,
        /// When `top` started (the rounds' clock).
        start: Instant,
    },
    /// A Prometheus at `host:port`.
    Prometheus {
        /// Its address.
        addr: String,
    },
}

impl Metrics {
    /// The local cluster of `state`, or the Prometheus at `url` (`http://host:port`).
    pub fn new(state: &StateDir, prometheus: Option<&str>) -> anyhow::Result<Metrics> {
        if let Some(url) = prometheus {
            let addr = url
                .strip_prefix("http://")
                .with_context(|| format!("{url}: only http:// Prometheus URLs are supported"))?
                .trim_end_matches('/')
                .to_string();
            return Ok(Metrics::Prometheus { addr });
        }
        let cluster = state.load().context(
            "no local cluster here (start one with `meshctl cluster up`, or give --prometheus URL)",
        )?;
        Ok(Metrics::Local {
            state: state.clone(),
            cluster,
            start: Instant::now(),
        })
    }

    /// Whether one round is enough for a snapshot ([`Metrics::rounds`] gives two at once).
    pub fn paired(&self) -> bool {
        matches!(self, Metrics::Prometheus { .. })
    }

    /// The rounds to compare now: for the local cluster one new round (compared with the
    /// previous one); for a Prometheus the window's start and end; and the targets that did
    /// not answer.
    pub fn rounds(&self) -> (Vec<Round>, Vec<String>) {
        match self {
            Metrics::Local {
                state,
                cluster,
                start,
            } => {
                let (round, errors) = local_round(state, cluster, start.elapsed().as_secs_f64());
                (vec![round], errors)
            }
            Metrics::Prometheus { addr } => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64());
                let mut rounds = Vec::new();
                let mut errors = Vec::new();
                for at in [now - PROMETHEUS_WINDOW.as_secs_f64(), now] {
                    match prometheus_round(addr, at) {
                        Ok(r) => rounds.push(r),
                        Err(e) => errors.push(format!("prometheus {addr}: {e:#}")),
                    }
                }
                (rounds, errors)
            }
        }
    }
}

fn local_round(state: &StateDir, cluster: &ClusterState, at: f64) -> (Round, Vec<String>) {
    let mut round = Round {
        at,
        scrapes: Vec::new(),
    };
    let mut errors = Vec::new();
    let mut scrape =
        |netns: &str, addr: SocketAddr, node: &str, source, target: String| match netns::http_get(
            netns, addr, "/metrics", TIMEOUT,
        ) {
            Ok(r) if r.status == 200 => round.scrapes.push(Scrape {
                node: node.to_string(),
                source,
                target,
                samples: expo::parse(&r.body),
            }),
            Ok(r) => errors.push(format!("{target}: /metrics answered {}", r.status)),
            Err(e) => errors.push(format!("{target}: {e:#}")),
        };
    for node in &cluster.nodes {
        scrape(
            &node.netns,
            node.ztunnel_metrics(),
            &node.name,
            Source::Ztunnel,
            format!("ztunnel-{}", node.name),
        );
    }
    let metrics = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 15020));
    for p in pod::records(state).unwrap_or_default() {
        if p.labels.contains_key(GATEWAY_NAME_LABEL) {
            let target = format!("waypoint {}/{}", p.namespace, p.name);
            scrape(&p.netns, metrics, &p.node, Source::Waypoint, target);
        }
    }
    (round, errors)
}

/// The selected series at unix time `at`, one scrape per (job, instance).
fn prometheus_round(addr: &str, at: f64) -> anyhow::Result<Round> {
    let path = format!(
        "/api/v1/query?query={}&time={at:.3}",
        url_encode(PROMETHEUS_SELECTOR)
    );
    let body = http_get(addr, &path)?;
    let json: serde_json::Value = serde_json::from_str(&body).context("not JSON")?;
    if json["status"] != "success" {
        bail!("query failed: {}", json["error"]);
    }
    Ok(Round {
        at,
        scrapes: prometheus_scrapes(&json["data"]["result"]),
    })
}

/// Prometheus' instant vector as scrapes, by `job` and `instance`.
pub fn prometheus_scrapes(result: &serde_json::Value) -> Vec<Scrape> {
    let mut scrapes: std::collections::BTreeMap<String, Scrape> = Default::default();
    for series in result.as_array().into_iter().flatten() {
        let mut labels: std::collections::BTreeMap<String, String> = series["metric"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
            .collect();
        let name = labels.remove("__name__").unwrap_or_default();
        let job = labels.remove("job").unwrap_or_default();
        let instance = labels.remove("instance").unwrap_or_default();
        let node = labels.remove("node").unwrap_or_else(|| instance.clone());
        let source = match job.as_str() {
            "ztunnel" => Source::Ztunnel,
            "waypoint" => Source::Waypoint,
            _ => continue,
        };
        let Some(value) = series["value"][1].as_str().and_then(|v| v.parse().ok()) else {
            continue;
        };
        let target = format!("{job}/{instance}");
        scrapes
            .entry(target.clone())
            .or_insert_with(|| Scrape {
                node,
                source,
                target,
                samples: Vec::new(),
            })
            .samples
            .push(Sample {
                name,
                labels,
                value,
            });
    }
    scrapes.into_values().collect()
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `GET path` from `addr` (`host:port`) over HTTP/1.0; the body of a 200.
fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    let target = addr
        .to_socket_addrs()
        .with_context(|| format!("resolving {addr}"))?
        .next()
        .with_context(|| format!("{addr} has no address"))?;
    let mut stream = TcpStream::connect_timeout(&target, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").context("no header end")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!("{}", head.lines().next().unwrap_or("no status"));
    }
    Ok(body.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_series_become_one_scrape_per_target() {
        let result = serde_json::json!([
            {"metric": {"__name__": "istio_tcp_connections_opened_total", "job": "ztunnel",
                        "instance": "10.0.0.1:15020", "node": "n1", "reporter": "source"},
             "value": [1700000000.0, "12"]},
            {"metric": {"__name__": "process_resident_memory_bytes", "job": "ztunnel",
                        "instance": "10.0.0.1:15020", "node": "n1"},
             "value": [1700000000.0, "1e6"]},
            {"metric": {"__name__": "istio_requests_total", "job": "waypoint",
                        "instance": "10.244.1.9:15020"},
             "value": [1700000000.0, "3"]},
            {"metric": {"__name__": "up", "job": "istiod", "instance": "x"},
             "value": [1700000000.0, "1"]}
        ]);
        let scrapes = prometheus_scrapes(&result);
        assert_eq!(scrapes.len(), 2);
        let z = &scrapes[1];
        assert_eq!((z.node.as_str(), z.source), ("n1", Source::Ztunnel));
        assert_eq!(z.samples.len(), 2);
        assert_eq!(z.samples[0].label("reporter"), "source");
        assert!(!z.samples[0].labels.contains_key("job"));
        assert_eq!(z.samples[1].value, 1e6);
        assert_eq!(
            scrapes[0].node, "10.244.1.9:15020",
            "no node label: the instance"
        );
    }

    #[test]
    fn queries_are_url_encoded() {
        assert_eq!(url_encode("{a=~\"x|y\"}"), "%7Ba%3D~%22x%7Cy%22%7D");
    }
}
