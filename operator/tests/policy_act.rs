//! The CompactionPolicy controller against a mock API server (tower-test): the exact requests
//! of a reconcile, in order — observe (Job listing), then act: policy file, CronJob, the run
//! Job of a new runNonce, Event, status — and an invalid policy reported in status without
//! children.

mod common;

use std::sync::Arc;

use common::{Seen, context, serve};
use http::{Method, Request, Response};
use kube::{Client, client::Body, core::DeserializeGuard};
use serde_json::{Value, json};
use tidewater_crds::CompactionPolicy;
use tidewater_operator::{kube_io::Address, policy::reconcile};

/// Job listings are empty; a policy is answered whole; everything else is echoed.
fn answer(method: &Method, path: &str, body: Value) -> Value {
    if method == Method::GET && path.ends_with("/jobs") {
        json!({"apiVersion": "batch/v1", "kind": "JobList", "metadata": {}, "items": []})
    } else if path.contains("/compactionpolicies/") {
        let mut whole = serde_json::to_value(policy("")).unwrap();
        whole["status"] = body["status"].clone();
        whole
    } else {
        body
    }
}

fn policy(extra: &str) -> CompactionPolicy {
    common::policy(extra, "analytics")
}

async fn reconcile_against(p: CompactionPolicy) -> Vec<Seen> {
    reconcile_with(p, answer).await.0
}

/// One reconcile of `p` against a mock API server answering with `answer`: the requests seen
/// and the operator's metrics afterwards.
async fn reconcile_with(
    p: CompactionPolicy,
    answer: impl Fn(&Method, &str, Value) -> Value + Send + 'static,
) -> (Vec<Seen>, String) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "analytics");
    let (server, seen) = serve(handle, answer);
    let ctx = context(client, Address::Dns);
    reconcile(Arc::new(DeserializeGuard(Ok(p))), ctx.clone())
        .await
        .expect("reconcile");
    server.abort();
    let seen = seen.lock().unwrap().clone();
    (seen, ctx.metrics.render())
}

/// A failed maintenance Job is counted once, by policy and result, for the
/// TidewaterCompactionFailing alert (both series exist at 0 from the first reconcile); the
/// status it leaves makes the next reconcile count nothing.
#[tokio::test]
async fn a_finished_run_is_counted_once_by_result() {
    fn with_failed_job(method: &Method, path: &str, body: Value) -> Value {
        if method == Method::GET && path.ends_with("/jobs") {
            json!({"apiVersion": "batch/v1", "kind": "JobList", "metadata": {}, "items": [{
                "metadata": {"name": "clicks-maintenance-run-8", "namespace": "analytics"},
                "status": {"failed": 1, "conditions": [{"type": "Failed", "status": "True",
                    "lastTransitionTime": "2026-11-21T10:05:00Z"}]}
            }]})
        } else if method == Method::GET && path.ends_with("/pods") {
            json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []})
        } else {
            answer(method, path, body)
        }
    }
    let (seen, metrics) = reconcile_with(policy(""), with_failed_job).await;
    let line = "tidewater_operator_maintenance_runs_total{namespace=\"analytics\",policy=\"clicks-maintenance\",result=\"failed\"} 1";
    assert!(metrics.contains(line), "{metrics}");
    assert!(
        metrics.contains("policy=\"clicks-maintenance\",result=\"succeeded\"} 0"),
        "{metrics}"
    );
    let mut p = policy("");
    p.status = Some(serde_json::from_value(seen.last().unwrap().body["status"].clone()).unwrap());
    let (_, again) = reconcile_with(p, with_failed_job).await;
    assert!(
        again.contains("policy=\"clicks-maintenance\",result=\"failed\"} 0"),
        "the same run counted again: {again}"
    );
}

#[tokio::test]
async fn a_policy_with_a_new_run_nonce() {
    let seen = reconcile_against(policy("  runNonce: 4\n")).await;
    let calls: Vec<(String, String)> = seen
        .iter()
        .map(|s| (s.method.to_string(), s.path.clone()))
        .collect();
    let ns = "/api/v1/namespaces/analytics";
    let batch = "/apis/batch/v1/namespaces/analytics";
    assert_eq!(
        calls,
        vec![
            ("GET".into(), format!("{batch}/jobs")),
            ("PATCH".into(), format!("{ns}/configmaps/clicks-maintenance-policy")),
            ("PATCH".into(), format!("{batch}/cronjobs/clicks-maintenance-compaction")),
            ("PATCH".into(), format!("{batch}/jobs/clicks-maintenance-run-4")),
            ("POST".into(), "/apis/events.k8s.io/v1/namespaces/analytics/events".into()),
            (
                "PATCH".into(),
                "/apis/tidewater.dev/v1alpha1/namespaces/analytics/compactionpolicies/clicks-maintenance/status".into()
            ),
        ]
    );
    let cron = &seen[2].body;
    assert_eq!(cron["spec"]["schedule"], "*/30 * * * *");
    assert_eq!(cron["spec"]["concurrencyPolicy"], "Forbid");
    let job = &seen[3].body;
    assert_eq!(
        job["spec"]["template"]["spec"]["containers"][0]["args"],
        json!([
            "compact",
            "-f",
            "/etc/tidewater/policy.yaml",
            "--once",
            "--report",
            "/dev/termination-log"
        ])
    );
    let status = &seen[5].body["status"];
    assert_eq!(status["lastRunNonce"], 4);
    assert!(status["nextRun"].as_str().is_some(), "{status}");
    assert_eq!(status["observedGeneration"], 2);
}

#[tokio::test]
async fn an_invalid_policy_is_reported_and_nothing_is_created() {
    let mut p = policy("");
    p.spec.schedule = Some("every hour".into());
    let seen = reconcile_against(p).await;
    let calls: Vec<String> = seen
        .iter()
        .map(|s| format!("{} {}", s.method, s.path))
        .collect();
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert!(calls[0].starts_with("GET /apis/batch/v1/"), "{calls:?}");
    assert!(
        calls[1].starts_with("POST /apis/events.k8s.io"),
        "{calls:?}"
    );
    assert!(calls[2].ends_with("/compactionpolicies/clicks-maintenance/status"));
    let degraded = &seen[2].body["status"]["conditions"][0];
    assert_eq!(degraded["type"], "Degraded");
    assert_eq!(degraded["status"], "True");
    assert!(
        degraded["message"]
            .as_str()
            .unwrap()
            .starts_with("spec.schedule: `every hour` needs 5 fields"),
        "{degraded}"
    );
}
