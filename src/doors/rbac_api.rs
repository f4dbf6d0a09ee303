//! Console's reader API on the main listener (`policy/reader.rs` says what it answers): the
//! answer, computed and counted by the gateway's state (`gateway/reader.rs`), written as HTTP.

use http::header::{self, HeaderValue};
use http::{Method, Response, StatusCode};

use crate::dataplane::upstream::GatewayBody;
use crate::doors::trace::Trace;
use crate::gateway::state::Gateway;
use crate::policy::reader::Call;
use crate::policy::request_id::RequestId;

/// The gateway's answer to a reader API call ([`Gateway::reader_answer`], which counts it),
/// written: JSON, `Cache-Control: no-store`; HEAD without the body, 405 with `Allow`. Traced,
/// the answer's admin, reason and the live mapping's version go on the request's span.
pub(crate) async fn respond(
    gw: &Gateway,
    call: &Call,
    method: &Method,
    token: Option<&str>,
    request_id: &RequestId,
    close: bool,
    trace: &Trace,
) -> Response<GatewayBody> {
    let a = gw
        .reader_answer(call, method.as_str(), token, request_id.as_str())
        .await;
    trace.reader_answer(&a, &gw.mapping);
    let body = serde_json::to_vec(&a.body).expect("JSON values serialise");
    let len = body.len();
    let mut resp = Response::new(if method == Method::HEAD {
        GatewayBody::Own(None)
    } else {
        GatewayBody::bytes(body)
    });
    *resp.status_mut() = StatusCode::from_u16(a.status).expect("a valid status");
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if a.status == 405 {
        h.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    h.insert(crate::policy::headers::X_REQUEST_ID, request_id.header());
    if close {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}
