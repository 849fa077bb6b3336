//! The reliability matrix, section 6: config churn. 100 config changes a second (pods added and
//! removed, AuthorizationPolicies flipped) written into istiod-lite's config directory for
//! `CHURN_SECONDS` (default 16; the documented run is 60) while a fixed-rate HTTP client and a
//! byte-checking stream run on connections every policy allows. Measured: failed requests (must
//! be zero), the latency from writing a DENY to the first refused connection (must be under
//! 1 s, every time), whether proxies end on exactly the last config written (no lost update),
//! and the RSS of istiod-lite and both ztunnels against their baseline. Needs root.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stderr)]

mod common;

use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Mesh, WAIT};
use e2e::load::{RateClient, StreamClient, HTTP_OK};

/// Config changes a second.
const CHANGES_PER_SEC: u64 = 100;
/// A DENY on the probe is written, then removed, every this many changes.
const DENY_EVERY: u64 = 200;
/// Churned pods alive at once, at most.
const LIVE_PODS: usize = 40;
/// Churned policies (flipped in turn).
const POLICIES: u64 = 10;
/// RSS "back to baseline": within this fraction of the baseline plus [`RSS_SLACK_KIB`].
const RSS_TOLERANCE: f64 = 0.10;
/// See [`RSS_TOLERANCE`]: allocator arenas and caches warmed by the first burst.
const RSS_SLACK_KIB: u64 = 4 * 1024;

fn churn_seconds() -> u64 {
    std::env::var("CHURN_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

/// Replaces `path` atomically (a dot-named temp file, which istiod-lite skips, then rename).
fn write(path: &Path, text: &str) {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

fn churn_pod(id: u64) -> String {
    let node = if id.is_multiple_of(2) { "n1" } else { "n2" };
    let ip = format!("10.201.{}.{}", id / 250 % 250, id % 250 + 1);
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: churn-{id}\n  namespace: demo\n  labels:\n    app: churn\n    slot: \"s{slot}\"\nspec:\n  nodeName: {node}\n  serviceAccountName: churn\n  containers:\n  - name: app\n    image: app\nstatus:\n  phase: Running\n  podIP: {ip}\n  podIPs:\n  - ip: {ip}\n  conditions:\n  - type: Ready\n    status: \"True\"\n",
        slot = id % POLICIES
    )
}

fn policy(name: &str, app_key: &str, app: &str, action: &str, principals: &[&str]) -> String {
    let principals: Vec<String> = principals
        .iter()
        .map(|p| format!("\"cluster.local/ns/demo/sa/{p}\""))
        .collect();
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\n  namespace: demo\nspec:\n  selector:\n    matchLabels:\n      {app_key}: \"{app}\"\n  action: {action}\n  rules:\n  - from:\n    - source:\n        principals: [{}]\n",
        principals.join(", ")
    )
}

/// What the churn wrote, to check the proxies end on it.
struct Churn {
    dir: PathBuf,
    next_pod: u64,
    live: VecDeque<u64>,
    policies: Vec<bool>,
    server_allow: bool,
    denied: bool,
    changes: u64,
    /// (ms since the probe client started, DENY written or removed).
    deny_writes: Vec<(u128, bool)>,
}

impl Churn {
    fn new(config_dir: &Path) -> Churn {
        let dir = config_dir.join("churn");
        std::fs::create_dir_all(&dir).expect("churn dir");
        Churn {
            dir,
            next_pod: 0,
            live: VecDeque::new(),
            policies: vec![false; POLICIES as usize],
            server_allow: false,
            denied: false,
            changes: 0,
            deny_writes: vec![],
        }
    }

    /// One config change: add a pod, remove one, flip a churn policy, or flip an ALLOW on the
    /// server that names both of its clients (so it never refuses an allowed connection).
    fn step(&mut self) {
        let n = self.changes;
        self.changes += 1;
        match n % 4 {
            0 => self.add_pod(),
            1 if self.live.len() < LIVE_PODS / 2 => self.add_pod(),
            1 => {
                let id = self.live.pop_front().expect("a live pod");
                std::fs::remove_file(self.dir.join(format!("pod-{id}.yaml"))).expect("rm pod");
            }
            2 => {
                let p = (n / 4 % POLICIES) as usize;
                let path = self.dir.join(format!("policy-{p}.yaml"));
                if self.policies[p] {
                    std::fs::remove_file(path).expect("rm policy");
                } else {
                    let name = format!("churn-policy-{p}");
                    let yaml = policy(&name, "slot", &format!("s{p}"), "DENY", &["nobody"]);
                    write(&path, &yaml);
                }
                self.policies[p] = !self.policies[p];
            }
            _ => {
                let path = self.dir.join("server-allow.yaml");
                if self.server_allow {
                    std::fs::remove_file(path).expect("rm allow");
                } else {
                    let yaml = policy(
                        "server-allow",
                        "app",
                        "server",
                        "ALLOW",
                        &["client", "probe"],
                    );
                    write(&path, &yaml);
                }
                self.server_allow = !self.server_allow;
            }
        }
        while self.live.len() > LIVE_PODS {
            let id = self.live.pop_front().expect("a live pod");
            std::fs::remove_file(self.dir.join(format!("pod-{id}.yaml"))).expect("rm pod");
        }
    }

    fn add_pod(&mut self) {
        let id = self.next_pod;
        self.next_pod += 1;
        write(&self.dir.join(format!("pod-{id}.yaml")), &churn_pod(id));
        self.live.push_back(id);
    }

    /// Writes or removes the DENY of the probe's connections to the server.
    fn deny_probe(&mut self, deny: bool, probe_started: Instant) {
        let path = self.dir.join("deny-probe.yaml");
        if deny {
            write(
                &path,
                &policy("deny-probe", "app", "server", "DENY", &["probe"]),
            );
        } else {
            std::fs::remove_file(path).expect("rm deny");
        }
        self.denied = deny;
        self.changes += 1;
        self.deny_writes
            .push((probe_started.elapsed().as_millis(), deny));
    }

    /// Removes every churned object.
    fn clear(&mut self) {
        std::fs::remove_dir_all(&self.dir).expect("rm churn dir");
        self.live.clear();
        self.policies.iter_mut().for_each(|p| *p = false);
        self.server_allow = false;
        self.denied = false;
    }
}

/// The numbers that follow `prefix` anywhere in `text`, deduplicated.
fn ids_after(text: &str, prefix: &str) -> BTreeSet<u64> {
    text.match_indices(prefix)
        .filter_map(|(at, _)| {
            let rest = &text[at + prefix.len()..];
            let end = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            rest[..end].parse().ok()
        })
        .collect()
}

/// Whether ztunnel `i`'s config holds exactly what `churn` last wrote.
fn converged(mesh: &Mesh, i: usize, churn: &Churn) -> Result<(), String> {
    let dump = mesh.config_dump(i)["config"].to_string();
    let pods = ids_after(&dump, "/Pod/demo/churn-");
    let policies = ids_after(&dump, "churn-policy-");
    let want_pods: BTreeSet<u64> = churn.live.iter().copied().collect();
    let want_policies: BTreeSet<u64> = (0..POLICIES)
        .filter(|p| churn.policies[*p as usize])
        .collect();
    let allow = dump.contains("\"server-allow\"");
    let deny = dump.contains("\"deny-probe\"");
    if pods == want_pods
        && policies == want_policies
        && allow == churn.server_allow
        && deny == churn.denied
    {
        Ok(())
    } else {
        Err(format!(
            "node {i}: churned pods {pods:?} (want {want_pods:?}), policies {policies:?} (want {want_policies:?}), server-allow {allow}, deny-probe {deny}"
        ))
    }
}

/// CPU time (user + system) `pid` has used, in milliseconds.
fn cpu_ms(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // Fields after the `(comm)`: state is the 3rd field, utime and stime the 14th and 15th.
    let rest = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse().ok())
        .collect();
    // Clock ticks are 100 a second on Linux.
    fields.iter().sum::<u64>() * 10
}

/// `measure(pid)` of istiod-lite and of each ztunnel, named.
fn per_process(mesh: &Mesh, measure: fn(u32) -> u64) -> Vec<(String, u64)> {
    let mut out = vec![(
        "istiod-lite".to_string(),
        measure(mesh.istiod.as_ref().unwrap().pid()),
    )];
    for (node, z) in &mesh.ztunnels {
        out.push((format!("ztunnel {node}"), measure(z.pid())));
    }
    out
}

/// CPU time of istiod-lite and each ztunnel, in milliseconds.
fn cpu_all(mesh: &Mesh) -> Vec<(String, u64)> {
    per_process(mesh, cpu_ms)
}

/// RSS of istiod-lite and each ztunnel, in KiB.
fn rss_all(mesh: &Mesh) -> Vec<(String, u64)> {
    per_process(mesh, rss_kib)
}

#[test]
fn config_churn_fails_no_allowed_request_denies_within_1s_and_memory_returns_to_baseline() {
    let seconds = churn_seconds();
    let mut mesh = Mesh::new("rel_churn", 2);
    mesh.ambient_namespaces = vec!["demo".into()];
    let client = mesh.pod(0, "demo", "client", "client", "client", true);
    let probe = mesh.pod(0, "demo", "probe", "probe", "probe", true);
    let server = mesh.pod(1, "demo", "server", "server", "server", true);
    mesh.start();
    let _echo = mesh.topo.tcp_echo(&server, 7000).expect("echo");
    let _http = mesh.topo.tcp_hello(&server, 8080, HTTP_OK).expect("http");
    for p in [&client, &probe, &server] {
        mesh.enroll(p);
    }
    mesh.wait_workload(0, &server.uid);

    let rate = RateClient::start(&mesh.topo, &client, server.addr(8080), 100).expect("rate");
    let stream =
        StreamClient::start(&mesh.topo, &client, server.addr(7000), 64 * 1024).expect("stream");
    let probe_rate = RateClient::start(&mesh.topo, &probe, server.addr(8080), 200).expect("probe");
    let probe_started = Instant::now();
    rate.wait_for_successes(100, WAIT).expect("requests flow");
    probe_rate
        .wait_for_successes(100, WAIT)
        .expect("probe flows");
    let baseline = rss_all(&mesh);
    // CPU for traffic alone, over 300 allowed requests (3 s), to compare with the churn's.
    let quiet_cpu = cpu_all(&mesh);
    let quiet = Instant::now();
    rate.wait_for_successes(300, WAIT).expect("requests flow");
    let quiet_for = quiet.elapsed();
    let cpu_before = cpu_all(&mesh);
    let quiet_cpu: Vec<(String, u64)> = quiet_cpu
        .iter()
        .zip(&cpu_before)
        .map(|((name, was), (_, now))| (name.clone(), now - was))
        .collect();

    // The churn: one change every 10 ms, on schedule; a DENY of the probe written every
    // DENY_EVERY changes and removed DENY_EVERY / 2 changes later.
    let mut churn = Churn::new(&mesh.config_dir);
    let began = Instant::now();
    let period = Duration::from_nanos(1_000_000_000 / CHANGES_PER_SEC);
    let total = seconds * CHANGES_PER_SEC;
    let mut peak = baseline.clone();
    for tick in 0..total {
        let due = began + period * u32::try_from(tick).unwrap();
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        match tick % DENY_EVERY {
            t if t == DENY_EVERY / 2 => churn.deny_probe(true, probe_started),
            0 if tick > 0 => churn.deny_probe(false, probe_started),
            _ => churn.step(),
        }
        if tick % CHANGES_PER_SEC == 0 {
            for (p, (_, now)) in peak.iter_mut().zip(rss_all(&mesh)) {
                p.1 = p.1.max(now);
            }
        }
    }
    let churned_for = began.elapsed();
    let cpu: Vec<(String, u64)> = cpu_before
        .iter()
        .zip(cpu_all(&mesh))
        .map(|((name, was), (_, now))| (name.clone(), now - was))
        .collect();
    let changes = churn.changes;
    if churn.deny_writes.last().is_some_and(|(_, deny)| *deny) {
        churn.deny_probe(false, probe_started);
    }

    // No lost update: both proxies end on exactly the last config written.
    let settle = Instant::now();
    for i in 0..2 {
        e2e::retry_until("the proxies converge on the last config", WAIT, || {
            converged(&mesh, i, &churn).map_err(|e| anyhow::anyhow!(e))
        })
        .unwrap_or_else(|e| panic!("{e:#}\n{}", mesh.logs()));
    }
    let converged_after = settle.elapsed();
    rate.wait_for_successes(100, WAIT).expect("requests flow");

    let report = rate.finish().expect("rate report");
    let stream = stream.finish().expect("the stream is whole");
    let probe_report = probe_rate.finish().expect("probe report");

    // Every DENY took effect within 1 s: the first refused probe request after each write.
    let fails: Vec<u128> = probe_report
        .failures
        .iter()
        .filter_map(|f| {
            f.split_whitespace()
                .find_map(|w| w.strip_prefix("at_ms="))?
                .parse()
                .ok()
        })
        .collect();
    let mut deny_ms = Vec::new();
    let mut allow_ms = Vec::new();
    for (k, (at, deny)) in churn.deny_writes.iter().enumerate() {
        let until = churn.deny_writes.get(k + 1).map_or(u128::MAX, |(t, _)| *t);
        let in_window: Vec<u128> = fails
            .iter()
            .copied()
            .filter(|f| f >= at && *f < until)
            .collect();
        if *deny {
            let first = in_window.first().map(|f| f - at);
            deny_ms.push(first.expect("a DENY refused no probe request before it was removed"));
        } else {
            allow_ms.push(in_window.last().map_or(0, |f| f - at));
        }
    }

    // Memory back: churned objects removed, then RSS within tolerance of the baseline.
    churn.clear();
    for i in 0..2 {
        e2e::retry_until("the churned objects are gone", WAIT, || {
            converged(&mesh, i, &churn).map_err(|e| anyhow::anyhow!(e))
        })
        .unwrap_or_else(|e| panic!("{e:#}\n{}", mesh.logs()));
    }
    let cleared = Instant::now();
    let within = |now: &[(String, u64)]| {
        baseline.iter().zip(now).all(|((_, base), (_, n))| {
            (*n as f64) <= (*base as f64) * (1.0 + RSS_TOLERANCE) + RSS_SLACK_KIB as f64
        })
    };
    let mut after = rss_all(&mesh);
    let back = e2e::wait_until("RSS back to the baseline", Duration::from_secs(30), || {
        after = rss_all(&mesh);
        within(&after)
    });
    let back_after = cleared.elapsed();

    eprintln!(
        "churn: {changes} changes in {churned_for:?} ({:.0}/s); converged {converged_after:?} after the last\n\
         allowed traffic: requests sent={} failed={} p99_ms={} max_ms={}; stream bytes verified={}\n\
         deny latency ms (write -> first refused request): {deny_ms:?}\n\
         re-allow ms (removal -> last refused request): {allow_ms:?}\n\
         probe requests sent={} refused={}\n\
         CPU ms used during the churn (traffic included) {cpu:?}; traffic alone, {quiet_for:?}: {quiet_cpu:?}\n\
         RSS KiB baseline {baseline:?}\n          peak {peak:?}\n          after {after:?} ({back_after:?} after clearing)",
        changes as f64 / churned_for.as_secs_f64(),
        report.sent,
        report.failed,
        report.p99_ms,
        report.max_ms,
        stream.verified,
        probe_report.sent,
        probe_report.failed,
    );
    assert_eq!(
        report.failed,
        0,
        "failures on allowed connections: {:?}\n{}",
        report.failures,
        mesh.logs()
    );
    assert_eq!(stream.verified, stream.sent, "{stream:?}");
    assert!(!deny_ms.is_empty());
    assert!(
        deny_ms.iter().all(|ms| *ms < 1000),
        "a DENY took 1 s or more: {deny_ms:?}"
    );
    back.unwrap_or_else(|e| {
        panic!("{e:#}: baseline {baseline:?}, after {after:?}, tolerance {RSS_TOLERANCE} + {RSS_SLACK_KIB} KiB")
    });
}
