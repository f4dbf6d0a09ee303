//! Console's database and the gateway's own tables, and the one folder that issues SQL (a door, a
//! job or a command calls a function of a store; `tests/architecture.rs` names a statement anywhere
//! else): the pool ([`db`], and `&Db` as sqlx's executor in `executor.rs`) and the migrations
//! ([`migrations`]), who a session is ([`identity`], [`ticket`]), the role catalogue
//! ([`catalogue`]), keeping the cache coherent ([`feed`]), the durable audit trail ([`audit`]), the
//! revocation of grants that end ([`revocation`]), what of it Console's audit writer is owed
//! ([`audit_outbox`], I-5) and the statements of the jobs that sweep them and raise alerts
//! ([`sweep`], [`alerts`]; the jobs themselves are in [`crate::jobs`]), mapping versions pushed to
//! the database ([`mapping_store`]) and run by the fleet ([`rollout`]), what the schema holds for
//! `check` ([`schema`]) and the privileges a role lacks ([`privileges`]); cold lookups behind a
//! pooler sent together ([`session_batch`]); each request-path lookup written once, bound or
//! written in ([`lookup`]); values written into the SQL text of one-round-trip statements
//! ([`sql_text`]).

pub mod alerts;
pub mod audit;
pub mod audit_outbox;
pub mod catalogue;
pub mod db;
mod executor;
pub mod feed;
pub mod identity;
pub mod invariants;
pub mod lookup;
pub mod mapping_store;
pub mod migrations;
pub mod pool;
pub mod privileges;
pub mod reach;
pub mod revocation;
pub mod rollout;
pub mod schema;
pub mod session_batch;
pub mod sql_text;
pub mod sweep;
pub mod ticket;
