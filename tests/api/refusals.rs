//! Every refusal class of the request-target rules: 400, never forwarded, logged with a reason.

use crate::helpers::*;

/// (description, raw request bytes). Each would be routed differently by Console than a naive
/// proxy would match it, or cannot be mapped with certainty.
fn hostile(token: &str) -> Vec<(&'static str, Vec<u8>)> {
    let c = format!("Cookie: console_session={token}\r\n");
    let req = |line: &str, extra: &str| {
        format!("{line}\r\nHost: console.test\r\n{c}{extra}Connection: close\r\n\r\n").into_bytes()
    };
    vec![
        (
            "absolute-form",
            req("GET http://console.test/console/customers/1 HTTP/1.1", ""),
        ),
        (
            "authority-form",
            req("CONNECT console.test:443 HTTP/1.1", ""),
        ),
        ("asterisk-form", req("OPTIONS * HTTP/1.1", "")),
        (
            "encoded slash",
            req("GET /console/customers/1%2Faudit HTTP/1.1", ""),
        ),
        (
            "encoded slash lower",
            req("GET /console/customers%2f1 HTTP/1.1", ""),
        ),
        (
            "encoded backslash",
            req("GET /console/customers/1%5Caudit HTTP/1.1", ""),
        ),
        (
            "encoded backslash lower",
            req("GET /console/customers/1%5caudit HTTP/1.1", ""),
        ),
        (
            "raw backslash",
            req("GET /console/customers/1\\audit HTTP/1.1", ""),
        ),
        (
            "dot segment",
            req("GET /console/customers/./1 HTTP/1.1", ""),
        ),
        (
            "dot-dot segment",
            req("GET /ops/../console/customers/1 HTTP/1.1", ""),
        ),
        (
            "encoded dot-dot",
            req("GET /ops/%2e%2e/console/customers/1 HTTP/1.1", ""),
        ),
        (
            "mixed dot-dot",
            req("GET /ops/.%2E/console/customers/1 HTTP/1.1", ""),
        ),
        (
            "trailing dot-dot",
            req("GET /console/customers/1/.. HTTP/1.1", ""),
        ),
        (
            "empty segment",
            req("GET /console//customers/1 HTTP/1.1", ""),
        ),
        (
            "leading double slash",
            req("GET //console/customers/1 HTTP/1.1", ""),
        ),
        (
            "trailing double slash",
            req("GET /console/customers/1// HTTP/1.1", ""),
        ),
        (
            "malformed escape",
            req("GET /console/customers/%zz HTTP/1.1", ""),
        ),
        (
            "truncated escape",
            req("GET /console/customers/1% HTTP/1.1", ""),
        ),
        (
            "escape to NUL",
            req("GET /console/customers/1%00 HTTP/1.1", ""),
        ),
        (
            "escape to LF",
            req("GET /console/customers/1%0a HTTP/1.1", ""),
        ),
        (
            "escape to DEL",
            req("GET /console/customers/1%7F HTTP/1.1", ""),
        ),
        (
            "escape to invalid UTF-8",
            req("GET /console/customers/%FF HTTP/1.1", ""),
        ),
        (
            "escape to overlong UTF-8",
            req("GET /console/customers/%C0%AF HTTP/1.1", ""),
        ),
        (
            "escape to unicode digit",
            req("GET /console/customers/%D9%A3 HTTP/1.1", ""),
        ),
        (
            "fragment",
            req("GET /console/customers/1#frag HTTP/1.1", ""),
        ),
        (
            "lower-case method",
            req("get /console/customers/1 HTTP/1.1", ""),
        ),
        (
            "mixed-case method",
            req("Get /console/customers/1 HTTP/1.1", ""),
        ),
        (
            "method with a hyphen",
            req("M-SEARCH /console/customers/1 HTTP/1.1", ""),
        ),
        (
            "method override",
            req(
                "POST /console/customers/1 HTTP/1.1",
                "X-HTTP-Method-Override: DELETE\r\nContent-Length: 0\r\n",
            ),
        ),
        (
            "method header",
            req(
                "GET /console/customers/1 HTTP/1.1",
                "X-HTTP-Method: DELETE\r\n",
            ),
        ),
        (
            "x-method-override",
            req(
                "GET /console/customers/1 HTTP/1.1",
                "x-method-override: PUT\r\n",
            ),
        ),
        (
            "underscore header",
            req(
                "GET /console/customers/1 HTTP/1.1",
                "X_Rbac_Roles: console-manager\r\n",
            ),
        ),
        (
            "script name header",
            req("GET /console/customers/1 HTTP/1.1", "SCRIPT_NAME: /ops\r\n"),
        ),
        (
            "original url",
            req(
                "GET /console/customers/1 HTTP/1.1",
                "X-Original-URL: /ops\r\n",
            ),
        ),
        (
            "rewrite url",
            req(
                "GET /console/customers/1 HTTP/1.1",
                "X-Rewrite-URL: /ops\r\n",
            ),
        ),
        // httparse (inside hyper) already rejects obs-fold with 400 before the gateway sees it.
        (
            "obs-fold",
            req("GET /console/customers/1 HTTP/1.1", "X-Note: a\r\n b\r\n"),
        ),
        ("raw high byte", {
            let mut v = b"GET /console/customers/\xc3\xa9 HTTP/1.1\r\nHost: c\r\n".to_vec();
            v.extend_from_slice(c.as_bytes());
            v.extend_from_slice(b"Connection: close\r\n\r\n");
            v
        }),
        ("raw tab", req("GET /console/customers/1\t HTTP/1.1", "")),
        (
            "connection names host",
            req(
                "GET /console/customers/1 HTTP/1.1",
                "Connection: keep-alive, Host\r\n",
            ),
        ),
        (
            "connection names the cookie",
            req(
                "GET /console/customers/1 HTTP/1.1",
                "Connection: Cookie\r\n",
            ),
        ),
    ]
}

#[tokio::test]
async fn hostile_targets_are_refused_and_never_forwarded() {
    let env = Env::core().await;
    // A session that would be allowed on every customer route: refusal must not depend on roles.
    let (_, token) = env
        .db
        .admin_with_roles(&["console-audit-user", "console-manager", "console-user"])
        .await;
    for (what, bytes) in hostile(&token) {
        match send(env.gw.addr, &bytes).await {
            Ok(r) => assert_eq!(r.status, 400, "{what}: got {} {}", r.status, r.body_str()),
            Err(e) => panic!("{what}: connection failed without an answer: {e}"),
        }
    }
    assert_eq!(
        env.up.count(),
        0,
        "nothing reached Console: {:?}",
        env.up.requests()
    );
    assert_eq!(env.db.audit_count().await, 0, "a 400 writes no audit row");
    let log = env.gw.log();
    for reason in [
        "not_origin_form",
        "encoded_slash",
        "dot_segment",
        "empty_segment",
        "malformed_escape",
        "invalid_utf8",
        "fragment",
        "method_not_uppercase",
        "method_not_letters",
        "rewrite_header",
        "underscore_header",
        "connection_names_header",
    ] {
        assert!(log.contains(reason), "refusal reason {reason} is logged");
    }
    assert!(
        env.gw
            .metric("rbac_gateway_refusals_total{reason=\"dot_segment\"}")
            .await
            >= 4.0
    );
}

#[tokio::test]
async fn decoded_once_matched_and_forwarded_unchanged() {
    let env = Env::core().await;
    let (_, token) = env.db.admin_with_roles(&["console-audit-user"]).await;
    // %61 is 'a': Console routes /console/customers/5 after decoding; the gateway must match the
    // same rule and forward the original bytes.
    let r = env.gw.get("/console/cust%6Fmers/5", Some(&token)).await;
    assert_eq!(r.status, 200);
    // Double encoding is decoded once: the id is the literal "%2F" text, a single segment.
    let r = env.gw.get("/console/customers/%252F", Some(&token)).await;
    assert_eq!(r.status, 200);
    let seen = env.up.requests();
    assert_eq!(seen[0].target, "/console/cust%6Fmers/5");
    assert_eq!(seen[1].target, "/console/customers/%252F");
    // An encoded 'invite' still picks the invite rule (static beats variable after decoding).
    let r = env
        .gw
        .get("/console/customers/%69nvite", Some(&token))
        .await;
    assert_eq!(r.status, 403);
}
