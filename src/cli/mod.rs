//! The commands, and the dispatch to them: one file each (`serve`, `test` and `cockpit` a folder
//! each), their flags in [`args`]. What the commands share is the `toolbox` (exits, a database
//! pool, a mapping read, the report's `say!`); the access review several of them ask is
//! [`access`]. Configuration is loaded and checked before any port is bound; an invalid mapping or
//! flag exits 64.

pub mod access;
pub mod args;
mod check;
mod cockpit;
mod diff;
mod drift;
mod explain;
mod invariants;
mod mapping;
mod matrix;
mod migrate;
mod rollout;
mod serve;
mod sweep;
mod test;
pub(crate) mod toolbox;

pub use check::{check, check_app_routes};
pub use cockpit::{cockpit, HEADER_READ_TIMEOUT as COCKPIT_HEADER_READ_TIMEOUT};
pub use diff::diff;
pub use drift::drift;
pub use explain::explain;
pub use mapping::mapping;
pub use matrix::matrix;
pub use migrate::migrate;
pub use rollout::rollout;
pub use serve::serve;
pub use sweep::sweep;
pub use test::test;
/// `check` calls it by this path; everything else names the `toolbox`.
pub use toolbox::init_logging;

/// Exit code for bad usage or an unreadable/invalid file (sysexits EX_USAGE).
pub const EXIT_USAGE: i32 = 64;
/// Exit code when `check` found problems.
pub const EXIT_PROBLEMS: i32 = 1;

/// A command's failure, with the exit code it maps to.
#[derive(Debug)]
pub struct Exit {
    pub code: i32,
    pub error: anyhow::Error,
}
