//! Compaction of upsert tables. Their pipelines' key indexes point at rows by data file and
//! position, so a rewrite says where every kept row went (a position map, named in the replace
//! snapshot's summary): the pipeline translates deletes it decided before the rewrite, and the
//! commit itself rebases the position deletes committed while it ran onto the new files
//! instead of giving their groups up. Delete files whose every target was rewritten are
//! dropped. Only position deletes: a table with equality deletes is refused.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use arrow_array::BooleanArray;
use futures::StreamExt;
use iceberg::{
    io::FileIO,
    spec::{
        DataContentType, DataFile, ManifestContentType, ManifestFile, ManifestStatus,
        ManifestWriterBuilder, TableMetadata,
    },
    table::Table,
};

use super::MaintenanceError;
use crate::{
    upsert::{
        position_map::{PositionMap, translate_all},
        rebuild::read_position_deletes,
    },
    write::WriterFactory,
};

/// Position deletes read once per pass: delete file → `(data file, position)` pairs.
#[derive(Default)]
pub(super) struct DeleteCache(HashMap<String, Arc<Vec<(String, u64)>>>);

impl DeleteCache {
    async fn get(
        &mut self,
        io: &FileIO,
        path: &str,
    ) -> Result<Arc<Vec<(String, u64)>>, MaintenanceError> {
        if let Some(d) = self.0.get(path) {
            return Ok(d.clone());
        }
        let read = read_position_deletes(io, path)
            .await
            .map_err(|e| MaintenanceError::Catalog(e.to_string()))?;
        let read = Arc::new(read);
        self.0.insert(path.to_string(), read.clone());
        Ok(read)
    }
}

/// Rewrites the data files of `tasks` (their position deletes applied) into files of about
/// the target size, noting where each kept row went.
pub(super) async fn rewrite_group_mapped(
    table: &Table,
    factory: &WriterFactory,
    tasks: Vec<iceberg::scan::FileScanTask>,
) -> Result<(Vec<DataFile>, PositionMap), MaintenanceError> {
    let io = table.file_io();
    let mut cache = DeleteCache::default();
    let mut writer = factory
        .open(format!("compact-{}", uuid::Uuid::now_v7()))
        .await?;
    let mut map = PositionMap::default();
    for task in tasks {
        let mut gone = HashSet::new();
        for d in &task.deletes {
            match d.file_type {
                DataContentType::PositionDeletes => {
                    for (file, pos) in cache.get(io, &d.file_path).await?.iter() {
                        if *file == task.data_file_path {
                            gone.insert(*pos);
                        }
                    }
                }
                DataContentType::EqualityDeletes => {
                    return Err(MaintenanceError::Policy(format!(
                        "{} has equality deletes: an upsert table is compacted with position \
                         deletes only",
                        task.data_file_path
                    )));
                }
                DataContentType::Data => {}
            }
        }
        // Read whole, deletes applied here: the reader would apply them without saying which
        // rows it dropped.
        let mut bare = task.clone();
        bare.deletes.clear();
        let path = bare.data_file_path.clone();
        let mut batches = table
            .reader_builder()
            .build()
            .read(Box::pin(futures::stream::iter([Ok(bare)])))?
            .stream();
        let mut pos = 0u64;
        while let Some(batch) = batches.next().await {
            let batch = batch?;
            let n = batch.num_rows() as u64;
            let kept: Vec<u64> = (pos..pos + n).filter(|p| !gone.contains(p)).collect();
            pos += n;
            if kept.is_empty() {
                continue;
            }
            let batch = if kept.len() as u64 == n {
                batch
            } else {
                let mask: BooleanArray = (pos - n..pos).map(|p| Some(!gone.contains(&p))).collect();
                arrow_select::filter::filter_record_batch(&batch, &mask)
                    .map_err(|e| MaintenanceError::Catalog(format!("filtering {path}: {e}")))?
            };
            writer.write(batch).await?;
            let (file, end) = writer.position().ok_or_else(|| {
                MaintenanceError::Policy("an upsert table must be unpartitioned".into())
            })?;
            map.moved(&path, &kept, &file, (end - kept.len()) as u64);
        }
    }
    Ok((writer.close_files().await?, map))
}

/// What the replace commit does to delete files.
pub(super) struct DeleteRebase {
    /// The delete manifests of the new snapshot.
    pub manifests: Vec<ManifestFile>,
    /// Delete files added (deletes committed during the rewrite, moved to the new files).
    pub added: Vec<DataFile>,
    /// Delete files dropped (every row they deleted was rewritten away).
    pub removed: Vec<DataFile>,
}

/// Rebases the position deletes of `manifests` (the current snapshot's) onto the rewrite:
/// deletes committed after `base_sequence` that target `rewritten` files are translated
/// through `map` into a new delete file; delete files whose every target is rewritten are
/// marked deleted.
#[allow(clippy::too_many_arguments)]
pub(super) async fn rebase_deletes(
    io: &FileIO,
    meta: &TableMetadata,
    manifests: &[ManifestFile],
    base_sequence: i64,
    rewritten: &HashSet<&str>,
    map: &PositionMap,
    factory: &WriterFactory,
    snapshot_id: i64,
    manifest_path: &mut dyn FnMut() -> String,
) -> Result<DeleteRebase, MaintenanceError> {
    let mut cache = DeleteCache::default();
    let mut late: Vec<(Arc<str>, u64)> = Vec::new();
    let mut out = DeleteRebase {
        manifests: Vec::new(),
        added: Vec::new(),
        removed: Vec::new(),
    };
    for m in manifests
        .iter()
        .filter(|m| m.content == ManifestContentType::Deletes)
    {
        let manifest = m.load_manifest(io).await?;
        let mut dead = Vec::new();
        for e in manifest.entries() {
            if e.status() == ManifestStatus::Deleted {
                continue;
            }
            let path = e.data_file().file_path();
            if e.content_type() == DataContentType::EqualityDeletes {
                return Err(MaintenanceError::Policy(format!(
                    "{path} is an equality delete file: an upsert table is compacted with \
                     position deletes only"
                )));
            }
            let targets = cache.get(io, path).await?;
            if e.sequence_number().unwrap_or(m.sequence_number) > base_sequence {
                late.extend(
                    targets
                        .iter()
                        .filter(|(f, _)| rewritten.contains(f.as_str()))
                        .map(|(f, p)| (Arc::from(f.as_str()), *p)),
                );
            }
            if !targets.is_empty() && targets.iter().all(|(f, _)| rewritten.contains(f.as_str())) {
                dead.push(e.clone());
            }
        }
        if dead.is_empty() {
            out.manifests.push(m.clone());
            continue;
        }
        // The manifest again, its dead delete files marked deleted.
        let spec = meta
            .partition_spec_by_id(m.partition_spec_id)
            .map(|s| (**s).clone())
            .ok_or_else(|| {
                MaintenanceError::Catalog(format!("unknown spec {}", m.partition_spec_id))
            })?;
        let mut w = ManifestWriterBuilder::new(
            io.new_output(manifest_path())?,
            Some(snapshot_id),
            meta.current_schema().clone(),
            spec,
        )
        .build_v2_deletes();
        let dead_paths: HashSet<&str> = dead.iter().map(|e| e.data_file().file_path()).collect();
        for e in manifest.entries() {
            if e.status() == ManifestStatus::Deleted {
                continue;
            }
            let seq = e.sequence_number().unwrap_or(m.sequence_number);
            let file_seq = e.file_sequence_number.or(Some(seq));
            if dead_paths.contains(e.data_file().file_path()) {
                w.add_delete_file(e.data_file().clone(), seq, file_seq)?;
                out.removed.push(e.data_file().clone());
            } else {
                w.add_existing_file(
                    e.data_file().clone(),
                    e.snapshot_id().unwrap_or(snapshot_id),
                    seq,
                    file_seq,
                )?;
            }
        }
        out.manifests.push(w.write_manifest_file().await?);
    }
    let (moved, _) = translate_all(late, &[Arc::new(map.clone())]);
    if let Some((file, _, _)) = factory
        .write_position_deletes(&format!("compact-{}", uuid::Uuid::now_v7()), moved)
        .await?
    {
        let spec = meta.default_partition_spec();
        let schema = meta.current_schema();
        let file = file.decode(spec.spec_id(), &spec.partition_type(schema)?, schema)?;
        let mut w = ManifestWriterBuilder::new(
            io.new_output(manifest_path())?,
            Some(snapshot_id),
            schema.clone(),
            (**spec).clone(),
        )
        .build_v2_deletes();
        w.add_file(file.clone(), meta.next_sequence_number())?;
        out.manifests.push(w.write_manifest_file().await?);
        out.added.push(file);
    }
    Ok(out)
}
