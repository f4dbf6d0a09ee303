//! The command line (clap): every command's flags, each also read from an environment variable;
//! `--help` lists both, and the configuration reference (docs/configuration.md) is generated from
//! these definitions. A command turns what a lower floor needs into that floor's plain settings
//! (`serve`'s checked `Config`, [`DecisionArgs::settings`]): no clap type leaves `cli/`.

mod posture;
mod serve;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use posture::parse_bool;
pub use posture::{DecisionArgs, PostureArgs};
pub use serve::{DbStatements, LogFormat, ServeArgs};

#[derive(Debug, Parser)]
#[command(
    name = "rbac-gateway",
    version,
    about = "Authorization sidecar enforcing Console's RBAC V2 per route",
    // A flag given twice takes its last value (wrappers append overrides to a base command).
    args_override_self = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once at start-up: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway in front of Console.
    Serve(ServeArgs),
    /// Apply the embedded migrations (schema and role catalogue); safe to run twice.
    Migrate(MigrateArgs),
    /// Validate a mapping without serving; prints every problem as FILE:LINE:COL: message.
    Check(CheckArgs),
    /// Explain the decision for one admin (or a request without a session), method and path.
    Explain(ExplainArgs),
    /// Run the lifecycle sweep once: revoke ticket grants whose ticket FreeScout reports closed or
    /// resolved, or whose expiry passed (audit row first), and write break-glass expiry rows.
    /// Prints what it did (and runs the alert pass, even after the sweep failed); exits 1 when FreeScout failed for a ticket, a grant or break-glass session could not be written, the alert webhook failed, the database refused the alert pass a read of Console's tables, or the sweep or the alert pass failed.
    Sweep(SweepArgs),
    /// Report shadow-mode drift (gateway vs Console's own answer) per cluster and route; exits 1
    /// when there is drift in the window.
    Drift(DriftArgs),
    /// Who reaches which route, for an access review: a request without a session and each
    /// group x every method of every rule (and, with --database-url, each admin), every cell the
    /// gateway's own decision.
    Matrix(MatrixArgs),
    /// The blast radius of a mapping change: every method and rule whose access, roles,
    /// permissions, mode or cluster changes, what each group (and, with --database-url, each
    /// admin) gains and loses. Exits 0 when access does not change, 1 when it does, 64 on bad
    /// input.
    Diff(DiffArgs),
    /// The cutover's stages: per cluster (003 §6), its rules and modes, since when the fleet runs
    /// each, shadow denials and drift rows in the window, blockers and a verdict (ready to
    /// enforce, not ready and why, enforced). Exits 1 when the file enforces a cluster that is
    /// not ready (or --cluster names one neither ready nor enforced): a CI gate.
    Rollout(RolloutArgs),
    /// Mapping versions kept in the database: push a file, activate or roll back a version,
    /// list the history, print a stored version. Gateways started with `--mapping-source
    /// database` apply each activation within a second.
    #[command(subcommand)]
    Mapping(MappingCommand),
    /// The cutover on one read-only site: the board (`rollout`), the timeline (`mapping
    /// history`, `diff`), the matrix (`matrix`) and the recent denials with `explain`'s why, each
    /// page also JSON (`.json`). Changes nothing in the database; listens on loopback unless
    /// --auth-token-file says how callers are authenticated.
    Cockpit(CockpitArgs),
    /// Run the mapping's tests (`*.test.toml`: cases and statements over every route) with the
    /// decision `serve` makes. Exits 0 when every case passes, 1 when one fails, 64 when a test
    /// file (or the mapping) does not load.
    Test(TestArgs),
}

#[derive(Debug, Subcommand)]
pub enum MappingCommand {
    /// Validate FILE exactly as `check` does (a file `check` rejects is never stored: same
    /// messages, exit 1 or 64), run its tests (`rbac-gateway test`: the `*.test.toml` beside it,
    /// or --tests; a failing case refuses the version, exit 1), store its exact text under its
    /// version with who pushed it, why and what its tests gave, and make it the active version.
    /// Pushing the active version again changes nothing (exit 0).
    Push(MappingPushArgs),
    /// Make a stored version the active one (every gateway with `--mapping-source database`
    /// applies it within a second).
    Activate(MappingActivateArgs),
    /// Go back to the version active before the current one (run again, it undoes itself).
    Rollback(MappingChangeArgs),
    /// Every stored version (who pushed it, when, why) and every activation (by whom, when, and
    /// what it changed in `diff`'s terms: rules, and what each group gains and loses).
    History(MappingHistoryArgs),
    /// Print a stored version's text, byte for byte (for `diff`, `explain`, `check`).
    Show(MappingShowArgs),
}

#[derive(Debug, Clone, Args)]
pub struct MappingChangeArgs {
    /// Console's PostgreSQL (a role that may insert into rbac_mapping_store and
    /// rbac_mapping_activations: deploy/mapping-grants.sql).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
    /// Why (recorded with the change, shown by `mapping history`).
    #[arg(long, short = 'm')]
    pub message: Option<String>,
    /// Who, when the database user is shared (a person, a CI job): recorded with the change.
    /// Empty is refused (`--actor "$USER"` with `USER` unset recorded no one).
    #[arg(long, env = "GATEWAY_MAPPING_ACTOR", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub actor: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct MappingPushArgs {
    /// The mapping file.
    pub file: PathBuf,
    #[command(flatten)]
    pub change: MappingChangeArgs,
    /// Store the version without activating it (`mapping activate VERSION` later).
    #[arg(long)]
    pub no_activate: bool,
    /// JSON dump of the upstream's routes, checked as `check --app-routes` does.
    #[arg(long)]
    pub app_routes: Option<PathBuf>,
    /// Sign the version with this Ed25519 private key (PKCS#8 PEM, `openssl genpkey -algorithm
    /// ed25519`), kept outside the repository and the database: gateways started with
    /// --mapping-public-key apply only versions signed by its key.
    #[arg(long, env = "GATEWAY_MAPPING_SIGNING_KEY")]
    pub signing_key: Option<PathBuf>,
    /// The mapping's tests to run before anything is stored (a `*.test.toml` file or a
    /// directory searched for them; repeat for more), as `rbac-gateway test` runs them. Without
    /// it, the `*.test.toml` files beside FILE. A version whose tests fail is refused (exit 1);
    /// what they gave is recorded on the version.
    #[arg(
        long = "tests",
        value_name = "TEST_FILE_OR_DIR",
        conflicts_with = "skip_tests"
    )]
    pub tests: Vec<PathBuf>,
    /// Store the version without running its tests: said at the push and recorded on the
    /// version (`mapping history`, the cockpit).
    #[arg(long)]
    pub skip_tests: bool,
}

#[derive(Debug, Clone, Args)]
pub struct MappingActivateArgs {
    /// The version (12 hex digits, as `mapping history` and `/readyz` show it).
    pub version: String,
    #[command(flatten)]
    pub change: MappingChangeArgs,
}

#[derive(Debug, Clone, Args)]
pub struct MappingHistoryArgs {
    /// Console's PostgreSQL.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
    /// The history as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct MappingShowArgs {
    /// The version (12 hex digits), or `active` (the latest activation's) or `previous` (the
    /// version that one replaced).
    pub version: String,
    /// Console's PostgreSQL.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
    /// The version and its text as JSON (what the cockpit's version page answers).
    #[arg(long)]
    pub json: bool,
}
#[derive(Debug, Clone, Args)]
pub struct SweepArgs {
    /// Console's PostgreSQL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// FreeScout's status URL ({ticket_id} is replaced); unset: only expired grants are revoked.
    #[arg(long, env = "GATEWAY_TICKET_VALIDATION_URL", value_parser = posture::ticket_url)]
    pub ticket_validation_url: Option<String>,
    /// The deadline of one FreeScout status request, in milliseconds.
    #[arg(long, env = "GATEWAY_FREESCOUT_TIMEOUT_MS", default_value_t = 5_000)]
    pub freescout_timeout_ms: u64,
    /// Most FreeScout status requests in flight (one per ticket).
    #[arg(long, env = "GATEWAY_FREESCOUT_CONCURRENCY", default_value_t = 8)]
    pub freescout_concurrency: usize,
    /// Slack-compatible incoming webhook for alerts (see `serve --help`).
    #[arg(long, env = "GATEWAY_ALERT_WEBHOOK_URL", hide_env_values = true, value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub alert_webhook_url: Option<String>,
    /// Run once and exit (the only mode; for a cron job or a Kubernetes CronJob).
    #[arg(long, default_value_t = true)]
    pub once: bool,
    /// Sweep even while another process holds the sweep's lock (a serving gateway keeps it while
    /// it runs): each grant is still revoked once and its row written once; FreeScout may be
    /// asked about a ticket by both. Without it, such a run does nothing and says so.
    #[arg(long)]
    pub force: bool,
}

/// The variables whose documented states include "unset" (interface.md: `FLAG_RBAC_V2` "Unset or
/// `1`: the modes in the mapping apply"; a URL whose absence means "not sent"). Set empty
/// (`FLAG_RBAC_V2=` or `GATEWAY_ALERT_WEBHOOK_URL:` in a compose file, a unit or a pod spec, how
/// such files unset a variable), each is taken as unset, never as a usage error nor as an empty
/// URL (a flag given an empty URL is refused: `NonEmptyStringValueParser` on each).
const UNSET_WHEN_EMPTY: [&str; 5] = [
    "FLAG_RBAC_V2",
    "FLAG_TICKET_SCOPED_GRANTS",
    "GATEWAY_TICKET_VALIDATION_URL",
    "GATEWAY_ALERT_WEBHOOK_URL",
    "GATEWAY_AUDIT_WRITER_URL",
];

/// Removes the `UNSET_WHEN_EMPTY` variables that are set empty. Call before parsing, while the
/// process has one thread.
pub fn unset_empty_switches() {
    for name in UNSET_WHEN_EMPTY {
        if std::env::var_os(name).is_some_and(|v| v.is_empty()) {
            std::env::remove_var(name);
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    /// PostgreSQL to migrate.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
}

#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// The mapping to check.
    #[arg(long, env = "GATEWAY_ROUTES", default_value = "routes.toml")]
    pub routes: PathBuf,
    /// Also check roles, permissions and schema against this database.
    #[arg(long)]
    pub database_url: Option<String>,
    /// Also check the login `serve --lookup-database-url` reads Console's tables as: an error
    /// for each thing of the gateway's it may write or run, or role it may become, that
    /// Console's role may not, for each privilege of deploy/lookup-grants.sql it lacks, and for
    /// a URL that reaches a standby or another database than --database-url's (not read from
    /// the environment, as --database-url is not: a reload's check never waits on a database).
    #[arg(long)]
    pub lookup_database_url: Option<String>,
    /// JSON dump of the upstream's routes ([{"rule", "methods", "endpoint", "strict_slashes"}],
    /// in registration order; scripts/dump_flask_routes.py): every Console route must be
    /// covered and every gateway rule must exist in Console.
    #[arg(long)]
    pub app_routes: Option<PathBuf>,
    /// `database`: check the mapping a gateway with `--mapping-source database` would apply on
    /// SIGHUP (the active version in the database at --database-url, or DATABASE_URL: its hash,
    /// with --mapping-public-key its signature, and that it loads) instead of --routes. The
    /// systemd unit's `ExecReload` runs `check` with the gateway's environment, so it checks
    /// what the reload will apply in either mode.
    #[arg(long, env = "GATEWAY_MAPPING_SOURCE", default_value = "file", value_parser = ["file", "database"])]
    pub mapping_source: String,
    /// With --mapping-source database: the version must be signed by this key's private key
    /// (as `serve --mapping-public-key` requires).
    #[arg(long, env = "GATEWAY_MAPPING_PUBLIC_KEY")]
    pub mapping_public_key: Option<PathBuf>,
    #[command(flatten)]
    pub decision: DecisionArgs,
    #[command(flatten)]
    pub posture: PostureArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ExplainArgs {
    /// The mapping.
    #[arg(long, env = "GATEWAY_ROUTES", default_value = "routes.toml")]
    pub routes: PathBuf,
    /// Console's PostgreSQL (needed with --admin and --request-id).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// The admin's id (admins.id). Without it, the request is decided as one without a session
    /// (302 to the login page, public forwarded, 401 from the reader API, gone, refused). Not
    /// with --request-id (the audit row names the admin).
    #[arg(long, conflicts_with = "request_id")]
    pub admin: Option<String>,
    /// HTTP method (upper case).
    #[arg(required_unless_present = "request_id", conflicts_with = "request_id")]
    pub method: Option<String>,
    /// Request path (and query), as a client would send it.
    #[arg(required_unless_present = "request_id", conflicts_with = "request_id")]
    pub path: Option<String>,
    /// Explain a logged request from its audit row (access_audit_events.request_id): its admin,
    /// method and path, with the mapping version the row carries: read from the database's
    /// mapping store when it holds that version, else --routes or --mapping-history when one is
    /// that version (said so when none is).
    #[arg(long)]
    pub request_id: Option<String>,
    /// A folder of earlier mapping files (any *.toml); with --request-id, the one whose version
    /// is the row's is used when --routes is another version.
    #[arg(long)]
    pub mapping_history: Option<PathBuf>,
    #[command(flatten)]
    pub reader: ReaderApiArg,
    #[command(flatten)]
    pub decision: DecisionArgs,
}

#[derive(Debug, Clone, Args)]
pub struct DriftArgs {
    /// The mapping (to group routes by cluster and list the shadow-mode rules).
    #[arg(long, env = "GATEWAY_ROUTES", default_value = "routes.toml")]
    pub routes: PathBuf,
    /// Console's PostgreSQL (where drift events are recorded).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// The window, in hours (default: 7 days).
    #[arg(long, default_value_t = 168)]
    pub since_hours: u32,
    /// Only this cluster (e.g. S2).
    #[arg(long)]
    pub cluster: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct MatrixArgs {
    /// The mapping: a file, or a version in the database (`db:VERSION`, `db:active`,
    /// `db:previous`; needs --database-url).
    #[arg(long, env = "GATEWAY_ROUTES", default_value = "routes.toml")]
    pub routes: PathBuf,
    /// Console's PostgreSQL: the groups as Console holds them, and a row per admin. Without it,
    /// the groups of the catalogue `migrate` seeds.
    #[arg(long)]
    pub database_url: Option<String>,
    #[command(flatten)]
    pub reader: ReaderApiArg,
    /// md (a table per kind of principal), csv (one line per cell) or json.
    #[arg(long, default_value = "md", value_parser = ["md", "csv", "json"])]
    pub format: String,
    #[command(flatten)]
    pub decision: DecisionArgs,
}

#[derive(Debug, Clone, Args)]
pub struct DiffArgs {
    /// The mapping as it is: a file (e.g. the live routes.toml), or a version in the database:
    /// `db:VERSION`, `db:active`, `db:previous` (the version the active one replaced).
    pub old: PathBuf,
    /// The mapping as it would be: a file or `db:VERSION` (`db:active`, `db:previous`).
    pub new: PathBuf,
    /// Console's PostgreSQL: the groups as Console holds them, and the admins who gain or lose
    /// access; the mapping store, for a `db:` side. Without it, the groups of the catalogue
    /// `migrate` seeds.
    #[arg(long)]
    pub database_url: Option<String>,
    /// The report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct CockpitArgs {
    /// Console's PostgreSQL (on Heroku: the app's DATABASE_URL, from your own machine). Every
    /// transaction begins READ ONLY: the cockpit changes nothing.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// Address the cockpit listens on (port 0: any free port, printed). A loopback address
    /// unless --auth-token-file is given: the site shows who may reach what and who was denied.
    #[arg(long, env = "GATEWAY_COCKPIT_LISTEN", default_value = "127.0.0.1:8089")]
    pub listen: String,
    /// A file holding the token callers must present (one line, at least 32 characters, e.g.
    /// `openssl rand -hex 32`): `Authorization: Bearer TOKEN`, or TOKEN as the password of HTTP
    /// basic auth (any user name; what a browser asks for). Required to listen on an address
    /// other than loopback; put TLS in front of such an address.
    #[arg(long, env = "GATEWAY_COCKPIT_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// The board's soak window, as `rollout --since` (e.g. 7d, 24h).
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    pub since: std::time::Duration,
    /// As `explain --routes`: a denial whose mapping version is not in the database's mapping
    /// store is explained with this file when it is that version.
    #[arg(long, env = "GATEWAY_ROUTES", default_value = "routes.toml")]
    pub routes: PathBuf,
    /// As `explain --mapping-history`.
    #[arg(long)]
    pub mapping_history: Option<PathBuf>,
    #[command(flatten)]
    pub reader: ReaderApiArg,
    #[command(flatten)]
    pub decision: DecisionArgs,
    #[command(flatten)]
    pub posture: PostureArgs,
}

#[derive(Debug, Clone, Args)]
pub struct RolloutArgs {
    /// The mapping (live, or the one a change would swap in: the clusters it enforces that the
    /// fleet does not yet must be ready): a file, or a version in the database (`db:VERSION`,
    /// `db:active`, `db:previous`).
    #[arg(long, env = "GATEWAY_ROUTES", default_value = "routes.toml")]
    pub routes: PathBuf,
    /// Console's PostgreSQL (mapping versions, activations and shadow-mode audit rows). Soak
    /// time counts from the activations (`mapping push|activate|rollback`) when there are any,
    /// else from the loads gateways record.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// The soak window (e.g. 7d, 24h, 90m): a cluster is ready after this long in shadow with no
    /// drift row in it (002 Phase 4: 7 days).
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    pub since: std::time::Duration,
    /// Only this cluster (e.g. S2): exits 1 unless it is ready or enforced.
    #[arg(long)]
    pub cluster: Option<String>,
    /// The report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub decision: DecisionArgs,
    #[command(flatten)]
    pub posture: PostureArgs,
}

#[derive(Debug, Clone, Args)]
pub struct TestArgs {
    /// The mapping under test: a file, or a version in the database (`db:VERSION`, `db:active`,
    /// `db:previous`; needs --database-url). Without test files named, the `*.test.toml` files
    /// beside the mapping file are run.
    #[arg(long, env = "GATEWAY_ROUTES", default_value = "routes.toml")]
    pub routes: PathBuf,
    /// Console's PostgreSQL: the groups as Console holds them (instead of the catalogue `migrate`
    /// seeds), the admins cases name by email or id, and `db:` versions. Never read from the
    /// environment: a suite runs the same with or without DATABASE_URL set.
    #[arg(long)]
    pub database_url: Option<String>,
    /// text (for a terminal), json, or junit (JUnit XML, for CI).
    #[arg(long, default_value = "text", value_parser = ["text", "json", "junit"])]
    pub format: String,
    /// Also name every rule no case reached (text: after the summary; json: `uncovered`; junit:
    /// the `system-out` of a suite named `coverage`).
    #[arg(long)]
    pub coverage: bool,
    /// Also list the cases that passed (text).
    #[arg(long, short = 'v')]
    pub verbose: bool,
    /// An admin's break-glass session counts only once its alert was delivered, as `serve`
    /// decides by default (I-4). `false`: as a `serve` started with
    /// `--break-glass-requires-alert=false` decides (the report says so). Never read from the
    /// environment, as --database-url.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set,
          num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_bool)]
    pub break_glass_requires_alert: bool,
    /// Test files (`*.test.toml`) or directories (searched for `*.test.toml`, recursively).
    pub tests: Vec<PathBuf>,
}

#[cfg(test)]
mod tests {
    /// clap's own checks of the definitions (conflicts, defaults, names), which it otherwise
    /// makes only when a command is parsed.
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}

/// `--rbac-api` of the commands that answer as `serve` does (explain, matrix, the cockpit).
#[derive(Debug, Clone, Args)]
pub struct ReaderApiArg {
    /// Console's reader API answered by the gateway, as `serve` reads it: its paths are then
    /// answered by the gateway itself, never decided as a route nor forwarded.
    #[arg(long, env = "GATEWAY_RBAC_API", default_value_t = true, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true", value_parser = parse_bool)]
    pub rbac_api: bool,
}
