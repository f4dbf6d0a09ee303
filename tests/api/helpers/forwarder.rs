//! A TCP forwarder that can blackhole the connections open at one moment, as a NAT or load
//! balancer that dropped its state does: those connections stay open and carry nothing in either
//! direction (what is sent on them is read and discarded, nothing is written, nothing is closed),
//! while connections made afterwards pass normally. It counts what a test needs to see whether
//! the client (the gateway) gave a silent connection up: it closed its side (EOF or reset).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// At most this much of what a client sends on a silent connection is kept, for diagnostics.
const KEPT: usize = 512;
/// And this much of the last it sent before the connection went silent.
const KEPT_BEFORE: usize = 128;

/// One connection through the forwarder.
struct Conn {
    /// Neither side has closed it (a silent one: the client has not).
    open: AtomicBool,
    /// Blackholed: carries nothing from here on.
    silent: tokio::sync::watch::Sender<bool>,
    /// The client closed its side (EOF or an error reading from it) while the connection was
    /// silent.
    client_gave_up: AtomicBool,
    /// The first bytes the client sent after the connection went silent.
    sent_while_silent: Mutex<Vec<u8>>,
    /// The last bytes it sent before (what the connection was used for).
    sent_before: Mutex<Vec<u8>>,
}

impl Conn {
    fn silent(&self) -> bool {
        *self.silent.borrow()
    }
}

pub struct Forwarder {
    pub addr: SocketAddr,
    conns: Arc<Mutex<Vec<Arc<Conn>>>>,
    accept: tokio::task::AbortHandle,
}

/// A silent connection the client still keeps open, as the forwarder sees it.
#[derive(Debug, Clone)]
pub struct SilentConn {
    /// Its number, in the order the forwarder accepted connections.
    pub number: usize,
    /// What the client sent on it after it went silent (escaped; the first [`KEPT`] bytes).
    pub sent: String,
    /// The last bytes it sent before (escaped; at most [`KEPT_BEFORE`]).
    pub sent_before: String,
}

impl Forwarder {
    /// Listens on a loopback port (port 0) and forwards every connection to `target`.
    pub async fn start(target: &str) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<Arc<Conn>>>> = Arc::default();
        let (all, target) = (conns.clone(), target.to_string());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                let conn = Arc::new(Conn {
                    open: AtomicBool::new(true),
                    silent: tokio::sync::watch::Sender::new(false),
                    client_gave_up: AtomicBool::new(false),
                    sent_while_silent: Mutex::new(Vec::new()),
                    sent_before: Mutex::new(Vec::new()),
                });
                all.lock().unwrap().push(conn.clone());
                let target = target.clone();
                tokio::spawn(async move {
                    match TcpStream::connect(&target).await {
                        Ok(outbound) => carry(inbound, outbound, &conn).await,
                        Err(_) => drop(inbound),
                    }
                    conn.open.store(false, Ordering::SeqCst);
                });
            }
        })
        .abort_handle();
        Forwarder {
            addr,
            conns,
            accept,
        }
    }

    /// Every connection open now carries nothing from here on, in either direction, and is
    /// never closed by the forwarder; new connections pass. Returns how many went silent.
    pub fn blackhole_existing(&self) -> usize {
        let conns = self.conns.lock().unwrap();
        let mut n = 0;
        for c in conns.iter() {
            if c.open.load(Ordering::SeqCst) && !c.silent() {
                c.silent.send_replace(true);
                n += 1;
            }
        }
        n
    }

    /// Connections open: accepted and closed by neither side.
    pub fn open(&self) -> usize {
        let conns = self.conns.lock().unwrap();
        conns
            .iter()
            .filter(|c| c.open.load(Ordering::SeqCst))
            .count()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.conns.lock().unwrap().len()
    }

    /// The silent connections the client still keeps open.
    pub fn silent_open(&self) -> Vec<SilentConn> {
        let conns = self.conns.lock().unwrap();
        conns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.silent() && c.open.load(Ordering::SeqCst))
            .map(|(number, c)| SilentConn {
                number,
                sent: escape(&c.sent_while_silent.lock().unwrap()),
                sent_before: escape(&c.sent_before.lock().unwrap()),
            })
            .collect()
    }

    /// The silent connections whose client closed its side.
    pub fn silent_given_up(&self) -> usize {
        let conns = self.conns.lock().unwrap();
        conns
            .iter()
            .filter(|c| c.silent() && c.client_gave_up.load(Ordering::SeqCst))
            .count()
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Copies both ways until either side closes (then both close: PostgreSQL's peers never
/// half-close) or, once the connection is silent, until the client closes: from then on
/// whatever either side sends is discarded and nothing is written or closed on its behalf.
async fn carry(inbound: TcpStream, outbound: TcpStream, conn: &Conn) {
    let (mut from_client, mut to_client) = inbound.into_split();
    let (mut from_server, mut to_server) = outbound.into_split();
    let mut silence = conn.silent.subscribe();
    let (mut a, mut b) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    let mut server_open = true;
    loop {
        tokio::select! {
            r = from_client.read(&mut a) => match r {
                Ok(0) | Err(_) => {
                    if conn.silent() {
                        conn.client_gave_up.store(true, Ordering::SeqCst);
                    }
                    return;
                }
                Ok(n) if conn.silent() => {
                    let mut kept = conn.sent_while_silent.lock().unwrap();
                    let room = KEPT.saturating_sub(kept.len()).min(n);
                    kept.extend_from_slice(&a[..room]);
                }
                Ok(n) => {
                    {
                        let mut last = conn.sent_before.lock().unwrap();
                        last.extend_from_slice(&a[..n]);
                        let excess = last.len().saturating_sub(KEPT_BEFORE);
                        last.drain(..excess);
                    }
                    if to_server.write_all(&a[..n]).await.is_err() {
                        return;
                    }
                }
            },
            r = from_server.read(&mut b), if server_open => match r {
                // Not passed on: the client must find out by itself.
                Ok(0) | Err(_) if conn.silent() => server_open = false,
                Ok(0) | Err(_) => return,
                Ok(_) if conn.silent() => {}
                Ok(n) => {
                    if to_client.write_all(&b[..n]).await.is_err() {
                        return;
                    }
                }
            },
            // Wakes the loop when the connection goes silent (nothing to do but look again).
            _ = silence.changed() => {}
        }
    }
}

/// Bytes as text: printable ASCII kept, the rest as `\xNN`.
fn escape(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| {
            if (0x20..0x7f).contains(&b) {
                (b as char).to_string()
            } else {
                format!("\\x{b:02x}")
            }
        })
        .collect()
}
