//! Primary-key columns → comparable bytes (Arrow's row format): the same key gives the same
//! bytes whether it comes from a full row, a delete's key image or a file read back. Pure.

use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch};
use arrow_row::{RowConverter, Rows, SortField};
use arrow_schema::{ArrowError, Field, Schema, SchemaRef};

/// Encodes the key columns of a table.
pub struct KeyEncoder {
    /// Index of each key column in the table's Arrow schema.
    columns: Vec<usize>,
    /// The key columns alone (what a delete's key image is converted into).
    key_schema: SchemaRef,
    converter: RowConverter,
}

impl KeyEncoder {
    /// An encoder for the columns `primary_key` of `table` (the table's Arrow schema). Every
    /// key column must exist, be required and be a primitive type.
    pub fn new(table: &Schema, primary_key: &[String]) -> Result<Self, String> {
        let mut columns = Vec::new();
        let mut fields: Vec<Field> = Vec::new();
        for name in primary_key {
            let (i, field) = table
                .column_with_name(name)
                .ok_or_else(|| format!("primary key column `{name}` is not in the table"))?;
            if field.is_nullable() {
                return Err(format!(
                    "primary key column `{name}` is optional in the table; key columns must be \
                     required"
                ));
            }
            if field.data_type().is_nested() {
                return Err(format!(
                    "primary key column `{name}` has type {}; key columns must be primitive",
                    field.data_type()
                ));
            }
            columns.push(i);
            fields.push(field.clone());
        }
        let converter = RowConverter::new(
            fields
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )
        .map_err(|e| e.to_string())?;
        Ok(Self {
            columns,
            key_schema: Arc::new(Schema::new(fields)),
            converter,
        })
    }

    /// The schema of the key columns alone.
    pub fn key_schema(&self) -> SchemaRef {
        self.key_schema.clone()
    }

    /// The keys of full table rows.
    pub fn encode_rows(&self, batch: &RecordBatch) -> Result<Rows, ArrowError> {
        let cols: Vec<ArrayRef> = self
            .columns
            .iter()
            .map(|&i| batch.column(i).clone())
            .collect();
        self.converter.convert_columns(&cols)
    }

    /// The keys of a batch of key columns (in key order), cast to the table's key types (a
    /// file read back may carry a different but equivalent Arrow type).
    pub fn encode_keys(&self, columns: &[ArrayRef]) -> Result<Rows, ArrowError> {
        let cast: Vec<ArrayRef> = columns
            .iter()
            .zip(self.key_schema.fields())
            .map(|(c, f)| {
                if c.data_type() == f.data_type() {
                    Ok(c.clone())
                } else {
                    arrow_cast::cast(c, f.data_type())
                }
            })
            .collect::<Result<_, _>>()?;
        self.converter.convert_columns(&cast)
    }
}

impl KeyEncoder {
    /// The key columns of encoded keys (what an equality delete file holds).
    pub fn decode(&self, keys: &[Box<[u8]>]) -> Result<RecordBatch, ArrowError> {
        let parser = self.converter.parser();
        let columns = self
            .converter
            .convert_rows(keys.iter().map(|k| parser.parse(k)))?;
        RecordBatch::try_new(self.key_schema.clone(), columns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Int32Array, Int64Array, StringArray};
    use arrow_schema::DataType;

    #[test]
    fn the_same_key_from_a_row_and_from_a_key_image_encodes_alike() {
        let table = Schema::new(vec![
            Field::new("v", DataType::Utf8, true),
            Field::new("id", DataType::Int64, false),
            Field::new("region", DataType::Utf8, false),
        ]);
        let enc = KeyEncoder::new(&table, &["id".into(), "region".into()]).unwrap();
        let rows = RecordBatch::try_new(
            Arc::new(table),
            vec![
                Arc::new(StringArray::from(vec![Some("x"), None])),
                Arc::new(Int64Array::from(vec![1, 2])),
                Arc::new(StringArray::from(vec!["eu", "us"])),
            ],
        )
        .unwrap();
        let from_rows = enc.encode_rows(&rows).unwrap();
        // A file read back with 32-bit ids: cast to the table's type first.
        let from_keys = enc
            .encode_keys(&[
                Arc::new(Int32Array::from(vec![2, 1])),
                Arc::new(StringArray::from(vec!["us", "eu"])),
            ])
            .unwrap();
        assert_eq!(from_rows.row(0), from_keys.row(1));
        // And back: the key columns of the encoded keys.
        let keys: Vec<Box<[u8]>> = from_rows.iter().map(|r| r.as_ref().into()).collect();
        let decoded = enc.decode(&keys).unwrap();
        assert_eq!(decoded.num_rows(), 2);
        assert_eq!(decoded.schema().field(0).name(), "id");
        assert_eq!(
            enc.encode_keys(decoded.columns()).unwrap().row(1),
            from_rows.row(1)
        );
        assert_eq!(from_rows.row(1), from_keys.row(0));
        assert_ne!(from_rows.row(0), from_rows.row(1));
    }

    #[test]
    fn key_columns_must_exist_and_be_required() {
        let table = Schema::new(vec![Field::new("id", DataType::Int64, true)]);
        let e = KeyEncoder::new(&table, &["id".into()]).err().unwrap();
        assert!(e.contains("must be required"), "{e}");
        let e = KeyEncoder::new(&table, &["nope".into()]).err().unwrap();
        assert!(e.contains("`nope` is not in the table"), "{e}");
    }
}
