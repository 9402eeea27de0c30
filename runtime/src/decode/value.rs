//! One JSON value → one typed scalar for a column kind, with the coercions users expect
//! (see docs/architecture.md). Pure.

use std::{borrow::Cow, fmt};

use arrow_schema::{DataType, TimeUnit};
use base64::Engine as _;
use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Timelike};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};

/// A column kind the converter can fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Decimal {
        precision: u8,
        scale: i8,
    },
    Date,
    Timestamp {
        utc: bool,
    },
    String,
    Uuid,
    Binary {
        large: bool,
    },
    /// Microseconds since midnight.
    Time,
    /// A struct, list or map (filled from Avro; always null from JSON).
    Nested,
    /// A type this converter cannot fill (nanosecond timestamps, fixed other than 16 bytes):
    /// always null.
    Unsupported,
}

impl Kind {
    pub(super) fn of(data_type: &DataType) -> Self {
        match data_type {
            DataType::Boolean => Self::Boolean,
            DataType::Int32 => Self::Int,
            DataType::Int64 => Self::Long,
            DataType::Float32 => Self::Float,
            DataType::Float64 => Self::Double,
            DataType::Decimal128(p, s) => Self::Decimal {
                precision: *p,
                scale: *s,
            },
            DataType::Date32 => Self::Date,
            DataType::Timestamp(TimeUnit::Microsecond, tz) => Self::Timestamp { utc: tz.is_some() },
            DataType::Utf8 => Self::String,
            DataType::FixedSizeBinary(16) => Self::Uuid,
            DataType::Binary => Self::Binary { large: false },
            DataType::LargeBinary => Self::Binary { large: true },
            DataType::Time64(TimeUnit::Microsecond) => Self::Time,
            DataType::Struct(_) | DataType::List(_) | DataType::Map(..) => Self::Nested,
            _ => Self::Unsupported,
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Boolean => "boolean",
            Self::Int => "int",
            Self::Long => "long",
            Self::Float => "float",
            Self::Double => "double",
            Self::Decimal { .. } => "decimal",
            Self::Date => "date",
            Self::Timestamp { utc: true } => "timestamptz",
            Self::Timestamp { utc: false } => "timestamp",
            Self::String => "string",
            Self::Uuid => "uuid",
            Self::Binary { .. } => "binary",
            Self::Time => "time",
            Self::Nested => "nested",
            Self::Unsupported => "unsupported",
        }
    }
}

/// One parsed value, borrowed from the record where possible.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Scalar<'a> {
    Null,
    Bool(bool),
    I32(i32),
    I64(i64),
    F32(f32),
    F64(f64),
    I128(i128),
    Str(Cow<'a, str>),
    Bytes(Vec<u8>),
}

pub(super) type ValueResult<'a> = Result<Scalar<'a>, (&'static str, String)>;

pub(super) struct ValueSeed {
    pub(super) kind: Kind,
}

impl<'de> DeserializeSeed<'de> for ValueSeed {
    type Value = ValueResult<'de>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

pub(super) fn wrong(kind: Kind, got: impl fmt::Display) -> (&'static str, String) {
    ("wrong-type", format!("expected {}, got {got}", kind.name()))
}

pub(super) fn range(kind: Kind, got: impl fmt::Display) -> (&'static str, String) {
    (
        "out-of-range",
        format!("{got} does not fit in {}", kind.name()),
    )
}

impl<'de> Visitor<'de> for ValueSeed {
    type Value = ValueResult<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a JSON value for a {} column", self.kind.name())
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Ok(Scalar::Null))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(match self.kind {
            Kind::Boolean => Ok(Scalar::Bool(v)),
            Kind::Unsupported | Kind::Nested => Ok(Scalar::Null),
            k => Err(wrong(k, format!("boolean {v}"))),
        })
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(integer(self.kind, i128::from(v)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(integer(self.kind, i128::from(v)))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(match self.kind {
            #[allow(clippy::cast_possible_truncation)]
            Kind::Float => Ok(Scalar::F32(v as f32)),
            Kind::Double => Ok(Scalar::F64(v)),
            Kind::Decimal { precision, scale } => {
                decimal_from_text(&v.to_string(), precision, scale)
            }
            Kind::Unsupported | Kind::Nested => Ok(Scalar::Null),
            k => Err(wrong(k, format!("number {v}"))),
        })
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(match self.kind {
            Kind::String => Ok(Scalar::Str(Cow::Borrowed(v))),
            k => text(k, v),
        })
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(match self.kind {
            Kind::String => Ok(Scalar::Str(Cow::Owned(v.to_string()))),
            k => text(k, v),
        })
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(match self.kind {
            Kind::Unsupported | Kind::Nested => Ok(Scalar::Null),
            k => Err(wrong(k, "an array")),
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(match self.kind {
            Kind::Unsupported | Kind::Nested => Ok(Scalar::Null),
            k => Err(wrong(k, "an object")),
        })
    }
}

pub(super) fn integer<'a>(kind: Kind, v: i128) -> ValueResult<'a> {
    #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
    match kind {
        Kind::Int => i32::try_from(v)
            .map(Scalar::I32)
            .map_err(|_| range(kind, v)),
        Kind::Long => i64::try_from(v)
            .map(Scalar::I64)
            .map_err(|_| range(kind, v)),
        Kind::Float => Ok(Scalar::F32(v as f32)),
        Kind::Double => Ok(Scalar::F64(v as f64)),
        Kind::Decimal { precision, scale } => {
            let scaled = 10i128
                .checked_pow(u32::try_from(scale).unwrap_or(0))
                .and_then(|m| v.checked_mul(m))
                .ok_or_else(|| range(kind, v))?;
            check_precision(scaled, precision).map_err(|()| range(kind, v))?;
            Ok(Scalar::I128(scaled))
        }
        // Epoch milliseconds.
        Kind::Timestamp { .. } => i64::try_from(v)
            .ok()
            .and_then(|ms| ms.checked_mul(1000))
            .map(Scalar::I64)
            .ok_or_else(|| range(kind, v)),
        // Days since epoch.
        Kind::Date => i32::try_from(v)
            .map(Scalar::I32)
            .map_err(|_| range(kind, v)),
        Kind::Unsupported | Kind::Nested => Ok(Scalar::Null),
        k => Err(wrong(k, format!("number {v}"))),
    }
}

pub(super) fn text<'a>(kind: Kind, v: &str) -> ValueResult<'a> {
    match kind {
        Kind::Timestamp { .. } => parse_timestamp_micros(v)
            .map(Scalar::I64)
            .ok_or_else(|| ("wrong-type", format!("`{v}` is not an ISO 8601 timestamp"))),
        Kind::Date => NaiveDate::parse_from_str(v, "%Y-%m-%d")
            .ok()
            .map(|d| {
                let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch");
                #[allow(clippy::cast_possible_truncation)]
                Scalar::I32((d - epoch).num_days() as i32)
            })
            .ok_or_else(|| ("wrong-type", format!("`{v}` is not a date (YYYY-MM-DD)"))),
        Kind::Decimal { precision, scale } => decimal_from_text(v, precision, scale),
        Kind::Time => NaiveTime::parse_from_str(v, "%H:%M:%S%.f")
            .ok()
            .map(|t| {
                let micros = t.num_seconds_from_midnight() as i64 * 1_000_000
                    + i64::from(t.nanosecond() / 1000);
                Scalar::I64(micros)
            })
            .ok_or_else(|| {
                (
                    "wrong-type",
                    format!("`{v}` is not a time (HH:MM:SS[.ffffff])"),
                )
            }),
        Kind::Uuid => uuid::Uuid::parse_str(v)
            .map(|u| Scalar::Bytes(u.as_bytes().to_vec()))
            .map_err(|_| ("wrong-type", format!("`{v}` is not a UUID"))),
        Kind::Binary { .. } => base64::engine::general_purpose::STANDARD
            .decode(v)
            .map(Scalar::Bytes)
            .map_err(|_| {
                (
                    "wrong-type",
                    "binary values must be base64 strings".to_string(),
                )
            }),
        Kind::Unsupported | Kind::Nested => Ok(Scalar::Null),
        k => Err(wrong(k, format!("string \"{}\"", truncate(v, 40)))),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// ISO 8601 with offset (`2026-01-02T03:04:05.123Z`, `+02:00`) or without (taken as UTC).
fn parse_timestamp_micros(v: &str) -> Option<i64> {
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Some(t.timestamp_micros());
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(v, fmt) {
            return Some(t.and_utc().timestamp_micros());
        }
    }
    None
}

pub(super) fn check_precision(unscaled: i128, precision: u8) -> Result<(), ()> {
    let limit = 10i128.checked_pow(u32::from(precision)).ok_or(())?;
    if unscaled.abs() < limit {
        Ok(())
    } else {
        Err(())
    }
}

fn decimal_from_text<'a>(v: &str, precision: u8, scale: i8) -> ValueResult<'a> {
    let kind = Kind::Decimal { precision, scale };
    let bad = || ("wrong-type", format!("`{v}` is not a decimal number"));
    let s = v.trim();
    let (neg, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let (int_part, frac_part) = digits.split_once('.').unwrap_or((digits, ""));
    if int_part.is_empty() && frac_part.is_empty()
        || !int_part.bytes().all(|b| b.is_ascii_digit())
        || !frac_part.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let scale_u = usize::try_from(scale).map_err(|_| bad())?;
    if frac_part.trim_end_matches('0').len() > scale_u {
        return Err(range(
            kind,
            format!("`{v}` (more than {scale} fractional digits)"),
        ));
    }
    let mut unscaled: i128 = 0;
    let frac_padded = frac_part
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(scale_u);
    for b in int_part.bytes().chain(frac_padded) {
        unscaled = unscaled
            .checked_mul(10)
            .and_then(|x| x.checked_add(i128::from(b - b'0')))
            .ok_or_else(|| range(kind, v))?;
    }
    if neg {
        unscaled = -unscaled;
    }
    check_precision(unscaled, precision).map_err(|()| range(kind, v))?;
    Ok(Scalar::I128(unscaled))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_parse_exactly() {
        let d = |s: &str| decimal_from_text(s, 10, 2);
        assert_eq!(d("12.34"), Ok(Scalar::I128(1234)));
        assert_eq!(d("-0.5"), Ok(Scalar::I128(-50)));
        assert_eq!(d("1.230"), Ok(Scalar::I128(123)));
        assert!(
            d("123456789.00").is_err(),
            "precision 10 holds 8 integer digits"
        );
        assert!(d("1.2.3").is_err());
        assert!(d("").is_err());
    }
}
