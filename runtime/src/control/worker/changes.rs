//! Upsert mode's records: what each one changes (a Debezium envelope, a row with or without a
//! delete marker, a tombstone), handed to the table's upsert sink; malformed ones are
//! dead-lettered with the reason.

use rdkafka::{Message, message::BorrowedMessage};

use crate::decode::change::{self, Change};

use super::{State, WorkerError};

/// How upsert records are read.
pub(super) enum ChangeFormat {
    /// Debezium envelopes; tombstones are skipped.
    Debezium,
    /// Each record is the key's new row; a marker field or a tombstone with a JSON key is a
    /// delete.
    Rows {
        /// The delete marker field.
        delete_field: Option<String>,
    },
}

impl State {
    /// [`Self::on_message`] in upsert mode.
    pub(super) fn on_change(&mut self, m: &BorrowedMessage<'_>) -> Result<(), WorkerError> {
        let format = self.changes.as_ref().expect("upsert mode");
        let decoded = match (m.payload(), format) {
            (None, ChangeFormat::Debezium) => Ok(Change::Skip),
            (None, ChangeFormat::Rows { .. }) => match m.key() {
                Some(key) => Ok(Change::Delete { key }),
                None => Err((
                    "no-value",
                    "record has neither value nor key: nothing says which row it deletes"
                        .to_string(),
                )),
            },
            (Some(p), _) if p.len() > self.max_record_bytes => Err((
                "oversize",
                format!(
                    "value of {} bytes exceeds maxRecordBytes {}",
                    p.len(),
                    self.max_record_bytes
                ),
            )),
            (Some(p), ChangeFormat::Debezium) => {
                change::debezium(p).map_err(|e| (e.kind, e.message))
            }
            (
                Some(p),
                ChangeFormat::Rows {
                    delete_field: Some(f),
                },
            ) => change::marked(p, f).map_err(|e| (e.kind, e.message)),
            (Some(p), ChangeFormat::Rows { delete_field: None }) => Ok(Change::Upsert {
                after: p,
                before: None,
            }),
        };
        let mut table = None;
        let result = match decoded {
            Err(e) => Err(e),
            Ok(Change::Skip) => {
                self.epoch.skipped += 1;
                Ok(())
            }
            Ok(change) => match self.routing.target(m) {
                Err(reason) => Err(("unroutable", reason)),
                Ok(target) => {
                    let pushed = self.sinks.push_change(
                        &self.rt,
                        m.partition(),
                        &target.table,
                        target.rule,
                        change,
                        self.last_barrier + 1,
                    )?;
                    if pushed.is_err() {
                        table = Some(target.table.into_owned());
                    } else {
                        self.epoch.rows += 1;
                    }
                    pushed
                }
            },
        };
        if let Err((kind, message)) = result {
            self.dead_letter(m, kind, &message)?;
            if let Some(table) = table {
                *self.epoch.dead_by_table.entry((table, kind)).or_default() += 1;
            }
        }
        self.advance(m);
        Ok(())
    }

    /// The record's partition continues after it.
    fn advance(&mut self, m: &BorrowedMessage<'_>) {
        if let Some(next) = self
            .owned
            .get_mut(m.topic())
            .and_then(|p| p.get_mut(&m.partition()))
        {
            *next = m.offset() + 1;
        }
    }
}
