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
    /// The table has deletes this index cannot account for.
    #[error(
        "rebuilding the key index: the table has equality delete files ({0}); position-mode \
         upsert needs a table whose deletes are position deletes (compact it first)"
    )]
    EqualityDeletes(String),
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
) -> Result<Rebuilt, RebuildError> {
    let mut out = Rebuilt {
        index: KeyIndex::default(),
        duplicates: 0,
    };
    let meta = table.metadata();
    let io = table.file_io();
    let Some(head) = meta.current_snapshot() else {
        return Ok(out);
    };
    let list = manifest_list(io, meta, head).await?;
    let mut deleted: HashMap<String, HashSet<u64>> = HashMap::new();
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
                    return Err(RebuildError::EqualityDeletes(path.to_string()));
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
        let gone = deleted.get(&path);
        let mut pos = 0u64;
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
            for (i, key) in keys.iter().enumerate() {
                let at = pos + i as u64;
                if gone.is_some_and(|g| g.contains(&at)) {
                    continue;
                }
                let key: Box<[u8]> = key.as_ref().into();
                if out
                    .index
                    .insert(key, &path, at, UNKNOWN_PARTITION)
                    .is_some()
                {
                    out.duplicates += 1;
                }
            }
            pos += batch.num_rows() as u64;
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
