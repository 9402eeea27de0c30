//! Tidewater operator: reconciles `IngestionPipeline` resources into running, upgradable,
//! rescalable pipelines, and `CompactionPolicy` resources into maintenance CronJobs and Jobs
//! (`maintenance` pure, `policy_controller` acts). Layout: `spec_change` (what a change means, pure), `decide` (the
//! lifecycle decision, pure), `children` (desired objects, pure), `job_client` (the
//! coordinator's HTTP API, I/O only). The controller that observes and acts on a cluster
//! builds on these.
#![forbid(unsafe_code)]

pub mod autoscale;
pub mod children;
pub mod controller;
pub mod decide;
pub mod job_client;
pub mod maintenance;
pub mod metrics;
pub mod policy_controller;
pub mod spec_change;
