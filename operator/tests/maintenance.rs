//! CompactionPolicy → children and status (pure): pipelineRef resolution, the CronJob and its
//! hardened Job pods, a Job per new runNonce, and status read back from finished Jobs.

mod common;

use tidewater_crds::{CompactionPolicy, IngestionPipeline};
use tidewater_operator::policy::decide::{
    FinishedRun, POLICY_LABEL, children, cron_name, resolve, run_job_name, status,
};

fn policy(extra: &str) -> CompactionPolicy {
    let mut p = common::policy(extra, "lake");
    p.metadata.generation = Some(3);
    p
}

fn pipeline() -> IngestionPipeline {
    let mut p: IngestionPipeline =
        serde_yaml::from_str(include_str!("fixtures/clicks.yaml")).unwrap();
    p.metadata.namespace = Some("lake".into());
    p
}

#[test]
fn a_scheduled_policy_becomes_a_hardened_cronjob() {
    let p = policy("");
    let kids = children(&p, &p.spec, "tidewater:1", &Default::default());
    let cron = kids.cron.expect("scheduled");
    assert_eq!(
        cron.metadata.name.as_deref(),
        Some("clicks-maintenance-compaction")
    );
    assert_eq!(
        cron_name("clicks-maintenance"),
        "clicks-maintenance-compaction"
    );
    let spec = cron.spec.unwrap();
    assert_eq!(spec.schedule, "*/30 * * * *");
    assert_eq!(spec.concurrency_policy.as_deref(), Some("Forbid"));
    assert_eq!(spec.suspend, Some(false));
    let owner = &cron.metadata.owner_references.unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("CompactionPolicy", "uid-cp")
    );
    let template = spec.job_template;
    assert_eq!(
        template.metadata.unwrap().labels.unwrap()[POLICY_LABEL],
        "clicks-maintenance"
    );
    let job = template.spec.unwrap();
    assert_eq!(job.backoff_limit, Some(0));
    let pod = job.template.spec.unwrap();
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    assert_eq!(pod.automount_service_account_token, Some(false));
    let c = &pod.containers[0];
    assert_eq!(
        c.args.clone().unwrap(),
        [
            "compact",
            "-f",
            "/etc/tidewater/policy.yaml",
            "--once",
            "--report",
            "/dev/termination-log"
        ]
    );
    let sec = c.security_context.clone().unwrap();
    assert_eq!(sec.read_only_root_filesystem, Some(true));
    assert_eq!(sec.capabilities.unwrap().drop.unwrap(), ["ALL"]);
    let file = &kids.config.data.unwrap()["policy.yaml"];
    assert!(file.contains("kind: CompactionPolicy") && file.contains("analytics.clicks"));
    assert!(kids.run.is_none(), "no runNonce, no manual run");
}

#[test]
fn a_new_run_nonce_makes_one_job() {
    let mut p = policy("  runNonce: 7\n");
    let kids = children(&p, &p.spec, "tidewater:1", &Default::default());
    let job = kids.run.expect("a manual run");
    assert_eq!(
        job.metadata.name.as_deref(),
        Some("clicks-maintenance-run-7")
    );
    assert_eq!(
        run_job_name("clicks-maintenance", 7),
        "clicks-maintenance-run-7"
    );
    let (s, _) = status(&p, &[], chrono::Utc::now());
    assert_eq!(s.last_run_nonce, Some(7));
    p.status = Some(s);
    assert!(
        children(&p, &p.spec, "tidewater:1", &Default::default())
            .run
            .is_none(),
        "once per value"
    );
}

#[test]
fn pipeline_ref_takes_catalog_table_and_secrets_from_the_pipeline() {
    let mut p = policy("");
    p.spec.tables.clear();
    p.spec.catalog = None;
    p.spec.pipeline_ref = Some("clicks".into());
    let err = resolve(&p, None).unwrap_err();
    assert_eq!(
        err,
        "spec.pipelineRef: IngestionPipeline clicks not found in this namespace"
    );
    let ip = pipeline();
    let spec = resolve(&p, Some(&ip)).unwrap();
    assert_eq!(
        Some(spec.tables),
        ip.spec.sink.table.clone().map(|t| vec![t])
    );
    assert_eq!(spec.catalog.as_ref(), Some(&ip.spec.sink.catalog));
    assert_eq!(spec.secret_env, ip.spec.secret_env);
    assert_eq!(spec.secret_mounts, ip.spec.secret_mounts);
    assert!(spec.pipeline_ref.is_none());

    // A routed pipeline: the tables its status lists.
    let mut routed = pipeline();
    routed.spec.sink.table = None;
    routed.spec.sink.route = Some(tidewater_crds::pipeline::RouteSpec {
        table: Some("raw.{topic}".into()),
        rules: vec![],
    });
    assert!(
        resolve(&p, Some(&routed)).unwrap().tables.is_empty(),
        "none written yet"
    );
    routed.status = Some(tidewater_crds::pipeline::IngestionPipelineStatus {
        tables: vec!["raw.a".into(), "raw.b".into()],
        ..Default::default()
    });
    assert_eq!(
        resolve(&p, Some(&routed)).unwrap().tables,
        ["raw.a", "raw.b"]
    );
}

#[test]
fn status_comes_from_the_newest_finished_job_with_events_once() {
    let mut p = policy("");
    let report = serde_json::json!({
        "run": {"start": "2026-11-21T10:00:00Z", "end": "2026-11-21T10:00:05Z", "result": "Succeeded"},
        "tables": [{"table": "analytics.clicks", "filesRewritten": 40, "bytesRewritten": 1000,
                    "filesWritten": 1, "hotPartitionsSkipped": 1, "groupsConflicted": 0,
                    "snapshotsExpired": 3, "expiredFilesDeleted": 9, "orphansRemoved": 0,
                    "manifestsMerged": 0}]
    });
    let runs = vec![FinishedRun {
        job: "clicks-maintenance-compaction-1".into(),
        succeeded: true,
        finished_at: "2026-11-21T10:00:06Z".into(),
        report: Some(report.to_string()),
    }];
    let now = chrono::DateTime::parse_from_rfc3339("2026-11-21T10:07:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let (s, notes) = status(&p, &runs, now);
    assert_eq!(s.last_run.as_ref().unwrap().result, "Succeeded");
    assert_eq!(s.tables[0].files_rewritten, 40);
    assert_eq!(s.next_run.as_deref(), Some("2026-11-21T10:30:00+00:00"));
    assert_eq!(s.observed_generation, Some(3));
    assert_eq!(notes.len(), 1);
    assert_eq!(notes[0].reason, "MaintenanceRun");
    let ready = s.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(ready.status, "True");
    p.status = Some(s);
    let (_, again) = status(&p, &runs, now);
    assert!(again.is_empty(), "the same run is reported once");

    // A failed Job without a report: Degraded, a warning Event naming the job.
    let failed = vec![FinishedRun {
        job: "clicks-maintenance-run-8".into(),
        succeeded: false,
        finished_at: "2026-11-21T11:00:00Z".into(),
        report: Some("catalog: connection refused".into()),
    }];
    let (s, notes) = status(&p, &failed, now);
    assert_eq!(s.last_run.as_ref().unwrap().result, "Failed");
    let degraded = s.conditions.iter().find(|c| c.type_ == "Degraded").unwrap();
    assert_eq!(degraded.status, "True");
    assert!(
        degraded.message.contains("connection refused"),
        "{}",
        degraded.message
    );
    assert!(notes[0].warning && notes[0].message.contains("clicks-maintenance-run-8"));
}
