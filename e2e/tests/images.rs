//! The images scripts/build-images.sh builds, run with podman the way the operator's pods run
//! them: non-root 65532, read-only root filesystem, every capability dropped, /tmp writable.
//! Each answers `--version`; the runtime validates a pipeline and runs it against the test
//! broker until its rows land (read by PyIceberg on the host); the operator prints its CRDs.
//! `scripts/build-images.sh` builds the images; the test command builds them from its debug
//! binaries (`--debug`, tagged `<version>-debug`) because a release build costs about 15
//! minutes on 2 cores. The release images are tested when present, else the debug ones; without
//! podman or either pair this test says SKIPPED and why.

use std::{
    os::unix::fs::PermissionsExt,
    process::{Output, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, ensure};
use tidewater_e2e::{
    Broker, PipelineSpec,
    podman::{built_images, podman},
    wait_for_rows,
};

/// `podman run` hardened as the operator's pods are, with `extra` options before the image.
fn run_hardened(image: &str, extra: &[&str], args: &[&str]) -> Result<Output> {
    let out = podman()
        .args([
            "run",
            "--rm",
            "--read-only",
            "--user",
            "65532",
            "--cap-drop=ALL",
        ])
        .args(["--tmpfs", "/tmp", "--security-opt", "no-new-privileges"])
        .args(extra)
        .arg(image)
        .args(args)
        .output()?;
    Ok(out)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn images_run_hardened_and_the_runtime_image_lands_rows() -> Result<()> {
    let (runtime, operator) = match built_images() {
        Ok(pair) => pair,
        Err(why) => {
            eprintln!("images: SKIPPED ({why})");
            return Ok(());
        }
    };
    for (image, binary) in [(&runtime, "tidewater"), (&operator, "tidewater-operator")] {
        let out = run_hardened(image, &[], &["--version"])?;
        ensure!(out.status.success(), "{image} --version: {}", text(&out));
        ensure!(text(&out).starts_with(binary), "{image}: {}", text(&out));
        let size = podman()
            .args(["image", "inspect", "--format", "{{.Size}}", image])
            .output()?;
        let bytes: u64 = String::from_utf8_lossy(&size.stdout).trim().parse()?;
        eprintln!("images: {image} {} MiB", bytes / (1 << 20));
    }
    // No shell in either image.
    let out = run_hardened(&runtime, &["--entrypoint", "/bin/sh"], &["-c", "true"])?;
    ensure!(!out.status.success(), "a shell ran: {}", text(&out));

    let out = run_hardened(&operator, &[], &["crd"])?;
    ensure!(
        out.status.success() && text(&out).contains("ingestionpipelines.tidewater.dev"),
        "operator crd: {}",
        text(&out)
    );

    // The runtime: the same paths inside and outside, so PyIceberg on the host reads the
    // catalog the container wrote; the directory is writable by 65532.
    let broker = Broker::start()?;
    broker.create_topic("clicks", 2)?;
    let producer = broker.producer()?;
    producer.send_events("clicks", 2, 0..3000)?;
    producer.flush()?;
    let dir = tempfile::tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))?;
    let mut spec = PipelineSpec::clicks(dir.path(), &broker.bootstrap, "clicks");
    spec.interval = "1s".into();
    let file = dir.path().join("pipeline.yaml");
    spec.write(&file)?;
    let volume = format!("{0}:{0}", dir.path().display());
    let file_arg = file.display().to_string();
    let out = run_hardened(&runtime, &["-v", &volume], &["validate", "-f", &file_arg])?;
    ensure!(out.status.success(), "validate: {}", text(&out));

    let name = format!("tidewater-e2e-{}", std::process::id());
    let log = std::fs::File::create(dir.path().join("container.log"))?;
    let mut child = podman()
        .args(["run", "--rm", "--name", &name, "--network", "host"])
        .args([
            "--read-only",
            "--user",
            "65532",
            "--cap-drop=ALL",
            "--tmpfs",
            "/tmp",
        ])
        .args(["-v", &volume, &runtime, "run", "-f", &file_arg])
        .args(["--metrics-addr", "127.0.0.1:0"])
        .stdout(log.try_clone()?)
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()?;
    let landed = wait_for_rows(&spec, 3000, Duration::from_secs(120));
    // SIGTERM through podman: a final checkpoint, then exit 0.
    let stopped = podman().args(["stop", "-t", "30", &name]).output()?;
    let status = child.wait()?;
    let log = std::fs::read_to_string(dir.path().join("container.log"))?;
    let view = landed.with_context(|| format!("rows from the container: {log}"))?;
    ensure!(
        view.pyiceberg_rows == 3000 && view.pyiceberg_distinct == 3000,
        "{view:?}\n{log}"
    );
    ensure!(stopped.status.success(), "podman stop: {}", text(&stopped));
    ensure!(
        status.success(),
        "the container exited with {status}: {log}"
    );
    eprintln!("images: the runtime image ran hardened and landed 3000 rows");
    Ok(())
}
