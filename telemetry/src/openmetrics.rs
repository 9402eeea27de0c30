//! OpenMetrics text (what `/metrics` serves) → OTLP metrics (pure): the OTLP export carries
//! exactly the instruments Prometheus scrapes, from the same registry.
//!
//! counter → monotonic cumulative Sum (named without `_total`); gauge, info and unknown →
//! Gauge; histogram → cumulative Histogram (Prometheus' cumulative `le` buckets become OTLP's
//! per-bucket counts; `+Inf` is the implicit last bucket).

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::{
    common::v1::{AnyValue, KeyValue, any_value},
    metrics::v1::{
        AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, Sum,
        metric::Data, number_data_point,
    },
};

/// A metric family as declared by `# TYPE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Label name → value pairs, in text order.
type Labels = Vec<(String, String)>;

#[derive(Debug, Default)]
struct Family {
    kind: Option<Kind>,
    help: String,
    unit: String,
    /// Counter/gauge samples: label set → value.
    values: Vec<(Vec<(String, String)>, f64)>,
    /// Histogram series: label set (without `le`) → parts.
    histograms: BTreeMap<Vec<(String, String)>, HistogramParts>,
}

#[derive(Debug, Default)]
struct HistogramParts {
    /// (upper bound, cumulative count), in text order.
    buckets: Vec<(f64, u64)>,
    sum: Option<f64>,
    count: Option<u64>,
}

/// Times stamped on every data point.
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    /// Start of the cumulative series (the process start), Unix ns.
    pub start_unix_nano: u64,
    /// Now, Unix ns.
    pub now_unix_nano: u64,
}

/// Converts OpenMetrics/Prometheus text into OTLP metrics. Lines it cannot read are skipped
/// and counted in the second return value (the text comes from our own registry, so a
/// non-zero count is a bug that a unit test would catch).
pub fn to_otlp(text: &str, stamp: Stamp) -> (Vec<Metric>, usize) {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut unreadable = 0;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix('#') {
            let mut parts = rest.trim_start().splitn(3, ' ');
            let (word, name, value) = (parts.next(), parts.next(), parts.next().unwrap_or(""));
            let (Some(word), Some(name)) = (word, name) else {
                continue; // `# EOF` and comments
            };
            let family = families.entry(name.to_string()).or_default();
            match word {
                "TYPE" => {
                    family.kind = Some(match value {
                        "counter" => Kind::Counter,
                        "histogram" => Kind::Histogram,
                        _ => Kind::Gauge,
                    });
                }
                "HELP" => family.help = value.to_string(),
                "UNIT" => family.unit = value.to_string(),
                _ => {}
            }
            continue;
        }
        let Some((name, labels, value)) = sample(line) else {
            unreadable += 1;
            continue;
        };
        if !add_sample(&mut families, &name, labels, value) {
            unreadable += 1;
        }
    }
    let metrics = families
        .into_iter()
        .filter_map(|(name, f)| metric(name, f, stamp))
        .collect();
    (metrics, unreadable)
}

/// Files one sample under its family (by exact name, or by stripping a counter's `_total` or
/// a histogram's `_bucket`/`_sum`/`_count`). False when no family declares it.
fn add_sample(
    families: &mut BTreeMap<String, Family>,
    name: &str,
    mut labels: Vec<(String, String)>,
    value: f64,
) -> bool {
    let suffixes = ["_total", "_bucket", "_sum", "_count", ""];
    for suffix in suffixes {
        let Some(base) = name.strip_suffix(suffix) else {
            continue;
        };
        let Some(family) = families.get_mut(base) else {
            continue;
        };
        match (family.kind, suffix) {
            (Some(Kind::Counter), "_total" | "") | (Some(Kind::Gauge) | None, "") => {
                family.values.push((labels, value));
            }
            (Some(Kind::Histogram), "_bucket") => {
                let Some(i) = labels.iter().position(|(k, _)| k == "le") else {
                    return false;
                };
                let (_, le) = labels.remove(i);
                let bound = match le.as_str() {
                    "+Inf" => f64::INFINITY,
                    other => match other.parse() {
                        Ok(b) => b,
                        Err(_) => return false,
                    },
                };
                let parts = family.histograms.entry(labels).or_default();
                parts.buckets.push((bound, count(value)));
            }
            (Some(Kind::Histogram), "_sum") => {
                family.histograms.entry(labels).or_default().sum = Some(value);
            }
            (Some(Kind::Histogram), "_count") => {
                family.histograms.entry(labels).or_default().count = Some(count(value));
            }
            _ => continue,
        }
        return true;
    }
    false
}

#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn count(value: f64) -> u64 {
    value.max(0.0) as u64
}

fn metric(name: String, f: Family, stamp: Stamp) -> Option<Metric> {
    let number = |labels: Vec<(String, String)>, value: f64| NumberDataPoint {
        attributes: attributes(labels),
        start_time_unix_nano: stamp.start_unix_nano,
        time_unix_nano: stamp.now_unix_nano,
        value: Some(number_data_point::Value::AsDouble(value)),
        ..Default::default()
    };
    let data = match f.kind {
        Some(Kind::Counter) => Data::Sum(Sum {
            data_points: f.values.into_iter().map(|(l, v)| number(l, v)).collect(),
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: true,
        }),
        Some(Kind::Histogram) => Data::Histogram(Histogram {
            data_points: f
                .histograms
                .into_iter()
                .map(|(labels, parts)| histogram_point(labels, parts, stamp))
                .collect(),
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
        }),
        Some(Kind::Gauge) | None => {
            let mut points: Vec<NumberDataPoint> = Vec::new();
            for (l, v) in f.values {
                points.push(number(l, v));
            }
            Data::Gauge(Gauge {
                data_points: points,
            })
        }
    };
    let empty = match &data {
        Data::Sum(s) => s.data_points.is_empty(),
        Data::Gauge(g) => g.data_points.is_empty(),
        Data::Histogram(h) => h.data_points.is_empty(),
        _ => false,
    };
    (!empty).then(|| Metric {
        name,
        description: f.help,
        unit: f.unit,
        data: Some(data),
        ..Default::default()
    })
}

fn histogram_point(
    labels: Vec<(String, String)>,
    mut parts: HistogramParts,
    stamp: Stamp,
) -> HistogramDataPoint {
    parts.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut explicit_bounds = Vec::new();
    let mut bucket_counts = Vec::new();
    let mut previous = 0u64;
    for (bound, cumulative) in &parts.buckets {
        if bound.is_finite() {
            explicit_bounds.push(*bound);
        }
        bucket_counts.push(cumulative.saturating_sub(previous));
        previous = *cumulative;
    }
    let total = parts.count.unwrap_or(previous);
    if parts.buckets.last().is_none_or(|(b, _)| b.is_finite()) {
        // No +Inf bucket in the text: OTLP still needs the overflow bucket.
        bucket_counts.push(total.saturating_sub(previous));
    }
    HistogramDataPoint {
        attributes: attributes(labels),
        start_time_unix_nano: stamp.start_unix_nano,
        time_unix_nano: stamp.now_unix_nano,
        count: total,
        sum: parts.sum,
        bucket_counts,
        explicit_bounds,
        ..Default::default()
    }
}

fn attributes(labels: Vec<(String, String)>) -> Vec<KeyValue> {
    labels
        .into_iter()
        .map(|(key, value)| KeyValue {
            key,
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value)),
            }),
            ..Default::default()
        })
        .collect()
}

/// `name{a="x",b="y"} value [timestamp]` → parts; `None` if malformed.
fn sample(line: &str) -> Option<(String, Labels, f64)> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let (parsed, remaining) = label_set(after)?;
        labels = parsed;
        rest = remaining;
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().ok()?,
    };
    Some((name, labels, value))
}

/// Reads `a="x",b="y"}` (after the opening brace) → labels and what follows the brace.
fn label_set(mut s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start_matches([',', ' ']);
        if let Some(after) = s.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim().to_string();
        let mut chars = s[eq + 1..].char_indices();
        if chars.next()?.1 != '"' {
            return None;
        }
        let mut value = String::new();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => {
                    end = Some(eq + 1 + i + 1);
                    break;
                }
                c => value.push(c),
            }
        }
        labels.push((key, value));
        s = &s[end?..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAMP: Stamp = Stamp {
        start_unix_nano: 1,
        now_unix_nano: 2,
    };

    fn by_name(metrics: &[Metric], name: &str) -> Data {
        metrics
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("{name} missing"))
            .data
            .clone()
            .unwrap()
    }

    fn string_attr(kv: &KeyValue) -> (&str, &str) {
        match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(any_value::Value::StringValue(s)) => (kv.key.as_str(), s.as_str()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn counters_gauges_and_histograms() {
        let text = r#"# HELP tidewater_records_in Records read.
# TYPE tidewater_records_in counter
tidewater_records_in_total 3
# HELP tidewater_lag Lag.
# TYPE tidewater_lag gauge
tidewater_lag{topic="a",partition="0"} 5
tidewater_lag{topic="b \"q\"",partition="1"} 7
# HELP tidewater_commit_seconds Commit latency.
# TYPE tidewater_commit_seconds histogram
# UNIT tidewater_commit_seconds seconds
tidewater_commit_seconds_sum 0.75
tidewater_commit_seconds_count 3
tidewater_commit_seconds_bucket{le="0.1"} 1
tidewater_commit_seconds_bucket{le="0.5"} 2
tidewater_commit_seconds_bucket{le="+Inf"} 3
# EOF
"#;
        let (metrics, unreadable) = to_otlp(text, STAMP);
        assert_eq!(unreadable, 0);
        assert_eq!(metrics.len(), 3);
        let Data::Sum(sum) = by_name(&metrics, "tidewater_records_in") else {
            panic!("not a sum")
        };
        assert!(sum.is_monotonic);
        assert_eq!(
            sum.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        assert_eq!(
            sum.data_points[0].value,
            Some(number_data_point::Value::AsDouble(3.0))
        );
        assert_eq!(sum.data_points[0].start_time_unix_nano, 1);
        let Data::Gauge(gauge) = by_name(&metrics, "tidewater_lag") else {
            panic!("not a gauge")
        };
        assert_eq!(gauge.data_points.len(), 2);
        let attrs: Vec<_> = gauge.data_points[1]
            .attributes
            .iter()
            .map(string_attr)
            .collect();
        assert_eq!(attrs, vec![("topic", "b \"q\""), ("partition", "1")]);
        let Data::Histogram(h) = by_name(&metrics, "tidewater_commit_seconds") else {
            panic!("not a histogram")
        };
        let p = &h.data_points[0];
        assert_eq!(p.explicit_bounds, vec![0.1, 0.5]);
        assert_eq!(p.bucket_counts, vec![1, 1, 1]);
        assert_eq!((p.count, p.sum), (3, Some(0.75)));
        let unit = &metrics
            .iter()
            .find(|m| m.name == "tidewater_commit_seconds")
            .unwrap()
            .unit;
        assert_eq!(unit, "seconds");
    }

    #[test]
    fn histograms_with_labels_are_one_point_per_label_set() {
        let text = "# TYPE h histogram\n\
            h_bucket{table=\"a\",le=\"1.0\"} 2\nh_bucket{table=\"a\",le=\"+Inf\"} 2\n\
            h_sum{table=\"a\"} 1.5\nh_count{table=\"a\"} 2\n\
            h_bucket{table=\"b\",le=\"1.0\"} 0\nh_bucket{table=\"b\",le=\"+Inf\"} 4\n\
            h_sum{table=\"b\"} 9\nh_count{table=\"b\"} 4\n";
        let (metrics, unreadable) = to_otlp(text, STAMP);
        assert_eq!(unreadable, 0);
        let Data::Histogram(h) = by_name(&metrics, "h") else {
            panic!()
        };
        assert_eq!(h.data_points.len(), 2);
        assert_eq!(h.data_points[1].bucket_counts, vec![0, 4]);
        assert_eq!(h.data_points[1].count, 4);
    }

    #[test]
    fn unreadable_lines_are_counted_not_guessed() {
        let text = "# TYPE c counter\nc_total{a=\"x} 1\nundeclared 4\nc_total 2\n";
        let (metrics, unreadable) = to_otlp(text, STAMP);
        assert_eq!(unreadable, 2);
        let Data::Sum(s) = by_name(&metrics, "c") else {
            panic!()
        };
        assert_eq!(s.data_points.len(), 1);
    }

    #[test]
    fn the_runtime_registry_format_round_trips() {
        // prometheus-client's own encoder output for a counter family with labels.
        let text = "# HELP tidewater_dead_letters Dead letters.\n\
            # TYPE tidewater_dead_letters counter\n\
            tidewater_dead_letters_total{reason=\"wrong-type\"} 1\n\
            tidewater_dead_letters_total{reason=\"not-json\"} 2\n# EOF\n";
        let (metrics, unreadable) = to_otlp(text, STAMP);
        assert_eq!(unreadable, 0);
        let Data::Sum(s) = by_name(&metrics, "tidewater_dead_letters") else {
            panic!()
        };
        assert_eq!(s.data_points.len(), 2);
        assert_eq!(
            string_attr(&s.data_points[1].attributes[0]),
            ("reason", "not-json")
        );
    }
}
