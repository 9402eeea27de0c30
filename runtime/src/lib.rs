//! Tidewater runtime: exactly-once Kafka → Apache Iceberg ingestion.
//!
//! Layout: `config` (spec → resolved config), `convert` (JSON → Arrow, pure),
//! `checkpoint` (record format and pure commit/recovery decisions), `protocol`
//! (coordinator ↔ worker messages), `coordinator` and `worker` (the two roles),
//! `table` (catalog, table creation, fenced commits), `writer` (data files),
//! `kafka` (rdkafka I/O), `state_store` (durable records), `metrics`, `failpoint`.
#![forbid(unsafe_code)]

pub mod checkpoint;
pub mod config;
pub mod convert;
pub mod coordinator;
pub mod failpoint;
pub mod kafka;
pub mod metrics;
pub mod partition;
pub mod protocol;
pub mod state_store;
pub mod table;
pub mod worker;
pub mod writer;
