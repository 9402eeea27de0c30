//! Messages between the coordinator and its workers. Serializable: in local mode they travel
//! over in-process channels; between processes they cross HTTP (`/v1/workers`), wrapped in
//! sequence-numbered envelopes so a lost response never loses or repeats a command.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    checkpoint::TableCommitPlan,
    offsets::{Offsets, TopicPartition},
};

pub use tidewater_crds::job_api::WorkerId;

/// Coordinator → worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToWorker {
    /// Start reading these partitions at these offsets (in addition to what is already owned).
    Assign {
        /// Partitions and their next offsets.
        partitions: Offsets,
    },
    /// Close all open files now and report them with the offsets reached; then stop reading
    /// the `release`d partitions (they move to another worker at this boundary).
    Barrier {
        /// Checkpoint id.
        checkpoint_id: u64,
        /// Partitions to give up right after this barrier.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        release: Vec<TopicPartition>,
        /// The checkpoint's trace (W3C `traceparent`), so the worker's flush is its child.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        traceparent: Option<String>,
    },
    /// Discard everything since the last acknowledged barrier (open files are abandoned and
    /// never reported) and own exactly these partitions from these offsets. Sent after an
    /// aborted checkpoint.
    Reset {
        /// The complete new assignment of this worker.
        partitions: Offsets,
    },
    /// Upsert tables: a compaction moved rows; read the key index of these tables again
    /// before the next change (deletes decided before are translated at commit).
    ReloadIndex {
        /// Tables (`namespace.name`).
        tables: Vec<String>,
    },
    /// Stop reading and exit; nothing after the last barrier is reported.
    Stop,
}

/// Worker → coordinator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToCoordinator {
    /// The worker's part of a checkpoint.
    Ack(WorkerAck),
    /// The worker cannot go on; the pipeline must stop without committing past this point.
    Failed {
        /// Worker id.
        worker: WorkerId,
        /// What happened, naming the record when a record is the cause.
        reason: String,
    },
}

/// What a worker wrote between two barriers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerAck {
    /// Worker id.
    pub worker: WorkerId,
    /// Checkpoint id of the barrier answered.
    pub checkpoint_id: u64,
    /// Per table (`namespace.name`): the data files written and their partition spec.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tables: BTreeMap<String, TableCommitPlan>,
    /// Next offset of every owned partition at the barrier.
    pub offsets: Offsets,
    /// Rows written into the files.
    pub rows: u64,
    /// Bytes of the files.
    pub bytes: u64,
    /// Records sent to the dead-letter topic.
    pub dead_lettered: u64,
    /// Smallest Kafka timestamp (ms) among rows written, if any.
    pub min_timestamp_ms: Option<i64>,
    /// Largest Kafka timestamp (ms) among rows written, if any.
    pub max_timestamp_ms: Option<i64>,
}

/// `POST /v1/workers`: a worker process asks to join.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// Stable name of the process (pod name or host name), for status and logs.
    pub name: String,
    /// The address its `/metrics` endpoint is bound to, for `/v1/status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_addr: Option<String>,
}

/// The answer to a registration: everything a worker needs besides the catalog credentials
/// it reads from its own environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterResponse {
    /// The id this worker uses in every later request.
    pub worker_id: WorkerId,
    /// The coordinator run (part of data file names).
    pub run_id: String,
    /// The pipeline resource as YAML.
    pub pipeline_yaml: String,
    /// Directory relative paths of the spec are resolved against.
    pub base_dir: String,
    /// A worker that cannot reach the coordinator for this long stops writing.
    pub heartbeat_timeout_ms: u64,
}

/// `POST /v1/workers/{id}/poll`: heartbeat, events up, commands down.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PollRequest {
    /// Highest command sequence number received so far; the coordinator drops those.
    pub received_commands: u64,
    /// Events not yet confirmed, oldest first.
    pub events: Vec<Sequenced<ToCoordinator>>,
}

/// Commands not yet confirmed by the worker, and how far the events were taken.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PollResponse {
    /// Highest event sequence number the coordinator has taken; the worker drops those.
    pub received_events: u64,
    /// Commands, oldest first.
    pub commands: Vec<Sequenced<ToWorker>>,
}

/// A message with its per-direction sequence number (starting at 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sequenced<T> {
    /// Sequence number.
    pub seq: u64,
    /// The message.
    pub message: T,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offsets::set_offset;

    #[test]
    fn messages_round_trip_as_json() {
        let mut offsets = Offsets::new();
        set_offset(&mut offsets, "clicks", 3, 42);
        let ack = ToCoordinator::Ack(WorkerAck {
            worker: 1,
            checkpoint_id: 7,
            tables: BTreeMap::from([(
                "analytics.clicks".into(),
                TableCommitPlan {
                    partition_spec_id: 0,
                    data_files: vec!["{}".into()],
                    rows: 10,
                    bytes: 100,
                    ..Default::default()
                },
            )]),
            offsets,
            rows: 10,
            ..WorkerAck::default()
        });
        let json = serde_json::to_string(&ack).unwrap();
        assert!(json.starts_with(r#"{"ack":{"#));
        assert!(json.contains(r#""clicks":{"3":42}"#));
        assert!(json.contains(r#""analytics.clicks":{"partition_spec_id":0"#));
        assert_eq!(serde_json::from_str::<ToCoordinator>(&json).unwrap(), ack);
        let barrier = ToWorker::Barrier {
            checkpoint_id: 9,
            release: vec![],
            traceparent: None,
        };
        let json = serde_json::to_string(&barrier).unwrap();
        assert_eq!(json, r#"{"barrier":{"checkpoint_id":9}}"#);
        let release = ToWorker::Barrier {
            checkpoint_id: 9,
            release: vec![TopicPartition {
                topic: "clicks".into(),
                partition: 1,
            }],
            traceparent: None,
        };
        let json = serde_json::to_string(&release).unwrap();
        assert_eq!(
            serde_json::from_str::<ToWorker>(&json).unwrap(),
            release,
            "{json}"
        );
    }
}
