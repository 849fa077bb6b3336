//! Tests of the pod → workload translation.

use mesh::model::{AppProtocol, PortMapping};

use super::*;
use crate::translate::test_support::{run, state, warnings_about};
use crate::translate::{translate, Translated};

const NAMESPACES: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: mesh, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: plain}
"#;

/// A running, ready pod with `extra` YAML lines appended under `metadata`-level keys.
fn pod(ns: &str, name: &str, labels: &str, ip: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}}}\nspec: {{nodeName: node-1, serviceAccountName: sa-{name}, containers: [{{name: c, image: i, ports: [{{name: http-web, containerPort: 8080}}]}}]}}\nstatus: {{phase: Running, podIP: {ip}, conditions: [{{type: Ready, status: \"True\"}}]}}\n"
    )
}

fn find<'a>(t: &'a Translated, name: &str) -> &'a Workload {
    t.workloads
        .iter()
        .find(|w| w.name == name)
        .unwrap_or_else(|| panic!("no workload {name} in {:?}", t.workloads))
}

#[test]
fn enrollment_follows_namespace_and_pod_labels_and_non_mesh_pods_are_kept() {
    let t = run(&[
        NAMESPACES.to_string(),
        pod("mesh", "in-ns", "app: a", "10.0.0.1"),
        pod(
            "mesh",
            "opted-out",
            "istio.io/dataplane-mode: none",
            "10.0.0.2",
        ),
        pod(
            "plain",
            "own-label",
            "istio.io/dataplane-mode: ambient",
            "10.0.0.3",
        ),
        pod("plain", "outside", "app: b", "10.0.0.4"),
        pod("no-ns-object", "unknown-ns", "app: c", "10.0.0.5"),
        pod(
            "plain",
            "waypoint",
            "networking.istio.io/tunnel: http",
            "10.0.0.6",
        ),
    ]
    .concat());
    let tunnel = |n: &str| find(&t, n).tunnel_protocol;
    assert_eq!(tunnel("in-ns"), TunnelProtocol::Hbone);
    assert_eq!(tunnel("opted-out"), TunnelProtocol::None);
    assert_eq!(tunnel("own-label"), TunnelProtocol::Hbone);
    assert_eq!(tunnel("outside"), TunnelProtocol::None);
    assert_eq!(tunnel("unknown-ns"), TunnelProtocol::None);
    assert_eq!(tunnel("waypoint"), TunnelProtocol::Hbone);
    assert!(find(&t, "waypoint").native_tunnel);
    assert!(!find(&t, "in-ns").native_tunnel);
    assert_eq!(t.workloads.len(), 6);
}

#[test]
fn finished_unstarted_and_host_network_pods() {
    let yaml = [
        NAMESPACES.to_string(),
        pod("mesh", "done", "", "10.0.0.1").replace("phase: Running", "phase: Succeeded"),
        pod("mesh", "failed", "", "10.0.0.2").replace("phase: Running", "phase: Failed"),
        pod("mesh", "pending", "", "10.0.0.3")
            .replace("phase: Running, podIP: 10.0.0.3", "phase: Pending"),
        "---\napiVersion: v1\nkind: Pod\nmetadata: {name: no-status, namespace: mesh}\n"
            .to_string(),
        pod("mesh", "host", "", "192.168.0.10")
            .replace("nodeName: node-1", "nodeName: node-1, hostNetwork: true"),
    ]
    .concat();
    let t = run(&yaml);
    let names: Vec<&str> = t.workloads.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["host"]);
    let host = find(&t, "host");
    assert_eq!(host.network_mode, NetworkMode::HostNetwork);
    assert_eq!(
        host.tunnel_protocol,
        TunnelProtocol::None,
        "enrolled namespace, but host network"
    );
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
}

#[test]
fn identity_addresses_node_and_names() {
    let yaml = r#"
apiVersion: v1
kind: Pod
metadata: {name: dual, namespace: apps}
spec: {nodeName: node-7, containers: []}
status:
  phase: Running
  podIP: 10.0.0.9
  podIPs: [{ip: 10.0.0.9}, {ip: "fd00::9"}]
"#;
    let options = TranslateOptions {
        cluster_id: "c1".into(),
        trust_domain: "example.org".into(),
        network: "net-a".into(),
        ..TranslateOptions::default()
    };
    let t = translate(&state(yaml), &options);
    let w = find(&t, "dual");
    assert_eq!(w.uid, "c1//v1/Pod/apps/dual");
    assert_eq!(w.namespace(), "apps");
    let addresses: Vec<String> = w.addresses.iter().map(ToString::to_string).collect();
    assert_eq!(addresses, ["10.0.0.9", "fd00::9"]);
    assert_eq!(
        w.identity.to_string(),
        "spiffe://example.org/ns/apps/sa/default"
    );
    assert_eq!(w.node, "node-7");
    assert_eq!(w.cluster_id, "c1");
    assert_eq!(w.network, "net-a");
    assert_eq!(w.workload_name, "dual");
    assert_eq!(w.workload_type, WorkloadType::Pod);
    assert_eq!(
        (w.canonical_name.as_str(), w.canonical_revision.as_str()),
        ("dual", "latest")
    );
    assert_eq!(w.capacity, 1);

    let t = run(&pod("apps", "web", "", "10.0.0.1"));
    assert_eq!(
        find(&t, "web").identity.to_string(),
        "spiffe://cluster.local/ns/apps/sa/sa-web"
    );
}

#[test]
fn unusable_ips_and_identities_are_reported() {
    let t = run(&[
        pod("apps", "bad-ip", "", "not-an-ip"),
        pod("apps", "bad-sa", "", "10.0.0.2").replace("sa-bad-sa", "'bad sa'"),
    ]
    .concat());
    assert!(t.workloads.is_empty());
    assert_eq!(
        warnings_about(&t, "Pod apps/bad-ip"),
        [
            "no usable pod IP; the pod is left out",
            "pod IP \"not-an-ip\" is not an IP address; skipped"
        ]
    );
    let sa = warnings_about(&t, "Pod apps/bad-sa");
    assert_eq!(sa.len(), 1);
    assert!(sa[0].starts_with("no valid identity"), "{sa:?}");
}

#[test]
fn canonical_name_and_revision_take_the_first_label_present() {
    let t = run(&[
        pod("a", "p1", "service.istio.io/canonical-name: c, app.kubernetes.io/name: k, app: a, service.istio.io/canonical-revision: r, app.kubernetes.io/version: kv, version: v", "10.0.0.1"),
        pod("a", "p2", "app.kubernetes.io/name: k, app: a, app.kubernetes.io/version: kv, version: v", "10.0.0.2"),
        pod("a", "p3", "app: a, version: v", "10.0.0.3"),
        pod("a", "p4", "", "10.0.0.4"),
    ]
    .concat());
    let canon = |n: &str| {
        let w = find(&t, n);
        (w.canonical_name.clone(), w.canonical_revision.clone())
    };
    let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
    assert_eq!(canon("p1"), pair("c", "r"));
    assert_eq!(canon("p2"), pair("k", "kv"));
    assert_eq!(canon("p3"), pair("a", "v"));
    assert_eq!(canon("p4"), pair("p4", "latest"));
}

#[test]
fn workload_name_and_type_come_from_the_owner() {
    let owned = |name: &str, labels: &str, kind: &str, owner: &str| {
        pod("a", name, labels, "10.0.0.1").replace(
            &format!("name: {name}, namespace: a,"),
            &format!("name: {name}, namespace: a, ownerReferences: [{{apiVersion: v1, kind: {kind}, name: {owner}, uid: u, controller: true}}],"),
        )
    };
    let t = run(&[
        owned(
            "rs-hash",
            "pod-template-hash: 5d8f7c9b4",
            "ReplicaSet",
            "web-5d8f7c9b4",
        ),
        owned("rs-guess", "", "ReplicaSet", "api-server-7bd9f4c5x8"),
        owned("rs-bare", "", "ReplicaSet", "frontend"),
        owned("job", "", "Job", "migrate-db"),
        owned("cron", "", "Job", "backup-28930140"),
        owned("sts", "", "StatefulSet", "db"),
        pod("a", "bare", "", "10.0.0.2"),
    ]
    .concat());
    let named = |n: &str| {
        let w = find(&t, n);
        (w.workload_name.clone(), w.workload_type)
    };
    assert_eq!(named("rs-hash"), ("web".into(), WorkloadType::Deployment));
    assert_eq!(
        named("rs-guess"),
        ("api-server".into(), WorkloadType::Deployment)
    );
    assert_eq!(named("rs-bare"), ("frontend".into(), WorkloadType::Pod));
    assert_eq!(named("job"), ("migrate-db".into(), WorkloadType::Job));
    assert_eq!(named("cron"), ("backup".into(), WorkloadType::Cronjob));
    assert_eq!(named("sts"), ("db".into(), WorkloadType::Pod));
    assert_eq!(named("bare"), ("bare".into(), WorkloadType::Pod));
    // The canonical name falls back to the workload name, not the pod name.
    assert_eq!(find(&t, "rs-hash").canonical_name, "web");
}

#[test]
fn health_needs_running_and_ready() {
    let t = run(&[
        pod("a", "ready", "", "10.0.0.1"),
        pod("a", "no-conditions", "", "10.0.0.2")
            .replace(", conditions: [{type: Ready, status: \"True\"}]", ""),
        pod("a", "not-ready", "", "10.0.0.3").replace("status: \"True\"", "status: \"False\""),
        pod("a", "pending", "", "10.0.0.4").replace("Running", "Pending"),
        pod("a", "deleting", "", "10.0.0.5").replace(
            "namespace: a,",
            "namespace: a, deletionTimestamp: \"2026-01-01T00:00:00Z\",",
        ),
    ]
    .concat());
    let status = |n: &str| find(&t, n).status;
    assert_eq!(status("ready"), HealthStatus::Healthy);
    assert_eq!(status("no-conditions"), HealthStatus::Healthy);
    assert_eq!(status("not-ready"), HealthStatus::Unhealthy);
    assert_eq!(status("pending"), HealthStatus::Unhealthy);
    assert_eq!(status("deleting"), HealthStatus::Unhealthy);
}

#[test]
fn services_selecting_the_pod_are_listed_with_ports_resolved_for_it() {
    let services = r#"
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: a}
spec:
  clusterIP: 10.96.0.1
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http-web}
  - {name: grpc, port: 90, targetPort: grpc-missing}
  - {name: tcp, port: 91, targetPort: 9191}
  - {port: 92}
---
apiVersion: v1
kind: Service
metadata: {name: all-web, namespace: a}
spec: {clusterIP: None, selector: {app: web, tier: front}, ports: [{port: 1}]}
---
apiVersion: v1
kind: Service
metadata: {name: other-tier, namespace: a}
spec: {selector: {app: web, tier: back}, ports: [{port: 2}]}
---
apiVersion: v1
kind: Service
metadata: {name: no-selector, namespace: a}
spec: {ports: [{port: 3}]}
---
apiVersion: v1
kind: Service
metadata: {name: empty-selector, namespace: a}
spec: {selector: {}, ports: [{port: 4}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: b}
spec: {selector: {app: web}, ports: [{port: 5}]}
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: a}
spec: {type: ExternalName, externalName: x.example, selector: {app: web}}
"#;
    let t = run(&[
        pod("a", "web-1", "app: web, tier: front", "10.0.0.1"),
        services.to_string(),
    ]
    .concat());
    let w = find(&t, "web-1");
    let keys: Vec<&str> = w.services.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        ["a/all-web.a.svc.cluster.local", "a/web.a.svc.cluster.local"]
    );
    let port = |s, t, p| PortMapping {
        service_port: s,
        target_port: t,
        app_protocol: p,
    };
    assert_eq!(
        w.services["a/web.a.svc.cluster.local"],
        [
            port(80, 8080, AppProtocol::Http11),
            port(91, 9191, AppProtocol::Tcp),
            port(92, 92, AppProtocol::Unknown),
        ]
    );
}

#[test]
fn a_service_without_a_selector_is_backed_by_the_pods_its_endpoint_slices_list() {
    let objects = r#"
---
apiVersion: v1
kind: Service
metadata: {name: legacy, namespace: a}
spec: {clusterIP: 10.96.0.7, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: legacy-abc, namespace: a, labels: {kubernetes.io/service-name: legacy}}
addressType: IPv4
endpoints:
- {addresses: [10.0.0.1], targetRef: {kind: Pod, name: web-1, namespace: a}}
- {addresses: [10.0.0.2]}
ports: [{name: http, port: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: other-xyz, namespace: a, labels: {kubernetes.io/service-name: other}}
addressType: IPv4
endpoints: [{addresses: [10.0.0.3]}]
"#;
    let t = run(&[
        pod("a", "web-1", "app: web", "10.0.0.1"),
        pod("a", "web-2", "app: web", "10.0.0.2"),
        pod("a", "web-3", "app: web", "10.0.0.3"),
        objects.to_string(),
    ]
    .concat());
    let legacy = "a/legacy.a.svc.cluster.local";
    // Listed by its targetRef, and by its address.
    assert!(find(&t, "web-1").services.contains_key(legacy));
    assert!(find(&t, "web-2").services.contains_key(legacy));
    // Listed only in another Service's slice.
    assert!(!find(&t, "web-3").services.contains_key(legacy));
    assert_eq!(find(&t, "web-1").services[legacy][0].target_port, 8080);
}

#[test]
fn selector_policies_of_its_namespace_and_the_root_namespace_are_attached() {
    let policy = |ns: &str, name: &str, spec: &str| {
        format!("---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n")
    };
    let t = run(&[
        pod("a", "web-1", "app: web, version: v1", "10.0.0.1"),
        pod("b", "web-2", "app: web", "10.0.0.2"),
        policy("a", "web-only", "{selector: {matchLabels: {app: web}}}"),
        policy("a", "v2-only", "{selector: {matchLabels: {version: v2}}}"),
        policy("a", "everyone", "{selector: {}}"),
        policy("a", "ns-wide", "{}"),
        policy(
            "a",
            "audit",
            "{selector: {matchLabels: {app: web}}, action: AUDIT}",
        ),
        policy(
            "a",
            "waypoint",
            "{targetRefs: [{kind: Service, group: \"\", name: web}]}",
        ),
        policy(
            "istio-system",
            "root-web",
            "{selector: {matchLabels: {app: web}}}",
        ),
        policy("c", "elsewhere", "{selector: {matchLabels: {app: web}}}"),
    ]
    .concat());
    assert_eq!(
        find(&t, "web-1").authorization_policies,
        ["a/everyone", "a/web-only", "istio-system/root-web"]
    );
    assert_eq!(
        find(&t, "web-2").authorization_policies,
        ["istio-system/root-web"]
    );
}

#[test]
fn the_enrollment_rule_is_usable_alone() {
    let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let ambient = labels(&[(DATAPLANE_MODE_LABEL, "ambient")]);
    let none = labels(&[(DATAPLANE_MODE_LABEL, "none")]);
    let empty = labels(&[]);
    assert!(enrolled(&empty, &ambient));
    assert!(enrolled(&ambient, &empty));
    assert!(!enrolled(&none, &ambient));
    assert!(!enrolled(&empty, &empty));
    assert!(enrolled(
        &labels(&[(DATAPLANE_MODE_LABEL, "other")]),
        &ambient
    ));
}
