//! Position delete files: sorted `(data file path, row position)` pairs in Iceberg's reserved
//! schema (field ids 2147483546 `file_path`, 2147483545 `pos`), readable by every v2 reader.
//! iceberg-rust 0.10 writes equality deletes but not these; the Parquet part is its writer.

use std::sync::Arc;

use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use iceberg::{
    arrow::schema_to_arrow_schema,
    metadata_columns::{
        RESERVED_COL_NAME_DELETE_FILE_PATH, RESERVED_COL_NAME_DELETE_FILE_POS,
        RESERVED_FIELD_ID_DELETE_FILE_PATH, RESERVED_FIELD_ID_DELETE_FILE_POS,
    },
    spec::{DataContentType, DataFile, NestedField, PrimitiveType, Schema, Struct, Type},
    writer::file_writer::{
        FileWriter, FileWriterBuilder, ParquetWriterBuilder, location_generator::LocationGenerator,
    },
};

use super::{DataFileRef, WriterFactory};

/// The schema of a position delete file.
pub fn position_delete_schema() -> iceberg::Result<Schema> {
    Schema::builder()
        .with_fields([
            Arc::new(NestedField::required(
                RESERVED_FIELD_ID_DELETE_FILE_PATH,
                RESERVED_COL_NAME_DELETE_FILE_PATH,
                Type::Primitive(PrimitiveType::String),
            )),
            Arc::new(NestedField::required(
                RESERVED_FIELD_ID_DELETE_FILE_POS,
                RESERVED_COL_NAME_DELETE_FILE_POS,
                Type::Primitive(PrimitiveType::Long),
            )),
        ])
        .build()
}

impl WriterFactory {
    /// Writes `deletes` (any order; sorted here as the spec asks) into one position delete
    /// file named `{prefix}-deletes.parquet` of an unpartitioned table: its reference, rows and
    /// bytes. None when empty.
    pub async fn write_position_deletes(
        &self,
        prefix: &str,
        mut deletes: Vec<(Arc<str>, u64)>,
    ) -> iceberg::Result<Option<(DataFileRef, u64, u64)>> {
        if deletes.is_empty() {
            return Ok(None);
        }
        deletes.sort_unstable();
        deletes.dedup();
        let schema = Arc::new(position_delete_schema()?);
        let arrow = Arc::new(schema_to_arrow_schema(&schema)?);
        let paths = StringArray::from_iter_values(deletes.iter().map(|(p, _)| &**p));
        let positions = Int64Array::from_iter_values(
            deletes
                .iter()
                .map(|(_, pos)| i64::try_from(*pos).unwrap_or(i64::MAX)),
        );
        let batch = RecordBatch::try_new(
            arrow,
            vec![Arc::new(paths) as ArrayRef, Arc::new(positions) as ArrayRef],
        )
        .map_err(|e| iceberg::Error::new(iceberg::ErrorKind::Unexpected, e.to_string()))?;
        let location = self
            .locations
            .generate_location(None, &format!("{prefix}-deletes.parquet"));
        let output = self.file_io.new_output(&location)?;
        let mut writer = ParquetWriterBuilder::new(self.properties.clone(), schema)
            .build(output)
            .await?;
        writer.write(&batch).await?;
        let mut built = writer.close().await?;
        let Some(mut builder) = built.pop() else {
            return Ok(None);
        };
        builder.content(DataContentType::PositionDeletes);
        self.finish_delete_file(builder).map(Some)
    }

    /// A delete file's entry (content set by the caller) in this factory's unpartitioned
    /// spec, fsynced when local: its reference, rows and bytes.
    pub(super) fn finish_delete_file(
        &self,
        mut builder: iceberg::spec::DataFileBuilder,
    ) -> iceberg::Result<(DataFileRef, u64, u64)> {
        builder
            .partition(Struct::empty())
            .partition_spec_id(self.partition_spec.spec_id());
        let file: DataFile = builder
            .build()
            .map_err(|e| iceberg::Error::new(iceberg::ErrorKind::DataInvalid, e.to_string()))?;
        super::sync_local_files(std::iter::once(file.file_path())).map_err(|e| {
            iceberg::Error::new(
                iceberg::ErrorKind::Unexpected,
                format!("fsync delete file: {e}"),
            )
        })?;
        let (rows, bytes) = (file.record_count(), file.file_size_in_bytes());
        let reference = self
            .references(vec![file])?
            .pop()
            .expect("one file in, one out");
        Ok((reference, rows, bytes))
    }
}
