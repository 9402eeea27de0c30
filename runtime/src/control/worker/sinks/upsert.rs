//! Change records into an upsert table: a row image is converted like any record and noted as
//! the key's new row; a delete's key image is converted to key bytes at once. At each flush
//! the key index decides which rows to write and which earlier rows to delete; at the barrier
//! the deletes become one position delete file. The index is read from the table when the
//! sink is opened, after a reset and when partitions are assigned.

use std::{collections::HashSet, sync::Arc};

use arrow_array::{RecordBatch, UInt32Array};

use tidewater_crds::pipeline::{DeleteMode, UpsertSpec};

use crate::{
    decode::{RowBatcher, change::Change},
    evolve::Sample,
    upsert::{BatchPlan, Event, KeyIndex, key::KeyEncoder, rebuild},
    write::WriterFactory,
};

use super::{RecordError, Sinks, WorkerError};

/// A table's upsert part.
pub(super) struct UpsertState {
    encoder: KeyEncoder,
    /// Converts a delete's (or an update's old) key image, one at a time.
    keys: RowBatcher,
    /// The changes since the last flush, in arrival order.
    pub(super) events: Vec<Event>,
    /// None until read from the table.
    pub(super) index: Option<KeyIndex>,
    /// Rows to delete at the next barrier.
    pub(super) deletes: Vec<(Arc<str>, u64)>,
    /// Data files written since the last barrier (an index read again takes their rows
    /// from the current one).
    written: HashSet<Arc<str>>,
    /// The index must be read again from the table before the next change (partitions were
    /// assigned, or a compaction moved rows).
    pub(super) stale: bool,
    /// Counts since metrics were last published.
    pub(super) stats: UpsertStats,
    /// Keys whose rows from earlier commits need an equality delete (this checkpoint).
    equality: HashSet<Box<[u8]>>,
    /// Equality mode (no index beyond the checkpoint) or the position index's bound.
    mode: DeleteMode,
    max_index_bytes: usize,
}

/// An upsert table's counts since they were last published.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(in crate::control::worker) struct UpsertStats {
    pub upserts: u64,
    pub deletes: u64,
    pub superseded: u64,
    pub conflicts: u64,
    /// Keys in the index and its estimated bytes (None: not loaded).
    pub index: Option<(usize, usize)>,
}

fn unsupported(table: &str, reason: String) -> WorkerError {
    WorkerError::Table(crate::commit::TableError::Definition(format!(
        "table {table}: {reason}"
    )))
}

impl UpsertState {
    /// The upsert part of a table written by `factory`, keyed by `primary_key`.
    pub(super) fn new(
        table: &str,
        factory: &WriterFactory,
        primary_key: &[String],
        spec: &UpsertSpec,
    ) -> Result<Self, WorkerError> {
        if factory.is_partitioned() {
            return Err(unsupported(
                table,
                "upsert mode writes unpartitioned tables only (partitioned upsert tables are \
                 not supported yet)"
                    .into(),
            ));
        }
        let schema = factory.schema();
        let identifiers: Vec<String> = schema
            .identifier_field_ids()
            .filter_map(|id| schema.name_by_field_id(id).map(str::to_string))
            .collect();
        let mut want: Vec<&String> = primary_key.iter().collect();
        let mut have: Vec<&String> = identifiers.iter().collect();
        want.sort();
        have.sort();
        if !have.is_empty() && have != want {
            return Err(unsupported(
                table,
                format!(
                    "its identifier fields are {identifiers:?} but spec.sink.primaryKey is \
                     {primary_key:?}"
                ),
            ));
        }
        let encoder = KeyEncoder::new(&factory.arrow_schema(), primary_key)
            .map_err(|e| unsupported(table, e))?;
        let mut keys = RowBatcher::new(encoder.key_schema())?;
        keys.ignore_unknown_fields();
        Ok(Self {
            encoder,
            keys,
            events: Vec::new(),
            index: None,
            deletes: Vec::new(),
            written: HashSet::new(),
            stale: false,
            stats: UpsertStats::default(),
            equality: HashSet::new(),
            mode: spec.delete_mode,
            max_index_bytes: usize::try_from(spec.max_index_bytes).unwrap_or(usize::MAX),
        })
    }

    /// After a schema change: the key columns' places in the new schema.
    pub(super) fn rekey(
        &mut self,
        table: &str,
        factory: &WriterFactory,
        primary_key: &[String],
    ) -> Result<(), WorkerError> {
        self.encoder = KeyEncoder::new(&factory.arrow_schema(), primary_key)
            .map_err(|e| unsupported(table, e))?;
        Ok(())
    }

    /// The key bytes of a key image; the dead-letter reason when it lacks a key column.
    fn key_of(&mut self, image: &[u8]) -> Result<Box<[u8]>, RecordError> {
        self.keys.push(image).map_err(|e| (e.kind, e.message))?;
        let batch = self.keys.finish().expect("one row pushed");
        let rows = self
            .encoder
            .encode_keys(batch.columns())
            .map_err(|e| ("invalid-key", e.to_string()))?;
        Ok(rows.row(0).as_ref().into())
    }

    /// Decides the changes since the last flush against the index: the rows of `batch` to
    /// write (None: none), and the plan to complete with [`Self::written`] once they are.
    pub(super) fn decide(
        &mut self,
        table: &str,
        batch: Option<RecordBatch>,
    ) -> Result<(Option<RecordBatch>, BatchPlan), WorkerError> {
        let events = std::mem::take(&mut self.events);
        let keys = batch
            .as_ref()
            .map(|b| self.encoder.encode_rows(b))
            .transpose()
            .map_err(|e| unsupported(table, format!("encoding keys: {e}")))?;
        let index = self
            .index
            .as_mut()
            .expect("the index is loaded before changes");
        let mut plan = index.plan(&events, |row| {
            keys.as_ref()
                .expect("row events come with rows")
                .row(row as usize)
                .data()
        });
        self.deletes.extend(plan.deletes.iter().cloned());
        self.equality.extend(plan.equality.drain(..));
        self.stats.superseded += plan.superseded;
        self.stats.conflicts += plan.conflicts;
        let Some(batch) = batch else {
            return Ok((None, plan));
        };
        if plan.write.is_empty() {
            return Ok((None, plan));
        }
        if plan.write.len() == batch.num_rows() {
            return Ok((Some(batch), plan));
        }
        let rows = UInt32Array::from_iter_values(plan.write.iter().map(|(r, _, _)| *r));
        let kept = arrow_select::take::take_record_batch(&batch, &rows)
            .map_err(|e| unsupported(table, format!("selecting rows: {e}")))?;
        Ok((Some(kept), plan))
    }

    /// Completes a plan: its rows were written to the end of the file at `position` (file,
    /// rows in it), or there were none.
    pub(super) fn written(
        &mut self,
        plan: BatchPlan,
        position: Option<(String, usize)>,
    ) -> Result<(), WorkerError> {
        let index = self
            .index
            .as_mut()
            .expect("the index is loaded before changes");
        match position {
            Some((file, end)) if !plan.write.is_empty() => {
                let start = (end - plan.write.len()) as u64;
                let file: Arc<str> = Arc::from(file);
                index.written(&plan.write, &file, start);
                self.written.insert(file);
            }
            None if plan.write.is_empty() => {}
            _ => {
                return Err(WorkerError::Write {
                    what: "locate",
                    source: Box::new(iceberg::Error::new(
                        iceberg::ErrorKind::Unexpected,
                        "rows were written but the writer cannot say where",
                    )),
                });
            }
        }
        Ok(())
    }

    /// At a barrier: the key columns of the keys that need an equality delete (None: none);
    /// the checkpoint's rows outside the index are forgotten.
    pub(super) fn end_checkpoint(
        &mut self,
        table: &str,
    ) -> Result<Option<RecordBatch>, WorkerError> {
        if let Some(index) = self.index.as_mut() {
            index.end_checkpoint();
        }
        self.written.clear();
        if self.equality.is_empty() {
            return Ok(None);
        }
        let keys: Vec<Box<[u8]>> = self.equality.drain().collect();
        self.encoder
            .decode(&keys)
            .map(Some)
            .map_err(|e| unsupported(table, format!("decoding keys: {e}")))
    }

    /// Forgets everything since the last barrier; the index is read again before next use.
    pub(super) fn reset(&mut self) {
        self.events.clear();
        self.deletes.clear();
        self.written.clear();
        self.equality.clear();
        self.index = None;
        self.stale = false;
    }
}

impl Sinks {
    /// Applies one change record of Kafka `partition` to upsert table `table`.
    #[allow(clippy::too_many_arguments)]
    pub(in crate::control::worker) fn push_change(
        &mut self,
        rt: &tokio::runtime::Runtime,
        partition: i32,
        table: &str,
        rule: Option<usize>,
        change: Change<'_>,
        next_checkpoint: u64,
    ) -> Result<Result<(), RecordError>, WorkerError> {
        let sample = match change {
            Change::Skip => return Ok(Ok(())),
            Change::Upsert { after, .. } => after,
            Change::Delete { key } => key,
        };
        if !self.sinks.contains_key(table)
            && let Err(e) = self.open_sink(rt, table, rule, Sample::Json(sample))?
        {
            return Ok(Err(e));
        }
        self.load_index(rt, table)?;
        let state = self.upsert_state(table);
        match change {
            Change::Skip => unreachable!("returned above"),
            Change::Delete { key } => {
                let key = match state.key_of(key) {
                    Ok(k) => k,
                    Err(e) => return Ok(Err(e)),
                };
                state.events.push(Event::Delete { key, partition });
                state.stats.deletes += 1;
            }
            Change::Upsert { after, before } => {
                let old = match before.map(|b| state.key_of(b)).transpose() {
                    Ok(k) => k,
                    Err(e) => return Ok(Err(e)),
                };
                if let Err(e) = self.convert_json(rt, table, after, next_checkpoint)? {
                    return Ok(Err(e));
                }
                let rows = self.sinks[table].batcher.rows();
                let state = self.upsert_state(table);
                if let Some(key) = old {
                    // Before the new row: when the key did not change, the row replaces it.
                    state.events.push(Event::Delete { key, partition });
                }
                let row = u32::try_from(rows - 1).expect("batches are small");
                state.events.push(Event::Row { row, partition });
                state.stats.upserts += 1;
            }
        }
        self.appended(rt, table, next_checkpoint)
    }

    fn upsert_state(&mut self, table: &str) -> &mut UpsertState {
        self.sinks
            .get_mut(table)
            .and_then(|s| s.upsert.as_deref_mut())
            .expect("upsert tables have an upsert part")
    }

    /// Reads `table`'s key index from the table when it is not loaded.
    pub(super) fn load_index(
        &mut self,
        rt: &tokio::runtime::Runtime,
        table: &str,
    ) -> Result<(), WorkerError> {
        let state = self.upsert_state(table);
        if state.index.is_some() && !state.stale {
            return Ok(());
        }
        if state.mode == DeleteMode::Equality {
            // Nothing to read: equality mode holds only the checkpoint's own rows.
            state.index.get_or_insert_with(KeyIndex::equality);
            state.stale = false;
            return Ok(());
        }
        let max_bytes = state.max_index_bytes;
        let started = std::time::Instant::now();
        let loaded = rt.block_on(self.tables.load(table))?;
        let primary_key = self.primary_key.clone().unwrap_or_default();
        let worker = self.worker;
        let state = self.upsert_state(table);
        let rebuilt = rt
            .block_on(rebuild::rebuild(
                &loaded,
                &state.encoder,
                &primary_key,
                max_bytes,
            ))
            .map_err(|e| unsupported(table, e.to_string()))?;
        if rebuilt.duplicates > 0 {
            tracing::warn!(
                %table,
                keys = rebuilt.duplicates,
                "keys found on more than one live row (changes of one key came from several \
                 Kafka partitions); the newest row is kept in the index"
            );
        }
        self.metrics
            .upsert
            .index_read
            .observe(started.elapsed().as_secs_f64());
        let state = self.upsert_state(table);
        tracing::info!(
            worker,
            %table,
            keys = rebuilt.index.len(),
            bytes = rebuilt.index.memory_bytes(),
            ms = started.elapsed().as_secs_f64() * 1000.0,
            "key index read from the table"
        );
        // The table holds what was committed; this checkpoint's own changes come from the
        // index being replaced.
        let index = match state.index.take() {
            Some(old) => old.carry_into(rebuilt.index, &state.written, &state.deletes),
            None => rebuilt.index,
        };
        state.index = Some(index);
        state.stale = false;
        Ok(())
    }

    /// Per upsert table, its counts since the last call (and the index's size).
    pub(in crate::control::worker) fn take_upsert_stats(&mut self) -> Vec<(&str, UpsertStats)> {
        self.sinks
            .iter_mut()
            .filter_map(|(t, s)| {
                let state = s.upsert.as_deref_mut()?;
                let mut stats = std::mem::take(&mut state.stats);
                stats.index = state.index.as_ref().map(|i| (i.len(), i.memory_bytes()));
                Some((t.as_str(), stats))
            })
            .collect()
    }

    /// Marks `table`'s index to be read again from the table before its next change.
    pub(in crate::control::worker) fn reload_index(&mut self, table: &str) {
        if let Some(state) = self
            .sinks
            .get_mut(table)
            .and_then(|s| s.upsert.as_deref_mut())
        {
            state.stale = true;
        }
    }

    /// Forgets every upsert table's index (partitions were assigned: keys they changed while
    /// another worker owned them are only in the table, which holds everything up to the last
    /// barrier; the current index brings it past that).
    pub(in crate::control::worker) fn reload_indexes(&mut self) {
        for sink in self.sinks.values_mut() {
            if let Some(state) = sink.upsert.as_deref_mut() {
                state.stale = true;
            }
        }
    }
}
