//! Table maintenance for a `CompactionPolicy`, one table at a time: `plan` decides which files
//! to rewrite (pure), `rewrite` writes them again, `replace` commits the result as a `replace`
//! snapshot (one manifest writer, optional manifest merging), `expire` removes old snapshots
//! with the files only they used, `orphans` removes unreferenced files while respecting
//! pipelines' checkpoint records. `files` reads the file tree; `commit` swaps new metadata in
//! through the catalog's compare-and-swap. This module opens the catalog and runs the steps.

pub mod commit;
mod expire;
pub mod files;
mod orphans;
pub mod plan;
mod replace;
mod rewrite;
mod upsert;

use std::{
    collections::BTreeMap,
    path::Path,
    sync::Arc,
    time::{Duration, SystemTime},
};

use futures::StreamExt;
use iceberg::{Catalog, NamespaceIdent, TableIdent};
use tidewater_crds::{
    CompactionPolicy,
    compaction::TableReport,
    types::{parse_age, parse_table_ident},
};

use crate::{
    commit::open_catalog,
    config::{CatalogConnection, resolve_s3},
    storage,
};
use commit::Cas;
use plan::PlanSettings;

/// Why maintenance failed.
#[derive(Debug, thiserror::Error)]
pub enum MaintenanceError {
    /// The policy cannot be run as written (names the field).
    #[error("{0}")]
    Policy(String),
    /// The catalog refused or could not be reached.
    #[error("catalog: {0}")]
    Catalog(String),
    /// A commit's outcome is unknown (REST 5xx); the next run sees the truth.
    #[error("commit state unknown: {0}")]
    CommitUnknown(String),
    /// Iceberg I/O or metadata error.
    #[error(transparent)]
    Iceberg(#[from] iceberg::Error),
    /// Local file I/O.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Conflicting commits tolerated before a table is given up for this run.
const COMMIT_ATTEMPTS: usize = 8;

/// Everything one run needs, resolved from the policy.
pub struct Maintenance {
    catalog: Arc<dyn Catalog>,
    cas: Cas,
    policy: CompactionPolicy,
    s3_props: BTreeMap<String, String>,
    settings: PlanSettings,
}

/// Milliseconds since the epoch.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Maintenance {
    /// Opens the policy's catalog; relative paths resolve against `base`.
    pub async fn open(policy: CompactionPolicy, base: &Path) -> Result<Self, MaintenanceError> {
        let spec = &policy.spec;
        let catalog_spec = spec.catalog.as_ref().ok_or_else(|| {
            MaintenanceError::Policy(
                "spec.catalog: required when running without the operator (pipelineRef is \
                 resolved by the operator)"
                    .into(),
            )
        })?;
        let conn = CatalogConnection::resolve(catalog_spec, base);
        let s3_props = match spec.storage.as_ref().and_then(|s| s.s3.as_ref()) {
            Some(s3) => storage::s3_properties(&resolve_s3(s3, base))
                .map_err(|e| MaintenanceError::Policy(e.to_string()))?,
            None => BTreeMap::new(),
        };
        let catalog = open_catalog(&conn, &s3_props)
            .await
            .map_err(|e| MaintenanceError::Catalog(e.to_string()))?;
        let cas = Cas::connect(&conn).await?;
        let target = u64::try_from(spec.target_file_size_bytes).unwrap_or(u64::MAX);
        let t = &spec.thresholds;
        let settings = PlanSettings {
            target_bytes: target,
            small_bytes: t
                .small_file_size_bytes
                .and_then(|s| u64::try_from(s).ok())
                .unwrap_or(target / 4 * 3),
            min_small_files: t.min_small_files as usize,
            min_average_bytes: t
                .min_average_file_size_bytes
                .and_then(|s| u64::try_from(s).ok()),
            max_delete_ratio: t.max_delete_file_ratio,
            hot_min_age_ms: millis(parse_age(&spec.hot_partition_guard.min_age).map_err(|e| {
                MaintenanceError::Policy(format!("spec.hotPartitionGuard.minAge: {e}"))
            })?),
            hot_newest: spec.hot_partition_guard.newest_partitions as usize,
            max_bytes: spec
                .limits
                .max_bytes_per_run
                .and_then(|b| u64::try_from(b).ok()),
        };
        Ok(Self {
            catalog,
            cas,
            policy,
            s3_props,
            settings,
        })
    }

    /// The tables the policy names (explicit list or pattern).
    pub async fn tables(&self) -> Result<Vec<TableIdent>, MaintenanceError> {
        let spec = &self.policy.spec;
        if let Some(p) = &spec.table_pattern {
            let re = tidewater_crds::validate::topic_pattern(&p.pattern)
                .map_err(|e| MaintenanceError::Policy(format!("spec.tablePattern.pattern: {e}")))?;
            let ns = NamespaceIdent::from_strs(p.namespace.split('.'))?;
            let mut out: Vec<TableIdent> = self
                .catalog
                .list_tables(&ns)
                .await?
                .into_iter()
                .filter(|t| re.is_match(t.name()))
                .collect();
            out.sort_by(|a, b| a.name().cmp(b.name()));
            return Ok(out);
        }
        spec.tables
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let (ns, name) = parse_table_ident(t)
                    .map_err(|e| MaintenanceError::Policy(format!("spec.tables[{i}]: {e}")))?;
                Ok(TableIdent::new(NamespaceIdent::from_vec(ns)?, name))
            })
            .collect()
    }

    /// One pass over every table: compact, expire, remove orphans. A failing table is
    /// reported and the others still run. Traced as `compaction_run`, a `compaction_table`
    /// span per table.
    #[tracing::instrument(name = "compaction_run", skip_all, fields(policy = self.policy.metadata.name.as_deref().unwrap_or_default()))]
    pub async fn run_once(&self) -> Result<Vec<TableReport>, MaintenanceError> {
        let concurrent = self
            .policy
            .spec
            .limits
            .max_concurrent_tables
            .map_or(1, |n| n.max(1) as usize);
        // Tables in policy order; up to `limits.maxConcurrentTables` at a time.
        let reports = futures::stream::iter(self.tables().await?)
            .map(|ident| async move {
                let mut report = TableReport {
                    table: format!("{}.{}", ident.namespace().join("."), ident.name()),
                    ..TableReport::default()
                };
                if let Err(e) = self.maintain(&ident, &mut report).await {
                    report.error = Some(e.to_string());
                }
                report
            })
            .buffered(concurrent)
            .collect()
            .await;
        Ok(reports)
    }

    #[tracing::instrument(name = "compaction_table", skip_all, fields(table = %ident))]
    async fn maintain(
        &self,
        ident: &TableIdent,
        report: &mut TableReport,
    ) -> Result<(), MaintenanceError> {
        self.compact(ident, report).await?;
        if let Some(x) = &self.policy.spec.expire_snapshots {
            let older = parse_age(&x.older_than).map_err(|e| {
                MaintenanceError::Policy(format!("spec.expireSnapshots.olderThan: {e}"))
            })?;
            self.expire(ident, millis(older), x.retain_last as usize, report)
                .await?;
        }
        if let Some(o) = &self.policy.spec.remove_orphan_files {
            let older = parse_age(&o.older_than).map_err(|e| {
                MaintenanceError::Policy(format!("spec.removeOrphanFiles.olderThan: {e}"))
            })?;
            self.remove_orphans(ident, millis(older), report).await?;
        }
        Ok(())
    }
}
