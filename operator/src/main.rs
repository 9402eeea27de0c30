//! `tidewater-operator`: runs the IngestionPipeline controller (`run`, the default) or prints
//! the CRDs it serves (`crd`). Thin edge over the library: arguments, logging, client.

use std::{process::ExitCode, sync::Arc};

use clap::{Parser, Subcommand};
use kube::runtime::events::Reporter;
use tidewater_operator::{
    kube_io::{Address, Context},
    leader::{Elector, Timing},
    pipeline,
    pod_otel::PodOtlp,
    policy,
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
    /// Log format.
    #[arg(long, global = true, env = "TIDEWATER_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

#[derive(Subcommand)]
enum Command {
    /// Reconcile IngestionPipelines (default).
    Run(RunArgs),
    /// Print the CRDs (`tidewater-operator crd | kubectl apply -f -`).
    Crd,
}

/// `tidewater-operator run`.
#[derive(clap::Args)]
struct RunArgs {
    /// Runtime image for pipelines that name none.
    #[arg(
        long,
        env = "TIDEWATER_RUNTIME_IMAGE",
        default_value = concat!("ghcr.io/tidewater/runtime:", env!("CARGO_PKG_VERSION"))
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
    /// Elect a leader on a Lease so several replicas can run; only the leader reconciles.
    #[arg(long, env = "TIDEWATER_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Name of the Lease (in the operator's namespace: POD_NAMESPACE, else the client's).
    #[arg(
        long,
        env = "TIDEWATER_LEADER_ELECTION_ID",
        default_value = "tidewater-operator"
    )]
    leader_election_id: String,
    /// OTLP endpoint the rendered pods export to (their OTEL_EXPORTER_OTLP_ENDPOINT; a pod
    /// template's own env wins). Unset: the pods export nothing unless their env says so.
    #[arg(long, env = "TIDEWATER_PODS_OTLP_ENDPOINT")]
    pods_otlp_endpoint: Option<String>,
    /// OTLP protocol of the rendered pods: grpc or http/protobuf.
    #[arg(long, env = "TIDEWATER_PODS_OTLP_PROTOCOL", value_parser = ["grpc", "http/protobuf"])]
    pods_otlp_protocol: Option<String>,
}

fn main() -> ExitCode {
    // Features unified across the dependency graph turn on both of rustls' providers (ring
    // and aws-lc-rs); without an explicit choice the first https call to the API server
    // panics. kube is built with ring, so install that.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Crd) => {
            print!("{}", tidewater_crds::render_crds());
            return ExitCode::SUCCESS;
        }
        Some(Command::Run(args)) => args,
        None => {
            eprintln!("usage: tidewater-operator run | crd (see --help)");
            return ExitCode::from(2);
        }
    };
    // Logs on stderr, plus OTLP traces (a span per reconcile) and metrics when OTEL_* names
    // an endpoint.
    let telemetry = match tidewater_telemetry::init(tidewater_telemetry::Options {
        service: "tidewater-operator",
        json_logs: cli.log_format == "json",
        default_filter: "info,kube=warn",
    }) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("tidewater-operator: {e}");
            return ExitCode::from(2);
        }
    };
    let code = serve(&telemetry, args);
    telemetry.shutdown();
    code
}

/// Runs the controllers until SIGTERM/SIGINT (or, leading, until the Lease is lost).
fn serve(telemetry: &tidewater_telemetry::Telemetry, args: RunArgs) -> ExitCode {
    let RunArgs {
        default_image,
        coordinator_address: address,
        metrics_addr,
        leader_elect,
        leader_election_id: lease_name,
        pods_otlp_endpoint,
        pods_otlp_protocol,
    } = args;
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
        let m = metrics.clone();
        telemetry.export_metrics(Arc::new(move || m.render()));
        match tidewater_operator::metrics::serve(metrics_addr, metrics.clone()).await {
            Ok(bound) => tracing::info!(%bound, "metrics"),
            Err(e) => {
                eprintln!("tidewater-operator: metrics endpoint {metrics_addr}: {e}");
                return ExitCode::FAILURE;
            }
        }
        let namespace = std::env::var("POD_NAMESPACE")
            .unwrap_or_else(|_| client.default_namespace().to_string());
        let identity = std::env::var("POD_NAME")
            .unwrap_or_else(|_| format!("tidewater-operator-{}", std::process::id()));
        let mut elector = Elector::new(
            kube::Api::namespaced(client.clone(), &namespace),
            &lease_name,
            &identity,
            Timing::default(),
        );
        let ctx = Arc::new(Context {
            metrics,
            client,
            default_image,
            pods_otlp: PodOtlp {
                endpoint: pods_otlp_endpoint,
                protocol: pods_otlp_protocol,
            },
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
        if !leader_elect {
            tracing::info!("reconciling IngestionPipelines and CompactionPolicies (no leader election)");
            tokio::join!(pipeline::run(ctx.clone()), policy::run(ctx));
            return ExitCode::SUCCESS;
        }
        loop {
            tokio::select! {
                () = elector.acquire() => {}
                () = terminated() => return ExitCode::SUCCESS,
            }
            tracing::info!(identity = %elector.identity(), "reconciling IngestionPipelines and CompactionPolicies");
            let controllers = async {
                tokio::join!(pipeline::run(ctx.clone()), policy::run(ctx.clone()));
            };
            tokio::select! {
                () = controllers => {
                    // SIGTERM/SIGINT: the controllers stopped; hand the Lease over at once.
                    if let Err(e) = elector.release().await {
                        tracing::warn!(error = %e, "releasing the lease");
                    }
                    return ExitCode::SUCCESS;
                }
                lost = elector.keep() => {
                    // The controllers (dropped with this branch) stop before the Lease can
                    // expire for another replica; this one stands again as a candidate, and
                    // leads again at once if the Lease is still its own (an API server
                    // outage rather than a successor).
                    tracing::error!(error = %lost, "leadership lost: reconciling stopped; standing as a candidate again");
                }
            }
        }
    })
}

/// Resolves on SIGTERM or SIGINT.
async fn terminated() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
