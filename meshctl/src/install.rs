//! `meshctl install [--dry-run]` and `meshctl uninstall`: the mesh on a Kubernetes cluster.
//!
//! The manifests are those of `manifests/` (built into meshctl), rendered for a trust domain
//! and an image registry and tag. `--dry-run` prints them; otherwise they are applied with
//! server-side apply (field manager `meshctl`) through the kubeconfig, CRDs first, each object
//! reported as it goes. `install` also creates the CA Secret `cacerts` in `istio-system` (a
//! fresh root for the trust domain) when there is none, so the control plane keeps its root
//! across restarts. `uninstall` deletes the objects in reverse order and keeps the CRDs (and
//! with them every user's policies and routes) unless `--purge`.

use anyhow::Context as _;
use clap::Args;
use kube::api::Api;
use serde_json::{json, Value};

use crate::kube_api::{apply, client, delete, runtime};

/// The install's manifests, in apply order.
const MANIFESTS: [(&str, &str); 14] = [
    (
        "crds/gateway.networking.k8s.io_gatewayclasses.yaml",
        include_str!("../../manifests/crds/gateway.networking.k8s.io_gatewayclasses.yaml"),
    ),
    (
        "crds/gateway.networking.k8s.io_gateways.yaml",
        include_str!("../../manifests/crds/gateway.networking.k8s.io_gateways.yaml"),
    ),
    (
        "crds/gateway.networking.k8s.io_grpcroutes.yaml",
        include_str!("../../manifests/crds/gateway.networking.k8s.io_grpcroutes.yaml"),
    ),
    (
        "crds/gateway.networking.k8s.io_httproutes.yaml",
        include_str!("../../manifests/crds/gateway.networking.k8s.io_httproutes.yaml"),
    ),
    (
        "crds/networking.istio.io_destinationrules.yaml",
        include_str!("../../manifests/crds/networking.istio.io_destinationrules.yaml"),
    ),
    (
        "crds/networking.istio.io_virtualservices.yaml",
        include_str!("../../manifests/crds/networking.istio.io_virtualservices.yaml"),
    ),
    (
        "crds/security.istio.io_authorizationpolicies.yaml",
        include_str!("../../manifests/crds/security.istio.io_authorizationpolicies.yaml"),
    ),
    (
        "crds/security.istio.io_peerauthentications.yaml",
        include_str!("../../manifests/crds/security.istio.io_peerauthentications.yaml"),
    ),
    (
        "crds/security.istio.io_requestauthentications.yaml",
        include_str!("../../manifests/crds/security.istio.io_requestauthentications.yaml"),
    ),
    (
        "namespace.yaml",
        include_str!("../../manifests/namespace.yaml"),
    ),
    ("istiod.yaml", include_str!("../../manifests/istiod.yaml")),
    ("ztunnel.yaml", include_str!("../../manifests/ztunnel.yaml")),
    ("cni.yaml", include_str!("../../manifests/cni.yaml")),
    (
        "gatewayclass.yaml",
        include_str!("../../manifests/gatewayclass.yaml"),
    ),
];

/// The registry and tag the manifests name.
const SHIPPED_REGISTRY: &str = "ghcr.io/ambient-mesh";
const SHIPPED_TAG: &str = "0.1.0";
/// The mesh's namespace.
const NAMESPACE: &str = "istio-system";

/// Flags of `meshctl install`.
#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Print the manifests instead of applying them.
    #[arg(long)]
    pub dry_run: bool,
    /// The mesh's trust domain (SPIFFE ids `spiffe://<domain>/ns/<ns>/sa/<sa>`).
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    /// Image tag of the mesh's four images.
    #[arg(long, default_value = SHIPPED_TAG)]
    pub image_tag: String,
    /// Registry (and path) of the images.
    #[arg(long, default_value = SHIPPED_REGISTRY)]
    pub image_registry: String,
    /// Kubeconfig (default: $KUBECONFIG, ~/.kube/config, or the in-cluster account).
    #[arg(long)]
    pub kubeconfig: Option<std::path::PathBuf>,
}

/// Flags of `meshctl uninstall`.
#[derive(Debug, Args)]
pub struct UninstallArgs {
    /// Also delete the CRDs, and with them every AuthorizationPolicy, route and Gateway.
    #[arg(long)]
    pub purge: bool,
    /// Kubeconfig (default: $KUBECONFIG, ~/.kube/config, or the in-cluster account).
    #[arg(long)]
    pub kubeconfig: Option<std::path::PathBuf>,
}

/// The install's objects, rendered: images from `registry` at `tag`, the trust domain set.
pub fn render(trust_domain: &str, registry: &str, tag: &str) -> anyhow::Result<Vec<Value>> {
    let mut objects = Vec::new();
    for (file, text) in MANIFESTS {
        for doc in resources::yaml_documents(text) {
            let mut doc = doc.with_context(|| format!("manifests/{file}"))?;
            if doc.is_null() {
                continue;
            }
            rewrite(&mut doc, trust_domain, registry, tag);
            objects.push(doc);
        }
    }
    Ok(objects)
}

/// Sets the images and the trust domain wherever the manifests name them.
fn rewrite(value: &mut Value, trust_domain: &str, registry: &str, tag: &str) {
    let image = |s: &str| {
        s.strip_prefix(&format!("{SHIPPED_REGISTRY}/"))
            .and_then(|rest| rest.strip_suffix(&format!(":{SHIPPED_TAG}")))
            .map(|name| format!("{registry}/{name}:{tag}"))
    };
    match value {
        Value::Object(map) => {
            if let Some(Value::String(s)) = map.get("image") {
                if let Some(new) = image(s) {
                    map.insert("image".into(), Value::String(new));
                }
            }
            let name = map.get("name").and_then(Value::as_str).map(String::from);
            match (name.as_deref(), map.get("value").and_then(Value::as_str)) {
                (Some("TRUST_DOMAIN"), Some(_)) => {
                    map.insert("value".into(), Value::String(trust_domain.into()));
                }
                (Some("WAYPOINT_IMAGE"), Some(s)) => {
                    if let Some(new) = image(s) {
                        map.insert("value".into(), Value::String(new));
                    }
                }
                _ => {}
            }
            for v in map.values_mut() {
                rewrite(v, trust_domain, registry, tag);
            }
        }
        Value::Array(items) => {
            for v in items {
                rewrite(v, trust_domain, registry, tag);
            }
        }
        _ => {}
    }
}

/// `meshctl install`.
pub fn install(args: &InstallArgs) -> anyhow::Result<()> {
    let objects = render(&args.trust_domain, &args.image_registry, &args.image_tag)?;
    if args.dry_run {
        let mut out = String::new();
        for object in &objects {
            out.push_str("---\n");
            out.push_str(&serde_saphyr::to_string(object).context("encoding YAML")?);
        }
        out!("{}", out.trim_end());
        return Ok(());
    }
    runtime()?.block_on(async {
        let client = client(args.kubeconfig.as_deref()).await?;
        for object in &objects {
            apply(&client, object).await?;
        }
        ensure_ca_secret(&client, &args.trust_domain).await?;
        progress!(
            "installed: {} objects; enrol a namespace with `kubectl label namespace NS istio.io/dataplane-mode=ambient`",
            objects.len()
        );
        Ok(())
    })
}

/// `meshctl uninstall`.
pub fn uninstall(args: &UninstallArgs) -> anyhow::Result<()> {
    let objects = render("cluster.local", SHIPPED_REGISTRY, SHIPPED_TAG)?;
    runtime()?.block_on(async {
        let client = client(args.kubeconfig.as_deref()).await?;
        for object in objects.iter().rev() {
            let crd = object["kind"] == "CustomResourceDefinition";
            if crd && !args.purge {
                continue;
            }
            delete(&client, object).await?;
        }
        if !args.purge {
            progress!("the CRDs are kept (and the policies, routes and Gateways in them); --purge deletes them");
        }
        Ok(())
    })
}

/// Creates Secret `istio-system/cacerts` with a fresh root for `trust_domain`, unless there is
/// one: the plug-in CA istiod-lite loads, so its root survives restarts.
async fn ensure_ca_secret(client: &kube::Client, trust_domain: &str) -> anyhow::Result<()> {
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client.clone(), NAMESPACE);
    if secrets.get_opt("cacerts").await?.is_some() {
        progress!("Secret {NAMESPACE}/cacerts exists: its CA is kept");
        return Ok(());
    }
    let ca = mesh::ca::CertificateAuthority::generate_root(trust_domain)
        .map_err(|e| anyhow::anyhow!("generating a root CA: {e}"))?;
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "cacerts", "namespace": NAMESPACE},
        "type": "Opaque",
        "stringData": {
            "ca-cert.pem": ca.ca_cert_pem(),
            "ca-key.pem": ca.ca_key_pem(),
            "root-cert.pem": ca.root_pem(),
            "cert-chain.pem": ca.ca_cert_pem(),
        },
    });
    apply(client, &secret).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendering_sets_images_and_the_trust_domain_everywhere() {
        let objects = render("example.org", "registry.local/mesh", "9.9.9").expect("render");
        let text = serde_json::to_string(&objects).expect("json");
        assert!(
            !text.contains("ghcr.io/ambient-mesh"),
            "an image kept the shipped registry"
        );
        assert!(
            !text.contains("cluster.local\""),
            "a trust domain kept its default: {text}"
        );
        for image in ["istiod-lite", "ztunnel", "cni-plugin", "waypoint"] {
            assert!(
                text.contains(&format!("registry.local/mesh/{image}:9.9.9")),
                "{image}"
            );
        }
        let kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
        assert_eq!(
            kinds.first(),
            Some(&"CustomResourceDefinition"),
            "CRDs first"
        );
        assert_eq!(kinds.last(), Some(&"GatewayClass"));
        assert!(kinds.contains(&"DaemonSet") && kinds.contains(&"Deployment"));
    }
}
