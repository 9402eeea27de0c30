//! The upsert commit: one `overwrite` snapshot per checkpoint adding its data files and the
//! position delete files that remove the rows its changes replace (Iceberg's row delta).
//! iceberg-rust 0.10 has no row-delta action and its `fast_append` refuses delete files, so
//! the snapshot is built here with the crate's public manifest writers and swapped in through
//! the catalog's compare-and-swap, pinned to the table version that was validated.

use std::collections::HashMap;

use iceberg::{
    TableIdent,
    spec::{
        DataFile, MAIN_BRANCH, ManifestFile, ManifestListWriter, ManifestWriterBuilder, Operation,
        Snapshot, SnapshotReference, SnapshotRetention, Summary, TableMetadataBuilder,
    },
    table::Table,
};

use super::TableError;
use crate::{
    failpoint,
    maintenance::{
        MaintenanceError,
        commit::{Cas, Swap, new_snapshot_id},
        files::manifest_list,
    },
};

/// What a row delta adds.
pub(super) struct RowDelta {
    /// New data files.
    pub data: Vec<DataFile>,
    /// New position delete files.
    pub deletes: Vec<DataFile>,
    /// Rows the delete files delete.
    pub deleted_rows: u64,
    /// The tidewater summary properties.
    pub properties: HashMap<String, String>,
}

/// Summary counts of a row delta, with totals carried from the parent's summary.
fn summary(parent: Option<&Snapshot>, delta: &RowDelta) -> Summary {
    let mut props = delta.properties.clone();
    let rows: u64 = delta.data.iter().map(DataFile::record_count).sum();
    let bytes: u64 = delta
        .data
        .iter()
        .chain(&delta.deletes)
        .map(DataFile::file_size_in_bytes)
        .sum();
    let added = [
        ("added-data-files", delta.data.len() as u64),
        ("added-records", rows),
        ("added-delete-files", delta.deletes.len() as u64),
        ("added-position-delete-files", delta.deletes.len() as u64),
        ("added-position-deletes", delta.deleted_rows),
        ("added-files-size", bytes),
    ];
    let prev = parent.map(|p| &p.summary().additional_properties);
    for (key, n) in added {
        props.insert(key.into(), n.to_string());
    }
    let totals = [
        ("total-data-files", delta.data.len() as u64),
        ("total-records", rows),
        ("total-delete-files", delta.deletes.len() as u64),
        ("total-position-deletes", delta.deleted_rows),
        ("total-files-size", bytes),
        ("total-equality-deletes", 0),
    ];
    for (key, plus) in totals {
        let before = prev
            .and_then(|p| p.get(key))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        props.insert(key.into(), (before + plus).to_string());
    }
    Summary {
        operation: Operation::Overwrite,
        additional_properties: props,
    }
}

/// Writes the row delta's manifests, manifest list and metadata on top of `table` (the
/// validated version) and swaps it in: the snapshot id, and the table's data and delete files
/// after it. `Ok(None)`: the table moved first (nothing changed).
pub(super) async fn commit_row_delta(
    cas: &Cas,
    ident: &TableIdent,
    table: &Table,
    delta: RowDelta,
) -> Result<Option<(i64, (u64, u64))>, TableError> {
    let meta = table.metadata();
    let io = table.file_io();
    let head = meta.current_snapshot();
    let snapshot_id = new_snapshot_id(meta);
    let sequence = meta.next_sequence_number();
    let location = meta.location();
    let mut manifests: Vec<ManifestFile> = match head {
        Some(h) => manifest_list(io, meta, h).await?.entries().to_vec(),
        None => Vec::new(),
    };
    let prefix = uuid::Uuid::now_v7();
    let spec = (**meta.default_partition_spec()).clone();
    let schema = meta.current_schema().clone();
    if !delta.data.is_empty() {
        let out = io.new_output(format!("{location}/metadata/{prefix}-m0.avro"))?;
        let mut w =
            ManifestWriterBuilder::new(out, Some(snapshot_id), schema.clone(), spec.clone())
                .build_v2_data();
        for f in &delta.data {
            w.add_file(f.clone(), sequence)?;
        }
        manifests.push(w.write_manifest_file().await?);
    }
    if !delta.deletes.is_empty() {
        let out = io.new_output(format!("{location}/metadata/{prefix}-m1.avro"))?;
        let mut w =
            ManifestWriterBuilder::new(out, Some(snapshot_id), schema, spec).build_v2_deletes();
        for f in &delta.deletes {
            // Same sequence number as the rows added with it: a position delete applies to
            // data files up to its own sequence number, so it also removes rows this
            // checkpoint wrote and replaced.
            w.add_file(f.clone(), sequence)?;
        }
        manifests.push(w.write_manifest_file().await?);
    }
    let list_path = format!("{location}/metadata/snap-{snapshot_id}-1-{prefix}.avro");
    let mut list = ManifestListWriter::v2(
        io.new_output(&list_path)?.writer().await?,
        snapshot_id,
        head.map(|h| h.snapshot_id()),
        sequence,
    );
    list.add_manifests(manifests.into_iter())?;
    list.close().await?;
    let now = chrono::Utc::now().timestamp_millis();
    let summary = summary(head.map(|h| &**h), &delta);
    let total = |key: &str| {
        summary
            .additional_properties
            .get(key)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let files = (total("total-data-files"), total("total-delete-files"));
    let snapshot = Snapshot::builder()
        .with_snapshot_id(snapshot_id)
        .with_parent_snapshot_id(head.map(|h| h.snapshot_id()))
        .with_sequence_number(sequence)
        .with_timestamp_ms(head.map_or(now, |h| now.max(h.timestamp_ms() + 1)))
        .with_manifest_list(list_path)
        .with_summary(summary)
        .with_schema_id(meta.current_schema_id())
        .build();
    let next = TableMetadataBuilder::new_from_metadata(
        meta.clone(),
        table.metadata_location().map(str::to_string),
    )
    .add_snapshot(snapshot)?
    .set_ref(
        MAIN_BRANCH,
        SnapshotReference::new(snapshot_id, SnapshotRetention::branch(None, None, None)),
    )?
    .build()?;
    failpoint::hit(failpoint::points::MID_COMMIT);
    match cas.swap(ident, table, next).await {
        Ok(Swap::Committed) => Ok(Some((snapshot_id, files))),
        Ok(Swap::Conflict) => Ok(None),
        // Landed or not: the caller reloads and validates again, which tells.
        Err(MaintenanceError::CommitUnknown(reason)) => {
            tracing::warn!(%reason, "row delta commit state unknown; validating again");
            Ok(None)
        }
        Err(e) => Err(TableError::Swap(e.to_string())),
    }
}
