//! The operator's client of a coordinator's HTTP API (docs/api.md). Only performs I/O and
//! maps answers to the decision's view types; every side effect on a job goes through here.

use std::time::Duration;

use tidewater_crds::job_api::{JobStatus, ParallelismRequest, SavepointRequest, SavepointStatus};

use crate::pipeline::decide::{JobView, SavepointView};

/// Errors talking to a coordinator.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Not reachable (not running yet, restarting, network).
    #[error("coordinator {url} unreachable: {source}")]
    Unreachable {
        /// Base URL.
        url: String,
        /// Cause.
        source: reqwest::Error,
    },
    /// It answered with an error.
    #[error("coordinator {url}: {status}: {body}")]
    Refused {
        /// Request URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// Body.
        body: String,
    },
}

/// A coordinator at a base URL (`http://host:port`).
#[derive(Debug, Clone)]
pub struct JobClient {
    base: String,
    http: reqwest::Client,
}

impl JobClient {
    /// A client for the coordinator at `base`.
    pub fn new(base: impl Into<String>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("http client");
        Self {
            base: base.into().trim_end_matches('/').to_string(),
            http,
        }
    }

    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<reqwest::Response, JobError> {
        let resp = req.send().await.map_err(|source| JobError::Unreachable {
            url: self.base.clone(),
            source,
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(JobError::Refused {
            url: url.into(),
            status: resp.status().as_u16(),
            body: resp.text().await.unwrap_or_default(),
        })
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        resp: reqwest::Response,
    ) -> Result<T, JobError> {
        resp.json().await.map_err(|source| JobError::Unreachable {
            url: self.base.clone(),
            source,
        })
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Result<JobView, JobError> {
        let url = format!("{}/v1/status", self.base);
        let doc: JobStatus = self
            .json(self.send(self.http.get(&url), &url).await?)
            .await?;
        Ok(JobView {
            state: doc.state,
            active_workers: i32::try_from(
                doc.workers
                    .iter()
                    .filter(|w| !w.partitions.is_empty())
                    .count(),
            )
            .unwrap_or(i32::MAX),
            last_checkpoint: doc.last_checkpoint,
            total_lag: doc.total_lag,
            tables: doc.tables,
            rows_committed: doc.rows_committed,
            partitions: i32::try_from(doc.partitions.len()).unwrap_or(i32::MAX),
        })
    }

    /// `POST /v1/savepoints`; returns the savepoint id.
    pub async fn trigger_savepoint(&self, stop: bool) -> Result<String, JobError> {
        let url = format!("{}/v1/savepoints", self.base);
        let req = self.http.post(&url).json(&SavepointRequest { stop });
        let doc: SavepointStatus = self.json(self.send(req, &url).await?).await?;
        Ok(doc.id)
    }

    /// `GET /v1/savepoints/{id}`; `None` when this coordinator run does not know it.
    pub async fn savepoint(&self, id: &str) -> Result<Option<SavepointView>, JobError> {
        let url = format!("{}/v1/savepoints/{id}", self.base);
        match self.send(self.http.get(&url), &url).await {
            Ok(resp) => {
                let doc: SavepointStatus = self.json(resp).await?;
                Ok(Some(SavepointView {
                    state: doc.state,
                    path: doc.path,
                    reason: doc.reason,
                }))
            }
            Err(JobError::Refused { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `POST /v1/parallelism`.
    pub async fn set_parallelism(&self, workers: i32) -> Result<(), JobError> {
        let url = format!("{}/v1/parallelism", self.base);
        let workers = usize::try_from(workers).unwrap_or(0);
        let req = self.http.post(&url).json(&ParallelismRequest { workers });
        self.send(req, &url).await.map(|_| ())
    }
}
