//! Tidewater operator: reconciles `IngestionPipeline` resources into running, upgradable,
//! rescalable pipelines (`pipeline`), and `CompactionPolicy` resources into maintenance
//! CronJobs and Jobs (`policy`). Each controller observes → decides (pure) → acts; both act
//! through `kube_io` (apply, status, Events, invalid specs, error policy). `job_client` is the
//! coordinator's HTTP API, I/O only. `leader` elects the one replica that reconciles.
#![forbid(unsafe_code)]

pub mod conditions;
pub mod job_client;
pub mod kube_io;
pub mod leader;
pub mod metrics;
pub mod pipeline;
pub mod pod_otel;
pub mod policy;
