//! The route stage (pure): which table a record goes to. A route is an ordered list of
//! `topic regex → table template` rules and an optional default template; a template is text
//! with placeholders — `{topic}`, `{key}`, `{value.a.b}` (a field of the JSON value) and
//! `{header.name}` — and resolves to `namespace….table`.
//!
//! Identifier rule: the template's own text must already be valid (`[A-Za-z0-9_]`, dots
//! between parts); a substituted value is lowercased, every character outside `[a-z0-9_]`
//! (dots included, so a value never adds a namespace level) becomes `_`; then every part of
//! the resolved name that starts with a digit gets a leading `_`. `raw.{topic}` of topic
//! `Orders.EU-West` → `raw.orders_eu_west`; `{topic}.t` of `2024-events` → `_2024_events.t`.

use std::borrow::Cow;

use regex::Regex;

/// A route that cannot be used as written (names the template or pattern).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// A template with nothing in it.
    #[error("table template is empty")]
    Empty,
    /// A `{` without its `}`.
    #[error("table template `{template}`: `{{` without `}}`")]
    Unclosed {
        /// The template.
        template: String,
    },
    /// A placeholder this router does not know.
    #[error(
        "table template `{template}`: unknown placeholder `{{{placeholder}}}` (use {{topic}}, \
         {{key}}, {{value.FIELD}} or {{header.NAME}})"
    )]
    Placeholder {
        /// The template.
        template: String,
        /// The placeholder's text.
        placeholder: String,
    },
    /// Literal text that is not an identifier.
    #[error(
        "table template `{template}`: `{text}` is not valid in a table name (letters, digits, \
         `_`, and `.` between namespace and table)"
    )]
    Literal {
        /// The template.
        template: String,
        /// The offending text.
        text: String,
    },
    /// A rule's topic pattern does not compile.
    #[error("route pattern `{pattern}`: {message}")]
    Pattern {
        /// The pattern.
        pattern: String,
        /// The regex error.
        message: String,
    },
}

/// A record that no rule routes, with the reason (its dead-letter reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unroutable(pub String);

/// A resolved table: namespace parts and the table name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableName {
    /// Namespace levels (at least one).
    pub namespace: Vec<String>,
    /// The table.
    pub name: String,
}

impl std::fmt::Display for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.namespace.join("."), self.name)
    }
}

/// What a template may read of a record.
pub trait RecordView {
    /// The Kafka key as text.
    fn key(&self) -> Option<Cow<'_, str>>;
    /// A scalar field of the value at `path` (a JSON object's fields), as text.
    fn value_field(&self, path: &[String]) -> Option<Cow<'_, str>>;
    /// A header's value as text.
    fn header(&self, name: &str) -> Option<Cow<'_, str>>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Topic,
    Key,
    Value(Vec<String>),
    Header(String),
}

/// A scalar field of a JSON value at `path`, as a template reads it (strings, numbers and
/// booleans; anything else is missing).
pub fn json_field<'a>(value: &'a serde_json::Value, path: &[String]) -> Option<Cow<'a, str>> {
    let mut v = value;
    for p in path {
        v = v.get(p)?;
    }
    match v {
        serde_json::Value::String(s) => Some(Cow::Borrowed(s)),
        serde_json::Value::Number(n) => Some(Cow::Owned(n.to_string())),
        serde_json::Value::Bool(b) => Some(Cow::Owned(b.to_string())),
        _ => None,
    }
}

/// A parsed table template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    pieces: Vec<Piece>,
}

fn valid_literal(text: &str) -> bool {
    text.chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

impl Template {
    /// Parses `source`.
    pub fn parse(source: &str) -> Result<Self, RouteError> {
        if source.trim().is_empty() {
            return Err(RouteError::Empty);
        }
        let mut pieces = Vec::new();
        let mut rest = source;
        while !rest.is_empty() {
            match rest.find('{') {
                Some(0) => {
                    let end = rest.find('}').ok_or_else(|| RouteError::Unclosed {
                        template: source.into(),
                    })?;
                    let inner = &rest[1..end];
                    let piece = match inner {
                        "topic" => Piece::Topic,
                        "key" => Piece::Key,
                        _ => match inner.split_once('.') {
                            Some(("value", path)) if path.split('.').all(|p| !p.is_empty()) => {
                                Piece::Value(path.split('.').map(str::to_string).collect())
                            }
                            Some(("header", name)) if !name.is_empty() => {
                                Piece::Header(name.to_string())
                            }
                            _ => {
                                return Err(RouteError::Placeholder {
                                    template: source.into(),
                                    placeholder: inner.into(),
                                });
                            }
                        },
                    };
                    pieces.push(piece);
                    rest = &rest[end + 1..];
                }
                found => {
                    let end = found.unwrap_or(rest.len());
                    let text = &rest[..end];
                    if !valid_literal(text) {
                        return Err(RouteError::Literal {
                            template: source.into(),
                            text: text.into(),
                        });
                    }
                    pieces.push(Piece::Text(text.to_string()));
                    rest = &rest[end..];
                }
            }
        }
        Ok(Self {
            source: source.into(),
            pieces,
        })
    }

    /// Whether resolving reads the record (not only its topic).
    pub fn reads_record(&self) -> bool {
        self.pieces
            .iter()
            .any(|p| matches!(p, Piece::Key | Piece::Value(_) | Piece::Header(_)))
    }

    /// The table for a record of `topic`.
    pub fn resolve(&self, topic: &str, record: &impl RecordView) -> Result<TableName, Unroutable> {
        let mut text = String::new();
        for piece in &self.pieces {
            let value = match piece {
                Piece::Text(t) => {
                    text.push_str(t);
                    continue;
                }
                Piece::Topic => Some(Cow::Borrowed(topic)),
                Piece::Key => record.key(),
                Piece::Value(path) => record.value_field(path),
                Piece::Header(name) => record.header(name),
            };
            let Some(value) = value else {
                return Err(Unroutable(format!(
                    "table template `{}`: {} is missing",
                    self.source,
                    describe(piece)
                )));
            };
            let clean = sanitize(&value);
            if clean.is_empty() {
                return Err(Unroutable(format!(
                    "table template `{}`: {} is empty",
                    self.source,
                    describe(piece)
                )));
            }
            text.push_str(&clean);
        }
        split_table(&text).ok_or_else(|| {
            Unroutable(format!(
                "table template `{}` resolved to `{text}`, which is not namespace.table",
                self.source
            ))
        })
    }
}

fn describe(piece: &Piece) -> String {
    match piece {
        Piece::Text(_) | Piece::Topic => "the topic".into(),
        Piece::Key => "the record key".into(),
        Piece::Value(path) => format!("value field `{}`", path.join(".")),
        Piece::Header(name) => format!("header `{name}`"),
    }
}

/// A substituted value as identifier text (the rule in the module's contract).
pub fn sanitize(value: &str) -> String {
    value
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A name part that starts with a digit, made an identifier.
fn part(text: &str) -> String {
    if text.starts_with(|c: char| c.is_ascii_digit()) {
        format!("_{text}")
    } else {
        text.to_string()
    }
}

fn split_table(text: &str) -> Option<TableName> {
    let parts: Vec<&str> = text.split('.').collect();
    if parts.len() < 2 || parts.iter().any(|p| p.is_empty()) {
        return None;
    }
    let (name, namespace) = parts.split_last()?;
    Some(TableName {
        namespace: namespace.iter().map(|p| part(p)).collect(),
        name: part(name),
    })
}

/// Ordered `topic regex → template` rules, then a default template.
#[derive(Debug, Clone)]
pub struct Router {
    rules: Vec<(Regex, Template)>,
    default: Option<Template>,
}

impl Router {
    /// A router from rules (pattern, template), tried in order, and a default template.
    /// Patterns match the whole topic name.
    pub fn new(rules: &[(String, String)], default: Option<&str>) -> Result<Self, RouteError> {
        let rules = rules
            .iter()
            .map(|(pattern, template)| {
                let re =
                    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| RouteError::Pattern {
                        pattern: pattern.clone(),
                        message: e.to_string(),
                    })?;
                Ok((re, Template::parse(template)?))
            })
            .collect::<Result<Vec<_>, RouteError>>()?;
        let default = default.map(Template::parse).transpose()?;
        Ok(Self { rules, default })
    }

    /// The template that decides for records of `topic`, with the index of its rule (`None`
    /// for the default template).
    pub fn template_for(&self, topic: &str) -> Result<(Option<usize>, &Template), Unroutable> {
        if let Some((i, (_, t))) = self
            .rules
            .iter()
            .enumerate()
            .find(|(_, (re, _))| re.is_match(topic))
        {
            return Ok((Some(i), t));
        }
        self.default.as_ref().map(|t| (None, t)).ok_or_else(|| {
            Unroutable(format!(
                "no route rule matches topic `{topic}` and there is no default table"
            ))
        })
    }

    /// The table for a record of `topic`.
    pub fn resolve(&self, topic: &str, record: &impl RecordView) -> Result<TableName, Unroutable> {
        self.template_for(topic)?.1.resolve(topic, record)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[derive(Default)]
    struct Rec {
        key: Option<String>,
        value: serde_json::Value,
        headers: BTreeMap<String, String>,
    }

    impl RecordView for Rec {
        fn key(&self) -> Option<Cow<'_, str>> {
            self.key.as_deref().map(Cow::Borrowed)
        }
        fn value_field(&self, path: &[String]) -> Option<Cow<'_, str>> {
            json_field(&self.value, path)
        }
        fn header(&self, name: &str) -> Option<Cow<'_, str>> {
            self.headers.get(name).map(|s| Cow::Borrowed(s.as_str()))
        }
    }

    fn table(s: &str) -> TableName {
        split_table(s).unwrap()
    }

    #[test]
    fn values_become_identifier_parts() {
        assert_eq!(sanitize("Orders.EU-West"), "orders_eu_west");
        assert_eq!(sanitize("2024-events"), "2024_events");
        assert_eq!(
            split_table("2024_events.t").unwrap().to_string(),
            "_2024_events.t"
        );
        assert_eq!(sanitize("café"), "caf_");
        assert_eq!(sanitize(""), "");
    }

    #[test]
    fn templates_resolve_from_topic_key_value_and_headers() {
        let rec = Rec {
            key: Some("Tenant-7".into()),
            value: serde_json::json!({"entity": "Order", "meta": {"region": "eu"}, "n": 3}),
            headers: BTreeMap::from([("tenant".into(), "acme".into())]),
        };
        let t = |s: &str| Template::parse(s).unwrap().resolve("shop.Orders-v2", &rec);
        assert_eq!(t("raw.{topic}"), Ok(table("raw.shop_orders_v2")));
        assert_eq!(
            t("{header.tenant}.{value.entity}_events"),
            Ok(table("acme.order_events"))
        );
        assert_eq!(
            t("lake.{value.meta.region}.t{value.n}"),
            Ok(table("lake.eu.t3"))
        );
        assert_eq!(t("k.{key}"), Ok(table("k.tenant_7")));
        assert!(!Template::parse("raw.{topic}").unwrap().reads_record());
        assert!(Template::parse("raw.{value.x}").unwrap().reads_record());
    }

    #[test]
    fn unresolvable_records_say_why() {
        let rec = Rec {
            value: serde_json::json!({"entity": {"nested": true}, "blank": "--"}),
            ..Rec::default()
        };
        let t = |s: &str| Template::parse(s).unwrap().resolve("clicks", &rec);
        assert_eq!(
            t("raw.{value.missing}"),
            Err(Unroutable(
                "table template `raw.{value.missing}`: value field `missing` is missing".into()
            ))
        );
        assert!(
            t("raw.{value.entity}")
                .unwrap_err()
                .0
                .contains("`entity` is missing")
        );
        assert!(
            t("raw.{header.tenant}")
                .unwrap_err()
                .0
                .contains("header `tenant`")
        );
        assert!(t("{topic}").unwrap_err().0.contains("not namespace.table"));
        assert_eq!(t("raw.{value.blank}"), Ok(table("raw.__")));
    }

    #[test]
    fn bad_templates_and_patterns_are_refused_with_what_is_wrong() {
        assert_eq!(Template::parse(" "), Err(RouteError::Empty));
        assert!(matches!(
            Template::parse("raw.{topic"),
            Err(RouteError::Unclosed { .. })
        ));
        let e = Template::parse("raw.{partition}").unwrap_err().to_string();
        assert!(e.contains("unknown placeholder `{partition}`"), "{e}");
        let e = Template::parse("raw-{topic}").unwrap_err().to_string();
        assert!(e.contains("`raw-` is not valid"), "{e}");
        assert!(matches!(
            Template::parse("raw.{value.}"),
            Err(RouteError::Placeholder { .. })
        ));
        let e = Router::new(&[("orders(".into(), "a.b".into())], None).unwrap_err();
        assert!(matches!(e, RouteError::Pattern { .. }), "{e}");
    }

    #[test]
    fn rules_are_tried_in_order_then_the_default() {
        let router = Router::new(
            &[
                ("orders\\..*".into(), "sales.{topic}".into()),
                ("orders\\.eu".into(), "never.reached".into()),
                ("audit".into(), "ops.audit_log".into()),
            ],
            Some("raw.{topic}"),
        )
        .unwrap();
        let rec = Rec::default();
        assert_eq!(
            router.resolve("orders.eu", &rec),
            Ok(table("sales.orders_eu"))
        );
        assert_eq!(router.resolve("audit", &rec), Ok(table("ops.audit_log")));
        assert_eq!(
            router.resolve("audit-2", &rec),
            Ok(table("raw.audit_2")),
            "whole-name match"
        );
        let strict = Router::new(&[("audit".into(), "ops.audit".into())], None).unwrap();
        assert!(
            strict
                .resolve("clicks", &rec)
                .unwrap_err()
                .0
                .contains("no route rule matches topic `clicks`")
        );
        assert_eq!(table("a.b.c").to_string(), "a.b.c");
    }
}
