//! Pipeline specs as the tests write them: the click-stream pipeline with every knob the suites
//! turn, written to YAML for the binary.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::Result;

use crate::{
    LiveDataFile, Moto, OAUTH_CLIENT, OAUTH_ENV, RestCatalog, S3_KEY_ID, S3_SECRET, TableView,
    readers::run_reader,
};

/// Parameters of a test pipeline file.
#[derive(Debug, Clone)]
pub struct PipelineSpec {
    pub name: String,
    pub bootstrap: String,
    pub topic: String,
    pub catalog_uri: String,
    pub warehouse: PathBuf,
    pub table: String,
    pub interval: String,
    pub parallelism: u32,
    pub dead_letter: Option<String>,
    pub max_record_bytes: Option<u64>,
    pub partition_by: Vec<String>,
    /// More subscribed topics (they may not exist yet).
    pub extra_topics: Vec<String>,
    /// Extra `writeProperties`.
    pub write_properties: Vec<(String, String)>,
    /// `source.kafka.startingOffsets`.
    pub starting_offsets: String,
    /// `sql` or `rest`.
    pub catalog_type: String,
    /// Overrides `warehouse` (e.g. `s3://bucket/wh`).
    pub warehouse_uri: Option<String>,
    /// `spec.storage.s3.endpoint` (path-style, credentials from the environment).
    pub s3_endpoint: Option<String>,
    /// REST bearer token file (`spec.sink.catalog.auth.secretFile`).
    pub token_file: Option<PathBuf>,
    /// The token, for the readers.
    pub token: Option<String>,
    /// OAuth2 client credentials from [`OAUTH_ENV`] instead of a token (REST).
    pub oauth_env: bool,
    /// `checkpoint.timeout`.
    pub checkpoint_timeout: String,
    /// `source.kafka.topicPattern` instead of the topic list.
    pub topic_pattern: Option<String>,
    /// `spec.sink.catalog.caFile`.
    pub ca_file: Option<PathBuf>,
    /// `spec.source.kafka.security`, as YAML lines indented for that key.
    pub kafka_security: Option<String>,
    /// `spec.sink.route` instead of `table`, as YAML lines indented for that key.
    pub route: Option<String>,
    /// `spec.sink.schemaEvolution.enabled` (unset: the default, on).
    pub schema_evolution: Option<bool>,
}

impl PipelineSpec {
    /// A click-event pipeline with everything under `dir`.
    pub fn clicks(dir: &Path, bootstrap: &str, topic: &str) -> Self {
        Self {
            name: "clicks".into(),
            bootstrap: bootstrap.into(),
            topic: topic.into(),
            catalog_uri: format!("sqlite://{}", dir.join("catalog.db").display()),
            warehouse: dir.join("warehouse"),
            table: "analytics.clicks".into(),
            interval: "1s".into(),
            parallelism: 2,
            dead_letter: None,
            max_record_bytes: None,
            partition_by: vec!["day(ts)".into()],
            extra_topics: Vec::new(),
            write_properties: Vec::new(),
            starting_offsets: "earliest".into(),
            catalog_type: "sql".into(),
            warehouse_uri: None,
            s3_endpoint: None,
            token_file: None,
            token: None,
            oauth_env: false,
            ca_file: None,
            checkpoint_timeout: "60s".into(),
            topic_pattern: None,
            kafka_security: None,
            route: None,
            schema_evolution: None,
        }
    }

    /// The same pipeline on a REST catalog and S3 (moto): data, metadata and state in S3.
    pub fn on_rest_and_s3(mut self, dir: &Path, rest: &RestCatalog, moto: &Moto) -> Result<Self> {
        let token_file = dir.join("catalog-token");
        std::fs::write(&token_file, &rest.token)?;
        self.catalog_type = "rest".into();
        self.catalog_uri = rest.uri();
        self.warehouse_uri = Some(format!("s3://{}/warehouse", moto.bucket));
        self.s3_endpoint = Some(moto.endpoint());
        self.token_file = Some(token_file);
        self.token = Some(rest.token.clone());
        if rest.scheme == "https" {
            self.token_file = None;
            self.oauth_env = true;
            self.ca_file = rest.ca_file.clone();
        }
        Ok(self)
    }

    fn warehouse_text(&self) -> String {
        self.warehouse_uri
            .clone()
            .unwrap_or_else(|| self.warehouse.display().to_string())
    }

    pub fn yaml(&self) -> String {
        let dl = self
            .dead_letter
            .as_ref()
            .map(|t| format!("  deadLetter:\n    topic: {t}\n"))
            .unwrap_or_default();
        let max = self
            .max_record_bytes
            .map(|m| format!("    maxRecordBytes: {m}\n"))
            .unwrap_or_default();
        let parts = serde_json::to_string(&self.partition_by).unwrap();
        let mut props = BTreeMap::from([(
            "write.parquet.compression-codec".to_string(),
            "zstd".to_string(),
        )]);
        props.extend(self.write_properties.iter().cloned());
        let props: String = props
            .iter()
            .map(|(k, v)| format!("      {k}: \"{v}\"\n"))
            .collect();
        format!(
            r#"apiVersion: tidewater.dev/v1alpha1
kind: IngestionPipeline
metadata:
  name: {name}
spec:
  source:
    kafka:
      bootstrapServers: {bootstrap}
      {topics}
      startingOffsets: "{starting}"
      partitionDiscoveryInterval: 2s
{security}  format:
    type: json
{max}  sink:
    catalog:
      type: {catalog_type}
      uri: {uri}
      warehouse: {warehouse}
{auth}{table}
{evolution}    mode: append
    createTable:
      schema:
        - {{name: id, type: long, required: true}}
        - {{name: ts, type: timestamptz}}
        - {{name: user_id, type: string}}
        - {{name: event_type, type: string}}
        - {{name: amount, type: double}}
      partitionBy: {parts}
    writeProperties:
{props}  checkpoint:
    interval: {interval}
    timeout: {timeout}
  parallelism: {parallelism}
{dl}{storage}"#,
            name = self.name,
            bootstrap = self.bootstrap,
            topics = match &self.topic_pattern {
                Some(p) => format!("topicPattern: '{p}'"),
                None => format!(
                    "topics: [{}]",
                    std::iter::once(&self.topic)
                        .chain(&self.extra_topics)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            },
            security = self
                .kafka_security
                .as_ref()
                .map(|y| format!("      security:\n{y}"))
                .unwrap_or_default(),
            uri = self.catalog_uri,
            warehouse = self.warehouse_text(),
            catalog_type = self.catalog_type,
            auth = match (&self.token_file, self.oauth_env) {
                (_, true) => format!(
                    "      auth:\n        type: oauth2\n        secretEnv: {OAUTH_ENV}\n{}",
                    self.ca_file
                        .as_ref()
                        .map(|c| format!("      caFile: {}\n", c.display()))
                        .unwrap_or_default()
                ),
                (Some(f), false) => format!(
                    "      auth:\n        type: bearer\n        secretFile: {}\n",
                    f.display()
                ),
                (None, false) => String::new(),
            },
            storage = self
                .s3_endpoint
                .as_ref()
                .map(|e| format!(
                    "  storage:\n    s3:\n      endpoint: {e}\n      region: us-east-1\n      pathStyleAccess: true\n"
                ))
                .unwrap_or_default(),
            evolution = self
                .schema_evolution
                .map(|on| format!("    schemaEvolution:\n      enabled: {on}\n"))
                .unwrap_or_default(),
            table = match &self.route {
                Some(route) => format!("    route:\n{route}"),
                None => format!("    table: {}", self.table),
            },
            interval = self.interval,
            timeout = self.checkpoint_timeout,
            starting = self.starting_offsets,
            parallelism = self.parallelism,
        )
    }

    /// Writes the spec to `path`.
    pub fn write(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.yaml())?;
        Ok(())
    }

    /// What PyIceberg and DuckDB see in the table.
    pub fn inspect(&self) -> Result<TableView> {
        self.read("pyiceberg,duckdb")
    }

    /// Live data files as PyIceberg sees them.
    pub fn live_files(&self) -> Result<Vec<LiveDataFile>> {
        let view = self.read_with("pyiceberg", &["--files"])?;
        let text = |f: &serde_json::Value, k: &str| f[k].as_str().unwrap_or_default().to_string();
        Ok(view.raw["files"]
            .as_array()
            .map(|fs| {
                fs.iter()
                    .map(|f| LiveDataFile {
                        path: text(f, "path"),
                        codec: text(f, "codec"),
                        partition: text(f, "partition"),
                        size: f["size"].as_u64().unwrap_or_default(),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Live data files: path, partition (JSON), size in bytes.
    pub fn data_files_by_partition(&self) -> Result<Vec<(String, String, u64)>> {
        Ok(self
            .live_files()?
            .into_iter()
            .map(|f| (f.path, f.partition, f.size))
            .collect())
    }

    /// Live data files: path, Parquet codec.
    pub fn data_files(&self) -> Result<Vec<(String, String)>> {
        Ok(self
            .live_files()?
            .into_iter()
            .map(|f| (f.path, f.codec))
            .collect())
    }

    pub(crate) fn read(&self, readers: &str) -> Result<TableView> {
        self.read_with(readers, &[])
    }

    fn read_with(&self, readers: &str, extra: &[&str]) -> Result<TableView> {
        let mut args: Vec<String> = vec![
            "--catalog-type".into(),
            self.catalog_type.clone(),
            "--catalog-uri".into(),
            self.catalog_uri.clone(),
            "--table".into(),
            self.table.clone(),
            "--readers".into(),
            readers.into(),
            "--warehouse".into(),
            match &self.warehouse_uri {
                Some(w) => w.clone(),
                None => format!("file://{}", self.warehouse.display()),
            },
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        if self.oauth_env {
            args.extend([
                "--credential".into(),
                format!("{}:{}", OAUTH_CLIENT.0, OAUTH_CLIENT.1),
            ]);
        } else if let Some(t) = &self.token {
            args.extend(["--token".into(), t.clone()]);
        }
        if let Some(ca) = &self.ca_file {
            args.extend(["--ca-file".into(), ca.display().to_string()]);
        }
        if let Some(e) = &self.s3_endpoint {
            args.extend([
                "--s3-endpoint".into(),
                e.clone(),
                "--s3-key-id".into(),
                S3_KEY_ID.into(),
                "--s3-secret".into(),
                S3_SECRET.into(),
            ]);
        }
        run_reader(&args)
    }
}
