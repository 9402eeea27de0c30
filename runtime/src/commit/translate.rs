//! An upsert checkpoint's position deletes after a compaction: rows its workers located
//! before the rewrite now live in other files. Every replace snapshot of an upsert table names
//! a position map; deletes of rewritten files are translated through the maps (oldest first)
//! into a new delete file, at every commit attempt (a pure function of the record and the
//! table, so a retried commit translates alike).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
};

use iceberg::{spec::DataFile, table::Table};

use super::TableError;
use crate::{
    upsert::{
        position_map::{PositionMap, SUMMARY_POSITION_MAP, translate_all},
        rebuild::read_position_deletes,
    },
    write::WriterFactory,
};

/// Maps read so far, by path (a map never changes).
fn cache() -> &'static Mutex<HashMap<String, Arc<PositionMap>>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<PositionMap>>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// The position maps of `table`'s retained snapshots, oldest first, with the newest one's
/// snapshot id.
pub(super) async fn position_maps(
    table: &Table,
) -> Result<(Vec<Arc<PositionMap>>, Option<i64>), TableError> {
    let meta = table.metadata();
    let mut named: Vec<(i64, i64, String)> = meta
        .snapshots()
        .filter_map(|s| {
            let path = s
                .summary()
                .additional_properties
                .get(SUMMARY_POSITION_MAP)?;
            Some((s.sequence_number(), s.snapshot_id(), path.clone()))
        })
        .collect();
    named.sort();
    let newest = named.last().map(|(_, id, _)| *id);
    // Only the maps this table still names stay cached: expired ones are never needed again
    // (another table's are read again when it needs them).
    cache()
        .lock()
        .expect("map cache")
        .retain(|path, _| named.iter().any(|(_, _, p)| p == path));
    let mut maps = Vec::new();
    for (_, _, path) in named {
        let cached = cache().lock().expect("map cache").get(&path).cloned();
        let map = match cached {
            Some(m) => m,
            None => {
                let m = Arc::new(PositionMap::read(table.file_io(), &path).await?);
                cache().lock().expect("map cache").insert(path, m.clone());
                m
            }
        };
        maps.push(map);
    }
    Ok((maps, newest))
}

/// `deletes` with every position of a rewritten file moved to where the rewrite put the row;
/// returns the files and the rows they delete.
pub(super) async fn translate_deletes(
    table: &Table,
    maps: &[Arc<PositionMap>],
    deletes: Vec<DataFile>,
    prefix: &str,
) -> Result<(Vec<DataFile>, u64), TableError> {
    let rows = |files: &[DataFile]| files.iter().map(DataFile::record_count).sum::<u64>();
    if maps.is_empty() {
        let n = rows(&deletes);
        return Ok((deletes, n));
    }
    let mut out = Vec::new();
    let mut moved_any = Vec::new();
    for file in deletes {
        if file.content_type() != iceberg::spec::DataContentType::PositionDeletes {
            out.push(file); // equality deletes name keys, not places
            continue;
        }
        let pairs = read_position_deletes(table.file_io(), file.file_path())
            .await
            .map_err(|e| TableError::History(e.to_string()))?;
        if !pairs.iter().any(|(f, _)| maps.iter().any(|m| m.covers(f))) {
            out.push(file);
            continue;
        }
        moved_any.extend(pairs.into_iter().map(|(f, p)| (Arc::<str>::from(f), p)));
    }
    if !moved_any.is_empty() {
        let (translated, moved) = translate_all(moved_any, maps);
        tracing::info!(
            moved,
            "position deletes of rewritten files moved to where compaction put the rows"
        );
        let factory = WriterFactory::new(table, &Default::default())
            .map_err(|e| TableError::History(e.to_string()))?;
        if let Some((reference, _, _)) = factory.write_position_deletes(prefix, translated).await? {
            let meta = table.metadata();
            let spec = meta.default_partition_spec();
            let schema = meta.current_schema();
            out.push(reference.decode(spec.spec_id(), &spec.partition_type(schema)?, schema)?);
        }
    }
    let n = rows(&out);
    Ok((out, n))
}
