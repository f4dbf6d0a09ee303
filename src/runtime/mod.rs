//! The ground: the process every other folder stands on. Flags ([`config`]), metrics
//! ([`metrics`]), background tasks under supervision ([`supervise`]), the process's signals
//! ([`signals`]) and logging ([`logfmt`], [`log_sink`]). Nothing here knows the policy, a store
//! or a door; the gateway's shared state and the mapping reload are in `gateway/`.

pub mod config;
pub mod log_sink;
pub mod logfmt;
pub mod metrics;
pub mod signals;
pub mod supervise;
