//! The standard `OTEL_*` environment variables → what to export where (pure: reads a lookup
//! function, never the process environment itself); every invalid value names its variable.

use std::{collections::BTreeMap, time::Duration};

/// An invalid `OTEL_*` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}={value:?}: {reason}")]
pub struct ConfigError {
    /// The environment variable.
    pub var: String,
    /// Its value.
    pub value: String,
    /// Why it cannot be used.
    pub reason: String,
}

/// The two OTLP transports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC (default port 4317).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (default port 4318; the specification's default).
    HttpProtobuf,
}

/// Where and how one signal (traces or metrics) is exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    /// The URL requests go to: for HTTP the full URL including `/v1/<signal>`, for gRPC the
    /// collector's address.
    pub endpoint: String,
    /// Transport.
    pub protocol: Protocol,
    /// Extra request headers (gRPC metadata), e.g. an API key.
    pub headers: Vec<(String, String)>,
    /// Per-request timeout.
    pub timeout: Duration,
    /// PEM file with the CA certificates to trust (`OTEL_EXPORTER_OTLP_CERTIFICATE`).
    pub ca_file: Option<String>,
}

/// Which traces are recorded (`OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampler {
    /// Every trace.
    AlwaysOn,
    /// No trace.
    AlwaysOff,
    /// A fraction of trace ids.
    Ratio(f64),
    /// Follow the parent's decision; root spans by the inner rule.
    ParentBased(RootSampler),
}

/// The rule for root spans under a parent-based sampler.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RootSampler {
    /// Every root.
    AlwaysOn,
    /// No root.
    AlwaysOff,
    /// A fraction of roots.
    Ratio(f64),
}

/// Everything the OTEL_* variables ask for. `None` signals are not exported.
#[derive(Debug, Clone, PartialEq)]
pub struct OtelConfig {
    /// `service.name` of this process.
    pub service_name: String,
    /// Resource attributes, `service.name` included.
    pub resource: BTreeMap<String, String>,
    /// Trace export, if on.
    pub traces: Option<Export>,
    /// Metric export, if on.
    pub metrics: Option<Export>,
    /// Trace sampling.
    pub sampler: Sampler,
    /// How often metrics are pushed (`OTEL_METRIC_EXPORT_INTERVAL`, default 60 s).
    pub metric_interval: Duration,
}

/// The OTLP signals Tidewater exports.
#[derive(Debug, Clone, Copy)]
enum Signal {
    Traces,
    Metrics,
}

impl Signal {
    fn upper(self) -> &'static str {
        match self {
            Signal::Traces => "TRACES",
            Signal::Metrics => "METRICS",
        }
    }
    fn path(self) -> &'static str {
        match self {
            Signal::Traces => "v1/traces",
            Signal::Metrics => "v1/metrics",
        }
    }
}

fn error(var: &str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        var: var.into(),
        value: value.into(),
        reason: reason.into(),
    }
}

impl OtelConfig {
    /// Reads the configuration through `env` (e.g. `|k| std::env::var(k).ok()`). `Ok(None)`
    /// when nothing is to be exported: no endpoint set, `OTEL_SDK_DISABLED=true`, or both
    /// exporters set to `none`.
    pub fn from_env(
        default_service: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, ConfigError> {
        let get = |k: &str| {
            env(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        if let Some(v) = get("OTEL_SDK_DISABLED") {
            match v.to_ascii_lowercase().as_str() {
                "true" => return Ok(None),
                "false" => {}
                _ => return Err(error("OTEL_SDK_DISABLED", &v, "expected true or false")),
            }
        }
        let traces = export(Signal::Traces, &get)?;
        let metrics = export(Signal::Metrics, &get)?;
        if traces.is_none() && metrics.is_none() {
            return Ok(None);
        }
        let mut resource = BTreeMap::new();
        if let Some(v) = get("OTEL_RESOURCE_ATTRIBUTES") {
            for (k, val) in key_values("OTEL_RESOURCE_ATTRIBUTES", &v)? {
                resource.insert(k, val);
            }
        }
        let service_name = get("OTEL_SERVICE_NAME")
            .or_else(|| resource.get("service.name").cloned())
            .unwrap_or_else(|| default_service.to_string());
        resource.insert("service.name".into(), service_name.clone());
        let metric_interval = match get("OTEL_METRIC_EXPORT_INTERVAL") {
            None => Duration::from_secs(60),
            Some(v) => millis("OTEL_METRIC_EXPORT_INTERVAL", &v)?,
        };
        Ok(Some(Self {
            service_name,
            resource,
            traces,
            metrics,
            sampler: sampler(&get)?,
            metric_interval,
        }))
    }
}

/// One signal's export, or `None` when its exporter is `none` or no endpoint is set.
fn export(
    signal: Signal,
    get: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Export>, ConfigError> {
    let s = signal.upper();
    let exporter_var = format!("OTEL_{s}_EXPORTER");
    match get(&exporter_var).as_deref() {
        None | Some("otlp") => {}
        Some("none") => return Ok(None),
        Some(other) => {
            return Err(error(&exporter_var, other, "supported: otlp, none"));
        }
    }
    let signal_var = format!("OTEL_EXPORTER_OTLP_{s}_ENDPOINT");
    let (var, raw, verbatim) = match get(&signal_var) {
        Some(v) => (signal_var, v, true),
        None => match get("OTEL_EXPORTER_OTLP_ENDPOINT") {
            Some(v) => ("OTEL_EXPORTER_OTLP_ENDPOINT".to_string(), v, false),
            None => return Ok(None),
        },
    };
    if !(raw.starts_with("http://") || raw.starts_with("https://")) {
        return Err(error(&var, &raw, "expected an http:// or https:// URL"));
    }
    let protocol_var = format!("OTEL_EXPORTER_OTLP_{s}_PROTOCOL");
    let (pvar, protocol) = match get(&protocol_var) {
        Some(v) => (protocol_var, Some(v)),
        None => (
            "OTEL_EXPORTER_OTLP_PROTOCOL".to_string(),
            get("OTEL_EXPORTER_OTLP_PROTOCOL"),
        ),
    };
    let protocol = match protocol.as_deref() {
        None | Some("http/protobuf") => Protocol::HttpProtobuf,
        Some("grpc") => Protocol::Grpc,
        Some(other) => {
            return Err(error(
                &pvar,
                other,
                "supported: grpc, http/protobuf (http/json is not)",
            ));
        }
    };
    let endpoint = match protocol {
        Protocol::HttpProtobuf if !verbatim => {
            format!("{}/{}", raw.trim_end_matches('/'), signal.path())
        }
        _ => raw,
    };
    let headers = match signal_or_generic(get, s, "HEADERS") {
        Some((var, v)) => key_values(&var, &v)?,
        None => Vec::new(),
    };
    let timeout = match signal_or_generic(get, s, "TIMEOUT") {
        Some((var, v)) => millis(&var, &v)?,
        None => Duration::from_secs(10),
    };
    let ca_file = signal_or_generic(get, s, "CERTIFICATE").map(|(_, v)| v);
    Ok(Some(Export {
        endpoint,
        protocol,
        headers,
        timeout,
        ca_file,
    }))
}

/// `OTEL_EXPORTER_OTLP_<SIGNAL>_<what>`, else `OTEL_EXPORTER_OTLP_<what>`, with its name.
fn signal_or_generic(
    get: &dyn Fn(&str) -> Option<String>,
    signal: &str,
    what: &str,
) -> Option<(String, String)> {
    let specific = format!("OTEL_EXPORTER_OTLP_{signal}_{what}");
    if let Some(v) = get(&specific) {
        return Some((specific, v));
    }
    let generic = format!("OTEL_EXPORTER_OTLP_{what}");
    get(&generic).map(|v| (generic, v))
}

fn sampler(get: &dyn Fn(&str) -> Option<String>) -> Result<Sampler, ConfigError> {
    let ratio = || -> Result<f64, ConfigError> {
        match get("OTEL_TRACES_SAMPLER_ARG") {
            None => Ok(1.0),
            Some(v) => match v.parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                _ => Err(error(
                    "OTEL_TRACES_SAMPLER_ARG",
                    &v,
                    "expected a ratio from 0 to 1",
                )),
            },
        }
    };
    Ok(match get("OTEL_TRACES_SAMPLER").as_deref() {
        None | Some("parentbased_always_on") => Sampler::ParentBased(RootSampler::AlwaysOn),
        Some("always_on") => Sampler::AlwaysOn,
        Some("always_off") => Sampler::AlwaysOff,
        Some("traceidratio") => Sampler::Ratio(ratio()?),
        Some("parentbased_always_off") => Sampler::ParentBased(RootSampler::AlwaysOff),
        Some("parentbased_traceidratio") => Sampler::ParentBased(RootSampler::Ratio(ratio()?)),
        Some(other) => {
            return Err(error(
                "OTEL_TRACES_SAMPLER",
                other,
                "supported: always_on, always_off, traceidratio, parentbased_always_on, \
                 parentbased_always_off, parentbased_traceidratio",
            ));
        }
    })
}

fn millis(var: &str, value: &str) -> Result<Duration, ConfigError> {
    match value.parse::<u64>() {
        Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
        _ => Err(error(
            var,
            value,
            "expected a positive number of milliseconds",
        )),
    }
}

/// `k1=v1,k2=v2` with percent-encoded keys and values (the W3C baggage format the
/// specification names for headers and resource attributes).
fn key_values(var: &str, value: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let Some((k, v)) = item.split_once('=') else {
            return Err(error(var, value, format!("{item:?} is not key=value")));
        };
        let decode = |s: &str| {
            percent_decode(s.trim())
                .ok_or_else(|| error(var, value, format!("{s:?} has an invalid % escape")))
        };
        let key = decode(k)?;
        if key.is_empty() {
            return Err(error(var, value, format!("{item:?} has an empty key")));
        }
        out.push((key, decode(v)?));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Option<OtelConfig>, ConfigError> {
        let map: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        OtelConfig::from_env("tidewater", &move |k| map.get(k).cloned())
    }

    #[test]
    fn off_without_an_endpoint_or_when_disabled() {
        assert_eq!(config(&[]), Ok(None));
        assert_eq!(config(&[("OTEL_SERVICE_NAME", "x")]), Ok(None));
        assert_eq!(
            config(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_SDK_DISABLED", "true")
            ]),
            Ok(None)
        );
        assert_eq!(
            config(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_TRACES_EXPORTER", "none"),
                ("OTEL_METRICS_EXPORTER", "none")
            ]),
            Ok(None)
        );
    }

    #[test]
    fn generic_http_endpoint_gets_the_signal_path_and_specific_is_verbatim() {
        let c = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            (
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                "https://m.example/ingest",
            ),
        ])
        .unwrap()
        .unwrap();
        let traces = c.traces.unwrap();
        assert_eq!(traces.endpoint, "http://collector:4318/v1/traces");
        assert_eq!(traces.protocol, Protocol::HttpProtobuf);
        assert_eq!(c.metrics.unwrap().endpoint, "https://m.example/ingest");
        assert_eq!(c.service_name, "tidewater");
        assert_eq!(c.metric_interval, Duration::from_secs(60));
    }

    #[test]
    fn grpc_endpoint_is_used_as_given_with_headers_and_timeout() {
        let c = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=a%20b, tenant=t1"),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "2500"),
            ("OTEL_TRACES_EXPORTER", "otlp"),
            ("OTEL_METRICS_EXPORTER", "none"),
        ])
        .unwrap()
        .unwrap();
        let t = c.traces.unwrap();
        assert_eq!(t.endpoint, "http://collector:4317");
        assert_eq!(t.protocol, Protocol::Grpc);
        assert_eq!(
            t.headers,
            vec![
                ("x-api-key".to_string(), "a b".to_string()),
                ("tenant".to_string(), "t1".to_string())
            ]
        );
        assert_eq!(t.timeout, Duration::from_millis(2500));
        assert!(c.metrics.is_none());
    }

    #[test]
    fn service_name_and_resource_attributes() {
        let c = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "service.name=from-attrs,k8s.namespace.name=data",
            ),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.service_name, "from-attrs");
        assert_eq!(c.resource["k8s.namespace.name"], "data");
        let c = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attrs"),
            ("OTEL_SERVICE_NAME", "clicks"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.service_name, "clicks");
        assert_eq!(c.resource["service.name"], "clicks");
    }

    #[test]
    fn samplers() {
        let with = |s: &str, arg: Option<&str>| {
            let mut v = vec![
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_TRACES_SAMPLER", s),
            ];
            if let Some(a) = arg {
                v.push(("OTEL_TRACES_SAMPLER_ARG", a));
            }
            config(&v).map(|c| c.unwrap().sampler)
        };
        assert_eq!(with("always_off", None), Ok(Sampler::AlwaysOff));
        assert_eq!(with("traceidratio", Some("0.25")), Ok(Sampler::Ratio(0.25)));
        assert_eq!(
            with("parentbased_traceidratio", Some("0.5")),
            Ok(Sampler::ParentBased(RootSampler::Ratio(0.5)))
        );
        assert_eq!(
            with("traceidratio", Some("2")).unwrap_err().var,
            "OTEL_TRACES_SAMPLER_ARG"
        );
        assert_eq!(
            with("jaeger_remote", None).unwrap_err().var,
            "OTEL_TRACES_SAMPLER"
        );
    }

    #[test]
    fn invalid_values_name_their_variable() {
        let e = |vars: &[(&str, &str)]| config(vars).unwrap_err();
        assert_eq!(
            e(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")]).var,
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        );
        let json = e(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
        ]);
        assert_eq!(json.var, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL");
        assert!(json.to_string().contains("http/json is not"), "{json}");
        assert_eq!(
            e(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "novalue")
            ])
            .var,
            "OTEL_EXPORTER_OTLP_HEADERS"
        );
        assert_eq!(
            e(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_METRIC_EXPORT_INTERVAL", "soon")
            ])
            .var,
            "OTEL_METRIC_EXPORT_INTERVAL"
        );
        assert_eq!(
            e(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_TRACES_EXPORTER", "zipkin")
            ])
            .var,
            "OTEL_TRACES_EXPORTER"
        );
    }
}
