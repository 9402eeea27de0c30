//! The job API contract: request and response bodies of a coordinator's `/v1` endpoints
//! (docs/api.md), served by the runtime and read by the operator. Serde only; the wire names
//! are camelCase and the states lowercase words. Every field but a savepoint's id may be
//! missing on the wire: an operator reads coordinators of the previous and the next version
//! during an upgrade.

use std::fmt;

use serde::{Deserialize, Serialize};

pub use crate::status::CheckpointStatus;

/// A worker's identity within one coordinator run (never reused by that run).
pub type WorkerId = u64;

/// Where a coordinator run is in its life (the job API's `state`; the spec's desired state is
/// [`crate::deploy::JobState`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// Recovering; workers cannot register yet.
    #[default]
    Starting,
    /// Reading and checkpointing.
    Running,
    /// Taking a savepoint (still reading).
    Savepointing,
    /// Taking the final checkpoint after a stop request.
    Stopping,
    /// Ended cleanly (stopped, or a savepoint with stop completed).
    Finished,
    /// Ended with an error (`error` says which).
    Failed,
}

impl RunState {
    /// Whether savepoints may be requested and workers may register.
    pub fn is_live(self) -> bool {
        matches!(self, Self::Running | Self::Savepointing)
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Savepointing => "savepointing",
            Self::Stopping => "stopping",
            Self::Finished => "finished",
            Self::Failed => "failed",
        }
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A worker's role in the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    /// Within the target parallelism: owns partitions.
    #[default]
    Active,
    /// Beyond the target: owns nothing until needed.
    Idle,
    /// Announced it leaves; its partitions move at the next checkpoint.
    Leaving,
}

/// Where a savepoint is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SavepointState {
    /// Requested; taken at the next checkpoint.
    #[default]
    Pending,
    /// Durable at `path`.
    Completed,
    /// Not taken (`reason` says why).
    Failed,
}

impl fmt::Display for SavepointState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Pending => "pending",
            Self::Completed => "completed",
            Self::Failed => "failed",
        })
    }
}

/// `GET /v1/status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JobStatus {
    /// Pipeline name.
    #[serde(default)]
    pub pipeline: String,
    /// Pipeline uid (fencing identity).
    #[serde(default)]
    pub pipeline_uid: String,
    /// This coordinator run.
    #[serde(default)]
    pub run_id: String,
    /// Where the run is.
    #[serde(default)]
    pub state: RunState,
    /// Target number of workers.
    #[serde(default)]
    pub target_workers: usize,
    /// Workers known to the coordinator.
    #[serde(default)]
    pub workers: Vec<WorkerStatus>,
    /// The newest completed checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checkpoint: Option<CheckpointStatus>,
    /// Every partition read, with its owner, checkpointed offset and lag.
    #[serde(default)]
    pub partitions: Vec<PartitionStatus>,
    /// Every table the pipeline writes (has committed to, or writes in this checkpoint), sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<String>,
    /// Sum of the partitions' lag (records).
    #[serde(default)]
    pub total_lag: i64,
    /// Rows committed by this run.
    #[serde(default)]
    pub rows_committed: u64,
    /// Checkpoints aborted by this run (a worker lost mid-checkpoint).
    #[serde(default)]
    pub aborted_checkpoints: u64,
    /// Why the run failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One worker in the status.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkerStatus {
    /// Worker id within this run.
    #[serde(default)]
    pub id: WorkerId,
    /// Process name.
    #[serde(default)]
    pub name: String,
    /// Its role in the run.
    #[serde(default)]
    pub state: WorkerState,
    /// Partitions owned, as `topic/partition`.
    #[serde(default)]
    pub partitions: Vec<String>,
    /// Seconds since a remote worker was last heard from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_seconds: Option<f64>,
    /// Where a remote worker serves `/metrics`, `/healthz` and `/readyz`, as it reported it
    /// (workers in the coordinator's process share its endpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_addr: Option<String>,
}

/// One partition in the status.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PartitionStatus {
    /// Topic.
    #[serde(default)]
    pub topic: String,
    /// Partition.
    #[serde(default)]
    pub partition: i32,
    /// Owning worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<WorkerId>,
    /// Next offset as of the newest completed checkpoint.
    #[serde(default)]
    pub offset: i64,
    /// High watermark minus that offset, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
}

/// `POST /v1/savepoints` (202) and `GET /v1/savepoints/{id}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SavepointStatus {
    /// Savepoint id.
    pub id: String,
    /// Where it is.
    #[serde(default)]
    pub state: SavepointState,
    /// Whether the job stops after it.
    #[serde(default)]
    pub stop: bool,
    /// Durable path, once completed (what `--from-savepoint` takes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Checkpoint id it was taken at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_id: Option<u64>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `POST /v1/savepoints` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SavepointRequest {
    /// Stop the job once the savepoint completed.
    #[serde(default)]
    pub stop: bool,
}

/// `POST /v1/parallelism` body, and its 202 answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ParallelismRequest {
    /// Target number of workers.
    pub workers: usize,
}

/// The body of every error answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    /// What went wrong, for a person.
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_travel_as_lowercase_words() {
        let doc = JobStatus {
            state: RunState::Savepointing,
            workers: vec![WorkerStatus {
                id: 2,
                name: "w".into(),
                state: WorkerState::Leaving,
                ..WorkerStatus::default()
            }],
            ..JobStatus::default()
        };
        let json = serde_json::to_value(&doc).unwrap();
        assert_eq!(json["state"], "savepointing");
        assert_eq!(json["workers"][0]["state"], "leaving");
        assert_eq!(serde_json::from_value::<JobStatus>(json).unwrap(), doc);
        let sp: SavepointStatus =
            serde_json::from_str(r#"{"id":"sp-1","state":"completed","path":"/x"}"#).unwrap();
        assert_eq!(sp.state, SavepointState::Completed);
        assert_eq!(RunState::Failed.to_string(), "failed");
        assert!(serde_json::from_str::<RunState>(r#""paused""#).is_err());
    }

    #[test]
    fn only_a_running_job_is_live() {
        let live: Vec<RunState> = [
            RunState::Starting,
            RunState::Running,
            RunState::Savepointing,
            RunState::Stopping,
            RunState::Finished,
            RunState::Failed,
        ]
        .into_iter()
        .filter(|s| s.is_live())
        .collect();
        assert_eq!(live, [RunState::Running, RunState::Savepointing]);
    }
}
