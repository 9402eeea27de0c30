//! Avro record bytes → Arrow rows for a table schema. Pure: no I/O. The value is in the
//! Confluent wire format (a zero byte, the 4-byte big-endian schema id, the binary datum); it
//! is read with its writer schema and its fields are matched to the table's columns by name,
//! nested records, arrays and maps included, with the promotions Avro schema resolution
//! allows (int → long → float → double, decimal rescaled exactly) and the logical types
//! mapped to their Iceberg types. As with JSON, a record that fails leaves the batch untouched.

use std::collections::HashMap;

use apache_avro::{
    Schema,
    schema::{Name, ResolvedSchema},
    types::Value,
};
use arrow_schema::DataType;

mod guard;

use guard::{Strict, check_names};

use super::{
    ConvertError, RowBatcher,
    builder::Datum,
    value::{self, Kind, Scalar},
};

/// A record's writer schema with its named types, ready to decode datums.
#[derive(Debug, Clone)]
pub struct AvroWriter {
    /// The schema.
    pub schema: Schema,
    names: HashMap<Name, Schema>,
}

impl AvroWriter {
    /// Parses an Avro schema (JSON text, as a registry serves it) and resolves its named types.
    /// apache-avro panics on some invalid names (found by fuzzing); that is an error here too.
    pub fn parse(text: &str) -> Result<Self, String> {
        let json: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        check_names(&json)?;
        let parsed = std::panic::catch_unwind(|| Schema::parse_str(text))
            .map_err(|_| "the Avro parser rejected the schema (an invalid name?)".to_string())?;
        Self::new(parsed.map_err(|e| e.to_string())?)
    }

    /// Resolves `schema`'s named types; fails on a reference to an undefined name, and on an
    /// array whose items take no bytes (see [`Self::takes_bytes`]).
    pub fn new(schema: Schema) -> Result<Self, String> {
        let names = ResolvedSchema::try_from(&schema)
            .map_err(|e| e.to_string())?
            .get_names()
            .iter()
            .map(|(n, s)| (n.clone(), (*s).clone()))
            .collect();
        let writer = Self { schema, names };
        writer.check_arrays(&writer.schema, "", &mut Vec::new())?;
        Ok(writer)
    }

    /// `schema` itself, or the named type it refers to.
    pub fn resolve<'a>(&'a self, schema: &'a Schema) -> &'a Schema {
        match schema {
            Schema::Ref { name } => self.names.get(name).unwrap_or(schema),
            other => other,
        }
    }
}

/// The smallest allocation cap set by [`limit_avro_allocations`] (iceberg's manifest reading
/// shares the setting).
pub const MIN_AVRO_ALLOCATION: usize = 16 << 20;

/// Caps what one length prefix in an Avro datum may make the decoder allocate: no string,
/// bytes, array or map of a record is longer than the record, and without a cap a 10-byte value
/// claiming a huge array makes apache-avro reserve gigabytes (its default allows 512 Mi
/// elements). Process-wide, first call wins; returns the cap in force.
pub fn limit_avro_allocations(max_record_bytes: usize) -> usize {
    apache_avro::util::max_allocation_bytes(max_record_bytes.max(MIN_AVRO_ALLOCATION))
}

/// The schema id and the datum of a value in the Confluent wire format.
pub fn frame(payload: &[u8]) -> Result<(u32, &[u8]), ConvertError> {
    match payload {
        [0, a, b, c, d, datum @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), datum)),
        [0, ..] => Err(invalid(
            "the value is shorter than the 5-byte schema id header".into(),
        )),
        [magic, ..] => Err(invalid(format!(
            "the value does not start with the Confluent magic byte 0 (found {magic})"
        ))),
        [] => Err(invalid("the value is empty".into())),
    }
}

fn invalid(message: String) -> ConvertError {
    ConvertError {
        kind: "invalid-avro",
        message,
        field: None,
    }
}

impl RowBatcher {
    /// Converts one Avro datum written with `writer` and appends it; on error nothing is
    /// appended. Writer fields without a column are counted as unknown fields.
    pub fn push_avro(&mut self, writer: &AvroWriter, datum: &[u8]) -> Result<(), ConvertError> {
        let mut unknown = Vec::new();
        let values = self.convert_avro(writer, datum, &mut unknown)?;
        for (builder, value) in self.builders.iter_mut().zip(values) {
            builder.append_datum(value);
        }
        self.rows += 1;
        for name in unknown {
            self.note_unknown(&name);
        }
        Ok(())
    }

    fn convert_avro(
        &self,
        writer: &AvroWriter,
        datum: &[u8],
        unknown: &mut Vec<String>,
    ) -> Result<Vec<Datum>, ConvertError> {
        let mut rest = Strict(datum);
        let value = apache_avro::from_avro_datum(&writer.schema, &mut rest, None)
            .map_err(|e| invalid(format!("cannot read the datum with its writer schema: {e}")))?;
        if !rest.0.is_empty() {
            return Err(invalid(format!(
                "{} bytes after the datum's end",
                rest.0.len()
            )));
        }
        let (Value::Record(fields), Schema::Record(record)) =
            (value, writer.resolve(&writer.schema))
        else {
            return Err(ConvertError {
                kind: "not-a-record",
                message: "the writer schema is not a record".into(),
                field: None,
            });
        };
        let mut values = vec![Datum::Null; self.columns.len()];
        for ((name, value), field) in fields.into_iter().zip(&record.fields) {
            match self.index.get(&name) {
                Some(&i) => {
                    let column = self.schema.field(i).data_type();
                    values[i] = to_datum(writer, value, &field.schema, column, &name)?;
                }
                None if !is_null(&value) => unknown.push(name),
                None => {}
            }
        }
        for (column, value) in self.columns.iter().zip(&values) {
            if column.required && *value == Datum::Null {
                return Err(missing(&column.name));
            }
        }
        Ok(values)
    }
}

fn missing(path: &str) -> ConvertError {
    ConvertError {
        kind: "missing-required",
        message: format!("required field `{path}` is missing or null"),
        field: Some(path.to_string()),
    }
}

fn is_null(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Union(_, inner) => is_null(inner),
        _ => false,
    }
}

/// `value` (written with `schema`) as a value of a column of type `column`; `path` names the
/// field in errors.
fn to_datum(
    writer: &AvroWriter,
    value: Value,
    schema: &Schema,
    column: &DataType,
    path: &str,
) -> Result<Datum, ConvertError> {
    let schema = writer.resolve(schema);
    let value = match (value, schema) {
        (Value::Union(i, inner), Schema::Union(u)) => {
            let branch = usize::try_from(i)
                .ok()
                .and_then(|i| u.variants().get(i))
                .unwrap_or(schema);
            return to_datum(writer, *inner, branch, column, path);
        }
        (Value::Null, _) => return Ok(Datum::Null),
        (value, _) => value,
    };
    let wrong = |got: &Value| ConvertError {
        kind: "wrong-type",
        message: format!("field `{path}`: expected {column}, got {}", describe(got)),
        field: Some(path.to_string()),
    };
    match column {
        DataType::Struct(fields) => {
            let (Value::Record(_), Schema::Record(record)) = (&value, schema) else {
                return Err(wrong(&value));
            };
            let mut out = vec![Datum::Null; fields.len()];
            let Value::Record(values) = value else {
                unreachable!()
            };
            for ((name, v), field) in values.into_iter().zip(&record.fields) {
                if let Some(i) = fields.iter().position(|f| *f.name() == name) {
                    let child = format!("{path}.{name}");
                    out[i] = to_datum(writer, v, &field.schema, fields[i].data_type(), &child)?;
                }
            }
            for (field, v) in fields.iter().zip(&out) {
                if !field.is_nullable() && *v == Datum::Null {
                    return Err(missing(&format!("{path}.{}", field.name())));
                }
            }
            Ok(Datum::Struct(out))
        }
        DataType::List(item) => {
            let (Value::Array(_), Schema::Array(array)) = (&value, schema) else {
                return Err(wrong(&value));
            };
            let Value::Array(values) = value else {
                unreachable!()
            };
            let element = format!("{path}[]");
            let items = values
                .into_iter()
                .map(|v| {
                    let d = to_datum(writer, v, &array.items, item.data_type(), &element)?;
                    if d == Datum::Null && !item.is_nullable() {
                        return Err(missing(&element));
                    }
                    Ok(d)
                })
                .collect::<Result<_, _>>()?;
            Ok(Datum::List(items))
        }
        DataType::Map(entries, _) => {
            let (Value::Map(_), Schema::Map(map), DataType::Struct(kv)) =
                (&value, schema, entries.data_type())
            else {
                return Err(wrong(&value));
            };
            let Value::Map(values) = value else {
                unreachable!()
            };
            let mut pairs: Vec<(String, Value)> = values.into_iter().collect();
            pairs.sort_by(|a, b| a.0.cmp(&b.0));
            let element = format!("{path}{{}}");
            let entries = pairs
                .into_iter()
                .map(|(k, v)| {
                    let d = to_datum(writer, v, &map.types, kv[1].data_type(), &element)?;
                    if d == Datum::Null && !kv[1].is_nullable() {
                        return Err(missing(&element));
                    }
                    Ok((Datum::Scalar(Scalar::Str(k.into())), d))
                })
                .collect::<Result<_, _>>()?;
            Ok(Datum::Map(entries))
        }
        other => scalar(value, schema, Kind::of(other))
            .map(Datum::Scalar)
            .map_err(|(kind, message)| ConvertError {
                kind,
                message: format!("field `{path}`: {message}"),
                field: Some(path.to_string()),
            }),
    }
}

/// One Avro primitive (or logical) value as a scalar of `kind`.
fn scalar(
    value: Value,
    schema: &Schema,
    kind: Kind,
) -> Result<Scalar<'static>, (&'static str, String)> {
    let micros = |v: i64, per_micro: i64, scale_up: bool| {
        if scale_up {
            v.checked_mul(per_micro)
                .map(Scalar::I64)
                .ok_or_else(|| value::range(kind, v))
        } else {
            Ok(Scalar::I64(v.div_euclid(per_micro)))
        }
    };
    match (kind, value) {
        (Kind::Unsupported, _) => Ok(Scalar::Null),
        (Kind::Boolean, Value::Boolean(b)) => Ok(Scalar::Bool(b)),
        (
            Kind::Int | Kind::Long | Kind::Float | Kind::Double | Kind::Decimal { .. },
            Value::Int(v),
        ) => value::integer(kind, i128::from(v)),
        (
            Kind::Int | Kind::Long | Kind::Float | Kind::Double | Kind::Decimal { .. },
            Value::Long(v),
        ) => value::integer(kind, i128::from(v)),
        (Kind::Float, Value::Float(v)) => Ok(Scalar::F32(v)),
        (Kind::Double, Value::Float(v)) => Ok(Scalar::F64(f64::from(v))),
        (Kind::Double, Value::Double(v)) => Ok(Scalar::F64(v)),
        (Kind::Decimal { precision, scale }, Value::Decimal(d)) => {
            let Schema::Decimal(written) = schema else {
                return Err(value::wrong(kind, "a decimal without a decimal schema"));
            };
            let bytes: Vec<u8> = (&d)
                .try_into()
                .map_err(|_| value::wrong(kind, "an unreadable decimal"))?;
            let unscaled = twos_complement(&bytes)
                .ok_or_else(|| value::range(kind, "a decimal of more than 38 digits"))?;
            let from = i32::try_from(written.scale).unwrap_or(i32::MAX);
            rescale(unscaled, from, i32::from(scale))
                .filter(|v| value::check_precision(*v, precision).is_ok())
                .map(Scalar::I128)
                .ok_or_else(|| value::range(kind, format!("decimal with scale {from}")))
        }
        (Kind::Date, Value::Date(d)) => Ok(Scalar::I32(d)),
        (Kind::Time, Value::TimeMillis(t)) => Ok(Scalar::I64(i64::from(t) * 1000)),
        (Kind::Time, Value::TimeMicros(t)) => Ok(Scalar::I64(t)),
        (Kind::Timestamp { .. }, Value::TimestampMillis(v) | Value::LocalTimestampMillis(v)) => {
            micros(v, 1000, true)
        }
        (Kind::Timestamp { .. }, Value::TimestampMicros(v) | Value::LocalTimestampMicros(v)) => {
            Ok(Scalar::I64(v))
        }
        (Kind::Timestamp { .. }, Value::TimestampNanos(v) | Value::LocalTimestampNanos(v)) => {
            micros(v, 1000, false)
        }
        // A plain long is epoch milliseconds, as in JSON.
        (Kind::Timestamp { .. }, Value::Long(v)) => value::integer(kind, i128::from(v)),
        (
            Kind::Long,
            Value::TimestampMillis(v) | Value::TimestampMicros(v) | Value::TimeMicros(v),
        ) => Ok(Scalar::I64(v)),
        (Kind::String, Value::String(s) | Value::Enum(_, s)) => Ok(Scalar::Str(s.into())),
        (Kind::String, Value::Uuid(u)) => Ok(Scalar::Str(u.to_string().into())),
        (Kind::Uuid, Value::Uuid(u)) => Ok(Scalar::Bytes(u.as_bytes().to_vec())),
        (Kind::Uuid, Value::Fixed(16, b)) => Ok(Scalar::Bytes(b)),
        (Kind::Binary { .. }, Value::Bytes(b) | Value::Fixed(_, b)) => Ok(Scalar::Bytes(b)),
        (
            Kind::Timestamp { .. } | Kind::Date | Kind::Time | Kind::Uuid | Kind::Decimal { .. },
            Value::String(s),
        ) => value::text(kind, &s).map(|v| match v {
            Scalar::Str(s) => Scalar::Str(s.into_owned().into()),
            other => other,
        }),
        (kind, other) => Err(value::wrong(kind, describe(&other))),
    }
}

/// A big-endian two's-complement integer of at most 16 bytes.
fn twos_complement(bytes: &[u8]) -> Option<i128> {
    if bytes.len() > 16 {
        return None;
    }
    let fill = if bytes.first().is_some_and(|b| b & 0x80 != 0) {
        0xff
    } else {
        0
    };
    let mut buf = [fill; 16];
    buf[16 - bytes.len()..].copy_from_slice(bytes);
    Some(i128::from_be_bytes(buf))
}

/// `unscaled × 10^(to − from)`, exactly (`None` when digits would be lost or it overflows).
fn rescale(unscaled: i128, from: i32, to: i32) -> Option<i128> {
    let factor = 10i128.checked_pow(from.abs_diff(to))?;
    if to >= from {
        unscaled.checked_mul(factor)
    } else if unscaled % factor == 0 {
        Some(unscaled / factor)
    } else {
        None
    }
}

fn describe(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Boolean(_) => "boolean",
        Value::Int(_) => "int",
        Value::Long(_) => "long",
        Value::Float(_) => "float",
        Value::Double(_) => "double",
        Value::Bytes(_) => "bytes",
        Value::String(_) => "string",
        Value::Fixed(..) => "fixed",
        Value::Enum(..) => "enum",
        Value::Union(..) => "union",
        Value::Array(_) => "array",
        Value::Map(_) => "map",
        Value::Record(_) => "record",
        Value::Date(_) => "date",
        Value::Decimal(_) | Value::BigDecimal(_) => "decimal",
        Value::TimeMillis(_) | Value::TimeMicros(_) => "time",
        Value::TimestampMillis(_) | Value::TimestampMicros(_) | Value::TimestampNanos(_) => {
            "timestamp"
        }
        Value::LocalTimestampMillis(_)
        | Value::LocalTimestampMicros(_)
        | Value::LocalTimestampNanos(_) => "local-timestamp",
        Value::Duration(_) => "duration",
        Value::Uuid(_) => "uuid",
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::Arc;

    use apache_avro::{Decimal, types::Record};
    use arrow_array::{
        Array, Date32Array, Decimal128Array, FixedSizeBinaryArray, Int64Array, ListArray, MapArray,
        StringArray, StructArray, Time64MicrosecondArray, TimestampMicrosecondArray,
    };

    use super::*;

    pub(super) const V1: &str = r#"{"type": "record", "name": "Order", "namespace": "shop", "fields": [
        {"name": "id", "type": "long"},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "day", "type": {"type": "int", "logicalType": "date"}},
        {"name": "at", "type": {"type": "int", "logicalType": "time-millis"}},
        {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}},
        {"name": "uid", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": ["NEW", "PAID"]}},
        {"name": "note", "type": ["null", "string"], "default": null},
        {"name": "qty", "type": "int"},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {"name": "attrs", "type": {"type": "map", "values": "long"}},
        {"name": "ship", "type": ["null", {"type": "record", "name": "Address", "fields": [
            {"name": "city", "type": "string"},
            {"name": "zip", "type": ["null", "int"]}]}]},
        {"name": "bill", "type": ["null", "Address"]}
    ]}"#;

    pub(super) fn writer(text: &str) -> AvroWriter {
        AvroWriter::new(Schema::parse_str(text).unwrap()).unwrap()
    }

    pub(super) fn batcher_for(w: &AvroWriter) -> RowBatcher {
        let table = crate::evolve::table_schema(w, &[]).unwrap();
        let arrow = iceberg::arrow::schema_to_arrow_schema(&table).unwrap();
        RowBatcher::new(Arc::new(arrow)).unwrap()
    }

    pub(super) fn order(w: &AvroWriter, id: i64, ship: Option<&str>) -> Vec<u8> {
        let mut r = Record::new(&w.schema).unwrap();
        r.put("id", id);
        r.put("ts", Value::TimestampMillis(1_767_323_045_500));
        r.put("day", Value::Date(20_454));
        r.put("at", Value::TimeMillis(3_723_004));
        r.put(
            "price",
            Value::Decimal(Decimal::from(1234i64.to_be_bytes().to_vec())),
        );
        r.put("uid", Value::Uuid(uuid::Uuid::from_u128(7)));
        r.put("status", Value::Enum(1, "PAID".into()));
        r.put("note", Value::Union(0, Box::new(Value::Null)));
        r.put("qty", 3i32);
        r.put("tags", Value::Array(vec!["a".into(), "b".into()]));
        r.put(
            "attrs",
            Value::Map(
                [
                    ("x".to_string(), Value::Long(1)),
                    ("w".to_string(), Value::Long(2)),
                ]
                .into(),
            ),
        );
        let address = Value::Record(vec![
            (
                "city".into(),
                Value::String(ship.unwrap_or_default().into()),
            ),
            ("zip".into(), Value::Union(1, Box::new(Value::Int(1010)))),
        ]);
        r.put(
            "ship",
            match ship {
                Some(_) => Value::Union(1, Box::new(address.clone())),
                None => Value::Union(0, Box::new(Value::Null)),
            },
        );
        r.put("bill", Value::Union(1, Box::new(address)));
        apache_avro::to_avro_datum(&w.schema, r).unwrap()
    }

    fn column<'a, T: 'static>(batch: &'a arrow_array::RecordBatch, name: &str) -> &'a T {
        batch
            .column_by_name(name)
            .unwrap()
            .as_any()
            .downcast_ref::<T>()
            .unwrap()
    }

    #[test]
    fn every_avro_type_lands_in_its_iceberg_column() {
        let w = writer(V1);
        let mut b = batcher_for(&w);
        b.push_avro(&w, &order(&w, 1, Some("Vienna"))).unwrap();
        b.push_avro(&w, &order(&w, 2, None)).unwrap();
        let batch = b.finish().unwrap();
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(column::<Int64Array>(&batch, "id").values(), &[1, 2]);
        let ts = column::<TimestampMicrosecondArray>(&batch, "ts");
        assert_eq!(ts.value(0), 1_767_323_045_500_000);
        assert_eq!(column::<Date32Array>(&batch, "day").value(0), 20_454);
        assert_eq!(
            column::<Time64MicrosecondArray>(&batch, "at").value(0),
            3_723_004_000
        );
        let price = column::<Decimal128Array>(&batch, "price");
        assert_eq!((price.value(0), price.scale()), (1234, 2));
        let uid = column::<FixedSizeBinaryArray>(&batch, "uid");
        assert_eq!(uid.value(0), uuid::Uuid::from_u128(7).as_bytes());
        assert_eq!(column::<StringArray>(&batch, "status").value(1), "PAID");
        assert!(column::<StringArray>(&batch, "note").is_null(0));
        let tags = column::<ListArray>(&batch, "tags");
        let first = tags.value(0);
        let first = first.as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!((first.value(0), first.value(1)), ("a", "b"));
        let attrs = column::<MapArray>(&batch, "attrs");
        let keys = attrs.keys().as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(
            (keys.value(0), keys.value(1)),
            ("w", "x"),
            "map keys in order"
        );
        let ship = column::<StructArray>(&batch, "ship");
        assert!(ship.is_valid(0) && ship.is_null(1));
        let city = ship.column_by_name("city").unwrap();
        let city = city.as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(city.value(0), "Vienna");
        let bill = column::<StructArray>(&batch, "bill");
        assert!(bill.is_valid(1), "a named type used twice resolves");
    }

    #[test]
    fn bad_values_are_refused_with_the_field_and_leave_the_batch_untouched() {
        let w = writer(V1);
        let mut b = batcher_for(&w);
        let good = order(&w, 1, Some("x"));
        assert_eq!(frame(&[1, 0, 0, 0, 1]).unwrap_err().kind, "invalid-avro");
        assert_eq!(frame(&[0, 0, 1]).unwrap_err().kind, "invalid-avro");
        assert_eq!(frame(&[0, 0, 0, 1, 2, 9]).unwrap(), (258, &[9u8][..]));
        // Cut inside the last int. (apache-avro reads a union index cut off at the very end as
        // the null branch — a known limit, documented in docs/architecture.md.)
        let cut = &good[..good.len() - 1];
        assert_eq!(b.push_avro(&w, cut).unwrap_err().kind, "invalid-avro");
        let mut long = good.clone();
        long.push(0);
        assert!(
            b.push_avro(&w, &long)
                .unwrap_err()
                .message
                .contains("1 bytes after")
        );
        // A writer whose `id` is a string: the table's long column refuses it by name.
        let other =
            writer(r#"{"type":"record","name":"Order","fields":[{"name":"id","type":"string"}]}"#);
        let mut r = Record::new(&other.schema).unwrap();
        r.put("id", "seven");
        let datum = apache_avro::to_avro_datum(&other.schema, r).unwrap();
        let e = b.push_avro(&other, &datum).unwrap_err();
        assert_eq!((e.kind, e.field.as_deref()), ("wrong-type", Some("id")));
        assert!(e.message.contains("got string"), "{}", e.message);
        // A writer without the required `ts`: missing, named.
        let short =
            writer(r#"{"type":"record","name":"Order","fields":[{"name":"id","type":"long"}]}"#);
        let mut r = Record::new(&short.schema).unwrap();
        r.put("id", 5i64);
        let datum = apache_avro::to_avro_datum(&short.schema, r).unwrap();
        let e = b.push_avro(&short, &datum).unwrap_err();
        assert_eq!(
            (e.kind, e.field.as_deref()),
            ("missing-required", Some("ts"))
        );
        assert_eq!(b.rows(), 0);
        b.push_avro(&w, &good).unwrap();
        assert_eq!(b.finish().unwrap().num_rows(), 1);
    }

    #[test]
    fn a_length_prefix_cannot_reserve_more_than_the_cap() {
        let cap = limit_avro_allocations(1 << 20);
        assert_eq!(cap, MIN_AVRO_ALLOCATION);
        let w = writer(
            r#"{"type":"record","name":"R","fields":[{"name":"xs","type":{"type":"array","items":"long"}}]}"#,
        );
        let mut b = RowBatcher::new(Arc::new(arrow_schema::Schema::empty())).unwrap();
        // A block of 100 million items (zig-zag varint), then nothing: refused by the cap
        // (16 Mi), not reserved (the library's default would allow it).
        let mut datum = Vec::new();
        let mut n: u64 = 100_000_000u64 << 1;
        while n >= 0x80 {
            datum.push((n as u8) | 0x80);
            n >>= 7;
        }
        datum.push(n as u8);
        let e = b.push_avro(&w, &datum).unwrap_err();
        assert_eq!(e.kind, "invalid-avro", "{}", e.message);
        assert!(e.message.contains(&cap.to_string()), "{}", e.message);
    }

    #[test]
    fn decimals_rescale_exactly_and_promotions_follow_avro() {
        assert_eq!(twos_complement(&[0xff, 0x38]), Some(-200));
        assert_eq!(twos_complement(&[0x00, 0xc8]), Some(200));
        assert_eq!(twos_complement(&[]), Some(0));
        assert_eq!(twos_complement(&[1; 17]), None);
        assert_eq!(rescale(1234, 2, 4), Some(123_400));
        assert_eq!(rescale(123_400, 4, 2), Some(1234));
        assert_eq!(rescale(123_456, 4, 2), None, "digits would be lost");
        let long = |v: Value, kind| scalar(v, &Schema::Long, kind);
        assert_eq!(long(Value::Int(7), Kind::Long), Ok(Scalar::I64(7)));
        assert_eq!(long(Value::Long(7), Kind::Double), Ok(Scalar::F64(7.0)));
        assert_eq!(
            long(Value::Long(1 << 40), Kind::Int).unwrap_err().0,
            "out-of-range"
        );
        assert_eq!(
            long(Value::Double(1.0), Kind::Long).unwrap_err().0,
            "wrong-type"
        );
        assert_eq!(
            long(Value::TimestampNanos(1_999), Kind::Timestamp { utc: true }),
            Ok(Scalar::I64(1))
        );
    }
}
