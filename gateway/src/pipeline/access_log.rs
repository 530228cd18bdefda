//! Step 1: one `info` line per request (method, path as received, status, time in ms), for
//! every route, `/healthz` and `/readyz` included. A request under a policy also says which
//! policy and tier, the caller (`api_key` or `ip`, and its keyed hash, as in the Redis key:
//! never the key itself), and, when it was refused or the limiter failed, what refused it
//! (`refused_by`: the refusing limits' names, `concurrent`, `upstream-concurrent`,
//! `upstream-capacity`, or `unavailable` / `module_error`). These come from the limit step
//! ([`super::limit::Decided`], on the answer).

use std::time::Instant;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;

use super::limit::Decided;

pub async fn access_log(request: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let elapsed_ms = format_args!("{:.1}", start.elapsed().as_secs_f64() * 1000.0);
    match response.extensions().get::<Decided>() {
        None => tracing::info!(%method, %path, status, elapsed_ms, "request"),
        Some(Decided { caller, refused_by: None }) => tracing::info!(
            %method, %path, status, elapsed_ms,
            policy = %caller.policy.name, tier = %caller.tier, caller = caller.kind, id = %caller.identity_hash,
            "request"
        ),
        Some(Decided { caller, refused_by: Some(refused_by) }) => tracing::info!(
            %method, %path, status, elapsed_ms,
            policy = %caller.policy.name, tier = %caller.tier, caller = caller.kind, id = %caller.identity_hash,
            %refused_by,
            "request"
        ),
    }
    response
}
