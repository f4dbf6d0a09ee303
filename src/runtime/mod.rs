//! The ground: the process every other folder stands on. The seeds' settings ([`posture`]; the
//! flags that fill them are `cli/args/`), metrics ([`metrics`]), background tasks under
//! supervision ([`supervise`]), the process's signals ([`signals`]), logging ([`logfmt`],
//! [`log_sink`]), the data plane's passes ([`passes`]), OpenTelemetry's export ([`telemetry`]),
//! the outbound HTTP ([`https_client`]), FreeScout's client ([`freescout`]) and the byte scans'
//! tests of eight bytes at a time ([`words`]). Nothing here knows the policy, a store or a door;
//! the gateway's shared state and the mapping reload are in `gateway/`.

pub mod freescout;
pub mod https_client;
pub mod log_sink;
pub mod logfmt;
pub mod metrics;
pub mod passes;
pub mod posture;
pub mod signals;
pub mod supervise;
pub mod telemetry;
pub mod words;
