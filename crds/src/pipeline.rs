//! The `IngestionPipeline` custom resource: what users write, in Kubernetes or for
//! `tidewater run -f`. Field docs here become the CRD's descriptions.
// The repeated `type_ = ...` keys of separate `printcolumn(...)` entries trip this lint.
#![allow(clippy::duplicated_attributes)]

pub use crate::upsert::{DeleteMode, UpsertSpec, WriteMode};
use std::collections::BTreeMap;

use kube::CustomResource;

use crate::deploy::{
    Autoscaler, JobState, PodOverrides, PodResources, SavepointHistory, SecretEnv, SecretMount,
    UpgradeMode,
};
pub use crate::format::{
    FormatSpec, FormatType, RegistryAuthSpec, RegistryAuthType, RegistrySpec, SubjectStrategy,
};
pub use crate::status::{CheckpointStatus, IngestionPipelineStatus};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An exactly-once ingestion pipeline from Kafka topics into an Apache Iceberg table.
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[kube(
    group = "tidewater.dev",
    version = "v1alpha1",
    kind = "IngestionPipeline",
    namespaced,
    shortname = "twp",
    category = "tidewater",
    status = "IngestionPipelineStatus",
    derive = "PartialEq",
    doc = "An exactly-once ingestion pipeline from Kafka topics into Apache Iceberg tables.",
    scale(
        spec_replicas_path = ".spec.parallelism",
        status_replicas_path = ".status.parallelism",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "State", type_ = "string", json_path = ".status.lifecycleState"),
    printcolumn(
        name = "Parallelism",
        type_ = "integer",
        json_path = ".status.parallelism"
    ),
    printcolumn(name = "Lag", type_ = "integer", json_path = ".status.lag"),
    printcolumn(
        name = "Last checkpoint",
        type_ = "date",
        json_path = ".status.lastCheckpoint.time"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Table",
        type_ = "string",
        json_path = ".spec.sink.table",
        priority = 1
    )
)]
#[serde(rename_all = "camelCase")]
pub struct IngestionPipelineSpec {
    /// Where records come from.
    pub source: SourceSpec,
    /// How record values are encoded.
    #[serde(default)]
    pub format: FormatSpec,
    /// Where records land.
    pub sink: SinkSpec,
    /// Checkpointing: how often a consistent cut is committed to the table.
    #[serde(default)]
    pub checkpoint: CheckpointSpec,
    /// Number of workers. Each Kafka partition is read by exactly one worker.
    #[serde(default = "default_parallelism")]
    #[schemars(range(min = 1))]
    pub parallelism: i32,
    /// Where records that cannot be converted go. Without it, a bad record stops the pipeline
    /// (nothing past it is committed) with an error naming the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<DeadLetterSpec>,
    /// Object storage for `s3://` warehouses and state locations. Credentials never go here:
    /// they come from the environment or from mounted files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageSpec>,

    /// Runtime container image (operator default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Resources of the coordinator and worker containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<PodResources>,
    /// Labels, annotations, scheduling and environment for the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<PodOverrides>,
    /// Service account of the pods (the runtime needs no Kubernetes API access).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Environment variables from Secrets (S3 keys, catalog token, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_env: Vec<SecretEnv>,
    /// Secrets mounted as files (credential files, CA bundles, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_mounts: Vec<SecretMount>,
    /// How changes that need new pods are carried out.
    #[serde(default)]
    pub upgrade_mode: UpgradeMode,
    /// `running` or `suspended` (savepoint, then zero pods).
    #[serde(default)]
    pub state: JobState,
    /// Change to any new value to take one savepoint (the job keeps running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub savepoint_trigger_nonce: Option<i64>,
    /// Change to any new value to restart the job once (as its upgrade mode says).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_nonce: Option<i64>,
    /// Savepoint path the first deployment starts from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_savepoint: Option<String>,
    /// Accept a savepoint of another pipeline uid or table, or with topics no longer read.
    #[serde(default)]
    pub allow_non_restored_state: bool,
    /// Savepoints kept in the status.
    #[serde(default)]
    pub savepoint_history: SavepointHistory,
    /// Lag-based autoscaling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaler: Option<Autoscaler>,
    /// An upgrade that is not Ready within this time rolls back to the last stable spec.
    #[serde(default = "default_upgrade_timeout")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d))+$"))]
    pub upgrade_timeout: String,
    /// Take a final savepoint before the pipeline is deleted.
    #[serde(default)]
    pub savepoint_on_deletion: bool,
}

fn default_upgrade_timeout() -> String {
    "5m".into()
}

/// Object storage settings.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// An S3-compatible object store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Spec>,
}

/// S3 or an S3-compatible store (MinIO, Ceph, moto ...).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Spec {
    /// Custom endpoint, e.g. `http://minio.storage:9000`; AWS when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Region; `AWS_REGION` from the environment, else `us-east-1`, when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), needed by most S3-compatible stores.
    #[serde(default)]
    pub path_style_access: bool,
    /// File holding the access key id (a mounted Secret); `AWS_ACCESS_KEY_ID` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id_file: Option<String>,
    /// File holding the secret access key; `AWS_SECRET_ACCESS_KEY` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key_file: Option<String>,
    /// File holding a session token; `AWS_SESSION_TOKEN` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token_file: Option<String>,
}

fn default_parallelism() -> i32 {
    1
}

/// The source of records.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceSpec {
    /// A Kafka (or Kafka-compatible) cluster.
    pub kafka: KafkaSourceSpec,
}

/// Kafka source settings.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(has(self.topics) && size(self.topics) > 0) != has(self.topicPattern)",
    "message": "set exactly one of topics and topicPattern"
}]))]
pub struct KafkaSourceSpec {
    /// Comma-separated `host:port` list of brokers.
    #[schemars(length(min = 1))]
    pub bootstrap_servers: String,
    /// Topics to read. New partitions of these topics are picked up without a restart.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topics: Vec<String>,
    /// Instead of `topics`: a regular expression that whole topic names must match (Kafka's
    /// pattern subscription); matching topics created later are read from `earliest` without
    /// a restart. Internal topics (`__…`) and the dead-letter topic are never read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_pattern: Option<String>,
    /// Where to start in partitions that have no checkpointed offset: `earliest`, `latest`,
    /// or an RFC 3339 timestamp (the first record at or after it). Partitions discovered while
    /// running always start at `earliest`, so nothing produced to them is missed.
    #[serde(default = "default_starting_offsets")]
    pub starting_offsets: String,
    /// How often to look for new partitions of the subscribed topics (e.g. `30s`).
    #[serde(default = "default_discovery_interval")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d))+$"))]
    pub partition_discovery_interval: String,
    /// How to connect: TLS and SASL, with secrets read from mounted files or the environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<KafkaSecuritySpec>,
    /// Extra librdkafka consumer properties (e.g. `fetch.max.bytes`). `enable.auto.commit`,
    /// `group.id` and `auto.offset.reset` are managed by Tidewater; secrets (`sasl.password`,
    /// `ssl.key.password` ...) are refused: use `security`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
}

/// Kafka connection security (the dead-letter producer uses the same).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.sasl) == (self.protocol == 'SASL_PLAINTEXT' || self.protocol == 'SASL_SSL')",
        "message": "sasl is required with protocol SASL_PLAINTEXT or SASL_SSL and not allowed otherwise"
    },
    {
        "rule": "!has(self.tls) || self.protocol == 'SSL' || self.protocol == 'SASL_SSL'",
        "message": "tls needs protocol SSL or SASL_SSL"
    }
]))]
pub struct KafkaSecuritySpec {
    /// `PLAINTEXT`, `SSL`, `SASL_PLAINTEXT` or `SASL_SSL` (Kafka's `security.protocol`).
    pub protocol: KafkaProtocol,
    /// TLS settings (with `SSL` / `SASL_SSL`); without them the system trust store is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<KafkaTlsSpec>,
    /// SASL authentication (with `SASL_PLAINTEXT` / `SASL_SSL`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl: Option<KafkaSaslSpec>,
}

/// Kafka's `security.protocol` values.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
pub enum KafkaProtocol {
    /// No encryption, no authentication.
    #[serde(rename = "PLAINTEXT")]
    Plaintext,
    /// TLS.
    #[serde(rename = "SSL")]
    Ssl,
    /// SASL without TLS.
    #[serde(rename = "SASL_PLAINTEXT")]
    SaslPlaintext,
    /// SASL over TLS.
    #[serde(rename = "SASL_SSL")]
    SaslSsl,
}

impl KafkaProtocol {
    /// The librdkafka spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plaintext => "PLAINTEXT",
            Self::Ssl => "SSL",
            Self::SaslPlaintext => "SASL_PLAINTEXT",
            Self::SaslSsl => "SASL_SSL",
        }
    }

    /// Whether the protocol authenticates with SASL.
    pub fn uses_sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }

    /// Whether the protocol encrypts with TLS.
    pub fn uses_tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }
}

/// TLS files (PEM), e.g. from a mounted Strimzi cluster-CA or KafkaUser Secret.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.certFile) == has(self.keyFile)",
    "message": "set both certFile and keyFile (client certificate) or neither"
}]))]
pub struct KafkaTlsSpec {
    /// CA certificates that verify the brokers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// Client certificate for mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<String>,
    /// Client private key for mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
}

/// SASL credentials; the password comes from a file or an environment variable.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.passwordFile) != has(self.passwordEnv)",
    "message": "set exactly one of passwordFile and passwordEnv"
}]))]
pub struct KafkaSaslSpec {
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub mechanism: SaslMechanism,
    /// User name.
    #[schemars(length(min = 1))]
    pub username: String,
    /// File holding the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
    /// Environment variable holding the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
}

/// SASL mechanisms.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
pub enum SaslMechanism {
    /// Username and password in the clear (use with TLS).
    #[serde(rename = "PLAIN")]
    Plain,
    /// SCRAM with SHA-256.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// SCRAM with SHA-512.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    /// The librdkafka spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

fn default_starting_offsets() -> String {
    "earliest".into()
}

fn default_discovery_interval() -> String {
    "30s".into()
}

fn default_max_open_writers() -> u32 {
    64
}

/// The Iceberg side: one table (`table`) or many (`route`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.mode) || self.mode != 'upsert' || (has(self.primaryKey) && size(self.primaryKey) > 0)",
        "message": "sink.mode upsert needs sink.primaryKey (the columns that identify a row)"
    },
    {
        "rule": "has(self.table) != has(self.route)",
        "message": "set exactly one of sink.table (one table) and sink.route (many tables)"
    },
    {
        "rule": "has(self.table) == has(oldSelf.table) && (!has(self.table) || self.table == oldSelf.table)",
        "message": "sink.table is immutable: a pipeline's exactly-once state belongs to its table; create a new pipeline for another table"
    }
]))]
pub struct SinkSpec {
    /// The Iceberg catalog that owns the tables.
    pub catalog: CatalogSpec,
    /// Target table as `namespace.name` (nested namespaces: `a.b.name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 3))]
    pub table: Option<String>,
    /// Many tables: which table each record goes to. Tables missing when their first record
    /// arrives are created from `createTable` (or the matching rule's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<RouteSpec>,
    /// How records are written: `append` (every record a new row) or `upsert` (the table
    /// holds the newest row per `primaryKey`: changes replace rows, deletes remove them).
    #[serde(default)]
    pub mode: WriteMode,
    /// Upsert mode: the columns that identify a row (the table's identifier fields). Set on
    /// tables the pipeline creates; an existing table's identifier fields must be these.
    /// Every column must exist and be required.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub primary_key: Vec<String>,
    /// Upsert mode: how deletes are recognised and written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upsert: Option<UpsertSpec>,
    /// Open data-file writers per worker (one per table being written). When a worker writes
    /// more tables at once, the least recently written table's files are closed (they are
    /// committed at the next checkpoint) and a new file is opened when its rows come back.
    #[serde(default = "default_max_open_writers")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_open_writers: u32,
    /// How tables follow the records while the pipeline runs.
    #[serde(default)]
    pub schema_evolution: SchemaEvolutionSpec,
    /// Table definition used only when a table does not exist yet (with `route`: the
    /// template of every table the route creates, unless its rule has its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_table: Option<CreateTableSpec>,
    /// Iceberg write properties, e.g. `write.parquet.compression-codec` (zstd, snappy, gzip,
    /// lz4, brotli, uncompressed), `write.parquet.compression-level`,
    /// `write.target-file-size-bytes`, `write.parquet.row-group-size-bytes`,
    /// `write.parquet.page-size-bytes`. They override the table's own properties.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub write_properties: BTreeMap<String, String>,
}

/// Which table each record goes to: the first rule whose `topic` pattern matches the whole
/// topic name decides; records of other topics go to `table`. A template is text with
/// placeholders `{topic}`, `{key}`, `{value.FIELD}` (a field of the JSON value, `.` for nested
/// fields) and `{header.NAME}`; a substituted value is lowercased and every character outside
/// `[a-z0-9_]` becomes `_` (a part starting with a digit gets a leading `_`). A record whose
/// table cannot be resolved goes to the dead-letter topic with reason `unroutable`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.table) || (has(self.rules) && size(self.rules) > 0)",
    "message": "a route needs a default table template or at least one rule"
}]))]
pub struct RouteSpec {
    /// Default table template, e.g. `raw.{topic}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 3))]
    pub table: Option<String>,
    /// Rules, tried in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RouteRule>,
}

/// One `topic pattern → table template` rule.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteRule {
    /// Regular expression matched against the whole topic name.
    #[schemars(length(min = 1))]
    pub topic: String,
    /// Table template for its records.
    #[schemars(length(min = 3))]
    pub table: String,
    /// Definition of the tables this rule creates (instead of `sink.createTable`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_table: Option<CreateTableSpec>,
}

/// Iceberg catalog connection.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CatalogSpec {
    /// Catalog kind.
    #[serde(rename = "type")]
    pub catalog_type: CatalogType,
    /// For `sql`: a `sqlite://PATH` or `postgres://…` URI (the SQLite file is created when
    /// missing). For `rest`: the catalog's base URL (`https://…`, without `/v1`).
    pub uri: String,
    /// Warehouse root where new tables are placed: a local path, `file://…` or `s3://…`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warehouse: Option<String>,
    /// Catalog name as stored in the SQL catalog's tables.
    #[serde(default = "default_catalog_name")]
    pub name: String,
    /// Extra catalog and file IO properties (e.g. `prefix`, `header.X-Tenant`). Secrets are
    /// refused here: use `auth` and `spec.storage`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
    /// Authentication to a REST catalog.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<CatalogAuthSpec>,
    /// File with extra PEM CA certificates trusted for an `https` REST catalog.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
}

/// How the runtime authenticates to a REST catalog. The secret is read from a file (a mounted
/// Secret) or an environment variable, never from the spec.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CatalogAuthSpec {
    /// `bearer`: the secret is a token sent as `Authorization: Bearer`. `oauth2`: the secret is
    /// `client_id:client_secret`, exchanged for tokens (client-credentials flow).
    #[serde(rename = "type")]
    pub auth_type: CatalogAuthType,
    /// File holding the secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<String>,
    /// Environment variable holding the secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_env: Option<String>,
    /// OAuth2 token endpoint; the catalog's `/v1/oauth/tokens` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2_server_uri: Option<String>,
    /// OAuth2 scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// REST catalog authentication kinds.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CatalogAuthType {
    /// A static bearer token.
    Bearer,
    /// OAuth2 client credentials.
    Oauth2,
}

fn default_catalog_name() -> String {
    "tidewater".into()
}

/// Catalog kinds.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CatalogType {
    /// The Iceberg SQL catalog on SQLite or PostgreSQL.
    Sql,
    /// An Iceberg REST catalog (Polaris, Lakekeeper, Nessie, Gravitino, S3 Tables ...).
    Rest,
}

/// Schema evolution without restarts: a field a table lacks becomes a new optional column,
/// an `int` column given a 64-bit value becomes `long`, a required column that stops arriving
/// becomes optional — metadata-only schema updates through the catalog. Columns are never
/// dropped, renamed or narrowed.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SchemaEvolutionSpec {
    /// Off: fields without a column are not written (counted per field in
    /// `tidewater_unknown_field_records_total` and logged once per field).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// A record the table cannot take and cannot evolve for (a string where a long was).
    #[serde(default)]
    pub on_incompatible: OnIncompatible,
    /// A record without a required column's field makes that column optional (instead of
    /// being a bad record). Off by default: a JSON record carries no schema saying the field
    /// became optional, and one bad record would weaken the table for good.
    #[serde(default)]
    pub make_required_optional: bool,
}

impl Default for SchemaEvolutionSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            on_incompatible: OnIncompatible::default(),
            make_required_optional: false,
        }
    }
}

fn default_true() -> bool {
    true
}

/// What happens to a record no schema change can make fit.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum OnIncompatible {
    /// Sent to the dead-letter topic with the reason (as any unconvertible record).
    #[default]
    DeadLetter,
    /// The pipeline stops without committing past it.
    Fail,
}

/// Definition of a table to create on first use.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateTableSpec {
    /// Columns, in order. Empty: taken from the first record — for Avro its subject's newest
    /// schema; for JSON every top-level field with a value becomes an optional column
    /// (true/false → boolean, integers → long, other numbers → double, strings → string, or
    /// timestamptz when named in `timestampFields`, objects → structs, arrays → lists); later
    /// records add columns by schema evolution.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schema: Vec<ColumnSpec>,
    /// With an inferred schema: fields whose ISO 8601 strings become `timestamptz` columns
    /// (what `partitionBy: ["day(ts)"]` needs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timestamp_fields: Vec<String>,
    /// Partition transforms: `col` or `identity(col)`, `year(col)`, `month(col)`,
    /// `day(col)`, `hour(col)`, `bucket(N, col)`, `truncate(W, col)`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partition_by: Vec<String>,
    /// Table properties set at creation.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
    /// The table's sort order: `col`, `col desc`, `day(ts) asc nulls last`, … (recorded in the
    /// table's metadata for engines and compaction that sort; the pipeline writes records in
    /// arrival order).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sort_by: Vec<String>,
    /// Iceberg format version of a created table: 1 or 2 (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 2))]
    pub format_version: Option<u8>,
}

/// One column of a table to create.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ColumnSpec {
    /// Column name; JSON fields of the same name fill it.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Iceberg type: boolean, int, long, float, double, decimal(P,S), date, timestamp,
    /// timestamptz, string, uuid, binary.
    #[serde(rename = "type")]
    pub column_type: String,
    /// A record without this field (or with null) is dead-lettered.
    #[serde(default)]
    pub required: bool,
    /// Column documentation stored in the table schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub doc: Option<String>,
}

/// Checkpoint settings.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointSpec {
    /// Time between checkpoints (e.g. `10s`, `1m`). Each non-empty checkpoint is one Iceberg
    /// snapshot.
    #[serde(default = "default_interval")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d))+$"))]
    pub interval: String,
    /// A checkpoint not acknowledged by every worker within this time is aborted and retried.
    #[serde(default = "default_timeout")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d))+$"))]
    pub timeout: String,
    /// Where durable checkpoint records are kept. Defaults to
    /// `<warehouse>/_tidewater/<namespace>/<pipeline name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_location: Option<String>,
    /// How many completed checkpoint records to keep.
    #[serde(default = "default_retained")]
    #[schemars(range(min = 1))]
    pub retained: u32,
}

impl Default for CheckpointSpec {
    fn default() -> Self {
        Self {
            interval: default_interval(),
            timeout: default_timeout(),
            state_location: None,
            retained: default_retained(),
        }
    }
}

fn default_interval() -> String {
    "10s".into()
}

fn default_timeout() -> String {
    "2m".into()
}

fn default_retained() -> u32 {
    3
}

/// Dead-letter destination.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterSpec {
    /// Kafka topic that receives records that cannot be converted, unchanged, with headers
    /// `tidewater.error`, `tidewater.source.topic`, `tidewater.source.partition`,
    /// `tidewater.source.offset`.
    #[schemars(length(min = 1))]
    pub topic: String,
    /// Brokers for the dead-letter topic; defaults to the source's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_servers: Option<String>,
}

impl IngestionPipeline {
    /// Parses a pipeline from YAML (one document), ignoring unknown fields.
    pub fn from_yaml(text: &str) -> Result<Self, serde_yaml::Error> {
        serde_yaml::from_str(text)
    }

    /// Parses a pipeline from YAML and also returns the paths of fields it does not know
    /// (usually typos such as `spec.checkpont`), which Kubernetes would silently prune.
    pub fn from_yaml_reporting_unknown(
        text: &str,
    ) -> Result<(Self, Vec<String>), serde_yaml::Error> {
        let mut unknown = Vec::new();
        let de = serde_yaml::Deserializer::from_str(text);
        let resource = serde_ignored::deserialize(de, |path| {
            // Optional fields show up as `?` segments: drop them from the path users see.
            let path = path.to_string().replace(".?", "");
            // The generated root type handles these two itself.
            if path != "apiVersion" && path != "kind" {
                unknown.push(path);
            }
        })?;
        Ok((resource, unknown))
    }

    /// Stable identity of the pipeline for commit fencing: the Kubernetes uid when present,
    /// else `local/<namespace>/<name>` for local runs.
    pub fn pipeline_uid(&self) -> String {
        if let Some(uid) = &self.metadata.uid {
            return uid.clone();
        }
        format!(
            "local/{}/{}",
            self.namespace_or_default(),
            self.name_or_default()
        )
    }

    /// `metadata.name`, or `pipeline` when absent.
    pub fn name_or_default(&self) -> String {
        self.metadata
            .name
            .clone()
            .unwrap_or_else(|| "pipeline".into())
    }

    /// `metadata.namespace`, or `default` when absent.
    pub fn namespace_or_default(&self) -> String {
        self.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_reported_with_their_path() {
        let text = include_str!("../../examples/clickstream.yaml")
            .replace("  checkpoint:\n", "  checkpont:\n")
            .replace(
                "      topics: [clicks]",
                "      topics: [clicks]\n      topic: clicks",
            )
            .replace("  deadLetter:\n", "  deadLetter:\n    topc: x\n");
        let (_, unknown) = IngestionPipeline::from_yaml_reporting_unknown(&text).unwrap();
        assert_eq!(
            unknown,
            vec![
                "spec.source.kafka.topic",
                "spec.checkpont",
                "spec.deadLetter.topc"
            ]
        );
    }
}
