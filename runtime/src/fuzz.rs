//! Fuzz entry points (`fuzz/`, run with `cargo fuzz`; CI replays the stored corpus through
//! the same functions in a unit test). Each one feeds arbitrary bytes to a decoder or a pure
//! decision and panics only when a property breaks: a decoder either takes a record whole or
//! leaves the batch untouched (and a finished batch is a valid Arrow batch); a resolved route is
//! a valid table name; inferred columns, from a JSON record or any Avro schema, always make a
//! valid Iceberg schema the decoder can fill; a change event decodes into images inside the
//! record or a reason.

use std::{borrow::Cow, sync::Arc};

use arrow_schema::{DataType, Field, Schema, TimeUnit};
use tidewater_crds::pipeline::CreateTableSpec;

use crate::{
    decode::{AvroWriter, Pushed, RowBatcher},
    evolve::{infer_schema, table_schema},
    route::{RecordView, Template, json_field},
};

/// Every column kind the JSON decoder fills, required and optional, nested ones too.
fn decoder_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("n", DataType::Int32, true),
        Field::new("f", DataType::Float32, true),
        Field::new("d", DataType::Float64, true),
        Field::new("price", DataType::Decimal128(10, 2), true),
        Field::new("day", DataType::Date32, true),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
            true,
        ),
        Field::new(
            "local",
            DataType::Timestamp(TimeUnit::Microsecond, None),
            true,
        ),
        Field::new("s", DataType::Utf8, true),
        Field::new("b", DataType::Boolean, true),
        Field::new("u", DataType::FixedSizeBinary(16), true),
        Field::new("bin", DataType::Binary, true),
        Field::new(
            "meta",
            DataType::Struct(
                vec![
                    Field::new("a", DataType::Int64, false),
                    Field::new_list("xs", Field::new("element", DataType::Utf8, true), true),
                ]
                .into(),
            ),
            true,
        ),
        Field::new(
            "attrs",
            DataType::Map(
                Arc::new(Field::new(
                    "key_value",
                    DataType::Struct(
                        vec![
                            Field::new("key", DataType::Utf8, false),
                            Field::new("value", DataType::Float64, true),
                        ]
                        .into(),
                    ),
                    false,
                )),
                false,
            ),
            true,
        ),
    ]))
}

/// The JSON decoder: a record is appended whole or not at all, by both entry points.
pub fn json_decoder(data: &[u8]) {
    let mut plain = RowBatcher::new(decoder_schema()).expect("every kind is supported");
    let mut evolving = RowBatcher::new(decoder_schema()).expect("every kind is supported");
    let before = plain.rows();
    match plain.push(data) {
        Ok(()) => assert_eq!(plain.rows(), before + 1),
        Err(e) => {
            assert_eq!(
                plain.rows(),
                before,
                "a failed record leaves the batch alone"
            );
            assert!(!e.message.is_empty(), "a reason is given");
        }
    }
    match evolving.push_evolving(data) {
        Ok(Pushed::Appended) => assert_eq!(evolving.rows(), 1),
        Ok(Pushed::NewFields(fields)) => {
            assert_eq!(evolving.rows(), 0);
            assert!(!fields.is_empty());
        }
        Err(_) => assert_eq!(evolving.rows(), 0),
    }
    let rows = plain.rows();
    if let Some(batch) = plain.finish() {
        assert_eq!(batch.num_rows(), rows);
    }
}

/// The writer schema the Avro decoder is fuzzed with: every type it maps, nested ones too.
pub const AVRO_FUZZ_SCHEMA: &str = r#"{"type": "record", "name": "F", "namespace": "fuzz", "fields": [
    {"name": "id", "type": "long"},
    {"name": "n", "type": ["null", "int"]},
    {"name": "f", "type": "float"},
    {"name": "d", "type": "double"},
    {"name": "ok", "type": "boolean"},
    {"name": "s", "type": "string"},
    {"name": "raw", "type": "bytes"},
    {"name": "fx", "type": {"type": "fixed", "name": "Four", "size": 4}},
    {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A", "B"]}},
    {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}},
    {"name": "day", "type": {"type": "int", "logicalType": "date"}},
    {"name": "at", "type": {"type": "long", "logicalType": "time-micros"}},
    {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    {"name": "local", "type": {"type": "long", "logicalType": "local-timestamp-micros"}},
    {"name": "u", "type": {"type": "string", "logicalType": "uuid"}},
    {"name": "r", "type": ["null", {"type": "record", "name": "In", "fields": [
        {"name": "a", "type": "string"},
        {"name": "xs", "type": {"type": "array", "items": ["null", "long"]}}]}]},
    {"name": "again", "type": ["null", "In"]},
    {"name": "m", "type": {"type": "map", "values": {"type": "array", "items": "string"}}},
    {"name": "either", "type": ["null", "long", "string"]}
]}"#;

/// The Avro decoder on arbitrary datum bytes for [`AVRO_FUZZ_SCHEMA`]: a record is appended
/// whole or not at all, and the batch builds (nested arrays included).
pub fn avro_decoder(data: &[u8]) {
    crate::decode::limit_avro_allocations(1 << 20);
    let schema = apache_avro::Schema::parse_str(AVRO_FUZZ_SCHEMA).expect("the fuzz schema parses");
    let writer = AvroWriter::new(schema).expect("the fuzz schema resolves");
    let table = table_schema(&writer, &[]).expect("the fuzz schema maps");
    let arrow = iceberg::arrow::schema_to_arrow_schema(&table).expect("arrow schema");
    let mut batcher = RowBatcher::new(Arc::new(arrow)).expect("every mapped type is filled");
    for _ in 0..2 {
        let before = batcher.rows();
        match batcher.push_avro(&writer, data) {
            Ok(()) => assert_eq!(batcher.rows(), before + 1),
            Err(e) => {
                assert_eq!(
                    batcher.rows(),
                    before,
                    "a failed record leaves the batch alone"
                );
                assert!(!e.message.is_empty(), "a reason is given");
            }
        }
    }
    let rows = batcher.rows();
    if let Some(batch) = batcher.finish() {
        assert_eq!(batch.num_rows(), rows);
    }
}

/// Any Avro schema text: when it maps to a table, the table schema is valid Iceberg, converts
/// to Arrow, and the Avro decoder accepts it.
pub fn avro_table(data: &[u8]) {
    crate::decode::limit_avro_allocations(1 << 20);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(writer) = AvroWriter::parse(text) else {
        return;
    };
    let Ok(table) = table_schema(&writer, &["ts".into()]) else {
        return;
    };
    let arrow = iceberg::arrow::schema_to_arrow_schema(&table)
        .unwrap_or_else(|e| panic!("{table:?} does not convert to Arrow: {e}"));
    if let Err(e) = RowBatcher::new(Arc::new(arrow)) {
        panic!("the decoder cannot fill the table it mapped: {e}");
    }
}

/// A record as a template reads it, from a JSON value.
struct JsonRecord(serde_json::Value);

impl RecordView for JsonRecord {
    fn key(&self) -> Option<Cow<'_, str>> {
        self.0.get("key")?.as_str().map(Cow::Borrowed)
    }
    fn value_field(&self, path: &[String]) -> Option<Cow<'_, str>> {
        json_field(&self.0, path)
    }
    fn header(&self, name: &str) -> Option<Cow<'_, str>> {
        self.0
            .get("headers")?
            .get(name)?
            .as_str()
            .map(Cow::Borrowed)
    }
}

/// Route templates: `TEMPLATE\nTOPIC\nJSON`; whatever resolves is `namespace….table` with
/// non-empty identifier parts.
pub fn route_template(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n');
    let (template, topic, json) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or("topic"),
        parts.next().unwrap_or("{}"),
    );
    let Ok(template) = Template::parse(template) else {
        return;
    };
    let record = JsonRecord(serde_json::from_str(json).unwrap_or_default());
    if let Ok(name) = template.resolve(topic, &record) {
        assert!(!name.namespace.is_empty(), "{name}");
        for part in name.namespace.iter().chain([&name.name]) {
            assert!(!part.is_empty(), "{name}");
            assert!(
                part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{name}"
            );
            assert!(!part.starts_with(|c: char| c.is_ascii_digit()), "{name}");
        }
    }
}

/// Columns inferred from any JSON record make a valid Iceberg schema that converts to Arrow
/// and that the decoder fills.
pub fn infer_table(data: &[u8]) {
    let create = CreateTableSpec {
        schema: vec![],
        timestamp_fields: vec!["ts".into()],
        partition_by: vec![],
        properties: Default::default(),
        sort_by: vec![],
        format_version: None,
    };
    if let Ok(schema) = infer_schema(&create, data) {
        let arrow = iceberg::arrow::schema_to_arrow_schema(&schema)
            .unwrap_or_else(|e| panic!("{schema:?} does not convert to Arrow: {e}"));
        let mut batcher = RowBatcher::new(Arc::new(arrow))
            .unwrap_or_else(|e| panic!("the decoder cannot fill an inferred table: {e}"));
        // The record it was inferred from converts whole or not at all (it need not fit: a
        // later array element or a hinted timestamp may not).
        let fitted = batcher.push(data).is_ok();
        assert_eq!(batcher.rows(), usize::from(fitted));
        if let Some(batch) = batcher.finish() {
            assert_eq!(batch.num_rows(), 1);
        }
    }
}

/// The change decoders (Debezium envelopes, marked rows): every outcome is a change whose
/// images are JSON objects inside the record, or a reason; the images convert into a table's
/// rows or key columns whole or not at all.
pub fn change_decoder(data: &[u8]) {
    use crate::decode::change::{self, Change};
    let mut rows = RowBatcher::new(decoder_schema()).expect("every kind is supported");
    let key_schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
    let mut keys = RowBatcher::new(key_schema).expect("a long key");
    keys.ignore_unknown_fields();
    let inside = |image: &[u8]| {
        let range = data.as_ptr_range();
        assert!(
            range.contains(&image.as_ptr()) && image.len() <= data.len(),
            "an image is a slice of the record"
        );
        // Syntax only: a number beyond f64 is JSON, and the batcher's to refuse.
        let raw: Box<serde_json::value::RawValue> =
            serde_json::from_slice(image).expect("an image is JSON");
        assert!(raw.get().starts_with('{'), "an image is an object");
    };
    for decoded in [change::debezium(data), change::marked(data, "__deleted")] {
        match decoded {
            Ok(Change::Upsert { after, before }) => {
                inside(after);
                let n = rows.rows();
                match rows.push(after) {
                    Ok(()) => assert_eq!(rows.rows(), n + 1),
                    Err(_) => assert_eq!(rows.rows(), n),
                }
                if let Some(b) = before {
                    inside(b);
                    let _ = keys.push(b);
                }
            }
            Ok(Change::Delete { key }) => {
                inside(key);
                let n = keys.rows();
                match keys.push(key) {
                    Ok(()) => assert_eq!(keys.rows(), n + 1),
                    Err(e) => {
                        assert_eq!(keys.rows(), n);
                        assert!(!e.message.is_empty());
                    }
                }
            }
            Ok(Change::Skip) => {}
            Err(e) => assert!(!e.message.is_empty() && !e.kind.is_empty(), "a reason"),
        }
    }
    let n = rows.rows();
    if let Some(batch) = rows.finish() {
        assert_eq!(batch.num_rows(), n);
    }
    let n = keys.rows();
    if let Some(batch) = keys.finish() {
        assert_eq!(batch.num_rows(), n);
    }
}

#[cfg(test)]
mod tests {
    //! Replays every stored input of `fuzz/corpus/<target>/` (and the crashes fuzzing found,
    //! kept as regression inputs in `fuzz/regressions/<target>/`).

    use std::path::PathBuf;

    fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        let mut out = Vec::new();
        for dir in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
                continue;
            };
            for e in entries.flatten() {
                out.push((e.path(), std::fs::read(e.path()).unwrap()));
            }
        }
        out
    }

    fn replay(target: &str, run: fn(&[u8])) {
        let inputs = inputs(target);
        assert!(!inputs.is_empty(), "no stored inputs for {target}");
        for (path, data) in inputs {
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{target}: {} fails", path.display());
        }
    }

    #[test]
    fn the_json_decoder_corpus_replays() {
        replay("json_decoder", super::json_decoder);
    }

    #[test]
    fn the_route_template_corpus_replays() {
        replay("route_template", super::route_template);
    }

    #[test]
    fn the_avro_decoder_corpus_replays() {
        replay("avro_decoder", super::avro_decoder);
    }

    /// The corpus holds 70 datums written by fastavro (an independent encoder) with the fuzz
    /// schema, and 30 mutations of them: every one of the 70 must convert.
    #[test]
    fn datums_written_by_fastavro_convert() {
        use std::sync::Arc;

        use crate::{
            decode::{AvroWriter, RowBatcher},
            evolve::table_schema,
        };
        let schema = apache_avro::Schema::parse_str(super::AVRO_FUZZ_SCHEMA).unwrap();
        let writer = AvroWriter::new(schema).unwrap();
        let table = table_schema(&writer, &[]).unwrap();
        let arrow = Arc::new(iceberg::arrow::schema_to_arrow_schema(&table).unwrap());
        let mut batcher = RowBatcher::new(arrow).unwrap();
        let converted = inputs("avro_decoder")
            .iter()
            .filter(|(_, data)| batcher.push_avro(&writer, data).is_ok())
            .count();
        assert!(converted >= 70, "{converted} of 100 converted");
        assert_eq!(batcher.finish().unwrap().num_rows(), converted);
    }

    #[test]
    fn the_avro_table_corpus_replays() {
        replay("avro_table", super::avro_table);
    }

    #[test]
    fn the_change_decoder_corpus_replays() {
        replay("change_decoder", super::change_decoder);
    }

    #[test]
    fn the_infer_table_corpus_replays() {
        replay("infer_table", super::infer_table);
    }
}
