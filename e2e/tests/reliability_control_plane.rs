//! The control plane under faults and rotation, with traffic running through the whole event
//! (200 requests a second, each on a new connection, and a long-lived stream checking every
//! byte), cross node: istiod-lite stopped across a certificate refresh (fail static, then
//! resync and a config change made while it was down), three workload certificate rotations
//! with istiod-lite's serving certificate rotating too, and a root rotation through the
//! plug-in CA (old + new trusted, signer moved, old removed). Time is scaled down with short
//! certificate lifetimes; "zero failures" means zero. Needs root.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stderr)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{metric_sum, Mesh, WAIT};
use e2e::load::{RateClient, StreamClient, HTTP_OK};
use e2e::{Pod, Proc};
use mesh::ca::CertificateAuthority;

/// Requests a second of the rate client.
const RPS: u32 = 200;
/// Bytes a second the stream writes.
const STREAM_BPS: u64 = 32 * 1024;
/// The name in istiod-lite's serving certificate that ztunnel checks.
const SERVER_NAME: &str = "istiod-lite.istio-system.svc";

/// `name` from the environment in seconds, or `default`: the scaled-down times of these tests
/// can be stretched to the (docs/reliability.md, "How to run it").
fn env_secs(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The mesh, its client and server pods and the traffic between them.
struct Loaded {
    mesh: Mesh,
    server: Pod,
    rate: RateClient,
    stream: StreamClient,
    _servers: Vec<Proc>,
    started: Instant,
}

/// Workload certificates of `ttl` seconds (requested by ztunnel and capped by istiod-lite),
/// istiod-lite with `istiod_args` too, the client on node 1 and the server on node 2, two
/// more pods on node 1 in the config but not yet in the mesh (`client-2`, of the client's
/// identity, and `stranger`, of an identity no node holds a certificate for), and traffic
/// flowing.
fn loaded(test: &str, ttl: u64, istiod_args: &[&str]) -> Loaded {
    let mut mesh = Mesh::new(test, 2);
    let ttl = ttl.to_string();
    mesh.istiod_args = ["--max-cert-ttl-secs", &ttl]
        .iter()
        .chain(istiod_args)
        .map(|s| s.to_string())
        .collect();
    mesh.ztunnel_env = vec![("SECRET_TTL_SECS".into(), ttl)];
    mesh.pod(0, "demo", "client-2", "client", "client", true);
    mesh.pod(0, "demo", "stranger", "stranger", "stranger", true);
    let (client, server, echo) = mesh.start_client_server();
    // The rate client and the stream run from `client`.
    let http = mesh.topo.tcp_hello(&server, 8080, HTTP_OK).expect("http");
    let rate = RateClient::start(&mesh.topo, &client, server.addr(8080), RPS).expect("rate");
    let stream =
        StreamClient::start(&mesh.topo, &client, server.addr(7000), STREAM_BPS).expect("stream");
    rate.wait_for_successes(200, WAIT)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", mesh.logs()));
    Loaded {
        mesh,
        server,
        rate,
        stream,
        _servers: vec![echo, http],
        started: Instant::now(),
    }
}

impl Loaded {
    /// Stops the traffic and asserts that not one request failed and every byte came back;
    /// returns a line for the reliability matrix.
    fn finish_with_zero_failures(self) -> String {
        let Loaded {
            mesh,
            rate,
            stream,
            started,
            ..
        } = self;
        assert!(stream.is_running(), "the stream broke:\n{}", mesh.logs());
        let report = rate.finish().expect("rate report");
        assert_eq!(
            report.failed,
            0,
            "failed requests: {:?}\n{}",
            report.failures,
            mesh.logs()
        );
        assert_eq!(report.ok, report.sent, "{report:?}");
        let stream = stream.finish().expect("the stream got every byte back");
        assert_eq!(stream.verified, stream.sent, "{stream:?}");
        let line = format!(
            "requests sent={} failed={} p99_ms={} max_ms={}; stream bytes verified={} over {:.0} s",
            report.sent,
            report.failed,
            report.p99_ms,
            report.max_ms,
            stream.verified,
            started.elapsed().as_secs_f64()
        );
        eprintln!("{line}");
        line
    }
}

/// A metric of node `i`, summed over the series whose labels contain every needle.
fn metric(mesh: &Mesh, i: usize, name: &str, needles: &[&str]) -> f64 {
    metric_sum(&mesh.metrics(i), name, needles)
}

/// Waits until `cond` holds on every node, for at most `timeout`.
fn wait_every_node(mesh: &Mesh, what: &str, timeout: Duration, cond: impl Fn(usize) -> bool) {
    for i in 0..mesh.nodes.len() {
        e2e::wait_until(&format!("node {i}: {what}"), timeout, || cond(i))
            .unwrap_or_else(|e| panic!("{e:#}\n{}", mesh.logs()));
    }
}

/// Rotations of workload certificates each node has done so far.
fn rotations(mesh: &Mesh) -> Vec<f64> {
    (0..mesh.nodes.len())
        .map(|i| metric(mesh, i, "mesh_certificate_rotations_total", &[]))
        .collect()
}

/// Waits until every node rotated its certificates `n` more times than `since`.
fn wait_rotations(mesh: &Mesh, since: &[f64], n: f64, timeout: Duration) {
    wait_every_node(mesh, &format!("{n} more rotations"), timeout, |i| {
        metric(mesh, i, "mesh_certificate_rotations_total", &[]) >= since[i] + n
    });
}

/// What a new TLS connection to istiod-lite's gRPC port sees: the serial of its serving
/// certificate, verified (name included) against the trust bundle in `ca_file`.
fn serving_serial(mesh: &Mesh, ca_file: &Path) -> anyhow::Result<String> {
    let addr = format!("{}:15012", mesh.nodes[0].underlay_ip);
    let script = format!(
        "openssl s_client -connect {addr} -servername {SERVER_NAME} -verify_hostname {SERVER_NAME} \
         -CAfile {ca} -verify_return_error </dev/null 2>/dev/null | openssl x509 -noout -serial",
        ca = ca_file.display()
    );
    let out = mesh.topo.exec_in(&mesh.nodes[0], "sh", &["-c", &script])?;
    let serial = out.trim().strip_prefix("serial=").unwrap_or_default();
    anyhow::ensure!(
        !serial.is_empty(),
        "no verified serving certificate: {out:?}"
    );
    Ok(serial.to_ascii_lowercase())
}

/// A DENY policy that matches no caller of the test, so traffic goes on: written while
/// istiod-lite is down, it must reach every proxy once it is back.
const WRITTEN_WHILE_DOWN: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: written-while-down
  namespace: demo
spec:
  action: DENY
  rules:
  - from:
    - source:
        principals: [\"cluster.local/ns/demo/sa/nobody\"]
";

#[test]
fn istiod_down_across_a_refresh_fails_static_then_resyncs_with_zero_failures() {
    // 30 s certificates: renewal is due 15 s after each fetch, so an outage of about that
    // long crosses a refresh while the certificates are still valid. `RELIABILITY_OUTAGE_SECS`
    // keeps istiod-lite down longer (with certificates long enough to outlive it).
    let ttl = env_secs("RELIABILITY_CERT_TTL_SECS", 30);
    let min_outage = Duration::from_secs(env_secs("RELIABILITY_OUTAGE_SECS", 0));
    let mut t = loaded("rel_cp_down", ttl, &[]);
    let before = rotations(&t.mesh);
    let stopped = Instant::now();
    t.mesh.stop_istiod();
    let m = &t.mesh;
    wait_every_node(m, "xDS disconnected", WAIT, |i| {
        metric(m, i, "mesh_xds_connected", &[]) == 0.0
    });

    // The outage crosses a refresh: each node's certificate is served unrenewed, and says so.
    wait_every_node(
        m,
        "certificate refresh failing",
        Duration::from_secs(ttl),
        |i| metric(m, i, "mesh_certificates", &["state=\"refresh_failing\""]) >= 1.0,
    );
    for i in 0..m.nodes.len() {
        let text = m.metrics(i);
        let left = metric_sum(&text, "mesh_certificate_seconds_to_expiry", &[]);
        let failures = metric_sum(&text, "mesh_certificate_refresh_failures", &[]);
        assert!(left > 0.0 && failures >= 1.0, "node {i}:\n{text}");
        eprintln!("node {i}: refresh failing, {failures} failures in a row, {left:.0} s to expiry");
    }

    // A new pod of a known identity joins while the CA is down: its certificate is the one
    // the node already holds, its workload is in the last config.
    let newcomer = m.topo.pods().iter().find(|p| p.name == "client-2").cloned();
    let newcomer = newcomer.expect("client-2");
    m.enroll(&newcomer);
    let reply = m
        .topo
        .tcp_send(&newcomer, t.server.addr(7000), "still here");
    assert_eq!(reply.ok().as_deref(), Some("still here"), "{}", m.logs());
    // A pod of an identity the node has no certificate for cannot get one from a CA that is
    // down: its connections fail (after ztunnel waited for the CA a few seconds), nothing else.
    let stranger = m.topo.pods().iter().find(|p| p.name == "stranger").cloned();
    let stranger = stranger.expect("stranger");
    m.enroll(&stranger);
    let refused = m.topo.tcp_send(&stranger, t.server.addr(7000), "who am I");
    assert_ne!(refused.as_deref().ok(), Some("who am I"), "{refused:?}");

    // Config changed while down, then istiod-lite back (same data directory, same root).
    m.apply(WRITTEN_WHILE_DOWN);
    // A fixed outage only when asked for a longer one: by default istiod-lite comes back as
    // soon as every node has crossed its refresh.
    std::thread::sleep(min_outage.saturating_sub(stopped.elapsed()));
    let outage = stopped.elapsed();
    t.mesh.start_istiod();
    let back = Instant::now();
    let m = &t.mesh;
    wait_every_node(m, "xDS reconnected", Duration::from_secs(30), |i| {
        metric(m, i, "mesh_xds_connected", &[]) == 1.0
    });
    for i in 0..m.nodes.len() {
        m.wait_policy(i, "demo/written-while-down", true);
    }
    wait_rotations(m, &before, 1.0, WAIT);
    wait_every_node(m, "certificates renewed", WAIT, |i| {
        let text = m.metrics(i);
        metric_sum(&text, "mesh_certificates", &["state=\"available\""]) >= 1.0
            && metric_sum(&text, "mesh_certificates", &["state=\"refresh_failing\""]) == 0.0
    });
    let resync = back.elapsed();
    // The pod of the new identity works once the CA is back.
    e2e::retry_until("the new identity's first connection", WAIT, || {
        let reply = m
            .topo
            .tcp_send(&stranger, t.server.addr(7000), "now known")?;
        anyhow::ensure!(reply == "now known", "got {reply:?}");
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", m.logs()));
    let line = t.finish_with_zero_failures();
    eprintln!(
        "istiod-lite down {:.1} s; resynced (xDS, policy on every node, certificates) {:.1} s after its return; {line}",
        outage.as_secs_f64(),
        resync.as_secs_f64()
    );
}

#[test]
fn three_workload_rotations_and_serving_certificate_rotation_fail_no_request() {
    // 8 s certificates are renewed about every 4 s; the serving certificate every 4 s too.
    let ttl = env_secs("RELIABILITY_ROTATION_TTL_SECS", 8);
    let serving_ttl = (ttl * 3 / 4).max(3).to_string();
    let t = loaded(
        "rel_rotate",
        ttl,
        &["--serving-cert-ttl-secs", &serving_ttl],
    );
    let m = &t.mesh;
    let root = m.data_dir.join("root-cert.pem");
    let first_serial = serving_serial(m, &root).expect("serving certificate");
    let before = rotations(m);
    wait_rotations(m, &before, 3.0, Duration::from_secs(ttl * 5));
    // A new connection gets a new serving certificate, verified against the bundle.
    let second_serial = e2e::retry_until("a new serving certificate", WAIT, || {
        let serial = serving_serial(m, &root)?;
        anyhow::ensure!(serial != first_serial, "still {serial}");
        Ok(serial)
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", m.logs()));
    eprintln!(
        "serving certificate {first_serial} → {second_serial}; rotations {before:?} → {:?}",
        rotations(m)
    );
    t.finish_with_zero_failures();
}

/// Writes `contents` to `path` so that a reader sees the old file or the new one.
fn replace_file(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// Puts `signer` and the bundle of `trusted` roots in the plug-in CA directory.
fn plug_in(dir: &Path, signer: &CertificateAuthority, trusted: &[&CertificateAuthority]) {
    // The bundle first: a signer whose root is not trusted yet would be refused.
    let bundle: String = trusted.iter().map(|ca| ca.root_pem()).collect();
    replace_file(&dir.join("root-cert.pem"), &bundle);
    replace_file(&dir.join("ca-key.pem"), signer.ca_key_pem());
    replace_file(&dir.join("ca-cert.pem"), signer.ca_cert_pem());
}

/// Waits until istiod-lite logged its `n`-th reload of the plug-in CA.
fn wait_reloads(mesh: &Mesh, n: usize) {
    let istiod = mesh.istiod.as_ref().expect("istiod-lite");
    e2e::wait_until(&format!("CA reload {n}"), WAIT, || {
        istiod.log().matches("CA material reloaded").count() >= n
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", mesh.logs()));
}

#[test]
fn root_rotation_through_an_overlap_fails_no_request() {
    let plugin = tempfile::tempdir().expect("plug-in dir");
    let old = CertificateAuthority::generate_root("cluster.local").expect("old root");
    let new = CertificateAuthority::generate_root("cluster.local").expect("new root");
    plug_in(plugin.path(), &old, &[&old]);
    let dir = plugin.path().to_str().unwrap().to_string();
    let args = ["--plugin-ca-dir", &dir, "--ca-reload-interval-ms", "200"];
    // 8 s certificates: every proxy holds one from the previous step two rotations later.
    let mut t = loaded("rel_root", 8, &args);
    let m = &t.mesh;
    let published = m.data_dir.join("root-cert.pem");
    let old_only = old.root_pem().to_string();
    let first_serial = serving_serial(m, &published).expect("serving certificate");

    // 1. Both roots trusted, the old one still signs: every proxy learns the bundle.
    plug_in(plugin.path(), &old, &[&old, &new]);
    wait_reloads(m, 1);
    wait_rotations(m, &rotations(m), 2.0, Duration::from_secs(20));
    // 2. The new root signs; peers with either kind of certificate trust each other.
    plug_in(plugin.path(), &new, &[&old, &new]);
    wait_reloads(m, 2);
    wait_rotations(m, &rotations(m), 2.0, Duration::from_secs(20));
    // 3. The old root goes: every certificate in use is from the new one by now.
    plug_in(plugin.path(), &new, &[&new]);
    wait_reloads(m, 3);
    wait_rotations(m, &rotations(m), 2.0, Duration::from_secs(20));
    let bundle = std::fs::read_to_string(&published).expect("published bundle");
    assert_eq!(bundle, new.root_pem(), "only the new root is published");
    assert_ne!(bundle, old_only);

    // The serving certificate moved to the new root with the signer: a new connection
    // verifies against the new bundle alone.
    let serial = serving_serial(m, &published).expect("served from the new root");
    assert_ne!(serial, first_serial);

    // istiod-lite restarted: the proxies reconnect (xDS and CA) verifying it against the
    // root file they re-read, which no longer holds the root they started with.
    let reconnects: Vec<f64> = (0..2)
        .map(|i| metric(m, i, "mesh_xds_reconnects_total", &[]))
        .collect();
    t.mesh.stop_istiod();
    t.mesh.start_istiod();
    let m = &t.mesh;
    wait_every_node(
        m,
        "xDS reconnected to the restarted istiod-lite",
        Duration::from_secs(30),
        |i| {
            metric(m, i, "mesh_xds_reconnects_total", &[]) > reconnects[i]
                && metric(m, i, "mesh_xds_connected", &[]) == 1.0
        },
    );
    wait_rotations(m, &rotations(m), 1.0, WAIT);
    for (node, ztunnel) in &m.ztunnels {
        let log = ztunnel.log();
        assert!(
            log.contains("the control plane root file changed"),
            "ztunnel on {node} never reconnected with the re-read root:\n{}",
            ztunnel.log_tail()
        );
    }
    t.finish_with_zero_failures();
}
