//! The Iceberg side: opening the catalog, creating the table on first use, and the
//! exactly-once commit (validated against the table's history, pinned to the version that
//! was validated, never rebased).

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use iceberg::{
    Catalog, CatalogBuilder, ErrorKind, Namespace, NamespaceIdent, TableCreation, TableIdent,
    spec::{
        NestedField, PrimitiveType, Schema, TableMetadata, Transform as IcebergTransform, Type,
        UnboundPartitionSpec, deserialize_data_file_from_json,
    },
    table::Table,
    transaction::{ApplyTransactionAction, Transaction},
};
use iceberg_catalog_rest::RestCatalogBuilder;
use iceberg_catalog_sql::SqlCatalogBuilder;
use iceberg_storage_opendal::OpenDalResolvingStorageFactory;
use tidewater_crds::{
    pipeline::{CatalogAuthSpec, CatalogAuthType, CatalogType, CreateTableSpec},
    types::{ColumnType, PartitionField, Transform},
};

use crate::{
    checkpoint::{
        CheckpointRecord, CommitDecision, CommittedState, SUMMARY_CHECKPOINT_ID, SUMMARY_OFFSETS,
        SUMMARY_PIPELINE_UID, SUMMARY_RUN_ID, SUMMARY_STATE_LOCATION, decide_commit,
    },
    config::{CatalogConnection, PipelineConfig},
    failpoint,
};

mod pinned;
use pinned::PinnedCatalog;

/// Errors of the Iceberg side.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// The catalog or file IO failed.
    #[error("iceberg: {0}")]
    Iceberg(#[from] iceberg::Error),
    /// The table is missing and there is no definition to create it.
    #[error("table {0} does not exist and spec.sink.createTable is not set")]
    Missing(String),
    /// The spec's table definition cannot be turned into an Iceberg schema.
    #[error("spec.sink.createTable: {0}")]
    Definition(String),
    /// Another writer with the same pipeline uid moved the table: this writer must stop.
    #[error("fenced: {0}")]
    Fenced(String),
    /// The table history has a tidewater summary that cannot be read.
    #[error("table history: {0}")]
    History(String),
}

/// Opens the catalog of the spec (creating a SQLite file when missing). `storage_props` are
/// the resolved `s3.*` properties, handed to the catalog's file IO.
pub async fn open_catalog(
    config: &CatalogConnection,
    storage_props: &BTreeMap<String, String>,
) -> Result<Arc<dyn Catalog>, TableError> {
    let mut props: HashMap<String, String> = storage_props
        .clone()
        .into_iter()
        .chain(config.properties.clone())
        .collect();
    if let Some(local) = config.warehouse.strip_prefix("file://") {
        std::fs::create_dir_all(local)
            .map_err(|e| TableError::Definition(format!("cannot create warehouse {local}: {e}")))?;
    }
    props.insert("warehouse".into(), config.warehouse.clone());
    let storage = Arc::new(OpenDalResolvingStorageFactory::new());
    match config.catalog_type {
        CatalogType::Sql => {
            props.insert("uri".into(), sqlite_create_mode(&config.uri)?);
            let catalog = SqlCatalogBuilder::default()
                .with_storage_factory(storage)
                .load(&config.name, props)
                .await?;
            Ok(Arc::new(catalog))
        }
        CatalogType::Rest => {
            props.insert("uri".into(), config.uri.clone());
            if let Some(auth) = &config.auth {
                rest_auth(auth, &mut props)?;
            }
            let mut builder = RestCatalogBuilder::default().with_storage_factory(storage);
            if let Some(ca) = &config.ca_file {
                builder = builder.with_client(client_trusting(ca)?);
            }
            let catalog = builder.load(&config.name, props).await?;
            Ok(Arc::new(catalog))
        }
    }
}

/// SQLite URIs get `mode=rwc` (and their directory) so the file is created when missing.
fn sqlite_create_mode(uri: &str) -> Result<String, TableError> {
    let mut uri = uri.to_string();
    if let Some(path) = uri.strip_prefix("sqlite://") {
        let file = path.split('?').next().unwrap_or(path);
        if let Some(parent) = std::path::Path::new(file).parent() {
            std::fs::create_dir_all(parent).map_err(|e| {
                TableError::Definition(format!("cannot create {}: {e}", parent.display()))
            })?;
        }
        if !uri.contains("mode=") {
            uri.push_str(if uri.contains('?') {
                "&mode=rwc"
            } else {
                "?mode=rwc"
            });
        }
    }
    Ok(uri)
}

/// Reads the REST catalog secret from its file or variable.
pub(crate) fn read_catalog_secret(auth: &CatalogAuthSpec) -> Result<String, TableError> {
    Ok(match (&auth.secret_file, &auth.secret_env) {
        (Some(f), _) => std::fs::read_to_string(f)
            .map(|s| s.trim().to_string())
            .map_err(|e| {
                TableError::Definition(format!(
                    "spec.sink.catalog.auth.secretFile: cannot read {f}: {e}"
                ))
            })?,
        (None, Some(v)) => std::env::var(v).map_err(|_| {
            TableError::Definition(format!(
                "spec.sink.catalog.auth.secretEnv: environment variable {v} is not set"
            ))
        })?,
        (None, None) => {
            return Err(TableError::Definition(
                "spec.sink.catalog.auth: no secretFile or secretEnv".into(),
            ));
        }
    })
}

/// Reads the REST catalog secret from its file or variable into the catalog properties.
fn rest_auth(
    auth: &CatalogAuthSpec,
    props: &mut HashMap<String, String>,
) -> Result<(), TableError> {
    let secret = read_catalog_secret(auth)?;
    match auth.auth_type {
        CatalogAuthType::Bearer => {
            props.insert("token".into(), secret);
        }
        CatalogAuthType::Oauth2 => {
            props.insert("credential".into(), secret);
            if let Some(uri) = &auth.oauth2_server_uri {
                props.insert("oauth2-server-uri".into(), uri.clone());
            }
            if let Some(scope) = &auth.scope {
                props.insert("scope".into(), scope.clone());
            }
        }
    }
    Ok(())
}

/// An HTTP client that also trusts the PEM certificates in `ca_file`.
pub(crate) fn client_trusting(ca_file: &std::path::Path) -> Result<reqwest::Client, TableError> {
    let bad = |e: String| {
        TableError::Definition(format!(
            "spec.sink.catalog.caFile {}: {e}",
            ca_file.display()
        ))
    };
    let pem = std::fs::read(ca_file).map_err(|e| bad(e.to_string()))?;
    let mut builder = reqwest::Client::builder();
    for cert in reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| bad(e.to_string()))? {
        builder = builder.add_root_certificate(cert);
    }
    builder.build().map_err(|e| bad(e.to_string()))
}

/// The table identifier of the spec.
pub fn table_ident(config: &PipelineConfig) -> Result<TableIdent, TableError> {
    let ns = NamespaceIdent::from_vec(config.table_namespace.clone())?;
    Ok(TableIdent::new(ns, config.table_name.clone()))
}

/// Loads the table, creating it (and its namespace) from `createTable` when missing.
pub async fn load_or_create(
    catalog: &dyn Catalog,
    config: &PipelineConfig,
) -> Result<Table, TableError> {
    let ident = table_ident(config)?;
    if catalog.table_exists(&ident).await? {
        return Ok(catalog.load_table(&ident).await?);
    }
    let create = config
        .resource
        .spec
        .sink
        .create_table
        .as_ref()
        .ok_or_else(|| TableError::Missing(config.table_display()))?;
    let (schema, spec) = table_definition(create)?;
    if !catalog.namespace_exists(ident.namespace()).await? {
        match catalog
            .create_namespace(ident.namespace(), HashMap::new())
            .await
        {
            Ok(Namespace { .. }) => {}
            Err(e)
                if catalog
                    .namespace_exists(ident.namespace())
                    .await
                    .unwrap_or(false) =>
            {
                tracing::debug!(error = %e, "namespace created concurrently");
            }
            Err(e) => return Err(e.into()),
        }
    }
    let creation = TableCreation::builder()
        .name(ident.name().to_string())
        .schema(schema)
        .partition_spec(spec)
        .properties(create.properties.clone())
        .build();
    match catalog.create_table(ident.namespace(), creation).await {
        Ok(t) => {
            tracing::info!(table = %config.table_display(), "created table");
            Ok(t)
        }
        Err(e) if catalog.table_exists(&ident).await.unwrap_or(false) => {
            tracing::debug!(error = %e, "table created concurrently");
            Ok(catalog.load_table(&ident).await?)
        }
        Err(e) => Err(e.into()),
    }
}

/// Iceberg schema (field ids 1..n in column order) and partition spec of a table definition.
pub fn table_definition(
    create: &CreateTableSpec,
) -> Result<(Schema, UnboundPartitionSpec), TableError> {
    let mut fields = Vec::new();
    let mut ids = HashMap::new();
    for (i, col) in create.schema.iter().enumerate() {
        let id =
            i32::try_from(i + 1).map_err(|_| TableError::Definition("too many columns".into()))?;
        let ty = ColumnType::parse(&col.column_type).map_err(TableError::Definition)?;
        let ty = Type::Primitive(primitive(ty));
        let mut field = if col.required {
            NestedField::required(id, &col.name, ty)
        } else {
            NestedField::optional(id, &col.name, ty)
        };
        if let Some(doc) = &col.doc {
            field = field.with_doc(doc);
        }
        ids.insert(col.name.clone(), id);
        fields.push(Arc::new(field));
    }
    let schema = Schema::builder().with_fields(fields).build()?;
    let mut spec = UnboundPartitionSpec::builder();
    for text in &create.partition_by {
        let field = PartitionField::parse(text).map_err(TableError::Definition)?;
        let source = *ids
            .get(&field.column)
            .ok_or_else(|| TableError::Definition(format!("unknown column `{}`", field.column)))?;
        let (transform, name) = match field.transform {
            Transform::Identity => (IcebergTransform::Identity, field.column.clone()),
            Transform::Year => (IcebergTransform::Year, format!("{}_year", field.column)),
            Transform::Month => (IcebergTransform::Month, format!("{}_month", field.column)),
            Transform::Day => (IcebergTransform::Day, format!("{}_day", field.column)),
            Transform::Hour => (IcebergTransform::Hour, format!("{}_hour", field.column)),
            Transform::Bucket(n) => (
                IcebergTransform::Bucket(n),
                format!("{}_bucket", field.column),
            ),
            Transform::Truncate(w) => (
                IcebergTransform::Truncate(w),
                format!("{}_trunc", field.column),
            ),
        };
        spec = spec.add_partition_field(source, name, transform)?;
    }
    Ok((schema, spec.build()))
}

fn primitive(t: ColumnType) -> PrimitiveType {
    match t {
        ColumnType::Boolean => PrimitiveType::Boolean,
        ColumnType::Int => PrimitiveType::Int,
        ColumnType::Long => PrimitiveType::Long,
        ColumnType::Float => PrimitiveType::Float,
        ColumnType::Double => PrimitiveType::Double,
        ColumnType::Decimal { precision, scale } => PrimitiveType::Decimal { precision, scale },
        ColumnType::Date => PrimitiveType::Date,
        ColumnType::Timestamp => PrimitiveType::Timestamp,
        ColumnType::Timestamptz => PrimitiveType::Timestamptz,
        ColumnType::String => PrimitiveType::String,
        ColumnType::Uuid => PrimitiveType::Uuid,
        ColumnType::Binary => PrimitiveType::Binary,
    }
}

/// The newest snapshot in the current branch's history that was committed by `uid`.
pub fn last_pipeline_commit(
    metadata: &TableMetadata,
    uid: &str,
) -> Result<Option<CommittedState>, TableError> {
    let mut current = metadata.current_snapshot();
    while let Some(snapshot) = current {
        if let Some(state) = CommittedState::from_summary(
            snapshot.snapshot_id(),
            &snapshot.summary().additional_properties,
            uid,
        ) {
            return state.map(Some).map_err(TableError::History);
        }
        current = snapshot
            .parent_snapshot_id()
            .and_then(|p| metadata.snapshot_by_id(p));
    }
    Ok(None)
}

/// Result of committing one checkpoint to one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    /// A new snapshot was committed.
    Committed {
        /// Its id.
        snapshot_id: i64,
    },
    /// The table already held this checkpoint.
    AlreadyCommitted {
        /// The snapshot holding it.
        snapshot_id: i64,
    },
}

impl CommitOutcome {
    /// The snapshot that holds the checkpoint.
    pub fn snapshot_id(self) -> i64 {
        match self {
            Self::Committed { snapshot_id } | Self::AlreadyCommitted { snapshot_id } => snapshot_id,
        }
    }
}

/// Commits the files of `record` for `table_key` exactly once.
///
/// Each attempt loads the table, checks with [`decide_commit`] that the table's newest commit
/// of this pipeline is exactly where the record starts, and commits pinned to that version.
/// When any other writer changed the table in between, the attempt fails instead of rebasing
/// and the next attempt validates again.
pub async fn commit_checkpoint(
    catalog: &dyn Catalog,
    ident: &TableIdent,
    table_key: &str,
    record: &CheckpointRecord,
    state_location: &str,
) -> Result<CommitOutcome, TableError> {
    let plan = record
        .commits
        .get(table_key)
        .ok_or_else(|| TableError::History(format!("checkpoint has no files for {table_key}")))?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let table = catalog.load_table(ident).await?;
        let last = last_pipeline_commit(table.metadata(), &record.pipeline_uid)?;
        match decide_commit(last.as_ref(), record, table_key) {
            CommitDecision::AlreadyCommitted { snapshot_id } => {
                return Ok(CommitOutcome::AlreadyCommitted { snapshot_id });
            }
            CommitDecision::Fenced { reason } => return Err(TableError::Fenced(reason)),
            CommitDecision::Commit => {}
        }
        let metadata = table.metadata();
        let schema = metadata.current_schema();
        let spec = metadata
            .partition_spec_by_id(plan.partition_spec_id)
            .ok_or_else(|| {
                TableError::History(format!("partition spec {} is gone", plan.partition_spec_id))
            })?;
        let partition_type = spec.partition_type(schema)?;
        let files = plan
            .data_files
            .iter()
            .map(|json| {
                deserialize_data_file_from_json(
                    json,
                    plan.partition_spec_id,
                    &partition_type,
                    schema,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let properties = HashMap::from([
            (
                SUMMARY_PIPELINE_UID.to_string(),
                record.pipeline_uid.clone(),
            ),
            (
                SUMMARY_CHECKPOINT_ID.to_string(),
                record.checkpoint_id.to_string(),
            ),
            (
                SUMMARY_OFFSETS.to_string(),
                serde_json::to_string(&record.offsets).expect("offsets serialize"),
            ),
            (SUMMARY_RUN_ID.to_string(), record.run_id.clone()),
            (
                SUMMARY_STATE_LOCATION.to_string(),
                state_location.to_string(),
            ),
        ]);
        let tx = Transaction::new(&table);
        let tx = tx
            .fast_append()
            // Unique file names make the duplicate scan (cost grows with history) unnecessary.
            .with_check_duplicate(false)
            .add_data_files(files)
            .set_snapshot_properties(properties)
            .apply(tx)?;
        let pinned = PinnedCatalog {
            inner: catalog,
            pinned: table.clone(),
        };
        match tx.commit(&pinned).await {
            Ok(committed) => {
                failpoint::hit(failpoint::points::AFTER_COMMIT);
                let snapshot_id = committed
                    .metadata()
                    .current_snapshot_id()
                    .ok_or_else(|| TableError::History("commit left no current snapshot".into()))?;
                return Ok(CommitOutcome::Committed { snapshot_id });
            }
            Err(e) if e.kind() == ErrorKind::CatalogCommitConflicts && attempt < 10 => {
                tracing::info!(attempt, error = %e, "table changed during commit; validating again");
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use iceberg::spec::Transform as T;
    use tidewater_crds::pipeline::ColumnSpec;

    use super::*;

    fn column(name: &str, ty: &str, required: bool) -> ColumnSpec {
        ColumnSpec {
            name: name.into(),
            column_type: ty.into(),
            required,
            doc: None,
        }
    }

    #[test]
    fn table_definition_assigns_ids_types_and_transforms() {
        let create = CreateTableSpec {
            schema: vec![
                column("id", "long", true),
                column("ts", "timestamptz", false),
                column("name", "string", false),
                column("price", "decimal(10,2)", false),
            ],
            partition_by: vec![
                "day(ts)".into(),
                "bucket(16, id)".into(),
                "truncate(3, name)".into(),
                "name".into(),
            ],
            properties: Default::default(),
        };
        let (schema, spec) = table_definition(&create).unwrap();
        let id = schema.field_by_name("id").unwrap();
        assert_eq!((id.id, id.required), (1, true));
        let price = schema.field_by_name("price").unwrap();
        assert_eq!(price.id, 4);
        assert_eq!(
            *price.field_type,
            Type::Primitive(PrimitiveType::Decimal {
                precision: 10,
                scale: 2
            })
        );
        let fields: Vec<(i32, String, T)> = spec
            .fields()
            .iter()
            .map(|f| (f.source_id, f.name.clone(), f.transform))
            .collect();
        assert_eq!(
            fields,
            vec![
                (2, "ts_day".into(), T::Day),
                (1, "id_bucket".into(), T::Bucket(16)),
                (3, "name_trunc".into(), T::Truncate(3)),
                (3, "name".into(), T::Identity),
            ]
        );
    }

    #[test]
    fn the_newest_commit_of_the_pipeline_is_found_in_the_history() {
        use iceberg::spec::{Operation, Snapshot, SortOrder, Summary, TableMetadataBuilder};
        let create = CreateTableSpec {
            schema: vec![column("id", "long", true)],
            partition_by: vec![],
            properties: Default::default(),
        };
        let (schema, spec) = table_definition(&create).unwrap();
        let mut builder = TableMetadataBuilder::new(
            schema.clone(),
            spec.bind(schema).unwrap(),
            SortOrder::unsorted_order(),
            "file:///tmp/t".into(),
            iceberg::spec::FormatVersion::V2,
            HashMap::new(),
        )
        .unwrap();
        let empty = builder.clone().build().unwrap().metadata;
        assert_eq!(last_pipeline_commit(&empty, "uid").unwrap(), None);
        let now = chrono::Utc::now().timestamp_millis();
        let ours = |ckpt: &str, offset: &str| {
            HashMap::from([
                (SUMMARY_PIPELINE_UID.to_string(), "uid".to_string()),
                (SUMMARY_CHECKPOINT_ID.to_string(), ckpt.to_string()),
                (
                    SUMMARY_OFFSETS.to_string(),
                    format!(r#"{{"t":{{"0":{offset}}}}}"#),
                ),
            ])
        };
        // Two commits of ours, then one of another pipeline, then one without properties
        // (e.g. maintenance).
        let summaries = [
            ours("1", "5"),
            ours("2", "9"),
            HashMap::from([(SUMMARY_PIPELINE_UID.to_string(), "other".to_string())]),
            HashMap::new(),
        ];
        for (i, props) in summaries.into_iter().enumerate() {
            let id = i64::try_from(i).unwrap() + 1;
            let snapshot = Snapshot::builder()
                .with_snapshot_id(id)
                .with_parent_snapshot_id((id > 1).then_some(id - 1))
                .with_sequence_number(id)
                .with_timestamp_ms(now + id)
                .with_manifest_list(format!("file:///tmp/t/metadata/snap-{id}.avro"))
                .with_schema_id(0)
                .with_summary(Summary {
                    operation: Operation::Append,
                    additional_properties: props,
                })
                .build();
            builder = builder.set_branch_snapshot(snapshot, "main").unwrap();
        }
        let metadata = builder.build().unwrap().metadata;
        let found = last_pipeline_commit(&metadata, "uid").unwrap().unwrap();
        assert_eq!((found.snapshot_id, found.checkpoint_id), (2, 2));
        assert_eq!(crate::offsets::get_offset(&found.offsets, "t", 0), Some(9));
        // A tidewater summary without its checkpoint id is reported, not skipped.
        let err = last_pipeline_commit(&metadata, "other")
            .unwrap_err()
            .to_string();
        assert!(err.contains("snapshot 3: no checkpoint id"), "{err}");
    }
}
