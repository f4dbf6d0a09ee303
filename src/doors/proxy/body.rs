//! The request body: read whole before Console sees it, within the size limit, the body-read
//! timeout and the bytes all workers may hold at once.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body, Incoming};

use super::Worker;
use crate::policy::forwarded::NotForwarded;

/// The request-body bytes all workers may hold at once (`--max-buffered-body-bytes`). Bodies
/// are read whole before Console sees them; without a bound, many slow uploads at once (each
/// within `--max-body-bytes`, each sending a byte before the body-read timeout) could take all
/// of the host's memory.
#[derive(Debug)]
pub struct BodyBudget {
    left: std::sync::atomic::AtomicUsize,
}

impl BodyBudget {
    pub fn new(bytes: usize) -> Arc<BodyBudget> {
        Arc::new(BodyBudget {
            left: std::sync::atomic::AtomicUsize::new(bytes),
        })
    }

    /// Bytes not held by any request right now.
    pub fn left(&self) -> usize {
        self.left.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The part of the [`BodyBudget`] one request holds; given back when it is dropped.
pub(super) struct Held {
    budget: Arc<BodyBudget>,
    bytes: usize,
}

impl Held {
    pub(super) fn new(budget: &Arc<BodyBudget>) -> Held {
        Held {
            budget: budget.clone(),
            bytes: 0,
        }
    }

    /// Holds `n` more bytes, or nothing more when the budget has not that many left.
    fn grow(&mut self, n: usize) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let took = self
            .budget
            .left
            .fetch_update(Relaxed, Relaxed, |left| left.checked_sub(n));
        if took.is_ok() {
            self.bytes += n;
        }
        took.is_ok()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget
            .left
            .fetch_add(self.bytes, std::sync::atomic::Ordering::Relaxed);
    }
}

pub(super) enum BodyError {
    /// The client paused longer than the body-read timeout.
    TimedOut,
    /// Over the size limit, malformed, or cut short.
    Read(Box<dyn std::error::Error + Send + Sync>),
    /// The bodies being read by all workers hold `--max-buffered-body-bytes` already.
    Busy,
}

impl BodyError {
    /// What the aftermath says of it ([`NotForwarded`]), with the limit it met.
    pub(super) fn not_forwarded(self, w: &Worker) -> NotForwarded {
        match self {
            BodyError::Busy => NotForwarded::BodyBusy {
                left: w.bodies.left(),
            },
            BodyError::TimedOut => NotForwarded::BodyTimedOut {
                timeout_ms: w.body_read_timeout.as_millis() as u64,
            },
            BodyError::Read(e) if e.is::<http_body_util::LengthLimitError>() => {
                NotForwarded::BodyTooLarge {
                    limit: w.max_body_bytes,
                }
            }
            BodyError::Read(e) => NotForwarded::BodyMalformed {
                error: e.to_string(),
            },
        }
    }
}

/// The most a body's buffer is made at once for its declared length; past it, it grows with the
/// bytes received.
const PRESIZE_MAX: usize = 64 * 1024;

/// Reads a request body whole, up to the worker's size limit, each part within the body-read
/// timeout of the one before (like nginx's `client_body_timeout`: a slow upload that keeps
/// sending is read; a client that stops is not waited for). Trailers are dropped.
pub(super) async fn read_body(w: &Worker, body: Incoming) -> Result<(Bytes, Held), BodyError> {
    // With a Content-Length, the buffer is made that size once, not grown by doubling, up to
    // PRESIZE_MAX: the budget counts bytes received, and a length only declared must not reserve
    // more (300 connections declaring 16 MiB and sending 2 bytes each reserved 10 GB of address
    // space, which a strict overcommit or an RLIMIT_AS turns into an abort).
    let declared = body
        .size_hint()
        .exact()
        .map_or(0, |n| (n as usize).min(PRESIZE_MAX));
    let mut held = Held::new(&w.bodies);
    let mut body = Limited::new(body, w.max_body_bytes);
    let mut first: Option<Bytes> = None;
    let mut more: Option<BytesMut> = None;
    loop {
        let next = std::pin::pin!(body.frame());
        let frame = match tokio::time::timeout(w.body_read_timeout, next).await {
            Err(_) => return Err(BodyError::TimedOut),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(BodyError::Read(e)),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if !held.grow(data.len()) {
            return Err(BodyError::Busy);
        }
        if let Some(m) = more.as_mut() {
            m.extend_from_slice(&data);
        } else if let Some(f) = first.take() {
            let size = (f.len() + data.len()).max(declared.min(w.max_body_bytes));
            let mut m = BytesMut::with_capacity(size);
            m.extend_from_slice(&f);
            m.extend_from_slice(&data);
            more = Some(m);
        } else {
            first = Some(data);
        }
    }
    let bytes = more.map(BytesMut::freeze).or(first).unwrap_or_default();
    Ok((bytes, held))
}
