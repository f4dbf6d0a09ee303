//! The header names the gateway speaks, declared once for every door: the identity it tells
//! Console (or the edge), the request id it answers with, and the decision forward-auth reports.
//! Every `x-rbac-*` header a client sends is removed before Console sees the request
//! (`doors/proxy/forward.rs`), so these are the gateway's alone.

use http::HeaderName;

/// The request's id, on every answer and (behind a trusted router) taken from the request.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The admin Console is told the request comes from.
pub const X_RBAC_ADMIN_ID: HeaderName = HeaderName::from_static("x-rbac-admin-id");
/// That admin's roles, expanded and sorted.
pub const X_RBAC_ROLES: HeaderName = HeaderName::from_static("x-rbac-roles");
/// Shadow mode: the gateway would have denied (`deny`).
pub const X_RBAC_SHADOW: HeaderName = HeaderName::from_static("x-rbac-shadow-decision");
/// Forward-auth: the decision's label, which lets nginx map its 500 back to the status.
pub const X_RBAC_DECISION: HeaderName = HeaderName::from_static("x-rbac-decision");
