//! Record bytes (JSON here, Avro in `avro`) → Arrow rows for a table schema. Pure: no I/O.
//!
//! A record is parsed completely into scalars before anything is appended, so a record that
//! fails leaves the batch untouched and can be dead-lettered with a reason naming the field.

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
};

use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::SchemaRef;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};

mod avro;
mod builder;
pub mod change;
mod json;
mod value;
use builder::{Builder, Datum};
use value::{Kind, Scalar, ValueSeed};

pub use avro::{AvroWriter, MIN_AVRO_ALLOCATION, frame, limit_avro_allocations};

/// Why a record could not be converted. `kind` is a stable label for metrics and headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertError {
    /// `invalid-json`, `not-an-object`, `invalid-avro`, `not-a-record`, `missing-required`,
    /// `wrong-type`, `out-of-range`, `oversize` or `no-value`.
    pub kind: &'static str,
    /// Human-readable reason naming the field.
    pub message: String,
    /// The column the reason is about, when it is about one.
    pub field: Option<String>,
}

/// What a JSON value looks like (schema evolution and inference read it), nested values
/// included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// `null`.
    Null,
    /// `true` / `false`.
    Boolean,
    /// A number without fraction or exponent.
    Integer,
    /// Any other number.
    Number,
    /// A string.
    String,
    /// An object: its fields in order (a name seen twice counts once, first place).
    Object(Vec<(String, Shape)>),
    /// An array: the shape of its first element that is not null (`None`: empty or all null).
    Array(Option<Box<Shape>>),
}

/// What [`RowBatcher::push_evolving`] did with a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pushed {
    /// The record is in the batch.
    Appended,
    /// Nothing was appended: the record has non-null fields the table has no column for (at
    /// the top level, or inside a struct column: then the column's whole value is given).
    NewFields(Vec<(String, Shape)>),
}

impl fmt::Display for ConvertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for ConvertError {}

/// How many distinct unknown field names a batcher tracks by name; further names are counted
/// together (a stream with ever-new field names must not grow memory or metric series).
pub const UNKNOWN_FIELD_NAMES: usize = 100;

/// Fields of converted records that the table has no column for, since the last
/// [`RowBatcher::take_unknown_fields`]. They are not in the written rows.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UnknownFields {
    /// Records that carried each field, by name.
    pub by_name: BTreeMap<String, u64>,
    /// Occurrences of names beyond the first [`UNKNOWN_FIELD_NAMES`].
    pub others: u64,
    /// Names seen for the first time (each is reported once per batcher).
    pub new_names: Vec<String>,
    /// Set once, when the first name beyond the tracked ones was seen.
    pub overflowed: bool,
}

#[derive(Debug, Clone)]
struct Column {
    name: String,
    kind: Kind,
    required: bool,
}

/// Accumulates converted records into Arrow record batches of one schema.
pub struct RowBatcher {
    schema: SchemaRef,
    columns: Vec<Column>,
    index: HashMap<String, usize>,
    builders: Vec<Builder>,
    rows: usize,
    unknown: UnknownFields,
    /// Every unknown name tracked so far (at most [`UNKNOWN_FIELD_NAMES`]).
    tracked: HashSet<String>,
    /// Whether a name beyond the tracked ones was seen.
    overflowed: bool,
    /// Fields that are neither columns nor unknown (a delete marker), or all non-columns when
    /// `None` (a batcher of key columns reading whole rows).
    ignored: Option<Vec<String>>,
}

/// A table the JSON decoder cannot fill: a required column of a type it does not support.
#[derive(Debug, thiserror::Error)]
#[error("required column `{column}` has type {data_type} which this format cannot fill yet")]
pub struct UnsupportedColumn {
    /// The column.
    pub column: String,
    /// Its Arrow type.
    pub data_type: String,
}

impl RowBatcher {
    /// A batcher for an Arrow schema derived from the table's Iceberg schema. Fails when a
    /// required column has a type the converter cannot fill.
    pub fn new(schema: SchemaRef) -> Result<Self, UnsupportedColumn> {
        let mut columns = Vec::new();
        for field in schema.fields() {
            let kind = Kind::of(field.data_type());
            if kind == Kind::Unsupported && !field.is_nullable() {
                return Err(UnsupportedColumn {
                    column: field.name().clone(),
                    data_type: field.data_type().to_string(),
                });
            }
            columns.push(Column {
                name: field.name().clone(),
                kind,
                required: !field.is_nullable(),
            });
        }
        let index = columns
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.clone(), i))
            .collect();
        let builders = schema
            .fields()
            .iter()
            .zip(&columns)
            .map(|(f, c)| Builder::new(c.kind, f.data_type()))
            .collect();
        Ok(Self {
            schema,
            columns,
            index,
            builders,
            rows: 0,
            unknown: UnknownFields::default(),
            tracked: HashSet::new(),
            overflowed: false,
            ignored: Some(Vec::new()),
        })
    }

    /// Fields of this name are skipped: not columns, not unknown fields, never evolved into
    /// columns (e.g. an upsert's delete marker).
    pub fn ignore_field(&mut self, name: &str) {
        if let Some(ignored) = &mut self.ignored {
            ignored.push(name.to_string());
        }
    }

    /// Every field without a column is skipped (a batcher of key columns reading whole rows).
    pub fn ignore_unknown_fields(&mut self) {
        self.ignored = None;
    }

    /// The Arrow schema of the batches.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Rows appended since the last `finish`.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Converts one JSON record and appends it; on error nothing is appended.
    pub fn push(&mut self, payload: &[u8]) -> Result<(), ConvertError> {
        let mut unknown = Vec::new();
        let values = self.parse(payload, &mut unknown, false)?;
        self.append(values);
        for (name, _) in unknown {
            self.note_unknown(&name);
        }
        Ok(())
    }

    /// Like [`Self::push`], but a record with non-null fields the table has no column for is
    /// not appended: their names and shapes are returned, for the schema to evolve first.
    pub fn push_evolving(&mut self, payload: &[u8]) -> Result<Pushed, ConvertError> {
        let mut unknown = Vec::new();
        let values = self.parse(payload, &mut unknown, true)?;
        let new: Vec<(String, Shape)> = unknown
            .into_iter()
            .filter_map(|(name, shape)| match shape {
                Some(Shape::Null) | None => None,
                Some(shape) => Some((name.into_owned(), shape)),
            })
            .collect();
        if !new.is_empty() {
            return Ok(Pushed::NewFields(new));
        }
        self.append(values);
        Ok(Pushed::Appended)
    }

    fn append(&mut self, (values, mut nested): Parsed<'_>) {
        if nested.is_empty() {
            for (builder, value) in self.builders.iter_mut().zip(values) {
                builder.append(value);
            }
        } else {
            nested.sort_by_key(|(i, _)| *i);
            let mut nested = nested.into_iter().peekable();
            for (i, (builder, value)) in self.builders.iter_mut().zip(values).enumerate() {
                match nested.next_if(|(j, _)| *j == i) {
                    Some((_, d)) => builder.append_datum(d),
                    None => builder.append(value),
                }
            }
        }
        self.rows += 1;
    }

    fn note_unknown(&mut self, name: &str) {
        if let Some(n) = self.unknown.by_name.get_mut(name) {
            *n += 1;
        } else if self.tracked.contains(name) {
            self.unknown.by_name.insert(name.to_string(), 1);
        } else if self.tracked.len() < UNKNOWN_FIELD_NAMES {
            self.tracked.insert(name.to_string());
            self.unknown.by_name.insert(name.to_string(), 1);
            self.unknown.new_names.push(name.to_string());
        } else {
            if !self.overflowed {
                self.overflowed = true;
                self.unknown.overflowed = true;
            }
            self.unknown.others += 1;
        }
    }

    /// The unknown fields of the records pushed since the last call.
    pub fn take_unknown_fields(&mut self) -> UnknownFields {
        std::mem::take(&mut self.unknown)
    }

    fn parse<'a>(
        &self,
        payload: &'a [u8],
        unknown: &mut Vec<(Cow<'a, str>, Option<Shape>)>,
        shapes: bool,
    ) -> Result<Parsed<'a>, ConvertError> {
        let mut failure = None;
        let seed = RecordSeed {
            batcher: self,
            failure: &mut failure,
            unknown,
            shapes,
        };
        let mut de = serde_json::Deserializer::from_slice(payload);
        let parsed = seed.deserialize(&mut de).and_then(|v| de.end().map(|()| v));
        let values = match parsed {
            Ok(values) => values,
            Err(e) => {
                return Err(failure.unwrap_or_else(|| ConvertError {
                    kind: if e.is_data() {
                        "not-an-object"
                    } else {
                        "invalid-json"
                    },
                    message: e.to_string(),
                    field: None,
                }));
            }
        };
        for (i, (column, value)) in self.columns.iter().zip(&values.0).enumerate() {
            let present = *value != Scalar::Null
                || values.1.iter().any(|(j, d)| *j == i && *d != Datum::Null);
            if column.required && !present {
                return Err(ConvertError {
                    kind: "missing-required",
                    message: format!("required field `{}` is missing or null", column.name),
                    field: Some(column.name.clone()),
                });
            }
        }
        Ok(values)
    }

    /// Takes the rows appended so far as a record batch (None when empty).
    pub fn finish(&mut self) -> Option<RecordBatch> {
        if self.rows == 0 {
            return None;
        }
        let arrays: Vec<ArrayRef> = self.builders.iter_mut().map(Builder::finish).collect();
        self.rows = 0;
        Some(RecordBatch::try_new(self.schema.clone(), arrays).expect("builders match schema"))
    }
}

struct RecordSeed<'b, 'de> {
    batcher: &'b RowBatcher,
    failure: &'b mut Option<ConvertError>,
    unknown: &'b mut Vec<(Cow<'de, str>, Option<Shape>)>,
    /// Whether the shapes of unknown fields' values are wanted.
    shapes: bool,
}

/// A parsed record: a scalar per column (null for nested columns), and the values of the
/// nested columns that the record has, by column index.
type Parsed<'a> = (Vec<Scalar<'a>>, Vec<(usize, Datum)>);

impl<'de> DeserializeSeed<'de> for RecordSeed<'_, 'de> {
    type Value = Parsed<'de>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RecordSeed<'_, 'de> {
    type Value = Parsed<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut values = vec![Scalar::Null; self.batcher.columns.len()];
        let mut nested: Vec<(usize, Datum)> = Vec::new();
        // Records usually list fields in schema order: try the column after the last match
        // first, then the name index.
        let mut hint = 0;
        while let Some(slot) = map.next_key_seed(KeySeed {
            batcher: self.batcher,
            hint,
        })? {
            match slot {
                Slot::Column(i) => {
                    hint = i + 1;
                    let column = &self.batcher.columns[i];
                    if column.kind == Kind::Nested {
                        let value: serde_json::Value = map.next_value()?;
                        let data_type = self.batcher.schema.field(i).data_type();
                        let mut unknown = Vec::new();
                        match json::to_datum(&value, data_type, &column.name, &mut unknown) {
                            Ok(d) => {
                                nested.retain(|(j, _)| *j != i);
                                nested.push((i, d));
                            }
                            Err(e) => {
                                *self.failure = Some(e);
                                return Err(de::Error::custom("conversion failed"));
                            }
                        }
                        if self.shapes && !unknown.is_empty() {
                            let shape = json::shape_of(&value);
                            self.unknown
                                .push((Cow::Owned(column.name.clone()), Some(shape)));
                        } else {
                            self.unknown
                                .extend(unknown.into_iter().map(|p| (Cow::Owned(p), None)));
                        }
                        continue;
                    }
                    let seed = ValueSeed { kind: column.kind };
                    match map.next_value_seed(seed)? {
                        Ok(v) => values[i] = v,
                        Err((kind, message)) => {
                            *self.failure = Some(ConvertError {
                                kind,
                                message: format!("field `{}`: {message}", column.name),
                                field: Some(column.name.clone()),
                            });
                            return Err(de::Error::custom("conversion failed"));
                        }
                    }
                }
                Slot::Unknown(name) => {
                    let skip = match &self.batcher.ignored {
                        None => true,
                        Some(names) => names.iter().any(|n| *n == name),
                    };
                    if skip {
                        map.next_value::<IgnoredAny>()?;
                        continue;
                    }
                    let shape = if self.shapes {
                        Some(map.next_value_seed(ShapeSeed)?)
                    } else {
                        map.next_value::<IgnoredAny>()?;
                        None
                    };
                    self.unknown.push((name, shape));
                }
            }
        }
        Ok((values, nested))
    }
}

/// The top-level fields of a JSON object record, in their order, with the shapes of their
/// values (a name seen twice counts once, first place).
pub fn field_shapes(payload: &[u8]) -> Result<Vec<(String, Shape)>, String> {
    struct Fields;
    impl<'de> Visitor<'de> for Fields {
        type Value = Vec<(String, Shape)>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out: Vec<(String, Shape)> = Vec::new();
            while let Some(name) = map.next_key::<Cow<'de, str>>()? {
                let shape = map.next_value_seed(ShapeSeed)?;
                if !out.iter().any(|(n, _)| *n == name) {
                    out.push((name.into_owned(), shape));
                }
            }
            Ok(out)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(payload);
    let fields = de::Deserializer::deserialize_map(&mut de, Fields).map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(fields)
}

/// Reads a value only for its [`Shape`], skipping its content.
struct ShapeSeed;

impl<'de> DeserializeSeed<'de> for ShapeSeed {
    type Value = Shape;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Shape, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ShapeSeed {
    type Value = Shape;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Shape, E> {
        Ok(Shape::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Shape, E> {
        Ok(Shape::Null)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Shape, E> {
        Ok(Shape::Boolean)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Shape, E> {
        Ok(Shape::Integer)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Shape, E> {
        Ok(Shape::Integer)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Shape, E> {
        Ok(Shape::Number)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Shape, E> {
        Ok(Shape::String)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Shape, A::Error> {
        let mut fields: Vec<(String, Shape)> = Vec::new();
        while let Some(name) = map.next_key::<Cow<'de, str>>()? {
            let shape = map.next_value_seed(ShapeSeed)?;
            if !fields.iter().any(|(n, _)| *n == name) {
                fields.push((name.into_owned(), shape));
            }
        }
        Ok(Shape::Object(fields))
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Shape, A::Error> {
        let mut first = None;
        while let Some(shape) = seq.next_element_seed(ShapeSeed)? {
            if first.is_none() && shape != Shape::Null {
                first = Some(Box::new(shape));
            }
        }
        Ok(Shape::Array(first))
    }
}

/// Where a record's field goes.
enum Slot<'de> {
    /// Into this column.
    Column(usize),
    /// Nowhere: the table has no such column (the name, borrowed when it can be).
    Unknown(Cow<'de, str>),
}

/// Resolves a field name to its column index without allocating.
struct KeySeed<'b> {
    batcher: &'b RowBatcher,
    hint: usize,
}

impl KeySeed<'_> {
    fn column(&self, v: &str) -> Option<usize> {
        if self
            .batcher
            .columns
            .get(self.hint)
            .is_some_and(|c| c.name == v)
        {
            return Some(self.hint);
        }
        self.batcher.index.get(v).copied()
    }
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Slot<'de>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Slot<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(self
            .column(v)
            .map_or(Slot::Unknown(Cow::Borrowed(v)), Slot::Column))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self
            .column(v)
            .map_or_else(|| Slot::Unknown(Cow::Owned(v.to_string())), Slot::Column))
    }
}

#[cfg(test)]
mod tests {
    use arrow_array::{
        Array, Decimal128Array, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray,
    };
    use std::sync::Arc;

    use arrow_schema::{DataType, Field, Schema, TimeUnit};

    use super::*;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
                true,
            ),
            Field::new("user_id", DataType::Utf8, true),
            Field::new("amount", DataType::Float64, true),
            Field::new("price", DataType::Decimal128(10, 2), true),
            Field::new("n", DataType::Int32, true),
        ]))
    }

    #[test]
    fn unknown_fields_are_counted_by_name_and_new_names_reported_once() {
        let mut b = RowBatcher::new(schema()).unwrap();
        b.push(br#"{"id": 1, "color": "red", "size\u0041": 3}"#)
            .unwrap();
        b.push(br#"{"id": 2, "color": "blue"}"#).unwrap();
        // A record that is dead-lettered does not count: none of its fields are written.
        assert!(b.push(br#"{"id": "x", "shape": 1}"#).is_err());
        let u = b.take_unknown_fields();
        assert_eq!(
            u.by_name,
            BTreeMap::from([("color".to_string(), 2), ("sizeA".to_string(), 1)])
        );
        assert_eq!(u.new_names, ["color", "sizeA"]);
        assert_eq!((u.others, u.overflowed), (0, false));
        b.push(br#"{"id": 3, "color": "green"}"#).unwrap();
        let u = b.take_unknown_fields();
        assert_eq!(u.by_name, BTreeMap::from([("color".to_string(), 1)]));
        assert!(u.new_names.is_empty(), "reported once");
        for i in 0..UNKNOWN_FIELD_NAMES + 5 {
            b.push(format!(r#"{{"id": 4, "f{i}": 0}}"#).as_bytes())
                .unwrap();
        }
        let u = b.take_unknown_fields();
        assert_eq!(
            u.by_name.len(),
            UNKNOWN_FIELD_NAMES - 2,
            "two names were tracked before"
        );
        assert_eq!((u.others, u.overflowed), (7, true));
        b.push(br#"{"id": 5, "g": 0}"#).unwrap();
        let u = b.take_unknown_fields();
        assert_eq!(
            (u.others, u.overflowed),
            (1, false),
            "overflow reported once"
        );
        let batch = b.finish().unwrap();
        assert_eq!(batch.num_columns(), 6, "unknown fields are not in the rows");
    }

    fn err(payload: &str) -> ConvertError {
        RowBatcher::new(schema())
            .unwrap()
            .push(payload.as_bytes())
            .unwrap_err()
    }

    #[test]
    fn converts_with_the_coercions_users_expect() {
        let mut b = RowBatcher::new(schema()).unwrap();
        b.push(br#"{"id":1,"ts":"2026-01-02T03:04:05.5Z","user_id":"u\"1","amount":3,"price":"12.3","extra":{"a":[1]}}"#)
            .unwrap();
        b.push(br#"{"id":2,"ts":1767323045500,"amount":2.5,"price":7}"#)
            .unwrap();
        b.push(br#"{"id":3,"ts":"2026-01-02T05:04:05.5+02:00","user_id":null}"#)
            .unwrap();
        let batch = b.finish().unwrap();
        assert_eq!(batch.num_rows(), 3);
        let ids = batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(ids.values(), &[1, 2, 3]);
        let ts = batch
            .column(1)
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .unwrap();
        // ISO string, epoch millis and an offset all land on the same instant.
        assert_eq!(ts.value(0), 1_767_323_045_500_000);
        assert_eq!(ts.value(1), 1_767_323_045_500_000);
        assert_eq!(ts.value(2), 1_767_323_045_500_000);
        let users = batch
            .column(2)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(users.value(0), "u\"1");
        assert!(users.is_null(1) && users.is_null(2));
        let amount = batch
            .column(3)
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap();
        assert_eq!((amount.value(0), amount.value(1)), (3.0, 2.5));
        let price = batch
            .column(4)
            .as_any()
            .downcast_ref::<Decimal128Array>()
            .unwrap();
        assert_eq!((price.value(0), price.value(1)), (1230, 700));
        assert!(b.finish().is_none(), "finish resets the batch");
    }

    #[test]
    fn bad_records_name_the_field_and_leave_the_batch_untouched() {
        let mut b = RowBatcher::new(schema()).unwrap();
        b.push(br#"{"id":1}"#).unwrap();
        // The failure is in the last field: nothing of this record may be appended.
        assert!(b.push(br#"{"id":2,"user_id":"x","n":"oops"}"#).is_err());
        assert_eq!(b.rows(), 1);
        let batch = b.finish().unwrap();
        assert_eq!(batch.num_rows(), 1);
        assert_eq!(batch.column(2).len(), 1);

        let e = err(r#"{"id":"7"}"#);
        assert_eq!(e.kind, "wrong-type");
        assert_eq!(e.message, "field `id`: expected long, got string \"7\"");
        let e = err(r#"{"user_id":"a"}"#);
        assert_eq!(e.kind, "missing-required");
        assert!(e.message.contains("`id`"));
        assert_eq!(err(r#"{"id":null}"#).kind, "missing-required");
        assert_eq!(err(r#"{"id":1.5}"#).kind, "wrong-type");
        assert_eq!(err(r#"{"id":1,"n":3000000000}"#).kind, "out-of-range");
        assert_eq!(err(r#"{"id":1,"price":"1.234"}"#).kind, "out-of-range");
        assert_eq!(err(r#"{"id":1,"ts":"yesterday"}"#).kind, "wrong-type");
        assert_eq!(err(r#"{"id":1,"#).kind, "invalid-json");
        assert_eq!(err(r#"{"id":1} trailing"#).kind, "invalid-json");
        assert_eq!(err("[1,2]").kind, "not-an-object");
        assert_eq!(err("\u{1}garbage").kind, "invalid-json");
    }
}
