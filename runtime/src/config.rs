//! Turns an `IngestionPipeline` file into a resolved, validated runtime configuration.
//! Reads the file; everything after parsing is pure.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use tidewater_crds::{
    FieldError, IngestionPipeline,
    pipeline::{
        CatalogAuthSpec, CatalogSpec, CatalogType, CreateTableSpec, KafkaSecuritySpec, S3Spec,
    },
    types::{StartingOffsets, parse_duration, parse_table_ident},
    validate,
};

use crate::route::Router;

/// Why a pipeline file cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The YAML is not an IngestionPipeline.
    #[error("{path} is not a valid IngestionPipeline: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause, with line and column.
        source: serde_yaml::Error,
    },
    /// The spec parsed but has invalid fields.
    #[error("{path} has {} invalid field(s):\n{}", .errors.len(), render(.errors))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Each problem with its field path.
        errors: Vec<FieldError>,
    },
}

fn render(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("  - {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A pipeline ready to run: every string of the spec parsed, every path made absolute.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// The resource as written.
    pub resource: IngestionPipeline,
    /// `metadata.name`.
    pub name: String,
    /// Fencing identity written into every snapshot summary.
    pub uid: String,
    /// Source brokers.
    pub bootstrap_servers: String,
    /// Subscribed topics (empty with a pattern).
    pub topics: Vec<String>,
    /// Pattern subscription, anchored.
    pub topic_pattern: Option<regex::Regex>,
    /// Start position for partitions without a checkpoint.
    pub starting_offsets: StartingOffsets,
    /// How often to look for new partitions.
    pub discovery_interval: Duration,
    /// Extra consumer properties.
    pub consumer_properties: BTreeMap<String, String>,
    /// TLS / SASL settings (file paths absolute; secrets are read when a client is made).
    pub kafka_security: Option<KafkaSecuritySpec>,
    /// Consumer group that receives committed offsets (progress reporting only).
    pub consumer_group: String,
    /// Checkpoint interval.
    pub checkpoint_interval: Duration,
    /// Checkpoint timeout.
    pub checkpoint_timeout: Duration,
    /// Completed checkpoint records kept.
    pub retained_checkpoints: usize,
    /// Where checkpoint records and savepoints live: an absolute local path or `s3://…`.
    pub state_location: String,
    /// The catalog the table lives in.
    pub catalog: CatalogConnection,
    /// S3 settings (credential file paths made absolute).
    pub s3: Option<S3Spec>,
    /// The one target table (`namespace.name`), or none with a route.
    pub table: Option<String>,
    /// Which table each record goes to (`spec.sink.route`), or none for one table.
    pub router: Option<Router>,
    /// Number of workers.
    pub parallelism: usize,
    /// Dead-letter topic and brokers.
    pub dead_letter: Option<DeadLetter>,
    /// Oversize limit for record values.
    pub max_record_bytes: usize,
}

/// Where bad records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Topic.
    pub topic: String,
    /// Brokers.
    pub bootstrap_servers: String,
    /// The source's TLS / SASL settings, used for the dead-letter producer too.
    pub security: Option<KafkaSecuritySpec>,
}

/// How to reach a catalog, resolved against a base directory (paths absolute; secrets are
/// read only when the catalog is opened).
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogConnection {
    /// Catalog kind.
    pub catalog_type: CatalogType,
    /// SQL URI (SQLite path absolute) or REST base URL.
    pub uri: String,
    /// Catalog name.
    pub name: String,
    /// Warehouse URI (`file:///…`, `s3://…`, or a REST catalog's logical name).
    pub warehouse: String,
    /// Extra catalog properties.
    pub properties: BTreeMap<String, String>,
    /// REST authentication (secret file path absolute).
    pub auth: Option<CatalogAuthSpec>,
    /// Extra CA certificates for https.
    pub ca_file: Option<PathBuf>,
}

impl CatalogConnection {
    /// Resolves a catalog spec; relative paths are taken from `base`.
    pub fn resolve(catalog: &CatalogSpec, base: &Path) -> Self {
        let warehouse_raw = catalog
            .warehouse
            .clone()
            .unwrap_or_else(|| ".tidewater/warehouse".into());
        let warehouse = match catalog.catalog_type {
            // A REST catalog's warehouse may be a logical name (Polaris, S3 Tables).
            CatalogType::Rest if !warehouse_raw.contains("://") && catalog.warehouse.is_some() => {
                warehouse_raw
            }
            _ => to_uri(&warehouse_raw, base),
        };
        Self {
            catalog_type: catalog.catalog_type,
            uri: match catalog.catalog_type {
                CatalogType::Sql => sql_uri(&catalog.uri, base),
                CatalogType::Rest => catalog.uri.trim_end_matches('/').to_string(),
            },
            name: catalog.name.clone(),
            warehouse,
            properties: catalog.properties.clone(),
            auth: catalog.auth.clone().map(|mut a| {
                a.secret_file = a
                    .secret_file
                    .as_deref()
                    .map(|f| absolute(f, base).display().to_string());
                a
            }),
            ca_file: catalog.ca_file.as_deref().map(|f| absolute(f, base)),
        }
    }
}

/// `spec.storage.s3` with credential file paths made absolute.
pub fn resolve_s3(s3: &S3Spec, base: &Path) -> S3Spec {
    let file = |f: &Option<String>| {
        f.as_deref()
            .map(|f| absolute(f, base).display().to_string())
    };
    let mut s3 = s3.clone();
    s3.access_key_id_file = file(&s3.access_key_id_file);
    s3.secret_access_key_file = file(&s3.secret_access_key_file);
    s3.session_token_file = file(&s3.session_token_file);
    s3
}

impl PipelineConfig {
    /// Reads, parses and validates a pipeline file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let (resource, unknown) =
            IngestionPipeline::from_yaml_reporting_unknown(&text).map_err(|source| {
                ConfigError::Parse {
                    path: path.to_path_buf(),
                    source,
                }
            })?;
        let mut errors = header_errors(&text);
        errors.extend(unknown.into_iter().map(|p| FieldError {
            path: p,
            reason: "unknown field (a typo? Kubernetes would drop it silently)".into(),
        }));
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        match Self::resolve(resource, &cwd) {
            Ok(config) if errors.is_empty() => Ok(config),
            Ok(_) => Err(errors),
            Err(invalid) => Err(errors.into_iter().chain(invalid).collect()),
        }
        .map_err(|errors| ConfigError::Invalid {
            path: path.to_path_buf(),
            errors,
        })
    }

    /// Validates a parsed resource and resolves relative paths against `base`.
    pub fn resolve(resource: IngestionPipeline, base: &Path) -> Result<Self, Vec<FieldError>> {
        let errors = validate(&resource.spec);
        if !errors.is_empty() {
            return Err(errors);
        }
        let spec = &resource.spec;
        let kafka = &spec.source.kafka;
        let name = resource.name_or_default();
        let router = match &spec.sink.route {
            Some(route) => {
                let rules: Vec<(String, String)> = route
                    .rules
                    .iter()
                    .map(|r| (r.topic.clone(), r.table.clone()))
                    .collect();
                let router = Router::new(&rules, route.table.as_deref()).map_err(|e| {
                    vec![FieldError {
                        path: "spec.sink.route".into(),
                        reason: e.to_string(),
                    }]
                })?;
                Some(router)
            }
            None => None,
        };
        let table = spec.sink.table.as_deref().map(|t| {
            let (namespace, name) = parse_table_ident(t).expect("validated");
            format!("{}.{name}", namespace.join("."))
        });
        let catalog = CatalogConnection::resolve(&spec.sink.catalog, base);
        let warehouse = &catalog.warehouse;
        let state_location = match &spec.checkpoint.state_location {
            Some(loc) if loc.starts_with("s3://") => loc.trim_end_matches('/').to_string(),
            Some(loc) => absolute(loc.trim_start_matches("file://"), base)
                .display()
                .to_string(),
            None if warehouse.starts_with("s3://") => format!(
                "{warehouse}/_tidewater/{}/{name}",
                resource.namespace_or_default()
            ),
            None if warehouse.starts_with("file://") => {
                PathBuf::from(warehouse.trim_start_matches("file://"))
                    .join("_tidewater")
                    .join(resource.namespace_or_default())
                    .join(&name)
                    .display()
                    .to_string()
            }
            None => {
                return Err(vec![FieldError {
                    path: "spec.checkpoint.stateLocation".into(),
                    reason: format!(
                        "must be set: the warehouse `{warehouse}` is not a location to derive it from"
                    ),
                }]);
            }
        };
        let file = |f: &Option<String>| {
            f.as_deref()
                .map(|f| absolute(f, base).display().to_string())
        };
        let kafka_security = kafka.security.clone().map(|mut sec| {
            if let Some(tls) = &mut sec.tls {
                tls.ca_file = file(&tls.ca_file);
                tls.cert_file = file(&tls.cert_file);
                tls.key_file = file(&tls.key_file);
            }
            if let Some(sasl) = &mut sec.sasl {
                sasl.password_file = file(&sasl.password_file);
            }
            sec
        });
        Ok(Self {
            uid: resource.pipeline_uid(),
            bootstrap_servers: kafka.bootstrap_servers.clone(),
            topics: kafka.topics.clone(),
            topic_pattern: kafka
                .topic_pattern
                .as_deref()
                .map(|p| tidewater_crds::validate::topic_pattern(p).expect("validated")),
            starting_offsets: StartingOffsets::parse(&kafka.starting_offsets).expect("validated"),
            discovery_interval: parse_duration(&kafka.partition_discovery_interval)
                .expect("validated"),
            consumer_properties: kafka.properties.clone(),
            kafka_security: kafka_security.clone(),
            consumer_group: format!("tidewater.{name}"),
            checkpoint_interval: parse_duration(&spec.checkpoint.interval).expect("validated"),
            checkpoint_timeout: parse_duration(&spec.checkpoint.timeout).expect("validated"),
            retained_checkpoints: spec.checkpoint.retained as usize,
            state_location,
            s3: spec
                .storage
                .as_ref()
                .and_then(|s| s.s3.as_ref())
                .map(|s3| resolve_s3(s3, base)),
            catalog,
            table,
            router,
            parallelism: spec.parallelism as usize,
            dead_letter: spec.dead_letter.as_ref().map(|d| DeadLetter {
                topic: d.topic.clone(),
                bootstrap_servers: d
                    .bootstrap_servers
                    .clone()
                    .unwrap_or_else(|| kafka.bootstrap_servers.clone()),
                security: kafka_security,
            }),
            max_record_bytes: usize::try_from(spec.format.max_record_bytes).unwrap_or(usize::MAX),
            name,
            resource,
        })
    }

    /// Whether `topic` is read: listed, or matching the pattern (never internal topics or the
    /// dead-letter topic).
    pub fn reads(&self, topic: &str) -> bool {
        if self.dead_letter.as_ref().is_some_and(|d| d.topic == topic) {
            return false;
        }
        match &self.topic_pattern {
            Some(re) => !topic.starts_with("__") && re.is_match(topic),
            None => self.topics.iter().any(|t| t == topic),
        }
    }

    /// The sink as savepoints and logs name it: the table, or `route` for many tables.
    pub fn sink_display(&self) -> String {
        self.table.clone().unwrap_or_else(|| "route".into())
    }

    /// The table definition for tables created on first use: the route rule's own, else
    /// `spec.sink.createTable`.
    pub fn create_table(&self, rule: Option<usize>) -> Option<&CreateTableSpec> {
        let sink = &self.resource.spec.sink;
        rule.and_then(|i| sink.route.as_ref()?.rules.get(i)?.create_table.as_ref())
            .or(sink.create_table.as_ref())
    }
}

/// `apiVersion` and `kind` must name this resource.
fn header_errors(text: &str) -> Vec<FieldError> {
    let header: serde_yaml::Value = serde_yaml::from_str(text).unwrap_or_default();
    [
        ("apiVersion", "tidewater.dev/v1alpha1"),
        ("kind", "IngestionPipeline"),
    ]
    .into_iter()
    .filter(|(k, v)| header.get(*k).and_then(serde_yaml::Value::as_str) != Some(*v))
    .map(|(k, v)| FieldError {
        path: k.to_string(),
        reason: format!("must be `{v}`"),
    })
    .collect()
}

fn absolute(path: &str, base: &Path) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Local paths become `file:///abs`; URIs with a scheme are kept.
fn to_uri(location: &str, base: &Path) -> String {
    if location.contains("://") {
        return location.trim_end_matches('/').to_string();
    }
    let abs = absolute(location, base);
    format!("file://{}", abs.display())
        .trim_end_matches('/')
        .to_string()
}

/// Makes a SQLite file path absolute (PostgreSQL URIs are kept).
fn sql_uri(uri: &str, base: &Path) -> String {
    let Some(rest) = uri
        .strip_prefix("sqlite://")
        .or_else(|| uri.strip_prefix("sqlite:"))
    else {
        return uri.to_string();
    };
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let abs = absolute(path, base);
    if query.is_empty() {
        format!("sqlite://{}", abs.display())
    } else {
        format!("sqlite://{}?{query}", abs.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> IngestionPipeline {
        IngestionPipeline::from_yaml(include_str!("../../examples/clickstream.yaml")).unwrap()
    }

    #[test]
    fn resolves_the_example() {
        let c = PipelineConfig::resolve(example(), Path::new("/srv/app")).unwrap();
        assert_eq!(c.uid, "local/default/clickstream");
        assert_eq!(c.catalog.uri, "sqlite:///srv/app/.tidewater/catalog.db");
        assert_eq!(c.catalog.warehouse, "file:///srv/app/.tidewater/warehouse");
        assert_eq!(
            c.state_location,
            "/srv/app/.tidewater/warehouse/_tidewater/default/clickstream"
        );
        assert_eq!(c.table.as_deref(), Some("analytics.clicks"));
        assert_eq!(c.sink_display(), "analytics.clicks");
        assert_eq!(c.parallelism, 2);
        assert_eq!(c.checkpoint_interval, Duration::from_secs(10));
        assert_eq!(c.consumer_group, "tidewater.clickstream");
        assert_eq!(c.dead_letter.unwrap().bootstrap_servers, "127.0.0.1:9092");
    }

    #[test]
    fn resolves_the_multi_topic_example_and_its_table_definitions() {
        let r =
            IngestionPipeline::from_yaml(include_str!("../../examples/multi-topic.yaml")).unwrap();
        let c = PipelineConfig::resolve(r, Path::new("/srv")).unwrap();
        assert_eq!(
            (c.table.as_deref(), c.sink_display().as_str()),
            (None, "route")
        );
        let router = c.router.as_ref().unwrap();
        assert_eq!(router.template_for("ev-kind").unwrap().0, Some(0));
        assert_eq!(router.template_for("ev-03").unwrap().0, Some(1));
        assert_eq!(router.template_for("ev-33").unwrap().0, None);
        // Rule 0 infers its columns (`createTable: {}`); rule 1 has none of its own.
        let columns = |rule| c.create_table(rule).unwrap().schema.len();
        assert_eq!(
            (columns(Some(0)), columns(Some(1)), columns(None)),
            (0, 5, 5)
        );
        assert_eq!(c.resource.spec.sink.max_open_writers, 4);

        let mut bad = c.resource.clone();
        bad.spec.sink.route.as_mut().unwrap().rules[1].table = "hot.{topik}".into();
        let errors = PipelineConfig::resolve(bad, Path::new("/srv")).unwrap_err();
        assert_eq!(errors[0].path, "spec.sink.route");
        assert!(errors[0].reason.contains("{topik}"), "{}", errors[0].reason);
    }

    #[test]
    fn invalid_specs_list_their_fields() {
        let mut r = example();
        r.spec.parallelism = 0;
        let errors = PipelineConfig::resolve(r, Path::new("/")).unwrap_err();
        assert_eq!(errors[0].path, "spec.parallelism");
    }
}
