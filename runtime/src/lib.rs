//! Tidewater runtime: exactly-once Kafka → Apache Iceberg ingestion.
//!
//! Layout: `config` (spec → resolved config), `convert` (JSON → Arrow, pure),
//! `checkpoint` and `savepoint` (record formats and pure commit/recovery/restore decisions),
//! `assignment` (pure partition plan), `protocol` (coordinator ↔ worker messages), `hub`
//! (the coordinator's links), `coordinator` and `worker` (the two roles), `remote` (a worker
//! process), `api` (HTTP /v1), `table` (catalog, table creation, fenced commits), `writer`
//! (data files), `kafka` (rdkafka I/O), `storage` (S3 settings), `state_store` (durable
//! records), `metrics`, `failpoint`.
#![forbid(unsafe_code)]

pub mod api;
pub mod assignment;
pub mod checkpoint;
pub mod config;
pub mod convert;
pub mod coordinator;
pub mod failpoint;
pub mod hub;
pub mod kafka;
pub mod maintenance;
pub mod metrics;
pub mod partition;
pub mod protocol;
pub mod remote;
pub mod savepoint;
pub mod state_store;
pub mod storage;
pub mod table;
pub mod worker;
pub mod writer;
