//! The operations endpoint: `/metrics`, `/healthz`, `/readyz`.
//!
//! `/healthz` answers 200 while the process runs. `/readyz` answers 200
//! only while NATS is connected, the cache and graph answer, and every
//! handler's consumer is running; otherwise 503, with one line per
//! dependency saying which is down.

use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use std::sync::atomic::Ordering;
use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::metrics::Metrics;

#[derive(Clone)]
struct Endpoint {
    health: Arc<Health>,
    metrics: Arc<Metrics>,
}

/// Binds `listen` now (a taken port fails start-up) and serves until
/// `shutdown` is cancelled.
pub async fn serve(
    listen: &str,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on http.listen {listen}"))?;
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(Endpoint { health, metrics });
    tracing::info!(%listen, "serving /metrics, /healthz, /readyz");
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "operations endpoint stopped");
        }
    });
    Ok(())
}

async fn metrics_text(State(endpoint): State<Endpoint>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        endpoint.metrics.render(),
    )
}

async fn ready(State(endpoint): State<Endpoint>) -> impl IntoResponse {
    let health = &endpoint.health;
    let parts = [
        ("nats", health.nats.load(Ordering::Relaxed)),
        ("cache", health.cache.load(Ordering::Relaxed)),
        ("graph", health.graph.load(Ordering::Relaxed)),
        ("consumers", health.consumers.load(Ordering::Relaxed)),
    ];
    let body: String = parts
        .iter()
        .map(|(name, up)| format!("{name}: {}\n", if *up { "up" } else { "down" }))
        .collect();
    let status = if health.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body)
}
