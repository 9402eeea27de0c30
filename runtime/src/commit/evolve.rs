//! Schema changes committed to the catalog (metadata only): the table's next schema from
//! `evolve::apply`, swapped in with the catalog's compare-and-swap. A lost race reloads the
//! table and decides again against the winner's schema, so two workers meeting the same new
//! field add one column, once.

use iceberg::{Catalog, table::Table};

use crate::{
    evolve::{self, Change, Observation},
    maintenance::{
        MaintenanceError,
        commit::{Cas, Swap},
    },
};

use super::{TableError, parse_ident};

/// Attempts before giving up on a table that keeps changing.
const ATTEMPTS: usize = 10;

/// Evolves `table` for `observation`; returns the table as it is afterwards and the changes
/// this call made (empty when the schema already allows the record, or cannot evolve for it).
/// Traced as `schema_update`.
#[tracing::instrument(name = "schema_update", skip_all, fields(table = %table))]
pub async fn evolve_table(
    catalog: &dyn Catalog,
    cas: &Cas,
    table: &str,
    observation: &Observation,
    relax_required: bool,
) -> Result<(Table, Vec<Change>), TableError> {
    let ident = parse_ident(table)?;
    // Changes sent in a commit whose outcome is unknown: if the table shows them, they are ours.
    let mut unknown = Vec::new();
    for _ in 0..ATTEMPTS {
        let current = catalog.load_table(&ident).await?;
        let metadata = current.metadata();
        let changes = evolve::decide(metadata.current_schema(), observation, relax_required);
        if changes.is_empty() {
            return Ok((current, unknown));
        }
        unknown.clear();
        let schema = evolve::apply(
            metadata.current_schema(),
            &changes,
            metadata.last_column_id(),
        )?;
        let next = metadata
            .clone()
            .into_builder(current.metadata_location().map(str::to_string))
            .add_current_schema(schema)?
            .build()?;
        match cas.swap(&ident, &current, next).await {
            Ok(Swap::Committed) => return Ok((catalog.load_table(&ident).await?, changes)),
            Ok(Swap::Conflict) => {
                tracing::info!(%table, "table changed during a schema update; deciding again");
            }
            // The catalog may have applied it: the reloaded schema tells (then nothing is left
            // to change and the table is returned as it is).
            Err(MaintenanceError::CommitUnknown(reason)) => {
                tracing::warn!(%table, %reason, "schema update outcome unknown; looking at the table again");
                unknown = changes;
            }
            Err(e) => return Err(TableError::Evolve(format!("{table}: {e}"))),
        }
    }
    Err(TableError::Evolve(format!(
        "{table}: the table changed {ATTEMPTS} times during a schema update"
    )))
}
