//! Background jobs every replica runs on a timer, each under an advisory lock so that one replica
//! at a time does the work: [`sweep`], which ends ticket grants and break-glass sessions (the
//! revocation itself is a store operation, [`crate::stores::revocation`]), and [`alerts`], which
//! records break-glass alerts and delivers them to the webhook, and [`audit_outbox`], which
//! delivers the gateway's `rbac_grants_audit` rows to Console's audit writer (I-5; a row claimed
//! by one replica at a time). [`ticket_ended`] ends a ticket FreeScout reports closed or
//! resolved, for the sweep and FreeScout's webhook alike. None is a store: each asks the stores
//! (their statements are [`crate::stores::sweep`]'s and [`crate::stores::alerts`]'s), counts in
//! the metrics and logs what it did; their HTTP goes through [`crate::runtime::https_client`].
//! `serve` runs the timed jobs under supervision; `sweep --once` runs one pass of each.

pub mod alerts;
pub mod audit_outbox;
pub mod sweep;
pub mod ticket_ended;
