//! Flags and environment. Every flag also reads an environment variable; `--help` lists both,
//! and the configuration reference (docs/configuration.md) is generated from this definition.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use super::posture::parse_bool;

/// How statements with values reach PostgreSQL (`--db-statements`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DbStatements {
    Auto,
    Simple,
    Named,
}

/// The log's format (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Json => "json",
            LogFormat::Text => "text",
        }
    }
}

/// Exit code for bad usage or an unreadable/invalid file (sysexits EX_USAGE).
pub const EXIT_USAGE: i32 = 64;
/// Exit code when `check` found problems.
pub const EXIT_PROBLEMS: i32 = 1;

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
    /// Prints what it did (and runs the alert pass); exits 1 when FreeScout failed for a ticket, a grant or break-glass session could not be written, the alert webhook failed, or the sweep failed.
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
    #[arg(long, env = "GATEWAY_MAPPING_ACTOR")]
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
pub struct ServeArgs {
    /// Address the gateway listens on.
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Console's address, host:port (resolved once at start-up).
    #[arg(long, env = "GATEWAY_UPSTREAM", default_value = "127.0.0.1:5000")]
    pub upstream: String,
    /// The route mapping (with --mapping-source file).
    #[arg(long, env = "GATEWAY_ROUTES", default_value = "routes.toml")]
    pub routes: PathBuf,
    /// Where the mapping comes from: `file` (--routes, reloaded within a second of a change on
    /// this host) or `database` (the version made active by `rbac-gateway mapping
    /// push|activate|rollback`, applied on every replica within a second; --routes is not read;
    /// not ready until a version is loaded).
    #[arg(long, env = "GATEWAY_MAPPING_SOURCE", default_value = "file", value_parser = ["file", "database"])]
    pub mapping_source: String,
    /// With --mapping-source database: apply only versions signed (`mapping push --signing-key`)
    /// by the private key of this Ed25519 public key (PEM, `openssl pkey -in KEY -pubout`). An
    /// unsigned or wrongly signed version is never applied: at start the gateway stays not
    /// ready, while running it keeps its previous mapping (named on /readyz, a failed reload).
    #[arg(long, env = "GATEWAY_MAPPING_PUBLIC_KEY")]
    pub mapping_public_key: Option<PathBuf>,
    /// Console's PostgreSQL. May go through a transaction-pooling PgBouncer: every statement
    /// runs inside a transaction of its own, unnamed unless the URL proves to reach sessions of
    /// the gateway's own (--db-statements).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// A connection to PostgreSQL that bypasses any transaction pooler, for what needs a session
    /// (the change feed's LISTEN, the sweep's lock); default: --database-url. Set it when
    /// --database-url is a transaction-pooling PgBouncer (docs/deploy/pgbouncer.md).
    #[arg(long, env = "GATEWAY_DIRECT_DATABASE_URL", hide_env_values = true)]
    pub direct_database_url: Option<String>,
    /// How the request path's lookups (a cold session, a principal, a rule's live ticket
    /// grants) reach PostgreSQL. `auto`: named prepared statements, each lookup one round trip
    /// planned once per connection, when --direct-database-url is not set and the pool's
    /// connections prove to be sessions of their own (the probe the change feed makes);
    /// otherwise, and until then, one simple query with its values written in, safe behind any
    /// pooler. `simple`: always the simple query. `named`: named statements without the probe
    /// (PostgreSQL itself, or a pooler in session mode). A named statement failing as only a
    /// pooler makes it fail turns the gateway to simple queries for good, with a warning.
    #[arg(long, env = "GATEWAY_DB_STATEMENTS", value_enum, default_value_t = DbStatements::Auto)]
    pub db_statements: DbStatements,
    /// Address of the admin listener (/healthz, /readyz, /metrics).
    #[arg(long, env = "GATEWAY_ADMIN_LISTEN", default_value = "127.0.0.1:9090")]
    pub admin_listen: String,
    /// Name of Console's session cookie.
    #[arg(
        long,
        env = "GATEWAY_SESSION_COOKIE",
        default_value = "console_session"
    )]
    pub session_cookie: String,
    /// Longest time a resolved session or role set is reused, in seconds (never past the
    /// session's or a break-glass row's expiry).
    #[arg(long, env = "GATEWAY_CACHE_TTL", default_value_t = 5.0)]
    pub cache_ttl: f64,
    /// Most entries per cache (sessions; admins).
    #[arg(long, env = "GATEWAY_CACHE_CAPACITY", default_value_t = 100_000)]
    pub cache_capacity: u64,
    /// Proxy worker threads (default: half the cores, at least one; the rest are Console's).
    /// Each runs its own single-threaded runtime, listening socket (SO_REUSEPORT) and upstream
    /// connection pool.
    #[arg(long, env = "GATEWAY_THREADS")]
    pub threads: Option<usize>,
    /// A client must send a whole request head within this many milliseconds (exceeded: the
    /// connection is closed); also the longest idle time of a keep-alive connection.
    #[arg(long, env = "GATEWAY_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,
    /// The longest a client may pause while sending a request body, in milliseconds: each part
    /// of the body must arrive within this time of the previous one (exceeded: 408, the
    /// connection is closed, nothing is forwarded).
    #[arg(long, env = "GATEWAY_BODY_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub body_read_timeout_ms: u64,
    /// Largest request head (request line and headers) in bytes (exceeded: 431).
    #[arg(long, env = "GATEWAY_MAX_HEADER_BYTES", default_value_t = 32 * 1024)]
    pub max_header_bytes: usize,
    /// Most header lines per request (exceeded: 431).
    #[arg(long, env = "GATEWAY_MAX_HEADERS", default_value_t = 100)]
    pub max_headers: usize,
    /// Largest request body in bytes; bodies are read completely before Console sees the
    /// request (exceeded: 413).
    #[arg(long, env = "GATEWAY_MAX_BODY_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Most request-body bytes held at once by all requests whose bodies are being read (many
    /// slow uploads cannot take the host's memory); a request that would go over it gets 503
    /// with `Retry-After: 1`. At least --max-body-bytes.
    #[arg(
        long,
        env = "GATEWAY_MAX_BUFFERED_BODY_BYTES",
        default_value_t = 256 * 1024 * 1024
    )]
    pub max_buffered_body_bytes: usize,
    /// Upstream connect timeout in milliseconds (exceeded: 504).
    #[arg(
        long,
        env = "GATEWAY_UPSTREAM_CONNECT_TIMEOUT_MS",
        default_value_t = 2_000
    )]
    pub upstream_connect_timeout_ms: u64,
    /// Upstream read timeout in milliseconds: from the request sent to Console's response head
    /// (exceeded: 504), then each wait for more of its body (exceeded: the answer is cut and both
    /// connections closed).
    #[arg(
        long,
        env = "GATEWAY_UPSTREAM_READ_TIMEOUT_MS",
        default_value_t = 30_000
    )]
    pub upstream_read_timeout_ms: u64,
    /// Database acquire and statement timeout in milliseconds (exceeded: 503).
    #[arg(long, env = "GATEWAY_DB_TIMEOUT_MS", default_value_t = 2_000)]
    pub db_timeout_ms: u64,
    /// Database connections (the change feed's listener and the sweeper have one more each).
    #[arg(long, env = "GATEWAY_DB_POOL_SIZE", default_value_t = 8)]
    pub db_pool_size: u32,
    /// Append-only file where audit rows wait while the database is unreachable (gateways may
    /// share one: appends and replays lock it)
    #[arg(
        long,
        env = "GATEWAY_AUDIT_SPOOL",
        default_value = "rbac-gateway-audit.spool"
    )]
    pub audit_spool: PathBuf,
    /// Largest spool in bytes; when full, requests that would be denied get 503.
    #[arg(long, env = "GATEWAY_AUDIT_SPOOL_MAX_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub audit_spool_max_bytes: u64,
    /// The spool's file outlives the process and its host (a persistent volume). false, where the
    /// disk goes with the process (a Heroku dyno): nothing is spooled, and a denial whose row the
    /// database does not take within --db-timeout-ms is answered 503 (never a 403 whose row could
    /// be lost).
    #[arg(long, env = "GATEWAY_AUDIT_SPOOL_DURABLE", default_value_t = true, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true", value_parser = parse_bool)]
    pub audit_spool_durable: bool,
    /// Take a valid `X-Request-Id` (one header, 20 to 200 characters of `A-Za-z0-9+/=-`, Heroku's
    /// rule) as the request's id in audit rows, log lines and to Console, so they join with the
    /// router's log; any other value is replaced by a generated id. Only behind a router that
    /// sets or replaces the header on every request.
    #[arg(long, env = "GATEWAY_TRUST_REQUEST_ID", default_value_t = false, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true", value_parser = parse_bool)]
    pub trust_request_id: bool,
    /// Proxies in front of the gateway that each append the address they saw to
    /// `X-Forwarded-For` (Heroku's router: 1). The client's address (audit rows, log lines) is the
    /// one the outermost of them appended, never one the client sent before it; 0: the peer's
    /// address.
    #[arg(long, env = "GATEWAY_TRUSTED_PROXIES", default_value_t = 0)]
    pub trusted_proxies: usize,
    /// Seconds to finish in-flight requests after SIGTERM.
    #[arg(long, env = "GATEWAY_SHUTDOWN_GRACE", default_value_t = 2)]
    pub shutdown_grace: u64,
    /// Answer Console's reader API (`GET /api/rbac/me`, `GET /api/rbac/permissions/check`) in the
    /// gateway itself: those paths are then never forwarded. `--rbac-api=false` forwards them.
    #[arg(long, env = "GATEWAY_RBAC_API", default_value_t = true, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true", value_parser = parse_bool)]
    pub rbac_api: bool,
    /// Address of the forward-auth listener for edge proxies (`/authz`: nginx `auth_request`,
    /// Traefik `forwardAuth`, Caddy `forward_auth`). Unset: no such listener.
    #[arg(long, env = "GATEWAY_AUTHZ_LISTEN")]
    pub authz_listen: Option<String>,
    /// Seconds between lifecycle sweeps (ticket grants of closed tickets and expired grants
    /// revoked, break-glass expiry rows); every replica runs them, one at a time under an
    /// advisory lock. 0 turns the sweep off in this process.
    #[arg(long, env = "GATEWAY_SWEEP_INTERVAL", default_value_t = 120.0)]
    pub sweep_interval: f64,
    /// The deadline of one FreeScout status request of the sweep and the webhook receiver, in
    /// milliseconds (exceeded: that ticket's grants are kept, retried next sweep); also how long
    /// a webhook call's whole body may take to arrive (exceeded: 408, the connection closed).
    #[arg(long, env = "GATEWAY_FREESCOUT_TIMEOUT_MS", default_value_t = 5_000)]
    pub freescout_timeout_ms: u64,
    /// Most FreeScout status requests the sweep has in flight (one per ticket).
    #[arg(long, env = "GATEWAY_FREESCOUT_CONCURRENCY", default_value_t = 8)]
    pub freescout_concurrency: usize,
    /// Seconds of a window in which denials without a session (a path no rule maps, reached
    /// without a session) write one row per client, reason and rule, then one row with the count
    /// of the rest; 0: a row for every denial. A denial of a request with a session always gets
    /// its own row. Bounds what traffic from anyone can make the gateway write to Console's
    /// database (docs/design/durability.md)
    #[arg(long, env = "GATEWAY_ANONYMOUS_DENIAL_WINDOW", default_value_t = 60)]
    pub anonymous_denial_window: u64,
    /// Most client/reason/rule keys a window of --anonymous-denial-window keeps; past it, every
    /// new key shares one row and count
    #[arg(long, env = "GATEWAY_ANONYMOUS_DENIAL_KEYS", default_value_t = 1_000)]
    pub anonymous_denial_keys: usize,
    /// A grant or break-glass session whose rows the sweep failed to write this many sweeps is
    /// named on /readyz (the status stays 200; it is retried every sweep).
    #[arg(long, env = "GATEWAY_SWEEP_FAILURE_THRESHOLD", default_value_t = 3)]
    pub sweep_failure_threshold: u32,
    /// Address of the FreeScout webhook receiver (`POST /freescout/webhook`: a ticket FreeScout
    /// reports closed or resolved has its grants revoked at once). Needs
    /// --freescout-webhook-secret and --ticket-validation-url. Unset: no such listener.
    #[arg(long, env = "GATEWAY_FREESCOUT_WEBHOOK_LISTEN")]
    pub freescout_webhook_listen: Option<String>,
    /// The webhook's shared secret (at least 16 bytes; from the environment, never a file that
    /// ships).
    #[arg(long, env = "GATEWAY_FREESCOUT_WEBHOOK_SECRET", hide_env_values = true)]
    pub freescout_webhook_secret: Option<String>,
    /// How a webhook call proves it knows the secret: `signature` (X-FreeScout-Signature, the
    /// base64 HMAC-SHA1 of the body) or `secret-header` (X-Webhook-Secret: the secret). Other
    /// calls get 401.
    #[arg(long, env = "GATEWAY_FREESCOUT_WEBHOOK_AUTH", default_value = "signature", value_parser = ["signature", "secret-header"])]
    pub freescout_webhook_auth: String,
    #[command(flatten)]
    pub decision: super::posture::DecisionArgs,
    #[command(flatten)]
    pub posture: super::posture::PostureArgs,
    /// A file holding the audit writer's service token (one line), sent as `Authorization:
    /// Bearer TOKEN`. Or the token itself in the environment variable GATEWAY_AUDIT_WRITER_TOKEN
    /// (never a flag's value: a command line is visible to every user of the host). Not both.
    #[arg(long, env = "GATEWAY_AUDIT_WRITER_TOKEN_FILE")]
    pub audit_writer_token_file: Option<PathBuf>,
    /// How long the audit writer may take to answer one event, in milliseconds (exceeded: a
    /// failed delivery, retried).
    #[arg(long, env = "GATEWAY_AUDIT_WRITER_TIMEOUT_MS", default_value_t = 5_000)]
    pub audit_writer_timeout_ms: u64,
    /// Log format: json or text.
    #[arg(long, env = "GATEWAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Args)]
pub struct SweepArgs {
    /// Console's PostgreSQL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// FreeScout's status URL ({ticket_id} is replaced); unset: only expired grants are revoked.
    #[arg(long, env = "GATEWAY_TICKET_VALIDATION_URL", value_parser = clap::builder::NonEmptyStringValueParser::new())]
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
}

/// The variables whose documented states include "unset" (interface.md: `FLAG_RBAC_V2` "Unset or
/// `1`: the modes in the mapping apply"; a URL whose absence means "not sent"). Set empty
/// (`FLAG_RBAC_V2=` or `GATEWAY_ALERT_WEBHOOK_URL:` in a compose file, a unit or a pod spec, how
/// such files unset a variable), each is taken as unset, never as a usage error nor as an empty
/// URL (a flag given an empty URL is refused: [`crate::runtime::posture`]).
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

impl ServeArgs {
    pub fn kill_switch(&self) -> bool {
        self.decision.kill_switch()
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
    pub decision: super::posture::DecisionArgs,
    #[command(flatten)]
    pub posture: super::posture::PostureArgs,
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
    /// Console's reader API answered by the gateway, as `serve` reads it: its paths are then
    /// answered by the gateway itself, never decided as a route nor forwarded.
    #[arg(long, env = "GATEWAY_RBAC_API", default_value_t = true, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true", value_parser = parse_bool)]
    pub rbac_api: bool,
    #[command(flatten)]
    pub decision: super::posture::DecisionArgs,
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
    /// Console's reader API answered by the gateway, as `serve` reads it: its paths are
    /// answered before any rule.
    #[arg(long, env = "GATEWAY_RBAC_API", default_value_t = true, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true", value_parser = parse_bool)]
    pub rbac_api: bool,
    /// md (a table per kind of principal), csv (one line per cell) or json.
    #[arg(long, default_value = "md", value_parser = ["md", "csv", "json"])]
    pub format: String,
    #[command(flatten)]
    pub decision: super::posture::DecisionArgs,
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
    /// Console's reader API answered by the gateway, as `serve` reads it (matrix and explain).
    #[arg(long, env = "GATEWAY_RBAC_API", default_value_t = true, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true", value_parser = parse_bool)]
    pub rbac_api: bool,
    #[command(flatten)]
    pub decision: super::posture::DecisionArgs,
    #[command(flatten)]
    pub posture: super::posture::PostureArgs,
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
    pub decision: super::posture::DecisionArgs,
    #[command(flatten)]
    pub posture: super::posture::PostureArgs,
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
    /// Test files (`*.test.toml`) or directories (searched for `*.test.toml`, recursively).
    pub tests: Vec<PathBuf>,
}
