//! A data file on its way from the worker that wrote it to the commit that adds it to the
//! table: written here, read back here, nowhere else. On the wire and in checkpoint records it
//! is Iceberg's JSON data-file form (iceberg-rust's own serializer); decoding needs the
//! table's partition type and schema, reading the path does not.

use iceberg::spec::{
    DataFile, FormatVersion, Schema, StructType, deserialize_data_file_from_json,
    serialize_data_file_to_json,
};
use serde::{Deserialize, Serialize};

/// A reference to one written data file (Iceberg's JSON data-file form).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DataFileRef(String);

/// A reference that does not say which file it is.
#[derive(Debug, thiserror::Error)]
pub enum DataFileRefError {
    /// Not JSON at all.
    #[error("data file reference is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// JSON without a `file_path`.
    #[error("data file reference without file_path")]
    NoPath,
}

impl DataFileRef {
    /// Encodes a file written under a partition spec whose partition type is
    /// `partition_type`.
    pub fn encode(
        file: DataFile,
        partition_type: &StructType,
        format_version: FormatVersion,
    ) -> iceberg::Result<Self> {
        serialize_data_file_to_json(file, partition_type, format_version).map(Self)
    }

    /// The file again, for a commit to a table with this partition spec and schema.
    pub fn decode(
        &self,
        partition_spec_id: i32,
        partition_type: &StructType,
        schema: &Schema,
    ) -> iceberg::Result<DataFile> {
        deserialize_data_file_from_json(&self.0, partition_spec_id, partition_type, schema)
    }

    /// The file's location, without decoding the rest.
    pub fn path(&self) -> Result<String, DataFileRefError> {
        #[derive(Deserialize)]
        struct PathOnly {
            file_path: Option<String>,
        }
        let p: PathOnly = serde_json::from_str(&self.0)?;
        p.file_path.ok_or(DataFileRefError::NoPath)
    }
}

impl From<&str> for DataFileRef {
    /// A reference from its JSON text as stored (tests and records written by hand).
    fn from(json: &str) -> Self {
        Self(json.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_is_read_without_the_table_and_travels_as_a_plain_string() {
        let r = DataFileRef::from(r#"{"file_path":"s3://lake/t/data/a.parquet","record_count":3}"#);
        assert_eq!(r.path().unwrap(), "s3://lake/t/data/a.parquet");
        let json = serde_json::to_string(&vec![r.clone()]).unwrap();
        assert!(json.starts_with(r#"["{\"file_path\""#), "{json}");
        assert_eq!(
            serde_json::from_str::<Vec<DataFileRef>>(&json).unwrap(),
            [r]
        );
        assert!(matches!(
            DataFileRef::from(r#"{"record_count":3}"#).path(),
            Err(DataFileRefError::NoPath)
        ));
        assert!(matches!(
            DataFileRef::from("not json").path(),
            Err(DataFileRefError::Json(_))
        ));
    }
}
