//! `meshctl demo`: the mesh's foundation on one machine, step by step.
//!
//! 1. istiod-lite (the CA) starts as a child process, with a tokens file for `node-1` and two
//!    pods on that node: `demo/sleep` (service account `sleep`) and `demo/echo` (`echo`).
//! 2. Acting as node-1's ztunnel, the demo asks the CA for both pods' certificates (keys
//!    generated here, only CSRs sent), and shows the CA refusing an identity that has no pod
//!    on node-1.
//! 3. A plain TCP echo app and, in front of it, an HBONE server presenting the echo identity.
//! 4. An HBONE client presenting the sleep identity and expecting the echo identity sends a
//!    message through the tunnel and reads the echo.
//! 5. A client expecting another identity is refused during the TLS handshake.
//!
//! Everything listens on 127.0.0.1; the state directory is temporary and removed at the end.

/// Prints a line of the demo's narrative on stdout. A closed stdout (`meshctl demo | head`)
/// does not stop the demo: it still cleans up after itself.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context as _};
use mesh::ca_client::{CaClient, CaClientConfig};
use mesh::cert::WorkloadCertificate;
use mesh::cert_manager::FetchError;
use mesh::copy::{copy_bidirectional, Transferred};
use mesh::hbone::{
    Baggage, ConnectMeta, H2Config, HboneError, InboundRequest, Pool, PoolKey, Server, TcpConnector,
};
use mesh::Identity;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::istiod::{self, DemoPod, IstiodLite, StartOptions};

/// The trust domain of the demo mesh.
const TRUST_DOMAIN: &str = mesh::identity::DEFAULT_TRUST_DOMAIN;
/// The node both demo pods run on; the CA token is this node's.
const NODE: &str = "node-1";
/// The name in istiod-lite's serving certificate that the CA client checks.
const CA_SERVER_NAME: &str = "localhost";
/// Lifetime asked for the demo's certificates.
const CERT_TTL: Duration = Duration::from_secs(3600);
/// Limit on each network step, so the demo never hangs.
const STEP_TIMEOUT: Duration = Duration::from_secs(15);

const PODS: [DemoPod; 2] = [
    DemoPod {
        namespace: "demo",
        name: "sleep",
        service_account: "sleep",
        node: NODE,
    },
    DemoPod {
        namespace: "demo",
        name: "echo",
        service_account: "echo",
        node: NODE,
    },
];

/// Options of `meshctl demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Path of the istiod-lite binary [default: next to meshctl].
    #[arg(long, env = "MESHCTL_ISTIOD_LITE")]
    istiod_lite: Option<PathBuf>,

    /// The message sent through the tunnel.
    #[arg(
        long,
        default_value = "hello from demo/sleep, through HBONE, to demo/echo"
    )]
    message: String,
}

/// Runs the demo; ctrl-c or SIGTERM stops it (and istiod-lite) cleanly.
pub async fn run_until_interrupted(args: DemoArgs) -> anyhow::Result<()> {
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    // Dropping the demo future drops the istiod-lite child (killed on drop) and the state dir.
    tokio::select! {
        result = run(args) => result,
        _ = tokio::signal::ctrl_c() => bail!("interrupted; istiod-lite stopped and state removed"),
        _ = sigterm.recv() => bail!("terminated; istiod-lite stopped and state removed"),
    }
}

async fn run(args: DemoArgs) -> anyhow::Result<()> {
    // tonic takes the process-wide default provider; make it the one the mesh uses.
    let _ = mesh::tls::provider().as_ref().clone().install_default();
    let sleep_id = Identity::new(TRUST_DOMAIN, "demo", "sleep")?;
    let echo_id = Identity::new(TRUST_DOMAIN, "demo", "echo")?;

    say!("meshctl demo: two workloads, a CA and an HBONE tunnel, all on 127.0.0.1");
    say!();

    // 1. The CA.
    say!("[1/5] Starting istiod-lite, the mesh CA");
    let binary = istiod::find_binary(args.istiod_lite.as_deref())?;
    let state = tempfile::Builder::new()
        .prefix("meshctl-demo-")
        .tempdir()
        .context("creating a temporary state directory")?;
    let token = format!("{:032x}", rand::random::<u128>());
    say!("      binary      {}", binary.display());
    say!("      state dir   {}", state.path().display());
    for pod in &PODS {
        say!(
            "      pod         {}/{} (service account {}, on {})",
            pod.namespace,
            pod.name,
            pod.service_account,
            pod.node
        );
    }
    say!("      token       one bearer token, for {NODE}'s ztunnel");
    let ca = IstiodLite::start(StartOptions {
        binary: &binary,
        state_dir: state.path(),
        trust_domain: TRUST_DOMAIN,
        token: &token,
        node: NODE,
        pods: &PODS,
        server_name: CA_SERVER_NAME,
    })
    .await?;
    say!(
        "      CA address  https://{} (pid {}, ready after {} ms)",
        ca.addr,
        ca.pid().map_or_else(|| "?".to_string(), |p| p.to_string()),
        ca.ready_after.as_millis()
    );
    say!(
        "      root cert   SHA-256 {}",
        root_fingerprint(&ca.root_cert_pem)?
    );
    say!();

    let outcome = with_ca(&args, &ca, &token, &sleep_id, &echo_id).await;
    let log_tail = ca.log_tail();

    say!(
        "Stopping istiod-lite and removing {}",
        state.path().display()
    );
    ca.stop().await?;
    drop(state);
    match outcome {
        Ok(()) => {
            say!("Demo complete.");
            Ok(())
        }
        Err(e) => Err(e.context(format!("istiod-lite's last log lines:\n{log_tail}"))),
    }
}

/// Steps 2 to 5, while the CA runs.
async fn with_ca(
    args: &DemoArgs,
    ca: &IstiodLite,
    token: &str,
    sleep_id: &Identity,
    echo_id: &Identity,
) -> anyhow::Result<()> {
    // 2. Certificates.
    say!("[2/5] Fetching certificates as {NODE}'s ztunnel (keys generated here; only CSRs leave)");
    let client = CaClient::new(CaClientConfig {
        address: format!("https://{}", ca.addr),
        root_cert_pem: ca.root_cert_pem.clone(),
        server_name: CA_SERVER_NAME.to_string(),
        token: Some(token.to_string()),
        ttl: CERT_TTL,
        impersonate: true,
    })?;
    let echo_cert = Arc::new(fetch(&client, echo_id).await?);
    let sleep_cert = Arc::new(fetch(&client, sleep_id).await?);
    let stranger = Identity::new(TRUST_DOMAIN, "demo", "stranger")?;
    match tokio::time::timeout(STEP_TIMEOUT, client.fetch_certificate(&stranger)).await {
        Ok(Err(FetchError::Refused(why))) => {
            say!("      {stranger}: refused, as it should be (no such pod on {NODE}): {why}")
        }
        Ok(Err(e)) => bail!("the CA failed for {stranger} without refusing it: {e}"),
        Ok(Ok(_)) => bail!("the CA signed {stranger}, which has no pod on {NODE}"),
        Err(_) => bail!("the CA did not answer within {STEP_TIMEOUT:?}"),
    }
    say!();

    // 3. The echo app and the HBONE server in front of it.
    let app = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let app_addr = app.local_addr()?;
    let app_task = tokio::spawn(echo_app(app));
    let hbone = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let hbone_addr = hbone.local_addr()?;
    say!("[3/5] Starting the echo app and an HBONE server in front of it");
    say!("      echo app      tcp://{app_addr} (plain TCP; echoes what it reads)");
    say!("      HBONE server  {hbone_addr} presenting {echo_id}");
    let (report_tx, mut reports) = mpsc::unbounded_channel();
    let server = Arc::new(Server::new(
        H2Config::default(),
        Arc::new(echo_cert.clone()),
    ));
    let server_task = tokio::spawn(server.serve(hbone, move |req: InboundRequest| {
        handle_inbound(req, app_addr, report_tx.clone())
    }));
    say!();

    let result = async {
        // 4. Through the tunnel.
        say!("[4/5] Sending through the tunnel: sleep --HBONE (mTLS, HTTP/2 CONNECT)--> echo");
        let pool = Pool::new(H2Config::default(), Arc::new(TcpConnector));
        let key = PoolKey::new(sleep_id.clone(), vec![echo_id.clone()], hbone_addr, None);
        let meta = ConnectMeta {
            baggage: Some(Baggage {
                namespace: Some("demo".into()),
                workload_name: Some("sleep".into()),
                service: Some("sleep".into()),
                ..Baggage::default()
            }),
            ..ConnectMeta::default()
        };
        let (sent, echoed) = tokio::time::timeout(STEP_TIMEOUT, async {
            let mut stream = pool.connect(&key, &sleep_cert, app_addr, &meta).await?;
            stream.write_all(args.message.as_bytes()).await?;
            // Half-close: the echo app sees EOF, finishes echoing and closes its side.
            stream.shutdown().await?;
            let mut echoed = Vec::new();
            stream.read_to_end(&mut echoed).await?;
            Ok::<_, anyhow::Error>((args.message.len(), echoed))
        })
        .await
        .context("the tunnel did not finish in time")??;
        let server_report = tokio::time::timeout(STEP_TIMEOUT, reports.recv())
            .await
            .context("the HBONE server did not report the stream in time")?
            .context("the HBONE server stopped")?;
        let server_side = server_report.map_err(|e| anyhow::anyhow!("HBONE server: {e}"))?;
        let tls = tls_parameters(&sleep_cert, echo_id, hbone_addr).await?;
        say!("      client presented  {}", sleep_cert.identity());
        say!(
            "      server verified   {} (by the client, against the CA root)",
            tls.peer
        );
        say!(
            "      TLS               {} {}, ALPN {}",
            tls.version,
            tls.cipher,
            tls.alpn
        );
        say!("      sent              {sent} bytes: {:?}", args.message);
        say!(
            "      received          {} bytes: {:?}",
            echoed.len(),
            String::from_utf8_lossy(&echoed)
        );
        say!(
            "      HBONE server copied {} bytes to the app, {} bytes back",
            server_side.a_to_b,
            server_side.b_to_a
        );
        if echoed != args.message.as_bytes() {
            bail!("the echo differs from what was sent");
        }
        say!(
            "      HBONE connections opened by the client pool: {}",
            pool.connections_opened()
        );
        say!();

        // 5. A refusal.
        say!("[5/5] A client that expects another identity is refused");
        let other = Identity::new(TRUST_DOMAIN, "demo", "payments")?;
        let wrong = PoolKey::new(sleep_id.clone(), vec![other.clone()], hbone_addr, None);
        match tokio::time::timeout(
            STEP_TIMEOUT,
            pool.connect(&wrong, &sleep_cert, app_addr, &meta),
        )
        .await
        {
            Ok(Err(e @ HboneError::Tls { .. })) => {
                say!("      client expected   {other}");
                say!("      server presents   {echo_id}");
                say!("      refused by the client during the TLS handshake: {e}");
            }
            Ok(Err(e)) => bail!("refused, but not by the TLS handshake: {e}"),
            Ok(Ok(_)) => bail!("a client expecting {other} was let through"),
            Err(_) => bail!("the refused connection did not finish in time"),
        }
        say!();
        Ok(())
    }
    .await;
    server_task.abort();
    app_task.abort();
    result
}

/// Fetches one certificate and prints what came back.
async fn fetch(client: &CaClient, id: &Identity) -> anyhow::Result<WorkloadCertificate> {
    let cert = tokio::time::timeout(STEP_TIMEOUT, client.fetch_certificate(id))
        .await
        .with_context(|| format!("the CA did not answer for {id} within {STEP_TIMEOUT:?}"))?
        .with_context(|| format!("fetching the certificate of {id}"))?;
    let valid_for = cert
        .not_after()
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    say!(
        "      {id}: issued, valid {} more minutes, chain of {} + root",
        valid_for.as_secs() / 60,
        cert.chain().len()
    );
    Ok(cert)
}

/// The HBONE server's handler: print who asks for what, then splice the stream to the app.
async fn handle_inbound(
    req: InboundRequest,
    app_addr: SocketAddr,
    report: mpsc::UnboundedSender<Result<Transferred, String>>,
) {
    say!(
        "      HBONE server: CONNECT {} from {} (verified client certificate)",
        req.target(),
        req.peer()
    );
    if req.target() != app_addr {
        // This listener serves one app only.
        req.reject(http::StatusCode::SERVICE_UNAVAILABLE);
        let _ = report.send(Err("CONNECT to an unknown target".into()));
        return;
    }
    let outcome = async {
        let app = TcpStream::connect(app_addr)
            .await
            .map_err(|e| format!("connecting to the app: {e}"))?;
        let stream = req.accept().map_err(|e| format!("answering 200: {e}"))?;
        copy_bidirectional(stream, app)
            .await
            .map_err(|e| e.to_string())
    }
    .await;
    let _ = report.send(outcome);
}

/// A plain TCP echo server: echoes each connection until EOF, then closes it.
async fn echo_app(listener: TcpListener) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let (mut r, mut w) = conn.split();
            if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                let _ = w.shutdown().await;
            }
        });
    }
}

/// What a TLS handshake with the HBONE server negotiated.
struct TlsParameters {
    peer: String,
    version: String,
    cipher: String,
    alpn: String,
}

/// Handshakes once more with the client's TLS config, to show what was negotiated (the pool
/// does not expose its sessions).
async fn tls_parameters(
    cert: &WorkloadCertificate,
    expected: &Identity,
    addr: SocketAddr,
) -> anyhow::Result<TlsParameters> {
    let config = Arc::new(mesh::tls::client_config(cert, vec![expected.clone()]));
    let tcp = TcpStream::connect(addr).await?;
    let tls = tokio::time::timeout(
        STEP_TIMEOUT,
        tokio_rustls::TlsConnector::from(config)
            .connect(ServerName::IpAddress(addr.ip().into()), tcp),
    )
    .await
    .context("TLS handshake timed out")??;
    let (_, session) = tls.get_ref();
    Ok(TlsParameters {
        peer: mesh::tls::peer_identity(session)
            .map_or_else(|| "(none)".to_string(), |id| id.to_string()),
        version: session
            .protocol_version()
            .map_or_else(|| "?".to_string(), |v| format!("{v:?}")),
        cipher: session
            .negotiated_cipher_suite()
            .map_or_else(|| "?".to_string(), |s| format!("{:?}", s.suite())),
        alpn: session.alpn_protocol().map_or_else(
            || "(none)".to_string(),
            |a| String::from_utf8_lossy(a).into_owned(),
        ),
    })
}

/// SHA-256 of the root certificate's DER, as colon-separated hex (as `openssl x509
/// -fingerprint -sha256` prints it).
fn root_fingerprint(pem: &str) -> anyhow::Result<String> {
    let certs = mesh::cert::parse_pem_certs(pem)?;
    let root = certs
        .first()
        .context("root-cert.pem holds no certificate")?;
    let digest = ring::digest::digest(&ring::digest::SHA256, root.as_ref());
    Ok(digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_colon_separated_sha256() {
        let root = mesh::ca::CertificateAuthority::generate_root(TRUST_DOMAIN).expect("root");
        let fp = root_fingerprint(root.root_pem()).expect("fingerprint");
        assert_eq!(fp.len(), 32 * 3 - 1, "{fp}");
        assert!(fp.split(':').all(|b| b.len() == 2), "{fp}");
    }
}
