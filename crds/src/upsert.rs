//! `spec.sink.mode: upsert`: the write mode, how deletes are recognised, and the checks of a
//! primary key that CEL cannot make (columns of every table definition, the format).

use std::collections::HashSet;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{format::FormatType, pipeline::IngestionPipelineSpec};

/// Write modes.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum WriteMode {
    /// Every record becomes a new row.
    #[default]
    Append,
    /// The table holds the newest row per primary key: a record replaces the row with its
    /// key, a delete removes it. Each checkpoint commits its new rows with position deletes of
    /// the rows they replace (readable by every Iceberg v2 reader).
    Upsert,
}

/// How upsert mode recognises and writes deletes.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpsertSpec {
    /// With `format.type: json`: a field whose value `true` (or `"true"`) marks the record as a
    /// delete of its key, e.g. `__deleted` (Debezium's ExtractNewRecordState). A record without
    /// a value (a tombstone) whose Kafka key is a JSON object with the key columns is a delete
    /// too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub delete_field: Option<String>,
    /// How replaced and deleted rows are removed: `position` (default) — position deletes from
    /// a primary-key index, readable by every v2 reader; `equality` — equality deletes on the
    /// key (Flink's way: no index beyond a checkpoint, but PyIceberg cannot read the table and
    /// other readers slow down as they pile up until compaction).
    #[serde(default)]
    pub delete_mode: DeleteMode,
    /// Position mode: the most memory a worker's key index of one table may take (bytes).
    /// Beyond it, keys that do not fit are held for their checkpoint only, and changes of keys
    /// the index does not hold also write equality deletes (correct, but PyIceberg cannot read
    /// such a table until compaction).
    #[serde(default = "default_max_index_bytes")]
    #[schemars(range(min = 0))]
    pub max_index_bytes: u64,
}

impl Default for UpsertSpec {
    fn default() -> Self {
        Self {
            delete_field: None,
            delete_mode: DeleteMode::default(),
            max_index_bytes: default_max_index_bytes(),
        }
    }
}

fn default_max_index_bytes() -> u64 {
    1024 * 1024 * 1024
}

/// How upsert mode removes replaced and deleted rows.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeleteMode {
    /// Position deletes, from a primary-key index.
    #[default]
    Position,
    /// Equality deletes on the primary key.
    Equality,
}

/// Upsert mode: a primary key of required columns of the table definition; Debezium change
/// events only in upsert mode (an append of change events would keep every version).
pub fn validate_upsert(spec: &IngestionPipelineSpec, err: &mut impl FnMut(&str, String)) {
    let sink = &spec.sink;
    let upsert = sink.mode == WriteMode::Upsert;
    if upsert && sink.primary_key.is_empty() {
        err(
            "spec.sink.primaryKey",
            "sink.mode upsert needs the columns that identify a row".into(),
        );
    }
    if !upsert && !sink.primary_key.is_empty() {
        err(
            "spec.sink.primaryKey",
            "is only used with sink.mode upsert".into(),
        );
    }
    if !upsert && sink.upsert.is_some() {
        err(
            "spec.sink.upsert",
            "is only used with sink.mode upsert".into(),
        );
    }
    if spec.format.format_type == FormatType::DebeziumJson && !upsert {
        err(
            "spec.format.type",
            "debezium-json change events need sink.mode upsert".into(),
        );
    }
    if spec.format.format_type == FormatType::Avro && upsert {
        err(
            "spec.sink.mode",
            "upsert takes format.type json or debezium-json (Avro change events are not \
             supported yet)"
                .into(),
        );
    }
    if sink
        .upsert
        .as_ref()
        .is_some_and(|u| u.delete_field.is_some())
        && spec.format.format_type != FormatType::Json
    {
        err(
            "spec.sink.upsert.deleteField",
            "marks deletes in plain JSON records (format.type json); Debezium events say \
             op d"
                .into(),
        );
    }
    let mut seen = HashSet::new();
    for (i, key) in sink.primary_key.iter().enumerate() {
        let at = format!("spec.sink.primaryKey[{i}]");
        if !seen.insert(key) {
            err(&at, format!("`{key}` is listed twice"));
            continue;
        }
        let definitions = sink
            .create_table
            .iter()
            .chain(
                sink.route
                    .iter()
                    .flat_map(|r| r.rules.iter().filter_map(|r| r.create_table.as_ref())),
            )
            .filter(|c| !c.schema.is_empty());
        for create in definitions {
            match create.schema.iter().find(|c| &c.name == key) {
                None => err(
                    &at,
                    format!("`{key}` is not a column of the table definition"),
                ),
                Some(c) if !c.required => err(
                    &at,
                    format!("`{key}` must be a required column (key columns cannot be null)"),
                ),
                Some(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{
        format::FormatType,
        pipeline::{IngestionPipeline, WriteMode},
        validate::validate,
    };

    fn example() -> IngestionPipeline {
        IngestionPipeline::from_yaml(include_str!("../../examples/debezium-upsert.yaml")).unwrap()
    }

    fn errors(p: &IngestionPipeline) -> Vec<String> {
        validate(&p.spec)
            .into_iter()
            .map(|e| format!("{}: {}", e.path, e.reason))
            .collect()
    }

    #[test]
    fn the_example_is_valid() {
        let p = example();
        assert_eq!(p.spec.sink.mode, WriteMode::Upsert);
        assert_eq!(errors(&p), Vec::<String>::new());
    }

    #[test]
    fn a_primary_key_is_required_and_must_name_required_columns() {
        let mut p = example();
        p.spec.sink.primary_key.clear();
        assert!(errors(&p)[0].starts_with("spec.sink.primaryKey: sink.mode upsert needs"));
        let mut p = example();
        p.spec.sink.primary_key = vec!["name".into(), "nope".into(), "name".into()];
        let e = errors(&p).join("\n");
        assert!(
            e.contains("primaryKey[0]: `name` must be a required column"),
            "{e}"
        );
        assert!(e.contains("primaryKey[1]: `nope` is not a column"), "{e}");
        assert!(e.contains("primaryKey[2]: `name` is listed twice"), "{e}");
    }

    #[test]
    fn debezium_events_need_upsert_and_markers_need_plain_json() {
        let mut p = example();
        p.spec.sink.mode = WriteMode::Append;
        p.spec.sink.primary_key.clear();
        let e = errors(&p).join("\n");
        assert!(
            e.contains("spec.format.type: debezium-json change events need"),
            "{e}"
        );
        let mut p = example();
        p.spec.sink.upsert = Some(crate::upsert::UpsertSpec {
            delete_field: Some("__deleted".into()),
            ..Default::default()
        });
        let e = errors(&p).join("\n");
        assert!(
            e.contains("spec.sink.upsert.deleteField: marks deletes"),
            "{e}"
        );
        p.spec.format.format_type = FormatType::Json;
        assert_eq!(errors(&p), Vec::<String>::new());
    }
}
