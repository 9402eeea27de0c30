//! The control plane: the coordinator (recovery, membership, barriers, durable checkpoint
//! records, commits), its links to workers (`hub`, `protocol`, `remote`), the partition
//! plan (`assignment`, pure), the job API (`api`, HTTP /v1) and the worker role that runs the
//! data path (source → decode → write) for the partitions it is assigned.

pub mod api;
pub mod assignment;
pub mod coordinator;
pub mod hub;
pub mod protocol;
pub mod remote;
pub mod worker;
