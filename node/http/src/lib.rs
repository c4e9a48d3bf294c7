//! wmail-http serves a node's HTTP side: `/healthz`, `/readyz`, `/metrics` (Prometheus
//! text) and the admin API under `/api/v1` (see [`api`]). Webmail and the admin console
//! will live here too.

pub mod api;
mod metrics;
mod user;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
pub use metrics::Metrics;
use wmail_core::Core;

/// What every handler can reach.
pub struct AppState {
    /// The node's mail logic.
    pub core: Arc<Core>,
    /// The bearer token of the admin API.
    pub admin_token: String,
    /// The metrics registry.
    pub metrics: Metrics,
    /// The inbound checks, whose verdict log the API answers from (`None`: checks off).
    pub protection: Option<Arc<wmail_protection::Protection>>,
}

/// Builds the whole HTTP router.
pub fn router(
    core: Arc<Core>,
    admin_token: String,
    registry: prometheus::Registry,
    protection: Option<Arc<wmail_protection::Protection>>,
) -> Router {
    let state = Arc::new(AppState { core, admin_token, metrics: Metrics::new(registry), protection });
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .nest("/api/v1", api::routes(state.clone()))
        .nest("/user/v1", user::routes())
        .fallback(|| async { api_not_found() })
        .layer(axum::middleware::from_fn_with_state(state.clone(), record_request))
        .with_state(state)
}

/// The client's address as the server accepted it (after any PROXY header): a request
/// extension the server inserts, for handlers that need it (the user API's lockout).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub std::net::SocketAddr);

fn api_not_found() -> Response {
    let body = serde_json::json!({ "error": { "code": "not_found", "message": "no such endpoint; the admin API lives under /api/v1" } });
    (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}

/// Ready when the node knows a leader and has replayed its log (load balancers use this).
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if *state.core.drain_state().borrow() != wmail_core::DrainState::Serving {
        (StatusCode::SERVICE_UNAVAILABLE, "draining: this node takes no new sessions\n").into_response()
    } else if let Some(silent) = state.core.detached() {
        // Still worth sending readers to: a branch office keeps serving what it has.
        let text =
            format!("ready, read-only: cut off from the cluster for {} s; writes are refused\n", silent.as_secs());
        (StatusCode::OK, text).into_response()
    } else if state.core.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: no leader known or log not yet applied\n").into_response()
    }
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    let text = state.metrics.render(&state.core);
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn record_request(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let started = Instant::now();
    // A guard, so a request whose client went away is no longer counted either.
    let _in_flight = InFlight::start(state.metrics.http_in_flight.with_label_values(&[route.as_str()]));
    let response = next.run(request).await;
    state.metrics.http_latency.with_label_values(&[route.as_str()]).observe(started.elapsed().as_secs_f64());
    state.metrics.http_requests.with_label_values(&[route.as_str(), response.status().as_str()]).inc();
    response
}

/// One request counted in `http_requests_in_flight` until it is dropped.
struct InFlight(prometheus::IntGauge);

impl InFlight {
    fn start(gauge: prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}
