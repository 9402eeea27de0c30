//! Fills a key index from a table: every live row's key with its data file and position,
//! minus the rows position delete files remove. Used when a worker starts writing an upsert
//! table (the index then matches the table as committed) and after a reset.

use std::collections::{HashMap, HashSet};

use arrow_array::ArrayRef;
use iceberg::{
    spec::{DataContentType, ManifestContentType, ManifestStatus},
    table::Table,
};
use parquet::arrow::{ProjectionMask, arrow_reader::ParquetRecordBatchReaderBuilder};

use super::{KeyIndex, UNKNOWN_PARTITION, key::KeyEncoder};
use crate::maintenance::files::{live_data_entries, manifest_list};

/// Why a table's key index cannot be rebuilt.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// Reading the table's metadata or files failed.
    #[error("rebuilding the key index: {0}")]
    Iceberg(#[from] iceberg::Error),
    /// A file could not be read as Parquet.
    #[error("rebuilding the key index from {file}: {message}")]
    File {
        /// The file.
        file: String,
        /// Why.
        message: String,
    },
}

/// The rebuilt index, and how many keys were found on more than one live row (the newest
/// file read wins; the others stay in the table and are reported).
pub struct Rebuilt {
    /// The index.
    pub index: KeyIndex,
    /// Keys found live more than once.
    pub duplicates: u64,
}

fn file_error(file: &str) -> impl Fn(parquet::errors::ParquetError) -> RebuildError + '_ {
    move |e| RebuildError::File {
        file: file.to_string(),
        message: e.to_string(),
    }
}

/// Reads the current snapshot of `table` into a key index over the columns `primary_key`.
pub async fn rebuild(
    table: &Table,
    encoder: &KeyEncoder,
    primary_key: &[String],
    max_bytes: usize,
) -> Result<Rebuilt, RebuildError> {
    let mut out = Rebuilt {
        index: KeyIndex::bounded(max_bytes),
        duplicates: 0,
    };
    let meta = table.metadata();
    let io = table.file_io();
    let Some(head) = meta.current_snapshot() else {
        return Ok(out);
    };
    let list = manifest_list(io, meta, head).await?;
    let mut deleted: HashMap<String, HashSet<u64>> = HashMap::new();
    // Equality deletes (an index over its bound wrote some): key → the newest delete's
    // sequence number; it removes the key's rows of lower sequence numbers.
    let mut equality: HashMap<Box<[u8]>, i64> = HashMap::new();
    for m in list
        .entries()
        .iter()
        .filter(|m| m.content == ManifestContentType::Deletes)
    {
        let manifest = m.load_manifest(io).await?;
        for e in manifest.entries() {
            if e.status() == ManifestStatus::Deleted {
                continue;
            }
            let path = e.data_file().file_path();
            match e.content_type() {
                DataContentType::PositionDeletes => {
                    for (file, pos) in read_position_deletes(io, path).await? {
                        deleted.entry(file).or_default().insert(pos);
                    }
                }
                DataContentType::EqualityDeletes => {
                    let seq = e.sequence_number().unwrap_or(m.sequence_number);
                    for key in read_keys(io, path, encoder, primary_key).await? {
                        let at = equality.entry(key).or_insert(seq);
                        *at = (*at).max(seq);
                    }
                }
                DataContentType::Data => {}
            }
        }
    }
    // Oldest first, so a key live twice resolves to its newest row.
    let mut live = live_data_entries(io, list.entries()).await?;
    live.sort_by_key(|e| e.sequence_number);
    for entry in live {
        let path = entry.data_file.file_path().to_string();
        let seq = entry.sequence_number;
        let gone = deleted.get(&path);
        for (at, key) in read_keys(io, &path, encoder, primary_key)
            .await?
            .into_iter()
            .enumerate()
        {
            let at = at as u64;
            if gone.is_some_and(|g| g.contains(&at)) || equality.get(&key).is_some_and(|s| *s > seq)
            {
                continue;
            }
            if out.index.get(&key).is_some() {
                out.duplicates += 1;
            }
            out.index.load(key, &path, at, UNKNOWN_PARTITION);
        }
    }
    Ok(out)
}

/// The encoded keys of every row of a data or equality delete file, in row order.
pub async fn read_keys(
    io: &iceberg::io::FileIO,
    path: &str,
    encoder: &KeyEncoder,
    primary_key: &[String],
) -> Result<Vec<Box<[u8]>>, RebuildError> {
    let path = path.to_string();
    let mut out = Vec::new();
    {
        let bytes = io.new_input(&path)?.read().await?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(file_error(&path))?;
        let arrow = builder.schema().clone();
        let mut roots = Vec::new();
        for name in primary_key {
            let (i, _) = arrow
                .column_with_name(name)
                .ok_or_else(|| RebuildError::File {
                    file: path.clone(),
                    message: format!("no key column `{name}`"),
                })?;
            roots.push(i);
        }
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
        let reader = builder
            .with_projection(mask)
            .build()
            .map_err(file_error(&path))?;
        for batch in reader {
            let batch = batch.map_err(|e| RebuildError::File {
                file: path.clone(),
                message: e.to_string(),
            })?;
            let columns: Vec<ArrayRef> = primary_key
                .iter()
                .map(|name| batch.column_by_name(name).cloned())
                .collect::<Option<_>>()
                .ok_or_else(|| RebuildError::File {
                    file: path.clone(),
                    message: "key column missing from the projection".into(),
                })?;
            let keys = encoder
                .encode_keys(&columns)
                .map_err(|e| RebuildError::File {
                    file: path.clone(),
                    message: e.to_string(),
                })?;
            out.extend(keys.iter().map(|k| Box::<[u8]>::from(k.as_ref())));
        }
    }
    Ok(out)
}

/// The `(data file, position)` pairs of a position delete file.
pub async fn read_position_deletes(
    io: &iceberg::io::FileIO,
    path: &str,
) -> Result<Vec<(String, u64)>, RebuildError> {
    use arrow_array::cast::AsArray;
    let bytes = io.new_input(path)?.read().await?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.build())
        .map_err(file_error(path))?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| RebuildError::File {
            file: path.to_string(),
            message: e.to_string(),
        })?;
        let (Some(files), Some(positions)) = (
            batch.column_by_name("file_path"),
            batch.column_by_name("pos"),
        ) else {
            return Err(RebuildError::File {
                file: path.to_string(),
                message: "not a position delete file (no file_path and pos columns)".into(),
            });
        };
        let files = files.as_string::<i32>();
        let positions = positions.as_primitive::<arrow_array::types::Int64Type>();
        for (file, pos) in files.iter().zip(positions.iter()) {
            if let (Some(file), Some(pos)) = (file, pos) {
                out.push((file.to_string(), u64::try_from(pos).unwrap_or(0)));
            }
        }
    }
    Ok(out)
}
