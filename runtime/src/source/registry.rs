//! The schema registry side of Avro records: writer schemas fetched by id from a
//! Confluent-compatible registry (cached for the life of the process — an id never changes
//! its schema), and a subject's newest version for tables created on first use. Credentials
//! come from files or environment variables; transient failures are retried, a schema the
//! registry does not have is reported as such (the record is then dead-lettered).

use std::{collections::HashMap, sync::Arc, time::Duration};

use apache_avro::Schema;
use reqwest::StatusCode;
use tidewater_crds::pipeline::{RegistryAuthType, RegistrySpec, SubjectStrategy};

use crate::{
    decode::AvroWriter,
    secret::{SecretError, SecretRef},
};

/// Attempts of one request before the registry counts as unreachable.
const ATTEMPTS: u32 = 6;
/// Time one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A schema registry that cannot serve a schema.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry has no such schema or subject (HTTP 404).
    #[error("schema registry has no {what}")]
    NotFound {
        /// `schema id 7`, `subject orders-value`.
        what: String,
    },
    /// The schema exists but cannot be used.
    #[error("schema id {id}: {reason}")]
    Unusable {
        /// The schema id.
        id: u32,
        /// Why.
        reason: String,
    },
    /// The registry did not answer usefully after retries.
    #[error("schema registry {url}: {reason}")]
    Unavailable {
        /// The request.
        url: String,
        /// The last failure.
        reason: String,
    },
    /// `spec.format.registry` cannot be set up (credentials, CA file).
    #[error("spec.format.registry: {0}")]
    Config(String),
    /// A credential cannot be read.
    #[error(transparent)]
    Secret(#[from] SecretError),
}

/// A writer schema as the registry holds it.
#[derive(Debug)]
pub struct WriterSchema {
    /// The registry's id.
    pub id: u32,
    /// The parsed Avro schema, its named types resolved.
    pub writer: AvroWriter,
    /// The record's full name (`namespace.Name`), when the schema is a record.
    pub full_name: Option<String>,
}

/// A registry client with the writer schemas seen so far.
pub struct Registry {
    client: reqwest::Client,
    base: String,
    auth: Option<String>,
    strategy: SubjectStrategy,
    by_id: HashMap<u32, Arc<WriterSchema>>,
}

impl Registry {
    /// A client for `spec` (credentials read now: a rotated secret is read again on restart).
    pub fn new(spec: &RegistrySpec) -> Result<Self, RegistryError> {
        let mut builder = reqwest::Client::builder().timeout(REQUEST_TIMEOUT);
        if let Some(ca) = &spec.ca_file {
            let bad = |e: String| RegistryError::Config(format!("caFile {ca}: {e}"));
            let pem = std::fs::read(ca).map_err(|e| bad(e.to_string()))?;
            for cert in
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| bad(e.to_string()))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder
            .build()
            .map_err(|e| RegistryError::Config(e.to_string()))?;
        Ok(Self {
            client,
            base: spec.url.trim_end_matches('/').to_string(),
            auth: authorization(spec)?,
            strategy: spec.subject_strategy,
            by_id: HashMap::new(),
        })
    }

    /// The writer schema with `id`.
    pub async fn schema(&mut self, id: u32) -> Result<Arc<WriterSchema>, RegistryError> {
        if let Some(s) = self.by_id.get(&id) {
            return Ok(s.clone());
        }
        let body = self
            .get(&format!("/schemas/ids/{id}"), || format!("schema id {id}"))
            .await?;
        let schema = Arc::new(parse(id, &body)?);
        self.by_id.insert(id, schema.clone());
        Ok(schema)
    }

    /// The newest schema registered under the subject of `writer`'s record read from `topic`
    /// (by the pipeline's subject strategy); `None` when the subject has no version.
    pub async fn latest(
        &mut self,
        topic: &str,
        writer: &WriterSchema,
    ) -> Result<Option<Arc<WriterSchema>>, RegistryError> {
        let record = writer.full_name.as_deref().unwrap_or_default();
        let subject = self.strategy.subject(topic, record);
        let path = format!("/subjects/{}/versions/latest", encode_path(&subject));
        let body = match self.get(&path, || format!("subject {subject}")).await {
            Ok(body) => body,
            Err(RegistryError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let id = body
            .get("id")
            .and_then(serde_json::Value::as_u64)
            .and_then(|id| u32::try_from(id).ok())
            .ok_or_else(|| RegistryError::Unavailable {
                url: format!("{}{path}", self.base),
                reason: "the answer has no schema id".into(),
            })?;
        if let Some(s) = self.by_id.get(&id) {
            return Ok(Some(s.clone()));
        }
        let schema = Arc::new(parse(id, &body)?);
        self.by_id.insert(id, schema.clone());
        Ok(Some(schema))
    }

    async fn get(
        &self,
        path: &str,
        what: impl Fn() -> String,
    ) -> Result<serde_json::Value, RegistryError> {
        let url = format!("{}{path}", self.base);
        let mut last = String::new();
        let mut delay = Duration::from_millis(200);
        for attempt in 1..=ATTEMPTS {
            let mut request = self
                .client
                .get(&url)
                .header("Accept", "application/vnd.schemaregistry.v1+json");
            if let Some(auth) = &self.auth {
                request = request.header("Authorization", auth);
            }
            match request.send().await {
                Ok(r) if r.status() == StatusCode::NOT_FOUND => {
                    return Err(RegistryError::NotFound { what: what() });
                }
                Ok(r) if r.status().is_success() => match r.json().await {
                    Ok(body) => return Ok(body),
                    Err(e) => last = format!("unreadable answer: {e}"),
                },
                Ok(r) if matches!(r.status(), StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
                    return Err(RegistryError::Unavailable {
                        url,
                        reason: format!("{} (check spec.format.registry.auth)", r.status()),
                    });
                }
                Ok(r) => last = format!("HTTP {}", r.status()),
                Err(e) => last = chain(&e),
            }
            if attempt < ATTEMPTS {
                tracing::warn!(%url, attempt, reason = %last, "schema registry request failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(3));
            }
        }
        Err(RegistryError::Unavailable { url, reason: last })
    }
}

/// An error with its causes, `a: b: c`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(&format!(": {s}"));
        source = s.source();
    }
    out
}

/// The `Authorization` header value of `spec.auth`.
fn authorization(spec: &RegistrySpec) -> Result<Option<String>, RegistryError> {
    use base64::Engine as _;
    let Some(auth) = &spec.auth else {
        return Ok(None);
    };
    let missing = |what: &str| RegistryError::Config(format!("auth: {what} is not set"));
    match auth.auth_type {
        RegistryAuthType::Basic => {
            let user = auth
                .username
                .as_deref()
                .ok_or_else(|| missing("username"))?;
            let password = SecretRef {
                file: auth.password_file.as_deref(),
                file_field: "spec.format.registry.auth.passwordFile",
                env: auth.password_env.as_deref(),
                env_field: "spec.format.registry.auth.passwordEnv",
            }
            .read()?
            .ok_or_else(|| missing("passwordFile or passwordEnv"))?;
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            Ok(Some(format!("Basic {token}")))
        }
        RegistryAuthType::Bearer => {
            let token = SecretRef {
                file: auth.token_file.as_deref(),
                file_field: "spec.format.registry.auth.tokenFile",
                env: auth.token_env.as_deref(),
                env_field: "spec.format.registry.auth.tokenEnv",
            }
            .read()?
            .ok_or_else(|| missing("tokenFile or tokenEnv"))?;
            Ok(Some(format!("Bearer {token}")))
        }
    }
}

/// A registry answer (`{"schema": "...", "schemaType"?, "references"?}`) as a writer schema.
fn parse(id: u32, body: &serde_json::Value) -> Result<WriterSchema, RegistryError> {
    let unusable = |reason: String| RegistryError::Unusable { id, reason };
    if let Some(kind) = body.get("schemaType").and_then(serde_json::Value::as_str)
        && !kind.eq_ignore_ascii_case("AVRO")
    {
        return Err(unusable(format!("is a {kind} schema, not Avro")));
    }
    if body
        .get("references")
        .and_then(serde_json::Value::as_array)
        .is_some_and(|r| !r.is_empty())
    {
        return Err(unusable(
            "uses schema references, which Tidewater does not resolve yet".into(),
        ));
    }
    let text = body
        .get("schema")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| unusable("the registry's answer has no schema".into()))?;
    let writer = AvroWriter::parse(text).map_err(|e| unusable(format!("invalid Avro: {e}")))?;
    let full_name = match &writer.schema {
        Schema::Record(r) => Some(r.name.fullname(None)),
        _ => None,
    };
    Ok(WriterSchema {
        id,
        writer,
        full_name,
    })
}

/// `subject` as one URL path segment.
fn encode_path(subject: &str) -> String {
    subject
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_checked_before_use() {
        let ok = serde_json::json!({"schema": r#"{"type":"record","name":"Order","namespace":"shop","fields":[{"name":"id","type":"long"}]}"#});
        let s = parse(3, &ok).unwrap();
        assert_eq!(s.full_name.as_deref(), Some("shop.Order"));
        let proto = serde_json::json!({"schema": "syntax = \"proto3\";", "schemaType": "PROTOBUF"});
        assert!(
            parse(1, &proto)
                .unwrap_err()
                .to_string()
                .contains("PROTOBUF")
        );
        let refs = serde_json::json!({"schema": "\"long\"", "references": [{"name": "x"}]});
        assert!(
            parse(1, &refs)
                .unwrap_err()
                .to_string()
                .contains("references")
        );
        let bad = serde_json::json!({"schema": "{\"type\": \"recordz\"}"});
        assert!(
            parse(9, &bad)
                .unwrap_err()
                .to_string()
                .starts_with("schema id 9: invalid Avro")
        );
        assert_eq!(encode_path("a b/ü"), "a%20b%2F%C3%BC");
    }

    #[test]
    fn a_registry_that_is_down_is_retried_then_reported_by_url() {
        // A port nothing listens on (bound, then closed).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let spec = RegistrySpec {
            url: format!("http://127.0.0.1:{port}/"),
            ca_file: None,
            auth: None,
            subject_strategy: SubjectStrategy::Topic,
        };
        let mut registry = Registry::new(&spec).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let started = std::time::Instant::now();
        let e = rt.block_on(registry.schema(7)).unwrap_err();
        let RegistryError::Unavailable { url, reason } = &e else {
            panic!("{e}");
        };
        assert_eq!(*url, format!("http://127.0.0.1:{port}/schemas/ids/7"));
        assert!(!reason.is_empty());
        assert!(
            started.elapsed() >= Duration::from_secs(5),
            "retried with backoff before giving up"
        );
    }
}
