//! The admin listener: `/healthz` (process alive), `/readyz` (mapping loaded and the database
//! answered), `/metrics` (Prometheus text). A deliberately tiny HTTP/1.1 responder: GET only,
//! one request per connection, bounded reads.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

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
            let _ = tokio::time::timeout(Duration::from_secs(5), handle(stream, gw)).await;
        });
    }
}

async fn handle(mut stream: TcpStream, gw: Arc<Gateway>) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || buf.len() > 8192 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let path = path.split(|&b| b == b'?').next().unwrap_or_default();
    let (status, ctype, body) = match (method, path) {
        (b"GET", b"/healthz") => (200, "text/plain", "ok\n".to_string()),
        (b"GET", b"/readyz") => ready(&gw).await,
        (b"GET", b"/metrics") => {
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
        (b"GET", _) => (404, "text/plain", "not found\n".to_string()),
        _ => (405, "text/plain", "method not allowed\n".to_string()),
    };
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

async fn ready(gw: &Gateway) -> (u16, &'static str, String) {
    let version = gw.mapping.load().version.clone();
    let db = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(gw.identity.pool()),
    )
    .await;
    match db {
        Ok(Ok(_)) => (200, "text/plain", format!("ready mapping={version}\n")),
        Ok(Err(e)) => (503, "text/plain", format!("database unavailable: {e}\n")),
        Err(_) => (
            503,
            "text/plain",
            "database unavailable: timed out\n".to_string(),
        ),
    }
}
