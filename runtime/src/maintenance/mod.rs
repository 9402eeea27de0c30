//! Table maintenance for a `CompactionPolicy`: bin-pack rewrite of cold partitions committed
//! as `replace` snapshots, snapshot expiry with the files only expired snapshots used, orphan
//! removal that respects pipelines' checkpoint records, and manifest merging. Planning is pure
//! (`plan`); this module observes the table, carries out the plan and commits through the
//! catalog's compare-and-swap (`commit`).

pub mod commit;
pub mod files;
pub mod plan;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    path::Path,
    sync::Arc,
    time::{Duration, SystemTime},
};

use futures::StreamExt;
use iceberg::{
    Catalog, NamespaceIdent, TableIdent,
    spec::{
        DataFile, FormatVersion, MAIN_BRANCH, ManifestContentType, ManifestFile,
        ManifestListWriter, ManifestWriterBuilder, Operation, Snapshot, SnapshotReference,
        SnapshotRetention, Summary, TableMetadata, TableMetadataBuilder,
    },
    table::Table,
};
use tidewater_crds::{
    CompactionPolicy,
    compaction::TableReport,
    types::{parse_age, parse_table_ident},
};

use crate::{
    checkpoint::{SUMMARY_PIPELINE_UID, SUMMARY_STATE_LOCATION, store::StateStore},
    commit::open_catalog,
    config::{CatalogConnection, resolve_s3},
    storage,
    write::WriterFactory,
};
use commit::{Cas, Swap};
use files::LiveEntry;
use plan::{LiveFile, PlanSettings};

/// Why maintenance failed.
#[derive(Debug, thiserror::Error)]
pub enum MaintenanceError {
    /// The policy cannot be run as written (names the field).
    #[error("{0}")]
    Policy(String),
    /// The catalog refused or could not be reached.
    #[error("catalog: {0}")]
    Catalog(String),
    /// A commit's outcome is unknown (REST 5xx); the next run sees the truth.
    #[error("commit state unknown: {0}")]
    CommitUnknown(String),
    /// Iceberg I/O or metadata error.
    #[error(transparent)]
    Iceberg(#[from] iceberg::Error),
    /// Local file I/O.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Conflicting commits tolerated before a table is given up for this run.
const COMMIT_ATTEMPTS: usize = 8;

/// Everything one run needs, resolved from the policy.
pub struct Maintenance {
    catalog: Arc<dyn Catalog>,
    cas: Cas,
    policy: CompactionPolicy,
    s3_props: BTreeMap<String, String>,
    settings: PlanSettings,
}

/// Milliseconds since the epoch.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Maintenance {
    /// Opens the policy's catalog; relative paths resolve against `base`.
    pub async fn open(policy: CompactionPolicy, base: &Path) -> Result<Self, MaintenanceError> {
        let spec = &policy.spec;
        let catalog_spec = spec.catalog.as_ref().ok_or_else(|| {
            MaintenanceError::Policy(
                "spec.catalog: required when running without the operator (pipelineRef is \
                 resolved by the operator)"
                    .into(),
            )
        })?;
        let conn = CatalogConnection::resolve(catalog_spec, base);
        let s3_props = match spec.storage.as_ref().and_then(|s| s.s3.as_ref()) {
            Some(s3) => storage::s3_properties(&resolve_s3(s3, base))
                .map_err(|e| MaintenanceError::Policy(e.to_string()))?,
            None => BTreeMap::new(),
        };
        let catalog = open_catalog(&conn, &s3_props)
            .await
            .map_err(|e| MaintenanceError::Catalog(e.to_string()))?;
        let cas = Cas::connect(&conn).await?;
        let target = u64::try_from(spec.target_file_size_bytes).unwrap_or(u64::MAX);
        let t = &spec.thresholds;
        let settings = PlanSettings {
            target_bytes: target,
            small_bytes: t
                .small_file_size_bytes
                .and_then(|s| u64::try_from(s).ok())
                .unwrap_or(target / 4 * 3),
            min_small_files: t.min_small_files as usize,
            min_average_bytes: t
                .min_average_file_size_bytes
                .and_then(|s| u64::try_from(s).ok()),
            max_delete_ratio: t.max_delete_file_ratio,
            hot_min_age_ms: millis(parse_age(&spec.hot_partition_guard.min_age).map_err(|e| {
                MaintenanceError::Policy(format!("spec.hotPartitionGuard.minAge: {e}"))
            })?),
            hot_newest: spec.hot_partition_guard.newest_partitions as usize,
            max_bytes: spec
                .limits
                .max_bytes_per_run
                .and_then(|b| u64::try_from(b).ok()),
        };
        Ok(Self {
            catalog,
            cas,
            policy,
            s3_props,
            settings,
        })
    }

    /// The tables the policy names (explicit list or pattern).
    pub async fn tables(&self) -> Result<Vec<TableIdent>, MaintenanceError> {
        let spec = &self.policy.spec;
        if let Some(p) = &spec.table_pattern {
            let re = tidewater_crds::validate::topic_pattern(&p.pattern)
                .map_err(|e| MaintenanceError::Policy(format!("spec.tablePattern.pattern: {e}")))?;
            let ns = NamespaceIdent::from_strs(p.namespace.split('.'))?;
            let mut out: Vec<TableIdent> = self
                .catalog
                .list_tables(&ns)
                .await?
                .into_iter()
                .filter(|t| re.is_match(t.name()))
                .collect();
            out.sort_by(|a, b| a.name().cmp(b.name()));
            return Ok(out);
        }
        spec.tables
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let (ns, name) = parse_table_ident(t)
                    .map_err(|e| MaintenanceError::Policy(format!("spec.tables[{i}]: {e}")))?;
                Ok(TableIdent::new(NamespaceIdent::from_vec(ns)?, name))
            })
            .collect()
    }

    /// One pass over every table: compact, expire, remove orphans. A failing table is
    /// reported and the others still run.
    pub async fn run_once(&self) -> Result<Vec<TableReport>, MaintenanceError> {
        let concurrent = self
            .policy
            .spec
            .limits
            .max_concurrent_tables
            .map_or(1, |n| n.max(1) as usize);
        // Tables in policy order; up to `limits.maxConcurrentTables` at a time.
        let reports = futures::stream::iter(self.tables().await?)
            .map(|ident| async move {
                let mut report = TableReport {
                    table: format!("{}.{}", ident.namespace().join("."), ident.name()),
                    ..TableReport::default()
                };
                if let Err(e) = self.maintain(&ident, &mut report).await {
                    report.error = Some(e.to_string());
                }
                report
            })
            .buffered(concurrent)
            .collect()
            .await;
        Ok(reports)
    }

    async fn maintain(
        &self,
        ident: &TableIdent,
        report: &mut TableReport,
    ) -> Result<(), MaintenanceError> {
        self.compact(ident, report).await?;
        if let Some(x) = &self.policy.spec.expire_snapshots {
            let older = parse_age(&x.older_than).map_err(|e| {
                MaintenanceError::Policy(format!("spec.expireSnapshots.olderThan: {e}"))
            })?;
            self.expire(ident, millis(older), x.retain_last as usize, report)
                .await?;
        }
        if let Some(o) = &self.policy.spec.remove_orphan_files {
            let older = parse_age(&o.older_than).map_err(|e| {
                MaintenanceError::Policy(format!("spec.removeOrphanFiles.olderThan: {e}"))
            })?;
            self.remove_orphans(ident, millis(older), report).await?;
        }
        Ok(())
    }

    /// Bin-pack rewrite of cold partitions (and manifest merging) in one `replace` commit.
    async fn compact(
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
        let plan = plan::plan(
            &live,
            &self.settings,
            meta.default_partition_spec_id(),
            now_ms(),
        );
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
        let factory = WriterFactory::new(&table, &overrides).map_err(MaintenanceError::Policy)?;
        // Groups are rewritten in parallel, one per core.
        let parallel = std::thread::available_parallelism().map_or(2, |n| n.get());
        let mut written: Vec<(plan::Group, Vec<DataFile>)> = Vec::new();
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
                running.spawn(async move {
                    let files = rewrite_group(&table, &factory, group_tasks).await;
                    (group, files)
                });
            }
            let Some(done) = running.join_next().await else {
                break;
            };
            let (group, files) =
                done.map_err(|e| MaintenanceError::Catalog(format!("rewrite task failed: {e}")))?;
            written.push((group, files?));
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
                    merge_manifests,
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

    /// Validates the rewrite against the current table, drops groups a concurrent commit
    /// touched, and swaps in a `replace` snapshot.
    async fn commit_replace(
        &self,
        ident: &TableIdent,
        current: &Table,
        base: &Snapshot,
        written: &mut Vec<(plan::Group, Vec<DataFile>)>,
        merge_manifests: bool,
        report: &mut TableReport,
    ) -> Result<Swap, MaintenanceError> {
        let meta = current.metadata();
        let io = current.file_io();
        let Some(head) = meta.current_snapshot().cloned() else {
            return Err(MaintenanceError::Catalog(
                "the table lost its snapshots".into(),
            ));
        };
        let list = files::manifest_list(io, meta, &head).await?;
        let live = files::live_data_entries(io, list.entries()).await?;
        let live_paths: HashSet<&str> = live.iter().map(|e| e.data_file.file_path()).collect();
        // Deletes committed after the rewrite began must not be lost: their partitions'
        // groups are given up (the files were read before those deletes existed).
        let late_deletes =
            files::partitions_with_deletes_after(io, list.entries(), base.sequence_number())
                .await?;
        let mut kept = Vec::new();
        for (group, out) in written.drain(..) {
            let intact = group.files.iter().all(|f| live_paths.contains(f.as_str()));
            if intact && !late_deletes.contains(&group.partition) {
                kept.push((group, out));
            } else {
                report.groups_conflicted += 1;
                for f in &out {
                    let _ = io.delete(f.file_path()).await;
                }
            }
        }
        *written = kept;
        if written.is_empty() && !merge_manifests {
            return Ok(Swap::Committed);
        }
        let removed: HashSet<&str> = written
            .iter()
            .flat_map(|(g, _)| g.files.iter().map(String::as_str))
            .collect();
        let snapshot_id = commit::new_snapshot_id(meta);
        let sequence = meta.next_sequence_number();
        let location = meta.location();
        let mut manifests: Vec<ManifestFile> = Vec::new();
        let mut n = 0usize;
        let mut manifest_path = || {
            n += 1;
            format!("{location}/metadata/{}-m{n}.avro", uuid::Uuid::now_v7())
        };
        let data_manifests: Vec<&ManifestFile> = list
            .entries()
            .iter()
            .filter(|m| m.content == ManifestContentType::Data)
            .collect();
        let by_manifest_spec = |spec_id: i32| -> Result<_, MaintenanceError> {
            meta.partition_spec_by_id(spec_id)
                .map(|s| (**s).clone())
                .ok_or_else(|| {
                    MaintenanceError::Catalog(format!("unknown partition spec {spec_id}"))
                })
        };
        if merge_manifests {
            // One manifest per spec with every live entry (removed ones marked deleted).
            let mut by_spec: BTreeMap<i32, Vec<&LiveEntry>> = BTreeMap::new();
            for e in &live {
                by_spec.entry(e.spec_id).or_default().push(e);
            }
            for (spec_id, entries) in by_spec {
                let out = io.new_output(manifest_path())?;
                let mut w = ManifestWriterBuilder::new(
                    out,
                    Some(snapshot_id),
                    meta.current_schema().clone(),
                    by_manifest_spec(spec_id)?,
                )
                .build_v2_data();
                for e in entries {
                    add_carried(&mut w, e, &removed)?;
                }
                manifests.push(w.write_manifest_file().await?);
            }
            report.manifests_merged += data_manifests.len().saturating_sub(manifests.len()) as u64;
        } else {
            for m in &data_manifests {
                // The live entries read above, by manifest: no manifest is read twice.
                let entries: Vec<&LiveEntry> = live
                    .iter()
                    .filter(|e| e.manifest_path == m.manifest_path)
                    .collect();
                if !entries
                    .iter()
                    .any(|e| removed.contains(e.data_file.file_path()))
                {
                    manifests.push((*m).clone());
                    continue;
                }
                let out = io.new_output(manifest_path())?;
                let mut w = ManifestWriterBuilder::new(
                    out,
                    Some(snapshot_id),
                    meta.current_schema().clone(),
                    by_manifest_spec(m.partition_spec_id)?,
                )
                .build_v2_data();
                for e in entries {
                    add_carried(&mut w, e, &removed)?;
                }
                manifests.push(w.write_manifest_file().await?);
            }
        }
        let added: Vec<&DataFile> = written.iter().flat_map(|(_, f)| f.iter()).collect();
        if !added.is_empty() {
            let out = io.new_output(manifest_path())?;
            let mut w = ManifestWriterBuilder::new(
                out,
                Some(snapshot_id),
                meta.current_schema().clone(),
                (**meta.default_partition_spec()).clone(),
            )
            .build_v2_data();
            for f in &added {
                // The starting snapshot's sequence number: deletes committed after the
                // rewrite began still apply to the new files.
                w.add_file((*f).clone(), base.sequence_number())?;
            }
            manifests.push(w.write_manifest_file().await?);
        }
        manifests.extend(
            list.entries()
                .iter()
                .filter(|m| m.content == ManifestContentType::Deletes)
                .cloned(),
        );
        let list_path = format!(
            "{location}/metadata/snap-{snapshot_id}-1-{}.avro",
            uuid::Uuid::now_v7()
        );
        let mut list_writer = ManifestListWriter::v2(
            io.new_output(&list_path)?.writer().await?,
            snapshot_id,
            Some(head.snapshot_id()),
            sequence,
        );
        list_writer.add_manifests(manifests.into_iter())?;
        list_writer.close().await?;

        let removed_entries: Vec<&LiveEntry> = live
            .iter()
            .filter(|e| removed.contains(e.data_file.file_path()))
            .collect();
        let summary = replace_summary(meta, &head, &removed_entries, &added);
        let snapshot = Snapshot::builder()
            .with_snapshot_id(snapshot_id)
            .with_parent_snapshot_id(Some(head.snapshot_id()))
            .with_sequence_number(sequence)
            .with_timestamp_ms(now_ms().max(head.timestamp_ms() + 1))
            .with_manifest_list(list_path)
            .with_summary(summary)
            .with_schema_id(meta.current_schema_id())
            .build();
        let next = TableMetadataBuilder::new_from_metadata(
            meta.clone(),
            current.metadata_location().map(str::to_string),
        )
        .add_snapshot(snapshot)?
        .set_ref(
            MAIN_BRANCH,
            SnapshotReference::new(snapshot_id, SnapshotRetention::branch(None, None, None)),
        )?
        .build()?;
        let swap = self
            .swap_or_check(ident, current, next, |m| {
                m.snapshot_by_id(snapshot_id).is_some()
            })
            .await?;
        if swap == Swap::Committed {
            report.snapshot_id = Some(snapshot_id);
            report.files_rewritten += removed.len() as u64;
            report.bytes_rewritten += removed_entries
                .iter()
                .map(|e| e.data_file.file_size_in_bytes())
                .sum::<u64>();
            report.files_written += added.len() as u64;
        }
        Ok(swap)
    }

    /// Swaps in `next`; when the catalog cannot say whether it did (REST 5xx), reloads the
    /// table and asks `landed` whether the change is there.
    async fn swap_or_check(
        &self,
        ident: &TableIdent,
        current: &Table,
        next: iceberg::spec::TableMetadataBuildResult,
        landed: impl Fn(&TableMetadata) -> bool,
    ) -> Result<Swap, MaintenanceError> {
        match self.cas.swap(ident, current, next).await {
            Err(MaintenanceError::CommitUnknown(reason)) => {
                let table = self.catalog.load_table(ident).await?;
                if landed(table.metadata()) {
                    tracing::warn!(%reason, "commit state unknown, but the commit landed");
                    Ok(Swap::Committed)
                } else {
                    tracing::warn!(%reason, "commit state unknown and not landed; retrying");
                    Ok(Swap::Conflict)
                }
            }
            other => other,
        }
    }

    /// Expires snapshots older than `older_ms` beyond the newest `retain` of the main branch,
    /// then deletes the files only they referenced.
    async fn expire(
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

    /// Deletes files under the table location older than `older_ms` that no snapshot, no
    /// metadata file and no pipeline checkpoint record references.
    async fn remove_orphans(
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
    async fn checkpoint_files(
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
                    for json in &plan.data_files {
                        let v: serde_json::Value = serde_json::from_str(json).map_err(|e| {
                            MaintenanceError::Catalog(format!("checkpoint record: {e}"))
                        })?;
                        // Never guess: a record whose files cannot be named stops the run.
                        let path = v["file_path"].as_str().ok_or_else(|| {
                            MaintenanceError::Catalog(format!(
                                "checkpoint record {} of {uid}: a data file without file_path",
                                r.checkpoint_id
                            ))
                        })?;
                        out.insert(path.to_string());
                    }
                }
            }
        }
        Ok(out)
    }
}

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

fn add_carried(
    w: &mut iceberg::spec::ManifestWriter,
    e: &LiveEntry,
    removed: &HashSet<&str>,
) -> Result<(), MaintenanceError> {
    let file_seq = e.file_sequence_number.or(Some(e.sequence_number));
    if removed.contains(e.data_file.file_path()) {
        w.add_delete_file(e.data_file.clone(), e.sequence_number, file_seq)?;
    } else {
        w.add_existing_file(
            e.data_file.clone(),
            e.snapshot_id,
            e.sequence_number,
            file_seq,
        )?;
    }
    Ok(())
}

/// The `replace` summary: counts and totals, and the newest pipeline commit's properties
/// carried forward so a pipeline's recovery still finds its position after the snapshots
/// before this one are expired.
fn replace_summary(
    meta: &TableMetadata,
    head: &Snapshot,
    removed: &[&LiveEntry],
    added: &[&DataFile],
) -> Summary {
    let mut props: HashMap<String, String> = HashMap::new();
    let mut cursor = Some(head);
    while let Some(s) = cursor {
        let p = &s.summary().additional_properties;
        if p.contains_key(SUMMARY_PIPELINE_UID) {
            props.extend(
                p.iter()
                    .filter(|(k, _)| k.starts_with("tidewater."))
                    .map(|(k, v)| (k.clone(), v.clone())),
            );
            break;
        }
        cursor = s
            .parent_snapshot_id()
            .and_then(|id| meta.snapshot_by_id(id))
            .map(|s| &**s);
    }
    let removed_rows: u64 = removed.iter().map(|e| e.data_file.record_count()).sum();
    let removed_bytes: u64 = removed
        .iter()
        .map(|e| e.data_file.file_size_in_bytes())
        .sum();
    let added_rows: u64 = added.iter().map(|f| f.record_count()).sum();
    let added_bytes: u64 = added.iter().map(|f| f.file_size_in_bytes()).sum();
    let prev = &head.summary().additional_properties;
    let total = |key: &str, plus: u64, minus: u64| -> Option<String> {
        let v: u64 = prev.get(key)?.parse().ok()?;
        Some((v + plus).saturating_sub(minus).to_string())
    };
    let counts = [
        ("added-data-files", added.len() as u64),
        ("deleted-data-files", removed.len() as u64),
        ("added-records", added_rows),
        ("deleted-records", removed_rows),
        ("added-files-size", added_bytes),
        ("removed-files-size", removed_bytes),
    ];
    for (k, v) in counts {
        props.insert(k.into(), v.to_string());
    }
    let totals = [
        ("total-data-files", added.len() as u64, removed.len() as u64),
        ("total-records", added_rows, removed_rows),
        ("total-files-size", added_bytes, removed_bytes),
    ];
    for (k, plus, minus) in totals {
        if let Some(v) = total(k, plus, minus) {
            props.insert(k.into(), v);
        }
    }
    for k in [
        "total-delete-files",
        "total-position-deletes",
        "total-equality-deletes",
    ] {
        if let Some(v) = prev.get(k) {
            props.insert(k.into(), v.clone());
        }
    }
    props.insert("tidewater.compaction".into(), "true".into());
    Summary {
        operation: Operation::Replace,
        additional_properties: props,
    }
}

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
