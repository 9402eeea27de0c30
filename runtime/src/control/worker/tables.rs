//! Where a worker gets the writers of a table: the ones its coordinator prepared, or the table
//! loaded from the catalog on first use — and created there when the route's table definition
//! allows it (`createTable`). The catalog is opened in the worker's own runtime, lazily.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use iceberg::Catalog;
use tidewater_crds::pipeline::CreateTableSpec;

use crate::{
    commit::{self, TableError},
    config::PipelineConfig,
    evolve::{Change, Observation, Sample},
    maintenance::commit::Cas,
    write::WriterFactory,
};

use super::WorkerError;

/// How long a table found missing (without a definition to create it) is not looked up again.
const MISSING_RECHECK: Duration = Duration::from_secs(10);

/// Why a table cannot be written by this record, or the worker's error.
pub(super) enum Unavailable {
    /// The record cannot go there (dead-lettered with this kind and reason).
    Record(&'static str, String),
    /// The worker cannot go on.
    Worker(WorkerError),
}

/// Writer factories by table (`namespace.name`).
#[derive(Clone)]
pub struct Tables {
    config: PipelineConfig,
    known: HashMap<String, WriterFactory>,
    catalog: Option<Arc<dyn Catalog>>,
    /// The catalog's compare-and-swap, for schema updates (connected on first use).
    cas: Option<Arc<Cas>>,
    missing: HashMap<String, Instant>,
}

impl Tables {
    /// Tables whose writers are already prepared; others are opened on first use.
    pub fn new(config: &PipelineConfig, prepared: Vec<(String, WriterFactory)>) -> Self {
        Self {
            config: config.clone(),
            known: prepared.into_iter().collect(),
            catalog: None,
            cas: None,
            missing: HashMap::new(),
        }
    }

    /// The definition a table routed by `rule` is created with, if any.
    pub(super) fn create_definition(&self, rule: Option<usize>) -> Option<&CreateTableSpec> {
        self.config.create_table(rule)
    }

    /// The writers of `table`, loading or creating it (with the definition of route `rule`,
    /// its columns taken from `sample` when the definition lists none).
    pub(super) async fn factory(
        &mut self,
        table: &str,
        rule: Option<usize>,
        sample: Sample<'_>,
    ) -> Result<WriterFactory, Unavailable> {
        if let Some(f) = self.known.get(table) {
            return Ok(f.clone());
        }
        if self
            .missing
            .get(table)
            .is_some_and(|at| at.elapsed() < MISSING_RECHECK)
        {
            return Err(missing(table));
        }
        let catalog = self
            .catalog()
            .await
            .map_err(|e| Unavailable::Worker(e.into()))?;
        let loaded = commit::open_table(
            catalog.as_ref(),
            &self.config,
            table,
            rule,
            true,
            Some(sample),
        )
        .await;
        let loaded = match loaded {
            Ok(t) => t,
            Err(TableError::Missing(_)) => {
                self.missing.insert(table.to_string(), Instant::now());
                return Err(missing(table));
            }
            Err(TableError::Definition(reason)) => {
                return Err(Unavailable::Record("table-definition", reason));
            }
            Err(e) => return Err(Unavailable::Worker(e.into())),
        };
        let factory = WriterFactory::new(&loaded, &self.config.resource.spec.sink.write_properties)
            .map_err(|e| Unavailable::Worker(e.into()))?;
        tracing::info!(%table, "writing to table");
        self.known.insert(table.to_string(), factory.clone());
        Ok(factory)
    }

    /// `table` as the catalog has it now.
    pub(super) async fn load(&mut self, table: &str) -> Result<iceberg::table::Table, WorkerError> {
        let catalog = self.catalog().await?;
        Ok(commit::open_table(catalog.as_ref(), &self.config, table, None, false, None).await?)
    }

    async fn catalog(&mut self) -> Result<Arc<dyn Catalog>, TableError> {
        if let Some(c) = &self.catalog {
            return Ok(c.clone());
        }
        let c = commit::open_pipeline_catalog(&self.config).await?.catalog;
        self.catalog = Some(c.clone());
        Ok(c)
    }

    /// Evolves `table`'s schema for what a record showed; returns the writers for the table as
    /// it is afterwards, and the changes made (by this call; empty when another writer made
    /// them first or nothing may change).
    pub(super) async fn evolve(
        &mut self,
        table: &str,
        observation: &Observation,
    ) -> Result<(WriterFactory, Vec<Change>), WorkerError> {
        let catalog = self.catalog().await?;
        let cas = match &self.cas {
            Some(c) => c.clone(),
            None => {
                let c = Arc::new(
                    Cas::connect(&self.config.catalog)
                        .await
                        .map_err(|e| TableError::Evolve(e.to_string()))?,
                );
                self.cas = Some(c.clone());
                c
            }
        };
        let relax = self
            .config
            .resource
            .spec
            .sink
            .schema_evolution
            .make_required_optional;
        let (loaded, changes) =
            commit::evolve_table(catalog.as_ref(), &cas, table, observation, relax).await?;
        let factory =
            WriterFactory::new(&loaded, &self.config.resource.spec.sink.write_properties)?;
        self.known.insert(table.to_string(), factory.clone());
        Ok((factory, changes))
    }
}

fn missing(table: &str) -> Unavailable {
    Unavailable::Record(
        "unroutable",
        format!("table {table} does not exist and no createTable definition applies to it"),
    )
}
