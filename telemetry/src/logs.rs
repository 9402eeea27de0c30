//! JSON log lines carrying the OpenTelemetry `trace_id` and `span_id` of the span they were
//! written in, so a log line leads to its trace and back.

use std::{
    fmt,
    sync::{Arc, OnceLock},
};

use opentelemetry::trace::TraceContextExt;
use tracing::{Event, Subscriber, dispatcher::WeakDispatch};
use tracing_subscriber::{
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    registry::LookupSpan,
};

/// Wraps a JSON event formatter; adds `trace_id`/`span_id` when the current span is sampled.
pub struct WithTraceIds<F> {
    inner: F,
    /// The subscriber this formatter runs in, set once it is installed.
    dispatch: Arc<OnceLock<WeakDispatch>>,
}

impl<F> WithTraceIds<F> {
    /// `inner` must write one JSON object per line.
    pub fn new(inner: F, dispatch: Arc<OnceLock<WeakDispatch>>) -> Self {
        Self { inner, dispatch }
    }
}

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        let ids = ctx.lookup_current().and_then(|span| {
            let dispatch = self.dispatch.get()?.upgrade()?;
            let cx = tracing_opentelemetry::get_otel_context(&span.id(), &dispatch)?;
            let span = cx.span();
            let sc = span.span_context();
            sc.is_valid()
                .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
        });
        match ids {
            Some((trace, span)) => writer.write_str(&with_ids(&line, &trace, &span)),
            None => writer.write_str(&line),
        }
    }
}

/// Inserts the two ids as the last fields of the JSON object on `line`.
fn with_ids(line: &str, trace_id: &str, span_id: &str) -> String {
    let body = line.trim_end();
    let newline = &line[body.len()..];
    match body.strip_suffix('}') {
        Some(open) => {
            let sep = if open.trim_end().ends_with('{') {
                ""
            } else {
                ","
            };
            format!(r#"{open}{sep}"trace_id":"{trace_id}","span_id":"{span_id}"}}{newline}"#)
        }
        None => line.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_become_the_last_fields() {
        let out = with_ids(
            "{\"level\":\"INFO\",\"fields\":{\"message\":\"m\"}}\n",
            "ab",
            "cd",
        );
        assert_eq!(
            out,
            "{\"level\":\"INFO\",\"fields\":{\"message\":\"m\"},\"trace_id\":\"ab\",\"span_id\":\"cd\"}\n"
        );
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["trace_id"], "ab");
        assert_eq!(
            with_ids("{}\n", "a", "b"),
            "{\"trace_id\":\"a\",\"span_id\":\"b\"}\n"
        );
        assert_eq!(with_ids("not json\n", "a", "b"), "not json\n");
    }
}
