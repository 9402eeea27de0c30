//! The `CompactionPolicy` custom resource: which tables to maintain, when, and how (bin-pack
//! rewrite with a hot-partition guard, snapshot expiry, orphan removal, manifest merging),
//! plus its pure validation.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    FieldError,
    cron::Schedule,
    deploy::{PodOverrides, SecretEnv, SecretMount},
    pipeline::{CatalogSpec, StorageSpec},
    types::{parse_age, parse_table_ident},
};

/// Table maintenance that never fights live ingestion.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[kube(
    group = "tidewater.dev",
    version = "v1alpha1",
    kind = "CompactionPolicy",
    namespaced,
    shortname = "twcp",
    category = "tidewater",
    status = "CompactionPolicyStatus",
    derive = "PartialEq",
    doc = "Table maintenance for Iceberg tables: bin-pack compaction that leaves hot partitions \
           alone, snapshot expiry, orphan-file removal and manifest merging.",
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.schedule"),
    printcolumn(name = "Last run", type_ = "date", json_path = ".status.lastRun.end"),
    printcolumn(
        name = "Result",
        type_ = "string",
        json_path = ".status.lastRun.result"
    ),
    printcolumn(name = "Next run", type_ = "date", json_path = ".status.nextRun"),
    printcolumn(name = "Suspended", type_ = "boolean", json_path = ".spec.suspend")
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "[has(self.tables) && size(self.tables) > 0, has(self.tablePattern), has(self.pipelineRef)].filter(x, x).size() == 1",
        "message": "set exactly one of tables, tablePattern and pipelineRef"
    },
    {
        "rule": "has(self.catalog) || has(self.pipelineRef)",
        "message": "catalog is required unless pipelineRef names the pipeline whose catalog is used"
    }
]))]
pub struct CompactionPolicySpec {
    /// The catalog (same shape as a pipeline's `sink.catalog`); taken from the referenced
    /// pipeline when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog: Option<CatalogSpec>,
    /// Object storage settings (same shape as a pipeline's `storage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageSpec>,
    /// Tables as `namespace.name`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<String>,
    /// Every table of a namespace whose name matches a regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_pattern: Option<TablePattern>,
    /// An IngestionPipeline in this namespace: its table and catalog, and its checkpoint
    /// records are respected by orphan removal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline_ref: Option<String>,
    /// Cron schedule (5 fields, UTC), e.g. `*/30 * * * *`. Without it the policy runs only
    /// when `runNonce` changes (or `tidewater compact --once`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// When a partition or table needs work; a run that finds nothing to do commits nothing.
    #[serde(default)]
    pub thresholds: Thresholds,
    /// Size of the files compaction writes.
    #[serde(default = "default_target")]
    #[schemars(range(min = 1048576))]
    pub target_file_size_bytes: i64,
    /// Partitions that ingestion still writes are never touched.
    #[serde(default)]
    pub hot_partition_guard: HotPartitionGuard,
    /// Expire old snapshots and delete the files only they referenced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire_snapshots: Option<ExpireSnapshotsSpec>,
    /// Delete files in the table location that nothing references.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove_orphan_files: Option<RemoveOrphanFilesSpec>,
    /// Merge small manifests into one when a snapshot has more than `thresholds.maxManifests`.
    #[serde(default = "default_true")]
    pub rewrite_manifests: bool,
    /// Bounds of one run.
    #[serde(default)]
    pub limits: Limits,
    /// No scheduled runs while true.
    #[serde(default)]
    pub suspend: bool,
    /// Change to any new value to run once now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_nonce: Option<i64>,
    /// Runtime image of the maintenance Jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Environment variables from Secret keys (e.g. `AWS_ACCESS_KEY_ID`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_env: Vec<SecretEnv>,
    /// Secrets mounted as files (e.g. the catalog's `auth.secretFile`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_mounts: Vec<SecretMount>,
    /// Overrides for the Job pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<PodOverrides>,
}

fn default_target() -> i64 {
    512 * 1024 * 1024
}

fn default_true() -> bool {
    true
}

/// Tables of one namespace by name pattern.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TablePattern {
    /// Iceberg namespace (e.g. `analytics`).
    #[schemars(length(min = 1))]
    pub namespace: String,
    /// Regular expression that whole table names must match.
    #[schemars(length(min = 1))]
    pub pattern: String,
}

/// When work is due.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Thresholds {
    /// A partition is rewritten when it has at least this many small files.
    #[serde(default = "default_min_small_files")]
    #[schemars(range(min = 2))]
    pub min_small_files: u32,
    /// Files below this size are small; three quarters of `targetFileSizeBytes` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub small_file_size_bytes: Option<i64>,
    /// Also rewrite a partition whose average file size is below this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_average_file_size_bytes: Option<i64>,
    /// Also rewrite a partition whose delete files per data file exceed this ratio (0–1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_delete_file_ratio: Option<f64>,
    /// Merge manifests when the current snapshot has more than this many.
    #[serde(default = "default_max_manifests")]
    #[schemars(range(min = 2))]
    pub max_manifests: u32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            min_small_files: default_min_small_files(),
            small_file_size_bytes: None,
            min_average_file_size_bytes: None,
            max_delete_file_ratio: None,
            max_manifests: default_max_manifests(),
        }
    }
}

fn default_min_small_files() -> u32 {
    2
}

fn default_max_manifests() -> u32 {
    16
}

/// Partitions compaction leaves alone.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HotPartitionGuard {
    /// A partition that received a file within this long is hot (e.g. `10m`).
    #[serde(default = "default_min_age")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d))+$"))]
    pub min_age: String,
    /// Also never touch the newest this many partition values (by value order).
    #[serde(default)]
    pub newest_partitions: u32,
}

impl Default for HotPartitionGuard {
    fn default() -> Self {
        Self {
            min_age: default_min_age(),
            newest_partitions: 0,
        }
    }
}

fn default_min_age() -> String {
    "10m".into()
}

/// Snapshot expiry.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExpireSnapshotsSpec {
    /// Snapshots older than this are expired (e.g. `1h`) …
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d))+$"))]
    pub older_than: String,
    /// … except the newest this many of the main branch (the current one always stays).
    #[serde(default = "default_retain_last")]
    #[schemars(range(min = 1))]
    pub retain_last: u32,
}

fn default_retain_last() -> u32 {
    1
}

/// Orphan-file removal.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RemoveOrphanFilesSpec {
    /// Only files older than this are candidates (default `3d`: far longer than any write in
    /// progress). Files a retained snapshot, the current metadata or a pipeline's durable
    /// checkpoint record references are never removed, whatever their age.
    #[serde(default = "default_orphan_age")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d))+$"))]
    pub older_than: String,
}

fn default_orphan_age() -> String {
    "3d".into()
}

/// Bounds of one run.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Rewrite at most this many input bytes per run (the coldest partitions first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_bytes_per_run: Option<i64>,
    /// Tables maintained at the same time (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_concurrent_tables: Option<u32>,
}

/// What the operator reports.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CompactionPolicyStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (the policy is valid and scheduled) and `Degraded` (last run failed or the spec
    /// has a problem CEL cannot see).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The last finished run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<RunSummary>,
    /// Per-table results of the last run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<TableReport>,
    /// When the schedule fires next (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run: Option<String>,
    /// The `runNonce` already run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_nonce: Option<i64>,
}

/// One run.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunSummary {
    /// Start (RFC 3339).
    pub start: String,
    /// End (RFC 3339).
    pub end: String,
    /// `Succeeded`, `NothingToDo` or `Failed`.
    pub result: String,
    /// What failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What a run did to one table.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TableReport {
    /// `namespace.name`.
    pub table: String,
    /// Data files replaced by compaction.
    pub files_rewritten: u64,
    /// Their bytes.
    pub bytes_rewritten: u64,
    /// Files written in their place.
    pub files_written: u64,
    /// Partitions left alone because they are hot.
    pub hot_partitions_skipped: u64,
    /// Rewrite groups given up because a concurrent commit changed their files.
    pub groups_conflicted: u64,
    /// Snapshots expired.
    pub snapshots_expired: u64,
    /// Files deleted because only expired snapshots referenced them.
    pub expired_files_deleted: u64,
    /// Orphan files removed.
    pub orphans_removed: u64,
    /// Manifests merged away.
    pub manifests_merged: u64,
    /// Time to read the table's file tree and plan (ms).
    #[serde(default)]
    pub plan_millis: u64,
    /// Time to rewrite the groups (ms).
    #[serde(default)]
    pub rewrite_millis: u64,
    /// Time to validate and commit (ms).
    #[serde(default)]
    pub commit_millis: u64,
    /// Snapshot committed by this run, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<i64>,
    /// Why the table failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why the table's data files were left alone (expiry and orphan removal still ran).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite_skipped: Option<String>,
}

/// What CEL cannot check: table names, pattern, schedule, durations, catalog rules.
pub fn validate_policy(spec: &CompactionPolicySpec) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut err = |path: &str, reason: String| {
        errors.push(FieldError {
            path: path.into(),
            reason,
        })
    };
    let selectors = [
        !spec.tables.is_empty(),
        spec.table_pattern.is_some(),
        spec.pipeline_ref.is_some(),
    ];
    if selectors.iter().filter(|s| **s).count() != 1 {
        err(
            "spec",
            "set exactly one of tables, tablePattern and pipelineRef".into(),
        );
    }
    if spec.catalog.is_none() && spec.pipeline_ref.is_none() {
        err(
            "spec.catalog",
            "is required unless pipelineRef names the pipeline whose catalog is used".into(),
        );
    }
    for (i, t) in spec.tables.iter().enumerate() {
        if let Err(e) = parse_table_ident(t) {
            err(&format!("spec.tables[{i}]"), e);
        }
    }
    if let Some(p) = &spec.table_pattern
        && let Err(e) = crate::validate::topic_pattern(&p.pattern)
    {
        err("spec.tablePattern.pattern", e);
    }
    if let Some(s) = &spec.schedule
        && let Err(e) = Schedule::parse(s)
    {
        err("spec.schedule", e);
    }
    if spec.target_file_size_bytes < 1024 * 1024 {
        err(
            "spec.targetFileSizeBytes",
            "must be at least 1048576 (1 MiB)".into(),
        );
    }
    if let Err(e) = parse_age(&spec.hot_partition_guard.min_age) {
        err("spec.hotPartitionGuard.minAge", e);
    }
    if let Some(x) = &spec.expire_snapshots {
        if let Err(e) = parse_age(&x.older_than) {
            err("spec.expireSnapshots.olderThan", e);
        }
        if x.retain_last == 0 {
            err(
                "spec.expireSnapshots.retainLast",
                "must be at least 1".into(),
            );
        }
    }
    if let Some(o) = &spec.remove_orphan_files
        && let Err(e) = parse_age(&o.older_than)
    {
        err("spec.removeOrphanFiles.olderThan", e);
    }
    if let Some(r) = spec.thresholds.max_delete_file_ratio
        && !(0.0..=1.0).contains(&r)
    {
        err(
            "spec.thresholds.maxDeleteFileRatio",
            format!("{r} is not between 0 and 1"),
        );
    }
    if spec.thresholds.min_small_files < 2 {
        err("spec.thresholds.minSmallFiles", "must be at least 2".into());
    }
    if let Some(c) = &spec.catalog {
        for key in c.properties.keys() {
            if crate::validate::is_secret_property(key) {
                err(
                    &format!("spec.catalog.properties.{key}"),
                    "is a secret: it must not be written in the spec (use spec.catalog.auth or \
                     spec.storage)"
                        .into(),
                );
            }
        }
    }
    errors
}

/// Parses a policy file's text (YAML), refusing unknown fields with their path.
pub fn parse_policy(text: &str) -> Result<CompactionPolicy, Vec<FieldError>> {
    let de = serde_yaml::Deserializer::from_str(text);
    let mut unknown = Vec::new();
    let policy: CompactionPolicy = serde_ignored::deserialize(de, |path| {
        // Optional fields show up as `?` segments: drop them from the path users see.
        let path = path.to_string().replace(".?", "");
        // The generated root type handles these two itself.
        if path != "apiVersion" && path != "kind" {
            unknown.push(path);
        }
    })
    .map_err(|e| {
        vec![FieldError {
            path: "(file)".into(),
            reason: e.to_string(),
        }]
    })?;
    if !unknown.is_empty() {
        return Err(unknown
            .into_iter()
            .map(|path| FieldError {
                path,
                reason: "unknown field (a typo? Kubernetes would drop it silently)".into(),
            })
            .collect());
    }
    let errors = validate_policy(&policy.spec);
    if errors.is_empty() {
        Ok(policy)
    } else {
        Err(errors)
    }
}

/// A policy's per-table counters, summed.
pub fn totals(tables: &[TableReport]) -> BTreeMap<&'static str, u64> {
    let mut t = BTreeMap::new();
    for r in tables {
        *t.entry("filesRewritten").or_default() += r.files_rewritten;
        *t.entry("bytesRewritten").or_default() += r.bytes_rewritten;
        *t.entry("filesWritten").or_default() += r.files_written;
        *t.entry("snapshotsExpired").or_default() += r.snapshots_expired;
        *t.entry("orphansRemoved").or_default() += r.orphans_removed;
        *t.entry("manifestsMerged").or_default() += r.manifests_merged;
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../examples/compaction.yaml");

    #[test]
    fn the_example_parses_and_validates() {
        let p = parse_policy(EXAMPLE).unwrap();
        assert_eq!(p.spec.tables, vec!["analytics.clicks"]);
        assert_eq!(p.spec.target_file_size_bytes, 134_217_728);
        assert_eq!(p.spec.hot_partition_guard.min_age, "10m");
        assert_eq!(p.spec.expire_snapshots.as_ref().unwrap().retain_last, 10);
        assert_eq!(
            p.spec.remove_orphan_files.as_ref().unwrap().older_than,
            "24h"
        );
        assert!(p.spec.rewrite_manifests);
    }

    #[test]
    fn bad_policies_name_the_field() {
        let text = EXAMPLE
            .replace("*/30 * * * *", "*/30 * * *")
            .replace("olderThan: 1h", "olderThan: 1 hour")
            .replace("[analytics.clicks]", "[clicks]")
            .replace(
                "targetFileSizeBytes: 134217728",
                "targetFileSizeBytes: 1000",
            );
        let errors = parse_policy(&text).unwrap_err();
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "spec.tables[0]",
                "spec.schedule",
                "spec.targetFileSizeBytes",
                "spec.expireSnapshots.olderThan",
            ],
            "{errors:?}"
        );
        let typo = EXAMPLE.replace("hotPartitionGuard:", "hotPartitionGaurd:");
        let errors = parse_policy(&typo).unwrap_err();
        assert_eq!(errors[0].path, "spec.hotPartitionGaurd");

        let mut spec = parse_policy(EXAMPLE).unwrap().spec;
        spec.pipeline_ref = Some("clicks".into());
        spec.catalog = None;
        let errors = validate_policy(&spec);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].path, "spec");
    }
}
