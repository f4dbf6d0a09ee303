//! The doors: how a request reaches a decision and how its [`crate::policy::answer::Answer`]
//! leaves. Each builds [`crate::policy::outcome::Facts`], calls `decide` and `carry_out`, and
//! owns only its transport.

pub mod admin;
pub mod forward_auth;
pub mod freescout_webhook;
pub mod proxy;
pub mod rbac_api;
