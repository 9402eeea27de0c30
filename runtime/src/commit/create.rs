//! Tables on first use: the spec's `createTable` definition mapped to an Iceberg schema and
//! partition spec (field ids assigned here), and load-or-create against the catalog.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use iceberg::{
    Catalog, Namespace, NamespaceIdent, TableCreation, TableIdent,
    spec::{
        FormatVersion, NestedField, NullOrder, PrimitiveType, Schema, SortDirection,
        SortField as IcebergSortField, SortOrder, Transform as IcebergTransform, Type,
        UnboundPartitionSpec,
    },
    table::Table,
};
use tidewater_crds::{
    pipeline::CreateTableSpec,
    types::{ColumnType, PartitionField, SortField, Transform},
};

use crate::{config::PipelineConfig, evolve::Sample};

use super::TableError;

/// The identifier of a table key (`namespace.name`, as checkpoint records name tables).
pub fn parse_ident(table: &str) -> Result<TableIdent, TableError> {
    let (namespace, name) = tidewater_crds::types::parse_table_ident(table)
        .map_err(|e| TableError::History(format!("table key: {e}")))?;
    Ok(TableIdent::new(NamespaceIdent::from_vec(namespace)?, name))
}

/// Loads `table`, creating it (and its namespace) from `create` when missing — a definition
/// without columns takes them from `first_record` (a JSON record's fields, an Avro writer
/// schema). Safe against other writers creating it at
/// the same time: the loser loads the winner's table.
pub async fn load_or_create(
    catalog: &dyn Catalog,
    table: &str,
    create: Option<&CreateTableSpec>,
    primary_key: &[String],
    first_record: Option<Sample<'_>>,
) -> Result<Table, TableError> {
    let ident = parse_ident(table)?;
    if catalog.table_exists(&ident).await? {
        return Ok(catalog.load_table(&ident).await?);
    }
    let create = create.ok_or_else(|| TableError::Missing(table.to_string()))?;
    let definition = |e: String| TableError::Definition(format!("table {table}: {e}"));
    let (schema, spec) = match (create.schema.is_empty(), first_record) {
        (false, _) => table_definition(create).map_err(|e| definition(e.to_string()))?,
        (true, None) => return Err(TableError::NeedsRecord(table.to_string())),
        (true, Some(Sample::Avro(writer))) => {
            let schema = crate::evolve::table_schema(writer, &create.timestamp_fields)
                .map_err(|e| definition(format!("cannot map the Avro writer schema: {e}")))?;
            let spec = partition_spec(create, &schema).map_err(|e| definition(e.to_string()))?;
            (schema, spec)
        }
        (true, Some(Sample::Json(record))) => {
            let schema = crate::evolve::infer_schema(create, record)
                .map_err(|e| definition(format!("cannot infer its columns: {e}")))?;
            let spec = partition_spec(create, &schema).map_err(|e| definition(e.to_string()))?;
            (schema, spec)
        }
    };
    let schema = with_identifier_fields(schema, primary_key).map_err(definition)?;
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
    let order = sort_order(create, &schema).map_err(|e| definition(e.to_string()))?;
    let format_version = match create.format_version {
        Some(1) => FormatVersion::V1,
        _ => FormatVersion::V2,
    };
    let creation = TableCreation::builder()
        .name(ident.name().to_string())
        .schema(schema)
        .partition_spec(spec)
        .sort_order_opt(order)
        .format_version(format_version)
        .properties(create.properties.clone())
        .build();
    match catalog.create_table(ident.namespace(), creation).await {
        Ok(t) => {
            tracing::info!(%table, "created table");
            Ok(t)
        }
        Err(e) if catalog.table_exists(&ident).await.unwrap_or(false) => {
            tracing::debug!(error = %e, "table created concurrently");
            Ok(catalog.load_table(&ident).await?)
        }
        Err(e) => Err(e.into()),
    }
}

/// `schema` with `primary_key` as its identifier fields (made required: an inferred schema's
/// columns are optional). Unchanged when the key is empty.
pub fn with_identifier_fields(schema: Schema, primary_key: &[String]) -> Result<Schema, String> {
    if primary_key.is_empty() {
        return Ok(schema);
    }
    let mut ids = Vec::new();
    for name in primary_key {
        let field = schema
            .field_by_name(name)
            .ok_or_else(|| format!("primary key column `{name}` is not in the table"))?;
        ids.push(field.id);
    }
    let fields = schema.as_struct().fields().iter().map(|f| {
        if ids.contains(&f.id) && !f.required {
            let mut f = (**f).clone();
            f.required = true;
            Arc::new(f)
        } else {
            f.clone()
        }
    });
    Schema::builder()
        .with_schema_id(schema.schema_id())
        .with_fields(fields)
        .with_identifier_field_ids(ids)
        .build()
        .map_err(|e| e.to_string())
}

/// Iceberg schema (field ids 1..n in column order) and partition spec of a table definition.
pub fn table_definition(
    create: &CreateTableSpec,
) -> Result<(Schema, UnboundPartitionSpec), TableError> {
    let mut fields = Vec::new();
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
        fields.push(Arc::new(field));
    }
    let schema = Schema::builder().with_fields(fields).build()?;
    let spec = partition_spec(create, &schema)?;
    Ok((schema, spec))
}

/// The partition spec of a table definition over `schema`'s top-level columns.
pub fn partition_spec(
    create: &CreateTableSpec,
    schema: &Schema,
) -> Result<UnboundPartitionSpec, TableError> {
    let mut spec = UnboundPartitionSpec::builder();
    for text in &create.partition_by {
        let field = PartitionField::parse(text).map_err(TableError::Definition)?;
        let source = schema
            .as_struct()
            .field_by_name(&field.column)
            .map(|f| f.id)
            .ok_or_else(|| TableError::Definition(format!("unknown column `{}`", field.column)))?;
        let name = match field.transform {
            Transform::Identity => field.column.clone(),
            Transform::Year => format!("{}_year", field.column),
            Transform::Month => format!("{}_month", field.column),
            Transform::Day => format!("{}_day", field.column),
            Transform::Hour => format!("{}_hour", field.column),
            Transform::Bucket(_) => format!("{}_bucket", field.column),
            Transform::Truncate(_) => format!("{}_trunc", field.column),
        };
        spec = spec.add_partition_field(source, name, iceberg_transform(field.transform))?;
    }
    Ok(spec.build())
}

fn iceberg_transform(t: Transform) -> IcebergTransform {
    match t {
        Transform::Identity => IcebergTransform::Identity,
        Transform::Year => IcebergTransform::Year,
        Transform::Month => IcebergTransform::Month,
        Transform::Day => IcebergTransform::Day,
        Transform::Hour => IcebergTransform::Hour,
        Transform::Bucket(n) => IcebergTransform::Bucket(n),
        Transform::Truncate(w) => IcebergTransform::Truncate(w),
    }
}

/// The sort order of a table definition over `schema` (`None`: unsorted).
pub fn sort_order(
    create: &CreateTableSpec,
    schema: &Schema,
) -> Result<Option<SortOrder>, TableError> {
    if create.sort_by.is_empty() {
        return Ok(None);
    }
    let mut order = SortOrder::builder();
    order.with_order_id(1);
    for text in &create.sort_by {
        let f = SortField::parse(text).map_err(TableError::Definition)?;
        let source_id = schema
            .as_struct()
            .field_by_name(&f.field.column)
            .map(|c| c.id)
            .ok_or_else(|| {
                TableError::Definition(format!("sortBy: unknown column `{}`", f.field.column))
            })?;
        order.with_sort_field(
            IcebergSortField::builder()
                .source_id(source_id)
                .transform(iceberg_transform(f.field.transform))
                .direction(if f.descending {
                    SortDirection::Descending
                } else {
                    SortDirection::Ascending
                })
                .null_order(if f.nulls_first {
                    NullOrder::First
                } else {
                    NullOrder::Last
                })
                .build(),
        );
    }
    Ok(Some(order.build(schema)?))
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

/// A pipeline's catalog, opened with the pipeline's storage settings.
pub struct PipelineCatalog {
    /// The catalog.
    pub catalog: Arc<dyn Catalog>,
    /// The resolved `s3.*` properties (for the state store too).
    pub storage_props: BTreeMap<String, String>,
}

/// Opens the pipeline's catalog.
pub async fn open_pipeline_catalog(config: &PipelineConfig) -> Result<PipelineCatalog, TableError> {
    let storage_props = match &config.s3 {
        Some(s3) => crate::storage::s3_properties(s3)?,
        None => BTreeMap::new(),
    };
    let catalog = super::open_catalog(&config.catalog, &storage_props).await?;
    Ok(PipelineCatalog {
        catalog,
        storage_props,
    })
}

/// Loads `table` of a pipeline's catalog; only `create` (the coordinator, or a worker routing
/// its first record to a table) creates it when missing.
pub async fn open_table(
    catalog: &dyn Catalog,
    config: &PipelineConfig,
    table: &str,
    rule: Option<usize>,
    create: bool,
    first_record: Option<Sample<'_>>,
) -> Result<Table, TableError> {
    if create {
        return load_or_create(
            catalog,
            table,
            config.create_table(rule),
            &config.resource.spec.sink.primary_key,
            first_record,
        )
        .await;
    }
    let ident = parse_ident(table)?;
    catalog
        .load_table(&ident)
        .await
        .map_err(|source| TableError::Load {
            table: table.to_string(),
            source: Box::new(source),
        })
}
