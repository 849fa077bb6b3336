//! Watch streams of the fake API server.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::Response;
use serde_json::{json, Value};

use super::*;

pub(super) fn watch_stream(
    shared: &Arc<Shared>,
    resource: Resource,
    namespace: Option<String>,
    q: BTreeMap<String, String>,
) -> Response<Body> {
    let since: u64 = q
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let bookmarks = q.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(300));
    // Subscribe before reading the history, so no change falls between the two.
    let mut live = shared.changes.subscribe();
    let mut cut = shared.cut.subscribe();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(64);
    let line = |v: Value| Ok(Frame::data(Bytes::from(format!("{v}\n"))));
    let (backlog, expired, current) = {
        let store = shared.store();
        let expired = since != 0 && since < store.oldest;
        let backlog: Vec<Change> = store
            .history
            .iter()
            .filter(|c| c.rv > since && c.resource == resource)
            .cloned()
            .collect();
        (backlog, expired, store.rv)
    };
    let selected =
        move |c: &Change| c.resource == resource && matches(&c.object, namespace.as_deref(), &q);
    tokio::spawn(async move {
        if expired {
            let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "message": format!("too old resource version: {since}"),
                "reason": "Expired", "code": 410});
            let _ = tx
                .send(line(json!({"type": "ERROR", "object": status})))
                .await;
            return;
        }
        let mut last = since;
        for c in backlog.iter().filter(|c| selected(c)) {
            last = c.rv;
            if tx
                .send(line(json!({"type": c.kind, "object": c.object})))
                .await
                .is_err()
            {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut bookmark_rv = current.max(last);
        loop {
            // Biased: a cut (drop_watches) wins over changes made after it, so those changes
            // are seen only by the client's next watch or list, as after a real disconnect.
            tokio::select! {
                biased;
                _ = cut.changed() => return,
                () = &mut deadline => return,
                _ = tick.tick(), if bookmarks => {
                    let event = json!({"type": "BOOKMARK", "object": {"kind": "Bookmark",
                        "apiVersion": "v1", "metadata": {"resourceVersion": bookmark_rv.to_string()}}});
                    if tx.send(line(event)).await.is_err() {
                        return;
                    }
                }
                change = live.recv() => match change {
                    Ok(c) if c.rv > last => {
                        last = c.rv;
                        bookmark_rv = c.rv;
                        if selected(&c) && tx.send(line(json!({"type": c.kind, "object": c.object}))).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    // Lagged or closed: end the stream; the client resumes from its last version.
                    Err(_) => return,
                },
            }
        }
    });
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut resp = Response::new(BodyExt::boxed(body));
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}
