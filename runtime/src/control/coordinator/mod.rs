//! The coordinator: recovers (from the newest checkpoint, a savepoint, or fresh), keeps the
//! membership of workers (in-process or remote), assigns partitions, drives barriers, writes
//! durable checkpoint records and savepoints, and commits to Iceberg exactly once.
//! Decisions are pure functions (`checkpoint`, `savepoint`, `assignment`, and the fold of
//! acknowledgements); the submodules sequence the I/O: `start`, `membership`, `checkpoint`,
//! `status`; this one holds the state and the event loop.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use iceberg::Catalog;
use tidewater_crds::types::StartingOffsets;
use tokio::sync::mpsc::UnboundedReceiver;

use tidewater_crds::job_api::{CheckpointStatus, RunState};

use crate::{
    checkpoint::store::StateStore,
    commit::TableError,
    config::PipelineConfig,
    control::{
        api::Shared,
        hub::{Event, Hub},
        protocol::{ToCoordinator, WorkerAck, WorkerId},
        worker::Tables,
    },
    metrics::Metrics,
    offsets::{Offsets, TopicPartition},
    source, storage,
    write::WriterSetupError,
};

mod checkpoint;
mod membership;
mod start;
mod status;

/// Why a run ended with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Iceberg side (including fencing).
    #[error(transparent)]
    Table(#[from] TableError),
    /// Checkpoint records and savepoints.
    #[error(transparent)]
    State(#[from] crate::checkpoint::store::StateError),
    /// Object storage settings.
    #[error(transparent)]
    Storage(#[from] storage::StorageError),
    /// A Kafka client could not be created from the spec.
    #[error("kafka client: {0}")]
    KafkaClient(#[from] source::ClientError),
    /// A broker query failed; `message` carries librdkafka's last reported cause.
    #[error("kafka {during}: {message}")]
    Kafka {
        /// What was being asked (`metadata`, `start offset of clicks/3`).
        during: String,
        /// The error.
        message: String,
    },
    /// A worker stopped the pipeline.
    #[error("worker {worker}: {reason}")]
    Worker {
        /// Worker id.
        worker: WorkerId,
        /// Its reason.
        reason: String,
    },
    /// The requested start is refused.
    #[error("cannot start from savepoint: {0}")]
    Restore(String),
    /// The durable records and the tables do not give one point to resume from.
    #[error("cannot recover: {0}")]
    Recovery(String),
    /// The acknowledgements of a checkpoint cannot be committed together.
    #[error("checkpoint acknowledgements: {0}")]
    Acks(String),
    /// Writers cannot be prepared for the table.
    #[error(transparent)]
    Writer(#[from] WriterSetupError),
    /// An in-process worker thread could not be started.
    #[error("spawn worker: {0}")]
    SpawnWorker(#[source] std::io::Error),
    /// A partition to assign has no start offset (a bug: discovery sets one).
    #[error("no start offset for {}/{}", .0.topic, .0.partition)]
    NoStartOffset(TopicPartition),
    /// The coordinator's event stream ended (its HTTP server and links are gone).
    #[error("event stream closed")]
    EventsClosed,
}

/// How often per-partition lag is refreshed (one watermark request per partition).
const LAG_INTERVAL: Duration = Duration::from_secs(5);
/// How recent the broker's last full answer must be for an empty checkpoint to count as
/// being up to date (two missed lag refreshes and a margin).
const SOURCE_ANSWER_MAX_AGE: Duration = Duration::from_secs(15);
/// How often silent remote workers are looked for.
const LIVENESS_INTERVAL: Duration = Duration::from_millis(250);

/// Where a run starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartMode {
    /// The newest complete checkpoint (Flink's last-state); a first start uses the spec.
    Latest,
    /// Ignore checkpoints: partitions start from `startingOffsets` (stateless).
    Fresh,
    /// Exactly the state of this savepoint (path or `s3://` URI); once a run restored from
    /// it has checkpointed, restarts continue from the newest checkpoint instead.
    Savepoint(String),
}

/// How the coordinator runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Start mode.
    pub start: StartMode,
    /// Accept savepoints of another uid/table or with topics no longer read.
    pub allow_non_restored_state: bool,
    /// Run the workers as threads of this process (`tidewater run`).
    pub local_workers: bool,
    /// A remote worker silent for this long is lost.
    pub heartbeat_timeout: Duration,
    /// The pipeline file's text (sent to remote workers).
    pub pipeline_yaml: String,
    /// Directory relative paths of the spec are resolved against.
    pub base_dir: PathBuf,
}

/// How a run ended without error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stopped by a signal after a final checkpoint.
    Stopped,
    /// Stopped by a savepoint with `stop`.
    Finished {
        /// The savepoint's path.
        savepoint: String,
    },
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

struct Member {
    name: String,
    /// A remote worker's `/metrics` address, as it reported it.
    metrics_addr: Option<String>,
    leaving: bool,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What a checkpoint is for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Periodic,
    Savepoint { id: String, stop: bool },
}

/// The acknowledgements of a checkpoint, or why it was abandoned.
enum Collected {
    Complete(Vec<WorkerAck>),
    Aborted(String),
}

/// A running pipeline.
pub struct Coordinator {
    config: PipelineConfig,
    options: Options,
    shared: Arc<Shared>,
    hub: Hub,
    events: UnboundedReceiver<Event>,
    catalog: Arc<dyn Catalog>,
    /// The catalog's compare-and-swap, for upsert row deltas.
    swap: Option<Arc<crate::maintenance::commit::Cas>>,
    /// Upsert tables: the newest compaction that moved rows, as last seen.
    rewrites: std::sync::Mutex<BTreeMap<String, i64>>,
    store: StateStore,
    metrics: Arc<Metrics>,
    run_id: String,
    admin: Arc<source::KafkaConsumer>,
    /// What in-process workers write with.
    worker_tables: Tables,
    members: BTreeMap<WorkerId, Member>,
    target: usize,
    partitions: BTreeSet<TopicPartition>,
    owner: BTreeMap<TopicPartition, WorkerId>,
    offsets: Offsets,
    /// Per table: the offsets of its newest commit of this pipeline (every table the lineage
    /// committed to; written into every checkpoint record).
    table_base: BTreeMap<String, Offsets>,
    next_checkpoint_id: u64,
    origin: Option<String>,
    rebalance: bool,
    savepoints: VecDeque<(String, bool)>,
    last_checkpoint: Option<CheckpointStatus>,
    lag: BTreeMap<TopicPartition, i64>,
    /// When the broker last answered the watermark request of every owned partition: an
    /// empty checkpoint counts as "up to date" for `seconds_since_last_commit` only while
    /// this is recent (with the broker down, checkpoints are empty but nothing is landing).
    source_answered: Instant,
    rows_committed: u64,
    aborted: u64,
    /// Whether a discovery has completed (topics matching a pattern later start at earliest).
    discovered: bool,
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking task panicked")
}

impl Coordinator {
    /// Runs until `shutdown` resolves (final checkpoint) or a savepoint with stop completes.
    pub async fn run(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<Outcome, RunError> {
        self.metrics
            .checkpoint_interval
            .set(self.config.checkpoint_interval.as_secs_f64());
        let mut checkpoint = tokio::time::interval(self.config.checkpoint_interval);
        let mut discovery = tokio::time::interval(self.config.discovery_interval);
        let mut lag = tokio::time::interval(LAG_INTERVAL);
        for t in [&mut checkpoint, &mut discovery, &mut lag] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t.reset();
        }
        tokio::pin!(shutdown);
        let result = loop {
            let step = tokio::select! {
                () = &mut shutdown => {
                    tracing::info!("shutdown requested: taking a final checkpoint");
                    self.publish(RunState::Stopping);
                    break self.checkpoint(Kind::Periodic).await.map(|_| Outcome::Stopped);
                }
                _ = checkpoint.tick() => self.checkpoint(Kind::Periodic).await,
                _ = discovery.tick() => match self.discover().await {
                    // Reading goes on with the partitions already owned; the next tick retries.
                    Err(e @ RunError::Kafka { .. }) => {
                        tracing::warn!(error = %e, "partition discovery failed; retrying at the next interval");
                        Ok(None)
                    }
                    other => other.map(|()| None),
                },
                _ = lag.tick() => { self.update_lag().await; Ok(None) }
                event = self.events.recv() => match event {
                    Some(e) => self.on_event(e).map(|()| None),
                    None => Err(RunError::EventsClosed),
                },
            };
            match step {
                Err(e) => break Err(e),
                Ok(Some(outcome)) => break Ok(outcome),
                Ok(None) => {}
            }
            // Membership changes and savepoints do not wait for the next interval.
            let kind = match self.savepoints.pop_front() {
                Some((id, stop)) => Some(Kind::Savepoint { id, stop }),
                None if self.rebalance => Some(Kind::Periodic),
                None => None,
            };
            if let Some(kind) = kind {
                checkpoint.reset();
                match self.checkpoint(kind).await {
                    Err(e) => break Err(e),
                    Ok(Some(outcome)) => break Ok(outcome),
                    Ok(None) => {}
                }
            }
        };
        self.metrics.set_ready(false);
        for (id, _) in std::mem::take(&mut self.savepoints) {
            self.fail_savepoint(&id, "the job ended before the savepoint was taken");
        }
        self.stop_workers().await;
        match &result {
            Ok(_) => self.publish(RunState::Finished),
            Err(e) => {
                self.publish(RunState::Failed);
                self.shared.set_state(RunState::Failed, Some(e.to_string()));
            }
        }
        result
    }

    /// Handles an event between checkpoints.
    fn on_event(&mut self, event: Event) -> Result<(), RunError> {
        match event {
            Event::Worker(ToCoordinator::Failed { worker, reason }) => {
                return Err(RunError::Worker { worker, reason });
            }
            Event::Worker(ToCoordinator::Ack(ack)) => {
                tracing::debug!(
                    worker = ack.worker,
                    checkpoint = ack.checkpoint_id,
                    "late acknowledgement ignored"
                );
            }
            Event::Lost { id, reason } => {
                if self.forget(id, &reason) {
                    // Its partitions restart, from the last completed checkpoint, elsewhere; the
                    // others keep what they read since (it is theirs to report).
                    self.assign_unowned()?;
                }
            }
            other => self.on_membership(other),
        }
        self.publish_current();
        Ok(())
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
}
