//! A raw HBONE client for attack tests: gets a certificate from the mesh CA as a node would,
//! then sends one CONNECT with an arbitrary authority to an arbitrary HBONE endpoint.
//!
//! `e2e-hbone CA_URL ROOT_PEM TOKEN_FILE IDENTITY ENDPOINT AUTHORITY EXPECTED_SERVER_IDENTITY`
//! prints `status 200` (then the echo of `ping`) or `refused: <error>`.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use mesh::ca_client::{CaClient, CaClientConfig};
use mesh::hbone::{ConnectMeta, H2Config, HboneError, Pool, PoolKey, TcpConnector};
use mesh::Identity;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn run(args: &[String]) -> Result<String, String> {
    let [ca, root, token, identity, endpoint, authority, expected] = args else {
        return Err("usage: e2e-hbone CA_URL ROOT_PEM TOKEN_FILE IDENTITY ENDPOINT AUTHORITY EXPECTED_SERVER_IDENTITY".into());
    };
    let read = |p: &str| std::fs::read_to_string(p).map_err(|e| format!("{p}: {e}"));
    let identity: Identity = identity.parse().map_err(|e| format!("identity: {e}"))?;
    let expected: Identity = expected.parse().map_err(|e| format!("expected: {e}"))?;
    let client = CaClient::new(CaClientConfig {
        address: ca.clone(),
        root_cert_pem: read(root)?,
        server_name: "istiod-lite.istio-system.svc".into(),
        token: Some(read(token)?.trim().to_string()),
        token_file: None,
        ttl: Duration::from_secs(3600),
        impersonate: true,
    })
    .map_err(|e| e.to_string())?;
    let cert = client
        .fetch_certificate(&identity)
        .await
        .map_err(|e| format!("certificate: {e}"))?;
    let endpoint = endpoint.parse().map_err(|e| format!("endpoint: {e}"))?;
    let authority = authority.parse().map_err(|e| format!("authority: {e}"))?;
    let pool = Pool::new(H2Config::default(), Arc::new(TcpConnector));
    let key = PoolKey::new(identity, vec![expected], endpoint, None);
    match pool
        .connect(&key, &cert, authority, &ConnectMeta::default())
        .await
    {
        Ok(mut stream) => {
            stream.write_all(b"ping").await.map_err(|e| e.to_string())?;
            stream.shutdown().await.map_err(|e| e.to_string())?;
            let mut back = Vec::new();
            let _ = stream.read_to_end(&mut back).await;
            Ok(format!("status 200 {}", String::from_utf8_lossy(&back)))
        }
        Err(HboneError::Status(s)) => Ok(format!("refused: status {}", s.as_u16())),
        Err(e) => Ok(format!("refused: {e}")),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("e2e-hbone: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&args)) {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("e2e-hbone: {e}");
            ExitCode::FAILURE
        }
    }
}
