//! The process around the policy: flags ([`config`]), the shared state ([`state`]), metrics,
//! background tasks under supervision, live reload of the mapping, and logging.

pub mod config;
pub mod log_sink;
pub mod logfmt;
pub mod metrics;
pub mod reload;
pub mod state;
pub mod supervise;
