//! The admin listener: `/healthz` (process alive), `/readyz` (mapping loaded and the database
//! answered; a routes file on disk that was not applied is named, the status stays 200),
//! `/metrics` (Prometheus text). Served by hyper, GET only.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::state::Gateway;

pub async fn serve(listener: TcpListener, gw: Arc<Gateway>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let gw = gw.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let gw = gw.clone();
                async move { Ok::<_, Infallible>(handle(req, &gw).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Some(Duration::from_secs(5)))
                .max_buf_size(16 * 1024)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}

async fn handle(req: Request<Incoming>, gw: &Gateway) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => (200, "text/plain", "ok\n".to_string()),
        (&Method::GET, "/readyz") => ready(gw).await,
        (&Method::GET, "/metrics") => {
            let (sessions, principals) = gw.identity.cache_sizes();
            let m = &gw.metrics;
            m.cache_entries
                .with_label_values(&["session"])
                .set(sessions as i64);
            m.cache_entries
                .with_label_values(&["principal"])
                .set(principals as i64);
            let pool = gw.identity.pool();
            m.db_pool
                .with_label_values(&["open"])
                .set(pool.size() as i64);
            m.db_pool
                .with_label_values(&["idle"])
                .set(pool.num_idle() as i64);
            (200, "text/plain; version=0.0.4", m.render())
        }
        (&Method::GET, _) => (404, "text/plain", "not found\n".to_string()),
        _ => (405, "text/plain", "method not allowed\n".to_string()),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = StatusCode::from_u16(status).expect("a valid status");
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(ctype),
    );
    resp
}

async fn ready(gw: &Gateway) -> (u16, &'static str, String) {
    let dead = gw.tasks.dead();
    if !dead.is_empty() {
        return (
            503,
            "text/plain",
            format!("background task stopped: {}\n", dead.join(", ")),
        );
    }
    let version = gw.mapping.load().version.clone();
    let db = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(gw.identity.pool()),
    )
    .await;
    match db {
        Ok(Ok(_)) => {
            let mut body = format!("ready mapping={version}\n");
            if let Some(why) = gw.file_rejected() {
                // Still ready: the live mapping serves. The operator who just saved a file
                // sees here that it is not the one in force.
                body.push_str(&format!(
                    "routes file not applied (mapping={version} stays live): {why}\n"
                ));
            }
            (200, "text/plain", body)
        }
        Ok(Err(e)) => {
            let cause = match &e {
                sqlx::Error::PoolTimedOut => {
                    crate::db::why_unreachable(gw.identity.pool(), Duration::from_secs(2)).await
                }
                _ => None,
            };
            let body = match cause {
                Some(cause) => format!("database unavailable: {cause}\n"),
                None => format!("database unavailable: {e}\n"),
            };
            (503, "text/plain", body)
        }
        Err(_) => (
            503,
            "text/plain",
            "database unavailable: timed out\n".to_string(),
        ),
    }
}
