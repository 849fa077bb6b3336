//! `GET` of a loopback-only HTTP endpoint in a pod (ztunnel's admin, `127.0.0.1:15000`)
//! through a port-forward the API server opens to the pod (the portforward subresource, as
//! `kubectl port-forward` uses): one HTTP/1.1 request with `Connection: close` over the
//! forwarded stream, the response read by status line, headers and `Content-Length`, chunked
//! encoding or the end of the stream.

use std::time::Duration;

use anyhow::{bail, Context as _};
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How long the request may take once the forward is open.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The longest response header accepted.
const MAX_HEAD: usize = 64 * 1024;

/// An HTTP response: status code and body.
#[derive(Debug, PartialEq)]
struct Response {
    status: u16,
    body: Vec<u8>,
}

/// `GET path` (JSON) from `port` of `namespace/pod`, through a port-forward.
pub async fn get_json(
    client: &kube::Client,
    namespace: &str,
    pod: &str,
    port: u16,
    path: &str,
) -> anyhow::Result<Value> {
    let what = format!("GET {path} of pod {namespace}/{pod} port {port} through a port-forward");
    let mut forward = match Api::<Pod>::namespaced(client.clone(), namespace)
        .portforward(pod, &[port])
        .await
    {
        Ok(forward) => forward,
        Err(kube::Error::Api(status)) if status.code == 403 => bail!(
            "{what}: the API server refused the port-forward: {}; it needs `create` on \
             pods/portforward (`kubectl auth can-i create pods/portforward -n {namespace}`)",
            status.message
        ),
        Err(kube::Error::Api(status)) if status.code == 404 => {
            bail!("{what}: {}", status.message)
        }
        Err(e) => return Err(e).context(format!("{what}: opening the port-forward")),
    };
    let stream = forward
        .take_stream(port)
        .with_context(|| format!("{what}: no stream for port {port}"))?;
    let mut refused = std::pin::pin!(forward
        .take_error(port)
        .with_context(|| format!("{what}: no error channel for port {port}"))?);
    let refusal = |message: String| {
        anyhow::anyhow!(
            "{what}: the pod refused the connection ({message}); is its process listening on \
             {port}? `kubectl logs -n {namespace} pod/{pod}`"
        )
    };
    let exchange = tokio::time::timeout(TIMEOUT, exchange(stream, path));
    let response = tokio::select! {
        response = exchange => response,
        Some(message) = &mut refused => return Err(refusal(message)),
    };
    let response = match response {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => {
            // A refused port also ends the stream: say why it ended, if the pod said.
            if let Ok(Some(message)) = tokio::time::timeout(Duration::from_secs(1), refused).await {
                return Err(refusal(message));
            }
            return Err(e.context(what));
        }
        Err(_) => bail!("{what}: no response in {}s", TIMEOUT.as_secs()),
    };
    forward.abort();
    if response.status != 200 {
        bail!(
            "{what}: answered {}: {}",
            response.status,
            String::from_utf8_lossy(&response.body).trim()
        );
    }
    serde_json::from_slice(&response.body).with_context(|| format!("{pod}: {path} is not JSON"))
}

/// Sends `GET path` on `stream` and reads the response.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    path: &str,
) -> anyhow::Result<Response> {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\
         Connection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .context("sending the request")?;
    stream.flush().await.context("sending the request")?;
    // The write side stays open: kube's port-forward ends the whole forward, responses
    // included, when the client shuts its writing down.
    read_response(&mut stream).await
}

/// Reads one HTTP/1.x response from `stream`.
async fn read_response<R: AsyncRead + Unpin>(stream: &mut R) -> anyhow::Result<Response> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            bail!("the response header is longer than {MAX_HEAD} bytes");
        }
        if read_some(stream, &mut buf).await? == 0 {
            bail!(
                "the connection closed before the response header ended ({} bytes read)",
                buf.len()
            );
        }
    };
    let head = std::str::from_utf8(&buf[..head_end]).context("the response header is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = match status_line.split_whitespace().collect::<Vec<_>>()[..] {
        [version, code, ..] if version.starts_with("HTTP/1.") => code.parse().ok(),
        _ => None,
    }
    .with_context(|| format!("not an HTTP/1 status line: {status_line:?}"))?;
    let (mut length, mut chunked) = (None, false);
    for (name, value) in lines.filter_map(|l| l.split_once(':')) {
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .with_context(|| format!("bad Content-Length {value:?}"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().ends_with("chunked");
        }
    }
    let mut body = buf.split_off(head_end);
    if chunked {
        stream
            .read_to_end(&mut body)
            .await
            .context("reading the body")?;
        body = dechunk(&body)?;
    } else if let Some(length) = length {
        while body.len() < length {
            if read_some(stream, &mut body).await? == 0 {
                bail!(
                    "the connection closed after {} of {length} body bytes",
                    body.len()
                );
            }
        }
        body.truncate(length);
    } else {
        stream
            .read_to_end(&mut body)
            .await
            .context("reading the body")?;
    }
    Ok(Response { status, body })
}

/// Appends what one read returns to `buf`; 0 at the end of the stream.
async fn read_some<R: AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut Vec<u8>,
) -> anyhow::Result<usize> {
    let mut chunk = [0u8; 16 * 1024];
    let n = stream
        .read(&mut chunk)
        .await
        .context("reading the response")?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

/// The payload of a chunked body (`size[;ext]\r\n data\r\n … 0\r\n\r\n`; trailers ignored).
fn dechunk(mut raw: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let eol = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("a chunk size line has no end")?;
        let line = std::str::from_utf8(&raw[..eol]).context("a chunk size is not UTF-8")?;
        let hex = line.split(';').next().unwrap_or_default().trim();
        let size =
            usize::from_str_radix(hex, 16).with_context(|| format!("bad chunk size {hex:?}"))?;
        raw = &raw[eol + 2..];
        if size == 0 {
            return Ok(body);
        }
        let data = raw.get(..size).context("the body ended inside a chunk")?;
        body.extend_from_slice(data);
        raw = raw
            .get(size + 2..)
            .context("the body ended inside a chunk")?;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    async fn read(raw: &[u8]) -> anyhow::Result<Response> {
        let mut raw = raw;
        read_response(&mut raw).await
    }

    #[tokio::test]
    async fn responses_end_at_their_content_length() {
        let r = read(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}trailing")
            .await
            .unwrap();
        assert_eq!(
            r,
            Response {
                status: 200,
                body: b"{}".to_vec()
            }
        );
        let err = read(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n{}")
            .await
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("after 2 of 5 body bytes"),
            "{err:#}"
        );
    }

    #[tokio::test]
    async fn chunked_and_unframed_responses_read_to_the_end() {
        let r = read(b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3;x=1\r\nnot\r\n6\r\n found\r\n0\r\n\r\n")
            .await
            .unwrap();
        assert_eq!((r.status, r.body), (404, b"not found".to_vec()));
        let r = read(b"HTTP/1.0 200 OK\r\n\r\n[1, 2]").await.unwrap();
        assert_eq!(r.body, b"[1, 2]".to_vec());
    }

    #[tokio::test]
    async fn truncated_or_garbled_responses_are_errors() {
        let err = read(b"HTTP/1.1 200 OK\r\nContent-").await.unwrap_err();
        assert!(format!("{err:#}").contains("before the response header ended"));
        let err = read(b"SSH-2.0-OpenSSH\r\n\r\n").await.unwrap_err();
        assert!(format!("{err:#}").contains("not an HTTP/1 status line"));
        assert!(dechunk(b"5\r\nab").is_err());
    }

    #[tokio::test]
    async fn a_request_is_sent_with_connection_close_and_its_response_read() {
        let (client, mut server) = tokio::io::duplex(4096);
        let serving = tokio::spawn(async move {
            let mut got = Vec::new();
            while !got.ends_with(b"\r\n\r\n") {
                read_some(&mut server, &mut got).await.unwrap();
            }
            server
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ntrue")
                .await
                .unwrap();
            String::from_utf8(got).unwrap()
        });
        let r = exchange(client, "/config_dump").await.unwrap();
        assert_eq!(r.body, b"true".to_vec());
        let request = serving.await.unwrap();
        assert!(
            request.starts_with("GET /config_dump HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(request.contains("\r\nConnection: close\r\n"), "{request}");
    }
}
