//! Orphan removal: files under the table location that no snapshot and no pipeline's checkpoint
//! record references, older than the grace period.

use std::collections::{BTreeMap, BTreeSet};

use iceberg::{TableIdent, spec::TableMetadata};
use tidewater_crds::compaction::TableReport;

use super::{Maintenance, MaintenanceError, files, now_ms};
use crate::{
    checkpoint::{SUMMARY_PIPELINE_UID, SUMMARY_STATE_LOCATION, store::StateStore},
    storage,
};

impl Maintenance {
    /// Deletes files under the table location older than `older_ms` that no snapshot, no
    /// metadata file and no pipeline checkpoint record references.
    pub(super) async fn remove_orphans(
        &self,
        ident: &TableIdent,
        older_ms: i64,
        report: &mut TableReport,
    ) -> Result<(), MaintenanceError> {
        // Listing first: a file written after it is never a candidate.
        let table = self.catalog.load_table(ident).await?;
        let location = table
            .metadata()
            .location()
            .trim_end_matches('/')
            .to_string();
        let options = storage::ListOptions {
            recursive: true,
            modified: true,
        };
        let listed: Vec<(String, i64)> = storage::list(&location, &self.s3_props, options)
            .await
            .map_err(|e| MaintenanceError::Catalog(e.to_string()))?
            .into_iter()
            .map(|f| (f.uri, f.modified_ms))
            .collect();
        let table = self.catalog.load_table(ident).await?;
        let meta = table.metadata();
        let io = table.file_io();
        let mut referenced = BTreeSet::new();
        let mut seen = BTreeSet::new();
        for s in meta.snapshots() {
            files::referenced(io, meta, s, &mut seen, &mut referenced).await?;
        }
        if let Some(m) = table.metadata_location() {
            referenced.insert(m.to_string());
        }
        for log in meta.metadata_log() {
            referenced.insert(log.metadata_file.clone());
        }
        for s in meta.statistics_iter() {
            referenced.insert(s.statistics_path.clone());
        }
        for s in meta.partition_statistics_iter() {
            referenced.insert(s.statistics_path.clone());
        }
        referenced.extend(self.checkpoint_files(meta).await?);
        let cutoff = now_ms() - older_ms;
        for (path, modified_ms) in listed {
            if modified_ms >= cutoff || referenced.contains(&path) {
                continue;
            }
            if path.ends_with("version-hint.text") {
                continue;
            }
            io.delete(&path).await?;
            report.orphans_removed += 1;
        }
        Ok(())
    }

    /// Files named by any durable checkpoint record of the pipelines that commit to the table
    /// (found through the `tidewater.state-location` of their snapshots).
    pub(super) async fn checkpoint_files(
        &self,
        meta: &TableMetadata,
    ) -> Result<BTreeSet<String>, MaintenanceError> {
        let mut stores: BTreeMap<String, String> = BTreeMap::new();
        for s in meta.snapshots() {
            let p = &s.summary().additional_properties;
            if let (Some(uid), Some(loc)) =
                (p.get(SUMMARY_PIPELINE_UID), p.get(SUMMARY_STATE_LOCATION))
            {
                stores.insert(loc.clone(), uid.clone());
            }
        }
        let mut out = BTreeSet::new();
        for (location, uid) in stores {
            let store = StateStore::open(&location, &self.s3_props)
                .map_err(|e| MaintenanceError::Catalog(format!("state store {location}: {e}")))?;
            let records = store
                .load_all(&uid)
                .await
                .map_err(|e| MaintenanceError::Catalog(format!("state store {location}: {e}")))?;
            for r in records {
                for plan in r.commits.values() {
                    for file in &plan.data_files {
                        // Never guess: a record whose files cannot be named stops the run.
                        let path = file.path().map_err(|e| {
                            MaintenanceError::Catalog(format!(
                                "checkpoint record {} of {uid}: {e}",
                                r.checkpoint_id
                            ))
                        })?;
                        out.insert(path);
                    }
                }
            }
        }
        Ok(out)
    }
}
