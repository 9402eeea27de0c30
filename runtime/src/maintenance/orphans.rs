//! Orphan removal: files under the table location that no snapshot and no pipeline's checkpoint
//! record references, older than the grace period.

use super::{Maintenance, MaintenanceError, files, millis, now_ms};
use crate::{
    checkpoint::{SUMMARY_PIPELINE_UID, SUMMARY_STATE_LOCATION, store::StateStore},
    storage,
};
use iceberg::{TableIdent, spec::TableMetadata};
use std::{
    collections::{BTreeMap, BTreeSet},
    time::SystemTime,
};
use tidewater_crds::compaction::TableReport;

/// Every file under `location` with its modification time (ms).
async fn list_files(
    location: &str,
    s3_props: &BTreeMap<String, String>,
) -> Result<Vec<(String, i64)>, MaintenanceError> {
    if let Some(path) = location
        .strip_prefix("file://")
        .or_else(|| location.starts_with('/').then_some(location))
    {
        let mut out = Vec::new();
        let mut stack = vec![std::path::PathBuf::from(path)];
        while let Some(dir) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            for entry in entries {
                let entry = entry?;
                let meta = entry.metadata()?;
                if meta.is_dir() {
                    stack.push(entry.path());
                } else {
                    let modified = meta
                        .modified()?
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map(millis)
                        .unwrap_or(0);
                    let p = entry.path().display().to_string();
                    let p = if location.starts_with("file://") {
                        format!("file://{p}")
                    } else {
                        p
                    };
                    out.push((p, modified));
                }
            }
        }
        return Ok(out);
    }
    let (bucket, prefix) = storage::split_s3(location)
        .ok_or_else(|| MaintenanceError::Catalog(format!("cannot list {location}")))?;
    let op = storage::s3_operator(bucket, s3_props)
        .map_err(|e| MaintenanceError::Catalog(format!("list {location}: {e}")))?;
    let bucket_root = format!("s3://{bucket}");
    let entries = op
        .list_with(&format!("{prefix}/"))
        .recursive(true)
        .await
        .map_err(|e| MaintenanceError::Catalog(format!("list {location}: {e}")))?;
    let mut out = Vec::new();
    for e in entries {
        if e.metadata().is_dir() {
            continue;
        }
        let meta = op
            .stat(e.path())
            .await
            .map_err(|err| MaintenanceError::Catalog(format!("stat {}: {err}", e.path())))?;
        let modified = meta
            .last_modified()
            .map(|t| t.into_inner().as_millisecond())
            .unwrap_or(0);
        out.push((format!("{bucket_root}/{}", e.path()), modified));
    }
    Ok(out)
}

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
        let listed = list_files(&location, &self.s3_props).await?;
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
