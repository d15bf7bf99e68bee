//! The HTTP connection layer: accepts TCP connections and speaks HTTP/1.1 on them, under limits
//! that keep a hostile or broken client from tying the server up. `axum::serve` offers none of
//! these knobs, so kiln runs hyper's connection builder itself.
//!
//! - At most `max_connections` connections are served at once. Past that the accept loop stops
//!   accepting: further connections wait in the kernel's listen backlog, holding no descriptor
//!   of ours, until one closes.
//! - A request's headers must arrive within `header_read_timeout` of the server starting to read
//!   them, and the same clock cuts off a keep-alive connection left idle that long: a client
//!   dribbling headers (slow-loris) or parking connections is closed.
//! - Headers (with the request line) larger than `max_header_bytes` are answered
//!   `431 Request Header Fields Too Large` by hyper itself, before any of kiln's code runs, so
//!   that answer has no JSON body.
//! - The body deadline (`body_read_timeout`, the whole body, not per chunk) is applied by
//!   [`crate::api`], where a late body becomes a `408` JSON error.
//!
//! Shutdown: once `stop` is cancelled, no connection is accepted; open ones finish the request
//! in flight and close; [`serve`] returns when every one has.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// How long the accept loop rests after `accept` fails (out of descriptors, typically), so that
/// it does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The limits on clients' connections. [`HttpLimits::default`] is what kiln ships.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections served at once; more wait to be accepted. Each open live stream holds one.
    pub max_connections: usize,
    /// How long a client has to send a request's headers, and how long an idle keep-alive
    /// connection stays open.
    pub header_read_timeout: Duration,
    /// How long a client has to send a request's whole body once its headers are in.
    pub body_read_timeout: Duration,
    /// Largest request line plus headers, in bytes.
    pub max_header_bytes: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            max_header_bytes: 16 << 10,
        }
    }
}

/// Serves `app` on `listener` until `stop` is cancelled and every open connection has closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    stop: CancellationToken,
) {
    let max = u32::try_from(limits.max_connections.max(1)).unwrap_or(u32::MAX);
    let slots = Arc::new(Semaphore::new(max as usize));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_bytes);
    let http = Arc::new(http);
    loop {
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => slot,
            () = stop.cancelled() => break,
        };
        let Ok(slot) = slot else { break };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        let service = TowerToHyperService::new(app.clone());
        let http = Arc::clone(&http);
        let stop = stop.clone();
        tokio::spawn(async move {
            // With upgrades: a WebSocket (Piston's `/api/v2/connect`) takes the connection over.
            let connection = http
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            let mut connection = std::pin::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result {
                // Timeouts, resets and garbage from clients: theirs to worry about.
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    // Every connection gives its slot back when it closes.
    let _ = slots.acquire_many(max).await;
}
