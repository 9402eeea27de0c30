//! Change events → what they do to a keyed table. Debezium envelopes (with or without the
//! `schema`/`payload` wrapper of Kafka Connect's JSON converter) and plain JSON rows with an
//! optional delete marker. Pure: the images are returned as slices of the record, for the
//! row batcher to convert.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::ConvertError;

/// What one record does to the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change<'a> {
    /// The row with `after`'s key is now `after` (insert, update, snapshot read). `before` is
    /// the old image of an update, when the event has one: if its key differs, the old key is
    /// gone.
    Upsert {
        /// The new row (a JSON object).
        after: &'a [u8],
        /// The row before an update (a JSON object), when known.
        before: Option<&'a [u8]>,
    },
    /// The row with the key in `key` (a JSON object holding at least the key columns) is gone.
    Delete {
        /// The deleted row's image or key.
        key: &'a [u8],
    },
    /// Nothing changes (an envelope without payload: a tombstone written with schemas).
    Skip,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    before: Option<&'a RawValue>,
    #[serde(borrow, default)]
    after: Option<&'a RawValue>,
    #[serde(borrow, default)]
    op: Option<Cow<'a, str>>,
    /// Kept even when `null` (a tombstone written with schemas).
    #[serde(borrow, default, deserialize_with = "present")]
    payload: Option<&'a RawValue>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Records must be JSON objects (serde would also read a struct from an array).
fn must_be_object(payload: &[u8]) -> Result<(), ConvertError> {
    match payload.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => Ok(()),
        Some(b'[' | b'"' | b'0'..=b'9' | b'-' | b't' | b'f' | b'n') => Err(ConvertError {
            kind: "not-an-object",
            message: "the record is JSON but not an object".into(),
            field: None,
        }),
        _ => Err(ConvertError {
            kind: "invalid-json",
            message: "the record is not JSON".into(),
            field: None,
        }),
    }
}

fn invalid(message: impl Into<String>) -> ConvertError {
    ConvertError {
        kind: "invalid-envelope",
        message: message.into(),
        field: None,
    }
}

fn not_json(e: &serde_json::Error) -> ConvertError {
    ConvertError {
        kind: if e.is_data() {
            "not-an-object"
        } else {
            "invalid-json"
        },
        message: e.to_string(),
        field: None,
    }
}

fn object<'a>(v: Option<&'a RawValue>, field: &str, op: &str) -> Result<&'a [u8], ConvertError> {
    match v {
        Some(raw) if raw.get().starts_with('{') => Ok(raw.get().as_bytes()),
        Some(raw) => Err(invalid(format!(
            "debezium envelope: op `{op}` needs `{field}` to be an object, got `{}`",
            truncate(raw.get())
        ))),
        None => Err(invalid(format!(
            "debezium envelope: op `{op}` without `{field}`"
        ))),
    }
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(40) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// A Debezium change event (`op` c, r, u, d; `before`/`after` images), with or without the
/// `schema`/`payload` wrapper.
pub fn debezium(payload: &[u8]) -> Result<Change<'_>, ConvertError> {
    must_be_object(payload)?;
    let envelope: Envelope<'_> = serde_json::from_slice(payload).map_err(|e| not_json(&e))?;
    let envelope = match (&envelope.op, envelope.payload) {
        (None, Some(inner)) if inner.get() == "null" => return Ok(Change::Skip),
        (None, Some(inner)) => {
            must_be_object(inner.get().as_bytes())?;
            serde_json::from_str::<Envelope<'_>>(inner.get()).map_err(|e| ConvertError {
                message: format!("debezium envelope: `payload`: {e}"),
                ..not_json(&e)
            })?
        }
        _ => envelope,
    };
    let Some(op) = envelope.op.as_deref() else {
        return Err(invalid(
            "debezium envelope: `op` is missing (expected c, r, u or d)",
        ));
    };
    match op {
        "c" | "r" => Ok(Change::Upsert {
            after: object(envelope.after, "after", op)?,
            before: None,
        }),
        "u" => Ok(Change::Upsert {
            after: object(envelope.after, "after", op)?,
            before: envelope
                .before
                .map(|b| object(Some(b), "before", op))
                .transpose()?,
        }),
        "d" => Ok(Change::Delete {
            key: object(envelope.before, "before", op)?,
        }),
        "t" => Err(invalid(
            "debezium envelope: op `t` (truncate) is not applied: the table keeps its rows; \
             truncate it in the catalog if that is wanted",
        )),
        other => Err(invalid(format!(
            "debezium envelope: op `{}` is not c, r, u or d",
            truncate(other)
        ))),
    }
}

/// A plain JSON row: a delete of its key when `delete_field` is `true` or `"true"`, else the
/// row's new image.
pub fn marked<'a>(payload: &'a [u8], delete_field: &str) -> Result<Change<'a>, ConvertError> {
    #[derive(Deserialize)]
    struct Row<'a>(#[serde(borrow)] std::collections::HashMap<Cow<'a, str>, &'a RawValue>);
    must_be_object(payload)?;
    let row: Row<'_> = serde_json::from_slice(payload).map_err(|e| not_json(&e))?;
    let deleted = row
        .0
        .get(delete_field)
        .is_some_and(|v| matches!(v.get(), "true" | "\"true\""));
    Ok(if deleted {
        Change::Delete { key: payload }
    } else {
        Change::Upsert {
            after: payload,
            before: None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(b: &[u8]) -> &str {
        std::str::from_utf8(b).unwrap()
    }

    #[test]
    fn debezium_ops_give_images() {
        let c =
            br#"{"before":null,"after":{"id":1,"n":"a"},"source":{"db":"x"},"op":"c","ts_ms":1}"#;
        match debezium(c).unwrap() {
            Change::Upsert { after, before } => {
                assert_eq!(s(after), r#"{"id":1,"n":"a"}"#);
                assert_eq!(before, None);
            }
            other => panic!("{other:?}"),
        }
        let u = br#"{"before":{"id":1,"n":"a"},"after":{"id":2,"n":"b"},"op":"u"}"#;
        assert!(matches!(
            debezium(u).unwrap(),
            Change::Upsert { before: Some(b), .. } if s(b) == r#"{"id":1,"n":"a"}"#
        ));
        let d = br#"{"before":{"id":1},"after":null,"op":"d"}"#;
        assert!(matches!(debezium(d).unwrap(), Change::Delete { key } if s(key) == r#"{"id":1}"#));
        let r = br#"{"after":{"id":3},"op":"r"}"#;
        assert!(matches!(debezium(r).unwrap(), Change::Upsert { .. }));
    }

    #[test]
    fn the_schema_payload_wrapper_is_unwrapped() {
        let w = br#"{"schema":{"type":"struct","fields":[]},"payload":{"before":null,"after":{"id":1},"op":"c"}}"#;
        assert!(
            matches!(debezium(w).unwrap(), Change::Upsert { after, .. } if s(after) == r#"{"id":1}"#)
        );
        assert_eq!(
            debezium(br#"{"schema":null,"payload":null}"#).unwrap(),
            Change::Skip
        );
    }

    #[test]
    fn malformed_envelopes_name_what_is_wrong() {
        let cases: [(&[u8], &str, &str); 7] = [
            (
                br#"{"after":{"id":1}}"#,
                "invalid-envelope",
                "`op` is missing",
            ),
            (br#"{"op":"x","after":{}}"#, "invalid-envelope", "op `x`"),
            (
                br#"{"op":"d","before":null}"#,
                "invalid-envelope",
                "op `d` without `before`",
            ),
            (
                br#"{"op":"c","after":5}"#,
                "invalid-envelope",
                "needs `after` to be an object",
            ),
            (br#"{"op":"t"}"#, "invalid-envelope", "truncate"),
            (b"[1]", "not-an-object", ""),
            (b"{", "invalid-json", ""),
        ];
        for (input, kind, text) in cases {
            let e = debezium(input).unwrap_err();
            assert_eq!(e.kind, kind, "{}", s(input));
            assert!(e.message.contains(text), "{}: {}", s(input), e.message);
        }
    }

    #[test]
    fn a_delete_marker_turns_a_row_into_a_delete() {
        for deleted in [
            r#"{"id":1,"__deleted":"true"}"#,
            r#"{"id":1,"__deleted":true}"#,
        ] {
            assert!(matches!(
                marked(deleted.as_bytes(), "__deleted").unwrap(),
                Change::Delete { .. }
            ));
        }
        for kept in [r#"{"id":1,"__deleted":"false"}"#, r#"{"id":1}"#] {
            assert!(matches!(
                marked(kept.as_bytes(), "__deleted").unwrap(),
                Change::Upsert { .. }
            ));
        }
        assert_eq!(marked(b"1", "__deleted").unwrap_err().kind, "not-an-object");
    }
}
