//! The Argo CD health checks shipped in `charts/tidewater/argocd/` run by a real Lua 5.1
//! interpreter (Argo CD's Lua is 5.1-compatible) on the objects the reconcilers' pure decisions
//! produce, walked through the lifecycle: each state maps to the health Argo CD should show.

mod common;

use std::{path::PathBuf, process::Command};

use chrono::Duration as Span;
use common::walk::{apply, completed, deployed, edit, fixture, observe, running_job, t0};
use serde_json::Value;
use tidewater_crds::{CompactionPolicy, IngestionPipeline, deploy::JobState};
use tidewater_operator::{
    conditions,
    pipeline::decide::decide,
    policy::decide::{FinishedRun, status},
};

/// `value` as a Lua table constructor, the way Argo CD hands a resource to its scripts (JSON
/// null becomes nil, arrays are 1-based sequences).
fn lua(value: &Value) -> String {
    match value {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        // A JSON string is a valid Lua string literal once `\/` and `\u` escapes are absent;
        // Lua 5.1 knows neither, so write every non-ASCII or control byte as `\ddd`.
        Value::String(s) => {
            let mut out = String::from("\"");
            for b in s.bytes() {
                match b {
                    b'"' => out.push_str("\\\""),
                    b'\\' => out.push_str("\\\\"),
                    0x20..=0x7e => out.push(char::from(b)),
                    _ => out.push_str(&format!("\\{b:03}")),
                }
            }
            out.push('"');
            out
        }
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(lua).collect();
            format!("{{{}}}", items.join(", "))
        }
        Value::Object(fields) => {
            let fields: Vec<String> = fields
                .iter()
                .map(|(k, v)| format!("[{}] = {}", lua(&Value::String(k.clone())), lua(v)))
                .collect();
            format!("{{{}}}", fields.join(", "))
        }
    }
}

/// Runs the health check of `kind` on `object`: (status, message).
fn health(kind: &str, object: &impl serde::Serialize) -> (String, String) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../charts/tidewater/argocd/tidewater.dev")
        .join(kind)
        .join("health.lua");
    let object = serde_json::to_value(object).unwrap();
    let program = format!(
        "obj = {}\nlocal hs = dofile({})\nio.write(hs.status, \"\\n\", hs.message or \"\")\n",
        lua(&object),
        lua(&Value::String(script.display().to_string()))
    );
    let out = Command::new("lua5.1")
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(program.as_bytes())?;
            child.wait_with_output()
        })
        .expect("lua5.1 runs (scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "{kind}/health.lua failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (status, message) = text.split_once('\n').unwrap_or((&text, ""));
    (status.to_string(), message.to_string())
}

fn pipeline_health(p: &IngestionPipeline) -> (String, String) {
    health("IngestionPipeline", p)
}

#[test]
fn the_lua_literal_round_trips_awkward_strings() {
    let tricky = "quote \" backslash \\ newline \n tab \t ünïcode ✓";
    let out = Command::new("lua5.1")
        .arg("-e")
        .arg(format!("io.write({})", lua(&Value::String(tricky.into()))))
        .output()
        .expect("lua5.1 runs");
    assert_eq!(String::from_utf8(out.stdout).unwrap(), tricky);
}

#[test]
fn a_pipeline_is_progressing_until_it_runs_then_healthy() {
    let p = fixture();
    let (s, m) = pipeline_health(&p);
    assert_eq!(s, "Progressing", "no status yet: {m}");

    let mut p = fixture();
    let d = decide(&p, &observe(None, None, t0()));
    apply(&mut p, &d, "");
    let (s, m) = pipeline_health(&p);
    assert_eq!(s, "Progressing");
    assert!(m.starts_with("Deploying"), "{m}");

    let p = deployed();
    let (s, m) = pipeline_health(&p);
    assert_eq!(s, "Healthy", "{m}");
    assert!(m.contains("checkpointing"), "{m}");
}

#[test]
fn an_edit_is_progressing_until_observed_and_through_its_upgrade() {
    let mut p = deployed();
    edit(&mut p, |s| s.checkpoint.interval = "30s".into());
    let (s, m) = pipeline_health(&p);
    assert_eq!(s, "Progressing", "{m}");
    assert!(m.contains("generation 2"), "{m}");

    let d = decide(&p, &observe(running_job(), None, t0() + Span::seconds(60)));
    apply(&mut p, &d, "sp-1");
    let (s, m) = pipeline_health(&p);
    assert_eq!(s, "Progressing");
    assert!(m.starts_with("Upgrading"), "{m}");

    let d = decide(
        &p,
        &observe(
            None,
            completed("s3://lake/sp/sp-1.json"),
            t0() + Span::seconds(65),
        ),
    );
    apply(&mut p, &d, "");
    let d = decide(&p, &observe(running_job(), None, t0() + Span::seconds(90)));
    apply(&mut p, &d, "");
    assert_eq!(pipeline_health(&p).0, "Healthy");
}

#[test]
fn a_suspended_pipeline_is_suspended() {
    let mut p = deployed();
    edit(&mut p, |s| s.state = JobState::Suspended);
    let d = decide(&p, &observe(running_job(), None, t0() + Span::seconds(60)));
    apply(&mut p, &d, "sp-2");
    let d = decide(
        &p,
        &observe(
            None,
            completed("s3://lake/sp/sp-2.json"),
            t0() + Span::seconds(62),
        ),
    );
    apply(&mut p, &d, "");
    let (s, m) = pipeline_health(&p);
    assert_eq!(s, "Suspended", "{m}");
    assert!(m.contains("savepoint"), "{m}");
}

#[test]
fn a_rolled_back_upgrade_is_degraded_until_the_spec_changes() {
    let mut p = deployed();
    edit(&mut p, |s| {
        s.image = Some("ghcr.io/tidewater/runtime:broken".into());
    });
    let d = decide(&p, &observe(running_job(), None, t0() + Span::seconds(60)));
    apply(&mut p, &d, "sp-4");
    let d = decide(
        &p,
        &observe(
            None,
            completed("s3://lake/sp/sp-4.json"),
            t0() + Span::seconds(65),
        ),
    );
    apply(&mut p, &d, "");
    let d = decide(&p, &observe(None, None, t0() + Span::seconds(65 + 301)));
    apply(&mut p, &d, "");
    let (s, m) = pipeline_health(&p);
    assert_eq!(s, "Degraded", "rolling back: {m}");
    assert!(m.starts_with("UpgradeTimedOut"), "{m}");
    // Back on the old spec and running: still Degraded, the desired spec does not run.
    let d = decide(&p, &observe(running_job(), None, t0() + Span::seconds(400)));
    apply(&mut p, &d, "");
    assert_eq!(pipeline_health(&p).0, "Degraded");
    // A new spec is tried: its generation is not degraded (yet).
    edit(&mut p, |s| {
        s.image = Some("ghcr.io/tidewater/runtime:0.2.1".into());
    });
    let (s, m) = pipeline_health(&p);
    assert_eq!(s, "Progressing", "{m}");
}

#[test]
fn an_invalid_spec_or_a_failed_job_is_degraded_with_the_reason() {
    let mut p = deployed();
    edit(&mut p, |s| s.checkpoint.interval = "soon".into());
    // What the reconciler writes for a spec CEL let through but validation refuses.
    let mut status = p.status.clone().unwrap();
    status.observed_generation = p.metadata.generation;
    status.conditions.retain(|c| c.type_ != "Degraded");
    status.conditions.push(conditions::invalid_spec(
        "spec.checkpoint.interval: not a duration",
        p.metadata.generation,
        t0(),
    ));
    p.status = Some(status);
    let (s, m) = pipeline_health(&p);
    assert_eq!(s, "Degraded");
    assert!(m.contains("spec.checkpoint.interval"), "{m}");

    // `Failed` is in the CRD's lifecycle enum though no decision writes it today.
    let mut p = deployed();
    p.status.as_mut().unwrap().lifecycle_state =
        Some(tidewater_crds::status::LifecycleState::Failed);
    assert_eq!(pipeline_health(&p).0, "Degraded");
}

fn policy() -> CompactionPolicy {
    common::policy("", "lake")
}

/// `p` with the status the reconciler derives from `runs`.
fn with_status(mut p: CompactionPolicy, runs: &[FinishedRun]) -> CompactionPolicy {
    let now = chrono::DateTime::parse_from_rfc3339("2026-11-21T10:07:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    p.status = Some(status(&p, runs, now).0);
    p
}

#[test]
fn a_compaction_policy_is_healthy_when_scheduled_degraded_when_its_run_failed() {
    let p = policy();
    assert_eq!(health("CompactionPolicy", &p).0, "Progressing");

    let p = with_status(policy(), &[]);
    let (s, m) = health("CompactionPolicy", &p);
    assert_eq!(s, "Healthy", "{m}");
    assert!(m.starts_with("next run 2026-11-21T10:30:00"), "{m}");

    let failed = FinishedRun {
        job: "clicks-maintenance-run-8".into(),
        succeeded: false,
        finished_at: "2026-11-21T10:05:00Z".into(),
        report: Some("catalog: connection refused".into()),
    };
    let p = with_status(policy(), &[failed]);
    let (s, m) = health("CompactionPolicy", &p);
    assert_eq!(s, "Degraded");
    assert!(m.contains("connection refused"), "{m}");

    let mut p = with_status(policy(), &[]);
    p.spec.suspend = true;
    p = with_status(p, &[]);
    assert_eq!(health("CompactionPolicy", &p).0, "Suspended");

    let mut p = with_status(policy(), &[]);
    p.metadata.generation = Some(3);
    let (s, m) = health("CompactionPolicy", &p);
    assert_eq!(s, "Progressing");
    assert!(m.contains("generation 3"), "{m}");
}
