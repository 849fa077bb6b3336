//! prometheus-client (what the mesh uses) against `metrics` + `metrics-exporter-prometheus`
//! (the crate the mission's package list names), on what ztunnel records per connection and
//! on a scrape.
//!
//! ```text
//! cargo bench -p mesh --bench metrics_cost
//! ```
//!
//! - *per connection*: what ztunnel does for every proxied connection: build Istio's 23-label
//!   set from the two workloads, count the open (`istio_tcp_connections_opened_total`), and at
//!   the end count the close and both byte counters. Connections cycle over 100 distinct
//!   source/destination pairs, so every lookup after warm-up finds an existing series. Run on
//!   one thread, and on two threads at once (the data runtime's workers on this machine).
//! - *held handles*: the four increments alone, through handles resolved beforehand (what the
//!   per-pod counters and the waypoint's histograms cost), and one histogram observation.
//! - *scrape*: encoding 1,000 series (250 label sets × the four `istio_tcp_*` counters).
//!
//! Each cell is the median of 7 runs. The exposition of each is checked and printed: format,
//! `_total` suffix, and whether a single series can be removed (a pod that left). Run without
//! `--bench` (as `cargo test --all-targets` does) it makes one short pass.
#![allow(clippy::print_stdout, clippy::unwrap_used)] // A benchmark prints its table.

use std::hint::black_box;
use std::time::Instant;

use mesh::metrics::{set_label, Reporter, SecurityPolicy, TcpLabels, TcpMetrics};
use metrics::Label;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// One side of a connection, as the store describes a workload.
#[derive(Clone)]
struct Side {
    workload: String,
    namespace: String,
    canonical: String,
    revision: String,
    principal: String,
    cluster: String,
}

/// A source/destination pair and the service addressed.
#[derive(Clone)]
struct Pair {
    src: Side,
    dst: Side,
    service: String,
}

fn side(name: &str, ns: &str) -> Side {
    Side {
        workload: name.to_string(),
        namespace: ns.to_string(),
        canonical: name.to_string(),
        revision: "v1".to_string(),
        principal: format!("spiffe://cluster.local/ns/{ns}/sa/{name}"),
        cluster: "Kubernetes".to_string(),
    }
}

fn pairs(n: usize) -> Vec<Pair> {
    (0..n)
        .map(|i| Pair {
            src: side(&format!("client-{}", i % 10), "shop"),
            dst: side(&format!("server-{}", i / 10), "backend"),
            service: format!("server-{}.backend.svc.cluster.local", i / 10),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// prometheus-client: the mesh's own types, as ztunnel's `ConnectionRecord` uses them.

fn pc_labels(p: &Pair) -> TcpLabels {
    let mut l = TcpLabels::new(Reporter::destination);
    for (slots, s) in [
        (
            [
                &mut l.source_workload,
                &mut l.source_canonical_service,
                &mut l.source_canonical_revision,
                &mut l.source_workload_namespace,
                &mut l.source_principal,
                &mut l.source_cluster,
            ],
            &p.src,
        ),
        (
            [
                &mut l.destination_workload,
                &mut l.destination_canonical_service,
                &mut l.destination_canonical_revision,
                &mut l.destination_workload_namespace,
                &mut l.destination_principal,
                &mut l.destination_cluster,
            ],
            &p.dst,
        ),
    ] {
        let values = [
            &s.workload,
            &s.canonical,
            &s.revision,
            &s.namespace,
            &s.principal,
            &s.cluster,
        ];
        for (slot, value) in slots.into_iter().zip(values) {
            set_label(slot, value);
        }
    }
    set_label(&mut l.source_app, &p.src.canonical);
    set_label(&mut l.source_version, &p.src.revision);
    set_label(&mut l.destination_app, &p.dst.canonical);
    set_label(&mut l.destination_version, &p.dst.revision);
    set_label(&mut l.destination_service, &p.service);
    set_label(&mut l.destination_service_namespace, &p.dst.namespace);
    set_label(&mut l.destination_service_name, &p.dst.canonical);
    l.connection_security_policy = SecurityPolicy::mutual_tls;
    l
}

fn pc_connection(m: &TcpMetrics, p: &Pair) {
    let series = m.series(pc_labels(p));
    series.record_open();
    series.record_close(1000, 2000);
}

// ---------------------------------------------------------------------------------------------
// metrics: the same 23 labels as key/value strings, through the global recorder.

fn m_labels(p: &Pair) -> Vec<Label> {
    let s = |k: &'static str, v: &str| Label::new(k, v.to_string());
    vec![
        Label::new("reporter", "destination"),
        s("source_workload", &p.src.workload),
        s("source_canonical_service", &p.src.canonical),
        s("source_canonical_revision", &p.src.revision),
        s("source_workload_namespace", &p.src.namespace),
        s("source_principal", &p.src.principal),
        s("source_app", &p.src.canonical),
        s("source_version", &p.src.revision),
        s("source_cluster", &p.src.cluster),
        s("destination_service", &p.service),
        s("destination_service_namespace", &p.dst.namespace),
        s("destination_service_name", &p.dst.canonical),
        s("destination_workload", &p.dst.workload),
        s("destination_canonical_service", &p.dst.canonical),
        s("destination_canonical_revision", &p.dst.revision),
        s("destination_workload_namespace", &p.dst.namespace),
        s("destination_principal", &p.dst.principal),
        s("destination_app", &p.dst.canonical),
        s("destination_version", &p.dst.revision),
        s("destination_cluster", &p.dst.cluster),
        Label::new("request_protocol", "tcp"),
        Label::new("response_flags", "-"),
        Label::new("connection_security_policy", "mutual_tls"),
    ]
}

fn m_connection(p: &Pair) {
    let labels = m_labels(p);
    metrics::counter!("istio_tcp_connections_opened_total", labels.clone()).increment(1);
    metrics::counter!("istio_tcp_connections_closed_total", labels.clone()).increment(1);
    metrics::counter!("istio_tcp_received_bytes_total", labels.clone()).increment(1000);
    metrics::counter!("istio_tcp_sent_bytes_total", labels).increment(2000);
}

// ---------------------------------------------------------------------------------------------
// Measuring.

/// Median nanoseconds per iteration of `f(i)` over `n` iterations, on `threads` threads at
/// once (each doing `n / threads`; the time is the wall time of all).
fn per_op(runs: usize, n: usize, threads: usize, f: impl Fn(usize) + Sync) -> f64 {
    let mut samples: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            std::thread::scope(|scope| {
                for t in 0..threads {
                    let f = &f;
                    scope.spawn(move || {
                        for i in 0..n / threads {
                            f(i * threads + t);
                        }
                    });
                }
            });
            start.elapsed().as_nanos() as f64 / n as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn median_us(runs: usize, mut f: impl FnMut() -> usize) -> (f64, usize) {
    let mut bytes = 0;
    let mut samples: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            bytes = black_box(f());
            start.elapsed().as_nanos() as f64 / 1000.0
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    (samples[samples.len() / 2], bytes)
}

fn first_line<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .map(|l| &l[..l.len().min(110)])
        .unwrap_or("(none)")
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (runs, n) = if full { (7, 200_000) } else { (1, 2_000) };
    let pairs = pairs(100);
    let pair = |i: usize| &pairs[i % pairs.len()];

    let mut registry = Registry::default();
    let tcp = TcpMetrics::register(&mut registry);
    let handle: PrometheusHandle = PrometheusBuilder::new()
        .set_buckets(&[1.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0])
        .unwrap()
        .install_recorder()
        .unwrap();

    println!("per connection (ns; 23 labels, open + close + 2 byte counters, 100 pairs):");
    for threads in [1, 2] {
        let pc = per_op(runs, n, threads, |i| pc_connection(&tcp, pair(i)));
        let m = per_op(runs, n, threads, |i| m_connection(pair(i)));
        println!("  {threads} thread(s): prometheus-client {pc:>7.0}   metrics {m:>7.0}");
    }

    // Handles held: four increments, and one histogram observation.
    let labels = pc_labels(pair(0));
    let pc_handles = [&tcp.opened, &tcp.closed, &tcp.sent, &tcp.received]
        .map(|f| f.get_or_create_owned(&labels));
    let m_handles = [
        "istio_tcp_connections_opened_total",
        "istio_tcp_connections_closed_total",
        "istio_tcp_received_bytes_total",
        "istio_tcp_sent_bytes_total",
    ]
    .map(|name| metrics::counter!(name, m_labels(pair(0))));
    let pc_incs = per_op(runs, n * 10, 1, |_| {
        for c in &pc_handles {
            c.inc();
        }
    });
    let m_incs = per_op(runs, n * 10, 1, |_| {
        for c in &m_handles {
            c.increment(1);
        }
    });
    println!(
        "held handles, 4 increments (ns): prometheus-client {pc_incs:>5.1}   metrics {m_incs:>5.1}"
    );
    let pc_hist = Histogram::new([1.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0]);
    let m_hist = metrics::histogram!("istio_request_duration_milliseconds", m_labels(pair(0)));
    let pc_obs = per_op(runs, n * 10, 1, |i| pc_hist.observe((i % 1000) as f64));
    let m_obs = per_op(runs, n * 10, 1, |i| m_hist.record((i % 1000) as f64));
    // The metrics recorder keeps every observation until a scrape or upkeep drains them.
    handle.run_upkeep();
    println!("held handle, 1 histogram observation (ns): prometheus-client {pc_obs:>5.1}   metrics {m_obs:>5.1}");

    // A scrape of 1,000 series: 250 label sets × the four counters, in fresh registries.
    let mut scrape_registry = Registry::default();
    let scrape_tcp = TcpMetrics::register(&mut scrape_registry);
    let scrape_handle = PrometheusBuilder::new().build_recorder();
    let scrape_pairs = self::pairs(250);
    metrics::with_local_recorder(&scrape_handle, || {
        for p in &scrape_pairs {
            pc_connection(&scrape_tcp, p);
            m_connection(p);
        }
    });
    let scrape_handle = scrape_handle.handle();
    let (pc_us, pc_bytes) = median_us(runs * 3, || mesh::metrics::encode(&scrape_registry).len());
    let (m_us, m_bytes) = median_us(runs * 3, || scrape_handle.render().len());
    println!("scrape of 1,000 series (µs): prometheus-client {pc_us:>6.0} ({pc_bytes} bytes)   metrics {m_us:>6.0} ({m_bytes} bytes)");

    // What each exposition looks like.
    let pc_text = mesh::metrics::encode(&scrape_registry);
    let m_text = scrape_handle.render();
    println!("exposition:");
    for (name, text) in [("prometheus-client", &pc_text), ("metrics", &m_text)] {
        println!(
            "  {name}: {}",
            first_line(text, "# TYPE istio_tcp_connections_opened")
        );
        println!(
            "  {name}: {}",
            first_line(text, "istio_tcp_connections_opened")
        );
        println!(
            "  {name}: ends with `# EOF` (OpenMetrics): {}",
            text.ends_with("# EOF\n")
        );
    }
    // A counter named without `_total`, as prometheus-client wants it named.
    let bare = PrometheusBuilder::new().build_recorder();
    metrics::with_local_recorder(&bare, || metrics::counter!("requests").increment(1));
    println!(
        "  metrics, counter named `requests`: {}",
        first_line(&bare.handle().render(), "requests")
    );

    // Removing one series (a pod that left): prometheus-client can; metrics' exporter cannot.
    let removed = scrape_tcp.opened.remove(&pc_labels(&scrape_pairs[0]));
    println!("series removal: prometheus-client Family::remove -> {removed}; metrics exporter: no API (idle_timeout only)");
}
