//! What `meshctl top` shows, computed from two successive rounds of scrapes: counters become
//! rates over the time between the rounds (a counter that went down restarted: its new value
//! is the increase), gauges are read from the later round, and latency percentiles are
//! interpolated in the histogram buckets' increases as Prometheus' `histogram_quantile` does.
//!
//! Metric names are the ones docs/observability.md lists: ztunnel's `istio_tcp_*`, the
//! waypoint's `istio_requests_total` and `istio_request_duration_milliseconds`, and where a
//! process exports them `process_*`, `ztunnel_connections_active` and
//! `ztunnel_authorization_decisions_total` (missing ones show as `-` or fall back).

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::expo::Sample;

/// What was scraped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// A node's ztunnel.
    Ztunnel,
    /// A waypoint.
    Waypoint,
}

/// One target's samples.
#[derive(Debug, Clone)]
pub struct Scrape {
    /// The node it runs on (for a waypoint: its pod's node).
    pub node: String,
    /// What it is.
    pub source: Source,
    /// A name for the target (unique within a round).
    pub target: String,
    /// Its samples.
    pub samples: Vec<Sample>,
}

/// Every target scraped at one time.
#[derive(Debug, Clone, Default)]
pub struct Round {
    /// When, in seconds on a monotonic clock.
    pub at: f64,
    /// The scrapes.
    pub scrapes: Vec<Scrape>,
}

/// One node's row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeRow {
    /// Node name.
    pub node: String,
    /// ztunnel's CPU use, percent of one core (`None` without `process_cpu_seconds_total`).
    pub cpu_percent: Option<f64>,
    /// ztunnel's resident memory, bytes.
    pub memory_bytes: Option<f64>,
    /// Connections proxied now.
    pub active_connections: f64,
    /// Connections opened per second.
    pub connections_per_s: f64,
    /// Bytes per second toward destinations (requests).
    pub bytes_in_per_s: f64,
    /// Bytes per second back to sources (responses).
    pub bytes_out_per_s: f64,
    /// Connections denied by policy per second.
    pub denials_per_s: f64,
}

/// One workload's row (`namespace/workload`), inbound and outbound together.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkloadRow {
    /// Namespace.
    pub namespace: String,
    /// Workload name.
    pub workload: String,
    /// Its connections (to it and from it) opened per second.
    pub connections_per_s: f64,
    /// Its connections open now.
    pub active_connections: f64,
    /// Bytes per second it received.
    pub bytes_in_per_s: f64,
    /// Bytes per second it sent.
    pub bytes_out_per_s: f64,
    /// Requests per second through a waypoint (`None`: no waypoint in its path).
    pub requests_per_s: Option<f64>,
    /// Share of those not answered 5xx, 0..1 (`None` without requests).
    pub success_rate: Option<f64>,
    /// Median latency in ms, from the waypoint's histogram.
    pub p50_ms: Option<f64>,
    /// 99th percentile latency in ms.
    pub p99_ms: Option<f64>,
}

/// One `-o json` snapshot / one screen of `top`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    /// Seconds between the two rounds the rates come from.
    pub interval_s: f64,
    /// Per node.
    pub nodes: Vec<NodeRow>,
    /// Per workload.
    pub workloads: Vec<WorkloadRow>,
}

/// A counter's increase between two readings (a lower reading: the process restarted).
pub fn increase(before: f64, after: f64) -> f64 {
    if after >= before {
        after - before
    } else {
        after
    }
}

/// The `q` quantile (0..1) of a histogram given as (upper bound, cumulative count) pairs, by
/// linear interpolation within the bucket, as Prometheus' `histogram_quantile`. `None`
/// without observations; the highest finite bound when the rank falls in `+Inf`.
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let mut buckets = buckets.to_vec();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for (upper, count) in buckets {
        if count >= rank {
            if upper.is_infinite() {
                return Some(lower);
            }
            if count == below {
                return Some(upper);
            }
            return Some(lower + (upper - lower) * (rank - below) / (count - below));
        }
        (lower, below) = (upper, count);
    }
    Some(lower)
}

type SeriesKey<'a> = (&'a str, &'a str, &'a BTreeMap<String, String>);

/// Per sample of `cur`, its increase since `prev` (a series new in `cur` counts from 0).
fn increases<'a>(prev: &'a Round, cur: &'a Round) -> Vec<(&'a Scrape, &'a Sample, f64)> {
    let before: HashMap<SeriesKey<'a>, f64> = prev
        .scrapes
        .iter()
        .flat_map(|s| {
            s.samples
                .iter()
                .map(move |x| ((s.target.as_str(), x.name.as_str(), &x.labels), x.value))
        })
        .collect();
    cur.scrapes
        .iter()
        .flat_map(|s| s.samples.iter().map(move |x| (s, x)))
        .map(|(s, x)| {
            let b = before
                .get(&(s.target.as_str(), x.name.as_str(), &x.labels))
                .copied()
                .unwrap_or(0.0);
            (s, x, increase(b, x.value))
        })
        .collect()
}

const OPENED: &str = "istio_tcp_connections_opened_total";
const CLOSED: &str = "istio_tcp_connections_closed_total";
const RECEIVED: &str = "istio_tcp_received_bytes_total";
const SENT: &str = "istio_tcp_sent_bytes_total";
const DECISIONS: &str = "ztunnel_authorization_decisions_total";

/// The snapshot between rounds `prev` and `cur`.
pub fn snapshot(prev: &Round, cur: &Round) -> Snapshot {
    let dt = (cur.at - prev.at).max(1e-3);
    let inc = increases(prev, cur);
    let mut nodes: BTreeMap<String, NodeRow> = BTreeMap::new();
    let mut workloads: BTreeMap<(String, String), WorkloadRow> = BTreeMap::new();
    let mut latency: BTreeMap<(String, String), BTreeMap<String, f64>> = BTreeMap::new();
    let mut errors: BTreeMap<(String, String), f64> = BTreeMap::new();

    for s in cur.scrapes.iter().filter(|s| s.source == Source::Ztunnel) {
        let row = nodes.entry(s.node.clone()).or_insert_with(|| NodeRow {
            node: s.node.clone(),
            cpu_percent: None,
            memory_bytes: None,
            active_connections: 0.0,
            connections_per_s: 0.0,
            bytes_in_per_s: 0.0,
            bytes_out_per_s: 0.0,
            denials_per_s: 0.0,
        });
        let has_active = s
            .samples
            .iter()
            .any(|x| x.name == "ztunnel_connections_active");
        for x in &s.samples {
            match x.name.as_str() {
                "process_resident_memory_bytes" => row.memory_bytes = Some(x.value),
                "ztunnel_connections_active" => row.active_connections += x.value,
                OPENED if !has_active => row.active_connections += x.value,
                CLOSED if !has_active => row.active_connections -= x.value,
                _ => {}
            }
            if let Some(key) = tcp_workload(x) {
                let w = workload_row(&mut workloads, key);
                match x.name.as_str() {
                    OPENED => w.active_connections += x.value,
                    CLOSED => w.active_connections -= x.value,
                    _ => {}
                }
            }
        }
    }
    let has_decisions = cur
        .scrapes
        .iter()
        .any(|s| s.samples.iter().any(|x| x.name == DECISIONS));
    for (s, x, d) in &inc {
        let rate = d / dt;
        match s.source {
            Source::Ztunnel => {
                let Some(row) = nodes.get_mut(&s.node) else {
                    continue;
                };
                match x.name.as_str() {
                    "process_cpu_seconds_total" => {
                        *row.cpu_percent.get_or_insert(0.0) += rate * 100.0;
                    }
                    OPENED => row.connections_per_s += rate,
                    RECEIVED => row.bytes_in_per_s += rate,
                    SENT => row.bytes_out_per_s += rate,
                    DECISIONS if x.label("decision") == "deny" => row.denials_per_s += rate,
                    CLOSED if !has_decisions && x.label("response_flags") == "DENY" => {
                        row.denials_per_s += rate;
                    }
                    _ => {}
                }
                let Some(key) = tcp_workload(x) else {
                    continue;
                };
                // Bytes from the workload's side: a destination receives the requests, a
                // source sends them.
                let as_destination = x.label("reporter") == "destination";
                let w = workload_row(&mut workloads, key);
                match (x.name.as_str(), as_destination) {
                    (OPENED, _) => w.connections_per_s += rate,
                    (RECEIVED, true) | (SENT, false) => w.bytes_in_per_s += rate,
                    (SENT, true) | (RECEIVED, false) => w.bytes_out_per_s += rate,
                    _ => {}
                }
            }
            Source::Waypoint => {
                let key = (
                    x.label("destination_workload_namespace").to_string(),
                    x.label("destination_workload").to_string(),
                );
                if !known(&key) {
                    continue;
                }
                match x.name.as_str() {
                    "istio_requests_total" => {
                        let w = workload_row(&mut workloads, key.clone());
                        *w.requests_per_s.get_or_insert(0.0) += rate;
                        if x.label("response_code").starts_with('5') {
                            *errors.entry(key).or_default() += d;
                        }
                    }
                    "istio_request_duration_milliseconds_bucket" => {
                        *latency
                            .entry(key)
                            .or_default()
                            .entry(x.label("le").to_string())
                            .or_default() += d;
                    }
                    _ => {}
                }
            }
        }
    }
    for (key, w) in workloads.iter_mut() {
        let requests = w.requests_per_s.unwrap_or(0.0) * dt;
        if requests > 0.0 {
            let failed = errors.get(key).copied().unwrap_or(0.0);
            w.success_rate = Some(1.0 - failed / requests);
        }
        if let Some(buckets) = latency.get(key) {
            let buckets: Vec<(f64, f64)> = buckets
                .iter()
                .filter_map(|(le, c)| Some((parse_le(le)?, *c)))
                .collect();
            w.p50_ms = quantile(0.5, &buckets);
            w.p99_ms = quantile(0.99, &buckets);
        }
        w.active_connections = w.active_connections.max(0.0);
    }
    for n in nodes.values_mut() {
        n.active_connections = n.active_connections.max(0.0);
    }
    Snapshot {
        interval_s: dt,
        nodes: nodes.into_values().collect(),
        workloads: workloads.into_values().collect(),
    }
}

fn parse_le(le: &str) -> Option<f64> {
    match le {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        v => v.parse().ok(),
    }
}

/// Whether a workload key names a workload (Istio writes `unknown` for the rest).
fn known((namespace, name): &(String, String)) -> bool {
    !namespace.is_empty() && !name.is_empty() && name != "unknown" && namespace != "unknown"
}

/// The workload a ztunnel TCP sample belongs to: the destination for `reporter=destination`,
/// the source for `reporter=source`.
fn tcp_workload(x: &Sample) -> Option<(String, String)> {
    if !matches!(x.name.as_str(), OPENED | CLOSED | RECEIVED | SENT) {
        return None;
    }
    let side = match x.label("reporter") {
        "destination" => "destination",
        "source" => "source",
        _ => return None,
    };
    let key = (
        x.label(&format!("{side}_workload_namespace")).to_string(),
        x.label(&format!("{side}_workload")).to_string(),
    );
    known(&key).then_some(key)
}

fn workload_row(
    rows: &mut BTreeMap<(String, String), WorkloadRow>,
    key: (String, String),
) -> &mut WorkloadRow {
    rows.entry(key.clone()).or_insert_with(|| WorkloadRow {
        namespace: key.0,
        workload: key.1,
        connections_per_s: 0.0,
        active_connections: 0.0,
        bytes_in_per_s: 0.0,
        bytes_out_per_s: 0.0,
        requests_per_s: None,
        success_rate: None,
        p50_ms: None,
        p99_ms: None,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::float_cmp)]
mod tests {
    use super::*;
    use crate::top::expo::parse;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    fn tcp(
        reporter: &str,
        src: &str,
        dst: &str,
        opened: u32,
        closed: u32,
        rx: u32,
        tx: u32,
    ) -> String {
        let l = format!(
            "reporter=\"{reporter}\",source_workload=\"{src}\",source_workload_namespace=\"demo\",\
             destination_workload=\"{dst}\",destination_workload_namespace=\"demo\",response_flags=\"-\""
        );
        format!(
            "istio_tcp_connections_opened_total{{{l}}} {opened}\n\
             istio_tcp_connections_closed_total{{{l}}} {closed}\n\
             istio_tcp_received_bytes_total{{{l}}} {rx}\n\
             istio_tcp_sent_bytes_total{{{l}}} {tx}\n"
        )
    }

    fn waypoint(ok: u32, failed: u32, buckets: [u32; 4]) -> String {
        let l = "reporter=\"waypoint\",destination_workload=\"server\",destination_workload_namespace=\"demo\"";
        let [b10, b50, b100, inf] = buckets;
        format!(
            "istio_requests_total{{{l},response_code=\"200\"}} {ok}\n\
             istio_requests_total{{{l},response_code=\"503\"}} {failed}\n\
             istio_request_duration_milliseconds_bucket{{{l},le=\"10.0\"}} {b10}\n\
             istio_request_duration_milliseconds_bucket{{{l},le=\"50.0\"}} {b50}\n\
             istio_request_duration_milliseconds_bucket{{{l},le=\"100.0\"}} {b100}\n\
             istio_request_duration_milliseconds_bucket{{{l},le=\"+Inf\"}} {inf}\n\
             # EOF\n"
        )
    }

    fn round(at: f64, ztunnel: &str, wp: &str) -> Round {
        Round {
            at,
            scrapes: vec![
                Scrape {
                    node: "n1".into(),
                    source: Source::Ztunnel,
                    target: "ztunnel-n1".into(),
                    samples: parse(ztunnel),
                },
                Scrape {
                    node: "n2".into(),
                    source: Source::Waypoint,
                    target: "waypoint-demo".into(),
                    samples: parse(wp),
                },
            ],
        }
    }

    #[test]
    fn counters_become_rates_and_gauges_are_read_from_the_later_round() {
        let before = format!(
            "{}process_cpu_seconds_total 10\nprocess_resident_memory_bytes 1000\n",
            tcp("source", "client", "server", 10, 8, 1000, 4000)
        );
        let after = format!(
            "{}{}process_cpu_seconds_total 10.5\nprocess_resident_memory_bytes 2000\n",
            tcp("source", "client", "server", 30, 20, 3000, 8000),
            tcp("destination", "client", "server", 4, 0, 0, 0)
        );
        let s = snapshot(&round(100.0, &before, ""), &round(102.0, &after, ""));
        assert_eq!(s.interval_s, 2.0);
        let n = &s.nodes[0];
        assert_eq!(n.node, "n1");
        assert!(close(n.cpu_percent.unwrap(), 25.0), "{n:?}");
        assert_eq!(n.memory_bytes, Some(2000.0));
        // (30 + 4 opened) - 20 closed; (20 + 4) opened in 2 s.
        assert_eq!(n.active_connections, 14.0);
        assert_eq!(n.connections_per_s, 12.0);
        assert_eq!((n.bytes_in_per_s, n.bytes_out_per_s), (1000.0, 2000.0));
        let client = s.workloads.iter().find(|w| w.workload == "client").unwrap();
        // The source sent the requests (received by the destination) and got the responses.
        assert_eq!(
            (client.bytes_out_per_s, client.bytes_in_per_s),
            (1000.0, 2000.0)
        );
        assert_eq!(
            (client.connections_per_s, client.active_connections),
            (10.0, 10.0)
        );
        let server = s.workloads.iter().find(|w| w.workload == "server").unwrap();
        assert_eq!(
            (server.connections_per_s, server.active_connections),
            (2.0, 4.0)
        );
        assert_eq!(server.requests_per_s, None, "no waypoint in its path");
    }

    #[test]
    fn a_counter_that_went_down_restarted() {
        assert_eq!(increase(100.0, 30.0), 30.0);
        assert_eq!(increase(30.0, 100.0), 70.0);
    }

    #[test]
    fn requests_success_and_percentiles_come_from_the_waypoint_s_increases() {
        let before = round(0.0, "", &waypoint(100, 0, [50, 90, 100, 100]));
        // 40 more requests: 36 ok, 4 failed; their durations: 20 <= 10 ms, 10 in 10..50,
        // 8 in 50..100, 2 above.
        let after = round(2.0, "", &waypoint(136, 4, [70, 120, 138, 140]));
        let s = snapshot(&before, &after);
        let w = &s.workloads[0];
        assert_eq!(
            (w.namespace.as_str(), w.workload.as_str()),
            ("demo", "server")
        );
        assert_eq!(w.requests_per_s, Some(20.0));
        assert!(close(w.success_rate.unwrap(), 0.9));
        // p50: rank 20 is the last of the first bucket.
        assert_eq!(w.p50_ms, Some(10.0));
        // p99: rank 39.6 falls in +Inf: the highest finite bound.
        assert_eq!(w.p99_ms, Some(100.0));
    }

    #[test]
    fn quantiles_interpolate_within_a_bucket() {
        let buckets = [(10.0, 0.0), (20.0, 100.0), (f64::INFINITY, 100.0)];
        assert_eq!(quantile(0.5, &buckets), Some(15.0));
        assert!(close(quantile(0.99, &buckets).unwrap(), 19.9));
        assert_eq!(quantile(0.5, &[(10.0, 0.0), (f64::INFINITY, 0.0)]), None);
        assert_eq!(quantile(0.5, &[]), None);
    }
}
