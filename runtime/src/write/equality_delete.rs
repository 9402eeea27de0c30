//! Equality delete files: the key columns of deleted or replaced keys, with the table's
//! identifier field ids as equality ids. They remove every row with such a key written by an
//! earlier commit (sequence number strictly lower), not the rows committed with them.

use std::sync::Arc;

use arrow_array::RecordBatch;
use iceberg::{
    spec::{DataContentType, Schema},
    writer::file_writer::{
        FileWriter, FileWriterBuilder, ParquetWriterBuilder, location_generator::LocationGenerator,
    },
};

use super::{DataFileRef, WriterFactory};

impl WriterFactory {
    /// Writes `keys` (a batch of the key columns, named and typed as in the table) into one
    /// equality delete file named `{prefix}-eq-deletes.parquet` of an unpartitioned table:
    /// its reference, rows and bytes. None when empty.
    pub async fn write_equality_deletes(
        &self,
        prefix: &str,
        keys: RecordBatch,
    ) -> iceberg::Result<Option<(DataFileRef, u64, u64)>> {
        if keys.num_rows() == 0 {
            return Ok(None);
        }
        let mut ids = Vec::new();
        let mut fields = Vec::new();
        for f in keys.schema().fields() {
            let field = self.schema.field_by_name(f.name()).ok_or_else(|| {
                iceberg::Error::new(
                    iceberg::ErrorKind::DataInvalid,
                    format!("key column {} is not in the table", f.name()),
                )
            })?;
            ids.push(field.id);
            fields.push(field.clone());
        }
        let schema = Arc::new(Schema::builder().with_fields(fields).build()?);
        let location = self
            .locations
            .generate_location(None, &format!("{prefix}-eq-deletes.parquet"));
        let output = self.file_io.new_output(&location)?;
        let mut writer = ParquetWriterBuilder::new(self.properties.clone(), schema)
            .build(output)
            .await?;
        writer.write(&keys).await?;
        let Some(mut builder) = writer.close().await?.pop() else {
            return Ok(None);
        };
        builder
            .content(DataContentType::EqualityDeletes)
            .equality_ids(Some(ids));
        self.finish_delete_file(builder).map(Some)
    }
}
