//! Who is asking, as the decision reads it: an admin's effective roles and permissions
//! ([`Principal`]). The stores fill it (`stores/identity.rs` from Console's tables and its
//! caches, `stores/ticket.rs` with live ticket grants); the verdict, `decide` and `carry_out` read
//! it.

use std::sync::Arc;
use std::time::{Duration, Instant};

/// An admin's effective authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub admin_id: String,
    /// An active break-glass row contributed the `break-glass` group.
    pub break_glass: bool,
    /// When the latest-ending active break-glass row expires (the reader API's `break_glass`).
    pub break_glass_until: Option<chrono::DateTime<chrono::Utc>>,
    grants: Arc<Grants>,
    /// What Console is told of this admin; None: the admin id or the roles cannot be sent as
    /// header values.
    identity: Option<Identity>,
    /// Until when the cached answer may be reused (the identity cache expires it then).
    pub(crate) until: Instant,
}

/// A set of roles and permissions, shared by every principal that holds exactly that set: admins
/// get their roles from a handful of groups, so 10,000 cached principals hold a few distinct sets
/// (measured with `scripts/bench/load.sh` case e: docs/performance-log.md).
#[derive(Debug, PartialEq, Eq, Hash)]
struct Grants {
    /// Expanded role names, sorted.
    roles: Vec<String>,
    /// Effective permission names, sorted.
    permissions: Vec<String>,
    /// `roles` joined with ',': the `X-Rbac-Roles` value, built once per distinct set instead of
    /// once per forwarded request.
    roles_header: String,
    /// `roles_header` as the `X-Rbac-Roles` value, made once per set, not per request; None: it
    /// cannot be sent as a header value.
    roles_value: Option<http::HeaderValue>,
}

/// The identity Console is told (`X-Rbac-Admin-Id`, `X-Rbac-Roles`): header values made once per
/// principal (the roles' once per distinct set), so no door converts or checks them again, and
/// an answer carries them as one shared pointer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity(Arc<(http::HeaderValue, http::HeaderValue)>);

impl Identity {
    /// `X-Rbac-Admin-Id`.
    pub fn admin_id(&self) -> &http::HeaderValue {
        &self.0 .0
    }

    /// `X-Rbac-Roles`.
    pub fn roles(&self) -> &http::HeaderValue {
        &self.0 .1
    }
}

/// `v` as a header value, if the gateway sends it as one
/// ([`crate::policy::target::is_header_value`]).
fn header_value(v: &str) -> Option<http::HeaderValue> {
    if !crate::policy::target::is_header_value(v.as_bytes()) {
        return None;
    }
    http::HeaderValue::from_str(v).ok()
}

/// The distinct sets in use. Entries nobody else holds are dropped when the set has doubled
/// since the last sweep, so it stays proportional to the sets actually cached.
struct Interner {
    sets: std::collections::HashSet<Arc<Grants>>,
    sweep_at: usize,
}

static INTERNER: std::sync::Mutex<Option<Interner>> = std::sync::Mutex::new(None);

#[cfg(test)]
fn interned_sets() -> usize {
    let guard = INTERNER.lock().unwrap_or_else(|e| e.into_inner());
    guard.as_ref().map_or(0, |i| i.sets.len())
}

fn intern(grants: Grants) -> Arc<Grants> {
    let mut guard = INTERNER.lock().unwrap_or_else(|e| e.into_inner());
    let interner = guard.get_or_insert_with(|| Interner {
        sets: Default::default(),
        sweep_at: 64,
    });
    if let Some(found) = interner.sets.get(&grants) {
        return found.clone();
    }
    if interner.sets.len() >= interner.sweep_at {
        interner.sets.retain(|g| Arc::strong_count(g) > 1);
        interner.sweep_at = (interner.sets.len() * 2).max(64);
    }
    let grants = Arc::new(grants);
    interner.sets.insert(grants.clone());
    grants
}

impl Principal {
    /// Sorts and dedups roles and permissions, and derives the header value.
    pub fn new(
        admin_id: &str,
        mut roles: Vec<String>,
        mut permissions: Vec<String>,
        break_glass_until: Option<chrono::DateTime<chrono::Utc>>,
        valid_for: Duration,
    ) -> Principal {
        roles.sort();
        roles.dedup();
        permissions.sort();
        permissions.dedup();
        let roles_header = roles.join(",");
        let grants = intern(Grants {
            roles,
            permissions,
            roles_value: header_value(&roles_header),
            roles_header,
        });
        let identity = match (header_value(admin_id), &grants.roles_value) {
            (Some(admin_id), Some(roles)) => Some(Identity(Arc::new((admin_id, roles.clone())))),
            _ => None,
        };
        Principal {
            admin_id: admin_id.to_string(),
            identity,
            break_glass: break_glass_until.is_some(),
            break_glass_until,
            grants,
            until: Instant::now() + valid_for,
        }
    }

    /// Expanded role names, sorted.
    pub fn roles(&self) -> &[String] {
        &self.grants.roles
    }

    /// Effective permission names, sorted.
    pub fn permissions(&self) -> &[String] {
        &self.grants.permissions
    }

    /// The roles joined with ',' (the `X-Rbac-Roles` value).
    pub fn roles_header(&self) -> &str {
        &self.grants.roles_header
    }

    /// What Console is told of this admin (`X-Rbac-Admin-Id`, `X-Rbac-Roles`), made once when the
    /// principal was; None: one of them cannot be sent (a name with a control byte; the gateway
    /// then answers 503 instead of forwarding).
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    pub fn has_role(&self, role: &str) -> bool {
        self.roles()
            .binary_search_by(|r| r.as_str().cmp(role))
            .is_ok()
    }

    pub fn has_permission(&self, perm: &str) -> bool {
        self.permissions()
            .binary_search_by(|p| p.as_str().cmp(perm))
            .is_ok()
    }

    /// This principal plus roles and permissions from elsewhere (ticket grants); never cached.
    pub fn with_extra(&self, roles: &[String], permissions: &[String]) -> Principal {
        Principal::new(
            &self.admin_id,
            self.roles().iter().chain(roles).cloned().collect(),
            self.permissions()
                .iter()
                .chain(permissions)
                .cloned()
                .collect(),
            self.break_glass_until,
            Duration::ZERO,
        )
    }

    /// A principal built in memory (tests, benchmarks): roles and permissions get sorted.
    pub fn for_tests(admin_id: &str, roles: Vec<String>, permissions: Vec<String>) -> Principal {
        Principal::new(admin_id, roles, permissions, None, Duration::ZERO)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn principals_with_the_same_grants_share_one_set() {
        let a = Principal::for_tests("a", names(&["r2", "r1"]), names(&["p"]));
        let b = Principal::for_tests("b", names(&["r1", "r2", "r1"]), names(&["p"]));
        let c = Principal::for_tests("c", names(&["r1"]), names(&["p"]));
        assert!(Arc::ptr_eq(&a.grants, &b.grants));
        assert!(!Arc::ptr_eq(&a.grants, &c.grants));
        assert_eq!(b.roles(), ["r1", "r2"]);
        assert_eq!(b.roles_header(), "r1,r2");
        assert!(b.has_role("r2") && !c.has_role("r2") && c.has_permission("p"));
    }

    #[test]
    fn sets_nobody_holds_are_swept() {
        // Far more distinct sets than the first sweep threshold, each dropped at once: the
        // interner must not keep them all.
        for i in 0..1_000 {
            let role = format!("sweep-test-role-{i}");
            drop(Principal::for_tests("x", vec![role], vec![]));
        }
        let held = Principal::for_tests("y", names(&["sweep-test-held"]), vec![]);
        let again = Principal::for_tests("z", names(&["sweep-test-held"]), vec![]);
        assert!(Arc::ptr_eq(&held.grants, &again.grants));
        let kept = interned_sets();
        assert!(kept < 1_000, "{kept} sets kept");
    }
}
