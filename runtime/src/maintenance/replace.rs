//! The `replace` commit: groups whose files changed meanwhile are given up, manifests naming
//! rewritten files are written again (or all merged into one per spec), the new files get the
//! starting snapshot's sequence number, and the new metadata is swapped in.

use super::commit::Swap;
use super::files::LiveEntry;
use super::upsert::DeleteRebase;
use super::{Maintenance, MaintenanceError, commit, files, now_ms, plan};
use crate::checkpoint::SUMMARY_PIPELINE_UID;
use crate::upsert::position_map::{PositionMap, SUMMARY_POSITION_MAP};
use iceberg::{
    TableIdent,
    io::FileIO,
    spec::{
        DataContentType, DataFile, MAIN_BRANCH, ManifestContentType, ManifestFile,
        ManifestListWriter, ManifestWriter, ManifestWriterBuilder, Operation, PartitionSpec,
        Snapshot, SnapshotReference, SnapshotRetention, Summary, TableMetadata,
        TableMetadataBuilder,
    },
    table::Table,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use tidewater_crds::compaction::TableReport;

/// Writes one v2 data manifest of `snapshot_id` under partition spec `spec`; `fill` adds its
/// entries. Every manifest maintenance writes goes through here.
async fn write_manifest(
    io: &FileIO,
    path: String,
    snapshot_id: i64,
    meta: &TableMetadata,
    spec: PartitionSpec,
    fill: impl FnOnce(&mut ManifestWriter) -> Result<(), MaintenanceError>,
) -> Result<ManifestFile, MaintenanceError> {
    let mut w = ManifestWriterBuilder::new(
        io.new_output(path)?,
        Some(snapshot_id),
        meta.current_schema().clone(),
        spec,
    )
    .build_v2_data();
    fill(&mut w)?;
    Ok(w.write_manifest_file().await?)
}

fn add_carried(
    w: &mut ManifestWriter,
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

/// An upsert table's replace summary: delete file counts after the rebase, and the position
/// map its pipelines translate their deletes through.
fn rebased_summary(summary: &mut Summary, head: &Snapshot, rebase: &DeleteRebase, map: &str) {
    let p = &mut summary.additional_properties;
    let prev = &head.summary().additional_properties;
    let rows = |files: &[DataFile], content: DataContentType| {
        files
            .iter()
            .filter(|f| f.content_type() == content)
            .map(DataFile::record_count)
            .sum::<u64>()
    };
    let (pos, eq) = (
        DataContentType::PositionDeletes,
        DataContentType::EqualityDeletes,
    );
    let adjust = |key: &str, plus: u64, minus: u64| -> Option<String> {
        let v: u64 = prev.get(key)?.parse().ok()?;
        Some((v + plus).saturating_sub(minus).to_string())
    };
    let totals = [
        (
            "total-delete-files",
            rebase.added.len() as u64,
            rebase.removed.len() as u64,
        ),
        (
            "total-position-deletes",
            rows(&rebase.added, pos),
            rows(&rebase.removed, pos),
        ),
        ("total-equality-deletes", 0, rows(&rebase.removed, eq)),
    ];
    for (key, plus, minus) in totals {
        if let Some(v) = adjust(key, plus, minus) {
            p.insert(key.into(), v);
        }
    }
    p.insert("added-delete-files".into(), rebase.added.len().to_string());
    p.insert(
        "removed-delete-files".into(),
        rebase.removed.len().to_string(),
    );
    p.insert(SUMMARY_POSITION_MAP.into(), map.to_string());
}

impl Maintenance {
    /// Validates the rewrite against the current table, drops groups a concurrent commit
    /// touched, and swaps in a `replace` snapshot. With a position map (an upsert table) the
    /// deletes committed meanwhile are moved onto the new files instead, and the map is named
    /// in the summary; `merge_manifests` merges all data manifests into one per spec.
    pub(super) async fn commit_replace(
        &self,
        ident: &TableIdent,
        current: &Table,
        base: &Snapshot,
        written: &mut Vec<(plan::Group, Vec<DataFile>)>,
        (map, merge_manifests): (Option<&PositionMap>, bool),
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
            // An upsert table's late position deletes are moved onto the new files instead.
            let rebased = map.is_some();
            if intact && (rebased || !late_deletes.contains(&group.partition)) {
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
                let spec = by_manifest_spec(spec_id)?;
                let m = write_manifest(io, manifest_path(), snapshot_id, meta, spec, |w| {
                    entries.iter().try_for_each(|e| add_carried(w, e, &removed))
                })
                .await?;
                manifests.push(m);
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
                let spec = by_manifest_spec(m.partition_spec_id)?;
                let m = write_manifest(io, manifest_path(), snapshot_id, meta, spec, |w| {
                    entries.iter().try_for_each(|e| add_carried(w, e, &removed))
                })
                .await?;
                manifests.push(m);
            }
        }
        let added: Vec<&DataFile> = written.iter().flat_map(|(_, f)| f.iter()).collect();
        if !added.is_empty() {
            let spec = (**meta.default_partition_spec()).clone();
            let m = write_manifest(io, manifest_path(), snapshot_id, meta, spec, |w| {
                // The starting snapshot's sequence number: deletes committed after the
                // rewrite began still apply to the new files.
                for f in &added {
                    w.add_file((*f).clone(), base.sequence_number())?;
                }
                Ok(())
            })
            .await?;
            manifests.push(m);
        }
        let rebase = match map {
            None => {
                manifests.extend(
                    list.entries()
                        .iter()
                        .filter(|m| m.content == ManifestContentType::Deletes)
                        .cloned(),
                );
                None
            }
            Some(map) => {
                let map = map.only(&removed);
                let factory = crate::write::WriterFactory::new(current, &BTreeMap::new())
                    .map_err(|e| MaintenanceError::Policy(e.to_string()))?;
                let oldest_surviving = live
                    .iter()
                    .filter(|e| !removed.contains(e.data_file.file_path()))
                    .map(|e| e.sequence_number)
                    .min();
                let rebase = super::upsert::rebase_deletes(
                    io,
                    meta,
                    list.entries(),
                    base.sequence_number(),
                    &removed,
                    &map,
                    &factory,
                    snapshot_id,
                    oldest_surviving,
                    &mut manifest_path,
                )
                .await?;
                manifests.extend(rebase.manifests.iter().cloned());
                let path = format!(
                    "{location}/metadata/{}-position-map.parquet",
                    uuid::Uuid::now_v7()
                );
                let mut map = map;
                map.write(io, &path).await?;
                Some((rebase, path))
            }
        };
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
        let mut summary = replace_summary(meta, &head, &removed_entries, &added);
        if let Some((rebase, path)) = &rebase {
            rebased_summary(&mut summary, &head, rebase, path);
        }
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
    /// table and asks `landed` whether the change is there. Traced as `compaction_commit`.
    #[tracing::instrument(name = "compaction_commit", skip_all, fields(table = %ident))]
    pub(super) async fn swap_or_check(
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
}
