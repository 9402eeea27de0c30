//! The observed state of an `IngestionPipeline`, written by the operator: conditions in the
//! metav1.Condition shape, lifecycle, the specs last reconciled and last known good, the scale
//! subresource fields, checkpoint and savepoint history, lag.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Observed state of a pipeline.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngestionPipelineStatus {
    /// The generation last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing`, `Degraded`, `Stopped`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Where the job is in its lifecycle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle_state: Option<LifecycleState>,
    /// The spec the running deployment was made from (JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reconciled_spec: Option<String>,
    /// The newest spec that became Ready (JSON): what a failed upgrade rolls back to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_stable_spec: Option<String>,
    /// Current parallelism (scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<i32>,
    /// Label selector of the worker pods (scale subresource, for HPA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// The newest completed checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checkpoint: Option<CheckpointStatus>,
    /// Savepoints taken, newest last, bounded by `spec.savepointHistory`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub savepoints: Vec<SavepointInfo>,
    /// Every table the pipeline writes (has committed to), sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<String>,
    /// Total Kafka lag in records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    /// The `savepointTriggerNonce` last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_savepoint_trigger_nonce: Option<i64>,
    /// The `restartNonce` last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_restart_nonce: Option<i64>,
    /// The operation in progress, recorded before it is carried out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<OperationStatus>,
    /// The generation whose upgrade timed out and was rolled back: not retried until the
    /// spec changes again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back_generation: Option<i64>,
    /// What the autoscaler measured and wants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaler: Option<AutoscalerStatus>,
    /// How the deployed coordinator starts: `latest`, `fresh`, or a savepoint path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_from: Option<String>,
}

/// The autoscaler's memory between reconciles.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalerStatus {
    /// Rows committed at the last sample.
    pub rows: u64,
    /// Time of the last sample, unix milliseconds.
    pub sampled_at_ms: i64,
    /// Measured capacity of one worker, rows per second (while lagging).
    pub rows_per_second_per_worker: f64,
    /// The parallelism wanted, not yet applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wanted_parallelism: Option<i32>,
    /// Since when it is wanted, unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wanted_since_ms: Option<i64>,
}

/// Lifecycle of a pipeline.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
pub enum LifecycleState {
    /// Accepted, nothing deployed yet.
    Created,
    /// Children created, waiting for the job to become ready.
    Deploying,
    /// Ready and checkpointing.
    Running,
    /// A spec change is being carried out.
    Upgrading,
    /// Stopped with a savepoint, scaled to zero.
    Suspended,
    /// An upgrade did not become ready in time; going back to the last stable spec.
    RollingBack,
    /// The job failed and the operator cannot fix it without a spec change.
    Failed,
    /// Being deleted (final savepoint first, when configured).
    Deleting,
}

/// A completed checkpoint.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointStatus {
    /// Checkpoint id (increases by one per checkpoint).
    pub id: u64,
    /// Completion time, RFC 3339.
    pub time: String,
    /// Committed Iceberg snapshot id per table.
    #[serde(default)]
    pub snapshots: BTreeMap<String, i64>,
}

/// Why a savepoint was taken.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SavepointTrigger {
    /// `savepointTriggerNonce`.
    Manual,
    /// Before a savepoint-mode upgrade.
    Upgrade,
    /// `state: suspended`.
    Suspend,
    /// Before deletion.
    Deletion,
}

/// One savepoint in the history.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SavepointInfo {
    /// Savepoint id.
    pub id: String,
    /// Durable path (what `initialSavepoint` or `--from-savepoint` takes).
    pub path: String,
    /// Completion time, RFC 3339.
    pub time: String,
    /// Why it was taken.
    pub trigger: SavepointTrigger,
}

/// An operation the operator is carrying out.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OperationStatus {
    /// What is being done.
    pub kind: OperationKind,
    /// The savepoint requested for it, once requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub savepoint_id: Option<String>,
    /// When it started, RFC 3339.
    pub started_at: String,
}

/// Operations that span several reconciles.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum OperationKind {
    /// Savepoint with stop, then redeploy the new spec from it.
    SavepointUpgrade,
    /// Redeploy from the newest checkpoint.
    LastStateUpgrade,
    /// Redeploy without state.
    StatelessUpgrade,
    /// Savepoint with stop, then scale to zero.
    Suspend,
    /// A savepoint requested by nonce (the job keeps running).
    ManualSavepoint,
    /// Back to the last stable spec.
    Rollback,
    /// Final savepoint before the pipeline is deleted.
    Delete,
}
