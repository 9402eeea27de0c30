//! The Iceberg shape of an Avro writer schema (pure): what a table created from it looks like,
//! and what schema evolution compares a table against when a new writer schema arrives.
//!
//! boolean, int, long, float, double, string, bytes → their Iceberg types; enum → string;
//! fixed → binary; record → struct; array → list; map → map (string keys); a union of null and
//! one type → that type, optional; logical types: decimal → decimal(p, s), uuid → uuid, date →
//! date, time-millis/micros → time, timestamp-millis/micros/nanos → timestamptz,
//! local-timestamp-* → timestamp. A field is required unless its type admits null. What has
//! no Iceberg counterpart (unions of several types, duration, big-decimal, null alone, a record
//! that contains itself) gives no column: such fields are counted as unknown fields, never
//! silently converted. A schema that maps to more than [`MAX_FIELDS`] fields is refused.

use std::sync::Arc;

use apache_avro::{Schema as Avro, schema::Name};
use iceberg::spec::{ListType, MapType, NestedField, PrimitiveType, Schema, StructType, Type};

use crate::decode::AvroWriter;

/// The table schema of `writer` (a record); fields named in `timestamp_fields` that are
/// `long` (epoch milliseconds) or `string` (ISO 8601) become `timestamptz` columns.
pub fn table_schema(writer: &AvroWriter, timestamp_fields: &[String]) -> Result<Schema, String> {
    let Avro::Record(record) = writer.resolve(&writer.schema) else {
        return Err("the writer schema is not a record".into());
    };
    let mut ids = 0;
    let mut fields = Vec::new();
    let mut enclosing = vec![record.name.clone()];
    for field in &record.fields {
        let hinted = timestamp_fields.contains(&field.name);
        let Some((ty, required)) =
            iceberg_type(writer, &field.schema, &mut ids, hinted, 0, &mut enclosing)
        else {
            continue;
        };
        ids += 1;
        fields.push(Arc::new(NestedField::new(ids, &field.name, ty, required)));
    }
    if ids > MAX_FIELDS {
        return Err(format!(
            "the writer schema maps to more than {MAX_FIELDS} nested fields (named types reused \
             many times over): not supported"
        ));
    }
    if fields.is_empty() {
        return Err("the writer schema has no field a column can be made of".into());
    }
    renumber(fields)
}

/// How deep types may nest.
const MAX_DEPTH: usize = 32;

/// How many fields, nested ones included, a table mapped from one writer schema may have. Named
/// types can be reused: a 1 KB schema whose record types each hold two fields of the next one
/// expands to billions of fields (found by fuzzing: 24 GB for one schema); the mapping stops
/// counting past this and the schema is refused.
pub const MAX_FIELDS: i32 = 10_000;

/// The Iceberg type of `schema` and whether a value is always present.
fn iceberg_type(
    writer: &AvroWriter,
    schema: &Avro,
    ids: &mut i32,
    timestamp_hint: bool,
    depth: usize,
    enclosing: &mut Vec<Name>,
) -> Option<(Type, bool)> {
    if depth > MAX_DEPTH || *ids > MAX_FIELDS {
        return None;
    }
    let p = |t: PrimitiveType| Some((Type::Primitive(t), true));
    match writer.resolve(schema) {
        Avro::Null | Avro::Duration | Avro::BigDecimal | Avro::Ref { .. } => None,
        Avro::Boolean => p(PrimitiveType::Boolean),
        Avro::Int => p(PrimitiveType::Int),
        Avro::Long if timestamp_hint => p(PrimitiveType::Timestamptz),
        Avro::Long => p(PrimitiveType::Long),
        Avro::Float => p(PrimitiveType::Float),
        Avro::Double => p(PrimitiveType::Double),
        Avro::String if timestamp_hint => p(PrimitiveType::Timestamptz),
        Avro::String | Avro::Enum(_) => p(PrimitiveType::String),
        Avro::Bytes | Avro::Fixed(_) => p(PrimitiveType::Binary),
        Avro::Decimal(d) => {
            let precision = u32::try_from(d.precision).ok().filter(|p| *p <= 38)?;
            let scale = u32::try_from(d.scale).ok()?;
            p(PrimitiveType::Decimal { precision, scale })
        }
        Avro::Uuid => p(PrimitiveType::Uuid),
        Avro::Date => p(PrimitiveType::Date),
        Avro::TimeMillis | Avro::TimeMicros => p(PrimitiveType::Time),
        Avro::TimestampMillis | Avro::TimestampMicros | Avro::TimestampNanos => {
            p(PrimitiveType::Timestamptz)
        }
        Avro::LocalTimestampMillis | Avro::LocalTimestampMicros | Avro::LocalTimestampNanos => {
            p(PrimitiveType::Timestamp)
        }
        Avro::Union(u) => {
            let branches: Vec<&Avro> = u
                .variants()
                .iter()
                .filter(|v| !matches!(v, Avro::Null))
                .collect();
            let [only] = branches.as_slice() else {
                return None;
            };
            let (ty, _) = iceberg_type(writer, only, ids, timestamp_hint, depth + 1, enclosing)?;
            Some((ty, branches.len() == u.variants().len()))
        }
        Avro::Record(record) => {
            // A record inside itself would be an endless struct: no column.
            if enclosing.contains(&record.name) {
                return None;
            }
            enclosing.push(record.name.clone());
            let mut fields = Vec::new();
            for field in &record.fields {
                let Some((ty, required)) =
                    iceberg_type(writer, &field.schema, ids, false, depth + 1, enclosing)
                else {
                    continue;
                };
                *ids += 1;
                fields.push(Arc::new(NestedField::new(*ids, &field.name, ty, required)));
            }
            enclosing.pop();
            Some((Type::Struct(StructType::new(fields)), true))
        }
        Avro::Array(array) => {
            let (ty, required) =
                iceberg_type(writer, &array.items, ids, false, depth + 1, enclosing)?;
            *ids += 1;
            let element = NestedField::list_element(*ids, ty, required);
            Some((Type::List(ListType::new(Arc::new(element))), true))
        }
        Avro::Map(map) => {
            let (ty, required) =
                iceberg_type(writer, &map.types, ids, false, depth + 1, enclosing)?;
            *ids += 2;
            let key =
                NestedField::map_key_element(*ids - 1, Type::Primitive(PrimitiveType::String));
            let value = NestedField::map_value_element(*ids, ty, required);
            Some((
                Type::Map(MapType::new(Arc::new(key), Arc::new(value))),
                true,
            ))
        }
    }
}

/// A schema of `columns` with field ids 1, 2, … in order: top-level columns first, then the
/// nested fields of each, as Iceberg's own id assignment does.
pub(super) fn renumber(columns: Vec<Arc<NestedField>>) -> Result<Schema, String> {
    let top: Vec<NestedField> = columns.iter().map(|f| f.as_ref().clone()).collect();
    let mut next = i32::try_from(top.len()).unwrap_or(i32::MAX);
    let fields: Vec<Arc<NestedField>> = top
        .into_iter()
        .enumerate()
        .map(|(i, mut f)| {
            f.id = i32::try_from(i + 1).unwrap_or(i32::MAX);
            *f.field_type = super::fresh_ids(&f.field_type, &mut next);
            Arc::new(f)
        })
        .collect();
    Schema::builder()
        .with_fields(fields)
        .build()
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evolve::{Change, Observation, apply, decide};

    fn writer(fields: &str) -> AvroWriter {
        let text = format!(r#"{{"type":"record","name":"E","namespace":"n","fields":[{fields}]}}"#);
        AvroWriter::new(Avro::parse_str(&text).unwrap()).unwrap()
    }

    #[test]
    fn a_record_inside_itself_gives_no_column_and_reuse_is_bounded() {
        // A linked list: `next` recurses into the enclosing record, `v` is a column.
        let list = writer(
            r#"{"name":"v","type":"long"},
               {"name":"next","type":["null","n.E"]},
               {"name":"kids","type":{"type":"array","items":"n.E"}}"#,
        );
        let t = table_schema(&list, &[]).unwrap();
        let names: Vec<&str> = t
            .as_struct()
            .fields()
            .iter()
            .map(|f| f.name.as_str())
            .collect();
        assert_eq!(names, ["v"]);
        // 20 record types, each with two fields of the next: 2^20 leaves if expanded.
        let mut types =
            String::from(r#"{"type":"record","name":"T20","fields":[{"name":"x","type":"long"}]}"#);
        for i in (0..20).rev() {
            types = format!(
                r#"{{"type":"record","name":"T{i}","fields":[{{"name":"a","type":{types}}},{{"name":"b","type":"T{}"}}]}}"#,
                i + 1
            );
        }
        let started = std::time::Instant::now();
        let e = table_schema(
            &writer(&format!(r#"{{"name":"root","type":{types}}}"#)),
            &[],
        )
        .unwrap_err();
        assert!(e.contains("more than 10000 nested fields"), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        // Found by fuzzing: two fields of the enclosing record's own type (24 GB before).
        let fuzzed = AvroWriter::parse(include_str!(
            "../../../fuzz/regressions/avro_table/oom-recursive-record-fields"
        ))
        .unwrap();
        assert!(table_schema(&fuzzed, &["ts".into()]).is_ok());
    }

    const V1: &str = r#"{"name":"id","type":"int"},
        {"name":"ts","type":"long"},
        {"name":"price","type":{"type":"bytes","logicalType":"decimal","precision":9,"scale":2}},
        {"name":"ratio","type":"float"},
        {"name":"kind","type":"string"},
        {"name":"either","type":["null","int","string"]},
        {"name":"items","type":{"type":"array","items":{"type":"record","name":"Item","fields":[
            {"name":"sku","type":"string"}]}}},
        {"name":"ship","type":["null",{"type":"record","name":"A","fields":[
            {"name":"city","type":"string"}]}]}"#;

    #[test]
    fn columns_keep_avro_types_nullability_and_get_unique_ids() {
        let schema = table_schema(&writer(V1), &["ts".into()]).unwrap();
        let f = |n: &str| schema.field_by_name(n).unwrap().clone();
        assert_eq!(
            *f("ts").field_type,
            Type::Primitive(PrimitiveType::Timestamptz),
            "hinted"
        );
        assert!(f("id").required && !f("ship").required);
        assert!(
            schema.field_by_name("either").is_none(),
            "a two-type union has no column"
        );
        assert_eq!(
            f("items.element.sku").id,
            9,
            "nested ids follow the top-level columns"
        );
        let ids: Vec<i32> = (1..=schema.highest_field_id()).collect();
        assert!(
            ids.iter().all(|id| schema.field_by_id(*id).is_some()),
            "dense ids"
        );
    }

    #[test]
    fn a_new_writer_schema_adds_widens_and_relaxes_nested_fields_too() {
        let table = table_schema(&writer(V1), &[]).unwrap();
        // v2: id long, price wider, ratio double, kind dropped, a new nested field in items
        // and in ship, a new top-level record.
        let v2 = writer(
            r#"{"name":"id","type":"long"},
            {"name":"ts","type":"long"},
            {"name":"price","type":{"type":"bytes","logicalType":"decimal","precision":12,"scale":2}},
            {"name":"ratio","type":"double"},
            {"name":"items","type":{"type":"array","items":{"type":"record","name":"Item","fields":[
                {"name":"sku","type":"string"},{"name":"qty","type":["null","int"]}]}}},
            {"name":"ship","type":["null",{"type":"record","name":"A","fields":[
                {"name":"city","type":"string"},{"name":"zip","type":"string"}]}]},
            {"name":"meta","type":{"type":"record","name":"M","fields":[{"name":"src","type":"string"}]}}"#,
        );
        let seen = Observation::Writer(Arc::new(table_schema(&v2, &[]).unwrap()));
        let changes = decide(&table, &seen, false);
        let shown: Vec<String> = changes.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "widen id to long",
                "widen price to decimal(12, 2)",
                "widen ratio to double",
                "add column items.element.qty int",
                "add column ship.zip string",
                "add column meta struct<src: string>",
                "make kind optional",
            ],
        );
        let next = apply(&table, &changes, table.highest_field_id()).unwrap();
        let qty = next.field_by_name("items.element.qty").unwrap();
        assert!(!qty.required && qty.id > table.highest_field_id());
        let src = next.field_by_name("meta.src").unwrap();
        assert!(src.id > qty.id, "a new struct's fields get new ids too");
        assert!(!next.field_by_name("kind").unwrap().required);
        assert_eq!(
            next.field_by_name("ship.city").unwrap().id,
            table.field_by_name("ship.city").unwrap().id
        );
        assert!(decide(&next, &seen, false).is_empty(), "nothing left to do");
        // A string where a long was asks nothing: those records are refused by the converter.
        let retyped = writer(r#"{"name":"ts","type":"string"}"#);
        let seen = Observation::Writer(Arc::new(table_schema(&retyped, &[]).unwrap()));
        assert!(
            decide(&next, &seen, false)
                .iter()
                .all(|c| matches!(c, Change::MakeOptional { .. }))
        );
    }
}
