//! Object storage: `spec.storage.s3` plus credentials from mounted files or the environment,
//! turned into Iceberg FileIO properties and into an opendal operator for the state store.
//! Reading the credential sources is the only I/O here.

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

#[cfg(test)]
mod tests {
    use super::*;

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
