//! The coordinator: recovers (from the newest checkpoint, a savepoint, or fresh), keeps the
//! membership of workers (in-process or remote), assigns partitions, drives barriers, writes
//! durable checkpoint records and savepoints, and commits to Iceberg exactly once.
//! Decisions are pure functions (`checkpoint`, `savepoint`, `assignment`); this module
//! sequences the I/O.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    path::PathBuf,
    sync::{Arc, mpsc},
    time::{Duration, Instant},
};

use iceberg::{Catalog, TableIdent};
use tidewater_crds::types::StartingOffsets;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use crate::{
    checkpoint::{
        CheckpointRecord, CommittedState, Recovery, TableCommitPlan, decide_recovery,
        max_checkpoint_id, render_offsets,
        savepoint::{RestoreTarget, SavepointRecord, already_restored, check_restore},
        store::StateStore,
    },
    commit::{self, CommitOutcome, TableError},
    config::PipelineConfig,
    control::{
        api::{
            CheckpointDoc, PartitionStatus, Registration, SavepointStatus, Shared, StatusDoc,
            WorkerStatus,
        },
        assignment::plan_assignment,
        hub::{Event, Hub},
        protocol::{ToCoordinator, ToWorker, WorkerAck, WorkerId},
        worker::{self, WorkerSetup},
    },
    failpoint,
    metrics::{Metrics, PartitionLabels},
    offsets::{Offsets, TopicPartition, get_offset, set_offset},
    source, storage,
    write::WriterFactory,
};

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
    /// Kafka side.
    #[error("kafka: {0}")]
    Kafka(String),
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
    /// Setup problems.
    #[error("{0}")]
    Setup(String),
}

/// How often per-partition lag is refreshed (one watermark request per partition).
const LAG_INTERVAL: Duration = Duration::from_secs(5);
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
    ident: TableIdent,
    table_key: String,
    store: StateStore,
    metrics: Arc<Metrics>,
    run_id: String,
    admin: Arc<source::KafkaConsumer>,
    factory: WriterFactory,
    members: BTreeMap<WorkerId, Member>,
    target: usize,
    partitions: BTreeSet<TopicPartition>,
    owner: BTreeMap<TopicPartition, WorkerId>,
    offsets: Offsets,
    table_base: Offsets,
    next_checkpoint_id: u64,
    origin: Option<String>,
    rebalance: bool,
    savepoints: VecDeque<(String, bool)>,
    last_checkpoint: Option<CheckpointDoc>,
    lag: BTreeMap<TopicPartition, i64>,
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

/// Where to begin, decided from the start mode, the durable records and the table.
struct Begin {
    start_offsets: Offsets,
    table_base_offsets: Offsets,
    next_checkpoint_id: u64,
    pending: Option<CheckpointRecord>,
    origin: Option<String>,
}

impl Coordinator {
    /// Recovers, publishes the registration for remote workers and starts local ones.
    /// `events` is the receiving end of `shared.hub`.
    pub async fn start(
        config: PipelineConfig,
        options: Options,
        shared: Arc<Shared>,
        events: UnboundedReceiver<Event>,
    ) -> Result<Self, RunError> {
        let run_id = uuid::Uuid::now_v7().simple().to_string()[..12].to_string();
        let storage_props = match &config.s3 {
            Some(s3) => storage::s3_properties(s3)?,
            None => BTreeMap::new(),
        };
        let catalog = commit::open_catalog(&config.catalog, &storage_props).await?;
        let table = commit::load_or_create(catalog.as_ref(), &config).await?;
        let ident = commit::table_ident(&config)?;
        let table_key = config.table_display();
        let store = StateStore::open(&config.state_location, &storage_props)?;
        let records = store.load_all(&config.uid).await?;
        let last = commit::last_pipeline_commit(table.metadata(), &config.uid)?;
        let begin = Self::decide_begin(
            &config,
            &options,
            &store,
            &records,
            last.as_ref(),
            &table_key,
        )
        .await?;
        if let Some(record) = &begin.pending {
            let outcome = commit::commit_checkpoint(
                catalog.as_ref(),
                &ident,
                &table_key,
                record,
                &config.state_location,
            )
            .await?;
            tracing::info!(
                checkpoint = record.checkpoint_id,
                snapshot = outcome.snapshot_id(),
                "finished commit of recovered checkpoint"
            );
        }
        tracing::info!(
            run = %run_id,
            resume = %render_offsets(&begin.start_offsets),
            next_checkpoint = begin.next_checkpoint_id,
            records = records.len(),
            origin = begin.origin.as_deref().unwrap_or("-"),
            "recovered"
        );
        // An append does not change what writers need (schema, spec, properties, location),
        // so the table loaded before a recovered commit serves.
        let factory = WriterFactory::new(&table, &config.resource.spec.sink.write_properties)
            .map_err(RunError::Setup)?;
        let admin =
            Arc::new(source::consumer(&config).map_err(|e| RunError::Kafka(e.to_string()))?);
        let hub = shared.hub.clone();
        let metrics = shared.metrics.clone();
        let target = config.parallelism;
        let mut coordinator = Self {
            options,
            shared,
            hub,
            events,
            catalog,
            ident,
            table_key,
            store,
            metrics,
            run_id,
            admin,
            factory,
            members: BTreeMap::new(),
            target,
            partitions: BTreeSet::new(),
            owner: BTreeMap::new(),
            offsets: begin.start_offsets,
            table_base: begin.table_base_offsets,
            next_checkpoint_id: begin.next_checkpoint_id,
            origin: begin.origin,
            rebalance: false,
            savepoints: VecDeque::new(),
            last_checkpoint: None,
            lag: BTreeMap::new(),
            rows_committed: 0,
            aborted: 0,
            discovered: false,
            config,
        };
        if coordinator.options.local_workers {
            for _ in 0..target {
                coordinator.spawn_local()?;
            }
        }
        coordinator.discover().await?;
        *coordinator
            .shared
            .registration
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Registration {
            run_id: coordinator.run_id.clone(),
            pipeline_yaml: coordinator.options.pipeline_yaml.clone(),
            base_dir: coordinator.options.base_dir.display().to_string(),
            heartbeat_timeout: coordinator.options.heartbeat_timeout,
        });
        coordinator.publish("running");
        coordinator.metrics.set_ready(true);
        coordinator.spawn_liveness();
        Ok(coordinator)
    }

    async fn decide_begin(
        config: &PipelineConfig,
        options: &Options,
        store: &StateStore,
        records: &[CheckpointRecord],
        last: Option<&CommittedState>,
        table_key: &str,
    ) -> Result<Begin, RunError> {
        let latest = |records: &[CheckpointRecord]| {
            let recovery = decide_recovery(records, last, table_key);
            for (id, reason) in &recovery.skipped {
                tracing::warn!(checkpoint = id, %reason, "skipping checkpoint record the table contradicts");
            }
            let Recovery {
                start_offsets,
                table_base_offsets,
                next_checkpoint_id,
                pending,
                origin,
                ..
            } = recovery;
            Begin {
                start_offsets,
                table_base_offsets,
                next_checkpoint_id,
                pending,
                origin,
            }
        };
        let max_seen = max_checkpoint_id(records, last);
        match &options.start {
            StartMode::Latest => Ok(latest(records)),
            StartMode::Fresh => {
                tracing::info!(
                    "fresh start: checkpoints ignored, partitions start from spec.source.kafka.startingOffsets"
                );
                Ok(Begin {
                    start_offsets: Offsets::new(),
                    table_base_offsets: last.map(|l| l.offsets.clone()).unwrap_or_default(),
                    next_checkpoint_id: max_seen + 1,
                    pending: None,
                    origin: None,
                })
            }
            StartMode::Savepoint(path) => {
                let savepoint = store.read_savepoint(path).await?;
                if already_restored(records, &savepoint.id) {
                    tracing::info!(savepoint = %savepoint.id, "savepoint already restored by an earlier run of this deployment: continuing from the newest checkpoint");
                    return Ok(latest(records));
                }
                // With a pattern, the topics read are those of the savepoint that still match.
                let topics: Vec<String> = config
                    .topics
                    .iter()
                    .cloned()
                    .chain(
                        savepoint
                            .checkpoint
                            .offsets
                            .keys()
                            .filter(|t| config.reads(t))
                            .cloned(),
                    )
                    .collect();
                let target = RestoreTarget {
                    uid: &config.uid,
                    table: table_key,
                    topics: &topics,
                    allow_non_restored_state: options.allow_non_restored_state,
                };
                let restored =
                    check_restore(&savepoint, target, last).map_err(RunError::Restore)?;
                if !restored.dropped_topics.is_empty() {
                    tracing::warn!(topics = ?restored.dropped_topics, "savepoint state of topics no longer read is dropped");
                }
                tracing::info!(savepoint = %savepoint.id, checkpoint = savepoint.checkpoint.checkpoint_id, "restoring savepoint");
                Ok(Begin {
                    start_offsets: restored.start_offsets,
                    table_base_offsets: restored.table_base_offsets,
                    next_checkpoint_id: max_seen.max(savepoint.checkpoint.checkpoint_id) + 1,
                    pending: None,
                    origin: Some(savepoint.id),
                })
            }
        }
    }

    /// Declares remote workers that stopped polling lost.
    fn spawn_liveness(&self) {
        let hub = self.hub.clone();
        let timeout = self.options.heartbeat_timeout;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(LIVENESS_INTERVAL).await;
                for id in hub.silent_for(timeout) {
                    hub.remove(id);
                    hub.emit(Event::Lost {
                        id,
                        reason: format!("no contact for more than {timeout:?}"),
                    });
                }
            }
        });
    }

    fn spawn_local(&mut self) -> Result<WorkerId, RunError> {
        let (tx, rx) = mpsc::channel();
        let id = self.hub.add_local(tx);
        let (events_tx, mut events_rx) = unbounded_channel::<ToCoordinator>();
        let hub = self.hub.clone();
        tokio::spawn(async move {
            while let Some(m) = events_rx.recv().await {
                hub.emit(Event::Worker(m));
            }
        });
        let thread = worker::spawn(WorkerSetup {
            id,
            config: self.config.clone(),
            factory: self.factory.clone(),
            run_id: self.run_id.clone(),
            metrics: self.metrics.clone(),
            commands: rx,
            events: events_tx,
        })
        .map_err(|e| RunError::Setup(format!("spawn worker: {e}")))?;
        self.members.insert(
            id,
            Member {
                name: format!("local-{id}"),
                leaving: false,
                thread: Some(thread),
            },
        );
        Ok(id)
    }

    /// Runs until `shutdown` resolves (final checkpoint) or a savepoint with stop completes.
    pub async fn run(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<Outcome, RunError> {
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
                    self.publish("stopping");
                    break self.checkpoint(Kind::Periodic).await.map(|_| Outcome::Stopped);
                }
                _ = checkpoint.tick() => self.checkpoint(Kind::Periodic).await,
                _ = discovery.tick() => match self.discover().await {
                    // Reading goes on with the partitions already owned; the next tick retries.
                    Err(RunError::Kafka(e)) => {
                        tracing::warn!(error = %e, "partition discovery failed; retrying at the next interval");
                        Ok(None)
                    }
                    other => other.map(|()| None),
                },
                _ = lag.tick() => { self.update_lag().await; Ok(None) }
                event = self.events.recv() => match event {
                    Some(e) => self.on_event(e).map(|()| None),
                    None => Err(RunError::Setup("event stream closed".into())),
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
            Ok(_) => self.publish("finished"),
            Err(e) => {
                self.publish("failed");
                self.shared.set_state("failed", Some(e.to_string()));
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

    /// Joins, leaves, savepoint and parallelism requests: the same inside and outside a
    /// checkpoint (they take effect at the next boundary).
    fn on_membership(&mut self, event: Event) {
        match event {
            Event::Joined { id, name } => {
                tracing::info!(worker = id, %name, "worker joined");
                self.members.insert(
                    id,
                    Member {
                        name,
                        leaving: false,
                        thread: None,
                    },
                );
                self.rebalance = true;
            }
            Event::Leaving { id } => {
                if let Some(m) = self.members.get_mut(&id) {
                    tracing::info!(
                        worker = id,
                        "worker is leaving: its partitions move at the next checkpoint"
                    );
                    m.leaving = true;
                    self.rebalance = true;
                }
            }
            Event::Savepoint { id, stop } => self.savepoints.push_back((id, stop)),
            Event::Parallelism { workers } => {
                tracing::info!(
                    from = self.target,
                    to = workers,
                    "target parallelism changed"
                );
                self.target = workers;
                if self.options.local_workers {
                    while self.members.values().filter(|m| !m.leaving).count() < workers {
                        if let Err(e) = self.spawn_local() {
                            tracing::error!(error = %e, "cannot start a worker");
                            break;
                        }
                    }
                }
                self.rebalance = true;
            }
            Event::Worker(_) | Event::Lost { .. } => {}
        }
    }

    /// Removes a lost member; returns whether it owned partitions.
    fn forget(&mut self, id: WorkerId, reason: &str) -> bool {
        if self.members.remove(&id).is_none() {
            return false;
        }
        self.hub.remove(id);
        self.metrics.workers_lost.inc();
        let before = self.owner.len();
        self.owner.retain(|_, w| *w != id);
        tracing::warn!(worker = id, %reason, partitions = before - self.owner.len(), "worker lost");
        before != self.owner.len()
    }

    /// The workers that should own partitions: the first `target` members not leaving.
    fn active_workers(&self) -> Vec<WorkerId> {
        self.members
            .iter()
            .filter(|(_, m)| !m.leaving)
            .map(|(&id, _)| id)
            .take(self.target)
            .collect()
    }

    /// Gives partitions without an owner to workers, starting at the checkpointed offsets;
    /// notes whether owned partitions should move (they move at the next barrier).
    fn assign_unowned(&mut self) -> Result<(), RunError> {
        let plan = plan_assignment(&self.partitions, &self.owner, &self.active_workers());
        let mut per_worker: BTreeMap<WorkerId, Offsets> = BTreeMap::new();
        for (tp, &w) in &plan {
            if self.owner.contains_key(tp) {
                continue;
            }
            let start = get_offset(&self.offsets, &tp.topic, tp.partition).ok_or_else(|| {
                RunError::Setup(format!("no start offset for {}/{}", tp.topic, tp.partition))
            })?;
            set_offset(
                per_worker.entry(w).or_default(),
                &tp.topic,
                tp.partition,
                start,
            );
        }
        self.give(per_worker, "assigning");
        if self.owner.iter().any(|(tp, w)| plan.get(tp) != Some(w)) {
            self.rebalance = true;
        }
        Ok(())
    }

    /// Tells each worker to start reading these partitions at these offsets and records it as
    /// their owner (a worker that is gone owns nothing: the partitions stay unowned).
    fn give(&mut self, per_worker: BTreeMap<WorkerId, Offsets>, what: &str) {
        for (w, partitions) in per_worker {
            tracing::info!(worker = w, partitions = %render_offsets(&partitions), "{what}");
            let tps: Vec<TopicPartition> = partitions
                .iter()
                .flat_map(|(topic, parts)| {
                    parts.keys().map(|&partition| TopicPartition {
                        topic: topic.clone(),
                        partition,
                    })
                })
                .collect();
            if self.hub.send(w, ToWorker::Assign { partitions }).is_ok() {
                self.owner.extend(tps.into_iter().map(|tp| (tp, w)));
            }
        }
    }

    /// Sends Stop to every member and waits for local threads and for remote workers to
    /// fetch it.
    async fn stop_workers(&mut self) {
        for &id in self.members.keys() {
            let _ = self.hub.send(id, ToWorker::Stop);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while !self.hub.all_delivered() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for m in self.members.values_mut() {
            if let Some(t) = m.thread.take() {
                let _ = blocking(move || t.join()).await;
            }
        }
    }

    /// Finds partitions not seen before and assigns them; new partitions of a topic that
    /// was already checkpointed start at `earliest`.
    async fn discover(&mut self) -> Result<(), RunError> {
        let found = {
            let (admin, config) = (self.admin.clone(), self.config.clone());
            blocking(move || {
                source::discover_partitions(&admin, &config.topics, |t| config.reads(t))
                    .map_err(|e| source::with_cause(&admin, e))
            })
            .await
            .map_err(|e| RunError::Kafka(format!("metadata: {e}")))?
        };
        let new: Vec<TopicPartition> = found
            .into_iter()
            .filter(|tp| !self.partitions.contains(tp))
            .collect();
        if new.is_empty() {
            self.discovered = true;
            return Ok(());
        }
        for tp in &new {
            if get_offset(&self.offsets, &tp.topic, tp.partition).is_none() {
                let known = self.offsets.contains_key(&tp.topic)
                    || (self.config.topic_pattern.is_some() && self.discovered);
                let policy = start_policy(known, self.config.starting_offsets);
                let (admin, tp2) = (self.admin.clone(), tp.clone());
                let start = blocking(move || source::resolve_start(&admin, &tp2, policy))
                    .await
                    .map_err(|e| {
                        RunError::Kafka(format!(
                            "start offset of {}/{}: {e}",
                            tp.topic, tp.partition
                        ))
                    })?;
                set_offset(&mut self.offsets, &tp.topic, tp.partition, start);
            }
            self.partitions.insert(tp.clone());
        }
        self.discovered = true;
        self.assign_unowned()?;
        self.publish_current();
        Ok(())
    }

    async fn collect_acks(
        &mut self,
        checkpoint_id: u64,
        participants: &BTreeSet<WorkerId>,
    ) -> Result<Collected, RunError> {
        let deadline = tokio::time::Instant::now() + self.config.checkpoint_timeout;
        let mut acks: BTreeMap<WorkerId, WorkerAck> = BTreeMap::new();
        while acks.len() < participants.len() {
            let event = match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => {
                    // A worker that is alive but does not answer (stuck I/O) is treated as
                    // lost: it gets "gone" on its next request and starts over.
                    let silent: Vec<WorkerId> = participants
                        .iter()
                        .filter(|w| !acks.contains_key(w))
                        .copied()
                        .collect();
                    for &w in &silent {
                        self.forget(w, "no acknowledgement within checkpoint.timeout");
                    }
                    return Ok(Collected::Aborted(format!(
                        "checkpoint {checkpoint_id} not acknowledged within {:?} by worker(s) {silent:?}",
                        self.config.checkpoint_timeout
                    )));
                }
                Ok(None) => return Err(RunError::Setup("event stream closed".into())),
                Ok(Some(e)) => e,
            };
            match event {
                Event::Worker(ToCoordinator::Failed { worker, reason }) => {
                    return Err(RunError::Worker { worker, reason });
                }
                Event::Worker(ToCoordinator::Ack(ack))
                    if ack.checkpoint_id == checkpoint_id && participants.contains(&ack.worker) =>
                {
                    acks.insert(ack.worker, ack);
                }
                Event::Worker(ToCoordinator::Ack(ack)) => {
                    tracing::debug!(
                        worker = ack.worker,
                        checkpoint = ack.checkpoint_id,
                        "stale acknowledgement ignored"
                    );
                }
                Event::Lost { id, reason } => {
                    let owned = self.forget(id, &reason);
                    if participants.contains(&id) {
                        return Ok(Collected::Aborted(format!("worker {id} lost: {reason}")));
                    }
                    if owned {
                        self.assign_unowned()?;
                    }
                }
                other => self.on_membership(other),
            }
        }
        Ok(Collected::Complete(acks.into_values().collect()))
    }

    /// After an aborted checkpoint every worker drops what it read since the last completed
    /// checkpoint and starts again from it, with a fresh assignment.
    fn reset_all(&mut self) {
        self.owner.retain(|_, w| self.members.contains_key(w));
        let plan = plan_assignment(&self.partitions, &self.owner, &self.active_workers());
        let mut per_worker: BTreeMap<WorkerId, Offsets> = self
            .members
            .keys()
            .map(|&id| (id, Offsets::new()))
            .collect();
        for (tp, &w) in &plan {
            if let Some(o) = get_offset(&self.offsets, &tp.topic, tp.partition) {
                set_offset(per_worker.entry(w).or_default(), &tp.topic, tp.partition, o);
            }
        }
        self.owner = plan;
        for (w, partitions) in per_worker {
            if self.hub.send(w, ToWorker::Reset { partitions }).is_err() {
                self.owner.retain(|_, o| *o != w);
            }
        }
        self.rebalance = false;
    }

    /// One checkpoint: barrier (with partition releases) → acks → moved partitions start at
    /// their new owners → durable record → exactly-once commit → progress. Returns an outcome
    /// when the job must end (a savepoint with stop).
    async fn checkpoint(&mut self, kind: Kind) -> Result<Option<Outcome>, RunError> {
        let id = self.next_checkpoint_id;
        self.next_checkpoint_id += 1;
        let started = Instant::now();
        let plan = plan_assignment(&self.partitions, &self.owner, &self.active_workers());
        let mut releases: BTreeMap<WorkerId, Vec<TopicPartition>> = BTreeMap::new();
        for (tp, w) in &self.owner {
            if plan.get(tp) != Some(w) {
                releases.entry(*w).or_default().push(tp.clone());
            }
        }
        let participants: BTreeSet<WorkerId> = self.owner.values().copied().collect();
        if matches!(kind, Kind::Savepoint { .. }) {
            self.publish("savepointing");
        }
        let mut gone = None;
        for &w in &participants {
            let release = releases.remove(&w).unwrap_or_default();
            if self
                .hub
                .send(
                    w,
                    ToWorker::Barrier {
                        checkpoint_id: id,
                        release,
                    },
                )
                .is_err()
            {
                gone = Some(w);
            }
        }
        let collected = match gone {
            Some(w) => {
                self.forget(w, "link closed");
                Collected::Aborted(format!("worker {w} is gone"))
            }
            None => self.collect_acks(id, &participants).await?,
        };
        let acks = match collected {
            Collected::Complete(acks) => acks,
            Collected::Aborted(reason) => {
                tracing::warn!(checkpoint = id, %reason, "checkpoint aborted: every worker restarts from the last completed checkpoint");
                self.aborted += 1;
                self.metrics.aborted_checkpoints.inc();
                self.reset_all();
                if let Kind::Savepoint { id: sp, .. } = &kind {
                    self.fail_savepoint(sp, &format!("checkpoint {id} aborted: {reason}"));
                }
                self.publish("running");
                return Ok(None);
            }
        };
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
        self.move_partitions(&plan, &offsets, started);
        let is_savepoint = matches!(kind, Kind::Savepoint { .. });
        if files.is_empty() && offsets == self.offsets && !is_savepoint {
            tracing::debug!(
                checkpoint = id,
                "empty checkpoint: nothing to record or commit"
            );
            self.metrics.mark_committed();
            self.assign_unowned()?;
            self.publish("running");
            return Ok(None);
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
            origin: self.origin.clone(),
        };
        self.store.write(&record).await?;
        failpoint::hit(failpoint::points::AFTER_RECORD);
        self.metrics
            .checkpoint_duration
            .observe(started.elapsed().as_secs_f64());
        let mut snapshots = BTreeMap::new();
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
            self.rows_committed += rows;
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
            snapshots.insert(self.table_key.clone(), outcome.snapshot_id());
        }
        self.offsets = record.offsets.clone();
        self.last_checkpoint = Some(CheckpointDoc {
            id,
            time: record.created_at.clone(),
            snapshots: snapshots.clone(),
        });
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
            snapshot = snapshots.values().next(),
            commit_ms,
            ms = started.elapsed().as_secs_f64() * 1000.0,
            "checkpoint complete"
        );
        let (admin, offsets) = (self.admin.clone(), self.offsets.clone());
        if let Err(e) = blocking(move || source::commit_group_offsets(&admin, &offsets)).await {
            tracing::warn!(error = %e, "could not report offsets to the consumer group (progress only)");
        }
        if let Err(e) = self
            .store
            .prune(&self.config.uid, self.config.retained_checkpoints)
            .await
        {
            tracing::warn!(error = %e, "could not prune old checkpoint records");
        }
        if let Kind::Savepoint { id: sp_id, stop } = kind {
            let savepoint = SavepointRecord {
                version: 1,
                id: sp_id.clone(),
                created_at: chrono::Utc::now().to_rfc3339(),
                pipeline_uid: self.config.uid.clone(),
                table: self.table_key.clone(),
                topics: self
                    .partitions
                    .iter()
                    .map(|tp| tp.topic.clone())
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect(),
                checkpoint: record,
            };
            match self.store.write_savepoint(&savepoint).await {
                Ok(path) => {
                    tracing::info!(savepoint = %sp_id, %path, checkpoint = id, stop, "savepoint completed");
                    self.shared.set_savepoint(SavepointStatus {
                        id: sp_id,
                        state: "completed".into(),
                        stop,
                        path: Some(path.clone()),
                        checkpoint_id: Some(id),
                        reason: None,
                    });
                    if stop {
                        return Ok(Some(Outcome::Finished { savepoint: path }));
                    }
                }
                Err(e) => self.fail_savepoint(&sp_id, &e.to_string()),
            }
        }
        self.assign_unowned()?;
        self.retire_idle();
        self.publish("running");
        Ok(None)
    }

    /// Right after the acknowledgements: partitions released at this barrier start at their
    /// new owners from the offsets their old owners reached.
    fn move_partitions(
        &mut self,
        plan: &BTreeMap<TopicPartition, WorkerId>,
        offsets: &Offsets,
        barrier_sent: Instant,
    ) {
        let mut per_worker: BTreeMap<WorkerId, Offsets> = BTreeMap::new();
        let moved: Vec<TopicPartition> = self
            .owner
            .iter()
            .filter(|(tp, w)| plan.get(*tp) != Some(*w))
            .map(|(tp, _)| tp.clone())
            .collect();
        for tp in moved {
            self.owner.remove(&tp);
            if let (Some(&to), Some(o)) =
                (plan.get(&tp), get_offset(offsets, &tp.topic, tp.partition))
            {
                set_offset(
                    per_worker.entry(to).or_default(),
                    &tp.topic,
                    tp.partition,
                    o,
                );
            }
        }
        if per_worker.is_empty() {
            self.rebalance = false;
            return;
        }
        self.give(per_worker, "moving partitions");
        let pause = barrier_sent.elapsed();
        self.metrics.rescale_pause.observe(pause.as_secs_f64());
        tracing::info!(pause_ms = pause.as_secs_f64() * 1000.0, "partitions moved");
        self.rebalance = false;
    }

    /// Local workers beyond the target and leaving workers that own nothing are stopped.
    fn retire_idle(&mut self) {
        let active: BTreeSet<WorkerId> = self.active_workers().into_iter().collect();
        let owning: BTreeSet<WorkerId> = self.owner.values().copied().collect();
        let idle: Vec<WorkerId> = self
            .members
            .iter()
            .filter(|(id, m)| {
                !owning.contains(id) && (m.leaving || (m.thread.is_some() && !active.contains(id)))
            })
            .map(|(&id, _)| id)
            .collect();
        for id in idle {
            tracing::info!(worker = id, "stopping idle worker");
            let _ = self.hub.send(id, ToWorker::Stop);
            // A local thread ends after its current poll (nothing waits for it); a remote
            // worker fetches its Stop and its link expires when it stops polling.
            if self.members.remove(&id).is_some_and(|m| m.thread.is_some()) {
                self.hub.remove(id);
            }
        }
    }

    fn fail_savepoint(&self, id: &str, reason: &str) {
        tracing::warn!(savepoint = id, %reason, "savepoint failed");
        let stop = self
            .shared
            .savepoints
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(id)
            .is_some_and(|s| s.stop);
        self.shared.set_savepoint(SavepointStatus {
            id: id.into(),
            state: "failed".into(),
            stop,
            path: None,
            checkpoint_id: None,
            reason: Some(reason.into()),
        });
    }

    async fn commit_with_retry(
        &self,
        record: &CheckpointRecord,
    ) -> Result<CommitOutcome, RunError> {
        let mut delay = Duration::from_millis(200);
        for attempt in 1.. {
            match commit::commit_checkpoint(
                self.catalog.as_ref(),
                &self.ident,
                &self.table_key,
                record,
                &self.config.state_location,
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

    async fn update_lag(&mut self) {
        let (admin, offsets) = (self.admin.clone(), self.offsets.clone());
        for (tp, lag) in blocking(move || source::lag(&admin, &offsets)).await {
            self.metrics
                .lag
                .get_or_create(&PartitionLabels {
                    topic: tp.topic.clone(),
                    partition: tp.partition.to_string(),
                })
                .set(lag);
            self.lag.insert(tp, lag);
        }
        self.publish_current();
    }

    fn publish_current(&self) {
        let state = self
            .shared
            .status
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .state
            .clone();
        self.publish(&state);
    }

    /// Publishes the status document for `GET /v1/status`.
    fn publish(&self, state: &str) {
        let active: BTreeSet<WorkerId> = self.active_workers().into_iter().collect();
        let seen = self.hub.last_seen();
        let workers = self
            .members
            .iter()
            .map(|(&id, m)| WorkerStatus {
                id,
                name: m.name.clone(),
                state: if m.leaving {
                    "leaving"
                } else if active.contains(&id) {
                    "active"
                } else {
                    "idle"
                }
                .into(),
                partitions: self
                    .owner
                    .iter()
                    .filter(|(_, w)| **w == id)
                    .map(|(tp, _)| format!("{}/{}", tp.topic, tp.partition))
                    .collect(),
                last_seen_seconds: seen.get(&id).copied(),
            })
            .collect();
        let partitions: Vec<PartitionStatus> = self
            .partitions
            .iter()
            .map(|tp| PartitionStatus {
                topic: tp.topic.clone(),
                partition: tp.partition,
                worker: self.owner.get(tp).copied(),
                offset: get_offset(&self.offsets, &tp.topic, tp.partition).unwrap_or(0),
                lag: self.lag.get(tp).copied(),
            })
            .collect();
        self.metrics
            .active_workers
            .set(i64::try_from(self.owner.values().collect::<BTreeSet<_>>().len()).unwrap_or(0));
        self.shared.publish(StatusDoc {
            pipeline: self.config.name.clone(),
            pipeline_uid: self.config.uid.clone(),
            run_id: self.run_id.clone(),
            state: state.into(),
            target_workers: self.target,
            workers,
            last_checkpoint: self.last_checkpoint.clone(),
            total_lag: partitions.iter().filter_map(|p| p.lag).sum(),
            partitions,
            rows_committed: self.rows_committed,
            aborted_checkpoints: self.aborted,
            error: None,
        });
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
