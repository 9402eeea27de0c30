//! Nested JSON values (objects, arrays) → values of struct, list and map columns, checked
//! against the column's type with the same coercions as top-level fields. Pure. Object keys the
//! struct has no field for are reported by path (`meta.color`), never dropped silently.

use std::borrow::Cow;

use arrow_schema::DataType;
use serde::de::DeserializeSeed;
use serde_json::Value;

use super::{
    ConvertError, Shape,
    builder::Datum,
    value::{Kind, Scalar, ValueSeed},
};

/// `v` as a value of a column of type `column`; `path` names the field in errors, `unknown`
/// collects the paths of non-null object keys the type has no field for.
pub(super) fn to_datum(
    v: &Value,
    column: &DataType,
    path: &str,
    unknown: &mut Vec<String>,
) -> Result<Datum, ConvertError> {
    if v.is_null() {
        return Ok(Datum::Null);
    }
    let wrong = |expected: &str| ConvertError {
        kind: "wrong-type",
        message: format!("field `{path}`: expected {expected}, got {}", kind_of(v)),
        field: Some(path.to_string()),
    };
    match column {
        DataType::Struct(fields) => {
            let Value::Object(o) = v else {
                return Err(wrong("an object"));
            };
            let mut out = Vec::with_capacity(fields.len());
            for f in fields {
                let child = format!("{path}.{}", f.name());
                let d = match o.get(f.name()) {
                    Some(x) => to_datum(x, f.data_type(), &child, unknown)?,
                    None => Datum::Null,
                };
                if d == Datum::Null && !f.is_nullable() {
                    return Err(missing(&child));
                }
                out.push(d);
            }
            for (k, x) in o {
                if !x.is_null() && !fields.iter().any(|f| f.name() == k) {
                    unknown.push(format!("{path}.{k}"));
                }
            }
            Ok(Datum::Struct(out))
        }
        DataType::List(item) => {
            let Value::Array(items) = v else {
                return Err(wrong("an array"));
            };
            let element = format!("{path}[]");
            let mut out = Vec::with_capacity(items.len());
            for x in items {
                let d = to_datum(x, item.data_type(), &element, unknown)?;
                if d == Datum::Null && !item.is_nullable() {
                    return Err(missing(&element));
                }
                out.push(d);
            }
            Ok(Datum::List(out))
        }
        DataType::Map(entries, _) => {
            let (Value::Object(o), DataType::Struct(kv)) = (v, entries.data_type()) else {
                return Err(wrong("an object"));
            };
            if Kind::of(kv[0].data_type()) != Kind::String {
                return Err(wrong(
                    "a map with other than string keys, which JSON cannot key",
                ));
            }
            let element = format!("{path}{{}}");
            let mut out = Vec::with_capacity(o.len());
            for (k, x) in o {
                let d = to_datum(x, kv[1].data_type(), &element, unknown)?;
                if d == Datum::Null && !kv[1].is_nullable() {
                    return Err(missing(&element));
                }
                out.push((Datum::Scalar(Scalar::Str(Cow::Owned(k.clone()))), d));
            }
            Ok(Datum::Map(out))
        }
        other => {
            let converted = ValueSeed {
                kind: Kind::of(other),
            }
            .deserialize(v)
            .map_err(|e| wrong(&e.to_string()))?;
            match converted {
                Ok(s) => Ok(Datum::Scalar(owned(s))),
                Err((kind, message)) => Err(ConvertError {
                    kind,
                    message: format!("field `{path}`: {message}"),
                    field: Some(path.to_string()),
                }),
            }
        }
    }
}

fn missing(path: &str) -> ConvertError {
    ConvertError {
        kind: "missing-required",
        message: format!("required field `{path}` is missing or null"),
        field: Some(path.to_string()),
    }
}

fn owned(s: Scalar<'_>) -> Scalar<'static> {
    match s {
        Scalar::Null => Scalar::Null,
        Scalar::Bool(b) => Scalar::Bool(b),
        Scalar::I32(x) => Scalar::I32(x),
        Scalar::I64(x) => Scalar::I64(x),
        Scalar::F32(x) => Scalar::F32(x),
        Scalar::F64(x) => Scalar::F64(x),
        Scalar::I128(x) => Scalar::I128(x),
        Scalar::Str(c) => Scalar::Str(Cow::Owned(c.into_owned())),
        Scalar::Bytes(b) => Scalar::Bytes(b),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The [`Shape`] of a parsed JSON value.
pub(super) fn shape_of(v: &Value) -> Shape {
    match v {
        Value::Null => Shape::Null,
        Value::Bool(_) => Shape::Boolean,
        Value::Number(n) if n.is_i64() || n.is_u64() => Shape::Integer,
        Value::Number(_) => Shape::Number,
        Value::String(_) => Shape::String,
        Value::Array(items) => Shape::Array(
            items
                .iter()
                .find(|x| !x.is_null())
                .map(|x| Box::new(shape_of(x))),
        ),
        Value::Object(o) => {
            Shape::Object(o.iter().map(|(k, x)| (k.clone(), shape_of(x))).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, sync::Arc};

    use arrow_array::{Array, Int64Array, ListArray, MapArray, StringArray, StructArray};
    use arrow_schema::{Field, Fields, Schema};

    use super::super::{Pushed, RowBatcher};
    use super::*;

    fn schema() -> Arc<Schema> {
        let meta = Fields::from(vec![
            Field::new("a", DataType::Int64, false),
            Field::new("note", DataType::Utf8, true),
        ]);
        let entries = Field::new(
            "key_value",
            DataType::Struct(Fields::from(vec![
                Field::new("key", DataType::Utf8, false),
                Field::new("value", DataType::Int64, true),
            ])),
            false,
        );
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("meta", DataType::Struct(meta), true),
            Field::new_list("tags", Field::new("element", DataType::Utf8, true), true),
            Field::new("attrs", DataType::Map(Arc::new(entries), false), true),
        ]))
    }

    #[test]
    fn objects_arrays_and_maps_fill_nested_columns() {
        let mut b = RowBatcher::new(schema()).unwrap();
        b.push(br#"{"id":1,"meta":{"a":5,"note":"x"},"tags":["p",null],"attrs":{"k":2}}"#)
            .unwrap();
        b.push(br#"{"id":2,"meta":null}"#).unwrap();
        b.push(br#"{"meta":{"a":6},"id":3,"tags":[]}"#).unwrap();
        let batch = b.finish().unwrap();
        assert_eq!(batch.num_rows(), 3);
        let meta = batch
            .column(1)
            .as_any()
            .downcast_ref::<StructArray>()
            .unwrap();
        assert!(meta.is_valid(0) && meta.is_null(1) && meta.is_valid(2));
        let a = meta
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!((a.value(0), a.value(2)), (5, 6));
        let tags = batch
            .column(2)
            .as_any()
            .downcast_ref::<ListArray>()
            .unwrap();
        assert_eq!(tags.value_length(0), 2);
        assert!(tags.is_null(1) && tags.is_valid(2));
        let first = tags.value(0);
        let first = first.as_any().downcast_ref::<StringArray>().unwrap();
        assert!(first.value(0) == "p" && first.is_null(1));
        let attrs = batch.column(3).as_any().downcast_ref::<MapArray>().unwrap();
        assert_eq!(attrs.value_length(0), 1);
    }

    #[test]
    fn nested_misfits_are_named_and_new_nested_fields_reported() {
        let mut b = RowBatcher::new(schema()).unwrap();
        let e = b.push(br#"{"id":1,"meta":{"note":"x"}}"#).unwrap_err();
        assert_eq!(
            (e.kind, e.field.as_deref()),
            ("missing-required", Some("meta.a"))
        );
        let e = b.push(br#"{"id":1,"tags":[1]}"#).unwrap_err();
        assert_eq!((e.kind, e.field.as_deref()), ("wrong-type", Some("tags[]")));
        let e = b.push(br#"{"id":1,"meta":[1]}"#).unwrap_err();
        assert_eq!(e.kind, "wrong-type");
        assert_eq!(b.rows(), 0);
        // A field the struct lacks: counted by path when written without it…
        b.push(br#"{"id":1,"meta":{"a":1,"color":"red","none":null}}"#)
            .unwrap();
        assert_eq!(
            b.take_unknown_fields().by_name,
            BTreeMap::from([("meta.color".to_string(), 1)])
        );
        // …and reported with the column's whole shape when evolving.
        match b
            .push_evolving(br#"{"id":2,"meta":{"a":1,"color":"red"}}"#)
            .unwrap()
        {
            Pushed::NewFields(fields) => assert_eq!(
                fields,
                vec![(
                    "meta".to_string(),
                    Shape::Object(vec![
                        ("a".into(), Shape::Integer),
                        ("color".into(), Shape::String)
                    ])
                )]
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(b.rows(), 1);
    }
}
