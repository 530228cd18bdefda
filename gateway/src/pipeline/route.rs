//! Step 3: the request's [`Route`]: its normalized path (what the model will receive) and
//! the policy covering that path, if any (see [`crate::routing`]), from the configuration in
//! force when the request arrived. A path whose escapes decode to bytes that are not UTF-8
//! gets `400` (before any quota is spent).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::{ApiError, BadRequest};
use crate::routing::{LiveRoutes, Route};

pub async fn route(State(routes): State<Arc<LiveRoutes>>, mut request: Request, next: Next) -> Response {
    let Some(route): Option<Route> = routes.current().route(request.uri().path()) else {
        return ApiError::from(BadRequest::PathNotUtf8).into_response();
    };
    request.extensions_mut().insert(route);
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use axum::middleware::from_fn_with_state;
    use axum::{Extension, Json, Router};
    use serde_json::json;
    use tower::ServiceExt;

    use super::*;
    use crate::routing::Routes;
    use crate::test_support::{json, request, settings};

    /// The route step alone, in front of a handler that shows the route it was handed.
    fn router(toml: &str) -> Router {
        let routes = Arc::new(LiveRoutes::new(Routes::new(&settings(toml).policies)));
        Router::new()
            .fallback(|Extension(route): Extension<Route>| async move {
                Json(json!({"path": route.path, "policy": route.policy.map(|p| p.name.clone())}))
            })
            .layer(from_fn_with_state(routes, super::route))
    }

    #[tokio::test]
    async fn the_route_is_chosen_on_the_normalized_path() {
        let app = router(include_str!("../../gateway.toml"));
        for (sent, path, policy) in [
            ("/v1/%70redict", "/v1/predict", json!("predict")),
            ("/x/../v1//predict?q=1", "/v1/predict", json!("predict")),
            ("/v1/predictions", "/v1/predictions", json!("default")),
        ] {
            let answer = json(app.clone().oneshot(request("GET", sent, &[], "")).await.unwrap()).await;
            assert_eq!(answer, json!({"path": path, "policy": policy}), "{sent}");
        }
        let uncovered = router("[[policy]]\nname = \"p\"\npaths = [\"/v1\"]\nlimit = 1\nwindow = 1\n");
        let answer = json(uncovered.oneshot(request("GET", "/v10", &[], "")).await.unwrap()).await;
        assert_eq!(answer, json!({"path": "/v10", "policy": null}));
    }
}
