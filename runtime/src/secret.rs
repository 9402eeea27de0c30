//! Secrets a spec points at, never holds: read from a file (a mounted Kubernetes Secret) or an
//! environment variable (`secretEnv`). One reader for every credential: the SASL password,
//! the REST catalog's secret, the S3 keys. A file's trailing line break is not part of the
//! secret; nothing else is trimmed.

/// A secret that is named but cannot be read. `field` is the spec field that names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The file cannot be read.
    #[error("{field}: cannot read {path}: {reason}")]
    Unreadable {
        /// Spec field, e.g. `sasl.passwordFile`.
        field: String,
        /// The file.
        path: String,
        /// The I/O error.
        reason: String,
    },
    /// The environment variable is not set (or empty).
    #[error("{field}: environment variable {var} is not set")]
    Unset {
        /// Spec field, e.g. `sasl.passwordEnv`.
        field: String,
        /// The variable.
        var: String,
    },
}

/// Where one secret may come from, with the spec's field names for messages.
#[derive(Debug, Clone, Copy)]
pub struct SecretRef<'a> {
    /// A file holding it.
    pub file: Option<&'a str>,
    /// The field that names the file.
    pub file_field: &'a str,
    /// An environment variable holding it.
    pub env: Option<&'a str>,
    /// The field that names the variable.
    pub env_field: &'a str,
}

impl SecretRef<'_> {
    /// The secret: from the file when one is named, else from the variable; `None` when
    /// neither is named.
    pub fn read(&self) -> Result<Option<String>, SecretError> {
        if let Some(path) = self.file {
            return std::fs::read_to_string(path)
                .map(|s| Some(s.trim_end_matches(['\r', '\n']).to_string()))
                .map_err(|e| SecretError::Unreadable {
                    field: self.file_field.into(),
                    path: path.into(),
                    reason: e.to_string(),
                });
        }
        match self.env {
            None => Ok(None),
            Some(var) => match std::env::var(var) {
                Ok(v) if !v.is_empty() => Ok(Some(v)),
                _ => Err(SecretError::Unset {
                    field: self.env_field.into(),
                    var: var.into(),
                }),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference<'a>(file: Option<&'a str>, env: Option<&'a str>) -> SecretRef<'a> {
        SecretRef {
            file,
            file_field: "x.secretFile",
            env,
            env_field: "x.secretEnv",
        }
    }

    #[test]
    fn a_file_wins_and_loses_only_its_line_break() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, " pass word \r\n").unwrap();
        let p = path.to_str().unwrap();
        assert_eq!(
            reference(Some(p), Some("TIDEWATER_TEST_UNSET_SECRET")).read(),
            Ok(Some(" pass word ".into()))
        );
        assert_eq!(reference(None, None).read(), Ok(None));
        assert_eq!(
            reference(None, Some("TIDEWATER_TEST_UNSET_SECRET"))
                .read()
                .unwrap_err()
                .to_string(),
            "x.secretEnv: environment variable TIDEWATER_TEST_UNSET_SECRET is not set"
        );
        let missing = reference(Some("/nonexistent/secret"), None)
            .read()
            .unwrap_err();
        assert!(
            missing
                .to_string()
                .starts_with("x.secretFile: cannot read /nonexistent/secret: "),
            "{missing}"
        );
    }
}
