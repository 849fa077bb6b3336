//! `e2e-grpc`: a tiny gRPC server and client that the e2e tests run inside pods, to check that a
//! waypoint routes gRPC (GRPCRoute) as it routes HTTP. The service is the mesh's own CA API
//! (`istio.v1.auth.IstioCertificateService/CreateCertificate`), for want of another compiled in:
//! the server answers every call with its name as the one "certificate".
//!
//! ```text
//! e2e-grpc serve <port> <name>           answers CreateCertificate with `<name>`
//! e2e-grpc call <ip:port> [key=value ...] one unary call with that metadata; prints the answer
//! ```
//!
//! The server prints `listening on 0.0.0.0:<port>` once bound; the client prints
//! `answer=<name>`, or `status=<code> message=<text>` for a gRPC error, and exits 0 either way
//! (1 when the call could not be made at all).

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;

use proto::ca::istio_certificate_service_client::IstioCertificateServiceClient;
use proto::ca::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use proto::ca::{IstioCertificateRequest, IstioCertificateResponse};
use tonic::{Request, Response, Status};

struct Named(String);

#[tonic::async_trait]
impl IstioCertificateService for Named {
    async fn create_certificate(
        &self,
        _request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: vec![self.0.clone()],
        }))
    }
}

async fn serve(port: u16, name: String) -> Result<(), String> {
    let addr = std::net::SocketAddr::from(([0, 0, 0, 0], port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("bind {addr}: {e}"))?;
    println!("listening on {addr}");
    tonic::transport::Server::builder()
        .add_service(IstioCertificateServiceServer::new(Named(name)))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await
        .map_err(|e| format!("serve: {e}"))
}

async fn call(addr: &str, metadata: &[&str]) -> Result<(), String> {
    let mut client = IstioCertificateServiceClient::connect(format!("http://{addr}"))
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let mut request = Request::new(IstioCertificateRequest::default());
    for kv in metadata {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("metadata {kv:?} is not key=value"))?;
        let key = tonic::metadata::MetadataKey::from_bytes(k.as_bytes())
            .map_err(|e| format!("metadata key {k:?}: {e}"))?;
        let value = v
            .parse()
            .map_err(|e| format!("metadata value {v:?}: {e}"))?;
        request.metadata_mut().insert(key, value);
    }
    match client.create_certificate(request).await {
        Ok(answer) => println!(
            "answer={}",
            answer
                .into_inner()
                .cert_chain
                .first()
                .cloned()
                .unwrap_or_default()
        ),
        Err(status) => println!(
            "status={} message={}",
            status.code() as i32,
            status.message()
        ),
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("e2e-grpc: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match args.as_slice() {
            ["serve", port, name] => match port.parse() {
                Ok(port) => serve(port, name.to_string()).await,
                Err(e) => Err(format!("bad port {port:?}: {e}")),
            },
            ["call", addr, metadata @ ..] => call(addr, metadata).await,
            _ => Err("usage: e2e-grpc serve PORT NAME | call IP:PORT [key=value ...]".into()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("e2e-grpc: {e}");
            ExitCode::FAILURE
        }
    }
}
