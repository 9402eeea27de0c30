//! podman as the tests use it (with `images/containers.conf`: runc and the sandbox's ulimits),
//! and the images `scripts/build-images.sh` built: the chart's names at the workspace version,
//! or the test command's `-debug` pair.

use std::process::Command;

use anyhow::{Context, Result};

use crate::repo_root;

/// `podman` with the project's containers.conf.
pub fn podman() -> Command {
    let mut c = Command::new("podman");
    c.env(
        "CONTAINERS_CONF",
        repo_root().join("images/containers.conf"),
    );
    c
}

/// `ghcr.io/tidewater/<name>:<workspace version>`, as the chart names it.
pub fn chart_image(name: &str) -> Result<String> {
    let cargo = std::fs::read_to_string(repo_root().join("Cargo.toml"))?;
    let version = cargo
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .context("workspace version")?;
    Ok(format!("ghcr.io/tidewater/{name}:{version}"))
}

fn exists(image: &str) -> bool {
    podman()
        .args(["image", "exists", image])
        .status()
        .is_ok_and(|s| s.success())
}

/// The built (runtime, operator) images: `TIDEWATER_IMAGE_SUFFIX`'s pair when that is set (the
/// test command sets `-debug`), else the chart's, else the `-debug` pair. `Err` says why there
/// are none here.
pub fn built_images() -> Result<(String, String), String> {
    if podman().arg("--version").output().is_err() {
        return Err("podman is not installed".into());
    }
    let suffixes = match std::env::var("TIDEWATER_IMAGE_SUFFIX") {
        Ok(s) => vec![s],
        Err(_) => vec![String::new(), "-debug".into()],
    };
    let name = |n: &str, suffix: &str| {
        chart_image(n)
            .map(|i| format!("{i}{suffix}"))
            .map_err(|e| e.to_string())
    };
    for suffix in &suffixes {
        let (runtime, operator) = (name("runtime", suffix)?, name("operator", suffix)?);
        if exists(&runtime) && exists(&operator) {
            return Ok((runtime, operator));
        }
    }
    Err(format!(
        "{} with suffix {suffixes:?} is not built (scripts/build-images.sh [--debug])",
        name("runtime", "")?
    ))
}
