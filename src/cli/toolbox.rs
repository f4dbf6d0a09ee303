//! What the commands share: their exits ([`usage`], [`failure`]), a database pool that says why
//! it cannot connect ([`command_pool`]), a mapping read from a file or the mapping store
//! ([`load_mapping`], [`load_stored_ref`]), a runtime, an address resolved, a diagnostic, and
//! `say!`, the report's `println!`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;

use anyhow::anyhow;

use super::Exit;
use crate::cli::{EXIT_PROBLEMS, EXIT_USAGE};
use crate::policy::mapping::{Mapping, Severity};

pub(crate) fn usage(e: impl Into<anyhow::Error>) -> Exit {
    Exit {
        code: EXIT_USAGE,
        error: e.into(),
    }
}

pub(crate) fn failure(e: impl Into<anyhow::Error>) -> Exit {
    Exit {
        code: EXIT_PROBLEMS,
        error: e.into(),
    }
}

/// Before a command reads Console's tables as its own role: Console's tables locked (ACCESS
/// SHARE) and `rbac_gateway_console_code` finding nothing of another role's on them that the
/// read would run as this role (the planner evaluates an index's expression as whoever plans
/// the read: migration 0038), or the command refuses (1): where the look finds anything, and
/// where this role may not look (no look, no read; deploy/mapping-grants.sql grants it to the
/// reader and the pusher, migration 0040). Keep what it returns until the reads are done: the
/// locks hold back a change made under a stronger lock (`stores::schema::hold_console_tables`),
/// on a connection of its own, so `pool` needs two. `matrix`, `diff`, `test`, `explain
/// --admin`, `mapping push` and `history`, the cockpit.
pub(crate) async fn console_looked(
    pool: &crate::stores::db::Db,
) -> Result<crate::stores::schema::ConsoleHeld, Exit> {
    const NOT_READ: &str = "Console's tables are not read";
    match crate::stores::schema::hold_console_tables(pool).await {
        Ok(held) => match &held.findings {
            Some(found) if found.is_empty() => Ok(held),
            Some(found) => Err(failure(anyhow!(
                "{NOT_READ}: code of another role's on them would run as this role: {} (`rbac-gateway check --database-url` names each)",
                found.join("; ")
            ))),
            None => Err(failure(anyhow!(
                "{NOT_READ}: this role may not run rbac_gateway_console_code, which looks first for code of another role's on them that a read would run as this role (deploy/mapping-grants.sql grants it to rbac_gateway_reader and rbac_mapping_pusher)"
            ))),
        },
        Err(e) => Err(failure(anyhow!(
            "{NOT_READ}: cannot look for code of another role's on them first: {e}"
        ))),
    }
}

/// A pool for a one-shot command, once one connection was made: a database that never answered
/// is reported with the reason (refused, unknown host, bad password), not as sqlx's bare "pool
/// timed out". Waits up to `timeout` for a database that is still starting.
pub(crate) async fn command_pool(
    url: &str,
    size: u32,
    timeout: std::time::Duration,
) -> Result<crate::stores::db::Db, Exit> {
    let pool = crate::stores::db::Db::connect(url, None, size, timeout).map_err(usage)?;
    reachable(pool, timeout).await
}

/// `pool`, once one connection was made (see [`command_pool`]).
pub(crate) async fn reachable(
    pool: crate::stores::db::Db,
    timeout: std::time::Duration,
) -> Result<crate::stores::db::Db, Exit> {
    match pool.acquire().await {
        // Back to the pool, for the command's first query.
        Ok(mut first) => first.done(),
        // The pool's own deadline, or the bound around it (`Db::acquire`), both `timeout`:
        // whichever fires first, the cause is asked for (on a loaded machine the bound won, and
        // a refused connection was reported as one that did not answer).
        Err(e)
            if matches!(e, sqlx::Error::PoolTimedOut)
                || matches!(&e, sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut) =>
        {
            let why = crate::stores::db::why_unreachable(&pool, std::time::Duration::from_secs(5))
                .await
                .unwrap_or_else(|| "it answered only now".to_string());
            return Err(failure(anyhow!(
                "cannot connect to the database (tried for {} s): {why}",
                timeout.as_secs()
            )));
        }
        Err(e) => return Err(failure(anyhow!("cannot connect to the database: {e}"))),
    }
    Ok(pool)
}

pub fn init_logging(format: &str) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A session token must never reach the log, whatever RUST_LOG asks for: the HTTP libraries'
    // own debug and trace records (when built with their tracing feature) can print headers.
    for krate in ["hyper", "hyper_util", "h2"] {
        filter = filter.add_directive(format!("{krate}=info").parse().expect("static directive"));
    }
    // Colours only for a terminal: a file, a pipe or a platform's log router gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(crate::runtime::log_sink::LogOut);
    // try_init fails only when a subscriber is already installed (tests call this twice).
    if format == "text" {
        let _ = builder.try_init();
    } else {
        // tracing-subscriber's JSON lines, written faster (`crate::runtime::logfmt`). Err: a subscriber
        // is already installed (tests call this twice); that one keeps logging.
        let _ = builder
            .event_format(crate::runtime::logfmt::JsonLine)
            .try_init();
    }
}

pub(crate) fn load_mapping(path: &Path) -> Result<Mapping, Exit> {
    Mapping::load(path)
        .map_err(|e| usage(anyhow!("{e}\n{}: the mapping is invalid", path.display())))
}

/// A mapping named as a version in the database: `db:VERSION`, `db:active` (the latest
/// activation's) or `db:previous` (the version it replaced). None: a file path.
pub(crate) fn stored_ref(path: &Path) -> Option<&str> {
    path.to_str()?.strip_prefix("db:")
}

/// A mapping version named that is not stored, or `active`/`previous` naming none yet: bad
/// input, exit 64 for a command and 404 for the cockpit (which finds it in [`Exit::error`]).
#[derive(Debug)]
pub(crate) struct NoSuchVersion(String);

impl std::fmt::Display for NoSuchVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NoSuchVersion {}

/// The stored version `what` names (a version, `active` or `previous`), re-hashed and compiled
/// as a gateway loads it ([`crate::gateway::reload::load_stored`]), never another mapping. As a
/// file path would be: a version not stored, `active`/`previous` naming none yet, or a text this
/// binary does not load is bad input (64: `diff`'s 1 means access changes, and a CI gate must
/// not read a typo as that); a store that cannot be read, or a text that does not hash to its
/// version or lacks a good signature, is a failure (1).
pub(crate) async fn load_stored_ref(
    db: &crate::stores::db::Db,
    what: &str,
) -> Result<Mapping, Exit> {
    use crate::gateway::reload::{load_stored, Unloadable};
    use crate::stores::mapping_store as store;
    let cannot_read = |e: sqlx::Error| {
        failure(anyhow!(
            "db:{what}: cannot read the mapping store: {e} (run `rbac-gateway migrate`? does this role have SELECT on rbac_mapping_store and rbac_mapping_activations, deploy/mapping-grants.sql?)"
        ))
    };
    let version = named_version(db, what)
        .await
        .map_err(cannot_read)?
        .map_err(|none| usage(NoSuchVersion(format!("db:{what}: {none}"))))?;
    load_stored(db, &version).await.map_err(|e| match e {
        Unloadable::Db(e) => cannot_read(e),
        Unloadable::Missing(_) => usage(NoSuchVersion(format!(
            "db:{what}: {}",
            store::Refused::UnknownVersion(version.clone())
        ))),
        e @ Unloadable::Invalid(_) => usage(anyhow!("db:{what}: {e}")),
        e @ (Unloadable::Tampered(_) | Unloadable::BadSignature(_)) => {
            failure(anyhow!("db:{what}: {e}"))
        }
    })
}

/// The stored version `what` names: a version names itself, `active` the latest activation's
/// and `previous` the version that one replaced. Err(why): `active` or `previous` names none yet.
pub(crate) async fn named_version(
    db: &crate::stores::db::Db,
    what: &str,
) -> Result<Result<String, String>, sqlx::Error> {
    if what != "active" && what != "previous" {
        return Ok(Ok(what.to_string()));
    }
    let Some((active, previous)) = crate::stores::mapping_store::active_and_previous(db).await?
    else {
        return Ok(Err("no mapping version was ever activated".to_string()));
    };
    Ok(match (what, previous) {
        ("active", _) => Ok(active),
        (_, Some(p)) => Ok(p),
        (_, None) => Err(format!("{active} is the first version ever activated")),
    })
}

/// `db:...` needs `--database-url`.
pub(crate) fn needs_database_url(what: &Path, option: &str) -> Exit {
    usage(anyhow!(
        "{}: a mapping version in the database needs {option}",
        what.display()
    ))
}

pub(crate) fn resolve(addr: &str, what: &str) -> Result<SocketAddr, Exit> {
    addr.to_socket_addrs()
        .map_err(|e| usage(anyhow!("{what} {addr:?} cannot be resolved: {e}")))?
        .next()
        .ok_or_else(|| usage(anyhow!("{what} {addr:?} resolves to no address")))
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, Exit> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(failure)
}

pub(crate) fn diag(
    file: &str,
    line: usize,
    col: usize,
    severity: Severity,
    message: String,
) -> crate::policy::mapping::Diagnostic {
    crate::policy::mapping::Diagnostic {
        file: file.to_string(),
        line,
        col,
        severity,
        message,
    }
}

/// `println!` for the one-shot commands' reports. A reader that went away (`explain ... | head
/// -1`) ends the command with 141 (128 + SIGPIPE, what a shell reports for a command ended by
/// it), quietly: `println!` panics there (exit 101). SIGPIPE itself stays ignored, so a closed
/// database or FreeScout connection is an error the command reports, never a silent death.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            $crate::cli::toolbox::stdout_failed(e);
        }
    }};
}
pub(crate) use say;

pub(crate) fn stdout_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(141);
    }
    eprintln!("rbac-gateway: cannot write the report: {e}");
    std::process::exit(crate::cli::EXIT_PROBLEMS);
}
