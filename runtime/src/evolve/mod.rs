//! Schema evolution (pure): what a record that does not fit the table asks of its schema, and
//! the table's next schema. A field the table lacks becomes a new optional column, and a field
//! a struct column lacks a new optional field of it (from a JSON value: boolean, long, double,
//! string, objects → structs, arrays → lists; from an Avro writer schema: its full type); an
//! `int` column given a wider value becomes `long`, `float` becomes `double` and a decimal
//! gains precision (same scale) when an Avro writer schema widens it. A required column becomes optional when an
//! Avro writer schema makes it nullable or drops it, and for JSON only when the pipeline allows
//! it (`relax_required`: a JSON record has no schema saying the field is now optional, so by
//! default it is a bad record, not a reason to weaken the table). Nothing else changes:
//! columns are never dropped, renamed or narrowed, and field ids are never reused (new ids
//! continue after the table's last one).

mod avro;
mod infer;

use std::sync::Arc;

use iceberg::spec::{
    ListType, MapType, NestedField, NestedFieldRef, PrimitiveType, Schema, StructType, Type,
};

use crate::decode::{ConvertError, Shape};

pub use avro::table_schema;
pub use infer::{Sample, infer_schema};

/// One change to a table's schema. `path` names a field: struct field names from the top,
/// `element` for a list's elements, `value` for a map's values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A new optional field (its nested fields get new ids).
    AddColumn {
        /// Where: the parent struct's path and the new name.
        path: Vec<String>,
        /// Its type.
        ty: Type,
    },
    /// A field's type widened (`int` → `long`, `float` → `double`, decimal precision).
    Widen {
        /// The field.
        path: Vec<String>,
        /// Its new type.
        to: PrimitiveType,
    },
    /// A required field made optional.
    MakeOptional {
        /// The field.
        path: Vec<String>,
    },
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::AddColumn { path, ty } => {
                write!(f, "add column {} {}", path.join("."), type_name(ty))
            }
            Self::Widen { path, to } => write!(f, "widen {} to {to}", path.join(".")),
            Self::MakeOptional { path } => write!(f, "make {} optional", path.join(".")),
        }
    }
}

/// A type as users read it: `long`, `struct<a: long, b: string>`, `list<string>`,
/// `map<string, long>`.
pub fn type_name(ty: &Type) -> String {
    match ty {
        Type::Primitive(p) => p.to_string(),
        Type::Struct(s) => {
            let fields: Vec<String> = s
                .fields()
                .iter()
                .map(|f| format!("{}: {}", f.name, type_name(&f.field_type)))
                .collect();
            format!("struct<{}>", fields.join(", "))
        }
        Type::List(l) => format!("list<{}>", type_name(&l.element_field.field_type)),
        Type::Map(m) => format!(
            "map<{}, {}>",
            type_name(&m.key_field.field_type),
            type_name(&m.value_field.field_type)
        ),
    }
}

/// What a record showed that the table's schema does not allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// Non-null fields without a column, with the shapes of their values (JSON).
    NewFields(Vec<(String, Shape)>),
    /// The record failed to convert.
    Failed(ConvertError),
    /// A new Avro writer schema, in its Iceberg shape ([`table_schema`]).
    Writer(Arc<Schema>),
}

/// How deep inferred JSON types may nest.
const MAX_JSON_DEPTH: usize = 32;

/// The column type a JSON value asks for: boolean, long for integers, double for other
/// numbers, string; an object → a struct of its fields that have a type, an array → a list of
/// its first non-null element's type (all optional; field ids 0 until the type is added to a
/// schema). `None`: null, an empty object, an array without a typed element.
pub fn column_type(shape: &Shape) -> Option<Type> {
    shape_type(shape, 0)
}

fn shape_type(shape: &Shape, depth: usize) -> Option<Type> {
    let p = |t| Some(Type::Primitive(t));
    match shape {
        Shape::Boolean => p(PrimitiveType::Boolean),
        Shape::Integer => p(PrimitiveType::Long),
        Shape::Number => p(PrimitiveType::Double),
        Shape::String => p(PrimitiveType::String),
        Shape::Null => None,
        _ if depth >= MAX_JSON_DEPTH => None,
        Shape::Object(fields) => {
            let fields: Vec<NestedFieldRef> = fields
                .iter()
                .filter_map(|(name, s)| {
                    let ty = shape_type(s, depth + 1)?;
                    Some(Arc::new(NestedField::optional(0, name, ty)))
                })
                .collect();
            (!fields.is_empty()).then(|| Type::Struct(StructType::new(fields)))
        }
        Shape::Array(element) => {
            let ty = shape_type(element.as_deref()?, depth + 1)?;
            let element = NestedField::list_element(0, ty, false);
            Some(Type::List(ListType::new(Arc::new(element))))
        }
    }
}

/// What a JSON value of `shape` adds to an existing field of type `ty` at `path`: struct
/// fields it lacks (also in list elements), recursively.
fn json_additions(ty: &Type, shape: &Shape, path: &[String], out: &mut Vec<Change>) {
    let at = |name: &str| [path, &[name.to_string()]].concat();
    match (ty, shape) {
        (Type::Struct(st), Shape::Object(fields)) => {
            for (name, s) in fields {
                match st.field_by_name(name) {
                    Some(f) => json_additions(&f.field_type, s, &at(name), out),
                    None => {
                        if let Some(ty) = column_type(s) {
                            out.push(Change::AddColumn { path: at(name), ty });
                        }
                    }
                }
            }
        }
        (Type::List(l), Shape::Array(Some(element))) => {
            json_additions(&l.element_field.field_type, element, &at("element"), out);
        }
        _ => {}
    }
}

/// The changes `observation` asks of `schema` (empty: nothing the pipeline may evolve; the
/// record is then written without the fields, or dead-lettered with its error).
pub fn decide(schema: &Schema, observation: &Observation, relax_required: bool) -> Vec<Change> {
    match observation {
        Observation::NewFields(fields) => {
            let mut changes = Vec::new();
            for (name, shape) in fields {
                match schema.as_struct().field_by_name(name) {
                    Some(f) => json_additions(
                        &f.field_type,
                        shape,
                        std::slice::from_ref(name),
                        &mut changes,
                    ),
                    None => {
                        if let Some(ty) = column_type(shape) {
                            changes.push(Change::AddColumn {
                                path: vec![name.clone()],
                                ty,
                            });
                        }
                    }
                }
            }
            changes
        }
        Observation::Failed(error) => {
            let Some(field) = error
                .field
                .as_deref()
                .and_then(|name| schema.as_struct().field_by_name(name))
            else {
                return Vec::new();
            };
            let path = vec![field.name.clone()];
            match (error.kind, field.field_type.as_ref()) {
                ("missing-required", _) if field.required && relax_required => {
                    vec![Change::MakeOptional { path }]
                }
                ("out-of-range", Type::Primitive(PrimitiveType::Int)) => vec![Change::Widen {
                    path,
                    to: PrimitiveType::Long,
                }],
                _ => Vec::new(),
            }
        }
        Observation::Writer(writer) => {
            let mut changes = Vec::new();
            diff_struct(schema.as_struct(), writer.as_struct(), &[], &mut changes);
            changes
        }
    }
}

/// What a table struct needs to take the values of a writer's struct.
fn diff_struct(table: &StructType, writer: &StructType, at: &[String], out: &mut Vec<Change>) {
    let path = |name: &str| [at, &[name.to_string()]].concat();
    for w in writer.fields() {
        match table.field_by_name(&w.name) {
            None => out.push(Change::AddColumn {
                path: path(&w.name),
                ty: w.field_type.as_ref().clone(),
            }),
            Some(t) => diff_field(t, w, path(&w.name), out),
        }
    }
    for t in table.fields() {
        if t.required && writer.field_by_name(&t.name).is_none() {
            out.push(Change::MakeOptional {
                path: path(&t.name),
            });
        }
    }
}

fn diff_field(table: &NestedField, writer: &NestedField, path: Vec<String>, out: &mut Vec<Change>) {
    if table.required && !writer.required {
        out.push(Change::MakeOptional { path: path.clone() });
    }
    let child = |name: &str| [path.as_slice(), &[name.to_string()]].concat();
    match (table.field_type.as_ref(), writer.field_type.as_ref()) {
        (Type::Primitive(t), Type::Primitive(w)) => {
            if let Some(to) = widened(t, w) {
                out.push(Change::Widen { path, to });
            }
        }
        (Type::Struct(t), Type::Struct(w)) => diff_struct(t, w, &path, out),
        (Type::List(t), Type::List(w)) => {
            diff_field(&t.element_field, &w.element_field, child("element"), out);
        }
        (Type::Map(t), Type::Map(w)) => {
            diff_field(&t.value_field, &w.value_field, child("value"), out);
        }
        // Anything else is incompatible: records then fail to convert and follow the policy.
        _ => {}
    }
}

/// The wider type a `table` column must become to hold `writer`'s values, when Iceberg allows
/// that promotion.
fn widened(table: &PrimitiveType, writer: &PrimitiveType) -> Option<PrimitiveType> {
    match (table, writer) {
        (PrimitiveType::Int, PrimitiveType::Long) => Some(PrimitiveType::Long),
        (PrimitiveType::Float, PrimitiveType::Double) => Some(PrimitiveType::Double),
        (
            PrimitiveType::Decimal {
                precision: p,
                scale: s,
            },
            PrimitiveType::Decimal {
                precision: q,
                scale: r,
            },
        ) if s == r && q > p => Some(PrimitiveType::Decimal {
            precision: *q,
            scale: *s,
        }),
        _ => None,
    }
}

/// `ty` with new ids (after `next`) for all its nested fields.
pub fn fresh_ids(ty: &Type, next: &mut i32) -> Type {
    let renew = |f: &NestedFieldRef, next: &mut i32| {
        let mut f = f.as_ref().clone();
        *next += 1;
        f.id = *next;
        *f.field_type = fresh_ids(&f.field_type, next);
        Arc::new(f)
    };
    match ty {
        Type::Primitive(_) => ty.clone(),
        Type::Struct(s) => Type::Struct(StructType::new(
            s.fields().iter().map(|f| renew(f, next)).collect(),
        )),
        Type::List(l) => Type::List(ListType::new(renew(&l.element_field, next))),
        Type::Map(m) => {
            let key = renew(&m.key_field, next);
            Type::Map(MapType::new(key, renew(&m.value_field, next)))
        }
    }
}

/// `schema` with `changes` applied; new fields get ids after `last_column_id`.
pub fn apply(
    schema: &Schema,
    changes: &[Change],
    last_column_id: i32,
) -> Result<Schema, iceberg::Error> {
    let mut fields: Vec<NestedFieldRef> = schema.as_struct().fields().to_vec();
    let mut next_id = last_column_id;
    for change in changes {
        fields = apply_in(&fields, change_path(change), change, &mut next_id);
    }
    Schema::builder()
        .with_schema_id(schema.schema_id() + 1)
        .with_identifier_field_ids(schema.identifier_field_ids())
        .with_fields(fields)
        .build()
}

fn change_path(change: &Change) -> &[String] {
    match change {
        Change::AddColumn { path, .. }
        | Change::Widen { path, .. }
        | Change::MakeOptional { path } => path,
    }
}

/// The fields of one struct with `change` applied at `path` (relative to this struct).
fn apply_in(
    fields: &[NestedFieldRef],
    path: &[String],
    change: &Change,
    next: &mut i32,
) -> Vec<NestedFieldRef> {
    let Some((head, rest)) = path.split_first() else {
        return fields.to_vec();
    };
    let mut out = fields.to_vec();
    if rest.is_empty()
        && let Change::AddColumn { ty, .. } = change
    {
        if !fields.iter().any(|f| f.name == *head) {
            *next += 1;
            let id = *next;
            out.push(Arc::new(NestedField::optional(
                id,
                head,
                fresh_ids(ty, next),
            )));
        }
        return out;
    }
    for f in &mut out {
        if f.name == *head {
            *f = Arc::new(apply_to_field(f, rest, change, next));
        }
    }
    out
}

/// `field` with `change` applied at `path` below it (itself when `path` is empty).
fn apply_to_field(
    field: &NestedField,
    path: &[String],
    change: &Change,
    next: &mut i32,
) -> NestedField {
    let mut f = field.clone();
    if path.is_empty() {
        match change {
            Change::Widen { to, .. } => *f.field_type = Type::Primitive(to.clone()),
            Change::MakeOptional { .. } => f.required = false,
            Change::AddColumn { .. } => {}
        }
        return f;
    }
    let ty = match field.field_type.as_ref() {
        Type::Struct(s) => Type::Struct(StructType::new(apply_in(s.fields(), path, change, next))),
        Type::List(l) if path[0] == "element" => Type::List(ListType::new(Arc::new(
            apply_to_field(&l.element_field, &path[1..], change, next),
        ))),
        Type::Map(m) if path[0] == "value" => Type::Map(MapType::new(
            m.key_field.clone(),
            Arc::new(apply_to_field(&m.value_field, &path[1..], change, next)),
        )),
        other => other.clone(),
    };
    *f.field_type = ty;
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Schema {
        Schema::builder()
            .with_fields(vec![
                Arc::new(NestedField::required(
                    1,
                    "id",
                    Type::Primitive(PrimitiveType::Long),
                )),
                Arc::new(NestedField::optional(
                    2,
                    "n",
                    Type::Primitive(PrimitiveType::Int),
                )),
                Arc::new(NestedField::required(
                    3,
                    "kind",
                    Type::Primitive(PrimitiveType::String),
                )),
            ])
            .build()
            .unwrap()
    }

    fn failed(kind: &'static str, field: &str) -> Observation {
        Observation::Failed(ConvertError {
            kind,
            message: String::new(),
            field: Some(field.into()),
        })
    }

    #[test]
    fn new_fields_become_optional_columns_typed_by_their_values() {
        let obj = |f: Vec<(&str, Shape)>| {
            Shape::Object(f.into_iter().map(|(n, s)| (n.to_string(), s)).collect())
        };
        let seen = Observation::NewFields(vec![
            ("flag".into(), Shape::Boolean),
            ("count".into(), Shape::Integer),
            ("price".into(), Shape::Number),
            ("note".into(), Shape::String),
            (
                "meta".into(),
                obj(vec![("a", Shape::Integer), ("gone", Shape::Null)]),
            ),
            ("tags".into(), Shape::Array(Some(Box::new(Shape::String)))),
            ("empty".into(), Shape::Array(None)),
            ("nothing".into(), obj(vec![])),
            ("id".into(), Shape::Integer),
        ]);
        let changes = decide(&schema(), &seen, false);
        let shown: Vec<String> = changes.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "add column flag boolean",
                "add column count long",
                "add column price double",
                "add column note string",
                "add column meta struct<a: long>",
                "add column tags list<string>",
            ],
            "null, empty values and existing columns ask nothing"
        );
        let next = apply(&schema(), &changes, 3).unwrap();
        let note = next.field_by_name("note").unwrap();
        assert_eq!((note.id, note.required), (7, false));
        let a = next.field_by_name("meta.a").unwrap();
        assert_eq!((a.id, a.required), (9, false), "nested fields get new ids");
        assert_eq!(next.field_by_name("id").unwrap().id, 1, "ids kept");
        assert_eq!(next.schema_id(), schema().schema_id() + 1);

        // A later record brings fields the struct (and a list's struct elements) lack.
        let with_items = apply(
            &next,
            &decide(
                &next,
                &Observation::NewFields(vec![(
                    "items".into(),
                    Shape::Array(Some(Box::new(obj(vec![("sku", Shape::String)])))),
                )]),
                false,
            ),
            next.highest_field_id(),
        )
        .unwrap();
        let seen = Observation::NewFields(vec![
            (
                "meta".into(),
                obj(vec![("a", Shape::Integer), ("b", Shape::Boolean)]),
            ),
            (
                "items".into(),
                Shape::Array(Some(Box::new(obj(vec![("qty", Shape::Integer)])))),
            ),
        ]);
        let changes = decide(&with_items, &seen, false);
        let shown: Vec<String> = changes.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "add column meta.b boolean",
                "add column items.element.qty long"
            ]
        );
        let last = apply(&with_items, &changes, with_items.highest_field_id()).unwrap();
        assert!(last.field_by_name("items.element.qty").is_some());
        assert!(decide(&last, &seen, false).is_empty(), "nothing left to do");
    }

    #[test]
    fn widening_and_optional_but_never_narrowing_or_retyping() {
        assert_eq!(
            decide(&schema(), &failed("out-of-range", "n"), false),
            vec![Change::Widen {
                path: vec!["n".into()],
                to: PrimitiveType::Long
            }]
        );
        assert_eq!(
            decide(&schema(), &failed("missing-required", "kind"), true),
            vec![Change::MakeOptional {
                path: vec!["kind".into()]
            }]
        );
        assert!(
            decide(&schema(), &failed("missing-required", "kind"), false).is_empty(),
            "only when allowed"
        );
        // A long that overflows, a string where a long was, an unknown column: no change.
        assert!(decide(&schema(), &failed("out-of-range", "id"), true).is_empty());
        assert!(decide(&schema(), &failed("wrong-type", "id"), true).is_empty());
        assert!(decide(&schema(), &failed("missing-required", "gone"), true).is_empty());
        let next = apply(
            &schema(),
            &[
                Change::Widen {
                    path: vec!["n".into()],
                    to: PrimitiveType::Long,
                },
                Change::MakeOptional {
                    path: vec!["kind".into()],
                },
            ],
            3,
        )
        .unwrap();
        let n = next.field_by_name("n").unwrap();
        assert_eq!(*n.field_type, Type::Primitive(PrimitiveType::Long));
        assert!(!next.field_by_name("kind").unwrap().required);
        assert_eq!(next.highest_field_id(), 3);
    }
}
