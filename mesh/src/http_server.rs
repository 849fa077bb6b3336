//! A minimal HTTP/1.1 server for admin, metrics and readiness endpoints.
//!
//! These endpoints answer small GET/POST requests with text or JSON; a handler is a plain
//! function of method, path and query.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// A handler's answer.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: StatusCode,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Body.
    pub body: String,
}

impl Reply {
    /// 200 with a text body.
    pub fn text(body: impl Into<String>) -> Reply {
        Reply {
            status: StatusCode::OK,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }

    /// 200 with a JSON body.
    pub fn json(body: impl Into<String>) -> Reply {
        Reply {
            status: StatusCode::OK,
            content_type: "application/json",
            body: body.into(),
        }
    }

    /// An error status with a text reason.
    pub fn status(status: StatusCode, body: impl Into<String>) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

/// The request as a handler sees it.
#[derive(Debug)]
pub struct Call<'a> {
    /// Method.
    pub method: &'a Method,
    /// Path, without the query.
    pub path: &'a str,
    /// Raw query string, if any.
    pub query: Option<&'a str>,
}

impl Call<'_> {
    /// The value of query parameter `key`.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.query?
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }
}

/// A request handler.
pub type Handler = Arc<dyn Fn(&Call<'_>) -> Reply + Send + Sync>;

/// Serves `handler` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, handler: Handler) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let handler = handler.clone();
                async move {
                    let call = Call {
                        method: req.method(),
                        path: req.uri().path(),
                        query: req.uri().query(),
                    };
                    let reply = handler(&call);
                    let mut resp = Response::new(Full::new(Bytes::from(reply.body)));
                    *resp.status_mut() = reply.status;
                    if let Ok(v) = http::HeaderValue::from_str(reply.content_type) {
                        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
                    }
                    Ok::<_, Infallible>(resp)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin connection error");
            }
        });
    }
}

/// One of a proxy's own HTTP endpoints (admin, metrics, readiness): where, what, and its name
/// for logs and errors.
pub struct Endpoint {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// What answers.
    pub handler: Handler,
    /// `admin`, `metrics`, ...
    pub name: &'static str,
}

/// An endpoint could not be started.
#[derive(Debug, thiserror::Error)]
#[error("binding the {name} endpoint on {addr}: {source}")]
pub struct EndpointError {
    /// The endpoint's name.
    pub name: &'static str,
    /// Where it was to listen.
    pub addr: std::net::SocketAddr,
    /// Why it could not.
    pub source: std::io::Error,
}

/// Binds every endpoint and serves each on `runtime` (the control runtime: its reactor then owns
/// the sockets, and no request to them ever takes a data-plane thread).
pub async fn serve_endpoints(
    runtime: &tokio::runtime::Handle,
    endpoints: Vec<Endpoint>,
) -> Result<(), EndpointError> {
    for Endpoint {
        addr,
        handler,
        name,
    } in endpoints
    {
        let bound = runtime.spawn(TcpListener::bind(addr)).await;
        let listener = bound
            .map_err(std::io::Error::other)
            .and_then(|r| r)
            .map_err(|source| EndpointError { name, addr, source })?;
        tracing::info!(%addr, "{name} endpoint listening");
        runtime.spawn(serve(listener, handler));
    }
    Ok(())
}
