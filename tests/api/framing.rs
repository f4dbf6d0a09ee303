//! Message framing and connection handling of the hyper data plane: what Console receives is
//! exactly what the gateway decided on, every request is answered or its connection closed, and
//! slow or oversized clients cannot hold a worker.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

/// Every response on a connection read to its end: (status, headers lower-cased, body).
async fn responses(addr: std::net::SocketAddr, bytes: &[u8]) -> Vec<(u16, Vec<(String, String)>)> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("the gateway closes the connection")
        .ok();
    let mut out = Vec::new();
    let mut rest = &buf[..];
    while !rest.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        let n = match resp.parse(rest) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!(
                "unparsable answer {other:?}: {}",
                String::from_utf8_lossy(rest)
            ),
        };
        let hs: Vec<(String, String)> = resp
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        let len: usize = hs
            .iter()
            .find(|(k, _)| k == "content-length")
            .map_or(0, |(_, v)| v.parse().unwrap());
        out.push((resp.code.unwrap(), hs));
        rest = &rest[(n + len).min(rest.len())..];
    }
    out
}

fn header<'a>(hs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    hs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_refused_in_either_order() {
    let env = Env::core().await;
    let (_, token) = env.db.admin_with_roles(&["console-user"]).await;
    let c = format!("Cookie: console_session={token}\r\n");
    for framing in [
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        "Content-Length: 5\r\nContent-Length: 5\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
    ] {
        let req = format!(
            "POST /upload HTTP/1.1\r\nHost: c\r\n{c}{framing}\r\n0\r\n\r\nGET /upload HTTP/1.1\r\nHost: c\r\n\r\n"
        );
        let answers = responses(env.gw.addr, req.as_bytes()).await;
        assert_eq!(answers.len(), 1, "{framing:?}: {answers:?}");
        assert_eq!(answers[0].0, 400, "{framing:?}");
        assert_eq!(header(&answers[0].1, "connection"), Some("close"));
    }
    assert_eq!(env.up.count(), 0, "{:?}", env.up.requests());
    assert!(
        env.gw
            .metric("rbac_gateway_refusals_total{reason=\"ambiguous_framing\"}")
            .await
            >= 4.0
    );
}

#[tokio::test]
async fn a_malformed_or_cut_body_never_reaches_console() {
    let env = Env::core().await;
    let (_, token) = env.db.admin_with_roles(&["console-user"]).await;
    let c = format!("Cookie: console_session={token}\r\n");
    // A chunk size that is not hex, after a valid first chunk.
    let bad = format!(
        "POST /upload HTTP/1.1\r\nHost: c\r\n{c}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nxx\r\n0\r\n\r\n"
    );
    let answers = responses(env.gw.addr, bad.as_bytes()).await;
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(answers[0].0, 400);
    // A Content-Length body cut short by the client.
    let mut s = TcpStream::connect(env.gw.addr).await.unwrap();
    s.write_all(
        format!("POST /upload HTTP/1.1\r\nHost: c\r\n{c}Content-Length: 100\r\n\r\nonly ten..")
            .as_bytes(),
    )
    .await
    .unwrap();
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    // The gateway may answer 400 or just close: either way nothing is forwarded.
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
        .await
        .unwrap()
        .ok();
    // The gateway closed the connection: anything it forwarded was received before that.
    assert_eq!(env.up.count(), 0, "{:?}", env.up.requests());
    // And a well-formed body still arrives whole, with an exact length.
    let good = format!(
        "POST /upload HTTP/1.1\r\nHost: c\r\n{c}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    );
    let answers = responses(env.gw.addr, good.as_bytes()).await;
    assert_eq!(answers[0].0, 200);
    let seen = env.up.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, b"hello");
    assert_eq!(seen[0].header("content-length"), Some("5"));
    assert_eq!(seen[0].header("transfer-encoding"), None);
    // An empty chunked body is a body too: Console is told its length (0), as it is told any
    // other's, not left to infer it from the absence of framing headers.
    let empty = format!(
        "POST /upload HTTP/1.1\r\nHost: c\r\n{c}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n"
    );
    let answers = responses(env.gw.addr, empty.as_bytes()).await;
    assert_eq!(answers[0].0, 200);
    let seen = env.up.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].body, b"");
    assert_eq!(seen[1].header("content-length"), Some("0"));
    assert_eq!(seen[1].header("transfer-encoding"), None);
}

#[tokio::test]
async fn pipelined_requests_are_each_answered_in_order() {
    let env = Env::core().await;
    let (_, token) = env.db.admin_with_roles(&["console-audit-user"]).await;
    let c = format!("Cookie: console_session={token}\r\n");
    // Three body-less requests in one write: three answers, in order.
    let req = format!(
        "GET /console/customers/1 HTTP/1.1\r\nHost: c\r\n{c}\r\nGET /ops HTTP/1.1\r\nHost: c\r\n{c}\r\nGET /console/customers/3 HTTP/1.1\r\nHost: c\r\n{c}Connection: close\r\n\r\n"
    );
    let answers = responses(env.gw.addr, req.as_bytes()).await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.0).collect();
    assert_eq!(statuses, [200, 403, 200]);
    let targets: Vec<String> = env.up.requests().into_iter().map(|s| s.target).collect();
    assert_eq!(targets, ["/console/customers/1", "/console/customers/3"]);
    // A request with a body, then another in the same write: the first answer closes the
    // connection (nothing after a body is taken as a request on faith), never a silent drop
    // after a keep-alive answer.
    let req = format!(
        "POST /console/customers/2 HTTP/1.1\r\nHost: c\r\n{c}Content-Length: 4\r\n\r\nbodyGET /console/customers/4 HTTP/1.1\r\nHost: c\r\n{c}\r\n"
    );
    let answers = responses(env.gw.addr, req.as_bytes()).await;
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(answers[0].0, 200);
    assert_eq!(header(&answers[0].1, "connection"), Some("close"));
    assert_eq!(env.up.count(), 3);
}

#[tokio::test]
async fn a_client_that_half_closes_after_its_requests_gets_every_answer() {
    let env = Env::core().await;
    let (_, token) = env.db.admin_with_roles(&["console-audit-user"]).await;
    let c = format!("Cookie: console_session={token}\r\n");
    let rows_before = env.db.audit_count().await;
    // `printf ... | nc -N`: the requests, then FIN at once. Each is decided and answered (the
    // allowed one forwarded, the denied one with its row), then the connection closes.
    let req = format!(
        "GET /console/customers/1 HTTP/1.1\r\nHost: c\r\n{c}\r\nGET /ops HTTP/1.1\r\nHost: c\r\n{c}\r\n"
    );
    let mut s = TcpStream::connect(env.gw.addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    s.shutdown().await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("the gateway closes the connection after its answers")
        .unwrap();
    let text = String::from_utf8_lossy(&buf);
    let statuses: Vec<&str> = text
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &text[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["200", "403"], "{text}");
    let targets: Vec<String> = env.up.requests().into_iter().map(|s| s.target).collect();
    assert_eq!(targets, ["/console/customers/1"]);
    assert_eq!(env.db.audit_count().await, rows_before + 1);
}

#[tokio::test]
async fn hosts_upgrades_and_http10() {
    let env = Env::core().await;
    let (_, token) = env.db.admin_with_roles(&["console-audit-user"]).await;
    let c = format!("Cookie: console_session={token}\r\n");
    for (what, head) in [
        ("empty host", "Host: \r\n".to_string()),
        ("host with a path", "Host: console/secrets\r\n".to_string()),
        ("host with user info", "Host: evil@console\r\n".to_string()),
        ("no host", String::new()),
        ("two hosts", "Host: a\r\nHost: b\r\n".to_string()),
        (
            "websocket upgrade",
            "Host: c\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n".to_string(),
        ),
        (
            "h2c upgrade",
            "Host: c\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n".to_string(),
        ),
    ] {
        let req = format!("GET /console/customers/1 HTTP/1.1\r\n{head}{c}Connection: close\r\n\r\n");
        let r = send(env.gw.addr, req.as_bytes()).await.unwrap();
        assert_eq!(r.status, 400, "{what}");
    }
    assert_eq!(env.up.count(), 0);
    // HTTP/1.0 without Host is answered, and Console gets a Host.
    let req = format!("GET /console/customers/1 HTTP/1.0\r\n{c}\r\n");
    let r = send(env.gw.addr, req.as_bytes()).await.unwrap();
    assert_eq!(r.status, 200);
    let seen = env.up.requests();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].header("host").is_some());
}

#[tokio::test]
async fn oversized_heads_and_slow_clients_are_cut_off() {
    let env = Env::with(core_routes(), |o| {
        o.arg("--header-read-timeout-ms")
            .arg("500")
            .arg("--max-header-bytes")
            .arg("4096")
            .arg("--max-headers")
            .arg("20")
    })
    .await;
    let long = format!(
        "GET /ops HTTP/1.1\r\nHost: c\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(8000)
    );
    let r = send(env.gw.addr, long.as_bytes()).await.unwrap();
    assert_eq!(r.status, 431);
    let many: String = (0..30).map(|i| format!("X-H{i}: v\r\n")).collect();
    let r = send(
        env.gw.addr,
        format!("GET /ops HTTP/1.1\r\nHost: c\r\n{many}Connection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 431);
    // A client that never finishes its head is disconnected after the header-read timeout.
    let mut s = TcpStream::connect(env.gw.addr).await.unwrap();
    s.write_all(b"GET /ops HTTP/1.1\r\nHost: c\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "a slow client held its connection for 5 s");
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(env.up.count(), 0);

    // On a keep-alive connection, the head of a later request is held to the same timeout (its
    // timer is the connection's one, set again for each head: dataplane/header_timer.rs).
    let mut s = TcpStream::connect(env.gw.addr).await.unwrap();
    for _ in 0..2 {
        s.write_all(b"GET /ops HTTP/1.1\r\nHost: c\r\n\r\n")
            .await
            .unwrap();
        let head = read_response_head(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 302"), "{head}");
        assert!(
            !head.to_ascii_lowercase().contains("connection: close"),
            "{head}"
        );
    }
    s.write_all(b"GET /ops HTTP/1.1\r\nHost: c\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(
        read.is_ok(),
        "a slow later head held its connection for 5 s"
    );
    assert!(started.elapsed() >= Duration::from_millis(400));
}

/// A response's head and its `Content-Length` body read off `s`; the head as text.
async fn read_response_head(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut b = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut b).await.unwrap(),
            1,
            "the answer ended early: {got:?}"
        );
        got.push(b[0]);
    }
    let head = String::from_utf8(got).unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    s.read_exact(&mut body).await.unwrap();
    head
}

#[tokio::test]
async fn a_stalled_body_is_answered_408_and_a_slow_one_is_read() {
    let env = Env::with(core_routes(), |o| {
        o.arg("--body-read-timeout-ms").arg("500")
    })
    .await;
    let (_, token) = env.db.admin_with_roles(&["console-user"]).await;
    let c = format!("Cookie: console_session={token}\r\n");
    // A Content-Length body that stops arriving, and a chunked one that stops mid-chunk: each
    // gets 408 and a close once the client has paused for the timeout; nothing is forwarded.
    for (what, head) in [
        ("content-length", format!("POST /upload HTTP/1.1\r\nHost: c\r\n{c}Content-Length: 10\r\n\r\nabc")),
        ("chunked", format!("POST /upload HTTP/1.1\r\nHost: c\r\n{c}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n8\r\nab")),
    ] {
        let mut s = TcpStream::connect(env.gw.addr).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        let started = std::time::Instant::now();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "{what}: a stalled body held its connection for 5 s");
        assert!(started.elapsed() >= Duration::from_millis(400), "{what}");
        let text = String::from_utf8_lossy(&buf);
        assert!(text.starts_with("HTTP/1.1 408 "), "{what}: {text}");
        assert!(text.to_ascii_lowercase().contains("connection: close"), "{what}: {text}");
    }
    assert_eq!(env.up.count(), 0, "{:?}", env.up.requests());
    assert_eq!(
        env.gw
            .metric("rbac_gateway_refusals_total{reason=\"body_timeout\"}")
            .await,
        2.0
    );
    // A body sent slowly, each part within the timeout, is read whole and forwarded.
    let mut s = TcpStream::connect(env.gw.addr).await.unwrap();
    s.write_all(
        format!(
            "POST /upload HTTP/1.1\r\nHost: c\r\n{c}Content-Length: 8\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // 800 ms in all, in pauses of 200 ms: the timeout is between parts, not for the whole body.
    for part in [&b"ab"[..], b"cd", b"ef", b"gh"] {
        tokio::time::sleep(Duration::from_millis(200)).await;
        s.write_all(part).await.unwrap();
    }
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    let seen = env.up.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, b"abcdefgh");
    assert_eq!(seen[0].header("content-length"), Some("8"));
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish() {
    let mut env = Env::with(core_routes(), |o| {
        o.arg("--shutdown-grace")
            .arg("10")
            .arg("--upstream-read-timeout-ms")
            .arg("10000")
    })
    .await;
    let (_, token) = env.db.admin_with_roles(&["console-user"]).await;
    let addr = env.gw.addr;
    // The upstream answers /slow after 5 s.
    let slow = tokio::spawn(async move {
        send(
            addr,
            format!("GET /slow HTTP/1.1\r\nHost: c\r\nCookie: console_session={token}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
    });
    // In flight: decided and forwarded (the upstream holds it for 5 s).
    eventually(
        Duration::from_secs(10),
        "the slow request was forwarded",
        || async {
            env.gw
                .metric("rbac_gateway_requests_total{decision=\"allowed\"}")
                .await
                >= 1.0
        },
    )
    .await;
    env.gw.signal("TERM");
    eventually(
        Duration::from_secs(5),
        "the listener closed after SIGTERM",
        || async { !is_listening(env.gw.addr) },
    )
    .await;
    // No new connections are taken once shutdown began.
    assert!(
        send(
            env.gw.addr,
            b"GET /ops HTTP/1.1\r\nHost: c\r\nConnection: close\r\n\r\n"
        )
        .await
        .is_err(),
        "a new connection was served after SIGTERM"
    );
    let r = slow
        .await
        .unwrap()
        .expect("the in-flight request is answered");
    assert_eq!(r.status, 200);
    let started = std::time::Instant::now();
    loop {
        if env.gw.child.try_wait().unwrap().is_some() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "still running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An idle keep-alive connection does not hold a shutdown for its grace period: it is closed at
/// once, and the gateway exits long before `--shutdown-grace`.
#[tokio::test]
async fn sigterm_closes_idle_keep_alive_connections_at_once() {
    let mut env = Env::with(core_routes(), |o| o.arg("--shutdown-grace").arg("30")).await;
    let (_, token) = env.db.admin_with_roles(&["console-manager"]).await;
    let mut idle = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(env.gw.addr).await.unwrap();
        s.write_all(
            format!("GET /ops HTTP/1.1\r\nHost: c\r\nCookie: console_session={token}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let r = read_response(&mut s).await.expect("answered");
        assert_eq!(r.status, 200);
        idle.push(s);
    }
    env.gw.signal("TERM");
    for mut s in idle {
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
            .await
            .expect("an idle connection is closed at shutdown, not after the grace")
            .expect("closed cleanly");
        assert_eq!(n, 0, "nothing more is sent on an idle connection");
    }
    env.gw
        .exited(
            Duration::from_secs(10),
            "still running: idle connections held the shutdown",
        )
        .await;
}

#[tokio::test]
async fn console_receives_exactly_the_session_the_gateway_decided_on() {
    let env = Env::core().await;
    let (admin, token) = env.db.admin_with_roles(&["console-audit-user"]).await;
    // Ambiguous readings of the session cookie are refused, whatever the route.
    for (what, cookies) in [
        (
            "repeated headers",
            format!("Cookie: theme=dark\r\nCookie: console_session={token}\r\n"),
        ),
        (
            "quoted semicolon",
            format!("Cookie: console_session=\"{token};x\"\r\n"),
        ),
        (
            "space before =",
            format!("Cookie: console_session ={token}\r\n"),
        ),
        (
            "twice",
            format!("Cookie: console_session={token}; console_session=other\r\n"),
        ),
        (
            "non-ASCII",
            "Cookie: console_session=t\u{e9}st\r\n".to_string(),
        ),
    ] {
        for path in ["/console/customers/1", "/auth/login"] {
            let req =
                format!("GET {path} HTTP/1.1\r\nHost: c\r\n{cookies}Connection: close\r\n\r\n");
            let r = send(env.gw.addr, req.as_bytes()).await.unwrap();
            assert_eq!(r.status, 400, "{what} on {path}");
        }
    }
    assert_eq!(env.up.count(), 0);
    // A plain header is forwarded unchanged, with the admin the gateway resolved.
    let req = format!("GET /console/customers/1 HTTP/1.1\r\nHost: c\r\nCookie: theme=dark; console_session={token}\r\nConnection: close\r\n\r\n");
    assert_eq!(send(env.gw.addr, req.as_bytes()).await.unwrap().status, 200);
    // Repeated headers without the session cookie reach Console as gunicorn would join them.
    let req = "GET /auth/login HTTP/1.1\r\nHost: c\r\nCookie: a=1\r\nCookie: b=2\r\nConnection: close\r\n\r\n";
    assert_eq!(send(env.gw.addr, req.as_bytes()).await.unwrap().status, 200);
    let seen = env.up.requests();
    assert_eq!(
        seen[0].headers_named("cookie"),
        [format!("theme=dark; console_session={token}")]
    );
    assert_eq!(seen[0].header("x-rbac-admin-id"), Some(admin.as_str()));
    assert_eq!(seen[1].headers_named("cookie"), ["a=1,b=2"]);
    assert!(
        env.gw
            .metric("rbac_gateway_refusals_total{reason=\"cookie_repeated_header\"}")
            .await
            >= 2.0
    );
}

#[tokio::test]
async fn a_body_waited_for_does_not_eat_into_consoles_read_timeout() {
    // The upstream read timeout is 1.5 s (helpers). A chunked body with no data whose last chunk
    // the client holds back for longer than that, and a Console that answers in 0.4 s (longer
    // than the deadline sweep's tick): Console's time starts once the body is read, so its
    // answer is relayed, not a 504 for the time spent waiting on the client.
    let env = Env::core().await;
    let (_, token) = env.db.admin_with_roles(&["console-user"]).await;
    let mut s = TcpStream::connect(env.gw.addr).await.unwrap();
    s.write_all(
        format!(
            "POST /upload HTTP/1.1\r\nHost: c\r\nCookie: console_session={token}\r\nX-Test-Delay-Ms: 400\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // Time is the scenario: the client holds its last chunk back for longer than the
    // upstream read timeout (1.5 s).
    tokio::time::sleep(Duration::from_millis(2000)).await;
    s.write_all(b"0\r\n\r\n").await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), read_response(&mut s))
        .await
        .expect("answered")
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body_str());
    let seen = env.up.requests();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].body.is_empty());
    assert_eq!(seen[0].header("transfer-encoding"), None);
}

/// Bodies being read are held in memory together up to `--max-buffered-body-bytes`: a request
/// whose body would go over it gets 503 (`Retry-After: 1`, closed, not forwarded), so many slow
/// uploads cannot take the host's memory; the bytes are given back when a request is over.
#[tokio::test]
async fn bodies_held_at_once_are_bounded() {
    let env = Env::with(core_routes(), |o| {
        o.arg("--max-body-bytes")
            .arg("1000000")
            .arg("--max-buffered-body-bytes")
            .arg("1000000")
    })
    .await;
    let (_, token) = env.db.admin_with_roles(&["console-user"]).await;
    let post = |len: usize| {
        format!(
            "POST /upload HTTP/1.1\r\nHost: c\r\nCookie: console_session={token}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
        )
    };
    let answer = |mut s: TcpStream| async move {
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
            .await
            .unwrap()
            .unwrap();
        String::from_utf8_lossy(&buf).into_owned()
    };
    // A slow upload holds 900,000 bytes of the budget and keeps its connection.
    let mut slow = TcpStream::connect(env.gw.addr).await.unwrap();
    slow.write_all(post(950_000).as_bytes()).await.unwrap();
    slow.write_all(&vec![b'a'; 900_000]).await.unwrap();
    // Held: the gateway has read every byte sent so far (the socket queues on both sides are
    // empty).
    let slow_addr = slow.local_addr().unwrap();
    eventually(
        Duration::from_secs(10),
        "the gateway read the slow upload's 900,000 bytes",
        || async { all_read(slow_addr, env.gw.addr) },
    )
    .await;
    // Another body of 200,000 bytes would go over: 503, not forwarded.
    let mut other = TcpStream::connect(env.gw.addr).await.unwrap();
    other.write_all(post(200_000).as_bytes()).await.unwrap();
    // The gateway may answer and close before it has read all of it.
    if let Err(e) = other.write_all(&vec![b'b'; 200_000]).await {
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    }
    let text = answer(other).await;
    assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("retry-after: 1"),
        "{text}"
    );
    assert_eq!(env.up.count(), 0);
    assert_eq!(
        env.gw
            .metric("rbac_gateway_refusals_total{reason=\"body_budget\"}")
            .await,
        1.0
    );
    // The slow upload completes and is forwarded; then its bytes are free again.
    slow.write_all(&vec![b'a'; 50_000]).await.unwrap();
    let text = answer(slow).await;
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    assert_eq!(env.up.requests()[0].body.len(), 950_000);
    let mut again = TcpStream::connect(env.gw.addr).await.unwrap();
    again.write_all(post(200_000).as_bytes()).await.unwrap();
    again.write_all(&vec![b'b'; 200_000]).await.unwrap();
    let text = answer(again).await;
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    assert_eq!(env.up.count(), 2);
}
