//! The operator's Prometheus metrics (reconciles, failures by category, reconcile duration)
//! and the HTTP endpoint serving them with `/healthz`.

use std::{net::SocketAddr, sync::Arc};

use axum::{Router, extract::State, response::IntoResponse, routing::get};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

/// Failure label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CategoryLabels {
    /// `Error::category()`.
    pub category: String,
}

/// Labels of a finished maintenance run.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunLabels {
    /// The CompactionPolicy's namespace.
    pub namespace: String,
    /// The CompactionPolicy's name.
    pub policy: String,
    /// `succeeded` or `failed`.
    pub result: String,
}

/// Operator metrics.
pub struct Metrics {
    registry: Registry,
    /// Reconciles run.
    pub reconciles: Counter,
    /// Failed reconciles by category.
    pub failures: Family<CategoryLabels, Counter>,
    /// Reconcile duration, seconds.
    pub duration: Histogram,
    /// Maintenance runs (CompactionPolicy Jobs) seen finished, by policy and result.
    pub maintenance_runs: Family<RunLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Self {
            registry: Registry::with_prefix("tidewater_operator"),
            reconciles: Counter::default(),
            failures: Family::default(),
            duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            maintenance_runs: Family::default(),
        };
        m.registry.register(
            "maintenance_runs",
            "Maintenance runs seen finished, by CompactionPolicy and result",
            m.maintenance_runs.clone(),
        );
        m.registry
            .register("reconciles", "Reconciles run", m.reconciles.clone());
        m.registry.register(
            "reconcile_failures",
            "Failed reconciles by category",
            m.failures.clone(),
        );
        m.registry.register(
            "reconcile_duration_seconds",
            "Reconcile duration",
            m.duration.clone(),
        );
        m
    }
}

impl Metrics {
    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("encode");
        out
    }
}

async fn metrics(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        m.render(),
    )
}

/// Serves `/metrics` and `/healthz`; returns the bound address.
pub async fn serve(addr: SocketAddr, m: Arc<Metrics>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(m);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders() {
        let m = Metrics::default();
        m.reconciles.inc();
        m.failures
            .get_or_create(&CategoryLabels {
                category: "kubernetes".into(),
            })
            .inc();
        m.duration.observe(0.01);
        let text = m.render();
        assert!(
            text.contains("tidewater_operator_reconciles_total 1"),
            "{text}"
        );
        assert!(
            text.contains("tidewater_operator_reconcile_failures_total{category=\"kubernetes\"} 1"),
            "{text}"
        );
        assert!(text.contains("tidewater_operator_reconcile_duration_seconds_count 1"));
    }
}
