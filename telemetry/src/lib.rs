//! Logging and OpenTelemetry for Tidewater's binaries: logs on stderr (JSON lines carry the
//! trace and span ids), and OTLP traces and metrics when the standard `OTEL_*` variables name
//! an endpoint — off otherwise, at no cost.
//!
//! Exports run on a runtime of their own (one thread), so a stalled collector never delays a
//! checkpoint and the data path's runtime can shut down without losing the last spans.

pub mod config;
pub mod export;
mod logs;
pub mod openmetrics;

use std::{
    sync::{Arc, Mutex, OnceLock},
    time::{SystemTime, UNIX_EPOCH},
};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest,
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    metrics::v1::{ResourceMetrics, ScopeMetrics},
    resource::v1::Resource,
};
use opentelemetry_sdk::trace::{SdkTracerProvider, span_processor_with_async_runtime};
use tracing_subscriber::{Layer, Registry, layer::SubscriberExt, util::SubscriberInitExt};

pub use config::{ConfigError, OtelConfig};

/// How the process logs.
#[derive(Debug, Clone, Copy)]
pub struct Options<'a> {
    /// `service.name` unless `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` say otherwise.
    pub service: &'a str,
    /// JSON lines instead of text.
    pub json_logs: bool,
    /// `RUST_LOG`-style filter used when `RUST_LOG` is unset.
    pub default_filter: &'a str,
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// An `OTEL_*` variable is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// An exporter cannot be built.
    #[error(transparent)]
    Setup(#[from] export::SetupError),
    /// The telemetry runtime or the global subscriber could not be set up.
    #[error("telemetry: {0}")]
    Start(String),
}

/// Produces the current OpenMetrics text of a registry (what `/metrics` serves).
pub type MetricsText = Arc<dyn Fn() -> String + Send + Sync>;

/// Keeps the exporters alive; [`Telemetry::shutdown`] flushes them.
#[derive(Clone, Default)]
pub struct Telemetry {
    otel: Option<Arc<Otel>>,
}

struct Otel {
    config: OtelConfig,
    runtime: tokio::runtime::Runtime,
    tracer: Option<SdkTracerProvider>,
    metrics: Option<export::MetricPush>,
    /// The registry being pushed, for the final push at shutdown.
    source: Mutex<Option<MetricsText>>,
    started_unix_nano: u64,
}

impl Telemetry {
    /// Whether OTLP export is on.
    pub fn enabled(&self) -> bool {
        self.otel.is_some()
    }

    /// Pushes `text()` as OTLP metrics every `OTEL_METRIC_EXPORT_INTERVAL` (when metric
    /// export is on; otherwise does nothing).
    pub fn export_metrics(&self, text: MetricsText) {
        let Some(otel) = self.otel.clone() else {
            return;
        };
        let Some(push) = otel.metrics.clone() else {
            return;
        };
        *otel.source.lock().unwrap_or_else(|e| e.into_inner()) = Some(text.clone());
        let interval = otel.config.metric_interval;
        let weak = Arc::downgrade(&otel);
        otel.runtime.spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(otel) = weak.upgrade() else { return };
                let request = otel.request(&text());
                drop(otel);
                if let Err(e) = push.push(request).await {
                    tracing::warn!(error = %e, "OTLP metric export failed; retrying next interval");
                }
            }
        });
    }

    /// Flushes spans and pushes the metrics one last time (bounded by the export timeouts).
    pub fn shutdown(&self) {
        let Some(otel) = &self.otel else { return };
        if let (Some(push), Some(text)) = (
            &otel.metrics,
            otel.source
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        ) {
            let request = otel.request(&text());
            if let Err(e) = otel.runtime.block_on(push.push(request)) {
                tracing::warn!(error = %e, "final OTLP metric export failed");
            }
        }
        if let Some(Err(e)) = otel.tracer.as_ref().map(SdkTracerProvider::shutdown) {
            tracing::warn!(error = %e, "flushing spans at exit failed");
        }
    }
}

impl Otel {
    fn request(&self, text: &str) -> ExportMetricsServiceRequest {
        let stamp = openmetrics::Stamp {
            start_unix_nano: self.started_unix_nano,
            now_unix_nano: unix_nanos(SystemTime::now()),
        };
        let (metrics, unreadable) = openmetrics::to_otlp(text, stamp);
        if unreadable > 0 {
            tracing::warn!(unreadable, "metric lines the OTLP export could not read");
        }
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource {
                    attributes: self
                        .config
                        .resource
                        .iter()
                        .map(|(k, v)| KeyValue {
                            key: k.clone(),
                            value: Some(AnyValue {
                                value: Some(any_value::Value::StringValue(v.clone())),
                            }),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(InstrumentationScope {
                        name: "tidewater".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Installs the global subscriber: stderr logs, plus the OTLP span layer when configured.
/// Call once, before any runtime starts.
pub fn init(options: Options<'_>) -> Result<Telemetry, InitError> {
    let config = OtelConfig::from_env(options.service, &|k| std::env::var(k).ok())?;
    let otel = config.map(start).transpose()?.map(Arc::new);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(options.default_filter));
    let dispatch = Arc::new(OnceLock::new());
    // Colours only on a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = Vec::new();
    if options.json_logs {
        layers.push(
            tracing_subscriber::fmt::layer()
                .json()
                .with_writer(std::io::stderr)
                .event_format(logs::WithTraceIds::new(
                    tracing_subscriber::fmt::format().json(),
                    dispatch.clone(),
                ))
                .boxed(),
        );
    } else {
        layers.push(
            tracing_subscriber::fmt::layer()
                .with_ansi(ansi)
                .with_writer(std::io::stderr)
                .boxed(),
        );
    }
    if let Some(tracer) = otel.as_ref().and_then(|o| o.tracer.as_ref()) {
        layers.push(
            tracing_opentelemetry::layer()
                .with_tracer(tracer.tracer("tidewater"))
                .boxed(),
        );
    }
    tracing_subscriber::registry()
        .with(layers)
        .with(filter)
        .try_init()
        .map_err(|e| InitError::Start(e.to_string()))?;
    let _ = dispatch.set(tracing::dispatcher::get_default(|d| d.downgrade()));
    if let Some(o) = &otel {
        tracing::info!(
            service = %o.config.service_name,
            traces = o.config.traces.as_ref().map(|e| e.endpoint.as_str()),
            metrics = o.config.metrics.as_ref().map(|e| e.endpoint.as_str()),
            "OpenTelemetry export on"
        );
    }
    Ok(Telemetry { otel })
}

fn start(config: OtelConfig) -> Result<Otel, InitError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("otel-export")
        .enable_all()
        .build()
        .map_err(|e| InitError::Start(e.to_string()))?;
    let _entered = runtime.enter();
    let tracer = match &config.traces {
        None => None,
        Some(export) => {
            let exporter = export::span_exporter(export)?;
            let processor = span_processor_with_async_runtime::BatchSpanProcessor::builder(
                exporter,
                opentelemetry_sdk::runtime::Tokio,
            )
            .build();
            let resource = opentelemetry_sdk::Resource::builder_empty()
                .with_attributes(
                    config
                        .resource
                        .iter()
                        .map(|(k, v)| opentelemetry::KeyValue::new(k.clone(), v.clone())),
                )
                .build();
            Some(
                SdkTracerProvider::builder()
                    .with_span_processor(processor)
                    .with_sampler(sampler(config.sampler))
                    .with_resource(resource)
                    .build(),
            )
        }
    };
    let metrics = config
        .metrics
        .as_ref()
        .map(export::MetricPush::new)
        .transpose()?;
    drop(_entered);
    Ok(Otel {
        config,
        runtime,
        tracer,
        metrics,
        source: Mutex::new(None),
        started_unix_nano: unix_nanos(SystemTime::now()),
    })
}

fn sampler(s: config::Sampler) -> opentelemetry_sdk::trace::Sampler {
    use config::{RootSampler, Sampler as S};
    use opentelemetry_sdk::trace::Sampler;
    let root = |r: RootSampler| match r {
        RootSampler::AlwaysOn => Sampler::AlwaysOn,
        RootSampler::AlwaysOff => Sampler::AlwaysOff,
        RootSampler::Ratio(f) => Sampler::TraceIdRatioBased(f),
    };
    match s {
        S::AlwaysOn => Sampler::AlwaysOn,
        S::AlwaysOff => Sampler::AlwaysOff,
        S::Ratio(f) => Sampler::TraceIdRatioBased(f),
        S::ParentBased(r) => Sampler::ParentBased(Box::new(root(r))),
    }
}

/// The W3C `traceparent` of the current span (for a message to another process), if sampled.
pub fn current_traceparent() -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

/// Makes `span` a child of the remote span named by a W3C `traceparent` (ignored if invalid).
pub fn set_remote_parent(span: &tracing::Span, traceparent: &str) {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let mut parts = traceparent.split('-');
    let (Some("00"), Some(trace), Some(id), Some(flags)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return;
    };
    let (Ok(trace), Ok(id), Ok(flags)) = (
        TraceId::from_hex(trace),
        SpanId::from_hex(id),
        u8::from_str_radix(flags, 16),
    ) else {
        return;
    };
    let sc = SpanContext::new(
        trace,
        id,
        TraceFlags::new(flags),
        true,
        TraceState::default(),
    );
    if sc.is_valid() {
        use opentelemetry::trace::TraceContextExt;
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(sc));
    }
}
