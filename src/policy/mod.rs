//! The policy, pure and sans-IO: what a request is, what the mapping says about it, what the
//! gateway decides, and what that means for every door. The vocabulary of the decision lives
//! here too: who is asking ([`principal::Principal`]) and the row a denial leaves
//! ([`audit_event::AuditEvent`]); the stores fill them. Nothing here imports a store, a door or
//! the gateway's state, and nothing opens a socket or a file but [`mapping`]'s loader; the I/O a
//! decision needs comes through [`outcome::Authority`].

pub mod answer;
pub mod audit_event;
pub mod cookie;
pub mod cutover;
pub mod forwarded;
pub mod headers;
pub mod mapping;
pub mod outcome;
pub mod principal;
pub mod reader;
pub mod request_id;
pub mod target;
pub mod verdict;
