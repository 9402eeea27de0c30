//! Parsers for the small languages inside the spec (column types, partition transforms,
//! durations, starting offsets). Pure functions shared by validation and the runtime.

use std::{fmt, time::Duration};

use chrono::{DateTime, Utc};

/// A column type a table can be created with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// `boolean`
    Boolean,
    /// `int` (32-bit)
    Int,
    /// `long` (64-bit)
    Long,
    /// `float` (32-bit)
    Float,
    /// `double` (64-bit)
    Double,
    /// `decimal(P,S)`
    Decimal {
        /// Precision, 1..=38.
        precision: u32,
        /// Scale, 0..=precision.
        scale: u32,
    },
    /// `date`
    Date,
    /// `timestamp` (microseconds, no zone)
    Timestamp,
    /// `timestamptz` (microseconds, UTC)
    Timestamptz,
    /// `string`
    String,
    /// `uuid`
    Uuid,
    /// `binary`
    Binary,
}

impl ColumnType {
    /// Parses an Iceberg primitive type name.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim().to_ascii_lowercase();
        let simple = match t.as_str() {
            "boolean" | "bool" => Some(Self::Boolean),
            "int" | "integer" => Some(Self::Int),
            "long" | "bigint" => Some(Self::Long),
            "float" => Some(Self::Float),
            "double" => Some(Self::Double),
            "date" => Some(Self::Date),
            "timestamp" => Some(Self::Timestamp),
            "timestamptz" => Some(Self::Timestamptz),
            "string" => Some(Self::String),
            "uuid" => Some(Self::Uuid),
            "binary" => Some(Self::Binary),
            _ => None,
        };
        if let Some(s) = simple {
            return Ok(s);
        }
        if let Some(args) = t.strip_prefix("decimal(").and_then(|r| r.strip_suffix(')')) {
            let mut it = args.split(',').map(str::trim);
            let (Some(p), Some(s), None) = (it.next(), it.next(), it.next()) else {
                return Err(format!(
                    "`{text}`: decimal needs two arguments, decimal(P,S)"
                ));
            };
            let precision: u32 = p.parse().map_err(|_| format!("`{text}`: bad precision"))?;
            let scale: u32 = s.parse().map_err(|_| format!("`{text}`: bad scale"))?;
            if !(1..=38).contains(&precision) || scale > precision {
                return Err(format!("`{text}`: need 1 <= P <= 38 and 0 <= S <= P"));
            }
            return Ok(Self::Decimal { precision, scale });
        }
        Err(format!(
            "unknown column type `{text}` (expected boolean, int, long, float, double, \
             decimal(P,S), date, timestamp, timestamptz, string, uuid or binary)"
        ))
    }
}

/// A partition transform applied to a source column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionField {
    /// The transform.
    pub transform: Transform,
    /// The source column name.
    pub column: String,
}

/// Iceberg partition transforms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    /// The value itself.
    Identity,
    /// Years since 1970.
    Year,
    /// Months since 1970-01.
    Month,
    /// Days since 1970-01-01.
    Day,
    /// Hours since 1970-01-01T00.
    Hour,
    /// Hash into N buckets.
    Bucket(u32),
    /// Truncate to width W.
    Truncate(u32),
}

impl fmt::Display for Transform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Identity => f.write_str("identity"),
            Self::Year => f.write_str("year"),
            Self::Month => f.write_str("month"),
            Self::Day => f.write_str("day"),
            Self::Hour => f.write_str("hour"),
            Self::Bucket(n) => write!(f, "bucket[{n}]"),
            Self::Truncate(w) => write!(f, "truncate[{w}]"),
        }
    }
}

impl PartitionField {
    /// Parses `col`, `identity(col)`, `day(col)`/`days(col)`, `bucket(16, col)`,
    /// `bucket[16](col)`, `truncate(4, col)` or `truncate[4](col)`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let Some(open) = t.find('(') else {
            if is_identifier(t) {
                return Ok(Self {
                    transform: Transform::Identity,
                    column: t.to_string(),
                });
            }
            return Err(format!("`{text}` is neither a column name nor a transform"));
        };
        let inner = t[open + 1..]
            .strip_suffix(')')
            .ok_or_else(|| format!("`{text}`: missing closing parenthesis"))?;
        let head = t[..open].trim().to_ascii_lowercase();
        // bucket[16](col) form
        let (name, bracket_arg) = match head.find('[') {
            Some(b) => {
                let arg = head[b + 1..]
                    .strip_suffix(']')
                    .ok_or_else(|| format!("`{text}`: missing `]`"))?;
                (head[..b].to_string(), Some(arg.trim().to_string()))
            }
            None => (head.clone(), None),
        };
        let args: Vec<&str> = inner.split(',').map(str::trim).collect();
        let (arg, column) = match (bracket_arg, args.as_slice()) {
            (Some(w), [col]) => (Some(w), *col),
            (None, [w, col]) => (Some((*w).to_string()), *col),
            (None, [col]) => (None, *col),
            _ => return Err(format!("`{text}`: wrong number of arguments")),
        };
        if !is_identifier(column) {
            return Err(format!("`{text}`: `{column}` is not a column name"));
        }
        let width = || -> Result<u32, String> {
            let w = arg
                .as_deref()
                .ok_or_else(|| format!("`{text}`: {name} needs a width, e.g. {name}(16, col)"))?;
            match w.parse::<u32>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(format!("`{text}`: width `{w}` must be a positive integer")),
            }
        };
        let only_column = |t: Transform| -> Result<Transform, String> {
            match arg {
                Some(_) => Err(format!("`{text}`: {name} takes only a column")),
                None => Ok(t),
            }
        };
        let transform = match name.as_str() {
            "identity" => only_column(Transform::Identity)?,
            "year" | "years" => only_column(Transform::Year)?,
            "month" | "months" => only_column(Transform::Month)?,
            "day" | "days" => only_column(Transform::Day)?,
            "hour" | "hours" => only_column(Transform::Hour)?,
            "bucket" => Transform::Bucket(width()?),
            "truncate" => Transform::Truncate(width()?),
            other => return Err(format!("`{text}`: unknown transform `{other}`")),
        };
        Ok(Self {
            transform,
            column: column.to_string(),
        })
    }
}

/// One field of a table's sort order: a column or a transform of it, the direction and where
/// nulls go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortField {
    /// The column and its transform (as in `partitionBy`).
    pub field: PartitionField,
    /// Descending instead of ascending.
    pub descending: bool,
    /// Nulls before the other values.
    pub nulls_first: bool,
}

impl SortField {
    /// Parses `col`, `col desc`, `day(ts) asc nulls last`, …: a column or transform as in
    /// `partitionBy`, then optionally `asc`/`desc`, then optionally `nulls first`/`nulls last`
    /// (default: nulls first ascending, nulls last descending, as SQL engines do).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut rest = text.trim();
        let lower = rest.to_ascii_lowercase();
        let mut nulls_first = None;
        for (suffix, first) in [(" nulls first", true), (" nulls last", false)] {
            if lower.ends_with(suffix) {
                nulls_first = Some(first);
                rest = rest[..rest.len() - suffix.len()].trim_end();
            }
        }
        let lower = rest.to_ascii_lowercase();
        let mut descending = false;
        for (suffix, desc) in [(" asc", false), (" desc", true)] {
            if lower.ends_with(suffix) {
                descending = desc;
                rest = rest[..rest.len() - suffix.len()].trim_end();
            }
        }
        let field = PartitionField::parse(rest).map_err(|e| format!("sort field {e}"))?;
        Ok(Self {
            field,
            descending,
            nulls_first: nulls_first.unwrap_or(!descending),
        })
    }
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '.')
        && !s.starts_with('.')
}

/// Parses a duration such as `10s`, `500ms`, `1m 30s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let total = parse_span(text)?;
    if total.is_zero() {
        return Err(format!("`{text}` must be greater than zero"));
    }
    Ok(total)
}

fn parse_span(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "`{text}` is not a duration: use digits and units ms, s, m, h, d (e.g. 500ms, 10s, 1m30s, 7d)"
        )
    };
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else {
            match rest.as_bytes().first() {
                Some(b's') => (Duration::from_secs(1), 1),
                Some(b'm') => (Duration::from_secs(60), 1),
                Some(b'h') => (Duration::from_secs(3600), 1),
                Some(b'd') => (Duration::from_secs(86_400), 1),
                _ => return Err(bad()),
            }
        };
        rest = &rest[len..];
        let part = u32::try_from(n)
            .ok()
            .and_then(|n| unit.checked_mul(n))
            .ok_or_else(bad)?;
        total = total.checked_add(part).ok_or_else(bad)?;
    }
    Ok(total)
}

/// Like [`parse_duration`], but zero is allowed (ages and thresholds: `0s` means "any").
pub fn parse_age(text: &str) -> Result<Duration, String> {
    parse_span(text)
}

/// The OpenAPI pattern matching what [`parse_duration`] accepts.
pub const DURATION_PATTERN: &str = r"^([0-9]+(ms|s|m|h|d))+$";

/// Where to start reading a partition with no checkpointed offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartingOffsets {
    /// The first available record.
    Earliest,
    /// Only records produced after the start.
    Latest,
    /// The first record with a timestamp at or after this instant.
    Timestamp(DateTime<Utc>),
}

impl StartingOffsets {
    /// Parses `earliest`, `latest` or an RFC 3339 timestamp.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.trim() {
            "earliest" => Ok(Self::Earliest),
            "latest" => Ok(Self::Latest),
            other => DateTime::parse_from_rfc3339(other)
                .map(|t| Self::Timestamp(t.with_timezone(&Utc)))
                .map_err(|_| {
                    format!("`{other}` is not `earliest`, `latest` or an RFC 3339 timestamp")
                }),
        }
    }
}

/// A table identifier split into namespace parts and name.
pub fn parse_table_ident(text: &str) -> Result<(Vec<String>, String), String> {
    let parts: Vec<&str> = text.split('.').collect();
    if parts.len() < 2 || parts.iter().any(|p| p.trim().is_empty()) {
        return Err(format!("`{text}` must be `namespace.table`"));
    }
    let (name, ns) = parts.split_last().expect("at least two parts");
    Ok((ns.iter().map(|s| s.to_string()).collect(), name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sort_fields_take_a_direction_and_a_null_order() {
        let f = SortField::parse("day(ts) DESC").unwrap();
        assert_eq!(
            (
                f.field.transform,
                f.field.column.as_str(),
                f.descending,
                f.nulls_first
            ),
            (Transform::Day, "ts", true, false)
        );
        let f = SortField::parse("id asc nulls last").unwrap();
        assert!(!f.descending && !f.nulls_first);
        let f = SortField::parse("bucket(16, id)").unwrap();
        assert!(!f.descending && f.nulls_first);
        assert!(SortField::parse("id sideways").is_err());
    }

    #[test]
    fn column_types_parse() {
        assert_eq!(ColumnType::parse("long"), Ok(ColumnType::Long));
        assert_eq!(
            ColumnType::parse("TimestampTZ"),
            Ok(ColumnType::Timestamptz)
        );
        assert_eq!(
            ColumnType::parse("decimal(10, 2)"),
            Ok(ColumnType::Decimal {
                precision: 10,
                scale: 2
            })
        );
        assert!(ColumnType::parse("decimal(2,3)").is_err());
        assert!(
            ColumnType::parse("varchar")
                .unwrap_err()
                .contains("unknown column type")
        );
    }

    #[test]
    fn transforms_parse() {
        let p = |s| PartitionField::parse(s).map(|f| (f.transform, f.column));
        assert_eq!(p("ts"), Ok((Transform::Identity, "ts".into())));
        assert_eq!(p("day(ts)"), Ok((Transform::Day, "ts".into())));
        assert_eq!(p("hours(ts)"), Ok((Transform::Hour, "ts".into())));
        assert_eq!(
            p("bucket(16, id)"),
            Ok((Transform::Bucket(16), "id".into()))
        );
        assert_eq!(p("bucket[8](id)"), Ok((Transform::Bucket(8), "id".into())));
        assert_eq!(
            p("truncate(4,name)"),
            Ok((Transform::Truncate(4), "name".into()))
        );
        assert!(p("bucket(id)").unwrap_err().contains("needs a width"));
        assert!(p("bucket(0, id)").unwrap_err().contains("positive"));
        assert!(p("day(3, ts)").unwrap_err().contains("takes only a column"));
        assert!(p("weekly(ts)").unwrap_err().contains("unknown transform"));
        assert!(p("day(ts").is_err());
    }

    #[test]
    fn durations_and_offsets_parse() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("ten").is_err());
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        for bad in ["", "10", "s", "10 s", "1.5s", "10sec", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} must be refused");
        }
        assert_eq!(
            StartingOffsets::parse("earliest"),
            Ok(StartingOffsets::Earliest)
        );
        assert!(matches!(
            StartingOffsets::parse("2026-01-02T03:04:05Z"),
            Ok(StartingOffsets::Timestamp(_))
        ));
        assert!(StartingOffsets::parse("yesterday").is_err());
    }

    #[test]
    fn table_idents_parse() {
        assert_eq!(
            parse_table_ident("analytics.clicks"),
            Ok((vec!["analytics".to_string()], "clicks".to_string()))
        );
        assert!(parse_table_ident("clicks").is_err());
        assert!(parse_table_ident("a..b").is_err());
    }
}
