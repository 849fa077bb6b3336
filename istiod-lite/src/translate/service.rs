//! Services: ClusterIP Services (also NodePort and LoadBalancer, which have cluster IPs) and
//! headless ones (no VIPs). ExternalName Services are not translated.
//!
//! - hostname `<name>.<namespace>.svc.<suffix>`, key `<namespace>/<hostname>`;
//! - VIPs from `spec.clusterIPs` (else `spec.clusterIP`), skipping `None`, on the configured
//!   network;
//! - ports: `service_port` = `port`; `target_port` = a numeric `targetPort`, 0 for a named one
//!   (each workload resolves it, see [`workload_ports`]), `port` when absent (the Kubernetes
//!   default); `app_protocol` from `appProtocol`, else the port name's prefix (`http`,
//!   `http2`, `grpc`, `tcp`, `tls`/`https`, as Istio's protocol selection reads them);
//! - waypoint: see [`super::waypoint`];
//! - `ip_families` from `spec.ipFamilies`; `canonical` (a Kubernetes Service is the canonical
//!   owner of its host name); `ingress_use_waypoint` from the label
//!   `istio.io/ingress-use-waypoint=true`; no subject alt names.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Pod, Service as K8sService, ServicePort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use mesh::model::{AppProtocol, IpFamilies, NetworkAddress, PortMapping, Service};

use super::waypoint::{waypoint_for, Attachment};
use super::{labels, service_hostname, TranslateOptions, Warnings};
use crate::config_source::{ClusterState, ObjectKey};

/// Label asking ingress gateways to send traffic for the service through its waypoint.
pub const INGRESS_USE_WAYPOINT_LABEL: &str = "istio.io/ingress-use-waypoint";

/// The Services of the snapshot, sorted by key.
pub(crate) fn services(
    state: &ClusterState,
    options: &TranslateOptions,
    warnings: &mut Warnings,
) -> Vec<Service> {
    let mut out: Vec<Service> = state
        .services
        .iter()
        .filter_map(|(key, svc)| service(state, options, key, svc, warnings))
        .collect();
    out.sort_by_key(Service::key);
    out
}

/// Whether a Service is one the mesh addresses (not ExternalName).
pub fn is_translated(svc: &K8sService) -> bool {
    svc.spec
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .is_none_or(|t| t != "ExternalName")
}

fn service(
    state: &ClusterState,
    options: &TranslateOptions,
    key: &ObjectKey,
    svc: &K8sService,
    warnings: &mut Warnings,
) -> Option<Service> {
    if !is_translated(svc) {
        return None;
    }
    let object = format!("Service {key}");
    let spec = svc.spec.clone().unwrap_or_default();
    let ips = spec
        .cluster_ips
        .clone()
        .filter(|ips| !ips.is_empty())
        .or_else(|| spec.cluster_ip.clone().map(|ip| vec![ip]))
        .unwrap_or_default();
    let mut vips = Vec::new();
    for ip in ips {
        if ip.is_empty() || ip == "None" {
            continue;
        }
        match ip.parse::<IpAddr>() {
            Ok(ip) => vips.push(NetworkAddress {
                network: options.network.clone(),
                ip,
            }),
            Err(_) => warnings.add(
                &object,
                format!("cluster IP {ip:?} is not an IP address; skipped"),
            ),
        }
    }
    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let Some(service_port) = port_number(p.port) else {
            warnings.add(
                &object,
                format!("ports[{i}]: {} is not a port number; skipped", p.port),
            );
            continue;
        };
        let target_port = match &p.target_port {
            None => service_port,
            Some(IntOrString::String(_)) => 0,
            Some(IntOrString::Int(n)) => port_number(*n).unwrap_or_else(|| {
                warnings.add(
                    &object,
                    format!("ports[{i}].targetPort: {n} is not a port number; each workload's port is used"),
                );
                0
            }),
        };
        ports.push(PortMapping {
            service_port,
            target_port,
            app_protocol: app_protocol(p),
        });
    }
    let meta_labels = labels(&svc.metadata);
    let ip_families = match spec.ip_families.as_deref().unwrap_or_default() {
        [one] if one == "IPv4" => IpFamilies::Ipv4Only,
        [one] if one == "IPv6" => IpFamilies::Ipv6Only,
        [_, _] => IpFamilies::Dual,
        _ => IpFamilies::Automatic,
    };
    Some(Service {
        name: key.name.clone(),
        namespace: key.namespace.clone(),
        hostname: service_hostname(&key.name, &key.namespace, options),
        vips,
        ports,
        subject_alt_names: Vec::new(),
        waypoint: waypoint_for(
            state,
            options,
            Attachment::Service,
            &object,
            &key.namespace,
            meta_labels,
            warnings,
        ),
        load_balancing: None,
        ip_families,
        canonical: true,
        ingress_use_waypoint: meta_labels
            .get(INGRESS_USE_WAYPOINT_LABEL)
            .is_some_and(|v| v == "true"),
    })
}

/// A Kubernetes `int32` port as a port number (1-65535).
fn port_number(n: i32) -> Option<u16> {
    u16::try_from(n).ok().filter(|p| *p != 0)
}

/// The application protocol of a Service port: `appProtocol`, else the name's prefix.
pub fn app_protocol(port: &ServicePort) -> AppProtocol {
    if let Some(p) = port.app_protocol.as_deref() {
        let known = match p.to_ascii_lowercase().as_str() {
            "http" => AppProtocol::Http11,
            "http2" | "kubernetes.io/h2c" => AppProtocol::Http2,
            "grpc" => AppProtocol::Grpc,
            "tcp" => AppProtocol::Tcp,
            "tls" | "https" | "kubernetes.io/wss" => AppProtocol::Tls,
            _ => AppProtocol::Unknown,
        };
        if known != AppProtocol::Unknown {
            return known;
        }
    }
    let name = port
        .name
        .as_deref()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let prefix = name.split('-').next().unwrap_or_default();
    match prefix {
        "http" => AppProtocol::Http11,
        "http2" => AppProtocol::Http2,
        "grpc" => AppProtocol::Grpc,
        "tcp" => AppProtocol::Tcp,
        "tls" | "https" => AppProtocol::Tls,
        _ => AppProtocol::Unknown,
    }
}

/// The ports of `svc` as they land on `pod`: a numeric `targetPort` as is, a named one looked
/// up in the pod's container ports (the port is left out when the pod has no such port), a
/// missing one as the service port. Invalid port numbers are left out (the Service's own
/// translation reports them).
pub fn workload_ports(svc: &K8sService, pod: &Pod) -> Vec<PortMapping> {
    let mut out = Vec::new();
    let ports = svc.spec.as_ref().and_then(|s| s.ports.as_ref());
    for p in ports.into_iter().flatten() {
        let Some(service_port) = port_number(p.port) else {
            continue;
        };
        let target_port = match &p.target_port {
            None => Some(service_port),
            Some(IntOrString::Int(n)) => port_number(*n),
            Some(IntOrString::String(name)) => container_port(pod, name),
        };
        if let Some(target_port) = target_port {
            out.push(PortMapping {
                service_port,
                target_port,
                app_protocol: app_protocol(p),
            });
        }
    }
    out
}

/// The number of the container port called `name` in any of the pod's containers.
fn container_port(pod: &Pod, name: &str) -> Option<u16> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(name))
        .and_then(|p| port_number(p.container_port))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{run, warnings_about};
    use super::*;

    const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: apps}
spec:
  type: ClusterIP
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10, "fd00::10"]
  ipFamilies: [IPv4, IPv6]
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: grpc-api, port: 9090, targetPort: grpc}
  - {name: metrics, port: 9100}
  - {name: db, port: 5432, appProtocol: tcp}
  - {name: web, port: 8443, appProtocol: kubernetes.io/h2c}
---
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: apps, labels: {istio.io/ingress-use-waypoint: "true"}}
spec: {clusterIP: None, ports: [{port: 7000, name: tls-peer}]}
---
apiVersion: v1
kind: Service
metadata: {name: external, namespace: apps}
spec: {type: ExternalName, externalName: example.com}
---
apiVersion: v1
kind: Service
metadata: {name: odd, namespace: apps}
spec: {clusterIP: not-an-ip, ports: [{port: 0}, {port: 80, targetPort: 70000}]}
"#;

    #[test]
    fn cluster_ip_and_headless_services_are_translated_external_names_are_not() {
        let t = run(SERVICES);
        let keys: Vec<String> = t.services.iter().map(Service::key).collect();
        assert_eq!(
            keys,
            [
                "apps/headless.apps.svc.cluster.local",
                "apps/odd.apps.svc.cluster.local",
                "apps/web.apps.svc.cluster.local",
            ]
        );
        let web = &t.services[2];
        assert_eq!(web.name, "web");
        assert_eq!(web.namespace, "apps");
        let vips: Vec<String> = web.vips.iter().map(|v| v.ip.to_string()).collect();
        assert_eq!(vips, ["10.96.0.10", "fd00::10"]);
        assert_eq!(web.ip_families, IpFamilies::Dual);
        assert!(web.canonical);
        assert!(web.subject_alt_names.is_empty());
        assert!(web.waypoint.is_none());
        let ports: Vec<(u16, u16, AppProtocol)> = web
            .ports
            .iter()
            .map(|p| (p.service_port, p.target_port, p.app_protocol))
            .collect();
        assert_eq!(
            ports,
            [
                (80, 8080, AppProtocol::Http11),
                (9090, 0, AppProtocol::Grpc),
                (9100, 9100, AppProtocol::Unknown),
                (5432, 5432, AppProtocol::Tcp),
                (8443, 8443, AppProtocol::Http2),
            ]
        );

        let headless = &t.services[0];
        assert!(headless.vips.is_empty());
        assert!(headless.ingress_use_waypoint);
        assert_eq!(headless.ports[0].app_protocol, AppProtocol::Tls);
        assert_eq!(headless.ip_families, IpFamilies::Automatic);

        let odd = &t.services[1];
        assert!(odd.vips.is_empty());
        assert_eq!(odd.ports.len(), 1);
        assert_eq!(odd.ports[0].target_port, 0);
        assert_eq!(
            warnings_about(&t, "Service apps/odd"),
            [
                "cluster IP \"not-an-ip\" is not an IP address; skipped",
                "ports[0]: 0 is not a port number; skipped",
                "ports[1].targetPort: 70000 is not a port number; each workload's port is used",
            ]
        );
    }

    #[test]
    fn port_name_prefixes_give_the_protocol() {
        let p = |name: &str| ServicePort {
            name: Some(name.into()),
            port: 1,
            ..ServicePort::default()
        };
        assert_eq!(app_protocol(&p("http")), AppProtocol::Http11);
        assert_eq!(app_protocol(&p("HTTP-web")), AppProtocol::Http11);
        assert_eq!(app_protocol(&p("http2-x")), AppProtocol::Http2);
        assert_eq!(app_protocol(&p("grpc")), AppProtocol::Grpc);
        assert_eq!(app_protocol(&p("tcp-db")), AppProtocol::Tcp);
        assert_eq!(app_protocol(&p("https")), AppProtocol::Tls);
        assert_eq!(app_protocol(&p("httpbin")), AppProtocol::Unknown);
        assert_eq!(app_protocol(&p("")), AppProtocol::Unknown);
        let mut q = p("tcp");
        q.app_protocol = Some("http".into());
        assert_eq!(app_protocol(&q), AppProtocol::Http11, "appProtocol wins");
        q.app_protocol = Some("example.com/custom".into());
        assert_eq!(
            app_protocol(&q),
            AppProtocol::Tcp,
            "unknown appProtocol: name"
        );
    }
}
