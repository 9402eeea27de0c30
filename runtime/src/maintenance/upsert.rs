//! Compaction of upsert tables. Their pipelines' key indexes point at rows by data file and
//! position, so a rewrite says where every kept row went (a position map, named in the replace
//! snapshot's summary): the pipeline translates deletes it decided before the rewrite, and the
//! commit itself rebases the position deletes committed while it ran onto the new files
//! instead of giving their groups up. Equality deletes (equality mode, or a key index over its
//! bound) are applied by the rewrite — converted, in effect, into rows that are not there — and
//! an equality delete file no surviving older row can match any more is dropped, like a
//! position delete file whose every target was rewritten.

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
        key::KeyEncoder,
        position_map::{PositionMap, translate_all},
        rebuild::{read_keys, read_position_deletes},
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

/// The equality deletes of a table: key → the highest sequence number of a delete of it (it
/// removes the key's rows of lower data sequence numbers), with the encoder of the key.
pub(super) struct EqualityDeletes {
    encoder: KeyEncoder,
    newest: HashMap<Box<[u8]>, i64>,
}

impl EqualityDeletes {
    /// Reads the live equality delete files of `manifests` (None: there are none).
    pub(super) async fn read(
        table: &Table,
        manifests: &[ManifestFile],
    ) -> Result<Option<Self>, MaintenanceError> {
        let meta = table.metadata();
        let io = table.file_io();
        let schema = meta.current_schema();
        let primary_key: Vec<String> = schema
            .identifier_field_ids()
            .filter_map(|id| schema.name_by_field_id(id).map(str::to_string))
            .collect();
        let mut newest: Option<HashMap<Box<[u8]>, i64>> = None;
        let mut encoder = None;
        for m in manifests
            .iter()
            .filter(|m| m.content == ManifestContentType::Deletes)
        {
            let manifest = m.load_manifest(io).await?;
            for e in manifest.entries() {
                if e.status() == ManifestStatus::Deleted
                    || e.content_type() != DataContentType::EqualityDeletes
                {
                    continue;
                }
                if primary_key.is_empty() {
                    return Err(MaintenanceError::Policy(
                        "equality deletes in a table without identifier fields".into(),
                    ));
                }
                let arrow = iceberg::arrow::schema_to_arrow_schema(schema)?;
                let enc = match encoder.take() {
                    Some(enc) => enc,
                    None => {
                        KeyEncoder::new(&arrow, &primary_key).map_err(MaintenanceError::Policy)?
                    }
                };
                let seq = e.sequence_number().unwrap_or(m.sequence_number);
                let keys = read_keys(io, e.data_file().file_path(), &enc, &primary_key)
                    .await
                    .map_err(|e| MaintenanceError::Catalog(e.to_string()))?;
                let map = newest.get_or_insert_with(HashMap::new);
                for key in keys {
                    let at = map.entry(key).or_insert(seq);
                    *at = (*at).max(seq);
                }
                encoder = Some(enc);
            }
        }
        Ok(newest
            .zip(encoder)
            .map(|(newest, encoder)| Self { encoder, newest }))
    }

    /// Which rows of `batch` (data sequence number `seq`) an equality delete removes.
    fn deleted(
        &self,
        batch: &arrow_array::RecordBatch,
        seq: i64,
    ) -> Result<Vec<bool>, MaintenanceError> {
        let keys = self
            .encoder
            .encode_rows(batch)
            .map_err(|e| MaintenanceError::Catalog(format!("encoding keys: {e}")))?;
        Ok(keys
            .iter()
            .map(|k| self.newest.get(k.as_ref()).is_some_and(|s| *s > seq))
            .collect())
    }
}

/// Rewrites the data files of `tasks` (their position deletes and `equality` deletes applied;
/// `sequence` gives each file's data sequence number) into files of about the target size,
/// noting where each kept row went.
pub(super) async fn rewrite_group_mapped(
    table: &Table,
    factory: &WriterFactory,
    tasks: Vec<iceberg::scan::FileScanTask>,
    equality: Option<Arc<EqualityDeletes>>,
    sequence: Arc<HashMap<String, i64>>,
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
                // Read once for the whole table (`equality`).
                DataContentType::EqualityDeletes | DataContentType::Data => {}
            }
        }
        let seq = sequence.get(&task.data_file_path).copied().unwrap_or(0);
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
            let by_key = match &equality {
                Some(eq) => eq.deleted(&batch, seq)?,
                None => Vec::new(),
            };
            let keep = |p: u64| {
                !gone.contains(&p) && !by_key.get((p - pos) as usize).copied().unwrap_or(false)
            };
            let kept: Vec<u64> = (pos..pos + n).filter(|p| keep(*p)).collect();
            let mask: BooleanArray = (pos..pos + n).map(|p| Some(keep(p))).collect();
            pos += n;
            if kept.is_empty() {
                continue;
            }
            let batch = if kept.len() as u64 == n {
                batch
            } else {
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
/// marked deleted, and so are equality delete files from before the rewrite began that no
/// surviving data file is old enough to be matched by (`oldest_surviving`: the lowest data
/// sequence number of the live files not rewritten).
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
    oldest_surviving: Option<i64>,
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
                // Applied by the rewrite; it still removes older rows of files not rewritten,
                // and rows of files added after the rewrite began when it is newer than them.
                let seq = e.sequence_number().unwrap_or(m.sequence_number);
                if seq <= base_sequence && oldest_surviving.is_none_or(|s| s >= seq) {
                    dead.push(e.clone());
                }
                continue;
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
