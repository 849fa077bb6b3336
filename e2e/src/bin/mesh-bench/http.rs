//! The benchmark's HTTP workload: a hyper HTTP/1.1 server answering every request with 1 KiB,
//! and a blocking keep-alive HTTP/1.1 client exchange for the fixed-rate load generator, so
//! the same requests can go straight to a pod, through the L4 mesh, or through a waypoint.

use std::convert::Infallible;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

use crate::MSG;

/// Serves HTTP/1.1 with keep-alive on `port` until killed: each request's body is read, and
/// the answer is `MSG` bytes.
pub(crate) fn serve_http(port: u16) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("0.0.0.0", port)).await?;
        println!("http listening on 0.0.0.0:{port}");
        let body = Bytes::from(vec![b'r'; MSG]);
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let body = body.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let body = body.clone();
                        async move {
                            // Read the whole request, as a real handler would.
                            let _ = req.into_body().collect().await;
                            Ok::<_, Infallible>(Response::new(Full::new(body)))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

/// One keep-alive HTTP/1.1 connection of the load generator.
pub(crate) struct HttpConn {
    reader: BufReader<TcpStream>,
    request: Vec<u8>,
}

impl HttpConn {
    /// Connects to `addr`; requests carry `Host: host`.
    pub(crate) fn connect(addr: SocketAddr, host: &str) -> io::Result<HttpConn> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut request = format!(
            "POST /bench HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/octet-stream\r\ncontent-length: {MSG}\r\n\r\n"
        )
        .into_bytes();
        request.extend_from_slice(&[b'q'; MSG]);
        Ok(HttpConn {
            reader: BufReader::new(s),
            request,
        })
    }

    /// One request and its whole response; an error unless the status is 200.
    pub(crate) fn exchange(&mut self) -> io::Result<()> {
        self.reader.get_mut().write_all(&self.request)?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status = line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string();
        let (mut length, mut chunked) = (None, false);
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let Some((name, value)) = l.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse::<u64>().ok();
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            }
        }
        if chunked {
            self.skip_chunked()?;
        } else if let Some(n) = length {
            io::copy(&mut (&mut self.reader).take(n), &mut io::sink())?;
        }
        if status != "200" {
            return Err(io::Error::other(format!("HTTP {status}")));
        }
        Ok(())
    }

    fn skip_chunked(&mut self) -> io::Result<()> {
        let mut line = String::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let size = u64::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)
                .map_err(|_| io::Error::other("bad chunk size"))?;
            // The chunk and its CRLF; the last chunk's CRLF ends the (trailer-less) body.
            io::copy(&mut (&mut self.reader).take(size + 2), &mut io::sink())?;
            if size == 0 {
                return Ok(());
            }
        }
    }
}
