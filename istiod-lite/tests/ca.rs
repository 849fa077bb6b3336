//! In-process tests of the CA: the server runs on 127.0.0.1:0 with a temporary data
//! directory, a tokens file and a config directory of Pod YAML; callers are the mesh's own
//! `CaClient` and, for malformed input, a raw tonic client.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use mesh::ca::CertificateAuthority;
use mesh::ca_client::{CaClient, CaClientConfig, IMPERSONATED_IDENTITY_KEY};
use mesh::cert::{identity_of, new_csr, parse_pem_certs, validity_of};
use mesh::cert_manager::{CertificateProvider, FetchError};
use mesh::Identity;
use proto::ca::istio_certificate_service_client::IstioCertificateServiceClient;
use proto::ca::{IstioCertificateRequest, IstioCertificateResponse};
use tonic::transport::Channel;
use tonic::{Code, Status};

use support::cluster::SLEEP_AND_HTTPBIN;
use support::{logs, Env, Running, MAX_TTL, NODE1_TOKEN, NODE2_TOKEN, SERVER_NAME};

const SLEEP: &str = "spiffe://cluster.local/ns/apps/sa/sleep";
const HTTPBIN: &str = "spiffe://cluster.local/ns/apps/sa/httpbin";

fn id(s: &str) -> Identity {
    s.parse().expect("valid identity")
}

// ---- harness -----------------------------------------------------------------------------

/// The files of a server that knows the pods of `SLEEP_AND_HTTPBIN` and has its own CA.
fn env() -> Env {
    Env::builder().pods(SLEEP_AND_HTTPBIN).build()
}

/// The CA's callers.
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
            address: format!("https://{}", self.addr),
            root_cert_pem: root_pem.to_string(),
            server_name: server_name.to_string(),
            token: token.map(str::to_string),
            token_file: None,
            ttl: Duration::from_secs(7 * 24 * 3600),
            impersonate,
        })
        .expect("client config")
    }

    /// A raw tonic client of the CA, for what the mesh's client never sends.
    async fn raw_ca(&self) -> IstioCertificateServiceClient<Channel> {
        IstioCertificateServiceClient::new(self.channel("localhost").await)
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
    let env = env();
    let server = env.start_from_dir().await;

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
    let mut raw = server.raw_ca().await;
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

    server.stop().await;
}

/// No node-wide identity exists: a node's token asking for the node tunnel's identity (with or
/// without impersonation) is refused like any identity without a pod on the node, and audited.
#[tokio::test]
async fn a_node_asking_for_the_ztunnel_identity_is_refused_and_audited() {
    const ZTUNNEL: &str = "spiffe://cluster.local/ns/istio-system/sa/ztunnel";
    let env = env();
    let server = env.start_from_dir().await;
    for impersonate in [false, true] {
        let err = server
            .client(Some(NODE2_TOKEN), impersonate)
            .fetch(&id(ZTUNNEL))
            .await
            .expect_err("no node holds the ztunnel identity");
        assert!(
            matches!(&err, FetchError::Refused(m) if m.contains("PermissionDenied")),
            "{err}"
        );
    }
    let mut raw = server.raw_ca().await;
    assert_refused(
        call(
            &mut raw,
            Some(NODE1_TOKEN),
            request(csr_for(ZTUNNEL), 0, None),
        )
        .await,
        Code::PermissionDenied,
        &format!("node node-1 may not hold identity {ZTUNNEL}"),
    );
    let lines = logs().lines();
    for node in ["node-1", "node-2"] {
        assert!(
            lines.iter().any(|l| l.contains(" audit:")
                && l.contains(node)
                && l.contains(ZTUNNEL)
                && l.contains("deny")
                && l.contains("PermissionDenied")),
            "no deny audit line for {node} / {ZTUNNEL} in:\n{}",
            lines.join("\n")
        );
    }
    assert!(
        !lines
            .iter()
            .any(|l| l.contains(" audit:") && l.contains(ZTUNNEL) && l.contains("allow")),
        "{}",
        lines.join("\n")
    );
    server.stop().await;
}

#[tokio::test]
async fn unauthenticated_callers_are_refused_with_unauthenticated() {
    let env = env();
    let server = env.start_from_dir().await;
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

    let mut raw = server.raw_ca().await;
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
    let env = env();
    let server = env.start_from_dir().await;
    let mut raw = server.raw_ca().await;
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

    // Both refusals and the grant are counted, by reason; the process metrics are there too.
    let refused = "istiod_lite_csr_total{result=\"refused\",reason=\"identity_not_allowed\"}";
    assert_eq!(server.metric(refused).await, 2.0);
    let signed = "istiod_lite_csr_total{result=\"signed\",reason=\"ok\"}";
    assert_eq!(server.metric(signed).await, 1.0);
    let text = server.metrics().await;
    for want in [
        "process_resident_memory_bytes ",
        "tokio_workers{runtime=\"main\"}",
        "istiod_lite_config_errors 0",
    ] {
        assert!(text.contains(want), "{want} missing:\n{text}");
    }
    server.stop().await;
}

#[tokio::test]
async fn malformed_csrs_are_invalid_argument_and_the_server_keeps_serving() {
    let env = env();
    let server = env.start_from_dir().await;
    let mut raw = server.raw_ca().await;

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
    let env = env();
    let server = env.start_from_dir().await;
    let mut raw = server.raw_ca().await;
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
    let env = env();
    let server = env.start_from_dir().await;
    let mut raw = server.raw_ca().await;
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
    let env = env();
    let first = env.start_from_dir().await;
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

    let second = env.start_from_dir().await;
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
    let root = CertificateAuthority::generate_root("cluster.local").expect("root");
    let intermediate = root
        .issue_intermediate("cluster.local")
        .expect("intermediate");
    let env = Env::builder()
        .pods(SLEEP_AND_HTTPBIN)
        .plugin_ca(&[
            ("ca-cert.pem", intermediate.ca_cert_pem()),
            ("ca-key.pem", intermediate.ca_key_pem()),
            (
                "cert-chain.pem",
                &format!("{}{}", intermediate.ca_cert_pem(), root.root_pem()),
            ),
            ("root-cert.pem", root.root_pem()),
        ])
        .build();

    let server = env.start_from_dir().await;
    assert_eq!(server.root_pem, root.root_pem());
    assert_eq!(
        std::fs::read_to_string(env.data_dir.join("root-cert.pem")).expect("published root"),
        root.root_pem()
    );
    let mut raw = server.raw_ca().await;
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
    let env = env();
    let server = env.start_from_dir().await;
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
