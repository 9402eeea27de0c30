//! `tidewater`: the runtime binary. Thin edge over the library: arguments, logging, signals.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc};

use clap::{Parser, Subcommand};
use tidewater_runtime::{
    config::PipelineConfig,
    coordinator::Coordinator,
    metrics::{self, Metrics},
};

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

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline in this process (coordinator and workers) until SIGTERM/SIGINT.
    Run {
        /// IngestionPipeline YAML file.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Address for /metrics and /healthz.
        #[arg(long, default_value = "127.0.0.1:9464", env = "TIDEWATER_METRICS_ADDR")]
        metrics_addr: SocketAddr,
    },
    /// Check a pipeline file and report every invalid field.
    Validate {
        /// IngestionPipeline YAML file.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,sqlx=warn,opendal=warn,iceberg=warn")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
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
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    match cli.command {
        Command::Validate { file } => match PipelineConfig::load(&file) {
            Ok(c) => {
                println!(
                    "{}: valid (pipeline {}, table {})",
                    file.display(),
                    c.name,
                    c.table_display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Run { file, metrics_addr } => {
            let config = match PipelineConfig::load(&file) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("tokio runtime");
            let result = runtime.block_on(async move {
                let metrics = Arc::new(Metrics::new());
                let bound = metrics::serve(metrics_addr, metrics.clone())
                    .await
                    .map_err(|e| format!("metrics endpoint {metrics_addr}: {e}"))?;
                tracing::info!(pipeline = %config.name, table = %config.table_display(), metrics = %bound, "starting");
                let coordinator = Coordinator::start(config, metrics).await.map_err(|e| e.to_string())?;
                coordinator.run(shutdown_signal()).await.map_err(|e| e.to_string())
            });
            match result {
                Ok(()) => {
                    tracing::info!("stopped cleanly");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    tracing::error!(error = %e, "pipeline failed");
                    eprintln!("tidewater: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
