//! Independent readers of what the runtime wrote: PyIceberg and DuckDB through e2e/readers (a
//! Python process), rows, distinct ids and live data files.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::{PipelineSpec, repo_root, venv_python};

/// One live data file as PyIceberg lists it.
#[derive(Debug, Clone)]
pub struct LiveDataFile {
    pub path: String,
    /// Parquet codec of the first column chunk.
    pub codec: String,
    /// The partition tuple as JSON.
    pub partition: String,
    pub size: u64,
}

/// Counts from the independent readers.
#[derive(Debug, Clone, Default)]
pub struct TableView {
    pub exists: bool,
    pub pyiceberg_rows: u64,
    pub pyiceberg_distinct: u64,
    pub duckdb_rows: u64,
    pub duckdb_distinct: u64,
    pub raw: serde_json::Value,
}

impl TableView {
    /// Both readers see exactly `n` rows with `n` distinct ids: nothing lost, nothing twice.
    #[track_caller]
    pub fn assert_exactly(&self, n: u64) {
        assert_eq!(self.pyiceberg_rows, n, "PyIceberg rows: {self:?}");
        assert_eq!(
            self.pyiceberg_distinct, n,
            "PyIceberg distinct ids: {self:?}"
        );
        assert_eq!(self.duckdb_rows, n, "DuckDB rows: {self:?}");
        assert_eq!(self.duckdb_distinct, n, "DuckDB distinct ids: {self:?}");
    }
}

/// Reads a table with PyIceberg and DuckDB (e2e/readers/inspect_table.py).
pub fn inspect_table(catalog_uri: &str, warehouse: &Path, table: &str) -> Result<TableView> {
    read_table(catalog_uri, warehouse, table, "pyiceberg,duckdb")
}

/// Runs the reader script with the given readers (`pyiceberg`, `duckdb`).
fn read_table(
    catalog_uri: &str,
    warehouse: &Path,
    table: &str,
    readers: &str,
) -> Result<TableView> {
    let args: Vec<String> = vec![
        "--catalog-uri".into(),
        catalog_uri.into(),
        "--table".into(),
        table.into(),
        "--readers".into(),
        readers.into(),
        "--warehouse".into(),
        format!("file://{}", warehouse.display()),
    ];
    run_reader(&args)
}

pub(crate) fn run_reader(args: &[String]) -> Result<TableView> {
    let out = Command::new(venv_python())
        .arg(repo_root().join("e2e/readers/inspect_table.py"))
        .args(args)
        .output()?;
    if out.status.code() == Some(3) {
        return Ok(TableView::default());
    }
    anyhow::ensure!(
        out.status.success(),
        "reader failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let raw: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let n = |path: &str| {
        raw.pointer(path)
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
    };
    Ok(TableView {
        exists: true,
        pyiceberg_rows: n("/pyiceberg/rows"),
        pyiceberg_distinct: n("/pyiceberg/distinct"),
        duckdb_rows: n("/duckdb/rows"),
        duckdb_distinct: n("/duckdb/distinct"),
        raw,
    })
}

/// Polls until the readers see `rows` rows (PyIceberg only, for speed).
pub fn wait_for_rows(spec: &PipelineSpec, rows: u64, timeout: Duration) -> Result<TableView> {
    let deadline = Instant::now() + timeout;
    loop {
        let view = inspect_table_fast(spec)?;
        if view.pyiceberg_rows >= rows || Instant::now() > deadline {
            return Ok(view);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn inspect_table_fast(spec: &PipelineSpec) -> Result<TableView> {
    spec.read("pyiceberg")
}

/// One table of a catalog as the independent readers see it.
#[derive(Debug, Clone, Default)]
pub struct CatalogTable {
    pub columns: Vec<String>,
    /// Iceberg type of each column, as PyIceberg prints it (`long`, `string`, …).
    pub types: std::collections::BTreeMap<String, String>,
    /// Required columns.
    pub required: Vec<String>,
    /// Non-null values per column: PyIceberg's, and DuckDB's when asked.
    pub nonnull: std::collections::BTreeMap<String, u64>,
    pub duckdb_nonnull: std::collections::BTreeMap<String, u64>,
    pub snapshots: u64,
    /// The table's format version and sort order (`column transform direction null-order`).
    pub format_version: u64,
    pub sort_order: Vec<String>,
    pub pyiceberg_rows: u64,
    /// Every id PyIceberg read, sorted (tables up to 100k rows).
    pub ids: Vec<u64>,
    pub pyiceberg_distinct: u64,
    /// `None` unless DuckDB was asked.
    pub duckdb: Option<(u64, u64)>,
    /// The first rows by id, normalized to JSON, as PyIceberg and DuckDB read them (only from
    /// [`inspect_catalog_rows`]).
    pub pyiceberg_first: Vec<serde_json::Value>,
    pub duckdb_first: Vec<serde_json::Value>,
}

/// Every table of a SQL catalog (e2e/readers/inspect_tables.py), by `namespace.name`; DuckDB
/// counts too when `duckdb`.
pub fn inspect_catalog(
    catalog_uri: &str,
    warehouse: &Path,
    duckdb: bool,
) -> Result<std::collections::BTreeMap<String, CatalogTable>> {
    inspect(catalog_uri, warehouse, duckdb, 0)
}

/// [`inspect_catalog`] with both readers, and the first `rows` rows of every table by id.
pub fn inspect_catalog_rows(
    catalog_uri: &str,
    warehouse: &Path,
    rows: usize,
) -> Result<std::collections::BTreeMap<String, CatalogTable>> {
    inspect(catalog_uri, warehouse, true, rows)
}

fn inspect(
    catalog_uri: &str,
    warehouse: &Path,
    duckdb: bool,
    rows: usize,
) -> Result<std::collections::BTreeMap<String, CatalogTable>> {
    let out = Command::new(venv_python())
        .arg(repo_root().join("e2e/readers/inspect_tables.py"))
        .args(["--catalog-uri", catalog_uri, "--warehouse"])
        .arg(format!("file://{}", warehouse.display()))
        .args([
            "--readers",
            if duckdb {
                "pyiceberg,duckdb"
            } else {
                "pyiceberg"
            },
        ])
        .args(["--rows", &rows.to_string()])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "reader failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let raw: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let n = |v: &serde_json::Value, p: &str| v.pointer(p).and_then(serde_json::Value::as_u64);
    let tables = raw["tables"].as_object().cloned().unwrap_or_default();
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|c| {
                c.iter()
                    .filter_map(|c| c.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    Ok(tables
        .into_iter()
        .map(|(name, t)| {
            let counts = |v: &serde_json::Value| -> std::collections::BTreeMap<String, u64> {
                v.as_object()
                    .map(|o| {
                        o.iter()
                            .filter_map(|(k, n)| Some((k.clone(), n.as_u64()?)))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let table = CatalogTable {
                types: t["types"]
                    .as_object()
                    .map(|o| {
                        o.iter()
                            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                            .collect()
                    })
                    .unwrap_or_default(),
                required: strings(&t["required"]),
                nonnull: counts(&t["pyiceberg"]["nonnull"]),
                duckdb_nonnull: counts(&t["duckdb"]["nonnull"]),
                columns: strings(&t["columns"]),
                snapshots: n(&t, "/snapshots").unwrap_or(0),
                format_version: n(&t, "/format_version").unwrap_or(0),
                sort_order: strings(&t["sort_order"]),
                pyiceberg_rows: n(&t, "/pyiceberg/rows").unwrap_or(0),
                pyiceberg_distinct: n(&t, "/pyiceberg/distinct").unwrap_or(0),
                ids: t["pyiceberg"]["ids"]
                    .as_array()
                    .map(|a| a.iter().filter_map(serde_json::Value::as_u64).collect())
                    .unwrap_or_default(),
                duckdb: n(&t, "/duckdb/rows").zip(n(&t, "/duckdb/distinct")),
                pyiceberg_first: t["pyiceberg"]["first"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
                duckdb_first: t["duckdb"]["first"].as_array().cloned().unwrap_or_default(),
            };
            (name, table)
        })
        .collect())
}

/// The four tables the click events route to by `event_type` (`id % 4`, see `event_json`).
pub const KIND_TABLES: [&str; 4] = [
    "analytics.clicks_click",
    "analytics.clicks_view",
    "analytics.clicks_purchase",
    "analytics.clicks_scroll",
];

/// Polls the catalog (PyIceberg) until its tables hold `total` rows together, or `timeout`.
pub fn wait_for_total_rows(
    catalog_uri: &str,
    warehouse: &Path,
    total: u64,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let landed: u64 = inspect_catalog(catalog_uri, warehouse, false)?
            .values()
            .map(|t| t.pyiceberg_rows)
            .sum();
        if landed >= total || Instant::now() > deadline {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Each of [`KIND_TABLES`] holds exactly its share of the ids `0..total`, once, for PyIceberg
/// and DuckDB (`tables` read with DuckDB).
#[track_caller]
pub fn assert_kind_counts(tables: &std::collections::BTreeMap<String, CatalogTable>, total: u64) {
    for (k, name) in KIND_TABLES.iter().enumerate() {
        let n = (0..total).filter(|id| id % 4 == k as u64).count() as u64;
        let t = tables
            .get(*name)
            .unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(
            (t.pyiceberg_rows, t.pyiceberg_distinct, t.duckdb),
            (n, n, Some((n, n))),
            "{name}: PyIceberg rows, distinct ids, DuckDB (rows, distinct)"
        );
    }
}
