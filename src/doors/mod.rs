//! The doors: every way a request reaches the gateway, each owning only its transport.
//!
//! Two doors ask the policy: [`proxy`], the reverse proxy of the data plane (the default mode),
//! and [`forward_auth`], `/authz` for an edge proxy's `auth_request` (`--authz-listen`). Each
//! builds [`crate::policy::outcome::Facts`], calls `decide` and `carry_out`, and only transports
//! the [`crate::policy::answer::Answer`]; both are [`crate::dataplane::workers::Door`]s, served on
//! every worker thread.
//!
//! The others answer from the gateway's state, never through `decide`: [`rbac_api`], Console's
//! reader API (`/api/rbac/...`, on the proxy's listener before any route is decided); and, each on
//! a listener of its own ([`crate::dataplane::listen::serve_side`]), [`admin`] (`/healthz`,
//! `/readyz`, `/metrics`) and [`freescout_webhook`] (`--freescout-webhook-listen`), which revokes
//! the grants of a resolved or closed ticket as the sweep does.

pub mod admin;
pub mod forward_auth;
pub mod freescout_webhook;
pub mod proxy;
pub mod rbac_api;
mod trace;
