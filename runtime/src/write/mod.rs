//! Data files for one table between two barriers: Arrow batches in, Iceberg data files out.
//! Parquet settings come from the table properties overridden by the spec's writeProperties.

pub mod data_file;
pub mod equality_delete;
pub mod partition;
pub mod position_delete;

pub use data_file::DataFileRef;

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use crate::write::partition::Partitioner;
use arrow_array::RecordBatch;
use arrow_schema::SchemaRef as ArrowSchemaRef;
use iceberg::{
    arrow::schema_to_arrow_schema,
    io::FileIO,
    spec::{DataFile, DataFileFormat, FormatVersion, PartitionSpecRef, SchemaRef},
    table::Table,
    writer::{
        IcebergWriter, IcebergWriterBuilder,
        base_writer::data_file_writer::{DataFileWriter, DataFileWriterBuilder},
        file_writer::{
            ParquetWriterBuilder,
            location_generator::{DefaultFileNameGenerator, DefaultLocationGenerator},
            rolling_writer::RollingFileWriterBuilder,
        },
        partitioning::{PartitioningWriter, fanout_writer::FanoutWriter},
    },
};
use parquet::{
    basic::{BrotliLevel, Compression, GzipLevel, ZstdLevel},
    file::properties::WriterProperties,
};

type FileBuilder =
    DataFileWriterBuilder<ParquetWriterBuilder, DefaultLocationGenerator, DefaultFileNameGenerator>;

/// Default target size of a data file (Iceberg's default).
const DEFAULT_TARGET_FILE_SIZE: usize = 512 * 1024 * 1024;

/// Writers cannot be prepared for a table.
#[derive(Debug, thiserror::Error)]
pub enum WriterSetupError {
    /// A table property (or a spec override of it) has a value the writer cannot use.
    #[error("table property {property}: {message}")]
    Property {
        /// The property, e.g. `write.parquet.compression-level`.
        property: &'static str,
        /// What is wrong with its value.
        message: String,
    },
    /// The table's schema or location cannot be written (no Arrow form, no location).
    #[error(transparent)]
    Iceberg(#[from] iceberg::Error),
}

fn bad(property: &'static str, message: impl Into<String>) -> WriterSetupError {
    WriterSetupError::Property {
        property,
        message: message.into(),
    }
}

const COMPRESSION_LEVEL: &str = "write.parquet.compression-level";
const COMPRESSION_CODEC: &str = "write.parquet.compression-codec";

/// Parquet writer properties from Iceberg `write.parquet.*` properties.
pub fn parquet_properties(
    props: &HashMap<String, String>,
) -> Result<WriterProperties, WriterSetupError> {
    let level = props
        .get(COMPRESSION_LEVEL)
        .map(|l| {
            l.parse::<i32>()
                .map_err(|_| bad(COMPRESSION_LEVEL, format!("`{l}` is not a number")))
        })
        .transpose()?;
    let codec = props
        .get(COMPRESSION_CODEC)
        .map_or("zstd", String::as_str)
        .to_ascii_lowercase();
    let compression = match codec.as_str() {
        "zstd" => Compression::ZSTD(
            ZstdLevel::try_new(level.unwrap_or(1))
                .map_err(|e| bad(COMPRESSION_LEVEL, format!("zstd: {e}")))?,
        ),
        "snappy" => Compression::SNAPPY,
        "gzip" => Compression::GZIP(
            GzipLevel::try_new(u32::try_from(level.unwrap_or(6)).unwrap_or(6))
                .map_err(|e| bad(COMPRESSION_LEVEL, format!("gzip: {e}")))?,
        ),
        "brotli" => Compression::BROTLI(
            BrotliLevel::try_new(u32::try_from(level.unwrap_or(1)).unwrap_or(1))
                .map_err(|e| bad(COMPRESSION_LEVEL, format!("brotli: {e}")))?,
        ),
        "lz4" | "lz4_raw" => Compression::LZ4_RAW,
        "uncompressed" | "none" => Compression::UNCOMPRESSED,
        other => return Err(bad(COMPRESSION_CODEC, format!("unknown codec `{other}`"))),
    };
    let mut builder = WriterProperties::builder().set_compression(compression);
    let size = |key: &'static str| -> Result<Option<usize>, WriterSetupError> {
        props
            .get(key)
            .map(|v| {
                v.parse::<usize>()
                    .map_err(|_| bad(key, format!("`{v}` is not a size in bytes")))
            })
            .transpose()
    };
    if let Some(page) = size("write.parquet.page-size-bytes")? {
        builder = builder.set_data_page_size_limit(page);
    }
    if let Some(dict) = size("write.parquet.dict-size-bytes")? {
        builder = builder.set_dictionary_page_size_limit(dict);
    }
    Ok(builder.build())
}

/// Everything needed to open writers for one table version; cheap to clone.
#[derive(Clone)]
pub struct WriterFactory {
    schema: SchemaRef,
    arrow_schema: ArrowSchemaRef,
    partition_spec: PartitionSpecRef,
    format_version: FormatVersion,
    properties: WriterProperties,
    target_file_size: usize,
    file_io: FileIO,
    locations: DefaultLocationGenerator,
}

impl WriterFactory {
    /// Prepares writers for the table's current schema and default partition spec.
    pub fn new(
        table: &Table,
        overrides: &BTreeMap<String, String>,
    ) -> Result<Self, WriterSetupError> {
        let metadata = table.metadata();
        let mut props = metadata.properties().clone();
        props.extend(overrides.iter().map(|(k, v)| (k.clone(), v.clone())));
        let schema = metadata.current_schema().clone();
        let arrow_schema = Arc::new(schema_to_arrow_schema(&schema)?);
        let target_file_size = props
            .get("write.target-file-size-bytes")
            .map(|v| {
                v.parse::<usize>().map_err(|_| {
                    bad(
                        "write.target-file-size-bytes",
                        format!("`{v}` is not a size in bytes"),
                    )
                })
            })
            .transpose()?
            .unwrap_or(DEFAULT_TARGET_FILE_SIZE);
        Ok(Self {
            arrow_schema,
            partition_spec: metadata.default_partition_spec().clone(),
            format_version: metadata.format_version(),
            properties: parquet_properties(&props)?,
            target_file_size,
            file_io: table.file_io().clone(),
            locations: DefaultLocationGenerator::new(metadata)?,
            schema,
        })
    }

    /// The Iceberg schema the files are written with.
    pub fn schema(&self) -> &iceberg::spec::Schema {
        &self.schema
    }

    /// Arrow schema (with Iceberg field ids) that batches must have.
    pub fn arrow_schema(&self) -> ArrowSchemaRef {
        self.arrow_schema.clone()
    }

    /// Whether the files are written under a partitioned spec.
    pub fn is_partitioned(&self) -> bool {
        !self.partition_spec.is_unpartitioned()
    }

    /// Partition spec id the files are written with.
    pub fn partition_spec_id(&self) -> i32 {
        self.partition_spec.spec_id()
    }

    /// Opens a writer whose file names start with `prefix` (must be unique per writer).
    pub async fn open(&self, prefix: String) -> iceberg::Result<TableWriter> {
        let names = DefaultFileNameGenerator::new(prefix, None, DataFileFormat::Parquet);
        let parquet = ParquetWriterBuilder::new(self.properties.clone(), self.schema.clone());
        let rolling = RollingFileWriterBuilder::new(
            parquet,
            self.target_file_size,
            self.file_io.clone(),
            self.locations.clone(),
            names,
        );
        let builder = DataFileWriterBuilder::new(rolling);
        let inner = if self.partition_spec.is_unpartitioned() {
            Inner::Unpartitioned(Box::new(builder.build(None).await?))
        } else {
            let partitioner = Partitioner::new(self.schema.clone(), self.partition_spec.clone())?;
            Inner::Partitioned(Box::new((FanoutWriter::new(builder), partitioner)))
        };
        Ok(TableWriter {
            inner,
            factory: self.clone(),
            wrote: false,
        })
    }

    /// References to written files, for the acknowledgement and the checkpoint record.
    pub fn references(&self, files: Vec<DataFile>) -> iceberg::Result<Vec<DataFileRef>> {
        let partition_type = self.partition_spec.partition_type(&self.schema)?;
        files
            .into_iter()
            .map(|f| DataFileRef::encode(f, &partition_type, self.format_version))
            .collect()
    }
}

enum Inner {
    Unpartitioned(
        Box<
            DataFileWriter<
                ParquetWriterBuilder,
                DefaultLocationGenerator,
                DefaultFileNameGenerator,
            >,
        >,
    ),
    Partitioned(Box<(FanoutWriter<FileBuilder>, Partitioner)>),
}

/// Open data files of one table.
pub struct TableWriter {
    inner: Inner,
    factory: WriterFactory,
    /// Whether a row was written (the file status exists only then).
    wrote: bool,
}

impl TableWriter {
    /// Writes a batch (split by partition when the table is partitioned).
    pub async fn write(&mut self, batch: RecordBatch) -> iceberg::Result<()> {
        self.wrote |= batch.num_rows() > 0;
        match &mut self.inner {
            Inner::Unpartitioned(w) => w.write(batch).await,
            Inner::Partitioned(p) => {
                let (w, splitter) = &mut **p;
                for (key, part) in splitter.split(&batch)? {
                    w.write(key, part).await?;
                }
                Ok(())
            }
        }
    }

    /// The file the last batch went into and the rows in it so far (the last batch's rows are
    /// the final ones): where each written row is, for an upsert's key index. None for a
    /// partitioned table or before the first write.
    pub fn position(&self) -> Option<(String, usize)> {
        use iceberg::writer::CurrentFileStatus;
        match &self.inner {
            Inner::Unpartitioned(w) if self.wrote => {
                Some((w.current_file_path(), w.current_row_num()))
            }
            _ => None,
        }
    }

    /// Whether the table's files are partitioned.
    pub fn is_partitioned(&self) -> bool {
        matches!(self.inner, Inner::Partitioned(_))
    }

    /// Closes all files and returns references to them, with their total size.
    ///
    /// Files on a local filesystem are fsynced (with their directories) first, so a
    /// checkpoint record never references data that a power loss could take away; object
    /// stores are durable when the upload completes.
    pub async fn close(self) -> iceberg::Result<(Vec<DataFileRef>, u64)> {
        let factory = self.factory.clone();
        let files = self.close_files().await?;
        let bytes = files.iter().map(DataFile::file_size_in_bytes).sum();
        Ok((factory.references(files)?, bytes))
    }

    /// Closes all files (fsynced when local) and returns them.
    pub async fn close_files(self) -> iceberg::Result<Vec<DataFile>> {
        let files = match self.inner {
            Inner::Unpartitioned(mut w) => w.close().await?,
            Inner::Partitioned(p) => p.0.close().await?,
        };
        sync_local_files(files.iter().map(DataFile::file_path)).map_err(|e| {
            iceberg::Error::new(
                iceberg::ErrorKind::Unexpected,
                format!("fsync data file: {e}"),
            )
        })?;
        Ok(files)
    }
}

/// Fsyncs local files (`file://` or absolute paths) and, once each, their directories.
fn sync_local_files<'a>(paths: impl Iterator<Item = &'a str>) -> std::io::Result<()> {
    let mut dirs = std::collections::BTreeSet::new();
    for path in paths {
        let local = match path.strip_prefix("file://") {
            Some(p) => p,
            None if path.starts_with('/') => path,
            None => continue,
        };
        std::fs::File::open(local)?.sync_all()?;
        if let Some(dir) = std::path::Path::new(local).parent() {
            dirs.insert(dir.to_path_buf());
        }
    }
    for dir in dirs {
        std::fs::File::open(&dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syncs_local_files_and_skips_remote_ones() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.parquet");
        std::fs::write(&f, b"x").unwrap();
        let local = format!("file://{}", f.display());
        sync_local_files([local.as_str(), "s3://bucket/b.parquet"].into_iter()).unwrap();
        let missing = format!("file://{}/missing.parquet", dir.path().display());
        assert!(sync_local_files([missing.as_str()].into_iter()).is_err());
    }

    #[test]
    fn maps_codecs_and_levels() {
        let p = |pairs: &[(&str, &str)]| {
            parquet_properties(
                &pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                    .collect(),
            )
        };
        let col = parquet::schema::types::ColumnPath::from("x");
        assert_eq!(
            p(&[]).unwrap().compression(&col),
            Compression::ZSTD(ZstdLevel::try_new(1).unwrap())
        );
        assert_eq!(
            p(&[("write.parquet.compression-codec", "snappy")])
                .unwrap()
                .compression(&col),
            Compression::SNAPPY
        );
        assert_eq!(
            p(&[
                ("write.parquet.compression-codec", "zstd"),
                ("write.parquet.compression-level", "9")
            ])
            .unwrap()
            .compression(&col),
            Compression::ZSTD(ZstdLevel::try_new(9).unwrap())
        );
        assert!(p(&[("write.parquet.compression-codec", "zip")]).is_err());
        assert!(p(&[("write.parquet.page-size-bytes", "big")]).is_err());
    }
}
