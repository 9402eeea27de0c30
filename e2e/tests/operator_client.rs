//! The operator's coordinator client against a real coordinator process (and a real worker,
//! broker and catalog): status, live rescale, savepoints, and errors as the API gives them.

use std::time::{Duration, Instant};
use tidewater_crds::job_api::{RunState, SavepointState};

use anyhow::{Context, Result};
use tidewater_e2e::{Broker, PipelineSpec, Tidewater};
use tidewater_operator::job_client::{JobClient, JobError};

#[test]
fn job_client_against_a_real_coordinator() -> Result<()> {
    let broker = Broker::start()?;
    broker.create_topic("clicks", 2)?;
    let dir = tempfile::tempdir()?;
    let spec = PipelineSpec::clicks(dir.path(), &broker.bootstrap, "clicks");
    let file = dir.path().join("pipeline.yaml");
    spec.write(&file)?;
    let producer = broker.producer()?;
    producer.send_events("clicks", 2, 0..500)?;
    producer.flush()?;
    let log = dir.path().join("coordinator.log");
    let mut c = Tidewater::coordinator(&file, &log, None, &["--heartbeat-timeout", "3s"])?;
    c.wait_healthy(Duration::from_secs(60))
        .with_context(|| c.log_text())?;
    let _w1 = Tidewater::worker(&c.url(), "w1", &dir.path().join("w1.log"))?;
    let client = JobClient::new(c.url());
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            let s = client.status().await?;
            if s.active_workers == 1
                && s.last_checkpoint
                    .as_ref()
                    .is_some_and(|c| !c.snapshots.is_empty())
            {
                break s;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "no commit: {s:?}\n{}",
                c.log_text()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(status.state, RunState::Running);
        assert_eq!(status.last_checkpoint.unwrap().snapshots.len(), 1);

        client.set_parallelism(2).await?;
        match client.set_parallelism(0).await {
            Err(JobError::Refused {
                status: 400, body, ..
            }) => assert!(body.contains("at least 1"), "{body}"),
            other => panic!("parallelism 0 must be refused: {other:?}"),
        }
        assert_eq!(client.savepoint("sp-unknown").await?, None);

        let id = client.trigger_savepoint(false).await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let sp = loop {
            let sp = client.savepoint(&id).await?.context("savepoint known")?;
            if sp.state == SavepointState::Completed {
                break sp;
            }
            anyhow::ensure!(
                sp.state == SavepointState::Pending && Instant::now() < deadline,
                "{sp:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let path = sp.path.context("completed savepoint has a path")?;
        assert!(std::path::Path::new(&path).exists(), "{path}");
        assert!(c.stop(Duration::from_secs(30))?.success());
        match client.status().await {
            Err(JobError::Unreachable { .. }) => {}
            other => panic!("a stopped coordinator is unreachable: {other:?}"),
        }
        Ok(())
    })
}
