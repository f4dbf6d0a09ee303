//! # rbac-gateway
//!
//! An authorization sidecar in front of Console: every request is matched against the route
//! mapping (`routes.toml`) exactly as Werkzeug would route it, the session's roles are resolved
//! from Console's PostgreSQL (cached), and the request is forwarded or answered 403 with an
//! audit row.
//!
//! ## Layout, in the order a request flows
//! - [`config`]: flags and environment.
//! - [`target`]: the request line and headers, refused (400) unless their routing is certain.
//! - [`cookie`]: the session cookie read exactly as Console (gunicorn + Werkzeug) reads it, or refused.
//! - [`mapping`]: `routes.toml`: parse, validate, compile, match (Werkzeug semantics).
//! - [`identity`]: session cookie -> admin -> effective roles and permissions; the cache.
//! - [`feed`]: the change feed that evicts cache entries when grants change.
//! - [`ticket`]: ticket-scoped grants, checked live (never cached).
//! - [`decision`]: pure: rule + principal -> allow / redirect / deny, with the reason.
//! - [`outcome`]: the per-request policy as one function: facts in, a typed outcome out.
//! - [`access`]: the access review (`matrix`, `diff`): principals in memory, each cell [`outcome::decide`]'s answer.
//! - [`proxy`]: the hyper data plane: checks, [`outcome::decide`], the answer.
//! - [`reader`]: Console's reader API (`/api/rbac/me`, `/api/rbac/permissions/check`).
//! - [`authz`]: forward-auth for edge proxies (`/authz` on `--authz-listen`), the same decision.
//! - [`sniff`]: request heads as received, beside hyper's parse.
//! - [`upstream`]: the per-worker pool of connections to Console.
//! - [`drain`]: graceful shutdown of a listener's connections.
//! - [`state`]: the shared state; the gateway's [`outcome::Authority`].
//! - [`audit`]: the durable writer of `access_audit_events`.
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics`.
//! - [`metrics`]: the Prometheus registry.
//! - [`logfmt`]: the JSON log line.
//! - [`db`]: pool and embedded migrations.
//! - [`fasthash`]: the unkeyed hasher of the two per-request maps no attacker fills.
//! - [`reload`]: live policy: the mapping file watched and swapped in whole.
//! - [`rollout`]: the cutover's stages assessed: the mapping versions the fleet ran, soak, drift, verdicts.
//! - [`supervise`]: background tasks under supervision (`/readyz` names a dead one).
//! - [`lifecycle`]: grants that end by themselves (sweep) and operator alerts.
//! - [`cli`]: one file per command.
#![forbid(unsafe_code)]

pub mod access;
pub mod admin;
pub mod audit;
pub mod authz;
pub mod cli;
pub mod config;
pub mod cookie;
pub mod db;
pub mod deadline;
pub mod decision;
pub mod drain;
pub mod fasthash;
pub mod feed;
pub mod identity;
pub mod lifecycle;
pub mod logfmt;
pub mod logout;
pub mod mapping;
pub mod metrics;
pub mod outcome;
pub mod proxy;
pub mod reader;
pub mod reload;
pub mod rollout;
pub mod sniff;
pub mod state;
pub mod supervise;
pub mod target;
pub mod ticket;
pub mod upstream;
