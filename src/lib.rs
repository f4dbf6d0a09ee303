//! # rbac-gateway
//!
//! An authorization sidecar in front of Console: every request is matched against the route
//! mapping (`routes.toml`) exactly as Werkzeug would route it, the session's roles are resolved
//! from Console's PostgreSQL (cached), and the request is forwarded or answered 403 with an
//! audit row. ARCHITECTURE.md is the map; in short, the folders are floors and imports point
//! to the same floor or below (`tests/architecture.rs` checks it), top floor first:
//!
//! - [`cli`]: one file per command (`serve` assembles everything below), and the access review
//!   the commands share.
//! - [`doors`]: how a request arrives and how its answer leaves: the reverse proxy, forward-auth
//!   for edge proxies, Console's reader API, the admin listener, FreeScout's webhook.
//! - [`gateway`]: the shared state every door carries the answers of (the policy's `Authority`
//!   over the stores) and the live reload of the mapping.
//! - [`dataplane`]: wire mechanics under the doors: listeners, the request-head sniffer, the
//!   upstream pool. Each replacement of a standard part says which crate, why, and which test
//!   pins it.
//! - [`jobs`]: the background jobs on a timer: the sweep of grants that end by themselves and
//!   the break-glass alerts.
//! - [`stores`]: Console's database and the gateway's own tables: identity and its cache, ticket
//!   grants and their revocation, the change feed, the audit writer. They fill the policy's types.
//! - [`policy`]: pure, sans-IO: what a request is ([`policy::target`], [`policy::cookie`]), the
//!   mapping, who asks ([`policy::principal`]), the one decision ([`policy::outcome::decide`])
//!   carried out once for every door ([`policy::answer::carry_out`]) and the row a denial leaves
//!   ([`policy::audit_event`]).
//! - [`runtime`]: the ground: flags, metrics, supervision, logging.
#![forbid(unsafe_code)]

pub mod cli;
pub mod dataplane;
pub mod doors;
pub mod gateway;
pub mod jobs;
pub mod policy;
pub mod runtime;
pub mod stores;
