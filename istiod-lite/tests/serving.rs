//! istiod-lite's serving certificate: it names the address the server listens on (a client
//! that dials the IP and checks the name is served), and it is renewed while the server runs
//! (new connections get the new one).

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use istiod_lite::xds::XdsSnapshot;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::sync::watch;

use support::Env;

/// The leaf certificate the server presents to a client that verifies it as `name`.
async fn leaf(
    addr: std::net::SocketAddr,
    root_pem: &str,
    name: ServerName<'static>,
) -> CertificateDer<'static> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(root_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(mesh::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("handshake, the name verified");
    let (_, session) = tls.get_ref();
    assert_eq!(session.alpn_protocol(), Some(&b"h2"[..]));
    session.peer_certificates().unwrap()[0].clone().into_owned()
}

#[tokio::test]
async fn the_listen_address_is_named_and_the_certificate_is_renewed() {
    let env = Env::new();
    let mut config = env.config("127.0.0.1:0".parse().unwrap(), Duration::from_millis(20));
    config.server_names = vec!["istiod.istio-system.svc".into()];
    config.serving_cert_ttl_secs = 3;
    let server = istiod_lite::Server::bind(&config).await.expect("starts");
    let (snapshots, _) = watch::channel(Arc::new(XdsSnapshot::default()));
    let running = Env::run(server, snapshots);
    let ip = ServerName::IpAddress(running.addr.ip().into());
    let first = leaf(running.addr, &running.root_pem, ip.clone()).await;
    let by_name = ServerName::try_from("istiod.istio-system.svc").unwrap();
    assert_eq!(leaf(running.addr, &running.root_pem, by_name).await, first);
    // After two thirds of 3 s, a new one.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let renewed = leaf(running.addr, &running.root_pem, ip).await;
    assert_ne!(renewed, first, "the serving certificate was not renewed");
    running.stop().await;
}
