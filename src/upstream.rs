//! The upstream leg: one pool of HTTP/1.1 connections to Console per worker thread (hyper's
//! client connections, pooled here), and the body types the data plane answers with.
//!
//! A pool belongs to one single-threaded worker, so a connection is never handed between threads
//! (no cross-thread wake-ups: see the README's Performance section). A connection returns to the
//! pool when the response body it carries has been read to its end; a connection that closed while
//! idle is skipped, and a request it could not take is sent on another one. A request that was
//! written to Console is never sent twice.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

type Sender = SendRequest<Full<Bytes>>;

/// Idle connections kept per worker; more are closed when they become idle.
const MAX_IDLE: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to the upstream: {0}")]
    Connect(#[source] std::io::Error),
    #[error("connecting to the upstream timed out")]
    ConnectTimeout,
    #[error("upstream handshake failed: {0}")]
    Handshake(#[source] hyper::Error),
    #[error("upstream request failed: {0}")]
    Send(#[source] hyper::Error),
}

pub struct Pool {
    addr: SocketAddr,
    connect_timeout: Duration,
    idle: Mutex<Vec<Sender>>,
}

impl Pool {
    pub fn new(addr: SocketAddr, connect_timeout: Duration) -> Arc<Pool> {
        Arc::new(Pool {
            addr,
            connect_timeout,
            idle: Mutex::new(Vec::new()),
        })
    }

    async fn connect(&self) -> Result<Sender, UpstreamError> {
        let stream = tokio::time::timeout(
            self.connect_timeout,
            tokio::net::TcpStream::connect(self.addr),
        )
        .await
        .map_err(|_| UpstreamError::ConnectTimeout)?
        .map_err(UpstreamError::Connect)?;
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on an upstream connection");
        }
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(UpstreamError::Handshake)?;
        tokio::task::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// Sends `req` on an idle connection, or on a new one. Returns the response head and the
    /// connection, to be given back with [`PooledBody`] once the body is read.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<Full<Bytes>>,
    ) -> Result<(Response<Incoming>, Sender), UpstreamError> {
        loop {
            let pooled = self.idle().pop();
            let Some(mut sender) = pooled else { break };
            if sender.is_closed() || (!sender.is_ready() && sender.ready().await.is_err()) {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, sender)),
                Err(mut e) => match e.take_message() {
                    // Never written: the connection closed while idle. Try the next one.
                    Some(back) => req = back,
                    None => return Err(UpstreamError::Send(e.into_error())),
                },
            }
        }
        let mut sender = self.connect().await?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(UpstreamError::Send)?;
        Ok((resp, sender))
    }

    /// The idle list; only its worker thread takes the lock, so it is never contended.
    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Sender>> {
        self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn give_back(&self, sender: Sender) {
        let mut idle = self.idle();
        if idle.len() < MAX_IDLE && !sender.is_closed() {
            idle.push(sender);
        }
    }
}

/// Console's response body, streamed to the client; its connection returns to the pool at the
/// end of the body.
pub struct PooledBody {
    inner: Incoming,
    owner: Option<(Arc<Pool>, Sender)>,
}

impl PooledBody {
    pub fn new(inner: Incoming, pool: Arc<Pool>, sender: Sender) -> PooledBody {
        let mut body = PooledBody {
            inner,
            owner: Some((pool, sender)),
        };
        if body.inner.is_end_stream() {
            body.release();
        }
        body
    }

    fn release(&mut self) {
        if let Some((pool, sender)) = self.owner.take() {
            pool.give_back(sender);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            None => this.release(),
            Some(Ok(_)) if this.inner.is_end_stream() => this.release(),
            // A broken body leaves the connection in an unknown state: it is not reused.
            Some(Err(_)) => this.owner = None,
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What the gateway answers with: its own short text, or Console's streamed body.
pub enum GatewayBody {
    Own(Option<Bytes>),
    Upstream(PooledBody),
}

impl GatewayBody {
    pub fn text(s: &'static str) -> GatewayBody {
        GatewayBody::Own(Some(Bytes::from_static(s.as_bytes())))
    }

    pub fn bytes(b: impl Into<Bytes>) -> GatewayBody {
        GatewayBody::Own(Some(b.into()))
    }
}

impl Body for GatewayBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            GatewayBody::Own(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            GatewayBody::Upstream(p) => Pin::new(p).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            GatewayBody::Own(b) => b.is_none(),
            GatewayBody::Upstream(p) => p.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            GatewayBody::Own(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            GatewayBody::Upstream(p) => p.size_hint(),
        }
    }
}
