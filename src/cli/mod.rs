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
/// Exit code of `test` when the database it was given could not be read: nothing was decided,
/// which CI must not take for a case that failed (sysexits EX_UNAVAILABLE).
pub const EXIT_UNAVAILABLE: i32 = 69;

/// A command's failure, with the exit code it maps to.
#[derive(Debug)]
pub struct Exit {
    pub code: i32,
    pub error: anyhow::Error,
}

impl Exit {
    /// The error and its causes, each after a colon, as `{:#}` prints them, except a cause whose
    /// text is already the last part of what is said (after a colon): sqlx's error from the
    /// database says its message and has that message as its source too, which `{:#}` printed
    /// twice.
    pub fn text(&self) -> String {
        let mut text = chain_text(&self.error);
        let unmigrated = self
            .error
            .chain()
            .filter_map(|c| c.downcast_ref::<sqlx::Error>())
            .any(unmigrated);
        if unmigrated && !text.contains("rbac-gateway migrate") {
            text.push_str(MIGRATE_HINT);
        }
        text
    }
}

/// What a command says after a database error that names a table or function of the gateway's
/// schema that is not there ([`unmigrated`]).
pub(crate) const MIGRATE_HINT: &str = " (the database lacks a table or function this binary reads: run `rbac-gateway migrate` as the tables' owner, or set RBAC_GATEWAY_DATABASE_SCHEMA to the schema that holds them; a table of Console's dropped after migrate ran is Console's to restore)";

/// Whether `e` is PostgreSQL saying a table (42P01) or function (42883, "function ... does not
/// exist": not an operator or a call's argument types, which a column retyped gives) is not
/// there: a database never migrated, or one migrated by an older binary, or another schema.
pub(crate) fn unmigrated(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(d) = e else {
        return false;
    };
    match d.code().as_deref() {
        Some("42P01") => true,
        Some("42883") => d.message().starts_with("function "),
        _ => false,
    }
}

/// [`Exit::text`] of any error.
pub fn chain_text(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let said = cause.to_string();
        if !text.is_empty() {
            // Its whole last part, after a colon and a space, not just its last letters.
            if text
                .strip_suffix(said.as_str())
                .is_some_and(|t| t.ends_with(": "))
            {
                continue;
            }
            text.push_str(": ");
        }
        text.push_str(&said);
    }
    text
}

#[cfg(test)]
mod tests {
    /// An error that says its source's text, as sqlx's error from the database does.
    #[derive(Debug)]
    struct Says(std::io::Error);

    impl std::fmt::Display for Says {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "error returned from database: {}", self.0)
        }
    }

    impl std::error::Error for Says {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_cause_its_error_already_says_is_said_once() {
        let refused =
            std::io::Error::other("access to non-system view \"admin_sessions\" is restricted");
        let error = anyhow::Error::new(Says(refused)).context("cannot read the sessions");
        assert_eq!(
            format!("{error:#}"),
            "cannot read the sessions: error returned from database: access to non-system view \"admin_sessions\" is restricted: access to non-system view \"admin_sessions\" is restricted"
        );
        assert_eq!(
            super::chain_text(&error),
            "cannot read the sessions: error returned from database: access to non-system view \"admin_sessions\" is restricted"
        );
        // Causes that say something new are all said, as `{:#}` says them, one that ends
        // another's text only in its letters too.
        let plain = anyhow::anyhow!("disk full")
            .context("cannot write")
            .context("sweep failed");
        assert_eq!(super::chain_text(&plain), format!("{plain:#}"));
        let ended = anyhow::anyhow!("ended").context("the session ended");
        assert_eq!(super::chain_text(&ended), "the session ended: ended");
    }
}
