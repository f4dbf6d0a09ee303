//! The gateway's outbound HTTP. [`client`] is the client of the outbound POSTs over HTTP or
//! HTTPS (the OpenTelemetry exporter, Console's audit writer): rustls with the webpki roots
//! (ring), HTTP/1.1, `http://` or `https://`, a connect timeout, idle connections kept 30 s.
//! [`plain`] is the plain-HTTP client of FreeScout's status requests and the alert webhook.
//!
//! The hand-built clients (FreeScout's, the alert webhook, the audit writer) send through
//! [`exchange`], which waits a bounded time for the answer's head. [`accepted`] reads a POST's
//! answer: a 2xx's body is never read, and of a failure's only the start ([`error_text`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::client::legacy::Client;

/// The client [`client`] builds.
pub type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A client whose connections are made within `connect_timeout`.
pub fn client(connect_timeout: Duration) -> HttpsClient {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(https)
}

/// A plain-HTTP client (`http://` only). One per call: the callers are rare, and a client
/// shared across the proxy's runtimes would hand out connections whose tasks live on another.
pub fn plain<B>() -> Client<HttpConnector, B>
where
    B: hyper::body::Body + Send,
    B::Data: Send,
{
    Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

/// Why an exchange has no answer.
#[derive(Debug)]
pub enum Unanswered {
    /// The answer's head did not come in time.
    TimedOut,
    /// The request failed (connect, write, the answer's head); the error's chain as text.
    Failed(String),
}

/// Sends `req` and waits at most `timeout` for the answer's head. Its body is the caller's to
/// read, under a bound of its own.
pub async fn exchange<C, B>(
    client: &Client<C, B>,
    req: hyper::Request<B>,
    timeout: Duration,
) -> Result<hyper::Response<Incoming>, Unanswered>
where
    C: Connect + Clone + Send + Sync + 'static,
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::time::timeout(timeout, client.request(req))
        .await
        .map_err(|_| Unanswered::TimedOut)?
        .map_err(|e| Unanswered::Failed(format!("{e:#}")))
}

/// Ok on a 2xx answer, as soon as its head arrived: its body is never read (a slow or endless
/// one cannot turn a delivery into a timeout), and the connection is closed with it. Otherwise
/// the status and the start of the body ([`error_text`]).
pub async fn accepted(resp: hyper::Response<Incoming>) -> Result<(), String> {
    let status = resp.status();
    if status.is_success() {
        // Dropped unread: the connection is closed, whatever the body would have been.
        return Ok(());
    }
    let said = error_text(resp.into_body()).await;
    if said.is_empty() {
        Err(format!("HTTP {}", status.as_u16()))
    } else {
        Err(format!("HTTP {}: {said}", status.as_u16()))
    }
}

/// Of a failure's body, the bytes kept for its error text (the rest is never read)...
const ERROR_TEXT_BYTES: usize = 512;
/// ...and how long they are waited for.
const ERROR_TEXT_TIMEOUT: Duration = Duration::from_secs(1);

/// The start of a failure's body as one line of text: at most 512 bytes, read
/// within a second (what arrived by then; nothing if it was not text).
pub async fn error_text(mut body: Incoming) -> String {
    let mut kept = Vec::new();
    // Out of time: what arrived by then is the text.
    let _ = tokio::time::timeout(ERROR_TEXT_TIMEOUT, async {
        while kept.len() < ERROR_TEXT_BYTES {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        let room = ERROR_TEXT_BYTES - kept.len();
                        kept.extend_from_slice(&data[..data.len().min(room)]);
                    }
                }
                Some(Err(_)) | None => break,
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&kept);
    let line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    line.trim().to_string()
}
