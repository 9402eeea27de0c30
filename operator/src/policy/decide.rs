//! `CompactionPolicy` → maintenance children and status. Pure: the resolved policy (a
//! `pipelineRef` filled in from its pipeline), the ConfigMap with the policy file, a CronJob
//! for the schedule, a Job for a new `runNonce`, and the status read back from finished Jobs
//! (each Job's pod writes its run report to the termination message).

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        batch::v1::{CronJob, CronJobSpec, Job, JobSpec, JobTemplateSpec},
        core::v1::{
            ConfigMap, ConfigMapVolumeSource, Container, EmptyDirVolumeSource, PodSpec,
            PodTemplateSpec, Volume, VolumeMount,
        },
    },
    apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time},
};
use kube::{Resource, ResourceExt};
use tidewater_crds::{
    CompactionPolicy, CompactionPolicySpec, CompactionPolicyStatus, IngestionPipeline,
    compaction::{RunSummary, TableReport},
    cron::Schedule,
};

use crate::{
    conditions,
    pipeline::children::{container_security, pod_security, secret_env_vars, secret_volumes},
    pod_otel::PodOtlp,
};

/// Label on every Job of a policy.
pub const POLICY_LABEL: &str = "tidewater.dev/compaction-policy";
/// Where the policy file is mounted in maintenance pods.
pub const POLICY_DIR: &str = "/etc/tidewater";

/// The policy as the runtime runs it: `pipelineRef` replaced by the pipeline's catalog,
/// storage, table and secrets.
pub fn resolve(
    policy: &CompactionPolicy,
    pipeline: Option<&IngestionPipeline>,
) -> Result<CompactionPolicySpec, String> {
    let mut spec = policy.spec.clone();
    let Some(name) = &spec.pipeline_ref else {
        return Ok(spec);
    };
    let p = pipeline.ok_or_else(|| {
        format!("spec.pipelineRef: IngestionPipeline {name} not found in this namespace")
    })?;
    spec.pipeline_ref = None;
    // A routed pipeline's tables are the ones its status lists.
    spec.tables = match &p.spec.sink.table {
        Some(table) => vec![table.clone()],
        None => p
            .status
            .as_ref()
            .map(|s| s.tables.clone())
            .unwrap_or_default(),
    };
    if spec.catalog.is_none() {
        spec.catalog = Some(p.spec.sink.catalog.clone());
    }
    if spec.storage.is_none() {
        spec.storage = p.spec.storage.clone();
    }
    for e in &p.spec.secret_env {
        if !spec.secret_env.iter().any(|s| s.name == e.name) {
            spec.secret_env.push(e.clone());
        }
    }
    for m in &p.spec.secret_mounts {
        if !spec
            .secret_mounts
            .iter()
            .any(|s| s.mount_path == m.mount_path)
        {
            spec.secret_mounts.push(m.clone());
        }
    }
    Ok(spec)
}

/// Names of a policy's children.
pub fn config_name(policy: &str) -> String {
    format!("{policy}-policy")
}

/// CronJob name.
pub fn cron_name(policy: &str) -> String {
    format!("{policy}-compaction")
}

/// Job name of a manual run.
pub fn run_job_name(policy: &str, nonce: i64) -> String {
    format!("{policy}-run-{}", nonce.unsigned_abs())
}

/// The desired children.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyChildren {
    /// The policy file.
    pub config: ConfigMap,
    /// The schedule (None: no schedule, or suspended with no schedule).
    pub cron: Option<CronJob>,
    /// A manual run for a new `runNonce`.
    pub run: Option<Job>,
}

fn meta(policy: &CompactionPolicy, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: policy.namespace(),
        labels: Some(BTreeMap::from([
            ("app.kubernetes.io/name".into(), "tidewater".into()),
            ("app.kubernetes.io/component".into(), "compaction".into()),
            (POLICY_LABEL.into(), policy.name_any()),
        ])),
        owner_references: policy.controller_owner_ref(&()).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

fn job_spec(
    policy: &CompactionPolicy,
    spec: &CompactionPolicySpec,
    image: &str,
    otlp: &PodOtlp,
) -> JobSpec {
    let overrides = spec.pod_template.clone().unwrap_or_default();
    let mut labels = overrides.labels.clone();
    labels.insert(POLICY_LABEL.into(), policy.name_any());
    let (mut volumes, mut mounts) = secret_volumes(&spec.secret_mounts);
    volumes.push(Volume {
        name: "policy".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: config_name(&policy.name_any()),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    });
    volumes.push(Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    });
    mounts.push(VolumeMount {
        name: "policy".into(),
        mount_path: POLICY_DIR.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    });
    mounts.push(VolumeMount {
        name: "tmp".into(),
        mount_path: "/tmp".into(),
        ..VolumeMount::default()
    });
    let mut env = secret_env_vars(&spec.secret_env);
    env.extend(
        overrides
            .env
            .iter()
            .map(|(k, v)| k8s_openapi::api::core::v1::EnvVar {
                name: k.clone(),
                value: Some(v.clone()),
                ..Default::default()
            }),
    );
    let taken = env.iter().map(|v| v.name.clone()).collect();
    env.extend(otlp.env(
        &policy.name_any(),
        &policy.namespace().unwrap_or_default(),
        "maintenance",
        &taken,
    ));
    JobSpec {
        backoff_limit: Some(0),
        ttl_seconds_after_finished: Some(86_400),
        template: PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(labels),
                annotations: (!overrides.annotations.is_empty())
                    .then_some(overrides.annotations.clone()),
                ..ObjectMeta::default()
            }),
            spec: Some(PodSpec {
                restart_policy: Some("Never".into()),
                containers: vec![Container {
                    name: "compact".into(),
                    image: Some(image.into()),
                    args: Some(
                        [
                            "compact",
                            "-f",
                            &format!("{POLICY_DIR}/policy.yaml"),
                            "--once",
                            "--report",
                            "/dev/termination-log",
                        ]
                        .iter()
                        .map(ToString::to_string)
                        .collect(),
                    ),
                    env: Some(env),
                    volume_mounts: Some(mounts),
                    working_dir: Some("/tmp".into()),
                    termination_message_policy: Some("FallbackToLogsOnError".into()),
                    security_context: Some(container_security()),
                    ..Container::default()
                }],
                volumes: Some(volumes),
                automount_service_account_token: Some(false),
                node_selector: (!overrides.node_selector.is_empty())
                    .then_some(overrides.node_selector),
                tolerations: (!overrides.tolerations.is_empty()).then_some(overrides.tolerations),
                affinity: overrides.affinity,
                image_pull_secrets: (!overrides.image_pull_secrets.is_empty())
                    .then_some(overrides.image_pull_secrets),
                priority_class_name: overrides.priority_class_name,
                security_context: Some(pod_security()),
                ..PodSpec::default()
            }),
        },
        ..JobSpec::default()
    }
}

/// The policy file the runtime reads: the resolved spec, no status.
pub fn render_policy(policy: &CompactionPolicy, spec: &CompactionPolicySpec) -> String {
    let doc = serde_json::json!({
        "apiVersion": "tidewater.dev/v1alpha1",
        "kind": "CompactionPolicy",
        "metadata": {"name": policy.name_any(), "namespace": policy.namespace()},
        "spec": spec,
    });
    serde_yaml::to_string(&doc).expect("policy serializes")
}

/// Renders the children for `spec` (already resolved).
pub fn children(
    policy: &CompactionPolicy,
    spec: &CompactionPolicySpec,
    image: &str,
    otlp: &PodOtlp,
) -> PolicyChildren {
    let name = policy.name_any();
    let config = ConfigMap {
        metadata: meta(policy, config_name(&name)),
        data: Some(BTreeMap::from([(
            "policy.yaml".to_string(),
            render_policy(policy, spec),
        )])),
        ..ConfigMap::default()
    };
    let cron = spec.schedule.as_ref().map(|schedule| CronJob {
        metadata: meta(policy, cron_name(&name)),
        spec: Some(CronJobSpec {
            schedule: schedule.clone(),
            time_zone: Some("Etc/UTC".into()),
            suspend: Some(spec.suspend),
            concurrency_policy: Some("Forbid".into()),
            successful_jobs_history_limit: Some(3),
            failed_jobs_history_limit: Some(3),
            job_template: JobTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(BTreeMap::from([(POLICY_LABEL.into(), name.clone())])),
                    ..ObjectMeta::default()
                }),
                spec: Some(job_spec(policy, spec, image, otlp)),
            },
            ..CronJobSpec::default()
        }),
        ..CronJob::default()
    });
    let last_nonce = policy.status.as_ref().and_then(|s| s.last_run_nonce);
    let run = spec
        .run_nonce
        .filter(|n| Some(*n) != last_nonce)
        .map(|nonce| Job {
            metadata: meta(policy, run_job_name(&name, nonce)),
            spec: Some(job_spec(policy, spec, image, otlp)),
            ..Job::default()
        });
    PolicyChildren { config, cron, run }
}

/// A finished maintenance Job as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedRun {
    /// Job name.
    pub job: String,
    /// Whether the Job succeeded.
    pub succeeded: bool,
    /// When it finished (RFC 3339).
    pub finished_at: String,
    /// The pod's termination message (the run report), if any.
    pub report: Option<String>,
}

/// Something to tell users as an Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyNote {
    /// Event reason.
    pub reason: String,
    /// Event message.
    pub message: String,
    /// Warning (else Normal).
    pub warning: bool,
}

impl PolicyNote {
    /// The result of the finished run this note reports (`succeeded` or `failed`), for the
    /// `maintenance_runs` metric; `None` for notes about anything else.
    pub fn run_result(&self) -> Option<&'static str> {
        match self.reason.as_str() {
            "MaintenanceRun" => Some("succeeded"),
            "MaintenanceFailed" => Some("failed"),
            _ => None,
        }
    }
}

fn condition(
    type_: &str,
    is_true: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: if is_true { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        last_transition_time: now.clone(),
        observed_generation: generation,
    }
}

/// The status after observing `runs` (newest last), plus Events for what is new.
pub fn status(
    policy: &CompactionPolicy,
    runs: &[FinishedRun],
    now: chrono::DateTime<chrono::Utc>,
) -> (CompactionPolicyStatus, Vec<PolicyNote>) {
    let previous = policy.status.clone().unwrap_or_default();
    let mut s = previous.clone();
    let mut notes = Vec::new();
    let generation = policy.metadata.generation;
    s.observed_generation = generation;
    s.next_run = match (&policy.spec.schedule, policy.spec.suspend) {
        (Some(text), false) => Schedule::parse(text)
            .ok()
            .and_then(|sch| sch.next_after(now))
            .map(|t| t.to_rfc3339()),
        _ => None,
    };
    if let Some(n) = policy.spec.run_nonce {
        s.last_run_nonce = Some(n);
    }
    if let Some(run) = runs.last() {
        let parsed: Option<serde_json::Value> = run
            .report
            .as_deref()
            .and_then(|r| serde_json::from_str(r).ok());
        let summary: Option<RunSummary> = parsed
            .as_ref()
            .and_then(|v| serde_json::from_value(v["run"].clone()).ok());
        let tables: Vec<TableReport> = parsed
            .as_ref()
            .and_then(|v| serde_json::from_value(v["tables"].clone()).ok())
            .unwrap_or_default();
        let summary = match (summary, run.succeeded) {
            (Some(sum), _) => sum,
            (None, ok) => RunSummary {
                start: run.finished_at.clone(),
                end: run.finished_at.clone(),
                result: if ok { "Succeeded" } else { "Failed" }.into(),
                message: (!ok).then(|| {
                    format!(
                        "job {} failed{}",
                        run.job,
                        run.report
                            .as_deref()
                            .map(|r| format!(": {r}"))
                            .unwrap_or_default()
                    )
                }),
            },
        };
        let is_new = previous.last_run.as_ref().map(|r| &r.end) != Some(&summary.end);
        if is_new {
            let failed = summary.result == "Failed" || !run.succeeded;
            notes.push(PolicyNote {
                reason: if failed {
                    "MaintenanceFailed"
                } else {
                    "MaintenanceRun"
                }
                .into(),
                message: format!(
                    "{}: {}{}",
                    run.job,
                    summary.result,
                    summary
                        .message
                        .as_deref()
                        .map(|m| format!(" ({m})"))
                        .unwrap_or_default()
                ),
                warning: failed,
            });
        }
        s.tables = tables;
        s.last_run = Some(summary);
    }
    let now_t = conditions::time(now);
    let failed = s.last_run.as_ref().is_some_and(|r| r.result == "Failed");
    s.conditions = vec![
        condition(
            "Ready",
            true,
            "Scheduled",
            match &s.next_run {
                Some(n) => format!("next run {n}"),
                None if policy.spec.suspend => "suspended".into(),
                None => "runs only when runNonce changes".into(),
            },
            generation,
            &now_t,
        ),
        condition(
            "Degraded",
            failed,
            if failed { "LastRunFailed" } else { "LastRunOk" },
            s.last_run
                .as_ref()
                .and_then(|r| r.message.clone())
                .unwrap_or_default(),
            generation,
            &now_t,
        ),
    ];
    // Keep transition times of unchanged conditions.
    for c in &mut s.conditions {
        if let Some(old) = previous
            .conditions
            .iter()
            .find(|o| o.type_ == c.type_ && o.status == c.status)
        {
            c.last_transition_time = old.last_transition_time.clone();
        }
    }
    (s, notes)
}

/// What a policy's reconcile observed besides the policy.
#[derive(Debug, Clone)]
pub struct PolicyObserved {
    /// The pipeline `pipelineRef` names, when it exists.
    pub pipeline: Option<IngestionPipeline>,
    /// The policy's finished Jobs, oldest first.
    pub runs: Vec<FinishedRun>,
    /// When the observation was made.
    pub now: chrono::DateTime<chrono::Utc>,
    /// The runtime image when the policy names none.
    pub default_image: String,
    /// Where the rendered pods send OpenTelemetry.
    pub pods_otlp: PodOtlp,
}

/// What to do for a policy.
#[derive(Debug, Clone)]
pub struct PolicyDecision {
    /// Children to apply; none for a policy that cannot run as written.
    pub children: Option<PolicyChildren>,
    /// A CronJob to delete if it exists (the policy has no schedule, or it is suspended).
    pub remove_cron: Option<String>,
    /// Why the policy cannot run as written (`status` carries the `Degraded` condition).
    pub invalid: Option<String>,
    /// Events, in order.
    pub notes: Vec<PolicyNote>,
    /// The new status.
    pub status: CompactionPolicyStatus,
    /// When to look again.
    pub requeue: std::time::Duration,
}

/// The one decision of a reconcile: validate, resolve, render the children, fold the finished
/// runs into the status.
pub fn decide(policy: &CompactionPolicy, obs: &PolicyObserved) -> PolicyDecision {
    let errors = tidewater_crds::compaction::validate_policy(&policy.spec);
    let resolved = if errors.is_empty() {
        resolve(policy, obs.pipeline.as_ref())
    } else {
        Err(errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; "))
    };
    let spec = match resolved {
        Ok(spec) => spec,
        Err(message) => {
            let mut status = policy.status.clone().unwrap_or_default();
            status.observed_generation = policy.metadata.generation;
            status.conditions = vec![conditions::invalid_spec(
                &message,
                policy.metadata.generation,
                obs.now,
            )];
            return PolicyDecision {
                children: None,
                remove_cron: None,
                notes: Vec::new(),
                invalid: Some(message),
                status,
                requeue: std::time::Duration::from_secs(60),
            };
        }
    };
    let image = spec
        .image
        .clone()
        .unwrap_or_else(|| obs.default_image.clone());
    let kids = children(policy, &spec, &image, &obs.pods_otlp);
    let mut notes: Vec<PolicyNote> = kids
        .run
        .iter()
        .map(|job| PolicyNote {
            reason: "RunRequested".into(),
            message: format!("job {}", job.name_any()),
            warning: false,
        })
        .collect();
    let (status, more) = status(policy, &obs.runs, obs.now);
    notes.extend(more);
    PolicyDecision {
        remove_cron: kids.cron.is_none().then(|| cron_name(&policy.name_any())),
        children: Some(kids),
        invalid: None,
        notes,
        status,
        // Finished Jobs wake the controller (watched); the schedule's next run refreshes
        // nextRun.
        requeue: std::time::Duration::from_secs(300),
    }
}
