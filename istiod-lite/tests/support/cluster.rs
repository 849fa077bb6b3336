//! Cluster YAML fixtures: one Kubernetes object each (beginning and ending with a newline),
//! put together into files with [`documents`].

/// The `apps` namespace, enrolled in the ambient mesh.
pub const NAMESPACE_APPS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: apps, labels: {istio.io/dataplane-mode: ambient}}
"#;

pub const NAMESPACE_ISTIO_SYSTEM: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: istio-system}
"#;

/// A running pod `web-{n}` (app: web) on node-{n}, with the IP 10.0.0.{n}.
pub fn web_pod(n: u8) -> String {
    r#"
apiVersion: v1
kind: Pod
metadata: {name: web-{n}, namespace: apps, labels: {app: web}}
spec: {nodeName: node-{n}, serviceAccountName: web, containers: [{name: c, image: i}]}
status: {phase: Running, podIP: 10.0.0.{n}}
"#
    .replace("{n}", &n.to_string())
}

/// The service `web` selecting the `web` pods.
pub const SERVICE_WEB: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: apps}
spec: {clusterIP: 10.96.0.1, selector: {app: web}, ports: [{name: http, port: 80, targetPort: 8080}]}
"#;

/// Allows `sleep` to reach the `web` pods.
pub const POLICY_ALLOW_SLEEP: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-sleep, namespace: apps}
spec:
  selector: {matchLabels: {app: web}}
  rules:
  - from: [{source: {principals: [cluster.local/ns/apps/sa/sleep]}}]
"#;

/// The pods the CA tests sign for: `sleep` on node-1 and `httpbin` on node-2 (neither with an
/// IP: the CA needs only their node and service account), with a service between them.
pub const SLEEP_AND_HTTPBIN: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: sleep-7d9f, namespace: apps}
spec:
  nodeName: node-1
  serviceAccountName: sleep
  containers: [{name: sleep, image: curl}]
---
apiVersion: v1
kind: Service
metadata: {name: httpbin, namespace: apps}
spec: {ports: [{port: 8000}]}
---
apiVersion: v1
kind: Pod
metadata: {name: httpbin-5c4b, namespace: apps}
spec:
  nodeName: node-2
  serviceAccountName: httpbin
  containers: [{name: httpbin, image: httpbin}]
"#;

/// One multi-document YAML file of `objects`.
pub fn documents(objects: &[&str]) -> String {
    objects.join("---")
}
