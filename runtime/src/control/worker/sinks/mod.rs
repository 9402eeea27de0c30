//! A worker's tables: per table one batcher (records → Arrow) and at most one open writer
//! (Arrow → data files). Buffered rows and open writers are bounded; a writer over the bound
//! is closed least recently used first and its files wait for the next barrier. JSON records
//! are converted here, Avro records in `avro`.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

use tidewater_crds::pipeline::{
    OnIncompatible, SchemaEvolutionSpec, SinkSpec, UpsertSpec, WriteMode,
};

use crate::{
    checkpoint::TableCommitPlan,
    control::protocol::WorkerId,
    decode::{ConvertError, Pushed, RowBatcher, UnknownFields},
    evolve::{self, Observation, Sample},
    failpoint,
    metrics::{Metrics, TableLabels},
    source::registry::Registry,
    write::{DataFileRef, TableWriter, WriterFactory},
};

mod avro;
mod upsert;

use upsert::UpsertState;

use super::{
    WorkerError,
    tables::{Tables, Unavailable},
    write,
};

/// Why a record is not written: its dead-letter kind and reason.
pub(super) type RecordError = (&'static str, String);

/// Rows converted for one table before they are handed to its Parquet writer.
pub(super) const BATCH_ROWS: usize = 8192;
/// Rows converted for all tables together before every batch is handed over.
const BUFFERED_ROWS: usize = 4 * BATCH_ROWS;

/// One table's part of a worker.
struct Sink {
    factory: WriterFactory,
    batcher: RowBatcher,
    writer: Option<TableWriter>,
    /// Files closed since the last barrier (rolled over by the open-writer bound).
    closed: Vec<DataFileRef>,
    closed_bytes: u64,
    /// Rows converted since the last barrier.
    rows: u64,
    /// When the writer was last written to (a counter, for least-recently-used closing).
    last_used: u64,
    /// Unknown-field counts of batchers replaced by a schema change, not yet published.
    carried: Vec<UnknownFields>,
    /// Avro writer schema ids already compared with the table's current schema.
    checked: HashSet<u32>,
    /// Upsert mode: the key index and the changes waiting for it.
    upsert: Option<Box<UpsertState>>,
}

/// The tables one worker writes, opened on first use.
pub(super) struct Sinks {
    worker: WorkerId,
    run_id: String,
    tables: Tables,
    sinks: HashMap<String, Sink>,
    max_open_writers: usize,
    evolution: SchemaEvolutionSpec,
    metrics: Arc<Metrics>,
    buffered: usize,
    clock: u64,
    /// The schema registry, when records are Avro.
    registry: Option<Registry>,
    /// Upsert mode: the primary key.
    primary_key: Option<Vec<String>>,
    /// Upsert mode: how deletes are written.
    upsert: UpsertSpec,
    /// Upsert mode: the delete marker field (never a column).
    delete_field: Option<String>,
}

impl Sinks {
    pub(super) fn new(
        worker: WorkerId,
        run_id: String,
        tables: Tables,
        sink: &SinkSpec,
        registry: Option<Registry>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            worker,
            run_id,
            tables,
            sinks: HashMap::new(),
            max_open_writers: (sink.max_open_writers as usize).max(1),
            evolution: sink.schema_evolution.clone(),
            metrics,
            buffered: 0,
            clock: 0,
            registry,
            primary_key: (sink.mode == WriteMode::Upsert).then(|| sink.primary_key.clone()),
            delete_field: sink.upsert.as_ref().and_then(|u| u.delete_field.clone()),
            upsert: sink.upsert.clone().unwrap_or_default(),
        }
    }

    /// Converts one record (read from `topic`) into `table`'s batch (the table opened, or
    /// created with route `rule`'s definition, on first use), handing full batches to the
    /// writers. The outer error stops the worker; the inner one is the record's dead-letter
    /// reason.
    pub(super) fn push(
        &mut self,
        rt: &tokio::runtime::Runtime,
        topic: &str,
        table: &str,
        rule: Option<usize>,
        payload: &[u8],
        next_checkpoint: u64,
    ) -> Result<Result<(), RecordError>, WorkerError> {
        if self.registry.is_some() {
            return self.push_avro(rt, topic, table, rule, payload, next_checkpoint);
        }
        if !self.sinks.contains_key(table)
            && let Err(e) = self.open_sink(rt, table, rule, Sample::Json(payload))?
        {
            return Ok(Err(e));
        }
        if let Err(e) = self.convert_json(rt, table, payload, next_checkpoint)? {
            return Ok(Err(e));
        }
        self.appended(rt, table, next_checkpoint)
    }

    /// Converts a JSON record into the batch of `table` (open), evolving the table's schema
    /// when the record asks for it and it may.
    fn convert_json(
        &mut self,
        rt: &tokio::runtime::Runtime,
        table: &str,
        payload: &[u8],
        next_checkpoint: u64,
    ) -> Result<Result<(), RecordError>, WorkerError> {
        let mut evolved = 0;
        loop {
            let sink = self.sinks.get_mut(table).expect("opened above");
            let observation = if self.evolution.enabled {
                match sink.batcher.push_evolving(payload) {
                    Ok(Pushed::Appended) => break,
                    Ok(Pushed::NewFields(fields)) => Observation::NewFields(fields),
                    Err(e) => Observation::Failed(e),
                }
            } else {
                match sink.batcher.push(payload) {
                    Ok(()) => break,
                    Err(e) => return self.refuse(table, e),
                }
            };
            let relax = self.evolution.make_required_optional;
            if evolved >= 2 || evolve::decide(sink.factory.schema(), &observation, relax).is_empty()
            {
                match observation {
                    // Fields that cannot become columns (nested values): written without them,
                    // counted per field.
                    Observation::NewFields(_) => match sink.batcher.push(payload) {
                        Ok(()) => break,
                        Err(e) => return self.refuse(table, e),
                    },
                    Observation::Failed(e) => return self.refuse(table, e),
                    Observation::Writer(_) => unreachable!("JSON records have no writer schema"),
                }
            }
            self.evolve(rt, table, &observation, next_checkpoint)?;
            evolved += 1;
        }
        Ok(Ok(()))
    }

    /// Opens `table`'s sink: its writers and a batcher for the pipeline's format.
    fn open_sink(
        &mut self,
        rt: &tokio::runtime::Runtime,
        table: &str,
        rule: Option<usize>,
        sample: Sample<'_>,
    ) -> Result<Result<(), RecordError>, WorkerError> {
        let factory = match rt.block_on(self.tables.factory(table, rule, sample)) {
            Ok(f) => f,
            Err(Unavailable::Record(kind, reason)) => return Ok(Err((kind, reason))),
            Err(Unavailable::Worker(e)) => return Err(e),
        };
        let upsert = match &self.primary_key {
            Some(pk) => Some(Box::new(UpsertState::new(
                table,
                &factory,
                pk,
                &self.upsert,
            )?)),
            None => None,
        };
        let sink = Sink {
            upsert,
            batcher: self.batcher(&factory)?,
            factory,
            writer: None,
            closed: Vec::new(),
            closed_bytes: 0,
            rows: 0,
            last_used: 0,
            carried: Vec::new(),
            checked: HashSet::new(),
        };
        self.sinks.insert(table.to_string(), sink);
        Ok(Ok(()))
    }

    /// A batcher for the table's current schema.
    fn batcher(&self, factory: &WriterFactory) -> Result<RowBatcher, WorkerError> {
        let mut batcher = RowBatcher::new(factory.arrow_schema())?;
        if let Some(field) = &self.delete_field {
            batcher.ignore_field(field);
        }
        Ok(batcher)
    }

    /// Counts a record appended to `table` and hands batches over when enough are buffered.
    fn appended(
        &mut self,
        rt: &tokio::runtime::Runtime,
        table: &str,
        next_checkpoint: u64,
    ) -> Result<Result<(), RecordError>, WorkerError> {
        let sink = self.sinks.get_mut(table).expect("appended tables exist");
        sink.rows += 1;
        self.buffered += 1;
        let changes = sink.upsert.as_ref().map_or(0, |u| u.events.len());
        if sink.batcher.rows() >= BATCH_ROWS || changes >= BATCH_ROWS {
            self.flush_table(rt, table, next_checkpoint)?;
        } else if self.buffered >= BUFFERED_ROWS {
            self.flush(rt, next_checkpoint)?;
        }
        Ok(Ok(()))
    }

    /// A record no schema change makes fit: its dead-letter reason, or the worker's error when
    /// the pipeline fails on incompatible records.
    fn refuse(&self, table: &str, e: ConvertError) -> Result<Result<(), RecordError>, WorkerError> {
        let incompatible = matches!(e.kind, "wrong-type" | "out-of-range" | "missing-required");
        if incompatible && self.evolution.on_incompatible == OnIncompatible::Fail {
            return Err(WorkerError::Incompatible {
                table: table.to_string(),
                reason: e.to_string(),
            });
        }
        Ok(Err((e.kind, e.message)))
    }

    /// Brings `table`'s schema to what `observation` asks: the rows so far are written with
    /// the old schema (their files wait for the barrier), the table's schema is updated
    /// through the catalog, and its writers and batcher are remade from the new schema.
    fn evolve(
        &mut self,
        rt: &tokio::runtime::Runtime,
        table: &str,
        observation: &Observation,
        next_checkpoint: u64,
    ) -> Result<(), WorkerError> {
        self.flush_table(rt, table, next_checkpoint)?;
        let (factory, changes) = rt.block_on(self.tables.evolve(table, observation))?;
        if !changes.is_empty() {
            failpoint::hit(failpoint::points::AFTER_SCHEMA_UPDATE);
        }
        let sink = self.sinks.get_mut(table).expect("evolved tables exist");
        if let Some(w) = sink.writer.take() {
            let (files, bytes) = rt.block_on(w.close()).map_err(write("close"))?;
            sink.closed.extend(files);
            sink.closed_bytes += bytes;
        }
        let mut batcher = self.batcher(&factory)?;
        let sink = self.sinks.get_mut(table).expect("evolved tables exist");
        std::mem::swap(&mut sink.batcher, &mut batcher);
        sink.carried.push(batcher.take_unknown_fields());
        if let (Some(state), Some(pk)) = (sink.upsert.as_deref_mut(), &self.primary_key) {
            state.rekey(table, &factory, pk)?;
        }
        sink.factory = factory;
        sink.checked.clear();
        if !changes.is_empty() {
            let changes: Vec<String> = changes.iter().map(ToString::to_string).collect();
            tracing::info!(
                worker = self.worker,
                %table,
                changes = %changes.join(", "),
                schema = sink.factory.schema().schema_id(),
                "schema evolved"
            );
            self.metrics
                .schema_changes
                .get_or_create(&TableLabels {
                    table: table.to_string(),
                })
                .inc();
        }
        Ok(())
    }

    /// Hands every table's converted rows to its writer.
    pub(super) fn flush(
        &mut self,
        rt: &tokio::runtime::Runtime,
        next_checkpoint: u64,
    ) -> Result<(), WorkerError> {
        let full: Vec<String> = self
            .sinks
            .iter()
            .filter(|(_, s)| {
                s.batcher.rows() > 0 || s.upsert.as_ref().is_some_and(|u| !u.events.is_empty())
            })
            .map(|(t, _)| t.clone())
            .collect();
        for table in full {
            self.flush_table(rt, &table, next_checkpoint)?;
        }
        Ok(())
    }

    fn flush_table(
        &mut self,
        rt: &tokio::runtime::Runtime,
        table: &str,
        next_checkpoint: u64,
    ) -> Result<(), WorkerError> {
        // Changes decided after a reload need the index read again first.
        if self
            .sinks
            .get(table)
            .and_then(|s| s.upsert.as_deref())
            .is_some_and(|u| (u.index.is_none() || u.stale) && !u.events.is_empty())
        {
            self.load_index(rt, table)?;
        }
        let needs_writer = self.sinks.get(table).is_some_and(|s| s.writer.is_none());
        if needs_writer {
            self.make_room(rt)?;
        }
        self.clock += 1;
        let (worker, clock) = (self.worker, self.clock);
        let sink = self.sinks.get_mut(table).expect("flushed tables exist");
        let batch = sink.batcher.finish();
        let (batch, plan) = match sink.upsert.as_deref_mut() {
            None => (batch, None),
            Some(state) => {
                self.buffered = self.buffered.saturating_sub(state.events.len());
                let (batch, plan) = state.decide(table, batch)?;
                (batch, Some(plan))
            }
        };
        let Some(batch) = batch else {
            if let (Some(state), Some(plan)) = (sink.upsert.as_deref_mut(), plan) {
                state.written(plan, None)?;
            }
            return Ok(());
        };
        if plan.is_none() {
            self.buffered = self.buffered.saturating_sub(batch.num_rows());
        }
        if sink.writer.is_none() {
            let prefix = format!(
                "{}-w{worker}-c{next_checkpoint}-{}",
                self.run_id,
                uuid::Uuid::now_v7().simple()
            );
            let w = rt
                .block_on(sink.factory.open(prefix))
                .map_err(write("open"))?;
            sink.writer = Some(w);
        }
        sink.last_used = clock;
        let writer = sink.writer.as_mut().expect("just opened");
        rt.block_on(writer.write(batch)).map_err(write("write"))?;
        if let (Some(state), Some(plan)) = (sink.upsert.as_deref_mut(), plan) {
            state.written(plan, writer.position())?;
        }
        failpoint::hit(failpoint::points::WORKER_MID_WRITE);
        Ok(())
    }

    /// Closes the least recently used writer while the open ones are at their bound.
    fn make_room(&mut self, rt: &tokio::runtime::Runtime) -> Result<(), WorkerError> {
        let open = self.sinks.values().filter(|s| s.writer.is_some()).count();
        if open < self.max_open_writers {
            return Ok(());
        }
        let Some(sink) = self
            .sinks
            .values_mut()
            .filter(|s| s.writer.is_some())
            .min_by_key(|s| s.last_used)
        else {
            return Ok(());
        };
        let writer = sink.writer.take().expect("filtered on an open writer");
        let (files, bytes) = rt.block_on(writer.close()).map_err(write("close"))?;
        sink.closed.extend(files);
        sink.closed_bytes += bytes;
        Ok(())
    }

    /// At a barrier: converts what is buffered, closes every writer and returns, per table,
    /// the files written since the last barrier.
    pub(super) fn close_all(
        &mut self,
        rt: &tokio::runtime::Runtime,
        next_checkpoint: u64,
    ) -> Result<BTreeMap<String, TableCommitPlan>, WorkerError> {
        self.flush(rt, next_checkpoint)?;
        let mut plans = BTreeMap::new();
        for (table, sink) in &mut self.sinks {
            if let Some(w) = sink.writer.take() {
                let (files, bytes) = rt.block_on(w.close()).map_err(write("close"))?;
                sink.closed.extend(files);
                sink.closed_bytes += bytes;
            }
            let rows = std::mem::take(&mut sink.rows);
            let (delete_files, deleted_rows, delete_bytes) = match sink.upsert.as_deref_mut() {
                Some(state) => {
                    let prefix = format!(
                        "{}-w{}-c{next_checkpoint}-{}",
                        self.run_id,
                        self.worker,
                        uuid::Uuid::now_v7().simple()
                    );
                    let deletes = std::mem::take(&mut state.deletes);
                    let mut out = (Vec::new(), 0, 0);
                    let written = rt
                        .block_on(sink.factory.write_position_deletes(&prefix, deletes))
                        .map_err(write("write delete"))?;
                    let keys = state.end_checkpoint(table)?;
                    let equality = match keys {
                        Some(keys) => rt
                            .block_on(sink.factory.write_equality_deletes(&prefix, keys))
                            .map_err(write("write delete"))?,
                        None => None,
                    };
                    for (file, rows, bytes) in written.into_iter().chain(equality) {
                        out.0.push(file);
                        out.1 += rows;
                        out.2 += bytes;
                    }
                    out
                }
                None => (Vec::new(), 0, 0),
            };
            if sink.closed.is_empty() && delete_files.is_empty() {
                continue;
            }
            plans.insert(
                table.clone(),
                TableCommitPlan {
                    partition_spec_id: sink.factory.partition_spec_id(),
                    data_files: std::mem::take(&mut sink.closed),
                    rows,
                    bytes: std::mem::take(&mut sink.closed_bytes) + delete_bytes,
                    delete_files,
                    deleted_rows,
                },
            );
        }
        Ok(plans)
    }

    /// Abandons everything since the last barrier: open files stay unreferenced (orphans for
    /// maintenance), buffered rows are dropped (their records are read again).
    pub(super) fn reset(&mut self) {
        for sink in self.sinks.values_mut() {
            sink.writer = None;
            let _ = sink.batcher.finish();
            sink.closed.clear();
            sink.closed_bytes = 0;
            sink.rows = 0;
            if let Some(state) = sink.upsert.as_deref_mut() {
                state.reset();
            }
        }
        self.buffered = 0;
    }

    /// Fields without a column, per table, since the last call.
    pub(super) fn take_unknown_fields(&mut self) -> Vec<(&str, UnknownFields)> {
        let mut out = Vec::new();
        for (t, s) in &mut self.sinks {
            for carried in s.carried.drain(..) {
                out.push((t.as_str(), carried));
            }
            out.push((t.as_str(), s.batcher.take_unknown_fields()));
        }
        out
    }
}
