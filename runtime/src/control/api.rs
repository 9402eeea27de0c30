//! The coordinator's HTTP API (`/v1`, documented in docs/api.md) and the worker link
//! endpoints. Handlers only read shared state or turn requests into coordinator events; every
//! decision is the coordinator's.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use axum::{
    Json, Router,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use tidewater_crds::job_api::{
    ErrorBody, JobStatus, ParallelismRequest, RunState, SavepointRequest, SavepointState,
    SavepointStatus,
};

use crate::{
    control::{
        hub::{Event, Hub},
        protocol::{PollRequest, PollResponse, RegisterRequest, RegisterResponse, WorkerId},
    },
    metrics::Metrics,
};

/// How long a command poll waits for a command before answering with none.
pub const LONG_POLL: Duration = Duration::from_secs(1);

/// What a worker needs to register; known once the coordinator has recovered.
#[derive(Debug, Clone)]
pub struct Registration {
    /// Coordinator run id.
    pub run_id: String,
    /// The pipeline YAML.
    pub pipeline_yaml: String,
    /// Base directory for relative paths.
    pub base_dir: String,
    /// Heartbeat timeout.
    pub heartbeat_timeout: Duration,
}

/// State shared between the coordinator and the HTTP handlers.
pub struct Shared {
    /// Metrics of this process.
    pub metrics: Arc<Metrics>,
    /// Links to workers.
    pub hub: Hub,
    /// Published status.
    pub status: RwLock<JobStatus>,
    /// Savepoints requested in this run.
    pub savepoints: Mutex<BTreeMap<String, SavepointStatus>>,
    /// Set when workers may register.
    pub registration: RwLock<Option<Registration>>,
}

impl Shared {
    /// Shared state before the coordinator starts.
    pub fn new(metrics: Arc<Metrics>, hub: Hub) -> Self {
        Self {
            metrics,
            hub,
            status: RwLock::new(JobStatus::default()),
            savepoints: Mutex::new(BTreeMap::new()),
            registration: RwLock::new(None),
        }
    }

    /// Replaces the published status.
    pub fn publish(&self, status: JobStatus) {
        *self
            .status
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = status;
    }

    /// Changes only the state (and error) of the published status.
    pub fn set_state(&self, state: RunState, error: Option<String>) {
        let mut s = self
            .status
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        s.state = state;
        s.error = error;
    }

    /// Records a savepoint's progress.
    pub fn set_savepoint(&self, status: SavepointStatus) {
        self.savepoints
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(status.id.clone(), status);
    }

    fn state(&self) -> RunState {
        self.status
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .state
    }
}

fn error(code: StatusCode, message: impl Into<String>) -> Response {
    let body = ErrorBody {
        error: message.into(),
    };
    (code, Json(body)).into_response()
}

async fn status(State(s): State<Arc<Shared>>) -> Response {
    let doc = s
        .status
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    Json(doc).into_response()
}

async fn trigger_savepoint(
    State(s): State<Arc<Shared>>,
    body: Option<Json<SavepointRequest>>,
) -> Response {
    let state = s.state();
    if !state.is_live() {
        return error(
            StatusCode::CONFLICT,
            format!("the job is {state}: savepoints are taken only while it runs"),
        );
    }
    let stop = body.is_some_and(|Json(b)| b.stop);
    let id = format!("sp-{}", uuid::Uuid::now_v7().simple());
    let status = SavepointStatus {
        id: id.clone(),
        state: SavepointState::Pending,
        stop,
        ..SavepointStatus::default()
    };
    s.set_savepoint(status.clone());
    s.hub.emit(Event::Savepoint { id, stop });
    (StatusCode::ACCEPTED, Json(status)).into_response()
}

async fn savepoint(State(s): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let found = s
        .savepoints
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&id)
        .cloned();
    match found {
        Some(sp) => Json(sp).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no savepoint {id} in this run"),
        ),
    }
}

async fn savepoints(State(s): State<Arc<Shared>>) -> Response {
    let all: Vec<SavepointStatus> = s
        .savepoints
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .values()
        .cloned()
        .collect();
    Json(all).into_response()
}

async fn parallelism(
    State(s): State<Arc<Shared>>,
    Json(req): Json<ParallelismRequest>,
) -> Response {
    if req.workers == 0 {
        return error(
            StatusCode::BAD_REQUEST,
            "workers must be at least 1 (use a savepoint with stop to stop the job)",
        );
    }
    s.hub.emit(Event::Parallelism {
        workers: req.workers,
    });
    (StatusCode::ACCEPTED, Json(req)).into_response()
}

async fn register(State(s): State<Arc<Shared>>, Json(req): Json<RegisterRequest>) -> Response {
    let reg = s
        .registration
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let Some(reg) = reg else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the coordinator is still recovering",
        );
    };
    let state = s.state();
    if !state.is_live() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the job is {state}"),
        );
    }
    let worker_id = s.hub.register_remote(&req.name, req.metrics_addr.clone());
    tracing::info!(worker = worker_id, name = %req.name, metrics = ?req.metrics_addr, "worker registered");
    Json(RegisterResponse {
        worker_id,
        run_id: reg.run_id,
        pipeline_yaml: reg.pipeline_yaml,
        base_dir: reg.base_dir,
        heartbeat_timeout_ms: u64::try_from(reg.heartbeat_timeout.as_millis()).unwrap_or(u64::MAX),
    })
    .into_response()
}

fn gone(id: WorkerId) -> Response {
    error(
        StatusCode::GONE,
        format!("worker {id} is not a member of this coordinator run; register again"),
    )
}

async fn worker_events(
    State(s): State<Arc<Shared>>,
    Path(id): Path<WorkerId>,
    Json(req): Json<PollRequest>,
) -> Response {
    match s.hub.take_events(id, req.events) {
        Ok(received_events) => Json(PollResponse {
            received_events,
            commands: vec![],
        })
        .into_response(),
        Err(_) => gone(id),
    }
}

async fn worker_commands(
    State(s): State<Arc<Shared>>,
    Path(id): Path<WorkerId>,
    Json(req): Json<PollRequest>,
) -> Response {
    let notify = match s.hub.pending_commands(id, req.received_commands) {
        Err(_) => return gone(id),
        Ok((commands, _)) if !commands.is_empty() => {
            return Json(PollResponse {
                received_events: 0,
                commands,
            })
            .into_response();
        }
        Ok((_, notify)) => notify,
    };
    let _ = tokio::time::timeout(LONG_POLL, notify.notified()).await;
    match s.hub.pending_commands(id, req.received_commands) {
        Ok((commands, _)) => Json(PollResponse {
            received_events: 0,
            commands,
        })
        .into_response(),
        Err(_) => gone(id),
    }
}

async fn leave(State(s): State<Arc<Shared>>, Path(id): Path<WorkerId>) -> Response {
    s.hub.emit(Event::Leaving { id });
    StatusCode::ACCEPTED.into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<Arc<Shared>>) -> Response {
    if s.metrics.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("{}\n", s.state())).into_response()
    }
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        s.metrics.render(),
    )
        .into_response()
}

/// The coordinator's routes.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/savepoints", post(trigger_savepoint).get(savepoints))
        .route("/v1/savepoints/{id}", get(savepoint))
        .route("/v1/parallelism", post(parallelism))
        .route("/v1/workers", post(register))
        .route("/v1/workers/{id}", axum::routing::delete(leave))
        .route("/v1/workers/{id}/events", post(worker_events))
        .route("/v1/workers/{id}/commands", post(worker_commands))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

/// Serves `router` on `addr` until the process ends; returns the bound address.
pub async fn serve(addr: SocketAddr, router: Router) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "http server stopped");
        }
    });
    Ok(bound)
}
