//! The recording upstream: a real HTTP/1.1 server standing in for Console.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// A real HTTP/1.1 server that records every request and answers 200 (or `status`), after
/// `delay` for paths starting with /slow (5 s), or the milliseconds an `X-Test-Delay-Ms`
/// request header asks for.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub status: Arc<Mutex<u16>>,
    /// TCP connections accepted (keep-alive pooling keeps this low).
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(Mutex::new(200u16));
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (s2, st2, c2) = (seen.clone(), status.clone(), connections.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                c2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (seen, status) = (s2.clone(), st2.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (seen, status) = (seen.clone(), status.clone());
                        async move {
                            let method = req.method().to_string();
                            let target = req
                                .uri()
                                .path_and_query()
                                .map(|p| p.as_str().to_string())
                                .unwrap_or_default();
                            let headers: Vec<(String, String)> = req
                                .headers()
                                .iter()
                                .map(|(k, v)| {
                                    (
                                        k.as_str().to_string(),
                                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                    )
                                })
                                .collect();
                            if target.starts_with("/slow") {
                                tokio::time::sleep(Duration::from_secs(5)).await;
                            }
                            // A test can ask for a shorter delay of its own.
                            let delay_ms = headers
                                .iter()
                                .find(|(k, _)| k == "x-test-delay-ms")
                                .and_then(|(_, v)| v.parse::<u64>().ok());
                            if let Some(ms) = delay_ms {
                                tokio::time::sleep(Duration::from_millis(ms)).await;
                            }
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes().to_vec())
                                .unwrap_or_default();
                            let n = body.len();
                            seen.lock().unwrap().push(Seen {
                                method,
                                target,
                                headers,
                                body,
                            });
                            let code = *status.lock().unwrap();
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .status(code)
                                    .body(Full::new(Bytes::from(format!(
                                        "upstream ok, body {n} bytes\n"
                                    ))))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            seen,
            status,
            connections,
        }
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}
