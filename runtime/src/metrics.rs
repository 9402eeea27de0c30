//! Prometheus metrics of the runtime and the HTTP endpoint that serves them with `/healthz`.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

/// Labels for per-partition series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: String,
}

/// Labels for dead-letter reasons.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Stable error kind (e.g. `wrong-type`).
    pub reason: String,
}

/// Labels for fields of records that the table has no column for.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FieldLabels {
    /// The field name (at most 100 names per worker; the rest are `(other)`).
    pub field: String,
}

/// Labels for per-table dead-letter reasons.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableReasonLabels {
    /// `namespace.name`.
    pub table: String,
    /// Stable error kind (e.g. `wrong-type`).
    pub reason: String,
}

/// Labels for per-table metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabels {
    /// `namespace.name`.
    pub table: String,
}

/// Labels for per-table, per-worker series (gauges each worker sets on its own).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerTableLabels {
    /// `namespace.name`.
    pub table: String,
    /// Worker id.
    pub worker: String,
}

/// Labels for upsert changes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChangeLabels {
    /// `namespace.name`.
    pub table: String,
    /// `upsert` (a row's new image) or `delete`.
    pub kind: String,
}

/// Upsert mode's metrics.
pub struct UpsertMetrics {
    /// Changes applied, per table and kind.
    pub changes: Family<ChangeLabels, Counter>,
    /// Records that change nothing (tombstones).
    pub skipped: Counter,
    /// Changes replaced by a later change of the same key before they were written.
    pub superseded: Family<TableLabels, Counter>,
    /// Keys whose previous change came from another Kafka partition.
    pub key_conflicts: Family<TableLabels, Counter>,
    /// Keys in a worker's index.
    pub index_keys: Family<WorkerTableLabels, Gauge>,
    /// Estimated bytes of a worker's index.
    pub index_bytes: Family<WorkerTableLabels, Gauge>,
    /// Seconds to read an index from its table.
    pub index_read: Histogram,
    /// Rows removed by committed position deletes, per table.
    pub deleted_rows: Family<TableLabels, Counter>,
    /// Delete files committed, per table.
    pub delete_files: Family<TableLabels, Counter>,
    /// Delete files per data file after the newest commit (what a reader merges), per table.
    pub read_amplification: Family<TableLabels, Gauge<f64, AtomicU64>>,
}

impl UpsertMetrics {
    fn new() -> Self {
        Self {
            changes: Family::default(),
            skipped: Counter::default(),
            superseded: Family::default(),
            key_conflicts: Family::default(),
            index_keys: Family::default(),
            index_bytes: Family::default(),
            index_read: Histogram::new(exponential_buckets(0.001, 2.0, 18)),
            deleted_rows: Family::default(),
            delete_files: Family::default(),
            read_amplification: Family::default(),
        }
    }

    fn register(&self, r: &mut Registry) {
        r.register(
            "upsert_changes",
            "Upsert changes applied (kind upsert: a row's new image; delete)",
            self.changes.clone(),
        );
        r.register(
            "upsert_skipped_records",
            "Upsert records that change nothing (tombstones)",
            self.skipped.clone(),
        );
        r.register(
            "upsert_superseded_changes",
            "Changes replaced by a later change of the same key before they were written",
            self.superseded.clone(),
        );
        r.register(
            "upsert_key_conflicts",
            "Keys whose previous change came from another Kafka partition (their order is not defined)",
            self.key_conflicts.clone(),
        );
        r.register(
            "upsert_index_keys",
            "Keys in a worker's primary-key index",
            self.index_keys.clone(),
        );
        r.register(
            "upsert_index_bytes",
            "Estimated memory of a worker's primary-key index",
            self.index_bytes.clone(),
        );
        r.register(
            "upsert_index_read_seconds",
            "Reading a primary-key index from its table",
            self.index_read.clone(),
        );
        r.register(
            "upsert_deleted_rows",
            "Rows removed by committed position deletes",
            self.deleted_rows.clone(),
        );
        r.register(
            "upsert_delete_files",
            "Position delete files committed",
            self.delete_files.clone(),
        );
        r.register(
            "upsert_read_amplification",
            "Delete files per data file after the newest commit",
            self.read_amplification.clone(),
        );
    }
}

/// Every metric of one runtime process.
pub struct Metrics {
    registry: Registry,
    /// Records read from Kafka.
    pub records_in: Counter,
    /// Bytes of record values read.
    pub bytes_in: Counter,
    /// Rows written into data files.
    pub rows_out: Counter,
    /// Rows in committed snapshots.
    pub rows_committed: Counter,
    /// Records sent to the dead-letter topic, by reason.
    pub dead_lettered: Family<ReasonLabels, Counter>,
    /// Records dead-lettered after their table was resolved, by table and reason.
    pub table_dead_lettered: Family<TableReasonLabels, Counter>,
    /// Records written without a field they carried (the table has no column for it).
    pub unknown_fields: Family<FieldLabels, Counter>,
    /// Rows committed, per table.
    pub table_rows: Family<TableLabels, Counter>,
    /// Data files committed, per table.
    pub table_files: Family<TableLabels, Counter>,
    /// Snapshots committed, per table.
    pub table_commits: Family<TableLabels, Counter>,
    /// Schema updates made by this process, per table.
    pub schema_changes: Family<TableLabels, Counter>,
    /// Kafka lag (high watermark − next offset) per partition.
    pub lag: Family<PartitionLabels, Gauge>,
    /// Barrier sent → checkpoint record durable, seconds.
    pub checkpoint_duration: Histogram,
    /// Table commit, seconds.
    pub commit_duration: Histogram,
    /// Data files per commit.
    pub files_per_commit: Histogram,
    /// Bytes per commit.
    pub bytes_per_commit: Histogram,
    /// Commit time − Kafka timestamp of the oldest/newest record committed, seconds.
    pub freshness: Histogram,
    /// Completed checkpoints.
    pub checkpoints: Counter,
    /// Iceberg commits.
    pub commits: Counter,
    /// Unix time of the last successful commit or empty checkpoint, seconds.
    last_commit_unix: Arc<AtomicI64>,
    ready: AtomicBool,
    /// Id of the newest completed checkpoint.
    pub last_checkpoint_id: Gauge<i64, AtomicI64>,
    /// Checkpoints aborted because a worker was lost mid-checkpoint.
    pub aborted_checkpoints: Counter,
    /// Barrier before a partition move → the new owner told to start, seconds.
    pub rescale_pause: Histogram,
    /// Workers that own partitions.
    pub active_workers: Gauge,
    /// Workers lost (stopped heartbeating or disconnected).
    pub workers_lost: Counter,
    /// The checkpoint interval, seconds; set by the coordinator only, so alerts comparing
    /// `seconds_since_last_commit` with it match the coordinator's series alone.
    pub checkpoint_interval: Gauge<f64, AtomicU64>,
    /// Upsert mode.
    pub upsert: UpsertMetrics,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers all metrics.
    pub fn new() -> Self {
        let secs = || Histogram::new(exponential_buckets(0.001, 2.0, 18));
        let mut m = Self {
            records_in: Counter::default(),
            bytes_in: Counter::default(),
            rows_out: Counter::default(),
            rows_committed: Counter::default(),
            dead_lettered: Family::default(),
            unknown_fields: Family::default(),
            table_rows: Family::default(),
            table_dead_lettered: Family::default(),
            table_files: Family::default(),
            table_commits: Family::default(),
            schema_changes: Family::default(),
            lag: Family::default(),
            checkpoint_duration: secs(),
            commit_duration: secs(),
            files_per_commit: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            bytes_per_commit: Histogram::new(exponential_buckets(1024.0, 4.0, 12)),
            freshness: Histogram::new(exponential_buckets(0.05, 2.0, 14)),
            checkpoints: Counter::default(),
            commits: Counter::default(),
            last_commit_unix: Arc::new(AtomicI64::new(0)),
            ready: AtomicBool::new(false),
            last_checkpoint_id: Gauge::default(),
            aborted_checkpoints: Counter::default(),
            rescale_pause: secs(),
            active_workers: Gauge::default(),
            workers_lost: Counter::default(),
            checkpoint_interval: Gauge::default(),
            upsert: UpsertMetrics::new(),
            registry: Registry::with_prefix("tidewater"),
        };
        m.upsert.register(&mut m.registry);
        m.registry.register(
            "records_in",
            "Records read from Kafka",
            m.records_in.clone(),
        );
        m.registry.register(
            "bytes_in",
            "Bytes of record values read from Kafka",
            m.bytes_in.clone(),
        );
        m.registry.register(
            "rows_written",
            "Rows written into data files",
            m.rows_out.clone(),
        );
        m.registry.register(
            "rows_committed",
            "Rows in committed Iceberg snapshots",
            m.rows_committed.clone(),
        );
        m.registry.register(
            "dead_lettered_records",
            "Records sent to the dead-letter topic",
            m.dead_lettered.clone(),
        );
        m.registry.register(
            "table_dead_lettered_records",
            "Records sent to the dead-letter topic after their table was resolved, per table",
            m.table_dead_lettered.clone(),
        );
        m.registry.register(
            "unknown_field_records",
            "Records written without a field they carried: the table has no column for it",
            m.unknown_fields.clone(),
        );
        m.registry.register(
            "table_rows_committed",
            "Rows in committed Iceberg snapshots, per table",
            m.table_rows.clone(),
        );
        m.registry.register(
            "table_files_committed",
            "Data files in committed Iceberg snapshots, per table",
            m.table_files.clone(),
        );
        m.registry.register(
            "table_commits",
            "Iceberg snapshots committed, per table",
            m.table_commits.clone(),
        );
        m.registry.register(
            "schema_changes",
            "Schema updates made by this process (new columns, widenings, required to optional), per table",
            m.schema_changes.clone(),
        );
        m.registry.register(
            "partition_lag_records",
            "High watermark minus next offset",
            m.lag.clone(),
        );
        m.registry.register(
            "checkpoint_duration_seconds",
            "Barrier to durable checkpoint record",
            m.checkpoint_duration.clone(),
        );
        m.registry.register(
            "commit_duration_seconds",
            "Iceberg table commit",
            m.commit_duration.clone(),
        );
        m.registry.register(
            "commit_files",
            "Data files per Iceberg commit",
            m.files_per_commit.clone(),
        );
        m.registry.register(
            "commit_bytes",
            "Bytes of data files per Iceberg commit",
            m.bytes_per_commit.clone(),
        );
        m.registry.register(
            "freshness_seconds",
            "Commit time minus Kafka timestamp of committed records (oldest and newest per commit)",
            m.freshness.clone(),
        );
        m.registry.register(
            "checkpoints_completed",
            "Completed checkpoints",
            m.checkpoints.clone(),
        );
        m.registry
            .register("commits", "Iceberg commits", m.commits.clone());
        m.registry.register(
            "last_checkpoint_id",
            "Id of the newest completed checkpoint",
            m.last_checkpoint_id.clone(),
        );
        m.registry.register(
            "checkpoints_aborted",
            "Checkpoints aborted because a worker was lost mid-checkpoint",
            m.aborted_checkpoints.clone(),
        );
        m.registry.register(
            "rescale_pause_seconds",
            "Barrier before a partition move until the new owner is told to start",
            m.rescale_pause.clone(),
        );
        m.registry.register(
            "active_workers",
            "Workers that own partitions",
            m.active_workers.clone(),
        );
        m.registry.register(
            "workers_lost",
            "Workers declared lost (no heartbeat within the timeout)",
            m.workers_lost.clone(),
        );
        m.registry.register(
            "checkpoint_interval_seconds",
            "The pipeline's checkpoint interval (coordinator only)",
            m.checkpoint_interval.clone(),
        );
        let last = m.last_commit_unix.clone();
        let started = unix_now();
        m.registry.register(
            "seconds_since_last_commit",
            "Seconds since the last successful commit, or empty checkpoint while the broker answers (since start if none)",
            SinceGauge { last, started },
        );
        m
    }

    /// Marks a successful commit (or a checkpoint with nothing to commit while the broker
    /// answers) now.
    pub fn mark_committed(&self) {
        self.last_commit_unix.store(unix_now(), Ordering::Relaxed);
    }

    /// Marks the pipeline as ready (recovered and reading).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Whether the process is ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Prometheus text exposition of all metrics.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("encode");
        out
    }
}

/// A gauge computed at scrape time.
#[derive(Debug)]
struct SinceGauge {
    last: Arc<AtomicI64>,
    started: i64,
}

impl prometheus_client::encoding::EncodeMetric for SinceGauge {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        let last = self.last.load(Ordering::Relaxed);
        let since = if last > 0 {
            unix_now() - last
        } else {
            unix_now() - self.started
        };
        encoder.encode_gauge(&since)
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Gauge
    }
}

impl prometheus_client::metrics::TypedMetric for SinceGauge {
    const TYPE: prometheus_client::metrics::MetricType =
        prometheus_client::metrics::MetricType::Gauge;
}

async fn metrics_handler(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        m.render(),
    )
}

async fn ready_handler(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    if m.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}

/// Serves `/metrics`, `/healthz` (alive) and `/readyz` until the process ends (worker
/// processes; the coordinator serves these within its API). Returns the bound address.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_handler))
        .with_state(metrics);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok(bound)
}

/// `serve` on `first`, or else on the next port after it that is free, trying `ports` in all
/// (a port in use is skipped; any other error is returned at once).
pub async fn serve_next_free(
    first: SocketAddr,
    ports: u16,
    metrics: Arc<Metrics>,
) -> std::io::Result<SocketAddr> {
    let mut last = None;
    for port in (first.port()..=u16::MAX).take(usize::from(ports)) {
        match serve(SocketAddr::new(first.ip(), port), metrics.clone()).await {
            Ok(bound) => return Ok(bound),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::from(std::io::ErrorKind::AddrInUse)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_port_in_use_moves_the_endpoint_to_the_next_free_one() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = held.local_addr().unwrap();
        let m = Arc::new(Metrics::new());
        let bound = serve_next_free(taken, 8, m.clone()).await.unwrap();
        assert_ne!(bound.port(), taken.port());
        assert!(bound.port() > taken.port() && bound.port() < taken.port() + 8);
        let again = serve_next_free(taken, 8, m.clone()).await.unwrap();
        assert!(again.port() != bound.port() && again.port() != taken.port());
        let only_taken = serve_next_free(taken, 1, m).await.unwrap_err();
        assert_eq!(only_taken.kind(), std::io::ErrorKind::AddrInUse);
    }

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::new();
        m.records_in.inc_by(3);
        m.dead_lettered
            .get_or_create(&ReasonLabels {
                reason: "wrong-type".into(),
            })
            .inc();
        m.commit_duration.observe(0.02);
        m.checkpoint_interval.set(2.5);
        let text = m.render();
        assert!(
            text.contains("tidewater_checkpoint_interval_seconds 2.5"),
            "{text}"
        );
        assert!(text.contains("tidewater_records_in_total 3"), "{text}");
        assert!(
            text.contains("tidewater_dead_lettered_records_total{reason=\"wrong-type\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tidewater_commit_duration_seconds_count 1"),
            "{text}"
        );
        assert!(
            text.contains("tidewater_seconds_since_last_commit "),
            "{text}"
        );
    }
}
