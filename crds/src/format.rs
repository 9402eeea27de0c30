//! `spec.format`: how record values are decoded — JSON objects, or Avro in the Confluent wire
//! format with the schemas from a Confluent-compatible schema registry — and the pure checks
//! of it that the CRD's CEL rules make.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How record values are decoded.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.type) || self.type != 'avro' || has(self.registry)",
    "message": "format.type avro needs format.registry"
}]))]
pub struct FormatSpec {
    /// The encoding of record values.
    #[serde(rename = "type", default)]
    pub format_type: FormatType,
    /// Records whose value is larger than this many bytes are dead-lettered as oversize.
    #[serde(default = "default_max_record_bytes")]
    #[schemars(range(min = 1))]
    pub max_record_bytes: u64,
    /// The schema registry that Avro records' schema ids refer to (`type: avro`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<RegistrySpec>,
}

impl Default for FormatSpec {
    fn default() -> Self {
        Self {
            format_type: FormatType::default(),
            max_record_bytes: default_max_record_bytes(),
            registry: None,
        }
    }
}

fn default_max_record_bytes() -> u64 {
    1024 * 1024
}

/// Supported value encodings.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FormatType {
    /// One JSON object per record; fields are matched to columns by name.
    #[default]
    Json,
    /// Avro in the Confluent wire format: a zero byte, the 4-byte schema id, the binary datum.
    /// The writer schema comes from `registry`; fields are matched to columns by name.
    Avro,
    /// Debezium change events in JSON (with or without the `schema`/`payload` wrapper): `op`
    /// `c`, `r`, `u` write the `after` image, `d` deletes the `before` image's key; tombstones
    /// are skipped and counted. Needs `sink.mode: upsert`.
    #[serde(rename = "debezium-json")]
    DebeziumJson,
}

/// A Confluent-compatible schema registry (Confluent, Apicurio's ccompat API, Karapace,
/// Redpanda).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegistrySpec {
    /// Base URL, e.g. `https://registry.kafka:8081`.
    #[schemars(length(min = 1))]
    pub url: String,
    /// CA certificates (PEM) that verify an `https` registry, besides the system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// Credentials sent with every request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<RegistryAuthSpec>,
    /// The subject a table created on first use takes its columns from (the newest version
    /// registered under it; the record's own schema when the subject has none).
    #[serde(default)]
    pub subject_strategy: SubjectStrategy,
}

/// How a record's subject is named (as the producers' serializers name it).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SubjectStrategy {
    /// `<topic>-value` (Confluent's TopicNameStrategy).
    #[default]
    Topic,
    /// The record's full name (RecordNameStrategy).
    Record,
    /// `<topic>-<record full name>` (TopicRecordNameStrategy).
    TopicRecord,
}

impl SubjectStrategy {
    /// The subject of a value of record type `record` (full name) read from `topic`.
    pub fn subject(self, topic: &str, record: &str) -> String {
        match self {
            Self::Topic => format!("{topic}-value"),
            Self::Record => record.to_string(),
            Self::TopicRecord => format!("{topic}-{record}"),
        }
    }
}

/// Registry credentials: HTTP basic (user name and password) or a bearer token; the secret
/// comes from a file (a mounted Secret) or an environment variable.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.type != 'basic' || (has(self.username) && has(self.passwordFile) != has(self.passwordEnv))",
        "message": "basic auth needs username and exactly one of passwordFile and passwordEnv"
    },
    {
        "rule": "self.type != 'bearer' || has(self.tokenFile) != has(self.tokenEnv)",
        "message": "bearer auth needs exactly one of tokenFile and tokenEnv"
    }
]))]
pub struct RegistryAuthSpec {
    /// `basic` or `bearer`.
    #[serde(rename = "type")]
    pub auth_type: RegistryAuthType,
    /// User name (basic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// File holding the password (basic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
    /// Environment variable holding the password (basic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// File holding the token (bearer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
    /// Environment variable holding the token (bearer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
}

/// Registry authentication schemes.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RegistryAuthType {
    /// HTTP basic authentication.
    Basic,
    /// `Authorization: Bearer <token>`.
    Bearer,
}

/// The rules the CRD's CEL checks on `spec.format`, plus what CEL cannot see (the URL's
/// scheme, route templates that read Avro values).
pub fn validate_format(
    format: &FormatSpec,
    reads_value_fields: bool,
    err: &mut impl FnMut(&str, String),
) {
    match (format.format_type, &format.registry) {
        (FormatType::Avro, None) => err(
            "spec.format.registry",
            "is required with format.type avro".into(),
        ),
        (FormatType::Json | FormatType::DebeziumJson, Some(_)) => err(
            "spec.format.registry",
            "is only used with format.type avro".into(),
        ),
        _ => {}
    }
    if format.format_type == FormatType::Avro && reads_value_fields {
        err(
            "spec.sink.route",
            "templates with {value.…} read JSON records; with format.type avro route by \
             {topic}, {key} or {header.…}"
                .into(),
        );
    }
    let Some(registry) = &format.registry else {
        return;
    };
    if !(registry.url.starts_with("http://") || registry.url.starts_with("https://")) {
        err(
            "spec.format.registry.url",
            format!("`{}` must start with http:// or https://", registry.url),
        );
    }
    let Some(auth) = &registry.auth else {
        return;
    };
    let field = "spec.format.registry.auth";
    match auth.auth_type {
        RegistryAuthType::Basic => {
            if auth.username.as_deref().is_none_or(str::is_empty) {
                err(field, "basic auth needs username".into());
            }
            if auth.password_file.is_some() == auth.password_env.is_some() {
                err(
                    field,
                    "basic auth needs exactly one of passwordFile and passwordEnv".into(),
                );
            }
        }
        RegistryAuthType::Bearer => {
            if auth.token_file.is_some() == auth.token_env.is_some() {
                err(
                    field,
                    "bearer auth needs exactly one of tokenFile and tokenEnv".into(),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(format: &FormatSpec, reads_value: bool) -> Vec<(String, String)> {
        let mut out = Vec::new();
        validate_format(format, reads_value, &mut |p, r| {
            out.push((p.to_string(), r))
        });
        out
    }

    fn avro(auth: Option<RegistryAuthSpec>) -> FormatSpec {
        FormatSpec {
            format_type: FormatType::Avro,
            registry: Some(RegistrySpec {
                url: "https://registry:8081".into(),
                ca_file: None,
                auth,
                subject_strategy: SubjectStrategy::Topic,
            }),
            ..FormatSpec::default()
        }
    }

    #[test]
    fn avro_needs_a_registry_and_complete_credentials() {
        assert!(errors(&avro(None), false).is_empty());
        let bare = FormatSpec {
            format_type: FormatType::Avro,
            ..FormatSpec::default()
        };
        assert_eq!(errors(&bare, false)[0].0, "spec.format.registry");
        let basic = RegistryAuthSpec {
            auth_type: RegistryAuthType::Basic,
            username: Some("u".into()),
            password_file: Some("/p".into()),
            password_env: None,
            token_file: None,
            token_env: None,
        };
        assert!(errors(&avro(Some(basic.clone())), false).is_empty());
        let both = RegistryAuthSpec {
            password_env: Some("P".into()),
            ..basic.clone()
        };
        assert!(
            errors(&avro(Some(both)), false)[0]
                .1
                .contains("exactly one")
        );
        let bearer = RegistryAuthSpec {
            auth_type: RegistryAuthType::Bearer,
            ..basic
        };
        assert!(
            errors(&avro(Some(bearer)), false)[0]
                .1
                .contains("tokenFile")
        );
        let routed = errors(&avro(None), true);
        assert_eq!(routed[0].0, "spec.sink.route");
        let mut ftp = avro(None);
        ftp.registry.as_mut().unwrap().url = "ftp://x".into();
        assert_eq!(errors(&ftp, false)[0].0, "spec.format.registry.url");
    }

    #[test]
    fn subjects_follow_the_serializers_strategies() {
        let s = |st: SubjectStrategy| st.subject("orders", "shop.Order");
        assert_eq!(s(SubjectStrategy::Topic), "orders-value");
        assert_eq!(s(SubjectStrategy::Record), "shop.Order");
        assert_eq!(s(SubjectStrategy::TopicRecord), "orders-shop.Order");
    }
}
