//! What a writer schema and a datum must satisfy before apache-avro reads them: names it would
//! panic on, arrays whose length no datum bounds, and reads past a datum's end (which the
//! library takes for a null union branch). Pure.

use apache_avro::{Schema, schema::Name};

use super::AvroWriter;

impl AvroWriter {
    /// Every array in `schema` has items that take at least one byte each. A datum's block
    /// count is otherwise unbounded by its length: 10 bytes could claim 16 million `null`
    /// items and make the decoder materialise them all (gigabytes, found by fuzzing).
    pub(super) fn check_arrays<'a>(
        &'a self,
        schema: &'a Schema,
        path: &str,
        seen: &mut Vec<&'a Name>,
    ) -> Result<(), String> {
        let here = |name: &str| {
            if path.is_empty() {
                name.to_string()
            } else {
                format!("{path}.{name}")
            }
        };
        match schema {
            Schema::Ref { name } if !seen.contains(&name) => {
                seen.push(name);
                self.check_arrays(self.resolve(schema), path, seen)
            }
            Schema::Record(r) => {
                seen.push(&r.name);
                r.fields
                    .iter()
                    .try_for_each(|f| self.check_arrays(&f.schema, &here(&f.name), seen))
            }
            Schema::Array(a) => {
                if !self.takes_bytes(&a.items, &mut Vec::new()) {
                    return Err(format!(
                        "field `{path}` is an array of items that take no bytes (null, fixed(0) \
                         or a record of such fields): its length cannot be bounded, not supported"
                    ));
                }
                self.check_arrays(&a.items, &here("element"), seen)
            }
            Schema::Map(m) => self.check_arrays(&m.types, &here("value"), seen),
            Schema::Union(u) => u
                .variants()
                .iter()
                .try_for_each(|v| self.check_arrays(v, path, seen)),
            _ => Ok(()),
        }
    }

    /// Whether every value of `schema` takes at least one byte in a datum. A recursive
    /// reference does: a record can only contain itself through a union or an array.
    fn takes_bytes<'a>(&'a self, schema: &'a Schema, seen: &mut Vec<&'a Name>) -> bool {
        match schema {
            Schema::Null => false,
            Schema::Fixed(f) => f.size > 0,
            Schema::Decimal(d) => self.takes_bytes(&d.inner, seen),
            Schema::Record(r) => {
                seen.push(&r.name);
                r.fields.iter().any(|f| self.takes_bytes(&f.schema, seen))
            }
            Schema::Ref { name } => {
                seen.contains(&name) || {
                    seen.push(name);
                    self.takes_bytes(self.resolve(schema), seen)
                }
            }
            _ => true,
        }
    }
}

/// Every named type's name is a valid Avro full name (apache-avro panics on others).
pub(super) fn check_names(v: &serde_json::Value) -> Result<(), String> {
    match v {
        serde_json::Value::Array(items) => items.iter().try_for_each(check_names),
        serde_json::Value::Object(o) => {
            if let Some(serde_json::Value::String(name)) = o.get("name")
                && o.contains_key("type")
                && !valid_full_name(name)
            {
                return Err(format!("`{name}` is not a valid Avro name"));
            }
            o.values().try_for_each(check_names)
        }
        _ => Ok(()),
    }
}

/// apache-avro's own rule for a full name: dotted identifiers, or one identifier after a
/// leading dot (the null namespace) — `.a.b` is not one, though each part is an identifier.
fn valid_full_name(name: &str) -> bool {
    let identifier = |part: &str| {
        part.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    match name.strip_prefix('.') {
        Some(simple) => identifier(simple),
        None => name.split('.').all(identifier),
    }
}

/// A datum's bytes that refuse to be read past their end with an error other than
/// `UnexpectedEof`: apache-avro reads a union index at end of input as "null" (a truncated
/// record would become nulls silently) and an array block then yields one such item per count.
pub(super) struct Strict<'a>(pub(super) &'a [u8]);

impl std::io::Read for Strict<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.0.is_empty() && !buf.is_empty() {
            return Err(std::io::Error::other(
                "the datum ends before its schema does",
            ));
        }
        self.0.read(buf)
    }
}

#[cfg(test)]
mod tests {
    use apache_avro::Schema;

    use super::super::{
        AvroWriter,
        tests::{V1, batcher_for, order, writer},
    };

    /// Avro's zig-zag varint.
    fn zigzag(n: i64) -> Vec<u8> {
        let mut n = ((n << 1) ^ (n >> 63)) as u64;
        let mut out = Vec::new();
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                return out;
            }
            out.push(b | 0x80);
        }
    }

    #[test]
    fn names_follow_apache_avros_rule_so_its_parser_never_panics() {
        for good in ["a", "shop.Order", "_x.y_1", ".Order"] {
            assert!(super::valid_full_name(good), "{good}");
        }
        // `.ur5._1` made apache-avro panic while the parser read it (found by avro_table).
        for bad in [".ur5._1", "a..b", "a.", ".", "", "1a", "a.1b", "a-b"] {
            assert!(!super::valid_full_name(bad), "{bad}");
        }
        let e = AvroWriter::parse(
            r#"{"type": "record", "name": "R", "fields": [
                {"name": "f", "type": {"type": "fixed", "name": ".ur5._1", "size": 12}}]}"#,
        )
        .unwrap_err();
        assert!(e.contains("`.ur5._1` is not a valid Avro name"), "{e}");
    }

    #[test]
    fn a_truncated_datum_is_refused_not_read_as_nulls() {
        let w = writer(V1);
        let mut b = batcher_for(&w);
        let whole = order(&w, 7, None);
        // The last field is the `bill` union: without its index byte apache-avro alone would
        // read it as null and accept the record.
        let cut = &whole[..whole.len() - 1];
        let e = b.push_avro(&w, cut).unwrap_err();
        assert_eq!(e.kind, "invalid-avro");
        assert!(e.message.contains("ends before"), "{}", e.message);
        assert_eq!(b.rows(), 0);
        b.push_avro(&w, &whole).unwrap();
        assert_eq!(b.rows(), 1);
    }

    #[test]
    fn a_huge_array_count_in_a_tiny_datum_fails_at_once() {
        let w = writer(
            r#"{"type": "record", "name": "R", "fields": [
                {"name": "xs", "type": {"type": "array", "items": ["null", "long"]}}]}"#,
        );
        let mut b = batcher_for(&w);
        let mut datum = zigzag(16 * 1024 * 1024 - 1);
        datum.push(0); // one null item, then nothing
        let started = std::time::Instant::now();
        let e = b.push_avro(&w, &datum).unwrap_err();
        assert!(e.message.contains("ends before"), "{}", e.message);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "took {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn arrays_of_items_that_take_no_bytes_are_refused_by_name() {
        for items in [
            r#""null""#,
            r#"{"type": "fixed", "name": "Empty", "size": 0}"#,
            r#"{"type": "record", "name": "Nothing", "fields": [{"name": "n", "type": "null"}]}"#,
        ] {
            let text = format!(
                r#"{{"type": "record", "name": "R", "fields": [
                    {{"name": "inner", "type": {{"type": "record", "name": "In", "fields": [
                        {{"name": "xs", "type": {{"type": "array", "items": {items}}}}}]}}}}]}}"#
            );
            let e = AvroWriter::new(Schema::parse_str(&text).unwrap()).unwrap_err();
            assert!(
                e.contains("`inner.xs`") && e.contains("no bytes"),
                "{items}: {e}"
            );
        }
        // Recursive types through a union are fine, and so is an array of them.
        writer(
            r#"{"type": "record", "name": "Node", "fields": [
                {"name": "v", "type": "long"},
                {"name": "kids", "type": {"type": "array", "items": "Node"}},
                {"name": "next", "type": ["null", "Node"]}]}"#,
        );
    }
}
