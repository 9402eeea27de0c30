//! Spec validation that the OpenAPI schema cannot express. Pure: no I/O, no client.
//! Every problem names the field path (as a user would write it) and the reason.

use std::{collections::HashSet, fmt};

use crate::{
    pipeline::{CatalogType, IngestionPipelineSpec, KafkaSecuritySpec},
    types::{
        ColumnType, PartitionField, SortField, StartingOffsets, Transform, parse_duration,
        parse_table_ident,
    },
};

/// One problem in a spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path such as `spec.sink.createTable.partitionBy[0]`.
    pub path: String,
    /// What is wrong and what is expected.
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

const CODECS: &[&str] = &[
    "zstd",
    "snappy",
    "gzip",
    "lz4",
    "lz4_raw",
    "brotli",
    "uncompressed",
    "none",
];

const SIZE_PROPERTIES: &[&str] = &[
    "write.target-file-size-bytes",
    "write.parquet.row-group-size-bytes",
    "write.parquet.page-size-bytes",
    "write.parquet.dict-size-bytes",
];

/// Catalog properties that hold secrets and are therefore refused in the spec.
const SECRET_PROPERTIES: &[&str] = &[
    "token",
    "credential",
    "s3.access-key-id",
    "s3.secret-access-key",
    "s3.session-token",
    "client.secret",
];

/// Whether a catalog property holds a secret (refused in specs).
pub fn is_secret_property(key: &str) -> bool {
    SECRET_PROPERTIES.contains(&key) || key.starts_with("header.authorization")
}

/// librdkafka properties that hold secrets and are therefore refused in the spec.
const KAFKA_SECRET_PROPERTIES: &[&str] = &[
    "sasl.password",
    "sasl.jaas.config",
    "sasl.oauthbearer.client.secret",
    "ssl.key.password",
    "ssl.key.pem",
    "ssl.keystore.password",
];

/// The rules the CRD's CEL checks on `spec.source.kafka.security`, for files that never pass
/// an API server.
fn validate_kafka_security(security: &KafkaSecuritySpec, err: &mut impl FnMut(&str, String)) {
    let protocol = security.protocol.as_str();
    match (&security.sasl, security.protocol.uses_sasl()) {
        (None, true) => err(
            "spec.source.kafka.security.sasl",
            format!("is required with protocol {protocol}"),
        ),
        (Some(_), false) => err(
            "spec.source.kafka.security.sasl",
            format!("is not used with protocol {protocol}"),
        ),
        (Some(sasl), true) => {
            if sasl.username.is_empty() {
                err(
                    "spec.source.kafka.security.sasl.username",
                    "must not be empty".into(),
                );
            }
            if sasl.password_file.is_some() == sasl.password_env.is_some() {
                err(
                    "spec.source.kafka.security.sasl",
                    "set exactly one of passwordFile and passwordEnv".into(),
                );
            }
        }
        (None, false) => {}
    }
    if let Some(tls) = &security.tls {
        if !security.protocol.uses_tls() {
            err(
                "spec.source.kafka.security.tls",
                format!("is not used with protocol {protocol}"),
            );
        }
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            err(
                "spec.source.kafka.security.tls",
                "set both certFile and keyFile (client certificate) or neither".into(),
            );
        }
    }
}

/// Compiles a `topicPattern`, anchored: the whole topic name must match.
pub fn topic_pattern(pattern: &str) -> Result<regex::Regex, String> {
    regex::Regex::new(&format!("^(?:{pattern})$"))
        .map_err(|e| format!("`{pattern}` is not a regular expression: {e}"))
}

/// Checks a pipeline spec; an empty list means valid.
pub fn validate(spec: &IngestionPipelineSpec) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut err = |path: &str, reason: String| {
        errors.push(FieldError {
            path: path.to_string(),
            reason,
        })
    };

    let kafka = &spec.source.kafka;
    if kafka.bootstrap_servers.trim().is_empty() {
        err(
            "spec.source.kafka.bootstrapServers",
            "must not be empty".into(),
        );
    }
    match (&kafka.topic_pattern, kafka.topics.is_empty()) {
        (None, true) => err(
            "spec.source.kafka.topics",
            "list at least one topic (or set topicPattern)".into(),
        ),
        (Some(_), false) => err(
            "spec.source.kafka.topicPattern",
            "set exactly one of topics and topicPattern".into(),
        ),
        (Some(pattern), true) => {
            if let Err(e) = topic_pattern(pattern) {
                err("spec.source.kafka.topicPattern", e);
            }
        }
        (None, false) => {}
    }
    let mut seen = HashSet::new();
    for (i, topic) in kafka.topics.iter().enumerate() {
        if topic.trim().is_empty() {
            err(
                &format!("spec.source.kafka.topics[{i}]"),
                "must not be empty".into(),
            );
        } else if !seen.insert(topic) {
            err(
                &format!("spec.source.kafka.topics[{i}]"),
                format!("`{topic}` is listed twice"),
            );
        }
    }
    if let Err(e) = StartingOffsets::parse(&kafka.starting_offsets) {
        err("spec.source.kafka.startingOffsets", e);
    }
    if let Err(e) = parse_duration(&kafka.partition_discovery_interval) {
        err("spec.source.kafka.partitionDiscoveryInterval", e);
    }
    for key in kafka.properties.keys() {
        if matches!(
            key.as_str(),
            "enable.auto.commit" | "group.id" | "auto.offset.reset" | "bootstrap.servers"
        ) {
            err(
                &format!("spec.source.kafka.properties.{key}"),
                "is managed by Tidewater and cannot be set".into(),
            );
        } else if KAFKA_SECRET_PROPERTIES.contains(&key.as_str()) {
            err(
                &format!("spec.source.kafka.properties.{key}"),
                "is a secret: it must not be written in the spec (use \
                 spec.source.kafka.security with a passwordFile or passwordEnv)"
                    .into(),
            );
        } else if kafka.security.is_some()
            && (key == "security.protocol" || key.starts_with("sasl.") || key.starts_with("ssl."))
        {
            err(
                &format!("spec.source.kafka.properties.{key}"),
                "conflicts with spec.source.kafka.security (set it there)".into(),
            );
        }
    }
    if let Some(security) = &kafka.security {
        validate_kafka_security(security, &mut err);
    }

    if spec.format.max_record_bytes == 0 {
        err("spec.format.maxRecordBytes", "must be at least 1".into());
    }

    let sink = &spec.sink;
    let catalog = &sink.catalog;
    if catalog.uri.trim().is_empty() {
        err("spec.sink.catalog.uri", "must not be empty".into());
    } else {
        match catalog.catalog_type {
            CatalogType::Sql
                if !(catalog.uri.starts_with("sqlite:")
                    || catalog.uri.starts_with("postgres://")
                    || catalog.uri.starts_with("postgresql://")) =>
            {
                err(
                    "spec.sink.catalog.uri",
                    format!(
                        "`{}`: a sql catalog needs a sqlite:PATH or postgres:// URI",
                        catalog.uri
                    ),
                );
            }
            CatalogType::Rest
                if !(catalog.uri.starts_with("http://") || catalog.uri.starts_with("https://")) =>
            {
                err(
                    "spec.sink.catalog.uri",
                    format!(
                        "`{}`: a rest catalog needs an http:// or https:// URL",
                        catalog.uri
                    ),
                );
            }
            _ => {}
        }
    }
    for key in catalog.properties.keys() {
        if is_secret_property(key) {
            err(
                &format!("spec.sink.catalog.properties.{key}"),
                "is a secret: it must not be written in the spec (use spec.sink.catalog.auth or \
                 spec.storage.s3 with a file or environment variable)"
                    .into(),
            );
        }
    }
    if let Some(auth) = &catalog.auth {
        if catalog.catalog_type != CatalogType::Rest {
            err(
                "spec.sink.catalog.auth",
                "only a rest catalog takes auth".into(),
            );
        }
        if auth.secret_file.is_some() == auth.secret_env.is_some() {
            err(
                "spec.sink.catalog.auth",
                "set exactly one of secretFile and secretEnv".into(),
            );
        }
    }
    let uses_s3 = catalog
        .warehouse
        .as_deref()
        .is_some_and(|w| w.starts_with("s3://"))
        || spec
            .checkpoint
            .state_location
            .as_deref()
            .is_some_and(|l| l.starts_with("s3://"));
    if uses_s3 && catalog.catalog_type == CatalogType::Sql && catalog.warehouse.is_none() {
        err(
            "spec.sink.catalog.warehouse",
            "must be set when the state location is on S3".into(),
        );
    }
    if uses_s3 && spec.storage.as_ref().and_then(|s| s.s3.as_ref()).is_none() {
        err(
            "spec.storage.s3",
            "an s3:// warehouse or state location needs spec.storage.s3 (endpoint, region, \
             credentials source)"
                .into(),
        );
    }
    if catalog.catalog_type == CatalogType::Rest
        && catalog.warehouse.is_none()
        && spec.checkpoint.state_location.is_none()
    {
        err(
            "spec.checkpoint.stateLocation",
            "must be set with a rest catalog that has no spec.sink.catalog.warehouse".into(),
        );
    }
    match (&sink.table, &sink.route) {
        (Some(table), None) => {
            if let Err(e) = parse_table_ident(table) {
                err("spec.sink.table", e);
            }
        }
        (None, Some(route)) => {
            if route.table.is_none() && route.rules.is_empty() {
                err(
                    "spec.sink.route",
                    "needs a default table template (table) or at least one rule".into(),
                );
            }
            for (i, rule) in route.rules.iter().enumerate() {
                if let Some(create) = &rule.create_table {
                    let path = format!("spec.sink.route.rules[{i}].createTable");
                    validate_create_table(create, &path, &mut err);
                }
            }
        }
        (Some(_), Some(_)) => err(
            "spec.sink",
            "set exactly one of table (one table) and route (many tables), not both".into(),
        ),
        (None, None) => err(
            "spec.sink",
            "set exactly one of table (one table) and route (many tables)".into(),
        ),
    }
    if let Some(create) = &sink.create_table {
        validate_create_table(create, "spec.sink.createTable", &mut err);
    }
    let reads_value_fields = sink.route.as_ref().is_some_and(|r| {
        r.table
            .iter()
            .chain(r.rules.iter().map(|rule| &rule.table))
            .any(|t| t.contains("{value."))
    });
    crate::format::validate_format(&spec.format, reads_value_fields, &mut err);
    crate::upsert::validate_upsert(spec, &mut err);
    validate_write_properties(spec, &mut err);

    if let Err(e) = parse_duration(&spec.checkpoint.interval) {
        err("spec.checkpoint.interval", e);
    }
    if let Err(e) = parse_duration(&spec.checkpoint.timeout) {
        err("spec.checkpoint.timeout", e);
    }
    if spec.checkpoint.retained == 0 {
        err("spec.checkpoint.retained", "must be at least 1".into());
    }
    if spec.parallelism < 1 {
        err(
            "spec.parallelism",
            format!("{} must be at least 1", spec.parallelism),
        );
    }
    for (path, value) in [
        ("spec.upgradeTimeout", &spec.upgrade_timeout),
        (
            "spec.savepointHistory.maxAge",
            &spec.savepoint_history.max_age,
        ),
    ] {
        if let Err(e) = parse_duration(value) {
            err(path, e);
        }
    }
    if let Some(a) = &spec.autoscaler {
        if let Err(e) = parse_duration(&a.stabilization_window) {
            err("spec.autoscaler.stabilizationWindow", e);
        }
        if a.max_parallelism.is_some_and(|max| max < a.min_parallelism) {
            err(
                "spec.autoscaler",
                format!(
                    "minParallelism {} exceeds maxParallelism {}",
                    a.min_parallelism,
                    a.max_parallelism.unwrap_or_default()
                ),
            );
        }
    }
    if let Some(dl) = &spec.dead_letter {
        if dl.topic.trim().is_empty() {
            err("spec.deadLetter.topic", "must not be empty".into());
        } else if kafka.topics.contains(&dl.topic)
            || kafka
                .topic_pattern
                .as_deref()
                .and_then(|p| topic_pattern(p).ok())
                .is_some_and(|re| re.is_match(&dl.topic))
        {
            err(
                "spec.deadLetter.topic",
                format!(
                    "`{}` is also a source topic: bad records would loop",
                    dl.topic
                ),
            );
        }
    }
    errors
}

fn validate_create_table(
    create: &crate::pipeline::CreateTableSpec,
    at: &str,
    err: &mut impl FnMut(&str, String),
) {
    let mut columns = std::collections::HashMap::new();
    let inferred = create.schema.is_empty();
    if !inferred && !create.timestamp_fields.is_empty() {
        err(
            &format!("{at}.timestampFields"),
            "applies only to a schema inferred from the first record (leave schema empty), \
             or list those columns as timestamptz"
                .into(),
        );
    }
    if inferred {
        for f in &create.timestamp_fields {
            columns.insert(f.clone(), ColumnType::Timestamptz);
        }
    }
    for (i, col) in create.schema.iter().enumerate() {
        let path = format!("{at}.schema[{i}]");
        if col.name.trim().is_empty() {
            err(&format!("{path}.name"), "must not be empty".into());
        }
        match ColumnType::parse(&col.column_type) {
            Ok(t) => {
                if columns.insert(col.name.clone(), t).is_some() {
                    err(
                        &format!("{path}.name"),
                        format!("column `{}` is defined twice", col.name),
                    );
                }
            }
            Err(e) => err(&format!("{path}.type"), e),
        }
    }
    let mut seen = HashSet::new();
    for (i, text) in create.partition_by.iter().enumerate() {
        let path = format!("{at}.partitionBy[{i}]");
        let field = match PartitionField::parse(text) {
            Ok(f) => f,
            Err(e) => {
                err(&path, e);
                continue;
            }
        };
        let Some(col_type) = columns.get(&field.column) else {
            // An inferred schema's other columns are known only from the first record (a
            // table whose first record lacks the column is not created: its records are
            // dead-lettered with the reason).
            if !inferred {
                err(
                    &path,
                    format!("column `{}` is not in createTable.schema", field.column),
                );
            }
            continue;
        };
        if let Some(reason) = transform_mismatch(field.transform, *col_type) {
            err(
                &path,
                format!(
                    "{} cannot be applied to `{}`: {reason}",
                    field.transform, field.column
                ),
            );
        }
        if !seen.insert((field.column.clone(), field.transform.to_string())) {
            err(&path, format!("`{text}` is listed twice"));
        }
    }
    for (i, text) in create.sort_by.iter().enumerate() {
        let path = format!("{at}.sortBy[{i}]");
        match SortField::parse(text) {
            Err(e) => err(&path, e),
            Ok(f) => match columns.get(&f.field.column) {
                None if !inferred => err(
                    &path,
                    format!("column `{}` is not in createTable.schema", f.field.column),
                ),
                Some(t) => {
                    if let Some(reason) = transform_mismatch(f.field.transform, *t) {
                        err(
                            &path,
                            format!(
                                "{} cannot be applied to `{}`: {reason}",
                                f.field.transform, f.field.column
                            ),
                        );
                    }
                }
                None => {}
            },
        }
    }
    if let Some(v) = create.format_version
        && !(1..=2).contains(&v)
    {
        err(&format!("{at}.formatVersion"), format!("{v} is not 1 or 2"));
    }
}

fn transform_mismatch(transform: Transform, t: ColumnType) -> Option<&'static str> {
    use ColumnType as C;
    match transform {
        Transform::Identity => None,
        Transform::Year | Transform::Month | Transform::Day => match t {
            C::Date | C::Timestamp | C::Timestamptz => None,
            _ => Some("needs a date or timestamp column"),
        },
        Transform::Hour => match t {
            C::Timestamp | C::Timestamptz => None,
            _ => Some("needs a timestamp column"),
        },
        Transform::Bucket(_) => match t {
            C::Boolean | C::Float | C::Double => Some("cannot bucket boolean or floating point"),
            _ => None,
        },
        Transform::Truncate(_) => match t {
            C::Int | C::Long | C::Decimal { .. } | C::String | C::Binary => None,
            _ => Some("needs an int, long, decimal, string or binary column"),
        },
    }
}

fn validate_write_properties(spec: &IngestionPipelineSpec, err: &mut impl FnMut(&str, String)) {
    for (key, value) in &spec.sink.write_properties {
        let path = format!("spec.sink.writeProperties.{key}");
        if key == "write.parquet.compression-codec" {
            if !CODECS.contains(&value.to_ascii_lowercase().as_str()) {
                err(
                    &path,
                    format!("`{value}` is not one of {}", CODECS.join(", ")),
                );
            }
        } else if key == "write.parquet.compression-level" {
            if value.parse::<i32>().is_err() {
                err(&path, format!("`{value}` is not an integer"));
            }
        } else if SIZE_PROPERTIES.contains(&key.as_str()) {
            match value.parse::<u64>() {
                Ok(n) if n > 0 => {}
                _ => err(
                    &path,
                    format!("`{value}` is not a positive number of bytes"),
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::IngestionPipeline;

    fn example() -> IngestionPipeline {
        IngestionPipeline::from_yaml(include_str!("../../examples/clickstream.yaml")).unwrap()
    }

    fn paths(spec: &IngestionPipelineSpec) -> Vec<String> {
        validate(spec).into_iter().map(|e| e.path).collect()
    }

    #[test]
    fn a_sink_names_a_table_or_a_route() {
        use crate::pipeline::{RouteRule, RouteSpec};
        let mut spec = example().spec;
        spec.sink.route = Some(RouteSpec {
            table: Some("raw.{topic}".into()),
            rules: vec![],
        });
        assert_eq!(paths(&spec), vec!["spec.sink"], "both");
        spec.sink.table = None;
        assert!(paths(&spec).is_empty());
        let mut rule = RouteRule {
            topic: "orders".into(),
            table: "sales.orders".into(),
            create_table: spec.sink.create_table.clone(),
        };
        rule.create_table.as_mut().unwrap().schema[0].column_type = "int128".into();
        spec.sink.route = Some(RouteSpec {
            table: None,
            rules: vec![rule],
        });
        assert_eq!(
            paths(&spec),
            vec!["spec.sink.route.rules[0].createTable.schema[0].type"]
        );
        spec.sink.route.as_mut().unwrap().rules.clear();
        assert_eq!(paths(&spec), vec!["spec.sink.route"], "an empty route");
        spec.sink.route = None;
        assert_eq!(paths(&spec), vec!["spec.sink"], "neither");
    }

    #[test]
    fn rest_catalogs_s3_and_secrets() {
        use crate::pipeline::{CatalogAuthSpec, CatalogAuthType, CatalogType, S3Spec, StorageSpec};
        let mut spec = example().spec;
        spec.sink.catalog.catalog_type = CatalogType::Rest;
        assert_eq!(
            paths(&spec),
            vec!["spec.sink.catalog.uri"],
            "sqlite URI on a rest catalog"
        );
        spec.sink.catalog.uri = "https://catalog.example.com".into();
        spec.sink.catalog.warehouse = Some("s3://lake/wh".into());
        assert_eq!(
            paths(&spec),
            vec!["spec.storage.s3"],
            "s3 warehouse without storage settings"
        );
        spec.storage = Some(StorageSpec {
            s3: Some(S3Spec::default()),
        });
        assert_eq!(validate(&spec), vec![]);
        spec.sink
            .catalog
            .properties
            .insert("s3.secret-access-key".into(), "oops".into());
        spec.sink
            .catalog
            .properties
            .insert("token".into(), "oops".into());
        spec.sink.catalog.auth = Some(CatalogAuthSpec {
            auth_type: CatalogAuthType::Oauth2,
            secret_file: Some("/secrets/a".into()),
            secret_env: Some("B".into()),
            oauth2_server_uri: None,
            scope: None,
        });
        let errors = validate(&spec);
        assert_eq!(
            errors.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(),
            vec![
                "spec.sink.catalog.properties.s3.secret-access-key",
                "spec.sink.catalog.properties.token",
                "spec.sink.catalog.auth",
            ]
        );
        assert!(errors[0].reason.contains("secret"), "{}", errors[0]);
        assert!(errors[2].reason.contains("exactly one"), "{}", errors[2]);

        let mut sql = example().spec;
        sql.sink.catalog.auth = spec.sink.catalog.auth.clone();
        assert!(
            validate(&sql)
                .iter()
                .any(|e| e.path == "spec.sink.catalog.auth" && e.reason.contains("rest")),
        );
    }

    #[test]
    fn exactly_one_of_topics_and_a_valid_pattern() {
        let mut spec = example().spec;
        spec.source.kafka.topic_pattern = Some("clicks\\.(web|app)".into());
        assert_eq!(paths(&spec), vec!["spec.source.kafka.topicPattern"]);
        spec.source.kafka.topics.clear();
        assert_eq!(validate(&spec), vec![]);
        spec.source.kafka.topic_pattern = Some("clicks(".into());
        let e = validate(&spec);
        assert_eq!(e[0].path, "spec.source.kafka.topicPattern");
        assert!(e[0].reason.contains("not a regular expression"), "{}", e[0]);
        spec.source.kafka.topic_pattern = None;
        assert_eq!(paths(&spec), vec!["spec.source.kafka.topics"]);
        // The dead-letter topic must not match the pattern (bad records would loop).
        spec.source.kafka.topic_pattern = Some("clicks.*".into());
        let e = validate(&spec);
        assert_eq!(e[0].path, "spec.deadLetter.topic", "{e:?}");
        assert!(topic_pattern("a|b").unwrap().is_match("b"));
        assert!(!topic_pattern("a|b").unwrap().is_match("ab"), "anchored");
    }

    #[test]
    fn the_example_is_valid() {
        assert_eq!(validate(&example().spec), vec![]);
    }

    #[test]
    fn every_problem_names_its_field() {
        let mut spec = example().spec;
        spec.parallelism = 0;
        spec.checkpoint.interval = "soon".into();
        spec.source.kafka.starting_offsets = "yesterday".into();
        spec.sink.table = Some("clicks".into());
        let create = spec.sink.create_table.as_mut().unwrap();
        create.schema[1].column_type = "timestamp_ntz".into();
        create.partition_by = vec![
            "day(nope)".into(),
            "bucket(id)".into(),
            "hour(amount)".into(),
        ];
        create.sort_by = vec!["id desc nulls first".into(), "ts sideways".into()];
        create.format_version = Some(3);
        spec.sink
            .write_properties
            .insert("write.parquet.compression-codec".into(), "zip".into());
        spec.dead_letter.as_mut().unwrap().topic = "clicks".into();
        assert_eq!(
            paths(&spec),
            vec![
                "spec.source.kafka.startingOffsets",
                "spec.sink.table",
                "spec.sink.createTable.schema[1].type",
                "spec.sink.createTable.partitionBy[0]",
                "spec.sink.createTable.partitionBy[1]",
                "spec.sink.createTable.partitionBy[2]",
                "spec.sink.createTable.sortBy[1]",
                "spec.sink.createTable.formatVersion",
                "spec.sink.writeProperties.write.parquet.compression-codec",
                "spec.checkpoint.interval",
                "spec.parallelism",
                "spec.deadLetter.topic",
            ]
        );
        let errors = validate(&spec);
        assert!(
            errors[3]
                .reason
                .contains("`nope` is not in createTable.schema")
        );
        assert!(errors[5].reason.contains("needs a timestamp column"));
        assert!(errors[6].reason.contains("sort field"), "{}", errors[6]);
        assert!(errors[7].reason.contains("not 1 or 2"));
        assert!(errors[11].reason.contains("bad records would loop"));
    }

    #[test]
    fn managed_kafka_properties_are_refused() {
        let mut spec = example().spec;
        spec.source
            .kafka
            .properties
            .insert("enable.auto.commit".into(), "true".into());
        assert_eq!(
            paths(&spec),
            vec!["spec.source.kafka.properties.enable.auto.commit"]
        );
    }

    #[test]
    fn kafka_security_rules_and_secret_properties() {
        let mut spec = example().spec;
        let props = &mut spec.source.kafka.properties;
        props.insert("sasl.password".into(), "oops".into());
        props.insert(
            "ssl.endpoint.identification.algorithm".into(),
            "none".into(),
        );
        spec.source.kafka.security = Some(
            serde_yaml::from_str(
                "protocol: SSL\n\
                 sasl: {mechanism: SCRAM-SHA-512, username: u, passwordFile: /p, passwordEnv: P}\n\
                 tls: {certFile: /c}\n",
            )
            .unwrap(),
        );
        assert_eq!(
            paths(&spec),
            vec![
                "spec.source.kafka.properties.sasl.password",
                "spec.source.kafka.properties.ssl.endpoint.identification.algorithm",
                "spec.source.kafka.security.sasl",
                "spec.source.kafka.security.tls",
            ]
        );
        let errors = validate(&spec);
        assert!(errors[0].reason.contains("secret"), "{}", errors[0]);
        assert!(
            errors[2].reason.contains("not used with protocol SSL"),
            "{}",
            errors[2]
        );

        spec.source.kafka.properties.clear();
        spec.source.kafka.security =
            Some(serde_yaml::from_str("protocol: SASL_SSL\ntls: {caFile: /ca.crt}\n").unwrap());
        let errors = validate(&spec);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].path, "spec.source.kafka.security.sasl");
        assert!(errors[0].reason.contains("required with protocol SASL_SSL"));

        spec.source.kafka.security = Some(
            serde_yaml::from_str(
                "protocol: SASL_SSL\n\
                 tls: {caFile: /ca.crt}\n\
                 sasl: {mechanism: SCRAM-SHA-256, username: u, passwordEnv: KAFKA_PASSWORD}\n",
            )
            .unwrap(),
        );
        assert!(validate(&spec).is_empty());
    }
}
