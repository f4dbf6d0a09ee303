//! FreeScout's webhook (004 §5: ticket -> RESOLVED or CLOSED revokes the ticket's grants at once;
//! OQ-2 (b): a shared secret the receiver checks). Off unless `--freescout-webhook-listen`.
//!
//! `POST /freescout/webhook` with FreeScout's conversation JSON (`{"id": ..., ...}`; `ticket_id`
//! is read too). The caller is authenticated first, with the configured secret:
//! - `signature` (default): `X-FreeScout-Signature` is the base64 HMAC-SHA1 of the raw body
//!   under the secret, the signature FreeScout's webhooks module sends;
//! - `secret-header`: `X-Webhook-Secret` carries the secret itself (a proxy that adds it).
//!
//! Both are compared in constant time; anything else gets 401 and changes nothing. The body is
//! read (at most [`MAX_BODY`] bytes: over it, 413) before the caller is authenticated, since the
//! signature covers it: a body that is too large gets 413, not 401, whoever sends it, and one
//! that has not all arrived within `--freescout-timeout-ms` gets 408 and the connection is
//! closed (the listener's header read timeout covers only the head). The call is
//! only a hint: the ticket's status is read again from FreeScout (`--ticket-validation-url`),
//! and only a ticket FreeScout reports closed or resolved has its grants revoked, each with its
//! `ticket_expire` row first (I-9), by the sweep's own function
//! ([`crate::jobs::ticket_ended::ask_and_end`]). A forged, replayed or early call therefore
//! revokes nothing still open, and a repeated one revokes nothing twice. Any replica can take
//! it: revocations lock the grant's row.
//!
//! This door reads the call and writes its answer; what it answers, counts and logs is
//! [`webhook_answer`]'s.

use std::sync::Arc;
use std::time::Duration;

use crate::stores::db::Db;
use base64::Engine;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;

use crate::jobs::ticket_ended::{webhook_answer, Heard, Webhook};
use crate::runtime::metrics::Metrics;

/// The path FreeScout posts to.
pub const PATH: &str = "/freescout/webhook";
/// The signature header (base64 HMAC-SHA1 of the body).
pub const SIGNATURE_HEADER: &str = "x-freescout-signature";
/// The shared-secret header.
pub const SECRET_HEADER: &str = "x-webhook-secret";
/// The largest body read (over it: 413, before authentication).
pub const MAX_BODY: usize = 256 * 1024;
/// The longest ticket id taken from a body, in bytes (longer: 400).
pub const MAX_TICKET_ID_BYTES: usize = 200;
/// The shortest secret accepted.
pub const MIN_SECRET_BYTES: usize = 16;

/// The label values of `rbac_gateway_freescout_webhooks_total`, counted where the call is
/// answered.
pub use crate::jobs::ticket_ended::RESULTS;

/// How callers prove who they are.
#[derive(Clone)]
pub enum Auth {
    Signature(Vec<u8>),
    SecretHeader(Vec<u8>),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret is never printed.
        match self {
            Auth::Signature(_) => f.write_str("Signature(..)"),
            Auth::SecretHeader(_) => f.write_str("SecretHeader(..)"),
        }
    }
}

impl Auth {
    /// `mode` is `signature` or `secret-header`.
    pub fn new(mode: &str, secret: &str) -> Result<Auth, String> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "--freescout-webhook-secret must be at least {MIN_SECRET_BYTES} bytes"
            ));
        }
        match mode {
            "signature" => Ok(Auth::Signature(secret.as_bytes().to_vec())),
            "secret-header" => Ok(Auth::SecretHeader(secret.as_bytes().to_vec())),
            other => Err(format!(
                "--freescout-webhook-auth must be signature or secret-header, not {other:?}"
            )),
        }
    }

    /// Whether the call carries the proof this receiver asks for.
    pub fn verify(&self, headers: &http::HeaderMap, body: &[u8]) -> bool {
        match self {
            Auth::Signature(key) => {
                let Some(given) = headers.get(SIGNATURE_HEADER) else {
                    return false;
                };
                let Ok(given) = base64::engine::general_purpose::STANDARD.decode(given.as_bytes())
                else {
                    return false;
                };
                let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(key) else {
                    return false;
                };
                mac.update(body);
                mac.verify_slice(&given).is_ok()
            }
            Auth::SecretHeader(secret) => headers
                .get(SECRET_HEADER)
                .is_some_and(|v| bool::from(v.as_bytes().ct_eq(secret))),
        }
    }
}

/// The signature of `body` under `secret`, as FreeScout sends it (for tests and tools).
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// What the receiver needs.
pub struct Receiver {
    pub pool: Db,
    pub auth: Auth,
    /// FreeScout's status URL template (`{ticket_id}`).
    pub validation_url: String,
    pub freescout_timeout: Duration,
    pub db_limit: Duration,
    pub metrics: Arc<Metrics>,
    /// This process's `--sweep-interval`; None: it does not sweep (0).
    pub sweep_interval: Option<Duration>,
}

impl Receiver {
    /// How long a call's whole body may take to arrive (exceeded: 408, the connection closed):
    /// `--freescout-timeout-ms`, the receiver's one deadline, so what FreeScout is given to
    /// send a call is what it is given to answer one.
    fn body_timeout(&self) -> Duration {
        self.freescout_timeout
    }
}

pub async fn serve(listener: TcpListener, receiver: Arc<Receiver>) {
    crate::dataplane::listen::serve_side(listener, "freescout webhook", move |req, peer| {
        let receiver = receiver.clone();
        async move { handle(req, &receiver, peer).await }
    })
    .await;
}

fn answer(status: u16, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
    *resp.status_mut() = StatusCode::from_u16(status).expect("a valid status");
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// The ticket the call names: `id` (FreeScout's conversation id) or `ticket_id`, a string or a
/// whole number.
fn ticket_of(body: &[u8]) -> Result<String, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    let field = v
        .get("ticket_id")
        .or_else(|| v.get("id"))
        .ok_or("no \"id\" (or \"ticket_id\") in the body")?;
    match field {
        serde_json::Value::String(s) if !s.is_empty() && s.len() <= MAX_TICKET_ID_BYTES => {
            Ok(s.clone())
        }
        serde_json::Value::Number(n) if n.is_u64() || n.is_i64() => Ok(n.to_string()),
        _ => Err(format!(
            "\"id\" must be a non-empty string of at most {MAX_TICKET_ID_BYTES} bytes or a whole number"
        )),
    }
}

/// Reads the call (its path, method, body and proof) and writes the answer
/// [`webhook_answer`] gives it.
async fn handle(
    req: Request<Incoming>,
    r: &Receiver,
    peer: std::net::SocketAddr,
) -> Response<Full<Bytes>> {
    if req.uri().path() != PATH {
        return answer(404, serde_json::json!({"error": "not found"}));
    }
    if req.method() != Method::POST {
        return answer(405, serde_json::json!({"error": "POST only"}));
    }
    let heard = hear(req, r).await;
    let hook = Webhook {
        pool: &r.pool,
        validation_url: &r.validation_url,
        freescout_timeout: r.freescout_timeout,
        db_limit: r.db_limit,
        metrics: &r.metrics,
        sweep_interval: r.sweep_interval,
    };
    let reply = webhook_answer(&hook, heard, peer).await;
    let mut resp = answer(reply.status, reply.body);
    if reply.close {
        resp.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    resp
}

/// The call as read: its body whole, its caller authenticated, its ticket.
async fn hear(req: Request<Incoming>, r: &Receiver) -> Heard {
    let (parts, body) = req.into_parts();
    // Read before the caller is known, so bounded in time as well as in size: the listener's
    // header read timeout covers only the head, and a peer that announces a body and goes
    // silent would otherwise hold the connection for ever.
    let read = tokio::time::timeout(r.body_timeout(), Limited::new(body, MAX_BODY).collect()).await;
    let body = match read {
        Err(_) => return Heard::Late(r.body_timeout()),
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) => {
            return Heard::Unreadable(format!("body unreadable or over {MAX_BODY} bytes: {e}"))
        }
    };
    if !r.auth.verify(&parts.headers, &body) {
        return Heard::Unauthenticated;
    }
    match ticket_of(&body) {
        Ok(t) => Heard::Ticket(t),
        Err(e) => Heard::NoTicket(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_its_body_under_its_secret() {
        let auth = Auth::new("signature", "0123456789abcdef-secret").unwrap();
        let body = br#"{"id": 42, "status": "closed"}"#;
        let mut h = http::HeaderMap::new();
        assert!(!auth.verify(&h, body), "no signature");
        h.insert(
            SIGNATURE_HEADER,
            sign(b"0123456789abcdef-secret", body).parse().unwrap(),
        );
        assert!(auth.verify(&h, body));
        assert!(
            !auth.verify(&h, br#"{"id": 43, "status": "closed"}"#),
            "another body"
        );
        h.insert(
            SIGNATURE_HEADER,
            sign(b"another secret!!!!", body).parse().unwrap(),
        );
        assert!(!auth.verify(&h, body), "another secret");
        h.insert(SIGNATURE_HEADER, "not base64 !".parse().unwrap());
        assert!(!auth.verify(&h, body));
        // The secret header is not accepted in signature mode.
        let mut h = http::HeaderMap::new();
        h.insert(SECRET_HEADER, "0123456789abcdef-secret".parse().unwrap());
        assert!(!auth.verify(&h, body));
    }

    #[test]
    fn the_secret_header_must_match_exactly() {
        let auth = Auth::new("secret-header", "0123456789abcdef-secret").unwrap();
        let mut h = http::HeaderMap::new();
        assert!(!auth.verify(&h, b"{}"));
        h.insert(SECRET_HEADER, "0123456789abcdef-secre".parse().unwrap());
        assert!(!auth.verify(&h, b"{}"));
        h.insert(SECRET_HEADER, "0123456789abcdef-secret".parse().unwrap());
        assert!(auth.verify(&h, b"{}"));
    }

    #[test]
    fn short_secrets_and_unknown_modes_are_refused() {
        assert!(Auth::new("signature", "short").is_err());
        assert!(Auth::new("bearer", "0123456789abcdef-secret").is_err());
    }

    #[test]
    fn the_ticket_is_read_from_id_or_ticket_id() {
        assert_eq!(ticket_of(br#"{"id": 42}"#).unwrap(), "42");
        assert_eq!(ticket_of(br#"{"id": "T-9"}"#).unwrap(), "T-9");
        assert_eq!(
            ticket_of(br#"{"ticket_id": "T-1", "id": 5}"#).unwrap(),
            "T-1"
        );
        assert!(ticket_of(br#"{"number": 42}"#).is_err());
        assert!(ticket_of(br#"{"id": 4.5}"#).is_err());
        assert!(ticket_of(b"nonsense").is_err());
    }
}
