//! In-process tests of the CA: the server runs on 127.0.0.1:0 with a temporary data
//! directory, a tokens file and a config directory of Pod YAML; callers are the mesh's own
//! `CaClient` and, for malformed input, a raw tonic client.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use istiod_lite::config::{Config, LogFormat};
use istiod_lite::Server;
use mesh::ca::CertificateAuthority;
use mesh::ca_client::{CaClient, CaClientConfig, IMPERSONATED_IDENTITY_KEY};
use mesh::cert::{identity_of, new_csr, parse_pem_certs, validity_of};
use mesh::cert_manager::{CertificateProvider, FetchError};
use mesh::testing::LogBuffer;
use mesh::Identity;
use proto::ca::istio_certificate_service_client::IstioCertificateServiceClient;
use proto::ca::{IstioCertificateRequest, IstioCertificateResponse};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

const NODE1_TOKEN: &str = "node-1-token-0123456789abcdef";
const NODE2_TOKEN: &str = "node-2-token-0123456789abcdef";
const SERVER_NAME: &str = "istiod-lite.istio-system.svc";
const SLEEP: &str = "spiffe://cluster.local/ns/apps/sa/sleep";
const HTTPBIN: &str = "spiffe://cluster.local/ns/apps/sa/httpbin";
const MAX_TTL: Duration = Duration::from_secs(3600);

const PODS: &str = r#"
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

fn id(s: &str) -> Identity {
    s.parse().expect("valid identity")
}

// ---- log capture -------------------------------------------------------------------------

fn logs() -> &'static LogBuffer {
    LogBuffer::global()
}

// ---- harness -----------------------------------------------------------------------------

/// The files a server starts from.
struct Env {
    _root: tempfile::TempDir,
    data_dir: PathBuf,
    config_dir: PathBuf,
    tokens_file: PathBuf,
    plugin_ca_dir: Option<PathBuf>,
}

impl Env {
    fn new() -> Self {
        logs();
        let root = tempfile::tempdir().expect("tempdir");
        let data_dir = root.path().join("data");
        let config_dir = root.path().join("config");
        std::fs::create_dir(&config_dir).expect("config dir");
        std::fs::write(config_dir.join("pods.yaml"), PODS).expect("pods");
        let tokens_file = root.path().join("tokens.yaml");
        std::fs::write(
            &tokens_file,
            format!(
                "tokens:\n  - {{token: {NODE1_TOKEN}, node: node-1}}\n  - {{token: {NODE2_TOKEN}, node: node-2}}\n"
            ),
        )
        .expect("tokens");
        Env {
            _root: root,
            data_dir,
            config_dir,
            tokens_file,
            plugin_ca_dir: None,
        }
    }

    fn config(&self) -> Config {
        Config {
            data_dir: self.data_dir.clone(),
            config_dir: self.config_dir.clone(),
            listen: "127.0.0.1:0".parse().expect("addr"),
            trust_domain: "cluster.local".into(),
            tokens_file: self.tokens_file.clone(),
            plugin_ca_dir: self.plugin_ca_dir.clone(),
            max_cert_ttl_secs: MAX_TTL.as_secs(),
            server_names: vec![SERVER_NAME.into(), "localhost".into(), "127.0.0.1".into()],
            log_format: LogFormat::Text,
            cluster_id: "Kubernetes".into(),
            domain_suffix: "cluster.local".into(),
            root_namespace: "istio-system".into(),
            monitoring_addr: "127.0.0.1:0".parse().expect("addr"),
            push_debounce_ms: 100,
        }
    }

    async fn start(&self) -> Running {
        let server = Server::bind(&self.config()).await.expect("server starts");
        let address = format!("https://{}", server.local_addr());
        let root_pem = server.root_cert_pem().to_string();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async {
            let _ = stopped.await;
        }));
        Running {
            address,
            root_pem,
            stop,
            task,
        }
    }
}

/// A server running in this process.
struct Running {
    address: String,
    root_pem: String,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    fn client(&self, token: Option<&str>, impersonate: bool) -> CaClient {
        self.client_trusting(&self.root_pem, SERVER_NAME, token, impersonate)
    }

    fn client_trusting(
        &self,
        root_pem: &str,
        server_name: &str,
        token: Option<&str>,
        impersonate: bool,
    ) -> CaClient {
        CaClient::new(CaClientConfig {
            address: self.address.clone(),
            root_cert_pem: root_pem.to_string(),
            server_name: server_name.to_string(),
            token: token.map(str::to_string),
            ttl: Duration::from_secs(7 * 24 * 3600),
            impersonate,
        })
        .expect("client config")
    }

    async fn raw(&self) -> IstioCertificateServiceClient<Channel> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.root_pem))
            .domain_name("localhost");
        let channel = Endpoint::from_shared(self.address.clone())
            .expect("uri")
            .tls_config(tls)
            .expect("tls")
            .connect()
            .await
            .expect("connects");
        IstioCertificateServiceClient::new(channel)
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task
            .await
            .expect("server task")
            .expect("server stops cleanly");
    }
}

/// Sends `request` with `token` (if any) on a raw client.
async fn call(
    client: &mut IstioCertificateServiceClient<Channel>,
    token: Option<&str>,
    request: IstioCertificateRequest,
) -> Result<IstioCertificateResponse, Status> {
    let mut request = tonic::Request::new(request);
    if let Some(token) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
    }
    client
        .create_certificate(request)
        .await
        .map(|r| r.into_inner())
}

fn request(csr: String, validity_secs: i64, impersonated: Option<&str>) -> IstioCertificateRequest {
    IstioCertificateRequest {
        csr,
        validity_duration: validity_secs,
        metadata: impersonated.map(|who| prost_types::Struct {
            fields: BTreeMap::from([(
                IMPERSONATED_IDENTITY_KEY.to_string(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue(who.to_string())),
                },
            )]),
        }),
    }
}

fn csr_for(identity: &str) -> String {
    new_csr(&id(identity)).expect("csr").csr_pem
}

fn lifetime(pem: &str) -> Duration {
    let der = &parse_pem_certs(pem).expect("pem")[0];
    let (from, to) = validity_of(der).expect("validity");
    to.duration_since(from).expect("ordered")
}

fn assert_refused(result: Result<IstioCertificateResponse, Status>, code: Code, needle: &str) {
    match result {
        Ok(_) => panic!("expected {code:?} containing {needle:?}, got a certificate"),
        Err(status) => {
            assert_eq!(status.code(), code, "{status:?}");
            assert!(
                status.message().contains(needle),
                "{:?} does not mention {needle:?}",
                status.message()
            );
        }
    }
}

// ---- tests -------------------------------------------------------------------------------

#[tokio::test]
async fn node_gets_a_certificate_for_a_pod_on_it_leaf_first_root_last_lifetime_capped() {
    let env = Env::new();
    let server = env.start().await;

    // Through the mesh's client, as a node tunnel asking on behalf of its pod.
    let cert = server
        .client(Some(NODE1_TOKEN), true)
        .fetch(&id(SLEEP))
        .await
        .expect("certificate issued");
    assert_eq!(cert.identity(), &id(SLEEP));
    assert_eq!(identity_of(&cert.chain()[0]).expect("san"), id(SLEEP));
    assert_eq!(
        cert.chain().len(),
        1,
        "the root is not part of the presented chain"
    );
    assert_eq!(
        cert.roots(),
        parse_pem_certs(&server.root_pem).expect("root").as_slice()
    );
    let asked = Duration::from_secs(7 * 24 * 3600);
    let got = cert
        .not_after()
        .duration_since(cert.not_before())
        .expect("ordered");
    assert!(got < asked, "lifetime {got:?} must be capped");
    assert!(
        got >= MAX_TTL && got <= MAX_TTL + Duration::from_secs(120),
        "{got:?}"
    );

    // On the wire: leaf first, root last.
    let mut raw = server.raw().await;
    let chain = call(
        &mut raw,
        Some(NODE1_TOKEN),
        request(csr_for(SLEEP), 30 * 24 * 3600, None),
    )
    .await
    .expect("issued")
    .cert_chain;
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[1], server.root_pem);
    let leaf = &parse_pem_certs(&chain[0]).expect("leaf")[0];
    assert_eq!(identity_of(leaf).expect("san"), id(SLEEP));
    assert!(lifetime(&chain[0]) <= MAX_TTL + Duration::from_secs(120));

    // A shorter request is honoured.
    let chain = call(
        &mut raw,
        Some(NODE1_TOKEN),
        request(csr_for(SLEEP), 600, None),
    )
    .await
    .expect("issued")
    .cert_chain;
    assert!(lifetime(&chain[0]) <= Duration::from_secs(600 + 120));

    // The node tunnel's own identity, without impersonation.
    let own = server
        .client(Some(NODE2_TOKEN), false)
        .fetch(&id("spiffe://cluster.local/ns/istio-system/sa/ztunnel"))
        .await
        .expect("ztunnel identity issued");
    assert_eq!(own.identity().service_account(), "ztunnel");
    server.stop().await;
}

#[tokio::test]
async fn unauthenticated_callers_are_refused_with_unauthenticated() {
    let env = Env::new();
    let server = env.start().await;
    let err = server
        .client(None, true)
        .fetch(&id(SLEEP))
        .await
        .expect_err("no token");
    assert!(
        matches!(&err, FetchError::Refused(m) if m.contains("Unauthenticated")),
        "{err}"
    );
    let err = server
        .client(Some("node-1-token-but-wrong-0000"), true)
        .fetch(&id(SLEEP))
        .await
        .expect_err("wrong token");
    assert!(
        matches!(&err, FetchError::Refused(m) if m.contains("Unauthenticated")),
        "{err}"
    );

    let mut raw = server.raw().await;
    for token in [None, Some("wrong-token-0123456789abcdef"), Some("")] {
        assert_refused(
            call(&mut raw, token, request(csr_for(SLEEP), 0, Some(SLEEP))).await,
            Code::Unauthenticated,
            "missing or unknown bearer token",
        );
    }
    // A token in the wrong scheme is no token.
    let mut basic = tonic::Request::new(request(csr_for(SLEEP), 0, None));
    basic.metadata_mut().insert(
        "authorization",
        format!("Basic {NODE1_TOKEN}").parse().expect("header"),
    );
    let status = raw.create_certificate(basic).await.expect_err("refused");
    assert_eq!(status.code(), Code::Unauthenticated);
    server.stop().await;
}

#[tokio::test]
async fn node_asking_for_a_pod_on_another_node_is_refused_and_audited() {
    let env = Env::new();
    let server = env.start().await;
    let mut raw = server.raw().await;
    assert_refused(
        call(&mut raw, Some(NODE1_TOKEN), request(csr_for(HTTPBIN), 0, Some(HTTPBIN))).await,
        Code::PermissionDenied,
        &format!(
            "node node-1 may not hold identity {HTTPBIN}: no pod with that identity is scheduled on node-1"
        ),
    );
    let err = server
        .client(Some(NODE1_TOKEN), true)
        .fetch(&id(HTTPBIN))
        .await
        .expect_err("refused");
    assert!(matches!(err, FetchError::Refused(_)), "{err}");

    // The audit line is written before the answer is sent: no waiting needed.
    let lines = logs().lines();
    let audit = lines.iter().find(|l| {
        l.contains(" audit:")
            && l.contains("node-1")
            && l.contains(HTTPBIN)
            && l.contains("deny")
            && l.contains("PermissionDenied")
    });
    assert!(
        audit.is_some(),
        "no audit line for node-1 / {HTTPBIN} in:\n{}",
        lines.join("\n")
    );
    // And the owner of the pod gets it.
    server
        .client(Some(NODE2_TOKEN), true)
        .fetch(&id(HTTPBIN))
        .await
        .expect("node-2 runs httpbin");
    assert!(logs().lines().iter().any(|l| l.contains(" audit:")
        && l.contains("node-2")
        && l.contains(HTTPBIN)
        && l.contains("allow")));
    server.stop().await;
}

#[tokio::test]
async fn malformed_csrs_are_invalid_argument_and_the_server_keeps_serving() {
    let env = Env::new();
    let server = env.start().await;
    let mut raw = server.raw().await;

    // Two URI SANs.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![
        rcgen::SanType::URI(SLEEP.try_into().expect("uri")),
        rcgen::SanType::URI(HTTPBIN.try_into().expect("uri")),
    ];
    let two_sans = params
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    assert_refused(
        call(&mut raw, Some(NODE1_TOKEN), request(two_sans, 0, None)).await,
        Code::InvalidArgument,
        "exactly one URI SAN",
    );

    // A bad signature: flip the last byte (inside the signature) of a good CSR.
    let good = pem::parse(csr_for(SLEEP)).expect("pem");
    let mut der = good.contents().to_vec();
    let last = der.len() - 1;
    der[last] ^= 0x01;
    let bad_signature = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der));
    assert_refused(
        call(&mut raw, Some(NODE1_TOKEN), request(bad_signature, 0, None)).await,
        Code::InvalidArgument,
        "signature",
    );

    // Garbage, an empty CSR, and one over the size limit.
    assert_refused(
        call(
            &mut raw,
            Some(NODE1_TOKEN),
            request("hello, CA".into(), 0, None),
        )
        .await,
        Code::InvalidArgument,
        "PEM",
    );
    assert_refused(
        call(&mut raw, Some(NODE1_TOKEN), request(String::new(), 0, None)).await,
        Code::InvalidArgument,
        "PEM",
    );
    assert_refused(
        call(
            &mut raw,
            Some(NODE1_TOKEN),
            request("A".repeat(20_000), 0, None),
        )
        .await,
        Code::InvalidArgument,
        "16 KiB",
    );

    // Still serving, on the same connection and on a new one.
    call(
        &mut raw,
        Some(NODE1_TOKEN),
        request(csr_for(SLEEP), 0, None),
    )
    .await
    .expect("still serving");
    server
        .client(Some(NODE1_TOKEN), true)
        .fetch(&id(SLEEP))
        .await
        .expect("still serving new connections");
    server.stop().await;
}

#[tokio::test]
async fn impersonated_identity_that_differs_from_the_csr_is_refused() {
    let env = Env::new();
    let server = env.start().await;
    let mut raw = server.raw().await;
    // node-2 runs httpbin, but the CSR asks for sleep while claiming httpbin.
    assert_refused(
        call(
            &mut raw,
            Some(NODE2_TOKEN),
            request(csr_for(SLEEP), 0, Some(HTTPBIN)),
        )
        .await,
        Code::InvalidArgument,
        "does not match the identity in the CSR",
    );
    // Not an identity at all.
    assert_refused(
        call(
            &mut raw,
            Some(NODE1_TOKEN),
            request(csr_for(SLEEP), 0, Some("sleep")),
        )
        .await,
        Code::InvalidArgument,
        "ImpersonatedIdentity is not a workload identity",
    );
    // Not a string.
    let mut not_string = request(csr_for(SLEEP), 0, None);
    not_string.metadata = Some(prost_types::Struct {
        fields: BTreeMap::from([(
            IMPERSONATED_IDENTITY_KEY.to_string(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::NumberValue(1.0)),
            },
        )]),
    });
    assert_refused(
        call(&mut raw, Some(NODE1_TOKEN), not_string).await,
        Code::InvalidArgument,
        "must be a string",
    );
    server.stop().await;
}

#[tokio::test]
async fn identity_in_another_trust_domain_is_refused() {
    let env = Env::new();
    let server = env.start().await;
    let mut raw = server.raw().await;
    let foreign = "spiffe://other.example/ns/apps/sa/sleep";
    assert_refused(
        call(
            &mut raw,
            Some(NODE1_TOKEN),
            request(csr_for(foreign), 0, Some(foreign)),
        )
        .await,
        Code::PermissionDenied,
        "this CA signs only for \"cluster.local\"",
    );
    let err = server
        .client(Some(NODE1_TOKEN), true)
        .fetch(&id(foreign))
        .await
        .expect_err("refused");
    assert!(matches!(err, FetchError::Refused(_)), "{err}");
    server.stop().await;
}

#[tokio::test]
async fn root_is_persisted_restart_on_the_same_data_dir_gives_the_same_root() {
    let env = Env::new();
    let first = env.start().await;
    let root = first.root_pem.clone();
    let before = first
        .client(Some(NODE1_TOKEN), true)
        .fetch(&id(SLEEP))
        .await
        .expect("issued");
    first.stop().await;
    assert_eq!(
        std::fs::read_to_string(env.data_dir.join("root-cert.pem")).expect("published root"),
        root
    );

    let second = env.start().await;
    assert_eq!(second.root_pem, root, "a restart must keep the root");
    let after = second
        .client(Some(NODE1_TOKEN), true)
        .fetch(&id(SLEEP))
        .await
        .expect("issued after restart");
    assert_eq!(after.roots(), before.roots());
    second.stop().await;
}

#[tokio::test]
async fn plug_in_ca_with_an_intermediate_issues_leaf_intermediate_root_chains() {
    let mut env = Env::new();
    let root = CertificateAuthority::generate_root("cluster.local").expect("root");
    let intermediate = root
        .issue_intermediate("cluster.local")
        .expect("intermediate");
    let dir = env.data_dir.with_file_name("cacerts");
    std::fs::create_dir(&dir).expect("cacerts dir");
    write(&dir, "ca-cert.pem", intermediate.ca_cert_pem());
    write(&dir, "ca-key.pem", intermediate.ca_key_pem());
    write(
        &dir,
        "cert-chain.pem",
        &format!("{}{}", intermediate.ca_cert_pem(), root.root_pem()),
    );
    write(&dir, "root-cert.pem", root.root_pem());
    env.plugin_ca_dir = Some(dir);

    let server = env.start().await;
    assert_eq!(server.root_pem, root.root_pem());
    assert_eq!(
        std::fs::read_to_string(env.data_dir.join("root-cert.pem")).expect("published root"),
        root.root_pem()
    );
    let mut raw = server.raw().await;
    let chain = call(
        &mut raw,
        Some(NODE1_TOKEN),
        request(csr_for(SLEEP), 0, Some(SLEEP)),
    )
    .await
    .expect("issued")
    .cert_chain;
    assert_eq!(chain.len(), 3, "leaf, intermediate, root");
    assert_eq!(
        identity_of(&parse_pem_certs(&chain[0]).expect("leaf")[0]).expect("san"),
        id(SLEEP)
    );
    assert_eq!(chain[1], intermediate.ca_cert_pem());
    assert_eq!(chain[2], root.root_pem());

    // The mesh client trusts only the root; the serving chain carries the intermediate.
    let cert = server
        .client(Some(NODE1_TOKEN), true)
        .fetch(&id(SLEEP))
        .await
        .expect("issued through the intermediate");
    assert_eq!(cert.chain().len(), 2, "leaf and intermediate go to peers");
    server.stop().await;
}

#[tokio::test]
async fn ca_client_tls_refuses_a_server_not_certified_by_the_configured_root() {
    let env = Env::new();
    let server = env.start().await;
    let stranger = CertificateAuthority::generate_root("cluster.local").expect("other root");
    let err = server
        .client_trusting(stranger.root_pem(), SERVER_NAME, Some(NODE1_TOKEN), true)
        .fetch(&id(SLEEP))
        .await
        .expect_err("untrusted server");
    assert!(matches!(&err, FetchError::Unavailable(_)), "{err}");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );

    // The right root but a name the serving certificate does not carry.
    let err = server
        .client_trusting(&server.root_pem, "evil.example", Some(NODE1_TOKEN), true)
        .fetch(&id(SLEEP))
        .await
        .expect_err("wrong name");
    assert!(matches!(&err, FetchError::Unavailable(_)), "{err}");

    // The same client settings with the right root and name work.
    server
        .client(Some(NODE1_TOKEN), true)
        .fetch(&id(SLEEP))
        .await
        .expect("trusted server");
    server.stop().await;
}

fn write(dir: &Path, name: &str, contents: &str) {
    std::fs::write(dir.join(name), contents).expect("write");
}
