//! Snapshot expiry: snapshots older than the retention (the newest ones and every ref kept) are
//! removed, with the files only they used.

use super::commit::Swap;
use super::{COMMIT_ATTEMPTS, Maintenance, MaintenanceError, files, now_ms};
use iceberg::{
    TableIdent,
    spec::{TableMetadata, TableMetadataBuilder},
};
use std::collections::{BTreeSet, HashSet};
use tidewater_crds::compaction::TableReport;

/// Snapshots that a branch or tag points at (iceberg-rust keeps `refs` private; the
/// serialized metadata has them).
fn ref_snapshots(meta: &TableMetadata) -> HashSet<i64> {
    let json = serde_json::to_value(meta).unwrap_or_default();
    let mut out: HashSet<i64> = json["refs"]
        .as_object()
        .map(|refs| {
            refs.values()
                .filter_map(|r| r["snapshot-id"].as_i64())
                .collect()
        })
        .unwrap_or_default();
    out.extend(meta.current_snapshot_id());
    out
}

impl Maintenance {
    /// Expires snapshots older than `older_ms` beyond the newest `retain` of the main branch,
    /// then deletes the files only they referenced.
    pub(super) async fn expire(
        &self,
        ident: &TableIdent,
        older_ms: i64,
        retain: usize,
        report: &mut TableReport,
    ) -> Result<(), MaintenanceError> {
        for _ in 0..COMMIT_ATTEMPTS {
            let table = self.catalog.load_table(ident).await?;
            let meta = table.metadata();
            let io = table.file_io();
            let mut keep = ref_snapshots(meta);
            let mut cursor = meta.current_snapshot().cloned();
            for _ in 0..retain {
                let Some(s) = cursor else { break };
                keep.insert(s.snapshot_id());
                cursor = s
                    .parent_snapshot_id()
                    .and_then(|p| meta.snapshot_by_id(p).cloned());
            }
            let cutoff = now_ms() - older_ms;
            let expired: Vec<i64> = meta
                .snapshots()
                .filter(|s| !keep.contains(&s.snapshot_id()) && s.timestamp_ms() < cutoff)
                .map(|s| s.snapshot_id())
                .collect();
            if expired.is_empty() {
                return Ok(());
            }
            let (mut seen, mut retained) = (BTreeSet::new(), BTreeSet::new());
            for s in meta
                .snapshots()
                .filter(|s| !expired.contains(&s.snapshot_id()))
            {
                files::referenced(io, meta, s, &mut seen, &mut retained).await?;
            }
            let (mut seen_x, mut gone) = (BTreeSet::new(), BTreeSet::new());
            for s in meta
                .snapshots()
                .filter(|s| expired.contains(&s.snapshot_id()))
            {
                // A snapshot whose files are already gone adds nothing to delete.
                let _ = files::referenced(io, meta, s, &mut seen_x, &mut gone).await;
            }
            let next = TableMetadataBuilder::new_from_metadata(
                meta.clone(),
                table.metadata_location().map(str::to_string),
            )
            .remove_snapshots(&expired)
            .build()?;
            let swap = self
                .swap_or_check(ident, &table, next, |m| {
                    expired.iter().all(|id| m.snapshot_by_id(*id).is_none())
                })
                .await?;
            if swap == Swap::Conflict {
                continue;
            }
            report.snapshots_expired += expired.len() as u64;
            for path in gone.difference(&retained) {
                if io.delete(path).await.is_ok() {
                    report.expired_files_deleted += 1;
                }
            }
            return Ok(());
        }
        Err(MaintenanceError::Catalog(format!(
            "snapshot expiry gave up after {COMMIT_ATTEMPTS} conflicting commits"
        )))
    }
}
