//! `tidewater`: the runtime binary. Thin edge over the library: arguments, logging, signals.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
    time::Duration,
};

use clap::{Parser, Subcommand};
use tidewater_crds::job_api::RunState;
use tidewater_runtime::{
    config::PipelineConfig,
    control::{
        api::{self, Shared},
        coordinator::{Coordinator, Options, Outcome, StartMode},
        hub::Hub,
        remote,
    },
    maintenance,
    metrics::{self, Metrics},
};
use tidewater_telemetry::Telemetry;

/// A worker's `/metrics` address when none is given: this one, or the next free port after it.
const WORKER_METRICS_DEFAULT: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9465);
/// How many ports from `WORKER_METRICS_DEFAULT` up a worker tries.
const WORKER_METRICS_PORTS: u16 = 64;

#[derive(Parser)]
#[command(
    name = "tidewater",
    version,
    about = "Exactly-once Kafka to Apache Iceberg ingestion"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

/// Where a coordinator starts (default: the newest complete checkpoint).
#[derive(clap::Args, Clone)]
#[group(multiple = false)]
struct StartArgs {
    /// Restore exactly this savepoint (path or s3:// URI printed when it completed).
    #[arg(long, value_name = "PATH")]
    from_savepoint: Option<String>,
    /// Continue from the newest complete checkpoint (the default; Flink's last-state).
    #[arg(long)]
    from_latest: bool,
    /// Ignore checkpoints: partitions start from spec.source.kafka.startingOffsets.
    #[arg(long)]
    fresh: bool,
}

impl StartArgs {
    fn mode(&self) -> StartMode {
        match (&self.from_savepoint, self.fresh) {
            (Some(p), _) => StartMode::Savepoint(p.clone()),
            (None, true) => StartMode::Fresh,
            (None, false) => StartMode::Latest,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline in this process (coordinator and workers) until SIGTERM/SIGINT or a
    /// savepoint with stop.
    Run {
        /// IngestionPipeline YAML file.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Address of the HTTP API (/v1, /metrics, /healthz, /readyz).
        #[arg(
            long,
            alias = "listen",
            default_value = "127.0.0.1:9464",
            env = "TIDEWATER_METRICS_ADDR"
        )]
        metrics_addr: SocketAddr,
        #[command(flatten)]
        start: StartArgs,
        /// Accept a savepoint of another pipeline uid or table, or with topics no longer read.
        #[arg(long)]
        allow_non_restored_state: bool,
    },
    /// Run the coordinator of a pipeline; workers join with `tidewater worker`.
    Coordinator {
        /// IngestionPipeline YAML file.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Address of the HTTP API (workers, /v1, /metrics, /healthz, /readyz).
        #[arg(long, default_value = "127.0.0.1:9464", env = "TIDEWATER_LISTEN")]
        listen: SocketAddr,
        #[command(flatten)]
        start: StartArgs,
        /// Accept a savepoint of another pipeline uid or table, or with topics no longer read.
        #[arg(long)]
        allow_non_restored_state: bool,
        /// A worker not heard from for this long is lost (its partitions restart elsewhere).
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        heartbeat_timeout: Duration,
        /// After a savepoint with stop, keep answering the API this long before exiting.
        #[arg(long, default_value = "3s", value_parser = parse_duration)]
        linger: Duration,
        /// After a savepoint with stop, stay up (finished, answering the API) until SIGTERM
        /// instead of exiting: under a Deployment an exit would restart the old job.
        #[arg(long)]
        wait_after_finish: bool,
    },
    /// Run a worker process that takes its pipeline and partitions from a coordinator.
    Worker {
        /// Coordinator URL, e.g. http://clicks-coordinator:9464.
        #[arg(long, env = "TIDEWATER_COORDINATOR")]
        coordinator: String,
        /// Name shown in the coordinator's status (default: host name).
        #[arg(long, env = "TIDEWATER_WORKER_NAME")]
        name: Option<String>,
        /// Address for this worker's /metrics, /healthz and /readyz. Without it, the first
        /// free port from 127.0.0.1:9465 upwards (so several workers can share a host); the
        /// address taken is logged and shown in the coordinator's /v1/status.
        #[arg(long, env = "TIDEWATER_METRICS_ADDR")]
        metrics_addr: Option<SocketAddr>,
    },
    /// Maintain the tables of a CompactionPolicy: bin-pack compaction of cold partitions,
    /// snapshot expiry, orphan removal, manifest merging. Follows `spec.schedule` unless
    /// `--once`.
    Compact {
        /// CompactionPolicy YAML file.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Run one pass now and exit (0 when it succeeded, also when there was nothing to do).
        #[arg(long)]
        once: bool,
        /// Also write the run's report (JSON) to this file, e.g. /dev/termination-log.
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Check a pipeline file and report every invalid field.
    Validate {
        /// IngestionPipeline YAML file.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    tidewater_crds::types::parse_duration(s)
}

/// Logs on stderr, plus OTLP traces and metrics when `OTEL_*` names an endpoint.
fn init_telemetry(format: &str) -> Result<Telemetry, tidewater_telemetry::InitError> {
    tidewater_telemetry::init(tidewater_telemetry::Options {
        service: "tidewater",
        json_logs: format == "json",
        default_filter: "info,sqlx=warn,opendal=warn,iceberg=warn",
    })
}

/// Hands the registry to the OTLP metric export (a no-op when it is off).
fn export_metrics(telemetry: &Telemetry, metrics: &Arc<Metrics>) {
    let m = metrics.clone();
    telemetry.export_metrics(Arc::new(move || m.render()));
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn main() -> ExitCode {
    // The dependency graph enables both of rustls' providers (ring and aws-lc-rs), so rustls
    // cannot pick one by itself and would panic at the first handshake: choose ring here.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let telemetry = match init_telemetry(&cli.log_format) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("tidewater: {e}");
            return ExitCode::from(2);
        }
    };
    let code = run_command(cli.command, &telemetry);
    telemetry.shutdown();
    code
}

fn run_command(command: Command, telemetry: &Telemetry) -> ExitCode {
    match command {
        Command::Validate { file } => match PipelineConfig::load(&file) {
            Ok(c) => {
                println!(
                    "{}: valid (pipeline {}, table {})",
                    file.display(),
                    c.name,
                    c.sink_display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Run {
            file,
            metrics_addr,
            start,
            allow_non_restored_state,
        } => coordinator_main(
            &file,
            metrics_addr,
            Options {
                start: start.mode(),
                allow_non_restored_state,
                local_workers: true,
                heartbeat_timeout: Duration::from_secs(10),
                pipeline_yaml: String::new(),
                base_dir: PathBuf::new(),
            },
            Duration::ZERO,
            telemetry,
        ),
        Command::Coordinator {
            file,
            listen,
            start,
            allow_non_restored_state,
            heartbeat_timeout,
            linger,
            wait_after_finish,
        } => coordinator_main(
            &file,
            listen,
            Options {
                start: start.mode(),
                allow_non_restored_state,
                local_workers: false,
                heartbeat_timeout,
                pipeline_yaml: String::new(),
                base_dir: PathBuf::new(),
            },
            if wait_after_finish {
                Duration::MAX
            } else {
                linger
            },
            telemetry,
        ),
        Command::Compact { file, once, report } => compact_main(&file, once, report.as_deref()),
        Command::Worker {
            coordinator,
            name,
            metrics_addr,
        } => {
            let name = name
                .or_else(|| std::env::var("HOSTNAME").ok())
                .unwrap_or_else(|| format!("worker-{}", std::process::id()));
            let result = block_on(async move {
                let metrics = Arc::new(Metrics::new());
                export_metrics(telemetry, &metrics);
                let bound = match metrics_addr {
                    Some(addr) => metrics::serve(addr, metrics.clone())
                        .await
                        .map_err(|e| format!("metrics endpoint {addr}: {e}"))?,
                    None => metrics::serve_next_free(
                        WORKER_METRICS_DEFAULT,
                        WORKER_METRICS_PORTS,
                        metrics.clone(),
                    )
                    .await
                    .map_err(|e| {
                        format!(
                            "metrics endpoint: no free port in {WORKER_METRICS_DEFAULT} and the \
                             {} after it ({e}); give --metrics-addr",
                            WORKER_METRICS_PORTS - 1
                        )
                    })?,
                };
                tracing::info!(%coordinator, %name, metrics = %bound, "worker starting");
                remote::run(&coordinator, &name, bound, metrics, shutdown_signal())
                    .await
                    .map_err(|e| e.to_string())
            });
            finish(result.map(|()| "worker stopped".to_string()))
        }
    }
}

/// `tidewater compact`: one pass (`--once`) or a pass at every time the schedule fires.
fn compact_main(file: &Path, once: bool, report_file: Option<&Path>) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("tidewater: cannot read {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    let policy = match tidewater_crds::compaction::parse_policy(&text) {
        Ok(p) => p,
        Err(errors) => {
            eprintln!("{} has {} invalid field(s):", file.display(), errors.len());
            for e in errors {
                eprintln!("  - {e}");
            }
            return ExitCode::from(2);
        }
    };
    // Relative paths resolve against the working directory, as for pipeline files.
    let base = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    if policy.spec.suspend && !once {
        println!(
            "{}: suspended (spec.suspend): no scheduled runs",
            file.display()
        );
        return ExitCode::SUCCESS;
    }
    let schedule = match (&policy.spec.schedule, once) {
        (_, true) => None,
        (Some(s), false) => {
            Some(tidewater_crds::cron::Schedule::parse(s).expect("validated by parse_policy"))
        }
        (None, false) => {
            eprintln!(
                "tidewater: {} has no spec.schedule: use --once",
                file.display()
            );
            return ExitCode::from(2);
        }
    };
    let result = block_on(async move {
        let m = maintenance::Maintenance::open(policy, &base)
            .await
            .map_err(|e| e.to_string())?;
        loop {
            if let Some(s) = &schedule {
                let next = s
                    .next_after(chrono::Utc::now())
                    .ok_or("the schedule never fires")?;
                tracing::info!(next = %next.to_rfc3339(), "waiting for the schedule");
                let wait = (next - chrono::Utc::now()).to_std().unwrap_or_default();
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown_signal() => return Ok("stopped".to_string()),
                }
            }
            let start = chrono::Utc::now();
            let reports = m.run_once().await.map_err(|e| e.to_string())?;
            let failed: Vec<String> = reports
                .iter()
                .filter_map(|r| r.error.as_ref().map(|e| format!("{}: {e}", r.table)))
                .collect();
            let did_work = reports.iter().any(|r| {
                r.files_rewritten + r.snapshots_expired + r.orphans_removed + r.manifests_merged > 0
            });
            let summary = tidewater_crds::compaction::RunSummary {
                start: start.to_rfc3339(),
                end: chrono::Utc::now().to_rfc3339(),
                result: if !failed.is_empty() {
                    "Failed"
                } else if did_work {
                    "Succeeded"
                } else {
                    "NothingToDo"
                }
                .into(),
                message: (!failed.is_empty()).then(|| failed.join("; ")),
            };
            let json = serde_json::json!({"run": summary, "tables": reports});
            println!("{json}");
            if let Some(path) = report_file {
                std::fs::write(path, json.to_string())
                    .map_err(|e| format!("report {}: {e}", path.display()))?;
            }
            if schedule.is_none() {
                return if failed.is_empty() {
                    Ok(format!("compaction: {}", summary.result))
                } else {
                    Err(format!("compaction failed: {}", failed.join("; ")))
                };
            }
        }
    });
    finish(result)
}

/// Runs `work` on a fresh runtime, then lets blocking tasks still running (a Kafka or S3 call
/// that has not returned) at most 5 s: a process that is done must exit, or its pod never
/// terminates (dropping a runtime waits for them without bound).
fn block_on<F: std::future::Future>(work: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let out = rt.block_on(work);
    rt.shutdown_timeout(Duration::from_secs(5));
    out
}

fn finish(result: Result<String, String>) -> ExitCode {
    match result {
        Ok(message) => {
            tracing::info!("{message}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "failed");
            eprintln!("tidewater: {e}");
            ExitCode::FAILURE
        }
    }
}

fn coordinator_main(
    file: &Path,
    listen: SocketAddr,
    mut options: Options,
    linger: Duration,
    telemetry: &Telemetry,
) -> ExitCode {
    let config = match PipelineConfig::load(file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    // Before anything reads Avro (records, or the catalog's manifests).
    tidewater_runtime::decode::limit_avro_allocations(config.max_record_bytes);
    options.pipeline_yaml = std::fs::read_to_string(file).unwrap_or_default();
    options.base_dir = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let result = block_on(async move {
        let metrics = Arc::new(Metrics::new());
        export_metrics(telemetry, &metrics);
        let (hub, events) = Hub::new();
        let shared = Arc::new(Shared::new(metrics, hub));
        let bound = api::serve(listen, api::router(shared.clone()))
            .await
            .map_err(|e| format!("HTTP API {listen}: {e}"))?;
        tracing::info!(pipeline = %config.name, table = %config.sink_display(), api = %bound, "starting");
        let coordinator = match Coordinator::start(config, options, shared.clone(), events).await {
            Ok(c) => c,
            Err(e) => {
                shared.set_state(RunState::Failed, Some(e.to_string()));
                return Err(e.to_string());
            }
        };
        match coordinator
            .run(shutdown_signal())
            .await
            .map_err(|e| e.to_string())?
        {
            Outcome::Stopped => Ok("stopped cleanly".to_string()),
            Outcome::Finished { savepoint } => {
                println!("savepoint: {savepoint}");
                let linger = async {
                    if linger == Duration::MAX {
                        std::future::pending::<()>().await;
                    } else {
                        tokio::time::sleep(linger).await;
                    }
                };
                tokio::select! {
                    () = linger => {}
                    () = shutdown_signal() => {}
                }
                Ok(format!("stopped with savepoint {savepoint}"))
            }
        }
    });
    finish(result)
}
