//! The metrics port: `GET /metrics` over HTTP/1.1 (hyper), 404 otherwise.
//!
//! Bounded like the client port: at most [`MAX_METRICS_CONNECTIONS`] open
//! at once (more are closed at accept), a request head over
//! [`MAX_REQUEST_HEAD_BYTES`] is refused (431), a head not read within
//! [`REQUEST_HEAD_TIMEOUT`] closes the connection, a connection answers one
//! request (no keep-alive) and lives at most [`CONNECTION_TIMEOUT`], so a
//! scraper that stops reading cannot hold its answer's memory.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use super::{metrics, Shared};

/// Metrics connections served at once; more are closed at accept.
pub const MAX_METRICS_CONNECTIONS: usize = 8;
/// The largest request head read (hyper's smallest read buffer).
pub const MAX_REQUEST_HEAD_BYTES: usize = 8192;
/// A request head must arrive within this.
pub const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection is closed this long after it was accepted, answered or not.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `listener` until `stop` turns true.
pub(super) async fn serve(shared: Arc<Shared>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(MAX_METRICS_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        let (stream, addr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "accept on the metrics port failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(client = %addr, "refusing a metrics connection: {MAX_METRICS_CONNECTIONS} open");
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |request| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(answer(&shared, &request).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(REQUEST_HEAD_TIMEOUT)
                .max_buf_size(MAX_REQUEST_HEAD_BYTES)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(client = %addr, error = %e, "metrics connection failed"),
                Err(_) => tracing::debug!(client = %addr, "metrics connection timed out"),
            }
        });
    }
}

async fn answer(shared: &Shared, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &'static str, body: Bytes| {
        let mut r = Response::new(Full::new(body));
        *r.status_mut() = status;
        r.headers_mut()
            .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
        r
    };
    if request.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            Bytes::from_static(b"not found; try GET /metrics\n"),
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", Bytes::from_static(b"use GET\n"));
    }
    let text = metrics::render(shared).await;
    reply(StatusCode::OK, metrics::CONTENT_TYPE, Bytes::from(text))
}
