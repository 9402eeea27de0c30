//! The coordinator: recovers from the newest consistent checkpoint, assigns partitions to
//! workers, drives barriers, writes durable checkpoint records and commits them to Iceberg
//! exactly once. Decisions are pure functions in `checkpoint` and `assign_partitions`; this
//! module sequences the I/O.

use std::{
    collections::BTreeMap,
    sync::{Arc, mpsc},
    time::{Duration, Instant},
};

use iceberg::{Catalog, TableIdent};
use rdkafka::consumer::BaseConsumer;
use tidewater_crds::types::StartingOffsets;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use crate::{
    checkpoint::{CheckpointRecord, Recovery, TableCommitPlan, decide_recovery, render_offsets},
    config::PipelineConfig,
    failpoint, kafka,
    metrics::{Metrics, PartitionLabels},
    protocol::{
        Offsets, ToCoordinator, ToWorker, TopicPartition, WorkerAck, get_offset, set_offset,
    },
    state_store::StateStore,
    table::{self, CommitOutcome, TableError},
    worker::{self, WorkerSetup},
    writer::WriterFactory,
};

/// Why a run ended with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Iceberg side (including fencing).
    #[error(transparent)]
    Table(#[from] TableError),
    /// Checkpoint records.
    #[error(transparent)]
    State(#[from] crate::state_store::StateError),
    /// Kafka side.
    #[error("kafka: {0}")]
    Kafka(String),
    /// A worker stopped the pipeline.
    #[error("worker {worker}: {reason}")]
    Worker {
        /// Worker index.
        worker: usize,
        /// Its reason.
        reason: String,
    },
    /// A checkpoint was not acknowledged in time.
    #[error("checkpoint {0} timed out waiting for workers")]
    CheckpointTimeout(u64),
    /// Setup problems.
    #[error("{0}")]
    Setup(String),
}

/// How often per-partition lag is refreshed (one watermark request per partition).
const LAG_INTERVAL: Duration = Duration::from_secs(5);

/// Places new partitions on the workers owning the fewest (ties: lowest index); pure.
/// `counts[w]` is how many partitions worker `w` owns and is updated.
pub fn place_partitions(counts: &mut [usize], new: usize) -> Vec<usize> {
    (0..new)
        .map(|_| {
            let w = (0..counts.len())
                .min_by_key(|&i| (counts[i], i))
                .expect("at least one worker");
            counts[w] += 1;
            w
        })
        .collect()
}

/// Where a partition without a checkpointed offset starts: a new partition of a topic that
/// is already being read starts at `earliest` (nothing produced to it is missed, as in
/// Flink); partitions of a topic seen for the first time follow the spec.
pub fn start_policy(topic_known: bool, configured: StartingOffsets) -> StartingOffsets {
    if topic_known {
        StartingOffsets::Earliest
    } else {
        configured
    }
}

struct WorkerHandle {
    commands: mpsc::Sender<ToWorker>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A running pipeline in one process.
pub struct Coordinator {
    config: PipelineConfig,
    catalog: Arc<dyn Catalog>,
    ident: TableIdent,
    table_key: String,
    store: StateStore,
    metrics: Arc<Metrics>,
    run_id: String,
    admin: Arc<BaseConsumer>,
    workers: Vec<WorkerHandle>,
    events: UnboundedReceiver<ToCoordinator>,
    owner: BTreeMap<TopicPartition, usize>,
    offsets: Offsets,
    table_base: Offsets,
    next_checkpoint_id: u64,
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking task panicked")
}

impl Coordinator {
    /// Recovers and starts the workers.
    pub async fn start(config: PipelineConfig, metrics: Arc<Metrics>) -> Result<Self, RunError> {
        let run_id = uuid::Uuid::now_v7().simple().to_string()[..12].to_string();
        let catalog = table::open_catalog(&config).await?;
        let table = table::load_or_create(catalog.as_ref(), &config).await?;
        let ident = table::table_ident(&config)?;
        let table_key = config.table_display();
        let store = StateStore::new(&config.state_location);
        let records = {
            let (store, uid) = (store.clone(), config.uid.clone());
            blocking(move || store.load_all(&uid)).await?
        };
        let last = table::last_pipeline_commit(table.metadata(), &config.uid)?;
        let recovery = decide_recovery(&records, last.as_ref(), &table_key);
        for (id, reason) in &recovery.skipped {
            tracing::warn!(checkpoint = id, %reason, "skipping checkpoint record the table contradicts");
        }
        let Recovery {
            start_offsets,
            table_base_offsets,
            next_checkpoint_id,
            pending,
            ..
        } = recovery;
        if let Some(record) = &pending {
            let outcome =
                table::commit_checkpoint(catalog.as_ref(), &ident, &table_key, record).await?;
            tracing::info!(
                checkpoint = record.checkpoint_id,
                snapshot = outcome.snapshot_id(),
                "finished commit of recovered checkpoint"
            );
        }
        tracing::info!(
            run = %run_id,
            resume = %render_offsets(&start_offsets),
            next_checkpoint = next_checkpoint_id,
            records = records.len(),
            "recovered"
        );
        // An append does not change what writers need (schema, spec, properties, location),
        // so the table loaded before a recovered commit serves.
        let factory = WriterFactory::new(&table, &config.resource.spec.sink.write_properties)
            .map_err(RunError::Setup)?;
        let admin =
            Arc::new(kafka::admin_consumer(&config).map_err(|e| RunError::Kafka(e.to_string()))?);
        let (events_tx, events) = unbounded_channel();
        let mut workers = Vec::new();
        for index in 0..config.parallelism {
            let (tx, rx) = mpsc::channel();
            let thread = worker::spawn(WorkerSetup {
                index,
                config: config.clone(),
                factory: factory.clone(),
                run_id: run_id.clone(),
                metrics: metrics.clone(),
                commands: rx,
                events: events_tx.clone(),
            })
            .map_err(|e| RunError::Setup(format!("spawn worker: {e}")))?;
            workers.push(WorkerHandle {
                commands: tx,
                thread: Some(thread),
            });
        }
        let mut coordinator = Self {
            config,
            catalog,
            ident,
            table_key,
            store,
            metrics,
            run_id,
            admin,
            workers,
            events,
            owner: BTreeMap::new(),
            offsets: start_offsets,
            table_base: table_base_offsets,
            next_checkpoint_id,
        };
        coordinator.discover().await?;
        coordinator.metrics.set_ready(true);
        Ok(coordinator)
    }

    /// Runs until `shutdown` resolves, then takes a final checkpoint and stops the workers.
    pub async fn run(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), RunError> {
        let mut checkpoint = tokio::time::interval(self.config.checkpoint_interval);
        let mut discovery = tokio::time::interval(self.config.discovery_interval);
        let mut lag = tokio::time::interval(LAG_INTERVAL);
        for t in [&mut checkpoint, &mut discovery, &mut lag] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t.reset();
        }
        tokio::pin!(shutdown);
        let result = loop {
            tokio::select! {
                () = &mut shutdown => {
                    tracing::info!("shutdown requested: taking a final checkpoint");
                    break self.checkpoint().await;
                }
                _ = checkpoint.tick() => {
                    if let Err(e) = self.checkpoint().await { break Err(e); }
                }
                _ = discovery.tick() => match self.discover().await {
                    // Reading goes on with the partitions already owned; the next tick retries.
                    Err(RunError::Kafka(e)) => tracing::warn!(error = %e, "partition discovery failed; retrying at the next interval"),
                    Err(e) => break Err(e),
                    Ok(()) => {}
                },
                _ = lag.tick() => self.update_lag().await,
                event = self.events.recv() => match event {
                    Some(ToCoordinator::Failed { worker, reason }) => break Err(RunError::Worker { worker, reason }),
                    Some(ToCoordinator::Ack(ack)) => tracing::warn!(worker = ack.worker, checkpoint = ack.checkpoint_id, "late acknowledgement ignored"),
                    None => break Err(RunError::Setup("all workers are gone".into())),
                },
            }
        };
        self.metrics.set_ready(false);
        self.stop_workers().await;
        result
    }

    async fn stop_workers(&mut self) {
        for w in &self.workers {
            let _ = w.commands.send(ToWorker::Stop);
        }
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                let _ = blocking(move || t.join()).await;
            }
        }
    }

    /// Finds partitions without an owner and assigns them; new partitions of a topic that
    /// was already checkpointed start at `earliest`.
    async fn discover(&mut self) -> Result<(), RunError> {
        let found = {
            let (admin, topics) = (self.admin.clone(), self.config.topics.clone());
            blocking(move || kafka::discover_partitions(&admin, &topics))
                .await
                .map_err(|e| RunError::Kafka(format!("metadata: {e}")))?
        };
        let new: Vec<TopicPartition> = found
            .into_iter()
            .filter(|tp| !self.owner.contains_key(tp))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        let mut starts = Vec::new();
        for tp in &new {
            let start = match get_offset(&self.offsets, &tp.topic, tp.partition) {
                Some(o) => o,
                None => {
                    let policy = start_policy(
                        self.offsets.contains_key(&tp.topic),
                        self.config.starting_offsets,
                    );
                    let (admin, tp2) = (self.admin.clone(), tp.clone());
                    blocking(move || kafka::resolve_start(&admin, &tp2, policy))
                        .await
                        .map_err(|e| {
                            RunError::Kafka(format!(
                                "start offset of {}/{}: {e}",
                                tp.topic, tp.partition
                            ))
                        })?
                }
            };
            starts.push((tp.clone(), start));
        }
        // Balance: new partitions go to the workers that own the fewest.
        let mut counts = vec![0usize; self.workers.len()];
        for &w in self.owner.values() {
            counts[w] += 1;
        }
        let mut per_worker: Vec<Offsets> = vec![Offsets::new(); self.workers.len()];
        let placement = place_partitions(&mut counts, starts.len());
        for ((tp, start), w) in starts.into_iter().zip(placement) {
            self.owner.insert(tp.clone(), w);
            set_offset(&mut per_worker[w], &tp.topic, tp.partition, start);
            set_offset(&mut self.offsets, &tp.topic, tp.partition, start);
        }
        for (w, partitions) in per_worker.into_iter().enumerate() {
            if !partitions.is_empty() {
                tracing::info!(worker = w, partitions = %render_offsets(&partitions), "assigning");
                self.send(w, ToWorker::Assign { partitions })?;
            }
        }
        Ok(())
    }

    fn send(&self, worker: usize, msg: ToWorker) -> Result<(), RunError> {
        self.workers[worker]
            .commands
            .send(msg)
            .map_err(|_| RunError::Setup(format!("worker {worker} is gone")))
    }

    async fn collect_acks(&mut self, checkpoint_id: u64) -> Result<Vec<WorkerAck>, RunError> {
        let deadline = tokio::time::Instant::now() + self.config.checkpoint_timeout;
        let mut acks = Vec::with_capacity(self.workers.len());
        while acks.len() < self.workers.len() {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => return Err(RunError::CheckpointTimeout(checkpoint_id)),
                Ok(None) => return Err(RunError::Setup("all workers are gone".into())),
                Ok(Some(ToCoordinator::Failed { worker, reason })) => {
                    return Err(RunError::Worker { worker, reason });
                }
                Ok(Some(ToCoordinator::Ack(ack))) if ack.checkpoint_id == checkpoint_id => {
                    acks.push(ack)
                }
                Ok(Some(ToCoordinator::Ack(ack))) => {
                    tracing::warn!(
                        worker = ack.worker,
                        checkpoint = ack.checkpoint_id,
                        "stale acknowledgement ignored"
                    );
                }
            }
        }
        Ok(acks)
    }

    /// One checkpoint: barrier → acks → durable record → exactly-once commit → progress.
    async fn checkpoint(&mut self) -> Result<(), RunError> {
        let id = self.next_checkpoint_id;
        self.next_checkpoint_id += 1;
        let started = Instant::now();
        for w in 0..self.workers.len() {
            self.send(w, ToWorker::Barrier { checkpoint_id: id })?;
        }
        let acks = self.collect_acks(id).await?;
        let mut offsets = self.offsets.clone();
        let mut files = Vec::new();
        let (mut rows, mut dead, mut bytes) = (0u64, 0u64, 0u64);
        let mut spec_id = 0;
        let (mut min_ts, mut max_ts) = (None::<i64>, None::<i64>);
        for ack in acks {
            for (topic, parts) in ack.offsets {
                for (p, o) in parts {
                    set_offset(&mut offsets, &topic, p, o);
                }
            }
            files.extend(ack.data_files);
            rows += ack.rows;
            bytes += ack.bytes;
            dead += ack.dead_lettered;
            spec_id = ack.partition_spec_id;
            min_ts = min_ts.into_iter().chain(ack.min_timestamp_ms).min();
            max_ts = max_ts.into_iter().chain(ack.max_timestamp_ms).max();
        }
        if files.is_empty() && offsets == self.offsets {
            tracing::debug!(
                checkpoint = id,
                "empty checkpoint: nothing to record or commit"
            );
            self.metrics.mark_committed();
            return Ok(());
        }
        let file_count = files.len();
        let mut commits = BTreeMap::new();
        if !files.is_empty() {
            commits.insert(
                self.table_key.clone(),
                TableCommitPlan {
                    partition_spec_id: spec_id,
                    data_files: files,
                    rows,
                },
            );
        }
        let record = CheckpointRecord {
            version: 1,
            pipeline_uid: self.config.uid.clone(),
            checkpoint_id: id,
            run_id: self.run_id.clone(),
            created_at: chrono::Utc::now().to_rfc3339(),
            offsets,
            table_base_offsets: BTreeMap::from([(self.table_key.clone(), self.table_base.clone())]),
            commits,
        };
        {
            let (store, r) = (self.store.clone(), record.clone());
            blocking(move || store.write(&r)).await?;
        }
        failpoint::hit(failpoint::points::AFTER_RECORD);
        self.metrics
            .checkpoint_duration
            .observe(started.elapsed().as_secs_f64());
        let mut snapshot = None;
        let mut commit_ms: Option<f64> = None;
        if file_count > 0 {
            let commit_started = Instant::now();
            let outcome = self.commit_with_retry(&record).await?;
            let now_ms = chrono::Utc::now().timestamp_millis();
            let commit_secs = commit_started.elapsed().as_secs_f64();
            self.metrics.commit_duration.observe(commit_secs);
            commit_ms = Some(commit_secs * 1000.0);
            self.metrics.commits.inc();
            self.metrics.rows_committed.inc_by(rows);
            #[allow(clippy::cast_precision_loss)]
            {
                self.metrics.files_per_commit.observe(file_count as f64);
                self.metrics.bytes_per_commit.observe(bytes as f64);
                for ts in min_ts.into_iter().chain(max_ts) {
                    self.metrics
                        .freshness
                        .observe((now_ms - ts).max(0) as f64 / 1000.0);
                }
            }
            self.table_base = record.offsets.clone();
            snapshot = Some(outcome.snapshot_id());
        }
        self.offsets = record.offsets.clone();
        self.metrics.mark_committed();
        self.metrics.checkpoints.inc();
        self.metrics
            .last_checkpoint_id
            .set(i64::try_from(id).unwrap_or(i64::MAX));
        tracing::info!(
            checkpoint = id,
            rows,
            dead_lettered = dead,
            files = file_count,
            snapshot,
            commit_ms,
            ms = started.elapsed().as_secs_f64() * 1000.0,
            "checkpoint complete"
        );
        let (admin, offsets) = (self.admin.clone(), self.offsets.clone());
        if let Err(e) = blocking(move || kafka::commit_group_offsets(&admin, &offsets)).await {
            tracing::warn!(error = %e, "could not report offsets to the consumer group (progress only)");
        }
        let (store, uid, keep) = (
            self.store.clone(),
            self.config.uid.clone(),
            self.config.retained_checkpoints,
        );
        if let Err(e) = blocking(move || store.prune(&uid, keep)).await {
            tracing::warn!(error = %e, "could not prune old checkpoint records");
        }
        Ok(())
    }

    async fn commit_with_retry(
        &self,
        record: &CheckpointRecord,
    ) -> Result<CommitOutcome, RunError> {
        let mut delay = Duration::from_millis(200);
        for attempt in 1.. {
            match table::commit_checkpoint(
                self.catalog.as_ref(),
                &self.ident,
                &self.table_key,
                record,
            )
            .await
            {
                Ok(o) => return Ok(o),
                Err(e @ (TableError::Fenced(_) | TableError::History(_))) => return Err(e.into()),
                Err(e) if attempt < 6 => {
                    tracing::warn!(attempt, error = %e, "commit failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(e) => return Err(e.into()),
            }
        }
        unreachable!("the loop returns")
    }

    async fn update_lag(&self) {
        let (admin, offsets) = (self.admin.clone(), self.offsets.clone());
        for (tp, lag) in blocking(move || kafka::lag(&admin, &offsets)).await {
            self.metrics
                .lag
                .get_or_create(&PartitionLabels {
                    topic: tp.topic,
                    partition: tp.partition.to_string(),
                })
                .set(lag);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_partitions_of_known_topics_start_at_earliest() {
        assert_eq!(
            start_policy(true, StartingOffsets::Latest),
            StartingOffsets::Earliest
        );
        assert_eq!(
            start_policy(false, StartingOffsets::Latest),
            StartingOffsets::Latest
        );
    }

    #[test]
    fn new_partitions_go_to_the_least_loaded_workers() {
        let mut counts = vec![0, 0];
        assert_eq!(place_partitions(&mut counts, 5), vec![0, 1, 0, 1, 0]);
        let mut counts = vec![3, 1, 1];
        assert_eq!(place_partitions(&mut counts, 3), vec![1, 2, 1]);
        assert_eq!(counts, vec![3, 3, 2]);
    }
}
