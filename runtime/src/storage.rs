//! Object storage: `spec.storage.s3` plus credentials from mounted files or the environment,
//! turned into Iceberg FileIO properties and into an opendal operator; and the one listing of
//! files under a location, local or S3 (the state store and orphan removal both use it).

use std::collections::BTreeMap;

use opendal::Operator;
use tidewater_crds::pipeline::S3Spec;

use crate::secret::SecretRef;

/// Credentials and settings could not be assembled.
#[derive(Debug, thiserror::Error)]
#[error("spec.storage.s3: {0}")]
pub struct StorageError(pub String);

/// A credential from its file when the spec names one, else from the standard variable
/// (optional: an unset `AWS_SESSION_TOKEN` is normal).
fn secret(file: Option<&str>, field: &str, env: &str) -> Result<Option<String>, StorageError> {
    match file {
        Some(_) => SecretRef {
            file,
            file_field: field,
            env: None,
            env_field: "",
        }
        .read()
        .map_err(|e| StorageError(e.to_string())),
        None => Ok(std::env::var(env).ok().filter(|v| !v.is_empty())),
    }
}

/// Iceberg FileIO properties (`s3.*`) for the settings, with credentials resolved.
pub fn s3_properties(s3: &S3Spec) -> Result<BTreeMap<String, String>, StorageError> {
    let mut props = BTreeMap::new();
    if let Some(e) = &s3.endpoint {
        props.insert("s3.endpoint".into(), e.clone());
    }
    let region = s3
        .region
        .clone()
        .or_else(|| std::env::var("AWS_REGION").ok())
        .unwrap_or_else(|| "us-east-1".into());
    props.insert("s3.region".into(), region);
    props.insert(
        "s3.path-style-access".into(),
        s3.path_style_access.to_string(),
    );
    let pairs = [
        (
            "s3.access-key-id",
            s3.access_key_id_file.as_deref(),
            "accessKeyIdFile",
            "AWS_ACCESS_KEY_ID",
        ),
        (
            "s3.secret-access-key",
            s3.secret_access_key_file.as_deref(),
            "secretAccessKeyFile",
            "AWS_SECRET_ACCESS_KEY",
        ),
        (
            "s3.session-token",
            s3.session_token_file.as_deref(),
            "sessionTokenFile",
            "AWS_SESSION_TOKEN",
        ),
    ];
    for (key, file, field, env) in pairs {
        if let Some(v) = secret(file, field, env)? {
            props.insert(key.into(), v);
        }
    }
    Ok(props)
}

/// Splits `s3://bucket/key/parts` into the bucket and the key (without leading slash).
pub fn split_s3(uri: &str) -> Option<(&str, &str)> {
    let rest = uri
        .strip_prefix("s3://")
        .or_else(|| uri.strip_prefix("s3a://"))?;
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    (!bucket.is_empty()).then_some((bucket, key.trim_matches('/')))
}

/// An opendal operator on `bucket` configured like the Iceberg FileIO.
pub fn s3_operator(
    bucket: &str,
    props: &BTreeMap<String, String>,
) -> Result<Operator, StorageError> {
    let mut b = opendal::services::S3::default().bucket(bucket).root("/");
    if let Some(e) = props.get("s3.endpoint") {
        b = b.endpoint(e);
    }
    if let Some(r) = props.get("s3.region") {
        b = b.region(r);
    }
    if props.get("s3.path-style-access").map(String::as_str) != Some("true") {
        b = b.enable_virtual_host_style();
    }
    if let Some(v) = props.get("s3.access-key-id") {
        b = b.access_key_id(v);
    }
    if let Some(v) = props.get("s3.secret-access-key") {
        b = b.secret_access_key(v);
    }
    if let Some(v) = props.get("s3.session-token") {
        b = b.session_token(v);
    }
    Ok(Operator::new(b)
        .map_err(|e| StorageError(format!("bucket {bucket}: {e}")))?
        .finish())
}

/// A file found by [`list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Where it is, in the form of the listed location (a path, `file://…` or `s3://…`).
    pub uri: String,
    /// Its name (the last segment).
    pub name: String,
    /// Last modified, milliseconds since the epoch; 0 unless asked for, or unknown.
    pub modified_ms: i64,
}

/// A location could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    /// Local filesystem.
    #[error("list {path}: {source}")]
    Io {
        /// The directory or file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Object store.
    #[error("list {path}: {source}")]
    Object {
        /// The prefix or object.
        path: String,
        /// Why.
        source: opendal::Error,
    },
    /// The bucket's settings.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// How deep [`list`] looks and what it reports.
#[derive(Debug, Clone, Copy, Default)]
pub struct ListOptions {
    /// Every file below the location, not only its direct children.
    pub recursive: bool,
    /// Modification times (one stat per object on S3).
    pub modified: bool,
}

/// The files under `location` (an absolute path, `file://…` or `s3://bucket/prefix`); a
/// location that does not exist lists as empty.
pub async fn list(
    location: &str,
    s3_props: &BTreeMap<String, String>,
    options: ListOptions,
) -> Result<Vec<Listed>, ListError> {
    match split_s3(location) {
        Some((bucket, prefix)) => {
            list_objects(&s3_operator(bucket, s3_props)?, bucket, prefix, options).await
        }
        None => {
            let location = location.to_string();
            tokio::task::spawn_blocking(move || list_local(&location, options))
                .await
                .expect("listing task panicked")
        }
    }
}

fn list_local(location: &str, options: ListOptions) -> Result<Vec<Listed>, ListError> {
    let scheme = if location.starts_with("file://") {
        "file://"
    } else {
        ""
    };
    let io = |path: &std::path::Path| {
        let path = path.display().to_string();
        move |source| ListError::Io { path, source }
    };
    let mut out = Vec::new();
    let mut stack = vec![std::path::PathBuf::from(
        location.strip_prefix("file://").unwrap_or(location),
    )];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(&dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io(&dir))?;
            let path = entry.path();
            let meta = entry.metadata().map_err(io(&path))?;
            if meta.is_dir() {
                if options.recursive {
                    stack.push(path);
                }
                continue;
            }
            let modified_ms = if options.modified {
                meta.modified()
                    .map_err(io(&path))?
                    .duration_since(std::time::SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            } else {
                0
            };
            out.push(Listed {
                uri: format!("{scheme}{}", path.display()),
                name: entry.file_name().to_string_lossy().into_owned(),
                modified_ms,
            });
        }
    }
    Ok(out)
}

/// [`list`] under `prefix` of `bucket` with an operator the caller already holds.
pub async fn list_objects(
    op: &Operator,
    bucket: &str,
    prefix: &str,
    options: ListOptions,
) -> Result<Vec<Listed>, ListError> {
    let dir = format!("{prefix}/");
    let object = |path: &str| {
        let path = format!("s3://{bucket}/{path}");
        move |source| ListError::Object { path, source }
    };
    let entries = match op.list_with(&dir).recursive(options.recursive).await {
        Ok(e) => e,
        Err(e) if e.kind() == opendal::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(object(&dir)(e)),
    };
    let mut out = Vec::new();
    for e in entries {
        if e.metadata().is_dir() {
            continue;
        }
        let modified_ms = if options.modified {
            op.stat(e.path())
                .await
                .map_err(object(e.path()))?
                .last_modified()
                .map_or(0, |t| t.into_inner().as_millisecond())
        } else {
            0
        };
        out.push(Listed {
            uri: format!("s3://{bucket}/{}", e.path()),
            name: e.name().to_string(),
            modified_ms,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lists_local_files_flat_or_recursively() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("top.json"), "1").unwrap();
        std::fs::write(dir.path().join("a/b/deep.parquet"), "2").unwrap();
        let root = dir.path().display().to_string();
        let names = |v: Vec<Listed>| {
            let mut n: Vec<String> = v.into_iter().map(|l| l.name).collect();
            n.sort();
            n
        };
        let flat = list(&root, &BTreeMap::new(), ListOptions::default())
            .await
            .unwrap();
        assert_eq!(names(flat), ["top.json"]);
        let options = ListOptions {
            recursive: true,
            modified: true,
        };
        let all = list(&format!("file://{root}"), &BTreeMap::new(), options)
            .await
            .unwrap();
        assert!(
            all.iter()
                .all(|l| l.uri.starts_with("file:///") && l.modified_ms > 0)
        );
        assert_eq!(names(all), ["deep.parquet", "top.json"]);
        let missing = format!("{root}/nothing-here");
        assert!(
            list(&missing, &BTreeMap::new(), options)
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn splits_s3_uris() {
        assert_eq!(split_s3("s3://b/wh/x/"), Some(("b", "wh/x")));
        assert_eq!(split_s3("s3://b"), Some(("b", "")));
        assert_eq!(split_s3("file:///tmp"), None);
        assert_eq!(split_s3("s3:///k"), None);
    }

    #[test]
    fn credentials_come_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let id = dir.path().join("id");
        let key = dir.path().join("key");
        std::fs::write(&id, "AKIA\n").unwrap();
        std::fs::write(&key, "s3cr3t").unwrap();
        let spec = S3Spec {
            endpoint: Some("http://127.0.0.1:9000".into()),
            region: Some("eu-west-1".into()),
            path_style_access: true,
            access_key_id_file: Some(id.display().to_string()),
            secret_access_key_file: Some(key.display().to_string()),
            session_token_file: None,
        };
        let p = s3_properties(&spec).unwrap();
        assert_eq!(p["s3.access-key-id"], "AKIA");
        assert_eq!(p["s3.secret-access-key"], "s3cr3t");
        assert_eq!(p["s3.path-style-access"], "true");
        assert_eq!(p["s3.region"], "eu-west-1");
        let missing = S3Spec {
            access_key_id_file: Some("/nonexistent/id".into()),
            ..S3Spec::default()
        };
        let e = s3_properties(&missing).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/id"), "{e}");
    }
}
