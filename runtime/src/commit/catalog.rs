//! Catalog connections: SQL (SQLite created on first use, PostgreSQL) and REST (bearer
//! token, OAuth2 client credentials, custom TLS roots), with the resolved storage properties.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use iceberg::{Catalog, CatalogBuilder};
use iceberg_catalog_rest::RestCatalogBuilder;
use iceberg_catalog_sql::SqlCatalogBuilder;
use iceberg_storage_opendal::OpenDalResolvingStorageFactory;
use tidewater_crds::pipeline::{CatalogAuthSpec, CatalogAuthType, CatalogType};

use super::TableError;
use crate::{config::CatalogConnection, secret::SecretRef};

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
    SecretRef {
        file: auth.secret_file.as_deref(),
        file_field: "spec.sink.catalog.auth.secretFile",
        env: auth.secret_env.as_deref(),
        env_field: "spec.sink.catalog.auth.secretEnv",
    }
    .read()
    .map_err(|e| TableError::Definition(e.to_string()))?
    .ok_or_else(|| {
        TableError::Definition("spec.sink.catalog.auth: no secretFile or secretEnv".into())
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
