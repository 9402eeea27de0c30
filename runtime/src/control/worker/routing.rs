//! Which table a record of this worker goes to: the pipeline's one table, or its route —
//! resolved once per topic when the template reads only the topic, else per record (the key,
//! headers and the JSON value are read only when the template names them).

use std::{borrow::Cow, cell::OnceCell, collections::HashMap};

use rdkafka::{
    Message,
    message::{BorrowedMessage, Headers},
};

use crate::route::{RecordView, Router, json_field};

/// Where records go.
pub(super) enum Routing {
    /// Every record to this table.
    Fixed(String),
    /// By the route.
    Routed {
        router: Router,
        /// Per topic: the rule that decides, and the table when it depends on the topic only.
        topics: HashMap<String, TopicRoute>,
    },
}

#[derive(Clone)]
pub(super) struct TopicRoute {
    rule: Option<usize>,
    table: Option<Result<String, String>>,
}

/// A record's table (`namespace.name`) and the route rule that chose it.
pub(super) struct Target<'a> {
    pub(super) table: Cow<'a, str>,
    pub(super) rule: Option<usize>,
}

impl Routing {
    /// The table of `m`, or why it has none (the dead-letter reason).
    pub(super) fn target<'a>(&'a mut self, m: &BorrowedMessage<'_>) -> Result<Target<'a>, String> {
        let (router, topics) = match self {
            Self::Fixed(table) => {
                return Ok(Target {
                    table: Cow::Borrowed(table),
                    rule: None,
                });
            }
            Self::Routed { router, topics } => (router, topics),
        };
        if !topics.contains_key(m.topic()) {
            let route = match router.template_for(m.topic()) {
                Err(e) => TopicRoute {
                    rule: None,
                    table: Some(Err(e.0)),
                },
                Ok((rule, template)) => TopicRoute {
                    rule,
                    table: (!template.reads_record()).then(|| {
                        template
                            .resolve(m.topic(), &NoRecord)
                            .map(|t| t.to_string())
                            .map_err(|e| e.0)
                    }),
                },
            };
            topics.insert(m.topic().to_string(), route);
        }
        let route = &topics[m.topic()];
        match &route.table {
            Some(Ok(table)) => Ok(Target {
                table: Cow::Borrowed(table),
                rule: route.rule,
            }),
            Some(Err(reason)) => Err(reason.clone()),
            None => {
                let view = MessageView {
                    m,
                    value: OnceCell::new(),
                };
                let table = router.resolve(m.topic(), &view).map_err(|e| e.0)?;
                Ok(Target {
                    table: Cow::Owned(table.to_string()),
                    rule: route.rule,
                })
            }
        }
    }
}

/// A template that reads only the topic never asks the record.
struct NoRecord;

impl RecordView for NoRecord {
    fn key(&self) -> Option<Cow<'_, str>> {
        None
    }
    fn value_field(&self, _: &[String]) -> Option<Cow<'_, str>> {
        None
    }
    fn header(&self, _: &str) -> Option<Cow<'_, str>> {
        None
    }
}

/// A Kafka record as a template reads it; the value is parsed as JSON at most once.
struct MessageView<'a, 'm> {
    m: &'a BorrowedMessage<'m>,
    value: OnceCell<Option<serde_json::Value>>,
}

impl RecordView for MessageView<'_, '_> {
    fn key(&self) -> Option<Cow<'_, str>> {
        self.m.key().map(String::from_utf8_lossy)
    }

    fn value_field(&self, path: &[String]) -> Option<Cow<'_, str>> {
        let value = self
            .value
            .get_or_init(|| serde_json::from_slice(self.m.payload()?).ok())
            .as_ref()?;
        json_field(value, path)
    }

    fn header(&self, name: &str) -> Option<Cow<'_, str>> {
        let headers = self.m.headers()?;
        headers
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
            .map(String::from_utf8_lossy)
    }
}
