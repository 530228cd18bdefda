//! Step 1: one `info` line per request (method, path as received, status, time in ms), for
//! every route, `/healthz` and `/readyz` included.

use std::time::Instant;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;

pub async fn access_log(request: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let elapsed_ms = start.elapsed().as_secs_f64() * 1000.0;
    tracing::info!(%method, %path, status, elapsed_ms = format_args!("{elapsed_ms:.1}"), "request");
    response
}
