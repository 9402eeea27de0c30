//! A table's columns inferred from its first JSON record (pure): every top-level field with a
//! value becomes an optional column — booleans → boolean, integers → long, other numbers →
//! double, strings → string (timestamptz when the spec names the field in
//! `timestampFields`), objects → structs of their fields, arrays → lists of their first
//! non-null element's type. Null values, empty objects and arrays without a typed element give
//! no column; schema evolution adds columns (and struct fields) for later records.

use std::sync::Arc;

use iceberg::spec::{NestedField, PrimitiveType, Schema, Type};
use tidewater_crds::pipeline::CreateTableSpec;

use super::column_type;
use crate::decode::{AvroWriter, Shape, field_shapes};

/// What a table created on first use takes its columns from.
#[derive(Debug, Clone, Copy)]
pub enum Sample<'a> {
    /// The first JSON record (columns inferred from its values).
    Json(&'a [u8]),
    /// The Avro writer schema of the first record (or the subject's newest).
    Avro(&'a AvroWriter),
}

/// The table schema `create` (which lists no columns) gets from `record` (a JSON object);
/// field ids 1…n for the columns, then their nested fields.
pub fn infer_schema(create: &CreateTableSpec, record: &[u8]) -> Result<Schema, String> {
    let fields =
        field_shapes(record).map_err(|e| format!("the first record is not a JSON object: {e}"))?;
    let columns: Vec<Arc<NestedField>> = fields
        .iter()
        .filter_map(|(name, shape)| {
            let ty = match shape {
                Shape::String if create.timestamp_fields.contains(name) => {
                    Type::Primitive(PrimitiveType::Timestamptz)
                }
                other => column_type(other)?,
            };
            Some(Arc::new(NestedField::optional(0, name, ty)))
        })
        .collect();
    if columns.is_empty() {
        return Err("the first record has no field a column can be inferred from".into());
    }
    super::avro::renumber(columns)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(timestamps: &[&str]) -> CreateTableSpec {
        CreateTableSpec {
            schema: vec![],
            timestamp_fields: timestamps.iter().map(|s| (*s).to_string()).collect(),
            partition_by: vec!["day(ts)".into()],
            properties: Default::default(),
            sort_by: vec![],
            format_version: None,
        }
    }

    #[test]
    fn columns_follow_the_first_records_values() {
        let record = br#"{"id":7,"ts":"2026-12-01T10:00:00Z","price":9.5,"ok":true,"name":"x",
            "gone":null,"meta":{"a":1,"deep":{"b":"s"},"none":null},"tags":[null,1],"empty":[],
            "nothing":{}}"#;
        let schema = infer_schema(&spec(&["ts"]), record).unwrap();
        let columns: Vec<(i32, &str, String, bool)> = schema
            .as_struct()
            .fields()
            .iter()
            .map(|f| {
                (
                    f.id,
                    f.name.as_str(),
                    super::super::type_name(&f.field_type),
                    f.required,
                )
            })
            .collect();
        let expected: Vec<(i32, &str, &str)> = vec![
            (1, "id", "long"),
            (2, "ts", "timestamptz"),
            (3, "price", "double"),
            (4, "ok", "boolean"),
            (5, "name", "string"),
            (6, "meta", "struct<a: long, deep: struct<b: string>>"),
            (7, "tags", "list<long>"),
        ];
        let got: Vec<(i32, &str, &str)> = columns
            .iter()
            .map(|(id, n, t, _)| (*id, *n, t.as_str()))
            .collect();
        assert_eq!(got, expected);
        assert!(columns.iter().all(|c| !c.3), "all optional");
        assert_eq!(
            schema.field_by_name("meta.deep.b").unwrap().id,
            10,
            "nested ids after the columns"
        );
        let plain = infer_schema(&spec(&[]), record).unwrap();
        assert_eq!(
            *plain.field_by_name("ts").unwrap().field_type,
            Type::Primitive(PrimitiveType::String),
            "ts without the hint"
        );
    }

    #[test]
    fn records_without_a_usable_field_are_refused() {
        for bad in [
            &b"[1]"[..],
            b"{\"a\":null,\"b\":[]}",
            b"nope",
            b"{\"c\":{}}",
        ] {
            assert!(infer_schema(&spec(&[]), bad).is_err());
        }
    }
}
