//! `serve`'s flags, checked into a typed `Config` by `cli/serve/config.rs`.

use std::path::PathBuf;

use clap::Args;

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
    /// A login of its own for the request path's reads of Console's tables (a cold session, a
    /// principal, a rule's live ticket grants, the reader API, the mapping's names), each one
    /// read-only transaction (a simple query, pooler-safe) on a pool of its own of
    /// --db-pool-size connections, as a login that may write none of the gateway's tables
    /// (deploy/lookup-grants.sql): code of Console's role that runs on such a read (a retyped
    /// column's cast, an index expression) then cannot forge a delivered alert or audit row.
    /// /readyz answers 503 while it cannot connect. The primary's same database, as
    /// --database-url (a standby's lag would let a cold lookup cache again what the change feed
    /// dropped): each lookup on a standby fails, another database is logged as an error at
    /// start-up. Default: --database-url's pool and login
    #[arg(long, env = "GATEWAY_LOOKUP_DATABASE_URL", hide_env_values = true)]
    pub lookup_database_url: Option<String>,
    /// How the request path's lookups (a cold session, a principal, a rule's live ticket
    /// grants) and the audit writer's INSERT of fresh denial rows reach PostgreSQL. `auto`:
    /// named prepared statements with their values bound, each one round trip planned once per
    /// connection, when --direct-database-url is not set and the pool's
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
    /// Database connections (the change feed's listener and the sweeper have one more each;
    /// --lookup-database-url's pool as many again).
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
