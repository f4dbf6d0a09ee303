//! A TCP forwarder in front of PostgreSQL that reads the server's side of the wire protocol, to
//! count round trips where they happen (issue 51): every client flight that ends in `Sync` or a
//! simple `Query` is answered by exactly one `ReadyForQuery` ('Z'), so the 'Z's of one exchange
//! are its round trips. An exchange runs from the first bytes a client sends while its
//! connection is idle to the 'Z' that reports the connection idle again ('I'): one transaction,
//! explicit or implicit, with everything the client sent in it.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One transaction as the server saw it.
#[derive(Clone, Debug, Default)]
pub struct Exchange {
    /// Every byte the client sent in it.
    pub sent: Vec<u8>,
    /// Its `ReadyForQuery` messages: one per round trip.
    pub round_trips: usize,
    /// Which client connection it came on (numbered from 0 in the order they were accepted).
    pub conn: usize,
    /// When its first byte from the client was read.
    pub began: Option<std::time::Instant>,
    /// When its last `ReadyForQuery` was read from the server (before the client had it).
    pub ended: Option<std::time::Instant>,
}

impl Exchange {
    /// Whether the client's bytes hold `needle`.
    pub fn mentions(&self, needle: &str) -> bool {
        self.sent
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    }
}

pub struct PgWire {
    /// The database's URL, through this forwarder, without TLS (the protocol must be readable).
    pub url: String,
    log: Arc<Mutex<Vec<Exchange>>>,
}

impl PgWire {
    pub async fn start(db_url: &str) -> PgWire {
        let target = db_host_port(db_url);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut url = db_url_via(db_url, listener.local_addr().unwrap());
        url.push_str(if url.contains('?') { "&" } else { "?" });
        url.push_str("sslmode=disable");
        let log: Arc<Mutex<Vec<Exchange>>> = Arc::default();
        let all = log.clone();
        tokio::spawn(async move {
            for conn in 0.. {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let Ok(server) = TcpStream::connect(&target).await else {
                    continue;
                };
                let log = all.clone();
                tokio::spawn(async move {
                    let current: Arc<Mutex<Exchange>> = Arc::new(Mutex::new(Exchange {
                        conn,
                        ..Exchange::default()
                    }));
                    let (mut from_client, mut to_client) = client.into_split();
                    let (mut from_server, mut to_server) = server.into_split();
                    let asked = {
                        let current = current.clone();
                        async move {
                            let mut buf = vec![0u8; 64 * 1024];
                            loop {
                                let n = match from_client.read(&mut buf).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => n,
                                };
                                {
                                    let mut cur = current.lock().unwrap();
                                    cur.began.get_or_insert_with(std::time::Instant::now);
                                    cur.sent.extend_from_slice(&buf[..n]);
                                }
                                if to_server.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    };
                    let answered = async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        // Bytes of a message not complete yet.
                        let mut pending: Vec<u8> = Vec::new();
                        loop {
                            let n = match from_server.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            pending.extend_from_slice(&buf[..n]);
                            // Every complete message: its type byte, then its length (itself
                            // included). Read before the bytes are passed on, so the client
                            // cannot start the next exchange before this one is logged.
                            loop {
                                if pending.len() < 5 {
                                    break;
                                }
                                let len =
                                    u32::from_be_bytes(pending[1..5].try_into().unwrap()) as usize;
                                if pending.len() < 1 + len {
                                    break;
                                }
                                if pending[0] == b'Z' && len == 5 {
                                    let mut cur = current.lock().unwrap();
                                    cur.round_trips += 1;
                                    if pending[5] == b'I' {
                                        cur.ended = Some(std::time::Instant::now());
                                        let next = Exchange {
                                            conn,
                                            ..Exchange::default()
                                        };
                                        log.lock()
                                            .unwrap()
                                            .push(std::mem::replace(&mut *cur, next));
                                    }
                                }
                                pending.drain(..1 + len);
                            }
                            if to_client.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    };
                    tokio::select! {
                        _ = asked => {}
                        _ = answered => {}
                    }
                });
            }
        });
        PgWire { url, log }
    }

    /// Every exchange ended so far, in the order they ended.
    pub fn exchanges(&self) -> Vec<Exchange> {
        self.log.lock().unwrap().clone()
    }
}

use super::{db_host_port, db_url_via};
