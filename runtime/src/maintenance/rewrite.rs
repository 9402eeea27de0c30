//! Bin-pack rewrite: the planned groups of cold partitions are read (deletes applied) and written
//! again as files of about the target size, then committed as one `replace` snapshot.

use super::commit::Swap;
use super::plan::LiveFile;
use super::upsert::{EqualityDeletes, rewrite_group_mapped};
use super::{COMMIT_ATTEMPTS, Maintenance, MaintenanceError, files, now_ms, plan};
use crate::{upsert::position_map::PositionMap, write::WriterFactory};
use futures::StreamExt;
use iceberg::{
    TableIdent,
    spec::{DataFile, FormatVersion, ManifestContentType},
    table::Table,
};
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};
use tidewater_crds::compaction::TableReport;

/// Reads `tasks` (deletes applied) and writes them into files of about the target size.
async fn rewrite_group(
    table: &Table,
    factory: &WriterFactory,
    tasks: Vec<iceberg::scan::FileScanTask>,
) -> Result<Vec<DataFile>, MaintenanceError> {
    let mut batches = table
        .reader_builder()
        .build()
        .read(Box::pin(futures::stream::iter(tasks.into_iter().map(Ok))))?
        .stream();
    let mut writer = factory
        .open(format!("compact-{}", uuid::Uuid::now_v7()))
        .await?;
    while let Some(batch) = batches.next().await {
        writer.write(batch?).await?;
    }
    Ok(writer.close_files().await?)
}

/// The pipeline uid of the table's newest tidewater commit, if it was made in upsert mode.
fn upsert_writer(meta: &iceberg::spec::TableMetadata) -> Option<String> {
    use crate::checkpoint::{SUMMARY_MODE, SUMMARY_PIPELINE_UID};
    let mut snapshots: Vec<_> = meta.snapshots().collect();
    snapshots.sort_by_key(|s| std::cmp::Reverse(s.sequence_number()));
    let props = snapshots
        .into_iter()
        .map(|s| &s.summary().additional_properties)
        .find(|p| {
            p.contains_key(SUMMARY_PIPELINE_UID) && !p.contains_key("tidewater.compaction")
        })?;
    (props.get(SUMMARY_MODE).map(String::as_str) == Some("upsert"))
        .then(|| props[SUMMARY_PIPELINE_UID].clone())
}

impl Maintenance {
    /// Bin-pack rewrite of cold partitions (and manifest merging) in one `replace` commit.
    pub(super) async fn compact(
        &self,
        ident: &TableIdent,
        report: &mut TableReport,
    ) -> Result<(), MaintenanceError> {
        let started = std::time::Instant::now();
        let table = self.catalog.load_table(ident).await?;
        let meta = table.metadata();
        let Some(base) = meta.current_snapshot().cloned() else {
            return Ok(());
        };
        if meta.format_version() != FormatVersion::V2 {
            return Err(MaintenanceError::Policy(format!(
                "format version {} is not supported by compaction yet (v2 is)",
                meta.format_version()
            )));
        }
        // An upsert pipeline's key index points at rows by file and position: its table is
        // rewritten with a position map (maintenance/upsert.rs).
        let upsert = upsert_writer(meta);
        if let Some(pipeline) = &upsert
            && !meta.default_partition_spec().is_unpartitioned()
        {
            report.rewrite_skipped = Some(format!(
                "written in upsert mode by pipeline {pipeline} and partitioned: its data files \
                 are not rewritten; expiry and orphan removal still run"
            ));
            return Ok(());
        }
        let io = table.file_io();
        let list = files::manifest_list(io, meta, &base).await?;
        let entries = files::live_data_entries(io, list.entries()).await?;
        let data_manifests = list
            .entries()
            .iter()
            .filter(|m| m.content == ManifestContentType::Data)
            .count();
        let merge_manifests = self.policy.spec.rewrite_manifests
            && data_manifests > self.policy.spec.thresholds.max_manifests as usize;

        let tasks: Vec<iceberg::scan::FileScanTask> = table
            .scan()
            .snapshot_id(base.snapshot_id())
            .select_all()
            .build()?
            .plan_files()
            .await?
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        // An upsert table's equality deletes are applied by its rewrite (read once here).
        let equality = match &upsert {
            Some(_) => EqualityDeletes::read(&table, list.entries())
                .await?
                .map(Arc::new),
            None => None,
        };
        let sequence: Arc<HashMap<String, i64>> = Arc::new(
            entries
                .iter()
                .map(|e| (e.data_file.file_path().to_string(), e.sequence_number))
                .collect(),
        );
        let deletes: HashMap<&str, usize> = tasks
            .iter()
            .map(|t| (t.data_file_path.as_str(), t.deletes.len()))
            .collect();
        let times = files::snapshot_times(meta);
        let live: Vec<LiveFile> = entries
            .iter()
            .map(|e| LiveFile {
                path: e.data_file.file_path().to_string(),
                partition: files::partition_key(e.data_file.partition()),
                sort: files::partition_sort(e.data_file.partition()),
                spec_id: e.spec_id,
                size: e.data_file.file_size_in_bytes(),
                added_at_ms: times.get(&e.snapshot_id).copied().unwrap_or(0),
                deletes: deletes.get(e.data_file.file_path()).copied().unwrap_or(0),
            })
            .collect();
        // The hot-partition guard keeps rewrites away from files a pipeline still adds to;
        // an upsert pipeline changes rows anywhere, and what keeps its table correct is the
        // rebase of its deletes (maintenance/upsert.rs), so the guard does not apply.
        let mut settings = self.settings.clone();
        if upsert.is_some() {
            settings.hot_min_age_ms = 0;
            settings.hot_newest = 0;
        }
        let plan = plan::plan(&live, &settings, meta.default_partition_spec_id(), now_ms());
        report.hot_partitions_skipped = plan.hot_partitions.len() as u64;
        report.plan_millis = started.elapsed().as_millis() as u64;
        if plan.groups.is_empty() && !merge_manifests {
            return Ok(());
        }

        // Rewrite each group from the starting snapshot, deletes applied by the reader.
        let overrides = BTreeMap::from([(
            "write.target-file-size-bytes".to_string(),
            self.settings.target_bytes.to_string(),
        )]);
        let factory = WriterFactory::new(&table, &overrides)
            .map_err(|e| MaintenanceError::Policy(e.to_string()))?;
        // Groups are rewritten in parallel, one per core.
        let parallel = std::thread::available_parallelism().map_or(2, |n| n.get());
        let mut written: Vec<(plan::Group, Vec<DataFile>)> = Vec::new();
        let mut map = upsert.is_some().then(PositionMap::default);
        let mut running = tokio::task::JoinSet::new();
        let mut groups = plan.groups.into_iter();
        loop {
            while running.len() < parallel {
                let Some(group) = groups.next() else { break };
                let wanted: HashSet<&str> = group.files.iter().map(String::as_str).collect();
                let group_tasks: Vec<_> = tasks
                    .iter()
                    .filter(|t| wanted.contains(t.data_file_path.as_str()))
                    .cloned()
                    .collect();
                let (table, factory) = (table.clone(), factory.clone());
                let mapped = map.is_some();
                let (equality, sequence) = (equality.clone(), sequence.clone());
                running.spawn(async move {
                    let files = if mapped {
                        rewrite_group_mapped(&table, &factory, group_tasks, equality, sequence)
                            .await
                            .map(|(f, m)| (f, Some(m)))
                    } else {
                        rewrite_group(&table, &factory, group_tasks)
                            .await
                            .map(|f| (f, None))
                    };
                    (group, files)
                });
            }
            let Some(done) = running.join_next().await else {
                break;
            };
            let (group, files) =
                done.map_err(|e| MaintenanceError::Catalog(format!("rewrite task failed: {e}")))?;
            let (files, moved) = files?;
            if let (Some(map), Some(moved)) = (map.as_mut(), moved) {
                map.absorb(moved);
            }
            written.push((group, files));
        }
        report.rewrite_millis = started.elapsed().as_millis() as u64 - report.plan_millis;
        crate::failpoint::hit(crate::failpoint::points::COMPACT_BEFORE_COMMIT);
        let committing = std::time::Instant::now();

        for _ in 0..COMMIT_ATTEMPTS {
            let current = self.catalog.load_table(ident).await?;
            let outcome = self
                .commit_replace(
                    ident,
                    &current,
                    &base,
                    &mut written,
                    (map.as_ref(), merge_manifests),
                    report,
                )
                .await?;
            if outcome == Swap::Committed {
                report.commit_millis = committing.elapsed().as_millis() as u64;
                return Ok(());
            }
        }
        for (_, files) in &written {
            for f in files {
                let _ = table.file_io().delete(f.file_path()).await;
            }
        }
        Err(MaintenanceError::Catalog(format!(
            "gave up after {COMMIT_ATTEMPTS} conflicting commits"
        )))
    }
}
