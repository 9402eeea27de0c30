//! The Iceberg side: opening the catalog, creating the table on first use, and the
//! exactly-once commit (validated against the table's history, pinned to the version that
//! was validated, never rebased).

use std::collections::HashMap;

use iceberg::{
    Catalog, ErrorKind, TableIdent,
    transaction::{ApplyTransactionAction, Transaction},
};

use crate::{
    checkpoint::{
        CheckpointRecord, CommitDecision, SUMMARY_CHECKPOINT_ID, SUMMARY_MODE, SUMMARY_OFFSETS,
        SUMMARY_PIPELINE_UID, SUMMARY_RUN_ID, SUMMARY_STATE_LOCATION, decide_commit,
    },
    failpoint,
};

mod catalog;
mod create;
mod evolve;
mod history;
mod pinned;
mod row_delta;
mod translate;

use crate::maintenance::commit::Cas;
pub use catalog::open_catalog;
pub(crate) use catalog::{client_trusting, read_catalog_secret};
pub use create::{
    PipelineCatalog, load_or_create, open_pipeline_catalog, open_table, parse_ident,
    table_definition,
};
pub use evolve::evolve_table;
pub use history::last_pipeline_commit;
use pinned::PinnedCatalog;

/// Errors of the Iceberg side.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// The catalog or file IO failed.
    #[error("iceberg: {0}")]
    Iceberg(#[from] iceberg::Error),
    /// Object storage settings.
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    /// The table could not be loaded.
    #[error("load table {table}: {source}")]
    Load {
        /// The table, as the spec names it.
        table: String,
        /// Why (boxed: iceberg's error is large).
        source: Box<iceberg::Error>,
    },
    /// The table is missing and there is no definition to create it.
    #[error("table {0} does not exist and spec.sink.createTable is not set")]
    Missing(String),
    /// The spec's table definition cannot be turned into an Iceberg schema.
    #[error("spec.sink.createTable: {0}")]
    Definition(String),
    /// The table's columns are inferred from its first record, which has not arrived.
    #[error("table {0} is created from its first record")]
    NeedsRecord(String),
    /// Another writer with the same pipeline uid moved the table: this writer must stop.
    #[error("fenced: {0}")]
    Fenced(String),
    /// A schema change could not be committed.
    #[error("schema evolution: {0}")]
    Evolve(String),
    /// The catalog's compare-and-swap of a row delta failed (retried).
    #[error("commit: {0}")]
    Swap(String),
    /// The table history has a tidewater summary that cannot be read.
    #[error("table history: {0}")]
    History(String),
}

/// Result of committing one checkpoint to one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    /// A new snapshot was committed.
    Committed {
        /// Its id.
        snapshot_id: i64,
        /// Row deltas: the table's data files and delete files after the commit (read
        /// amplification is their ratio).
        files: Option<(u64, u64)>,
        /// Row deltas: the newest compaction that moved rows (its snapshot id): workers whose
        /// key index is older must read it again.
        rewritten: Option<i64>,
    },
    /// The table already held this checkpoint.
    AlreadyCommitted {
        /// The snapshot holding it.
        snapshot_id: i64,
    },
}

impl CommitOutcome {
    /// The snapshot that holds the checkpoint.
    pub fn snapshot_id(self) -> i64 {
        match self {
            Self::Committed { snapshot_id, .. } | Self::AlreadyCommitted { snapshot_id } => {
                snapshot_id
            }
        }
    }
}

/// Commits the files of `record` for `table_key` exactly once.
///
/// Each attempt loads the table, checks with [`decide_commit`] that the table's newest commit
/// of this pipeline is exactly where the record starts, and commits pinned to that version.
/// When any other writer changed the table in between, the attempt fails instead of rebasing
/// and the next attempt validates again.
///
/// A checkpoint with delete files (upsert mode) is committed as a row delta through `swap`,
/// the catalog's compare-and-swap, with the same validation.
pub async fn commit_checkpoint(
    catalog: &dyn Catalog,
    swap: Option<&Cas>,
    ident: &TableIdent,
    table_key: &str,
    record: &CheckpointRecord,
    state_location: &str,
) -> Result<CommitOutcome, TableError> {
    let plan = record
        .commits
        .get(table_key)
        .ok_or_else(|| TableError::History(format!("checkpoint has no files for {table_key}")))?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let table = catalog.load_table(ident).await?;
        let last = last_pipeline_commit(table.metadata(), &record.pipeline_uid)?;
        match decide_commit(last.as_ref(), record, table_key) {
            CommitDecision::AlreadyCommitted { snapshot_id } => {
                return Ok(CommitOutcome::AlreadyCommitted { snapshot_id });
            }
            CommitDecision::Fenced { reason } => return Err(TableError::Fenced(reason)),
            CommitDecision::Commit => {}
        }
        let metadata = table.metadata();
        let schema = metadata.current_schema();
        let spec = metadata
            .partition_spec_by_id(plan.partition_spec_id)
            .ok_or_else(|| {
                TableError::History(format!("partition spec {} is gone", plan.partition_spec_id))
            })?;
        let partition_type = spec.partition_type(schema)?;
        let decode = |refs: &[crate::write::DataFileRef]| {
            refs.iter()
                .map(|f| f.decode(plan.partition_spec_id, &partition_type, schema))
                .collect::<Result<Vec<_>, _>>()
        };
        let files = decode(&plan.data_files)?;
        let properties = HashMap::from([
            (
                SUMMARY_PIPELINE_UID.to_string(),
                record.pipeline_uid.clone(),
            ),
            (
                SUMMARY_CHECKPOINT_ID.to_string(),
                record.checkpoint_id.to_string(),
            ),
            (
                SUMMARY_OFFSETS.to_string(),
                serde_json::to_string(&record.offsets).expect("offsets serialize"),
            ),
            (SUMMARY_RUN_ID.to_string(), record.run_id.clone()),
            (
                SUMMARY_STATE_LOCATION.to_string(),
                state_location.to_string(),
            ),
        ]);
        if swap.is_none() && !plan.delete_files.is_empty() {
            return Err(TableError::History(format!(
                "checkpoint {} has delete files for {table_key} but the pipeline is not in \
                 upsert mode",
                record.checkpoint_id
            )));
        }
        // Upsert mode: every commit is a row delta marked as such (compaction reads the mark).
        if let Some(swap) = swap {
            let mut properties = properties;
            properties.insert(SUMMARY_MODE.to_string(), "upsert".to_string());
            let (maps, rewritten) = translate::position_maps(&table).await?;
            let prefix = format!(
                "{}-c{}-moved-{}",
                record.run_id,
                record.checkpoint_id,
                uuid::Uuid::now_v7().simple()
            );
            let (deletes, deleted_rows) =
                translate::translate_deletes(&table, &maps, decode(&plan.delete_files)?, &prefix)
                    .await?;
            let delta = row_delta::RowDelta {
                data: files,
                deletes,
                deleted_rows,
                properties,
            };
            match row_delta::commit_row_delta(swap, ident, &table, delta).await? {
                Some((snapshot_id, files)) => {
                    failpoint::hit(failpoint::points::AFTER_COMMIT);
                    return Ok(CommitOutcome::Committed {
                        snapshot_id,
                        files: Some(files),
                        rewritten,
                    });
                }
                None if attempt < 10 => {
                    tracing::info!(attempt, "table changed during commit; validating again");
                    continue;
                }
                None => {
                    return Err(TableError::Swap(format!(
                        "{table_key} kept changing during {attempt} commit attempts"
                    )));
                }
            }
        }
        let tx = Transaction::new(&table);
        let tx = tx
            .fast_append()
            // Unique file names make the duplicate scan (cost grows with history) unnecessary.
            .with_check_duplicate(false)
            .add_data_files(files)
            .set_snapshot_properties(properties)
            .apply(tx)?;
        let pinned = PinnedCatalog {
            inner: catalog,
            pinned: table.clone(),
        };
        match tx.commit(&pinned).await {
            Ok(committed) => {
                failpoint::hit(failpoint::points::AFTER_COMMIT);
                let snapshot_id = committed
                    .metadata()
                    .current_snapshot_id()
                    .ok_or_else(|| TableError::History("commit left no current snapshot".into()))?;
                return Ok(CommitOutcome::Committed {
                    snapshot_id,
                    files: None,
                    rewritten: None,
                });
            }
            Err(e) if e.kind() == ErrorKind::CatalogCommitConflicts && attempt < 10 => {
                tracing::info!(attempt, error = %e, "table changed during commit; validating again");
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use iceberg::spec::{PrimitiveType, Transform as T, Type};
    use tidewater_crds::pipeline::{ColumnSpec, CreateTableSpec};

    use super::*;

    fn column(name: &str, ty: &str, required: bool) -> ColumnSpec {
        ColumnSpec {
            name: name.into(),
            column_type: ty.into(),
            required,
            doc: None,
        }
    }

    #[test]
    fn table_definition_assigns_ids_types_and_transforms() {
        let create = CreateTableSpec {
            schema: vec![
                column("id", "long", true),
                column("ts", "timestamptz", false),
                column("name", "string", false),
                column("price", "decimal(10,2)", false),
            ],
            partition_by: vec![
                "day(ts)".into(),
                "bucket(16, id)".into(),
                "truncate(3, name)".into(),
                "name".into(),
            ],
            properties: Default::default(),
            sort_by: vec![],
            format_version: None,
            timestamp_fields: vec![],
        };
        let (schema, spec) = table_definition(&create).unwrap();
        let id = schema.field_by_name("id").unwrap();
        assert_eq!((id.id, id.required), (1, true));
        let price = schema.field_by_name("price").unwrap();
        assert_eq!(price.id, 4);
        assert_eq!(
            *price.field_type,
            Type::Primitive(PrimitiveType::Decimal {
                precision: 10,
                scale: 2
            })
        );
        let fields: Vec<(i32, String, T)> = spec
            .fields()
            .iter()
            .map(|f| (f.source_id, f.name.clone(), f.transform))
            .collect();
        assert_eq!(
            fields,
            vec![
                (2, "ts_day".into(), T::Day),
                (1, "id_bucket".into(), T::Bucket(16)),
                (3, "name_trunc".into(), T::Truncate(3)),
                (3, "name".into(), T::Identity),
            ]
        );
    }

    #[test]
    fn the_newest_commit_of_the_pipeline_is_found_in_the_history() {
        use iceberg::spec::{Operation, Snapshot, SortOrder, Summary, TableMetadataBuilder};
        let create = CreateTableSpec {
            schema: vec![column("id", "long", true)],
            partition_by: vec![],
            properties: Default::default(),
            sort_by: vec![],
            format_version: None,
            timestamp_fields: vec![],
        };
        let (schema, spec) = table_definition(&create).unwrap();
        let mut builder = TableMetadataBuilder::new(
            schema.clone(),
            spec.bind(schema).unwrap(),
            SortOrder::unsorted_order(),
            "file:///tmp/t".into(),
            iceberg::spec::FormatVersion::V2,
            HashMap::new(),
        )
        .unwrap();
        let empty = builder.clone().build().unwrap().metadata;
        assert_eq!(last_pipeline_commit(&empty, "uid").unwrap(), None);
        let now = chrono::Utc::now().timestamp_millis();
        let ours = |ckpt: &str, offset: &str| {
            HashMap::from([
                (SUMMARY_PIPELINE_UID.to_string(), "uid".to_string()),
                (SUMMARY_CHECKPOINT_ID.to_string(), ckpt.to_string()),
                (
                    SUMMARY_OFFSETS.to_string(),
                    format!(r#"{{"t":{{"0":{offset}}}}}"#),
                ),
            ])
        };
        // Two commits of ours, then one of another pipeline, then one without properties
        // (e.g. maintenance).
        let summaries = [
            ours("1", "5"),
            ours("2", "9"),
            HashMap::from([(SUMMARY_PIPELINE_UID.to_string(), "other".to_string())]),
            HashMap::new(),
        ];
        for (i, props) in summaries.into_iter().enumerate() {
            let id = i64::try_from(i).unwrap() + 1;
            let snapshot = Snapshot::builder()
                .with_snapshot_id(id)
                .with_parent_snapshot_id((id > 1).then_some(id - 1))
                .with_sequence_number(id)
                .with_timestamp_ms(now + id)
                .with_manifest_list(format!("file:///tmp/t/metadata/snap-{id}.avro"))
                .with_schema_id(0)
                .with_summary(Summary {
                    operation: Operation::Append,
                    additional_properties: props,
                })
                .build();
            builder = builder.set_branch_snapshot(snapshot, "main").unwrap();
        }
        let metadata = builder.build().unwrap().metadata;
        let found = last_pipeline_commit(&metadata, "uid").unwrap().unwrap();
        assert_eq!((found.snapshot_id, found.checkpoint_id), (2, 2));
        assert_eq!(crate::offsets::get_offset(&found.offsets, "t", 0), Some(9));
        // A tidewater summary without its checkpoint id is reported, not skipped.
        let err = last_pipeline_commit(&metadata, "other")
            .unwrap_err()
            .to_string();
        assert!(err.contains("snapshot 3: no checkpoint id"), "{err}");
    }
}
