//! Tidewater runtime: exactly-once Kafka → Apache Iceberg ingestion.
//!
//! The folders follow the data path, then the control plane around it:
//! `source` (Kafka consumer, partition discovery, offsets, dead letters) → `decode`
//! (records → Arrow, pure) → `route` (which table, pure) → `evolve` (what a record that does
//! not fit asks of the table's schema, pure) → `write`
//! (partitioned, rolling Parquet data files; `upsert` keeps the key index that turns changes
//! into position deletes) → `checkpoint` (durable records, savepoints and
//! the pure recovery/commit decisions) → `commit` (catalogs, table creation, fenced commits).
//! `control` runs it: coordinator, workers, the job API. `maintenance` is the compaction
//! application. `offsets` holds the base types all of them share; `config`, `secret`,
//! `storage`, `metrics` and `failpoint` serve all.
#![forbid(unsafe_code)]

pub mod checkpoint;
pub mod commit;
pub mod config;
pub mod control;
pub mod decode;
pub mod evolve;
pub mod failpoint;
pub mod fuzz;
pub mod maintenance;
pub mod metrics;
pub mod offsets;
pub mod route;
pub mod secret;
pub mod source;
pub mod storage;
pub mod upsert;
pub mod write;
