//! Avro records into a worker's tables: the value's schema id is looked up in the registry
//! (cached), a table created on first use takes its columns from the subject's newest schema
//! (or the record's own), and each writer schema is compared with the table's schema once:
//! what it adds or widens is evolved before its first record is converted.

use std::sync::Arc;

use crate::{
    decode,
    evolve::{self, Observation, Sample},
    source::registry::{RegistryError, WriterSchema},
};

use super::{RecordError, Sinks, WorkerError};

impl Sinks {
    /// [`Sinks::push`] for Avro records.
    pub(super) fn push_avro(
        &mut self,
        rt: &tokio::runtime::Runtime,
        topic: &str,
        table: &str,
        rule: Option<usize>,
        payload: &[u8],
        next_checkpoint: u64,
    ) -> Result<Result<(), RecordError>, WorkerError> {
        let (id, datum) = match decode::frame(payload) {
            Ok(f) => f,
            Err(e) => return Ok(Err((e.kind, e.message))),
        };
        let registry = self.registry.as_mut().expect("Avro sinks have a registry");
        let writer = match rt.block_on(registry.schema(id)) {
            Ok(w) => w,
            Err(e @ RegistryError::NotFound { .. }) => {
                return Ok(Err(("unknown-schema", e.to_string())));
            }
            Err(e @ RegistryError::Unusable { .. }) => {
                return Ok(Err(("unusable-schema", e.to_string())));
            }
            Err(e) => return Err(WorkerError::Registry(e)),
        };
        if !self.sinks.contains_key(table) {
            let sample = self.creation_sample(rt, topic, rule, &writer)?;
            if let Err(e) = self.open_sink(rt, table, rule, Sample::Avro(&sample.writer))? {
                return Ok(Err(e));
            }
        }
        let sink = self.sinks.get(table).expect("opened above");
        if self.evolution.enabled && !sink.checked.contains(&id) {
            let hints = self.timestamp_hints(rule);
            let shape = match evolve::table_schema(&writer.writer, &hints) {
                Ok(s) => Arc::new(s),
                Err(e) => {
                    // Not a record, or a record no table can be made of (no mappable field,
                    // or too many nested fields).
                    let is_record = matches!(
                        writer.writer.resolve(&writer.writer.schema),
                        apache_avro::Schema::Record(_)
                    );
                    let kind = if is_record {
                        "unusable-schema"
                    } else {
                        "not-a-record"
                    };
                    return Ok(Err((kind, format!("schema id {id}: {e}"))));
                }
            };
            let observation = Observation::Writer(shape);
            if !evolve::decide(sink.factory.schema(), &observation, true).is_empty() {
                self.evolve(rt, table, &observation, next_checkpoint)?;
            }
            let sink = self.sinks.get_mut(table).expect("opened above");
            sink.checked.insert(id);
        }
        let sink = self.sinks.get_mut(table).expect("opened above");
        if let Err(e) = sink.batcher.push_avro(&writer.writer, datum) {
            return self.refuse(table, e);
        }
        self.appended(rt, table, next_checkpoint)
    }

    /// The schema a table created for this record would take its columns from: the newest
    /// version of the record's subject when the table definition lists no columns (and the
    /// subject has one), else the record's own.
    fn creation_sample(
        &mut self,
        rt: &tokio::runtime::Runtime,
        topic: &str,
        rule: Option<usize>,
        writer: &Arc<WriterSchema>,
    ) -> Result<Arc<WriterSchema>, WorkerError> {
        let infers = self
            .tables
            .create_definition(rule)
            .is_some_and(|c| c.schema.is_empty());
        if !infers {
            return Ok(writer.clone());
        }
        let registry = self.registry.as_mut().expect("Avro sinks have a registry");
        match rt.block_on(registry.latest(topic, writer)) {
            Ok(Some(latest)) => Ok(latest),
            Ok(None) => Ok(writer.clone()),
            Err(RegistryError::Unusable { id, reason }) => {
                tracing::warn!(id, %reason, "the subject's newest schema cannot be used; creating the table from the record's");
                Ok(writer.clone())
            }
            Err(e) => Err(WorkerError::Registry(e)),
        }
    }

    /// The `timestampFields` of the table definition that applies to route `rule`.
    fn timestamp_hints(&self, rule: Option<usize>) -> Vec<String> {
        self.tables
            .create_definition(rule)
            .map(|c| c.timestamp_fields.clone())
            .unwrap_or_default()
    }
}
