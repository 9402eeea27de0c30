//! `tidewater-operator`: runs the IngestionPipeline controller (`run`, the default) or prints
//! the CRDs it serves (`crd`). Thin edge over the library: arguments, logging, client.

use std::{process::ExitCode, sync::Arc};

use clap::{Parser, Subcommand};
use kube::runtime::events::Reporter;
use tidewater_operator::{
    kube_io::{Address, Context},
    pipeline, policy,
};

#[derive(Parser)]
#[command(
    name = "tidewater-operator",
    version,
    about = "Tidewater Kubernetes operator"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Reconcile IngestionPipelines (default).
    Run {
        /// Runtime image for pipelines that name none.
        #[arg(
            long,
            env = "TIDEWATER_RUNTIME_IMAGE",
            default_value = "ghcr.io/tidewater/runtime:0.1.0"
        )]
        default_image: String,
        /// How coordinators are reached: `dns` (Service names), `endpointslice` (pod
        /// addresses, for clusters without DNS or service routing) or `podip` (the ready
        /// coordinator pod's IP, without EndpointSlices).
        #[arg(long, env = "TIDEWATER_COORDINATOR_ADDRESS", default_value = "dns", value_parser = ["dns", "endpointslice", "podip"])]
        coordinator_address: String,
        /// Address of /metrics and /healthz.
        #[arg(
            long,
            env = "TIDEWATER_OPERATOR_METRICS_ADDR",
            default_value = "0.0.0.0:9090"
        )]
        metrics_addr: std::net::SocketAddr,
    },
    /// Print the CRDs (`tidewater-operator crd | kubectl apply -f -`).
    Crd,
}

fn main() -> ExitCode {
    // Features unified across the dependency graph turn on both of rustls' providers (ring
    // and aws-lc-rs); without an explicit choice the first https call to the API server
    // panics. kube is built with ring, so install that.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let (default_image, address, metrics_addr) = match cli.command {
        Some(Command::Crd) => {
            print!("{}", tidewater_crds::render_crds());
            return ExitCode::SUCCESS;
        }
        Some(Command::Run {
            default_image,
            coordinator_address,
            metrics_addr,
        }) => (default_image, coordinator_address, metrics_addr),
        None => {
            eprintln!("usage: tidewater-operator run | crd (see --help)");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn")),
        )
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let client = match kube::Client::try_default().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("tidewater-operator: no Kubernetes API server: {e}");
                return ExitCode::FAILURE;
            }
        };
        let metrics = Arc::new(tidewater_operator::metrics::Metrics::default());
        match tidewater_operator::metrics::serve(metrics_addr, metrics.clone()).await {
            Ok(bound) => tracing::info!(%bound, "metrics"),
            Err(e) => {
                eprintln!("tidewater-operator: metrics endpoint {metrics_addr}: {e}");
                return ExitCode::FAILURE;
            }
        }
        let ctx = Arc::new(Context {
            metrics,
            client,
            default_image,
            address: match address.as_str() {
                "endpointslice" => Address::EndpointSlice,
                "podip" => Address::PodIp,
                _ => Address::Dns,
            },
            reporter: Reporter {
                controller: "tidewater-operator".into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        });
        tracing::info!("reconciling IngestionPipelines and CompactionPolicies");
        tokio::join!(pipeline::run(ctx.clone()), policy::run(ctx));
        ExitCode::SUCCESS
    })
}
