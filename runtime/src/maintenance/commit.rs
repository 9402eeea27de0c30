//! The project's own commit path for maintenance (iceberg-rust has no rewrite, manifest
//! rewrite or expiry-with-files action, and its `TableCommit` cannot be built outside the
//! crate): new metadata is made with the public builders and swapped in by the catalog's
//! compare-and-swap — SQL: a conditional `UPDATE` on the metadata location; REST: a commit
//! with `assert-table-uuid` and `assert-ref-snapshot-id` requirements. A lost race is reported
//! as [`Swap::Conflict`], never rebased blindly.

use std::{collections::HashMap, str::FromStr};

use iceberg::{
    MetadataLocation, TableIdent, TableRequirement,
    spec::{MAIN_BRANCH, TableMetadata, TableMetadataBuildResult},
    table::Table,
};
use sqlx::{AnyPool, any::install_default_drivers};
use tidewater_crds::pipeline::{CatalogAuthType, CatalogType};

use super::MaintenanceError;
use crate::config::CatalogConnection;

/// Outcome of one compare-and-swap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Swap {
    /// The new metadata is current.
    Committed,
    /// Another commit changed the table first; nothing was changed.
    Conflict,
}

/// The catalog's compare-and-swap.
pub enum Cas {
    /// SQL catalog (SQLite or PostgreSQL): conditional update of `iceberg_tables`.
    Sql {
        /// Connection pool on the catalog database.
        pool: AnyPool,
        /// `catalog_name` column value.
        catalog: String,
        /// PostgreSQL numbers its placeholders (`$1`); SQLite takes `?`.
        postgres: bool,
    },
    /// REST catalog: `POST …/namespaces/{ns}/tables/{table}`.
    Rest {
        /// HTTP client (with the catalog's CA).
        client: reqwest::Client,
        /// `{uri}/v1[/{prefix}]`.
        base: String,
        /// Bearer token, when the catalog needs one.
        token: Option<String>,
    },
}

impl Cas {
    /// Connects to the catalog of `conn` (reads REST secrets, fetches an OAuth2 token).
    pub async fn connect(conn: &CatalogConnection) -> Result<Self, MaintenanceError> {
        match conn.catalog_type {
            CatalogType::Sql => {
                install_default_drivers();
                let pool = sqlx::any::AnyPoolOptions::new()
                    .max_connections(2)
                    .connect(&conn.uri)
                    .await
                    .map_err(|e| MaintenanceError::Catalog(format!("{}: {e}", conn.uri)))?;
                Ok(Self::Sql {
                    pool,
                    catalog: conn.name.clone(),
                    postgres: conn.uri.starts_with("postgres"),
                })
            }
            CatalogType::Rest => {
                let client = match &conn.ca_file {
                    Some(ca) => crate::commit::client_trusting(ca)
                        .map_err(|e| MaintenanceError::Catalog(e.to_string()))?,
                    None => reqwest::Client::new(),
                };
                let token = match &conn.auth {
                    None => None,
                    Some(auth) => {
                        let secret = crate::commit::read_catalog_secret(auth)
                            .map_err(|e| MaintenanceError::Catalog(e.to_string()))?;
                        Some(match auth.auth_type {
                            CatalogAuthType::Bearer => secret,
                            CatalogAuthType::Oauth2 => {
                                oauth2_token(&client, conn, auth, &secret).await?
                            }
                        })
                    }
                };
                let mut prefix = conn.properties.get("prefix").cloned();
                let mut req = client
                    .get(format!("{}/v1/config", conn.uri))
                    .query(&[("warehouse", conn.warehouse.as_str())]);
                if let Some(t) = &token {
                    req = req.bearer_auth(t);
                }
                if let Ok(resp) = req.send().await
                    && let Ok(cfg) = resp.json::<serde_json::Value>().await
                    && let Some(p) = cfg["overrides"]["prefix"].as_str()
                {
                    prefix = Some(p.to_string());
                }
                let base = match prefix {
                    Some(p) => format!("{}/v1/{p}", conn.uri),
                    None => format!("{}/v1", conn.uri),
                };
                Ok(Self::Rest {
                    client,
                    base,
                    token,
                })
            }
        }
    }

    /// Makes `next` the table's metadata if `current` still is.
    pub async fn swap(
        &self,
        ident: &TableIdent,
        current: &Table,
        next: TableMetadataBuildResult,
    ) -> Result<Swap, MaintenanceError> {
        let old_location = current
            .metadata_location()
            .ok_or_else(|| MaintenanceError::Catalog("table has no metadata location".into()))?;
        match self {
            Self::Sql {
                pool,
                catalog,
                postgres,
            } => {
                let next_location = MetadataLocation::from_str(old_location)?.with_next_version();
                next.metadata
                    .write_to(current.file_io(), &next_location)
                    .await?;
                let new_location = next_location.to_string();
                let update = if *postgres {
                    "UPDATE iceberg_tables SET metadata_location = $1, previous_metadata_location = $2 \
                     WHERE catalog_name = $3 AND table_namespace = $4 AND table_name = $5 \
                     AND metadata_location = $6"
                } else {
                    "UPDATE iceberg_tables SET metadata_location = ?, previous_metadata_location = ? \
                     WHERE catalog_name = ? AND table_namespace = ? AND table_name = ? \
                     AND metadata_location = ?"
                };
                let result = sqlx::query(update)
                    .bind(&new_location)
                    .bind(old_location)
                    .bind(catalog)
                    .bind(ident.namespace().join("."))
                    .bind(ident.name())
                    .bind(old_location)
                    .execute(pool)
                    .await
                    .map_err(|e| MaintenanceError::Catalog(format!("commit: {e}")))?;
                if result.rows_affected() == 1 {
                    Ok(Swap::Committed)
                } else {
                    // Our metadata file is never referenced: an orphan for the next run.
                    let _ = current.file_io().delete(&new_location).await;
                    Ok(Swap::Conflict)
                }
            }
            Self::Rest {
                client,
                base,
                token,
            } => {
                let metadata = current.metadata();
                let requirements = vec![
                    TableRequirement::UuidMatch {
                        uuid: metadata.uuid(),
                    },
                    TableRequirement::RefSnapshotIdMatch {
                        r#ref: MAIN_BRANCH.to_string(),
                        snapshot_id: metadata.current_snapshot_id(),
                    },
                ];
                let body = serde_json::json!({
                    "identifier": {"namespace": ident.namespace().clone().inner(), "name": ident.name()},
                    "requirements": requirements,
                    "updates": next.changes,
                });
                let ns = ident.namespace().clone().inner().join("\u{1f}");
                let url = format!(
                    "{base}/namespaces/{}/tables/{}",
                    urlencode(&ns),
                    urlencode(ident.name())
                );
                let mut req = client.post(url).json(&body);
                if let Some(t) = token {
                    req = req.bearer_auth(t);
                }
                let resp = req
                    .send()
                    .await
                    .map_err(|e| MaintenanceError::Catalog(format!("commit: {e}")))?;
                match resp.status().as_u16() {
                    200..=299 => Ok(Swap::Committed),
                    409 => Ok(Swap::Conflict),
                    code => Err(MaintenanceError::CommitUnknown(format!(
                        "HTTP {code}: {}",
                        resp.text().await.unwrap_or_default()
                    ))),
                }
            }
        }
    }
}

fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn oauth2_token(
    client: &reqwest::Client,
    conn: &CatalogConnection,
    auth: &tidewater_crds::pipeline::CatalogAuthSpec,
    secret: &str,
) -> Result<String, MaintenanceError> {
    let (id, key) = secret.split_once(':').unwrap_or(("", secret));
    let url = auth
        .oauth2_server_uri
        .clone()
        .unwrap_or_else(|| format!("{}/v1/oauth/tokens", conn.uri));
    let mut form: HashMap<&str, &str> = HashMap::from([
        ("grant_type", "client_credentials"),
        ("client_id", id),
        ("client_secret", key),
    ]);
    let scope = auth.scope.clone().unwrap_or_else(|| "catalog".into());
    form.insert("scope", &scope);
    let resp = client
        .post(url)
        .form(&form)
        .send()
        .await
        .map_err(|e| MaintenanceError::Catalog(format!("oauth2: {e}")))?;
    let status = resp.status();
    let body: serde_json::Value = resp
        .json()
        .await
        .map_err(|e| MaintenanceError::Catalog(format!("oauth2: {e}")))?;
    body["access_token"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| MaintenanceError::Catalog(format!("oauth2: HTTP {status}: {body}")))
}

/// A fresh positive snapshot id not used by the table.
pub fn new_snapshot_id(metadata: &TableMetadata) -> i64 {
    loop {
        let id = (rand::random::<u64>() >> 1) as i64;
        if id != 0 && metadata.snapshot_by_id(id).is_none() {
            return id;
        }
    }
}
