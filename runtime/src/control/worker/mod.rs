//! A worker: reads the partitions the coordinator assigns, converts records, writes data
//! files, dead-letters what cannot be converted, and answers barriers with its files and
//! offsets. Runs on its own OS thread; talks to the coordinator only through protocol
//! messages. `sinks` holds the tables it writes, `tables` where their writers come from.

mod changes;
mod routing;
mod sinks;
mod tables;

pub use tables::Tables;

use std::{
    collections::HashMap,
    sync::{Arc, mpsc},
    time::Duration,
};

use rdkafka::{
    Message, Offset, TopicPartitionList, consumer::Consumer, error::KafkaError,
    message::BorrowedMessage,
};

use crate::{
    commit::TableError,
    config::PipelineConfig,
    control::protocol::{ToCoordinator, ToWorker, WorkerAck, WorkerId},
    decode::{UNKNOWN_FIELD_NAMES, UnsupportedColumn},
    failpoint,
    metrics::{
        ChangeLabels, FieldLabels, Metrics, ReasonLabels, TableLabels, TableReasonLabels,
        WorkerTableLabels,
    },
    offsets::{Offsets, TopicPartition, set_offset},
    source::{
        self, ClientError, DeadLetterError, DeadLetterProducer, KafkaConsumer, registry::Registry,
    },
};
use tidewater_crds::pipeline::{FormatType, WriteMode};

fn sink_mode(config: &PipelineConfig) -> WriteMode {
    config.resource.spec.sink.mode
}

use changes::ChangeFormat;
use routing::Routing;
use sinks::{BATCH_ROWS, Sinks};

/// How long a poll waits for a record.
const POLL: Duration = Duration::from_millis(100);
/// How long a barrier waits for dead-letter deliveries.
const DLQ_FLUSH: Duration = Duration::from_secs(30);

/// Everything a worker needs; built by the coordinator.
pub struct WorkerSetup {
    /// Worker id, unique within the coordinator run.
    pub id: WorkerId,
    /// The pipeline.
    pub config: PipelineConfig,
    /// Where the writers of each table come from.
    pub tables: Tables,
    /// Coordinator run id (part of file names).
    pub run_id: String,
    /// Shared metrics.
    pub metrics: Arc<Metrics>,
    /// Commands from the coordinator.
    pub commands: mpsc::Receiver<ToWorker>,
    /// Events to the coordinator.
    pub events: tokio::sync::mpsc::UnboundedSender<ToCoordinator>,
}

/// Why a worker stops the pipeline (sent to the coordinator as the failure's reason).
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The worker thread panicked.
    #[error("worker panicked: {0}")]
    Panicked(String),
    /// The consumer or the dead-letter producer could not be created.
    #[error("{what}: {source}")]
    Client {
        /// Which client.
        what: &'static str,
        /// Why.
        source: ClientError,
    },
    /// The thread's runtime for the Iceberg writer could not be built.
    #[error("worker runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The table cannot be decoded into.
    #[error(transparent)]
    Decoder(#[from] UnsupportedColumn),
    /// A table could not be opened.
    #[error(transparent)]
    Table(#[from] TableError),
    /// A record cannot be made to fit its table and the pipeline fails on such records.
    #[error(
        "table {table}: {reason}; spec.sink.schemaEvolution.onIncompatible is fail, so the \
         pipeline stops without committing past the record"
    )]
    Incompatible {
        /// The table.
        table: String,
        /// Why the record does not fit.
        reason: String,
    },
    /// The schema registry cannot serve the schema of an Avro record.
    #[error(transparent)]
    Registry(#[from] crate::source::registry::RegistryError),
    /// Writers cannot be prepared for a table.
    #[error(transparent)]
    Writer(#[from] crate::write::WriterSetupError),
    /// Assigning or releasing partitions failed.
    #[error("{what}: {source}")]
    Assignment {
        /// `assign clicks/3`, `assign`, `release`.
        what: String,
        /// Why.
        source: KafkaError,
    },
    /// A record cannot be decoded and there is no dead-letter topic.
    #[error(
        "record {at} cannot be converted ({kind}: {message}) and spec.deadLetter is not set; \
         stopping without committing past it"
    )]
    Undecodable {
        /// `topic/partition@offset`.
        at: String,
        /// The reason's kind (the dead-letter header).
        kind: &'static str,
        /// The reason.
        message: String,
    },
    /// A record could not be handed to the dead-letter producer.
    #[error("dead-lettering record {at}: {source}")]
    DeadLetterSend {
        /// `topic/partition@offset`.
        at: String,
        /// Why.
        source: KafkaError,
    },
    /// Dead letters were not delivered.
    #[error(transparent)]
    DeadLetter(#[from] DeadLetterError),
    /// Writing data files failed.
    #[error("{what} data file(s): {source}")]
    Write {
        /// `open`, `write` or `close`.
        what: &'static str,
        /// Why (boxed: iceberg's error is large and this path is cold).
        source: Box<iceberg::Error>,
    },
    /// The coordinator's end of the link is gone.
    #[error("coordinator is gone")]
    CoordinatorGone,
}

fn assignment(what: impl Into<String>) -> impl FnOnce(KafkaError) -> WorkerError {
    let what = what.into();
    move |source| WorkerError::Assignment { what, source }
}

fn write(what: &'static str) -> impl FnOnce(iceberg::Error) -> WorkerError {
    move |source| WorkerError::Write {
        what,
        source: Box::new(source),
    }
}

/// Starts a worker thread.
pub fn spawn(setup: WorkerSetup) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("worker-{}", setup.id))
        .spawn(move || {
            let id = setup.id;
            let events = setup.events.clone();
            // A panic must reach the coordinator as a failure, not as a silent hang until
            // the checkpoint timeout.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(setup)))
                .unwrap_or_else(|panic| {
                    let what = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_string()))
                        .unwrap_or_default();
                    Err(WorkerError::Panicked(what))
                });
            if let Err(e) = outcome {
                let reason = e.to_string();
                tracing::error!(worker = id, %reason, "worker failed");
                let _ = events.send(ToCoordinator::Failed { worker: id, reason });
            }
        })
}

/// Per-checkpoint statistics.
#[derive(Default)]
struct Epoch {
    rows: u64,
    dead_lettered: u64,
    min_ts: Option<i64>,
    max_ts: Option<i64>,
    records: u64,
    bytes: u64,
    dead_by_kind: HashMap<&'static str, u64>,
    /// Dead letters of records whose table was known, by table and reason.
    dead_by_table: HashMap<(String, &'static str), u64>,
    /// Upsert mode: records that change nothing (tombstones).
    skipped: u64,
}

struct State {
    id: WorkerId,
    max_record_bytes: usize,
    /// Which table each record goes to.
    routing: Routing,
    metrics: Arc<Metrics>,
    events: tokio::sync::mpsc::UnboundedSender<ToCoordinator>,
    owned: Offsets,
    sinks: Sinks,
    dlq: Option<DeadLetterProducer>,
    rt: tokio::runtime::Runtime,
    last_barrier: u64,
    /// Records since metrics were last published.
    since_publish: usize,
    epoch: Epoch,
    /// Partitions assigned but not yet read from, with when: the pause a move causes.
    awaiting_first: HashMap<(String, i32), std::time::Instant>,
    /// Upsert mode: how a record says what it changes.
    changes: Option<ChangeFormat>,
}

fn run(setup: WorkerSetup) -> Result<(), WorkerError> {
    let consumer = source::consumer(&setup.config).map_err(|source| WorkerError::Client {
        what: "kafka consumer",
        source,
    })?;
    let dlq = setup
        .config
        .dead_letter
        .as_ref()
        .map(|d| DeadLetterProducer::new(d, &setup.config.name))
        .transpose()
        .map_err(|source| WorkerError::Client {
            what: "dead-letter producer",
            source,
        })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(WorkerError::Runtime)?;
    let registry = match &setup.config.resource.spec.format {
        f if f.format_type == FormatType::Avro => {
            let spec = f.registry.as_ref().ok_or_else(|| {
                crate::source::registry::RegistryError::Config(
                    "is required with format.type avro".into(),
                )
            })?;
            crate::decode::limit_avro_allocations(setup.config.max_record_bytes);
            Some(Registry::new(spec)?)
        }
        _ => None,
    };
    let mut state = State {
        id: setup.id,
        sinks: Sinks::new(
            setup.id,
            setup.run_id,
            setup.tables,
            &setup.config.resource.spec.sink,
            registry,
            setup.metrics.clone(),
        ),
        max_record_bytes: setup.config.max_record_bytes,
        routing: match (&setup.config.table, &setup.config.router) {
            (_, Some(router)) => Routing::Routed {
                router: router.clone(),
                topics: HashMap::new(),
            },
            (Some(table), None) => Routing::Fixed(table.clone()),
            (None, None) => unreachable!("validated: a table or a route"),
        },
        metrics: setup.metrics,
        events: setup.events,
        owned: Offsets::new(),
        dlq,
        rt,
        last_barrier: 0,
        since_publish: 0,
        epoch: Epoch::default(),
        awaiting_first: HashMap::new(),
        changes: match (
            sink_mode(&setup.config),
            setup.config.resource.spec.format.format_type,
        ) {
            (WriteMode::Append, _) => None,
            (WriteMode::Upsert, FormatType::DebeziumJson) => Some(ChangeFormat::Debezium),
            (WriteMode::Upsert, _) => Some(ChangeFormat::Rows {
                delete_field: setup
                    .config
                    .resource
                    .spec
                    .sink
                    .upsert
                    .as_ref()
                    .and_then(|u| u.delete_field.clone()),
            }),
        },
    };
    let commands = setup.commands;
    loop {
        // Commands first: a barrier must not wait behind a long stream of records.
        loop {
            match commands.try_recv() {
                Ok(cmd) => {
                    if !state.handle(cmd, &consumer)? {
                        return Ok(());
                    }
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => return Ok(()),
            }
        }
        if state.owned.is_empty() {
            match commands.recv_timeout(POLL) {
                Ok(cmd) => {
                    if !state.handle(cmd, &consumer)? {
                        return Ok(());
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
            }
            continue;
        }
        // A zero-timeout poll first: while records flow this skips the deadline bookkeeping.
        let polled = consumer
            .poll(Duration::ZERO)
            .or_else(|| consumer.poll(POLL));
        match polled {
            None => state.flush()?,
            Some(Err(e)) => tracing::warn!(worker = state.id, error = %e, "kafka poll error"),
            Some(Ok(message)) => {
                state.on_message(&message)?;
                state.since_publish += 1;
                if state.since_publish >= BATCH_ROWS {
                    state.publish_metrics();
                }
            }
        }
        if let Some(d) = &state.dlq {
            d.poll();
        }
    }
}

/// The partitions of `offsets` positioned at their offsets.
fn partition_list(offsets: &Offsets) -> Result<TopicPartitionList, WorkerError> {
    let mut tpl = TopicPartitionList::new();
    for (topic, parts) in offsets {
        for (&p, &next) in parts {
            tpl.add_partition_offset(topic, p, Offset::Offset(next))
                .map_err(assignment(format!("assign {topic}/{p}")))?;
        }
    }
    Ok(tpl)
}

impl State {
    /// Returns false when the worker should exit.
    fn handle(&mut self, cmd: ToWorker, consumer: &KafkaConsumer) -> Result<bool, WorkerError> {
        match cmd {
            ToWorker::Assign { partitions } => {
                // Keys of these partitions may have changed under another owner.
                self.sinks.reload_indexes();
                let tpl = partition_list(&partitions)?;
                let now = std::time::Instant::now();
                for (topic, parts) in partitions {
                    for (p, offset) in parts {
                        set_offset(&mut self.owned, &topic, p, offset);
                        self.awaiting_first.insert((topic.clone(), p), now);
                    }
                }
                consumer
                    .incremental_assign(&tpl)
                    .map_err(assignment("assign"))?;
                tracing::info!(worker = self.id, added = tpl.count(), "assigned");
                Ok(true)
            }
            ToWorker::Barrier {
                checkpoint_id,
                release,
                traceparent,
            } => {
                let span =
                    tracing::info_span!("flush", checkpoint = checkpoint_id, worker = self.id);
                if let Some(parent) = &traceparent {
                    tidewater_telemetry::set_remote_parent(&span, parent);
                }
                span.in_scope(|| self.barrier(checkpoint_id))?;
                if !release.is_empty() {
                    self.release(&release, consumer)?;
                }
                Ok(true)
            }
            ToWorker::Reset { partitions } => {
                // Everything since the last acknowledged barrier is abandoned: the files stay
                // unreferenced (orphans for maintenance) and the records are read again.
                self.sinks.reset();
                self.epoch = Epoch::default();
                self.awaiting_first.clear();
                self.owned = partitions;
                let tpl = partition_list(&self.owned)?;
                consumer.assign(&tpl).map_err(assignment("assign"))?;
                tracing::info!(
                    worker = self.id,
                    partitions = tpl.count(),
                    "reset to the last completed checkpoint"
                );
                Ok(true)
            }
            ToWorker::ReloadIndex { tables } => {
                for table in &tables {
                    self.sinks.reload_index(table);
                }
                tracing::info!(
                    worker = self.id,
                    ?tables,
                    "a compaction moved rows: key index to be read again"
                );
                Ok(true)
            }
            ToWorker::Stop => Ok(false),
        }
    }

    fn release(
        &mut self,
        release: &[TopicPartition],
        consumer: &KafkaConsumer,
    ) -> Result<(), WorkerError> {
        let mut tpl = TopicPartitionList::new();
        for tp in release {
            if let Some(parts) = self.owned.get_mut(&tp.topic)
                && parts.remove(&tp.partition).is_some()
            {
                self.awaiting_first
                    .remove(&(tp.topic.clone(), tp.partition));
                tpl.add_partition(&tp.topic, tp.partition);
            }
        }
        self.owned.retain(|_, parts| !parts.is_empty());
        consumer
            .incremental_unassign(&tpl)
            .map_err(assignment("release"))?;
        tracing::info!(
            worker = self.id,
            released = tpl.count(),
            "released partitions"
        );
        Ok(())
    }

    fn on_message(&mut self, m: &BorrowedMessage<'_>) -> Result<(), WorkerError> {
        let Some(next) = self
            .owned
            .get_mut(m.topic())
            .and_then(|p| p.get_mut(&m.partition()))
        else {
            return Ok(()); // not ours (any more)
        };
        if m.offset() < *next {
            return Ok(()); // already processed before a re-assignment
        }
        if !self.awaiting_first.is_empty()
            && let Some(at) = self
                .awaiting_first
                .remove(&(m.topic().to_string(), m.partition()))
        {
            tracing::info!(
                worker = self.id,
                topic = m.topic(),
                partition = m.partition(),
                ms = at.elapsed().as_secs_f64() * 1000.0,
                "first record after assignment"
            );
        }
        let offset = m.offset();
        let payload = m.payload();
        self.epoch.records += 1;
        self.epoch.bytes += payload.map_or(0, |p| p.len() as u64);
        let mut table = None;
        if self.changes.is_some() {
            return self.on_change(m);
        }
        let result = match payload {
            None => Err(("no-value", "record has no value (tombstone)".to_string())),
            Some(p) if p.len() > self.max_record_bytes => Err((
                "oversize",
                format!(
                    "value of {} bytes exceeds maxRecordBytes {}",
                    p.len(),
                    self.max_record_bytes
                ),
            )),
            Some(p) => match self.routing.target(m) {
                Err(reason) => Err(("unroutable", reason)),
                Ok(target) => {
                    let pushed = self.sinks.push(
                        &self.rt,
                        m.topic(),
                        &target.table,
                        target.rule,
                        p,
                        self.last_barrier + 1,
                    )?;
                    if pushed.is_err() {
                        table = Some(target.table.into_owned());
                    }
                    pushed
                }
            },
        };
        match result {
            Ok(()) => {
                self.epoch.rows += 1;
                if let Some(ts) = m.timestamp().to_millis() {
                    self.epoch.min_ts = Some(self.epoch.min_ts.map_or(ts, |t| t.min(ts)));
                    self.epoch.max_ts = Some(self.epoch.max_ts.map_or(ts, |t| t.max(ts)));
                }
            }
            Err((kind, message)) => {
                self.dead_letter(m, kind, &message)?;
                if let Some(table) = table {
                    *self.epoch.dead_by_table.entry((table, kind)).or_default() += 1;
                }
            }
        }
        if let Some(next) = self
            .owned
            .get_mut(m.topic())
            .and_then(|p| p.get_mut(&m.partition()))
        {
            *next = offset + 1;
        }
        Ok(())
    }

    fn dead_letter(
        &mut self,
        m: &BorrowedMessage<'_>,
        kind: &'static str,
        message: &str,
    ) -> Result<(), WorkerError> {
        let at = format!("{}/{}@{}", m.topic(), m.partition(), m.offset());
        let Some(dlq) = &self.dlq else {
            return Err(WorkerError::Undecodable {
                at,
                kind,
                message: message.to_string(),
            });
        };
        if let Err(source) = dlq.send(m, kind, message) {
            return Err(WorkerError::DeadLetterSend { at, source });
        }
        self.epoch.dead_lettered += 1;
        *self.epoch.dead_by_kind.entry(kind).or_default() += 1;
        tracing::debug!(record = %at, kind, message, "dead-lettered");
        Ok(())
    }

    /// Hands every converted row to the writers (the stream is idle).
    fn flush(&mut self) -> Result<(), WorkerError> {
        self.sinks.flush(&self.rt, self.last_barrier + 1)?;
        self.publish_metrics();
        Ok(())
    }

    fn publish_metrics(&mut self) {
        self.since_publish = 0;
        for (table, unknown) in self.sinks.take_unknown_fields() {
            for name in &unknown.new_names {
                tracing::warn!(
                    worker = self.id,
                    %table,
                    field = %name,
                    "records carry a field the table has no column for; it is not written \
                     (counted in tidewater_unknown_field_records_total, logged once per field)"
                );
            }
            if unknown.overflowed {
                tracing::warn!(
                    worker = self.id,
                    %table,
                    names = UNKNOWN_FIELD_NAMES,
                    "more unknown field names than are tracked by name; further ones are counted \
                     as field=\"(other)\" and not logged"
                );
            }
            let others = (unknown.others > 0).then(|| ("(other)".to_string(), unknown.others));
            for (field, n) in unknown.by_name.into_iter().chain(others) {
                self.metrics
                    .unknown_fields
                    .get_or_create(&FieldLabels { field })
                    .inc_by(n);
            }
        }
        let worker = self.id.to_string();
        for (table, stats) in self.sinks.take_upsert_stats() {
            let u = &self.metrics.upsert;
            let labels = |kind: &str| ChangeLabels {
                table: table.to_string(),
                kind: kind.into(),
            };
            u.changes
                .get_or_create(&labels("upsert"))
                .inc_by(stats.upserts);
            u.changes
                .get_or_create(&labels("delete"))
                .inc_by(stats.deletes);
            let t = TableLabels {
                table: table.to_string(),
            };
            u.superseded.get_or_create(&t).inc_by(stats.superseded);
            u.key_conflicts.get_or_create(&t).inc_by(stats.conflicts);
            if stats.conflicts > 0 {
                tracing::warn!(
                    worker = self.id,
                    %table,
                    keys = stats.conflicts,
                    "keys changed on a Kafka partition other than their previous change's: the \
                     order of such changes is not defined (the latest to arrive wins); keep each \
                     key on one partition (key the topic by the primary key)"
                );
            }
            if let Some((keys, bytes)) = stats.index {
                let w = WorkerTableLabels {
                    table: table.to_string(),
                    worker: worker.clone(),
                };
                u.index_keys
                    .get_or_create(&w)
                    .set(i64::try_from(keys).unwrap_or(i64::MAX));
                u.index_bytes
                    .get_or_create(&w)
                    .set(i64::try_from(bytes).unwrap_or(i64::MAX));
            }
        }
        let e = &mut self.epoch;
        self.metrics
            .upsert
            .skipped
            .inc_by(std::mem::take(&mut e.skipped));
        self.metrics
            .records_in
            .inc_by(std::mem::take(&mut e.records));
        self.metrics.bytes_in.inc_by(std::mem::take(&mut e.bytes));
        for (kind, n) in e.dead_by_kind.drain() {
            self.metrics
                .dead_lettered
                .get_or_create(&ReasonLabels {
                    reason: kind.into(),
                })
                .inc_by(n);
        }
        for ((table, kind), n) in e.dead_by_table.drain() {
            self.metrics
                .table_dead_lettered
                .get_or_create(&TableReasonLabels {
                    table,
                    reason: kind.into(),
                })
                .inc_by(n);
        }
    }

    fn barrier(&mut self, checkpoint_id: u64) -> Result<(), WorkerError> {
        failpoint::hit(failpoint::points::WORKER_BARRIER);
        let tables = self.sinks.close_all(&self.rt, self.last_barrier + 1)?;
        let bytes = tables.values().map(|t| t.bytes).sum();
        if let Some(d) = &self.dlq {
            d.flush(DLQ_FLUSH)?;
        }
        self.publish_metrics();
        self.metrics.rows_out.inc_by(self.epoch.rows);
        let epoch = std::mem::take(&mut self.epoch);
        let ack = WorkerAck {
            worker: self.id,
            checkpoint_id,
            tables,
            offsets: self.owned.clone(),
            rows: epoch.rows,
            bytes,
            dead_lettered: epoch.dead_lettered,
            min_timestamp_ms: epoch.min_ts,
            max_timestamp_ms: epoch.max_ts,
        };
        self.last_barrier = checkpoint_id;
        self.events
            .send(ToCoordinator::Ack(ack))
            .map_err(|_| WorkerError::CoordinatorGone)
    }
}
