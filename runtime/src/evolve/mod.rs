//! Schema evolution (pure): what a record that does not fit the table asks of its schema, and
//! the table's next schema. A field the table lacks becomes a new optional column (its type
//! from the JSON value: boolean, long, double, string; nested values are not evolved yet); an
//! `int` column given a value beyond 32 bits becomes `long`; a required column missing from a
//! record becomes optional only when the pipeline allows it (`relax_required`: a JSON record
//! has no schema saying the field is now optional, so by default it is a bad record, not a
//! reason to weaken the table). Nothing else changes: columns are never dropped, renamed or
//! narrowed, and field ids are never reused (new ids continue after the table's last one).

mod infer;

use std::sync::Arc;

use iceberg::spec::{NestedField, PrimitiveType, Schema, Type};

use crate::decode::{ConvertError, Shape};

pub use infer::infer_definition;

/// One change to a table's schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A new optional column.
    AddColumn {
        /// Its name.
        name: String,
        /// Its type.
        ty: PrimitiveType,
    },
    /// A column's type widened (`int` → `long`).
    Widen {
        /// The column.
        name: String,
        /// Its new type.
        to: PrimitiveType,
    },
    /// A required column made optional.
    MakeOptional {
        /// The column.
        name: String,
    },
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::AddColumn { name, ty } => write!(f, "add column {name} {ty}"),
            Self::Widen { name, to } => write!(f, "widen {name} to {to}"),
            Self::MakeOptional { name } => write!(f, "make {name} optional"),
        }
    }
}

/// What a record showed that the table's schema does not allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// Non-null fields without a column, with the shapes of their values.
    NewFields(Vec<(String, Shape)>),
    /// The record failed to convert.
    Failed(ConvertError),
}

/// The column type a new field's value asks for (`None`: nested values, not evolved yet).
pub fn column_type(shape: Shape) -> Option<PrimitiveType> {
    match shape {
        Shape::Boolean => Some(PrimitiveType::Boolean),
        Shape::Integer => Some(PrimitiveType::Long),
        Shape::Number => Some(PrimitiveType::Double),
        Shape::String => Some(PrimitiveType::String),
        Shape::Null | Shape::Object | Shape::Array => None,
    }
}

/// The changes `observation` asks of `schema` (empty: nothing the pipeline may evolve; the
/// record is then written without the fields, or dead-lettered with its error).
pub fn decide(schema: &Schema, observation: &Observation, relax_required: bool) -> Vec<Change> {
    match observation {
        Observation::NewFields(fields) => fields
            .iter()
            .filter(|(name, _)| schema.field_by_name(name).is_none())
            .filter_map(|(name, shape)| {
                column_type(*shape).map(|ty| Change::AddColumn {
                    name: name.clone(),
                    ty,
                })
            })
            .collect(),
        Observation::Failed(error) => {
            let Some(field) = error
                .field
                .as_deref()
                .and_then(|name| schema.field_by_name(name))
            else {
                return Vec::new();
            };
            let name = field.name.clone();
            match (error.kind, field.field_type.as_ref()) {
                ("missing-required", _) if field.required && relax_required => {
                    vec![Change::MakeOptional { name }]
                }
                ("out-of-range", Type::Primitive(PrimitiveType::Int)) => vec![Change::Widen {
                    name,
                    to: PrimitiveType::Long,
                }],
                _ => Vec::new(),
            }
        }
    }
}

/// `schema` with `changes` applied; new columns get ids after `last_column_id`.
pub fn apply(
    schema: &Schema,
    changes: &[Change],
    last_column_id: i32,
) -> Result<Schema, iceberg::Error> {
    let mut fields: Vec<NestedField> = schema
        .as_struct()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    let mut next_id = last_column_id;
    for change in changes {
        match change {
            Change::AddColumn { name, ty } => {
                if fields.iter().any(|f| f.name == *name) {
                    continue;
                }
                next_id += 1;
                fields.push(NestedField::optional(
                    next_id,
                    name,
                    Type::Primitive(ty.clone()),
                ));
            }
            Change::Widen { name, to } => {
                if let Some(f) = fields.iter_mut().find(|f| f.name == *name) {
                    *f.field_type = Type::Primitive(to.clone());
                }
            }
            Change::MakeOptional { name } => {
                if let Some(f) = fields.iter_mut().find(|f| f.name == *name) {
                    f.required = false;
                }
            }
        }
    }
    Schema::builder()
        .with_schema_id(schema.schema_id() + 1)
        .with_identifier_field_ids(schema.identifier_field_ids())
        .with_fields(fields.into_iter().map(Arc::new))
        .build()
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
        let seen = Observation::NewFields(vec![
            ("flag".into(), Shape::Boolean),
            ("count".into(), Shape::Integer),
            ("price".into(), Shape::Number),
            ("note".into(), Shape::String),
            ("nested".into(), Shape::Object),
            ("list".into(), Shape::Array),
            ("id".into(), Shape::Integer),
        ]);
        let changes = decide(&schema(), &seen, false);
        let add = |name: &str, ty| Change::AddColumn {
            name: name.into(),
            ty,
        };
        assert_eq!(
            changes,
            vec![
                add("flag", PrimitiveType::Boolean),
                add("count", PrimitiveType::Long),
                add("price", PrimitiveType::Double),
                add("note", PrimitiveType::String),
            ],
            "nested values and existing columns ask nothing"
        );
        let next = apply(&schema(), &changes, 3).unwrap();
        let note = next.field_by_name("note").unwrap();
        assert_eq!((note.id, note.required), (7, false));
        assert_eq!(next.field_by_name("id").unwrap().id, 1, "ids kept");
        assert_eq!(next.schema_id(), schema().schema_id() + 1);
    }

    #[test]
    fn widening_and_optional_but_never_narrowing_or_retyping() {
        assert_eq!(
            decide(&schema(), &failed("out-of-range", "n"), false),
            vec![Change::Widen {
                name: "n".into(),
                to: PrimitiveType::Long
            }]
        );
        assert_eq!(
            decide(&schema(), &failed("missing-required", "kind"), true),
            vec![Change::MakeOptional {
                name: "kind".into()
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
                    name: "n".into(),
                    to: PrimitiveType::Long,
                },
                Change::MakeOptional {
                    name: "kind".into(),
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
