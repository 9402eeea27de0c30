//! act() against a mock API server (tower-test): the exact requests of a reconcile, in order,
//! with their bodies. The coordinator is a canned HTTP responder where a job is involved.

mod common;

use std::sync::{Arc, Mutex};
use tidewater_crds::job_api::{RunState, SavepointState};

use common::{Seen, context, serve};
use http::{Request, Response};
use kube::{Client, client::Body, core::DeserializeGuard};
use serde_json::{Value, json};
use tidewater_crds::IngestionPipeline;
use tidewater_operator::{kube_io::Address, pipeline::reconcile};

fn fixture() -> IngestionPipeline {
    IngestionPipeline::from_yaml(include_str!("fixtures/clicks.yaml")).unwrap()
}

/// What the API server answers: the stored pipeline `stored` with the written status or
/// finalizers (a real server returns the whole object); other objects as written.
fn answer(stored: &Value, path: &str, body: Value) -> Value {
    if !path.contains("/ingestionpipelines/") {
        return body;
    }
    let mut whole = stored.clone();
    if let Some(status) = body.get("status") {
        whole["status"] = status.clone();
        // Every write moves the resourceVersion on.
        whole["metadata"]["resourceVersion"] = json!("after-status-write");
    }
    if let Some(f) = body.pointer("/metadata/finalizers") {
        whole["metadata"]["finalizers"] = f.clone();
    }
    whole
}

/// A coordinator that answers `/v1/status` as running and accepts savepoints and rescales.
async fn fake_coordinator() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let calls = Arc::new(Mutex::new(Vec::new()));
    let log = calls.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let log = log.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = vec![0u8; 8192];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let line = req.lines().next().unwrap_or_default().to_string();
                let body = req.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
                log.lock().unwrap().push(format!("{line} {body}"));
                let (code, answer) = if line.starts_with("GET /v1/status") {
                    (
                        "200 OK",
                        json!({"state": "running", "workers": [{"partitions": ["clicks/0"]}], "totalLag": 5, "lastCheckpoint": {"id": 3, "time": "2026-11-21T12:00:00Z", "snapshots": {"analytics.clicks": 11}}}),
                    )
                } else if line.starts_with("POST /v1/savepoints") {
                    (
                        "202 Accepted",
                        json!({"id": "sp-9", "state": "pending", "stop": body.contains("true")}),
                    )
                } else if line.starts_with("GET /v1/savepoints/sp-9") {
                    (
                        "200 OK",
                        json!({"id": "sp-9", "state": "completed", "stop": true, "path": "s3://lake/sp/sp-9.json", "checkpointId": 12}),
                    )
                } else if line.starts_with("POST /v1/parallelism") {
                    ("202 Accepted", json!({"workers": 4}))
                } else {
                    ("404 Not Found", json!({"error": "no"}))
                };
                let text = answer.to_string();
                let reply = format!(
                    "HTTP/1.1 {code}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                    text.len()
                );
                let _ = s.write_all(reply.as_bytes()).await;
            });
        }
    });
    (url, calls)
}

/// One reconcile of `p` against the mock API server; returns the requests it made.
async fn reconcile_against(p: IngestionPipeline, coordinator: Address) -> Vec<Seen> {
    let mut seen = reconcile_all(p, coordinator).await;
    // The fresh read every decision starts with (asserted in its own test).
    if seen.first().is_some_and(|s| s.method == "GET") {
        seen.remove(0);
    }
    seen
}

/// Every request of one reconcile, the opening read included.
async fn reconcile_all(p: IngestionPipeline, coordinator: Address) -> Vec<Seen> {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let stored = serde_json::to_value(&p).unwrap();
    let (task, seen) = serve(handle, move |_, path, body| answer(&stored, path, body));
    let ctx = context(Client::new(service, "analytics"), coordinator);
    reconcile(Arc::new(DeserializeGuard(Ok(p))), ctx)
        .await
        .unwrap();
    task.abort();
    seen.lock().unwrap().clone()
}

fn paths(seen: &[Seen]) -> Vec<String> {
    seen.iter()
        .map(|s| format!("{} {}", s.method, s.path))
        .collect()
}

#[tokio::test]
async fn decisions_start_from_a_fresh_read_and_status_writes_are_conditional() {
    let mut p = fixture();
    p.metadata.resource_version = Some("rv-7".into());
    let seen = reconcile_all(p, Address::Fixed("http://127.0.0.1:9".into())).await;
    let ns = "/namespaces/analytics";
    assert_eq!(
        format!("{} {}", seen[0].method, seen[0].path),
        format!("GET /apis/tidewater.dev/v1alpha1{ns}/ingestionpipelines/clicks"),
        "the watch cache may be behind this operator's own writes"
    );
    let status = seen
        .iter()
        .find(|s| s.path.ends_with("/status"))
        .expect("a status write");
    assert_eq!(status.body["metadata"]["resourceVersion"], json!("rv-7"));
}

#[tokio::test]
async fn create_applies_children_in_order_then_writes_status() {
    // Nothing answers at this address: the job is not running yet.
    let seen = reconcile_against(fixture(), Address::Fixed("http://127.0.0.1:9".into())).await;
    let p = paths(&seen);
    let ns = "/namespaces/analytics";
    assert_eq!(
        p[..6],
        [
            format!("PATCH /api/v1{ns}/configmaps/clicks-config"),
            format!("PATCH /api/v1{ns}/services/clicks-coordinator"),
            format!("PATCH /api/v1{ns}/services/clicks-workers"),
            format!("PATCH /apis/policy/v1{ns}/poddisruptionbudgets/clicks-workers"),
            format!("PATCH /apis/apps/v1{ns}/deployments/clicks-coordinator"),
            format!("PATCH /apis/apps/v1{ns}/statefulsets/clicks-workers"),
        ]
    );
    assert!(
        p[6].contains("/events"),
        "an Event for the deployment: {p:?}"
    );
    assert_eq!(
        p.last().unwrap(),
        &format!("PATCH /apis/tidewater.dev/v1alpha1{ns}/ingestionpipelines/clicks/status")
    );
    let deployment = &seen[4].body;
    let args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap();
    assert!(args.contains(&json!("--from-latest")), "{args:?}");
    assert_eq!(
        deployment["metadata"]["ownerReferences"][0]["kind"],
        "IngestionPipeline"
    );
    let status = &seen.last().unwrap().body["status"];
    assert_eq!(status["lifecycleState"], "Deploying");
    assert_eq!(status["parallelism"], 2);
    assert!(
        status["lastReconciledSpec"]
            .as_str()
            .unwrap()
            .contains("analytics.clicks")
    );
}

/// A pipeline that went through create and became Running (status as the API server holds it).
fn running() -> IngestionPipeline {
    use tidewater_operator::pipeline::decide::{JobView, Observed, decide};
    let mut p = fixture();
    let obs = |job| Observed {
        job,
        savepoint: None,
        savepoint_unreachable: false,
        now: chrono::Utc::now(),
        default_image: "ghcr.io/tidewater/runtime:0.1.0".into(),
        pods_otlp: Default::default(),
    };
    p.status = Some(decide(&p, &obs(None)).status);
    let job = JobView {
        state: RunState::Running,
        active_workers: 2,
        last_checkpoint: None,
        total_lag: 0,
        rows_committed: 0,
        partitions: 4,
        tables: vec![],
    };
    p.status = Some(decide(&p, &obs(Some(job))).status);
    p
}

#[tokio::test]
async fn rescale_tells_the_coordinator_and_scales_the_workers() {
    let (url, calls) = fake_coordinator().await;
    let mut p = running();
    p.spec.parallelism = 4;
    p.metadata.generation = Some(2);
    let seen = reconcile_against(p, Address::Fixed(url)).await;
    let sts = seen
        .iter()
        .find(|s| s.path.ends_with("statefulsets/clicks-workers"))
        .unwrap();
    assert_eq!(sts.body["spec"]["replicas"], 4);
    let calls = calls.lock().unwrap().clone();
    assert!(
        calls
            .iter()
            .any(|c| c.starts_with("POST /v1/parallelism") && c.contains("\"workers\":4")),
        "{calls:?}"
    );
    assert!(
        !calls.iter().any(|c| c.starts_with("POST /v1/savepoints")),
        "no restart: {calls:?}"
    );
    let status = &seen.last().unwrap().body["status"];
    assert_eq!(status["parallelism"], 4);
    assert_eq!(status["lag"], 5);
    assert_eq!(
        status["lastCheckpoint"]["snapshots"]["analytics.clicks"],
        11
    );
}

#[tokio::test]
async fn suspend_requests_a_stop_savepoint_and_records_its_id() {
    let (url, calls) = fake_coordinator().await;
    let mut p = running();
    p.spec.state = tidewater_crds::deploy::JobState::Suspended;
    let seen = reconcile_against(p, Address::Fixed(url)).await;
    let calls = calls.lock().unwrap().clone();
    assert!(
        calls
            .iter()
            .any(|c| c.starts_with("POST /v1/savepoints") && c.contains("\"stop\":true")),
        "{calls:?}"
    );
    let status = &seen.last().unwrap().body["status"];
    assert_eq!(status["operation"]["kind"], "suspend");
    assert_eq!(status["operation"]["savepointId"], "sp-9");
    // The workers keep running until the savepoint completed.
    let sts = seen
        .iter()
        .find(|s| s.path.ends_with("statefulsets/clicks-workers"))
        .unwrap();
    assert_eq!(sts.body["spec"]["replicas"], 2);
}

#[tokio::test]
async fn a_spec_that_validation_rejects_is_reported_not_deployed() {
    let mut p = fixture();
    p.spec.checkpoint.interval = "soon".into();
    let seen = reconcile_against(p, Address::Fixed("http://127.0.0.1:9".into())).await;
    assert!(
        seen.iter()
            .all(|s| !s.path.contains("/deployments/") && !s.path.contains("/statefulsets/"))
    );
    let status = &seen.last().unwrap().body["status"];
    let degraded = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Degraded")
        .unwrap();
    assert_eq!(degraded["status"], "True");
    assert!(
        degraded["message"]
            .as_str()
            .unwrap()
            .contains("spec.checkpoint.interval"),
        "{degraded}"
    );
}

#[tokio::test]
async fn deletion_removes_the_finalizer_after_the_status() {
    let mut p = fixture();
    p.metadata.finalizers = Some(vec![
        tidewater_operator::pipeline::decide::FINALIZER.into(),
        "other/keep".into(),
    ]);
    p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::from_second(1_790_000_000).unwrap(),
    ));
    let seen = reconcile_against(p, Address::Fixed("http://127.0.0.1:9".into())).await;
    let ns = "/namespaces/analytics";
    assert_eq!(
        paths(&seen),
        vec![
            format!("PATCH /apis/tidewater.dev/v1alpha1{ns}/ingestionpipelines/clicks/status"),
            format!("PATCH /apis/tidewater.dev/v1alpha1{ns}/ingestionpipelines/clicks"),
        ],
        "nothing is deployed while deleting"
    );
    assert_eq!(
        seen[1].body["metadata"]["finalizers"],
        json!(["other/keep"])
    );
    assert_eq!(
        seen[1].body["metadata"]["resourceVersion"],
        json!("after-status-write"),
        "the finalizer write is conditional on the object the status write returned"
    );
}

fn container_args(seen: &[Seen]) -> Vec<String> {
    let dep = seen
        .iter()
        .find(|s| s.path.ends_with("deployments/clicks-coordinator"))
        .unwrap();
    dep.body["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

fn rendered_config(seen: &[Seen]) -> String {
    let cm = seen
        .iter()
        .find(|s| s.path.ends_with("configmaps/clicks-config"))
        .unwrap();
    cm.body["data"]["pipeline.yaml"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn savepoint_upgrade_stops_with_a_savepoint_then_redeploys_from_it() {
    let (url, calls) = fake_coordinator().await;
    let mut p = running();
    p.spec.checkpoint.interval = "30s".into();
    p.metadata.generation = Some(2);

    // First reconcile: the old spec stays deployed, a savepoint with stop is requested.
    let first = reconcile_against(p.clone(), Address::Fixed(url.clone())).await;
    assert!(
        rendered_config(&first).contains("interval: 10s"),
        "old spec until the savepoint"
    );
    assert!(container_args(&first).contains(&"--from-latest".to_string()));
    let status = first.last().unwrap().body["status"].clone();
    assert_eq!(status["operation"]["kind"], "savepoint-upgrade");
    assert_eq!(status["operation"]["savepointId"], "sp-9");
    assert!(
        calls
            .lock()
            .unwrap()
            .iter()
            .any(|c| c.starts_with("POST /v1/savepoints") && c.contains("\"stop\":true"))
    );

    // Second reconcile: the savepoint completed; the new spec is deployed from it.
    p.status = Some(serde_json::from_value(status).unwrap());
    let second = reconcile_against(p, Address::Fixed(url)).await;
    assert!(rendered_config(&second).contains("interval: 30s"));
    let args = container_args(&second);
    assert!(
        args.windows(2)
            .any(|w| w == ["--from-savepoint", "s3://lake/sp/sp-9.json"]),
        "{args:?}"
    );
    let status = &second.last().unwrap().body["status"];
    assert_eq!(status["lifecycleState"], "Deploying");
    assert_eq!(status["savepoints"][0]["trigger"], "upgrade");
    assert!(status.get("operation").is_none() || status["operation"].is_null());
}

#[tokio::test]
async fn an_overdue_upgrade_is_rolled_back_to_the_last_stable_spec() {
    use tidewater_operator::pipeline::decide::{Observed, SavepointView, decide};
    // Walk: running → upgrade (savepoint sp-9) → deployed from it, never Ready.
    let mut p = running();
    p.spec.image = Some("ghcr.io/tidewater/runtime:broken".into());
    p.metadata.generation = Some(2);
    let start = chrono::Utc::now() - chrono::Duration::minutes(10);
    let obs = |job, savepoint, now| Observed {
        job,
        savepoint,
        savepoint_unreachable: false,
        now,
        default_image: "ghcr.io/tidewater/runtime:0.1.0".into(),
        pods_otlp: Default::default(),
    };
    let running_job = Some(tidewater_operator::pipeline::decide::JobView {
        state: RunState::Running,
        active_workers: 2,
        last_checkpoint: None,
        total_lag: 0,
        rows_committed: 0,
        partitions: 4,
        tables: vec![],
    });
    let mut d = decide(&p, &obs(running_job, None, start));
    d.status.operation.as_mut().unwrap().savepoint_id = Some("sp-9".into());
    p.status = Some(d.status);
    let done = Some(SavepointView {
        state: SavepointState::Completed,
        path: Some("s3://lake/sp/sp-9.json".into()),
        reason: None,
    });
    p.status = Some(decide(&p, &obs(None, done, start + chrono::Duration::seconds(5))).status);

    // Now (10 minutes later, upgradeTimeout 5m) the controller rolls back.
    // The broken job never answers.
    let seen = reconcile_against(p, Address::Fixed("http://127.0.0.1:9".into())).await;
    let dep = seen
        .iter()
        .find(|s| s.path.ends_with("deployments/clicks-coordinator"))
        .unwrap();
    assert_eq!(
        dep.body["spec"]["template"]["spec"]["containers"][0]["image"],
        "ghcr.io/tidewater/runtime:0.1.0"
    );
    let args = container_args(&seen);
    assert!(
        args.windows(2)
            .any(|w| w == ["--from-savepoint", "s3://lake/sp/sp-9.json"]),
        "{args:?}"
    );
    let event = seen.iter().find(|s| s.path.contains("/events")).unwrap();
    assert_eq!(event.body["type"], "Warning");
    assert_eq!(event.body["reason"], "RollingBack");
    let status = &seen.last().unwrap().body["status"];
    assert_eq!(status["lifecycleState"], "RollingBack");
    assert_eq!(status["rolledBackGeneration"], 2);
}
