//! OTLP transports: the span exporter for either protocol, and the metric push (OTLP/gRPC or
//! OTLP/HTTP protobuf), both over one client per signal built from its [`Export`].

use std::{collections::HashMap, str::FromStr};

use async_trait::async_trait;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, metrics_service_client::MetricsServiceClient,
};
use prost::Message;
use tonic::{
    metadata::{MetadataKey, MetadataMap, MetadataValue},
    transport::{Certificate, Channel, ClientTlsConfig},
};

use crate::config::{Export, Protocol};

/// An exporter that cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The CA file cannot be read or parsed.
    #[error("OTLP CA file {path}: {reason}")]
    CaFile {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The endpoint or a header is not usable by the transport.
    #[error("OTLP endpoint {endpoint}: {reason}")]
    Endpoint {
        /// The endpoint.
        endpoint: String,
        /// Why.
        reason: String,
    },
}

/// A metric push that failed (the next interval tries again).
#[derive(Debug, thiserror::Error)]
#[error("OTLP metrics to {endpoint}: {reason}")]
pub struct PushError {
    endpoint: String,
    reason: String,
}

/// Builds the span exporter for `export`.
pub fn span_exporter(export: &Export) -> Result<opentelemetry_otlp::SpanExporter, SetupError> {
    let built = match export.protocol {
        Protocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_channel(channel(export)?)
            .with_metadata(metadata(export)?)
            .with_timeout(export.timeout)
            .build(),
        Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(export.endpoint.clone())
            .with_http_client(ReqwestHttp(reqwest_client(export)?))
            .with_headers(export.headers.iter().cloned().collect::<HashMap<_, _>>())
            .with_timeout(export.timeout)
            .build(),
    };
    built.map_err(|e| SetupError::Endpoint {
        endpoint: export.endpoint.clone(),
        reason: e.to_string(),
    })
}

/// Sends metric requests to one collector.
#[derive(Clone, Debug)]
pub enum MetricPush {
    /// OTLP/gRPC.
    Grpc {
        /// Client.
        client: Box<MetricsServiceClient<Channel>>,
        /// Metadata sent with each request.
        metadata: MetadataMap,
        /// For errors.
        endpoint: String,
    },
    /// OTLP/HTTP protobuf.
    Http {
        /// Client.
        client: reqwest::Client,
        /// Full URL.
        endpoint: String,
        /// Extra headers.
        headers: Vec<(String, String)>,
    },
}

impl MetricPush {
    /// A pusher for `export`.
    pub fn new(export: &Export) -> Result<Self, SetupError> {
        Ok(match export.protocol {
            Protocol::Grpc => MetricPush::Grpc {
                client: Box::new(MetricsServiceClient::new(channel(export)?)),
                metadata: metadata(export)?,
                endpoint: export.endpoint.clone(),
            },
            Protocol::HttpProtobuf => MetricPush::Http {
                client: reqwest_client(export)?,
                endpoint: export.endpoint.clone(),
                headers: export.headers.clone(),
            },
        })
    }

    /// Sends one request; an error status or a rejected request is an error.
    pub async fn push(&self, request: ExportMetricsServiceRequest) -> Result<(), PushError> {
        match self {
            MetricPush::Grpc {
                client,
                metadata,
                endpoint,
            } => {
                let mut req = tonic::Request::new(request);
                *req.metadata_mut() = metadata.clone();
                let response = (**client)
                    .clone()
                    .export(req)
                    .await
                    .map_err(|e| PushError {
                        endpoint: endpoint.clone(),
                        reason: e.to_string(),
                    })?;
                match response.into_inner().partial_success {
                    Some(p) if p.rejected_data_points > 0 => Err(PushError {
                        endpoint: endpoint.clone(),
                        reason: format!(
                            "{} data points rejected: {}",
                            p.rejected_data_points, p.error_message
                        ),
                    }),
                    _ => Ok(()),
                }
            }
            MetricPush::Http {
                client,
                endpoint,
                headers,
            } => {
                let mut req = client
                    .post(endpoint)
                    .header("content-type", "application/x-protobuf")
                    .body(request.encode_to_vec());
                for (k, v) in headers {
                    req = req.header(k, v);
                }
                let fail = |reason: String| PushError {
                    endpoint: endpoint.clone(),
                    reason,
                };
                let response = req.send().await.map_err(|e| fail(e.to_string()))?;
                let status = response.status();
                if !status.is_success() {
                    let body = response.text().await.unwrap_or_default();
                    return Err(fail(format!("HTTP {status}: {}", body.trim())));
                }
                Ok(())
            }
        }
    }
}

fn channel(export: &Export) -> Result<Channel, SetupError> {
    let bad = |reason: String| SetupError::Endpoint {
        endpoint: export.endpoint.clone(),
        reason,
    };
    let mut endpoint = Channel::from_shared(export.endpoint.clone())
        .map_err(|e| bad(e.to_string()))?
        .timeout(export.timeout)
        .connect_timeout(export.timeout);
    if export.endpoint.starts_with("https://") {
        let mut tls = ClientTlsConfig::new().with_webpki_roots();
        if let Some(path) = &export.ca_file {
            tls = tls.ca_certificate(Certificate::from_pem(read_ca(path)?));
        }
        endpoint = endpoint.tls_config(tls).map_err(|e| bad(e.to_string()))?;
    }
    // Lazy: a collector that is down at start is retried at each export, never fatal.
    Ok(endpoint.connect_lazy())
}

fn metadata(export: &Export) -> Result<MetadataMap, SetupError> {
    let mut map = MetadataMap::new();
    for (k, v) in &export.headers {
        let bad = || SetupError::Endpoint {
            endpoint: export.endpoint.clone(),
            reason: format!("header {k:?} is not valid gRPC metadata"),
        };
        let key = MetadataKey::from_str(&k.to_ascii_lowercase()).map_err(|_| bad())?;
        let value = MetadataValue::from_str(v).map_err(|_| bad())?;
        map.insert(key, value);
    }
    Ok(map)
}

fn read_ca(path: &str) -> Result<Vec<u8>, SetupError> {
    std::fs::read(path).map_err(|e| SetupError::CaFile {
        path: path.into(),
        reason: e.to_string(),
    })
}

fn reqwest_client(export: &Export) -> Result<reqwest::Client, SetupError> {
    let mut builder = reqwest::Client::builder().timeout(export.timeout);
    if let Some(path) = &export.ca_file {
        let pem = read_ca(path)?;
        let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| SetupError::CaFile {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        builder = builder.add_root_certificate(cert);
    }
    builder.build().map_err(|e| SetupError::Endpoint {
        endpoint: export.endpoint.clone(),
        reason: e.to_string(),
    })
}

/// The span exporter's HTTP client: the workspace's reqwest (async, rustls), driven by the
/// telemetry runtime.
#[derive(Debug)]
struct ReqwestHttp(reqwest::Client);

#[async_trait]
impl HttpClient for ReqwestHttp {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (parts, body) = request.into_parts();
        let mut req = self
            .0
            .request(parts.method, parts.uri.to_string())
            .body(body);
        for (k, v) in &parts.headers {
            req = req.header(k, v);
        }
        let response = req.send().await?;
        let mut out = Response::builder().status(response.status());
        for (k, v) in response.headers() {
            out = out.header(k, v);
        }
        let bytes = response.bytes().await?;
        Ok(out.body(bytes)?)
    }
}
