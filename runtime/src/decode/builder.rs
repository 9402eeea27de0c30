//! Arrow column builders for the converted values of one batch: one per column kind, and for
//! struct, list and map columns a buffer of nested values built into arrays (with the table's
//! own child fields, field ids included) when the batch is finished. Pure.

use std::sync::Arc;

use arrow_array::{
    ArrayRef, ListArray, MapArray, StructArray,
    builder::{
        BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, FixedSizeBinaryBuilder,
        Float32Builder, Float64Builder, Int32Builder, Int64Builder, LargeBinaryBuilder,
        StringBuilder, Time64MicrosecondBuilder, TimestampMicrosecondBuilder,
    },
};
use arrow_buffer::{NullBuffer, OffsetBuffer};
use arrow_schema::DataType;

use super::value::{Kind, Scalar};

/// A converted value of any column type; nested ones are checked against the column's type
/// when they are made, so building their arrays cannot fail.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Datum {
    Null,
    Scalar(Scalar<'static>),
    /// A struct's fields, in the struct type's order.
    Struct(Vec<Datum>),
    List(Vec<Datum>),
    /// Key and value pairs.
    Map(Vec<(Datum, Datum)>),
}

pub(super) enum Builder {
    Boolean(BooleanBuilder),
    Int(Int32Builder),
    Long(Int64Builder),
    Float(Float32Builder),
    Double(Float64Builder),
    Decimal(Decimal128Builder, DataType),
    Date(Date32Builder),
    Timestamp(TimestampMicrosecondBuilder, DataType),
    String(StringBuilder),
    Uuid(FixedSizeBinaryBuilder),
    Binary(BinaryBuilder),
    LargeBinary(LargeBinaryBuilder),
    Time(Time64MicrosecondBuilder),
    /// Struct, list and map values, built into arrays when the batch is finished.
    Nested(DataType, Vec<Datum>),
    Null(DataType, usize),
}

impl Builder {
    pub(super) fn new(kind: Kind, data_type: &DataType) -> Self {
        match kind {
            Kind::Boolean => Self::Boolean(BooleanBuilder::new()),
            Kind::Int => Self::Int(Int32Builder::new()),
            Kind::Long => Self::Long(Int64Builder::new()),
            Kind::Float => Self::Float(Float32Builder::new()),
            Kind::Double => Self::Double(Float64Builder::new()),
            Kind::Decimal { .. } => Self::Decimal(Decimal128Builder::new(), data_type.clone()),
            Kind::Date => Self::Date(Date32Builder::new()),
            Kind::Timestamp { .. } => {
                Self::Timestamp(TimestampMicrosecondBuilder::new(), data_type.clone())
            }
            Kind::String => Self::String(StringBuilder::new()),
            Kind::Uuid => Self::Uuid(FixedSizeBinaryBuilder::new(16)),
            Kind::Binary { large: false } => Self::Binary(BinaryBuilder::new()),
            Kind::Binary { large: true } => Self::LargeBinary(LargeBinaryBuilder::new()),
            Kind::Time => Self::Time(Time64MicrosecondBuilder::new()),
            Kind::Nested => Self::Nested(data_type.clone(), Vec::new()),
            Kind::Unsupported => Self::Null(data_type.clone(), 0),
        }
    }

    pub(super) fn append(&mut self, v: Scalar<'_>) {
        match (self, v) {
            (Self::Boolean(b), Scalar::Bool(x)) => b.append_value(x),
            (Self::Int(b), Scalar::I32(x)) => b.append_value(x),
            (Self::Long(b), Scalar::I64(x)) => b.append_value(x),
            (Self::Float(b), Scalar::F32(x)) => b.append_value(x),
            (Self::Double(b), Scalar::F64(x)) => b.append_value(x),
            (Self::Decimal(b, _), Scalar::I128(x)) => b.append_value(x),
            (Self::Date(b), Scalar::I32(x)) => b.append_value(x),
            (Self::Timestamp(b, _), Scalar::I64(x)) => b.append_value(x),
            (Self::String(b), Scalar::Str(s)) => b.append_value(s),
            (Self::Uuid(b), Scalar::Bytes(x)) => b.append_value(x).expect("uuid is 16 bytes"),
            (Self::Binary(b), Scalar::Bytes(x)) => b.append_value(x),
            (Self::LargeBinary(b), Scalar::Bytes(x)) => b.append_value(x),
            (Self::Time(b), Scalar::I64(x)) => b.append_value(x),
            (this, Scalar::Null) => this.append_null(),
            (_, other) => unreachable!("scalar {other:?} was produced for another kind"),
        }
    }

    pub(super) fn append_null(&mut self) {
        match self {
            Self::Boolean(b) => b.append_null(),
            Self::Int(b) => b.append_null(),
            Self::Long(b) => b.append_null(),
            Self::Float(b) => b.append_null(),
            Self::Double(b) => b.append_null(),
            Self::Decimal(b, _) => b.append_null(),
            Self::Date(b) => b.append_null(),
            Self::Timestamp(b, _) => b.append_null(),
            Self::String(b) => b.append_null(),
            Self::Uuid(b) => b.append_null(),
            Self::Binary(b) => b.append_null(),
            Self::LargeBinary(b) => b.append_null(),
            Self::Time(b) => b.append_null(),
            Self::Nested(_, v) => v.push(Datum::Null),
            Self::Null(_, n) => *n += 1,
        }
    }

    /// Appends a converted value (a scalar, or a nested value for a nested column).
    pub(super) fn append_datum(&mut self, d: Datum) {
        match (self, d) {
            (Self::Nested(_, v), d) => v.push(d),
            (this, Datum::Null) => this.append_null(),
            (this, Datum::Scalar(s)) => this.append(s),
            (_, other) => unreachable!("nested value {other:?} for a primitive column"),
        }
    }

    pub(super) fn finish(&mut self) -> ArrayRef {
        match self {
            Self::Boolean(b) => Arc::new(b.finish()),
            Self::Int(b) => Arc::new(b.finish()),
            Self::Long(b) => Arc::new(b.finish()),
            Self::Float(b) => Arc::new(b.finish()),
            Self::Double(b) => Arc::new(b.finish()),
            Self::Decimal(b, t) => {
                let DataType::Decimal128(p, s) = t else {
                    unreachable!()
                };
                Arc::new(
                    b.finish()
                        .with_precision_and_scale(*p, *s)
                        .expect("valid decimal"),
                )
            }
            Self::Date(b) => Arc::new(b.finish()),
            Self::Timestamp(b, t) => {
                let DataType::Timestamp(_, tz) = t else {
                    unreachable!()
                };
                Arc::new(b.finish().with_timezone_opt(tz.clone()))
            }
            Self::String(b) => Arc::new(b.finish()),
            Self::Uuid(b) => Arc::new(b.finish()),
            Self::Binary(b) => Arc::new(b.finish()),
            Self::LargeBinary(b) => Arc::new(b.finish()),
            Self::Time(b) => Arc::new(b.finish()),
            Self::Nested(t, values) => {
                let array = build(t, &values.iter().collect::<Vec<_>>());
                values.clear();
                array
            }
            Self::Null(t, n) => {
                let array = arrow_array::new_null_array(t, *n);
                *n = 0;
                array
            }
        }
    }
}

const NULL: Datum = Datum::Null;

/// The array of `values` for a column of type `data_type`.
fn build(data_type: &DataType, values: &[&Datum]) -> ArrayRef {
    let validity = || {
        NullBuffer::from(
            values
                .iter()
                .map(|v| **v != Datum::Null)
                .collect::<Vec<_>>(),
        )
    };
    match data_type {
        DataType::Struct(fields) => {
            let children = (0..fields.len())
                .map(|i| {
                    let child: Vec<&Datum> = values
                        .iter()
                        .map(|v| match v {
                            Datum::Struct(f) => &f[i],
                            _ => &NULL,
                        })
                        .collect();
                    build(fields[i].data_type(), &child)
                })
                .collect();
            Arc::new(StructArray::new(fields.clone(), children, Some(validity())))
        }
        DataType::List(field) => {
            let items: Vec<&[Datum]> = values
                .iter()
                .map(|v| match v {
                    Datum::List(items) => items.as_slice(),
                    _ => &[],
                })
                .collect();
            let flat: Vec<&Datum> = items.iter().flat_map(|i| i.iter()).collect();
            let offsets = OffsetBuffer::from_lengths(items.iter().map(|i| i.len()));
            let child = build(field.data_type(), &flat);
            Arc::new(ListArray::new(
                field.clone(),
                offsets,
                child,
                Some(validity()),
            ))
        }
        DataType::Map(entries, sorted) => {
            let DataType::Struct(kv) = entries.data_type() else {
                unreachable!("map entries are a struct")
            };
            let pairs: Vec<&[(Datum, Datum)]> = values
                .iter()
                .map(|v| match v {
                    Datum::Map(pairs) => pairs.as_slice(),
                    _ => &[],
                })
                .collect();
            let keys: Vec<&Datum> = pairs
                .iter()
                .flat_map(|p| p.iter().map(|(k, _)| k))
                .collect();
            let vals: Vec<&Datum> = pairs
                .iter()
                .flat_map(|p| p.iter().map(|(_, v)| v))
                .collect();
            let offsets = OffsetBuffer::from_lengths(pairs.iter().map(|p| p.len()));
            let entry_array = StructArray::new(
                kv.clone(),
                vec![
                    build(kv[0].data_type(), &keys),
                    build(kv[1].data_type(), &vals),
                ],
                None,
            );
            Arc::new(MapArray::new(
                entries.clone(),
                offsets,
                entry_array,
                Some(validity()),
                *sorted,
            ))
        }
        other => {
            let mut b = Builder::new(Kind::of(other), other);
            for v in values {
                b.append_datum((*v).clone());
            }
            b.finish()
        }
    }
}
