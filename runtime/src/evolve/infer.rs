//! A table's columns inferred from its first record (pure): every top-level field with a value
//! becomes an optional column — booleans → boolean, integers → long, other numbers → double,
//! strings → string (timestamptz when the spec names the field in `timestampFields`). Null,
//! object and array values give no column; schema evolution adds columns for later records.

use tidewater_crds::pipeline::{ColumnSpec, CreateTableSpec};

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

/// `create` with its empty schema filled from `record` (a JSON object).
pub fn infer_definition(
    create: &CreateTableSpec,
    record: &[u8],
) -> Result<CreateTableSpec, String> {
    let fields =
        field_shapes(record).map_err(|e| format!("the first record is not a JSON object: {e}"))?;
    let schema: Vec<ColumnSpec> = fields
        .into_iter()
        .filter_map(|(name, shape)| {
            let ty = match shape {
                Shape::String if create.timestamp_fields.contains(&name) => "timestamptz".into(),
                other => column_type(other)?.to_string(),
            };
            Some(ColumnSpec {
                name,
                column_type: ty,
                required: false,
                doc: None,
            })
        })
        .collect();
    if schema.is_empty() {
        return Err("the first record has no field a column can be inferred from".into());
    }
    let mut inferred = create.clone();
    inferred.schema = schema;
    Ok(inferred)
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
        }
    }

    #[test]
    fn columns_follow_the_first_records_values() {
        let record = br#"{"id":7,"ts":"2026-12-01T10:00:00Z","price":9.5,"ok":true,"name":"x",
            "gone":null,"meta":{"a":1},"tags":[1]}"#;
        let d = infer_definition(&spec(&["ts"]), record).unwrap();
        let columns: Vec<(&str, &str, bool)> = d
            .schema
            .iter()
            .map(|c| (c.name.as_str(), c.column_type.as_str(), c.required))
            .collect();
        assert_eq!(
            columns,
            vec![
                ("id", "long", false),
                ("ts", "timestamptz", false),
                ("price", "double", false),
                ("ok", "boolean", false),
                ("name", "string", false),
            ]
        );
        assert_eq!(
            d.partition_by,
            vec!["day(ts)".to_string()],
            "the rest is kept"
        );
        let plain = infer_definition(&spec(&[]), record).unwrap();
        assert_eq!(plain.schema[1].column_type, "string", "ts without the hint");
    }

    #[test]
    fn records_without_a_usable_field_are_refused() {
        for bad in [&b"[1]"[..], b"{\"a\":null,\"b\":[]}", b"nope"] {
            assert!(infer_definition(&spec(&[]), bad).is_err());
        }
    }
}
