//! A worker process: registers with the coordinator over HTTP, runs the worker loop on its
//! own thread, relays commands down (long poll) and events up, and registers again when the
//! coordinator forgets it or cannot be reached for the heartbeat timeout. It never commits:
//! only what the coordinator accepted from a live member is ever committed.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    path::Path,
    sync::{Arc, mpsc},
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use tidewater_crds::IngestionPipeline;
use tokio::sync::{mpsc::unbounded_channel, watch};

use crate::{
    config::PipelineConfig,
    control::{
        api::LONG_POLL,
        protocol::{
            PollRequest, PollResponse, RegisterRequest, RegisterResponse, Sequenced, ToCoordinator,
            ToWorker,
        },
        worker::{self, WorkerSetup},
    },
    metrics::Metrics,
};

/// Why a worker process cannot work for the coordinator it registered with.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The HTTP client could not be built.
    #[error("http client: {0}")]
    Client(#[source] reqwest::Error),
    /// The pipeline the coordinator handed out does not parse.
    #[error("pipeline from the coordinator: {0}")]
    Pipeline(#[from] serde_yaml::Error),
    /// The pipeline the coordinator handed out does not resolve (names the fields).
    #[error("pipeline from the coordinator is invalid: {0}")]
    InvalidPipeline(String),
    /// The worker thread could not be started.
    #[error("spawn worker: {0}")]
    SpawnWorker(#[source] std::io::Error),
}

/// Why a registration was not accepted (retried; logged now and then).
#[derive(Debug, thiserror::Error)]
enum RegisterError {
    /// No answer.
    #[error("{0}")]
    Unreachable(#[from] reqwest::Error),
    /// An answer other than 200 (still recovering, not running).
    #[error("{status}: {body}")]
    Refused {
        /// HTTP status.
        status: StatusCode,
        /// The answer's body.
        body: String,
    },
}

/// How a session with one coordinator run ended.
#[derive(Debug)]
enum SessionEnd {
    /// The coordinator said stop: the process exits.
    Stopped,
    /// The session is over (forgotten, unreachable): register again.
    Lost(String),
}

/// Runs a worker process until the coordinator stops it or `shutdown` resolves;
/// `metrics_addr` (where its `/metrics` is bound) is reported when it registers.
pub async fn run(
    coordinator: &str,
    name: &str,
    metrics_addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), RemoteError> {
    let base = coordinator.trim_end_matches('/').to_string();
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .build()
        .map_err(RemoteError::Client)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let mut last_complaint: Option<Instant> = None;
    loop {
        if *stop_rx.borrow() {
            return Ok(());
        }
        let reg = match register(&client, &base, name, metrics_addr).await {
            Ok(r) => r,
            Err(e) => {
                if last_complaint.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!(coordinator = %base, error = %e, "cannot register; retrying");
                    last_complaint = Some(Instant::now());
                }
                let mut rx = stop_rx.clone();
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = rx.changed() => {}
                }
                continue;
            }
        };
        tracing::info!(worker = reg.worker_id, run = %reg.run_id, "registered with the coordinator");
        match session(&client, &base, reg, &metrics, stop_rx.clone()).await? {
            SessionEnd::Stopped => return Ok(()),
            SessionEnd::Lost(reason) => {
                metrics.set_ready(false);
                tracing::warn!(%reason, "session with the coordinator ended; registering again");
            }
        }
    }
}

async fn register(
    client: &reqwest::Client,
    base: &str,
    name: &str,
    metrics_addr: SocketAddr,
) -> Result<RegisterResponse, RegisterError> {
    let resp = client
        .post(format!("{base}/v1/workers"))
        .json(&RegisterRequest {
            name: name.into(),
            metrics_addr: Some(metrics_addr.to_string()),
        })
        .timeout(Duration::from_secs(10))
        .send()
        .await?;
    if !resp.status().is_success() {
        return Err(RegisterError::Refused {
            status: resp.status(),
            body: resp.text().await.unwrap_or_default(),
        });
    }
    Ok(resp.json().await?)
}

async fn session(
    client: &reqwest::Client,
    base: &str,
    reg: RegisterResponse,
    metrics: &Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<SessionEnd, RemoteError> {
    let resource = IngestionPipeline::from_yaml(&reg.pipeline_yaml)?;
    let config = PipelineConfig::resolve(resource, Path::new(&reg.base_dir)).map_err(|errors| {
        RemoteError::InvalidPipeline(
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        )
    })?;
    let (commands, commands_rx) = mpsc::channel();
    let (events_tx, events_rx) = unbounded_channel();
    let id = reg.worker_id;
    // Tables are opened on first use, from this process's own catalog connection.
    let tables = worker::Tables::new(&config, Vec::new());
    let thread = worker::spawn(WorkerSetup {
        id,
        config,
        tables,
        run_id: reg.run_id.clone(),
        metrics: metrics.clone(),
        commands: commands_rx,
        events: events_tx,
    })
    .map_err(RemoteError::SpawnWorker)?;
    metrics.set_ready(true);
    let heartbeat = Duration::from_millis(reg.heartbeat_timeout_ms);
    let link = format!("{base}/v1/workers/{id}");
    let (gone_tx, mut gone_rx) = watch::channel(false);
    let pump = tokio::spawn(pump_events(
        client.clone(),
        link.clone(),
        events_rx,
        gone_tx,
    ));
    let stop_thread = |commands: &mpsc::Sender<ToWorker>| {
        let _ = commands.send(ToWorker::Stop);
    };
    let mut received = 0u64;
    let mut last_ok = Instant::now();
    let mut leave_deadline: Option<Instant> = None;
    let end = loop {
        if *shutdown.borrow() && leave_deadline.is_none() {
            tracing::info!(
                "shutting down: asking the coordinator to move this worker's partitions"
            );
            let _ = client
                .delete(&link)
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            leave_deadline = Some(Instant::now() + Duration::from_secs(60));
        }
        if leave_deadline.is_some_and(|d| Instant::now() > d) {
            break SessionEnd::Stopped;
        }
        let poll = client
            .post(format!("{link}/commands"))
            .json(&PollRequest {
                received_commands: received,
                events: vec![],
            })
            .timeout(LONG_POLL + Duration::from_secs(5))
            .send();
        let response = tokio::select! {
            r = poll => r,
            _ = gone_rx.changed() => break SessionEnd::Lost("the coordinator no longer knows this worker".into()),
            _ = shutdown.changed(), if leave_deadline.is_none() => continue,
        };
        match response {
            Ok(r) if r.status() == StatusCode::GONE => {
                break SessionEnd::Lost("the coordinator no longer knows this worker".into());
            }
            Ok(r) if r.status().is_success() => {
                last_ok = Instant::now();
                let Ok(body) = r.json::<PollResponse>().await else {
                    continue;
                };
                let mut stopped = false;
                for c in body.commands {
                    if c.seq <= received {
                        continue;
                    }
                    received = c.seq;
                    stopped |= c.message == ToWorker::Stop;
                    if commands.send(c.message).is_err() {
                        stopped = true;
                    }
                }
                if stopped {
                    break SessionEnd::Stopped;
                }
            }
            Ok(_) | Err(_) if last_ok.elapsed() > heartbeat => {
                break SessionEnd::Lost(format!(
                    "coordinator unreachable for more than {heartbeat:?}: stopped writing"
                ));
            }
            Ok(_) | Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    stop_thread(&commands);
    drop(commands);
    // A thread stuck in I/O must not keep this process from registering again: it can never
    // commit anything (only the coordinator commits, and it forgot this session).
    let joined = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::task::spawn_blocking(move || thread.join()),
    )
    .await;
    if joined.is_err() {
        tracing::warn!(
            worker = id,
            "worker thread did not stop within 10 s; leaving it behind"
        );
    }
    // Let the last events (e.g. a failure report) go out before the link is dropped.
    let _ = tokio::time::timeout(Duration::from_secs(2), pump).await;
    Ok(end)
}

/// Sends the worker thread's events in order, resending until the coordinator confirms them.
async fn pump_events(
    client: reqwest::Client,
    link: String,
    mut events: tokio::sync::mpsc::UnboundedReceiver<ToCoordinator>,
    gone: watch::Sender<bool>,
) {
    let mut pending: VecDeque<Sequenced<ToCoordinator>> = VecDeque::new();
    let mut next_seq = 1u64;
    let mut open = true;
    loop {
        if pending.is_empty() {
            if !open {
                return;
            }
            match events.recv().await {
                Some(m) => {
                    pending.push_back(Sequenced {
                        seq: next_seq,
                        message: m,
                    });
                    next_seq += 1;
                }
                None => return,
            }
        }
        loop {
            match events.try_recv() {
                Ok(m) => {
                    pending.push_back(Sequenced {
                        seq: next_seq,
                        message: m,
                    });
                    next_seq += 1;
                }
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        let sent = client
            .post(format!("{link}/events"))
            .json(&PollRequest {
                received_commands: 0,
                events: pending.iter().cloned().collect(),
            })
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        match sent {
            Ok(r) if r.status() == StatusCode::GONE => {
                let _ = gone.send(true);
                return;
            }
            Ok(r) if r.status().is_success() => {
                if let Ok(body) = r.json::<PollResponse>().await {
                    while pending
                        .front()
                        .is_some_and(|e| e.seq <= body.received_events)
                    {
                        pending.pop_front();
                    }
                }
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
