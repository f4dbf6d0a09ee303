//! The OpenTelemetry environment variables, read once at start: raw text -> checked settings,
//! or a [`ConfigError`] that names the variable and how to fix it (`serve` exits 64).
//!
//! Off unless an OTLP endpoint is set (`OTEL_EXPORTER_OTLP_ENDPOINT`, or a signal's own
//! `OTEL_EXPORTER_OTLP_{TRACES,METRICS}_ENDPOINT`) and `OTEL_SDK_DISABLED` is not `true`: unlike
//! an SDK's default of `localhost:4318`, a gateway with nothing set exports nothing and builds no
//! span. The rest follows the specification's "Environment Variable Specification" and the
//! OTLP exporter's: a signal's own variable wins over the general one, `OTEL_*_EXPORTER=none`
//! turns one signal off, headers are `k=v` pairs with percent-encoded values.

use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::Uri;

/// Where one signal goes.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The whole URL the export is POSTed to (`.../v1/traces`, `.../v1/metrics`).
    pub url: Uri,
    /// `OTEL_EXPORTER_OTLP_HEADERS` (or the signal's own): authentication for the collector.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// `OTEL_EXPORTER_OTLP_TIMEOUT` (or the signal's own): one export, at most.
    pub timeout: Duration,
}

/// How root spans are sampled (`OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    AlwaysOn,
    AlwaysOff,
    Ratio(f64),
    ParentBasedAlwaysOn,
    ParentBasedAlwaysOff,
    ParentBasedRatio(f64),
}

/// The checked settings; [`Settings::traces`] and [`Settings::metrics`] None: that signal is off.
#[derive(Debug, Clone)]
pub struct Settings {
    pub traces: Option<Endpoint>,
    pub metrics: Option<Endpoint>,
    pub sampling: Sampling,
    /// `OTEL_METRIC_EXPORT_INTERVAL` (default 60 s).
    pub metric_interval: Duration,
    /// `OTEL_BSP_MAX_QUEUE_SIZE` (default 2048): spans waiting for export, at most; one more is
    /// dropped and counted.
    pub max_queue: usize,
    /// `OTEL_BSP_SCHEDULE_DELAY` (default 5 s).
    pub schedule_delay: Duration,
    /// `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` (default 512).
    pub max_batch: usize,
    /// `service.name` when neither `OTEL_SERVICE_NAME` nor `OTEL_RESOURCE_ATTRIBUTES` names one.
    pub default_service_name: bool,
    /// `OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT`, else `OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT`, else
    /// [`DEFAULT_VALUE_LENGTH_LIMIT`]: the characters a text attribute keeps.
    pub attribute_value_limit: usize,
}

/// The characters a text attribute keeps when neither `OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT`
/// nor `OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT` is set (the specification's default is no limit: a
/// client's 30,000-character path would then be queued whole in every span).
pub const DEFAULT_VALUE_LENGTH_LIMIT: usize = 4096;

impl Settings {
    pub fn is_off(&self) -> bool {
        self.traces.is_none() && self.metrics.is_none()
    }
}

/// A variable the gateway cannot honour: said at start, never guessed around.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{var}={value:?}: only http/protobuf is supported (OTLP over HTTP with protobuf bodies); unset it or set http/protobuf")]
    Protocol { var: &'static str, value: String },
    #[error("{var}={value:?}: only otlp or none is supported")]
    Exporter { var: &'static str, value: String },
    #[error("{var}={value:?}: not an http:// or https:// URL")]
    Endpoint { var: &'static str, value: String },
    #[error("{var}: {why} (a comma-separated list of key=value, values percent-encoded)")]
    Headers { var: &'static str, why: String },
    #[error("OTEL_TRACES_SAMPLER={0:?}: one of always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio")]
    Sampler(String),
    #[error("OTEL_TRACES_SAMPLER_ARG={0:?}: a ratio between 0 and 1")]
    SamplerArg(String),
    #[error("{var}={value:?}: a whole number{what}")]
    Number {
        var: &'static str,
        value: String,
        what: &'static str,
    },
}

/// Reads the settings from `env` (the process environment in `serve`; a table in tests).
/// `Ok(None)`: telemetry is off.
pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Option<Settings>, ConfigError> {
    let env = Env(env);
    if env
        .get("OTEL_SDK_DISABLED")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    {
        return Ok(None);
    }
    check_protocols(&env)?;
    let traces_on = env.exporter_on(TRACES.exporter)?;
    let metrics_on = env.exporter_on(METRICS.exporter)?;
    let general = General::read(&env)?;
    let traces = if traces_on {
        endpoint(&env, &general, &TRACES)?
    } else {
        None
    };
    let metrics = if metrics_on {
        endpoint(&env, &general, &METRICS)?
    } else {
        None
    };
    if traces.is_none() && metrics.is_none() {
        return Ok(None);
    }
    let sampling = sampling(&env)?;
    let max_queue = env.count("OTEL_BSP_MAX_QUEUE_SIZE", 2048)?;
    let attribute_value_limit = attribute_value_limit(&env)?;
    let resource_names_service = env.get("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|a| {
        a.split(',')
            .any(|kv| kv.split('=').next().map(str::trim) == Some("service.name"))
    });
    Ok(Some(Settings {
        traces,
        metrics,
        sampling,
        metric_interval: env
            .millis("OTEL_METRIC_EXPORT_INTERVAL", 60_000)?
            .max(Duration::from_millis(1)),
        max_queue,
        schedule_delay: env
            .millis("OTEL_BSP_SCHEDULE_DELAY", 5_000)?
            .max(Duration::from_millis(1)),
        max_batch: env
            .count("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)?
            .min(max_queue),
        default_service_name: env.get("OTEL_SERVICE_NAME").is_none() && !resource_names_service,
        attribute_value_limit,
    }))
}

/// The environment as the specification reads it, with the typed reads the settings share.
struct Env<'a>(&'a dyn Fn(&str) -> Option<String>);

impl Env<'_> {
    /// The variable's trimmed value; an empty variable is an unset one (as the specification
    /// says).
    fn get(&self, k: &str) -> Option<String> {
        (self.0)(k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    /// `OTEL_*_EXPORTER`: unset or `otlp` is on, `none` off, anything else refused.
    fn exporter_on(&self, var: &'static str) -> Result<bool, ConfigError> {
        match self.get(var) {
            None => Ok(true),
            Some(v) if v == "otlp" => Ok(true),
            Some(v) if v == "none" => Ok(false),
            Some(value) => Err(ConfigError::Exporter { var, value }),
        }
    }

    /// A duration in whole milliseconds, `default` when unset.
    fn millis(&self, var: &'static str, default: u64) -> Result<Duration, ConfigError> {
        match self.get(var) {
            None => Ok(Duration::from_millis(default)),
            Some(value) => value
                .parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| ConfigError::Number {
                    var,
                    value,
                    what: " of milliseconds",
                }),
        }
    }

    /// A count above zero, `default` when unset.
    fn count(&self, var: &'static str, default: usize) -> Result<usize, ConfigError> {
        match self.get(var) {
            None => Ok(default),
            Some(value) => match value.parse::<usize>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(ConfigError::Number {
                    var,
                    value,
                    what: " > 0",
                }),
            },
        }
    }

    /// A number of characters, None when unset.
    fn value_limit(&self, var: &'static str) -> Result<Option<usize>, ConfigError> {
        self.get(var)
            .map(|value| {
                value.parse::<usize>().map_err(|_| ConfigError::Number {
                    var,
                    value,
                    what: " of characters",
                })
            })
            .transpose()
    }
}

/// Refuses any protocol but `http/protobuf`, the general variable first, then each signal's.
fn check_protocols(env: &Env) -> Result<(), ConfigError> {
    for var in [
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    ] {
        if let Some(value) = env.get(var) {
            if value != "http/protobuf" {
                return Err(ConfigError::Protocol { var, value });
            }
        }
    }
    Ok(())
}

/// One signal's own variables, and the path it takes under the general endpoint.
struct Signal {
    exporter: &'static str,
    endpoint: &'static str,
    headers: &'static str,
    timeout: &'static str,
    path: &'static str,
}

const TRACES: Signal = Signal {
    exporter: "OTEL_TRACES_EXPORTER",
    endpoint: "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    headers: "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    timeout: "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    path: "/v1/traces",
};

const METRICS: Signal = Signal {
    exporter: "OTEL_METRICS_EXPORTER",
    endpoint: "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    headers: "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
    timeout: "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
    path: "/v1/metrics",
};

/// The general `OTEL_EXPORTER_OTLP_*` variables, what a signal without its own falls back to.
struct General {
    timeout: Duration,
    headers: Vec<(HeaderName, HeaderValue)>,
    endpoint: Option<String>,
}

impl General {
    /// The timeout, the headers and the endpoint, checked in that order.
    fn read(env: &Env) -> Result<General, ConfigError> {
        let timeout = env.millis("OTEL_EXPORTER_OTLP_TIMEOUT", 10_000)?;
        let headers = match env.get("OTEL_EXPORTER_OTLP_HEADERS") {
            None => Vec::new(),
            Some(h) => parse_headers("OTEL_EXPORTER_OTLP_HEADERS", &h)?,
        };
        Ok(General {
            timeout,
            headers,
            endpoint: env.get("OTEL_EXPORTER_OTLP_ENDPOINT"),
        })
    }
}

/// Where a signal that is on goes, None when no endpoint names it: its own URL used as it is,
/// else the general one with the signal's path; its own headers and timeout over the general.
fn endpoint(
    env: &Env,
    general: &General,
    signal: &Signal,
) -> Result<Option<Endpoint>, ConfigError> {
    let (var, url) = match (env.get(signal.endpoint), &general.endpoint) {
        (Some(u), _) => (signal.endpoint, u),
        (None, Some(g)) => (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("{}{}", g.trim_end_matches('/'), signal.path),
        ),
        (None, None) => return Ok(None),
    };
    let parsed: Uri = url.parse().map_err(|_| ConfigError::Endpoint {
        var,
        value: url.clone(),
    })?;
    if !matches!(parsed.scheme_str(), Some("http" | "https")) || parsed.host().is_none() {
        return Err(ConfigError::Endpoint { var, value: url });
    }
    let headers = match env.get(signal.headers) {
        Some(h) => parse_headers(signal.headers, &h)?,
        None => general.headers.clone(),
    };
    let timeout = match env.get(signal.timeout) {
        Some(_) => env.millis(signal.timeout, 10_000)?,
        None => general.timeout,
    };
    Ok(Some(Endpoint {
        url: parsed,
        headers,
        timeout,
    }))
}

/// `OTEL_TRACES_SAMPLER`, parent-based always-on when unset; its ratio read only by the
/// samplers that take one.
fn sampling(env: &Env) -> Result<Sampling, ConfigError> {
    let ratio = || -> Result<f64, ConfigError> {
        match env.get("OTEL_TRACES_SAMPLER_ARG") {
            None => Ok(1.0),
            Some(a) => match a.parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                _ => Err(ConfigError::SamplerArg(a)),
            },
        }
    };
    Ok(match env.get("OTEL_TRACES_SAMPLER").as_deref() {
        None | Some("parentbased_always_on") => Sampling::ParentBasedAlwaysOn,
        Some("always_on") => Sampling::AlwaysOn,
        Some("always_off") => Sampling::AlwaysOff,
        Some("traceidratio") => Sampling::Ratio(ratio()?),
        Some("parentbased_always_off") => Sampling::ParentBasedAlwaysOff,
        Some("parentbased_traceidratio") => Sampling::ParentBasedRatio(ratio()?),
        Some(other) => return Err(ConfigError::Sampler(other.to_string())),
    })
}

/// The span's own limit over the general one, else the default; a bad value in either is
/// refused, the general one checked first.
fn attribute_value_limit(env: &Env) -> Result<usize, ConfigError> {
    let general_limit = env.value_limit("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT")?;
    Ok(env
        .value_limit("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT")?
        .or(general_limit)
        .unwrap_or(DEFAULT_VALUE_LENGTH_LIMIT))
}

/// `k1=v1,k2=v2`, each value percent-decoded (the W3C Baggage form the specification names).
fn parse_headers(
    var: &'static str,
    text: &str,
) -> Result<Vec<(HeaderName, HeaderValue)>, ConfigError> {
    let mut out = Vec::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(|| ConfigError::Headers {
            var,
            why: "an entry without '='".into(),
        })?;
        let name =
            HeaderName::from_bytes(k.trim().as_bytes()).map_err(|_| ConfigError::Headers {
                var,
                why: "a key that is not a header name".into(),
            })?;
        let decoded = percent_encoding::percent_decode_str(v.trim()).collect::<Vec<u8>>();
        // The value is a secret (an API key): never in the message.
        let mut value = HeaderValue::from_bytes(&decoded).map_err(|_| ConfigError::Headers {
            var,
            why: format!("the value of {name} is not a header value"),
        })?;
        value.set_sensitive(true);
        out.push((name, value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(vars: &[(&str, &str)]) -> Result<Option<Settings>, ConfigError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        from_env(&move |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
    }

    #[test]
    fn nothing_set_is_off() {
        assert!(read(&[]).unwrap().is_none());
        assert!(read(&[("OTEL_SERVICE_NAME", "x")]).unwrap().is_none());
        assert!(read(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_SDK_DISABLED", "true")
        ])
        .unwrap()
        .is_none());
    }

    #[test]
    fn the_general_endpoint_gets_each_signals_path_and_a_signals_own_is_used_as_is() {
        let s = read(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c.example:4318/"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://m:9/custom"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=a%20b,other=1"),
        ])
        .unwrap()
        .unwrap();
        let t = s.traces.unwrap();
        assert_eq!(t.url.to_string(), "https://c.example:4318/v1/traces");
        assert_eq!(t.headers[0].1.as_bytes(), b"a b");
        assert_eq!(s.metrics.unwrap().url.to_string(), "http://m:9/custom");
        assert_eq!(s.sampling, Sampling::ParentBasedAlwaysOn);
        assert!(s.default_service_name);
    }

    #[test]
    fn one_signal_alone() {
        let s = read(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_METRICS_EXPORTER", "none"),
            ("OTEL_RESOURCE_ATTRIBUTES", "service.name=edge,a=b"),
        ])
        .unwrap()
        .unwrap();
        assert!(s.traces.is_some() && s.metrics.is_none());
        assert!(!s.default_service_name);
    }

    #[test]
    fn what_cannot_be_honoured_is_refused() {
        let e = |vars: &[(&str, &str)]| {
            let mut all = vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")];
            all.extend_from_slice(vars);
            read(&all).unwrap_err().to_string()
        };
        assert!(e(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).contains("http/protobuf"));
        assert!(e(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]).contains("http/protobuf"));
        assert!(e(&[("OTEL_TRACES_SAMPLER", "sometimes")]).contains("OTEL_TRACES_SAMPLER"));
        assert!(e(&[
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "2")
        ])
        .contains("OTEL_TRACES_SAMPLER_ARG"));
        assert!(e(&[("OTEL_METRIC_EXPORT_INTERVAL", "soon")]).contains("milliseconds"));
        assert!(e(&[("OTEL_TRACES_EXPORTER", "zipkin")]).contains("otlp or none"));
        let secret = e(&[("OTEL_EXPORTER_OTLP_HEADERS", "k=s3cret\u{1}")]);
        assert!(!secret.contains("s3cret"), "{secret}");
        assert!(read(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "c:4318")]).is_err());
    }

    #[test]
    fn the_attribute_value_limit_the_spans_own_first() {
        let limit = |vars: &[(&str, &str)]| {
            let mut all = vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")];
            all.extend_from_slice(vars);
            read(&all).map(|s| s.unwrap().attribute_value_limit)
        };
        assert_eq!(limit(&[]).unwrap(), DEFAULT_VALUE_LENGTH_LIMIT);
        assert_eq!(
            limit(&[("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "100")]).unwrap(),
            100
        );
        assert_eq!(
            limit(&[
                ("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "100"),
                ("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", "7")
            ])
            .unwrap(),
            7
        );
        for (k, v) in [
            ("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", "-1"),
            ("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "4k"),
        ] {
            let e = limit(&[(k, v)]).unwrap_err().to_string();
            assert!(e.contains(k) && e.contains("characters"), "{e}");
        }
        // A bad general limit is refused even where the span's own one is set.
        assert!(limit(&[
            ("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "lots"),
            ("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", "7")
        ])
        .is_err());
    }

    #[test]
    fn the_sampler_and_its_ratio() {
        let s = read(&[
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://c:4318/v1/traces",
            ),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(s.sampling, Sampling::ParentBasedRatio(0.25));
        assert!(s.metrics.is_none());
    }
}
