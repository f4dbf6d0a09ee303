//! The policy, pure and sans-IO: what a request is, what the mapping says about it, what the
//! gateway decides, and what that means for every door. Nothing here opens a socket or a file
//! but [`mapping`]'s loader; the I/O a decision needs comes through [`outcome::Authority`].

pub mod access;
pub mod answer;
pub mod cookie;
pub mod mapping;
pub mod outcome;
pub mod target;
pub mod verdict;
