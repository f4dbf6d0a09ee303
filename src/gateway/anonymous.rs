//! What traffic without a session can make the gateway write to Console's database.
//!
//! A request with no session to a path no rule maps gets a 403 and an `access_denied` row. Left
//! alone, anyone on the internet could make the gateway write to Console's primary at the rate
//! they send, and, during an outage, fill the spool and the in-memory backlog so that a real
//! admin's denial gets a 503. So a denial without an admin ([`Coalescer::admit`]) is written
//! once per client, reason and rule (or unmapped) per window: the first of a window gets its row
//! before its 403, as every denial does; the rest of that window are counted, and when the
//! window ends one more row stands for them, with their number in `occurrences`
//! ([`Coalescer::ended`], written by [`flush_forever`]). At most `--anonymous-denial-keys` keys a
//! window; past that, every new key shares one. A denial of a request with a session (an
//! admin) always gets its own row.
//!
//! What is given up: a counted denial's request id has no row of its own (the window's summary
//! row carries the last one's), and a crash loses the counts of the window in progress (never
//! a row of a request with a session). docs/design/durability.md.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::policy::audit_event::{AuditEvent, EVENT_DENIED};

/// Who, why and where: one row a window per key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    client: Option<String>,
    reason: String,
    /// The rule, or None: no rule matched.
    route: Option<String>,
}

/// A key's denials this window after its first.
struct Counted {
    n: u32,
    last: Arc<AuditEvent>,
}

struct Window {
    started: Instant,
    /// Keys seen this window, and the denials counted after each one's first.
    keys: HashMap<Key, Option<Counted>>,
    /// Keys past [`Coalescer::max_keys`] share this one.
    overflow: Option<Option<Counted>>,
}

/// The most of a retained row's path and user agent kept (a key's last denial is held for the
/// window's row: at most `max_keys` of them, each bounded).
const KEPT: usize = 1024;

/// `row` with its path and user agent cut to [`KEPT`] bytes (at a character's boundary).
fn kept(row: &Arc<AuditEvent>) -> Arc<AuditEvent> {
    fn cut(s: &str) -> &str {
        let mut n = s.len().min(KEPT);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        &s[..n]
    }
    if row.path.len() <= KEPT && row.user_agent.as_ref().is_none_or(|u| u.len() <= KEPT) {
        return row.clone();
    }
    Arc::new(AuditEvent {
        path: cut(&row.path).to_string(),
        user_agent: row.user_agent.as_deref().map(|u| cut(u).to_string()),
        ..(**row).clone()
    })
}

/// What [`Coalescer::admit`] says of a denial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Write its row (before the 403, as any denial's).
    Write,
    /// Counted in this window's summary row: no row of its own.
    Counted,
}

/// The windows of denials without an admin (see the module's doc).
pub struct Coalescer {
    /// Zero: off, every denial written.
    window: Duration,
    max_keys: usize,
    state: Mutex<Window>,
}

impl Coalescer {
    /// `window` zero turns it off.
    pub fn new(window: Duration, max_keys: usize) -> Coalescer {
        Coalescer {
            window,
            max_keys: max_keys.max(1),
            state: Mutex::new(Window {
                started: Instant::now(),
                keys: HashMap::new(),
                overflow: None,
            }),
        }
    }

    /// Whether `row` is written or counted. Only a denial with no admin is ever counted; the
    /// first of its key in a window is written.
    pub fn admit(&self, row: &Arc<AuditEvent>, now: Instant) -> Admit {
        if self.window.is_zero() || row.admin_id.is_some() || row.event_type != EVENT_DENIED {
            return Admit::Write;
        }
        let key = Key {
            client: row.client_ip.clone(),
            reason: row.reason.clone(),
            route: row.route.clone(),
        };
        let mut w = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if now.duration_since(w.started) >= self.window && w.keys.is_empty() && w.overflow.is_none()
        {
            w.started = now;
        }
        let row = &kept(row);
        let slot = if w.keys.contains_key(&key) {
            w.keys.get_mut(&key).expect("present")
        } else if w.keys.len() < self.max_keys {
            w.keys.insert(key, None);
            return Admit::Write;
        } else if w.overflow.is_none() {
            w.overflow = Some(None);
            return Admit::Write;
        } else {
            w.overflow.as_mut().expect("present")
        };
        match slot {
            Some(c) => {
                c.n = c.n.saturating_add(1);
                c.last = row.clone();
            }
            None => {
                *slot = Some(Counted {
                    n: 1,
                    last: row.clone(),
                })
            }
        }
        Admit::Counted
    }

    /// The summary rows of the window, once it has ended at `now` (or whatever `now` is, when
    /// `all`: at shutdown): one per key whose denials were counted, `occurrences` their number,
    /// the rest of the row its last denial's (a new id). The next window starts empty.
    pub fn ended(&self, now: Instant, all: bool) -> Vec<AuditEvent> {
        let mut w = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !all && now.duration_since(w.started) < self.window {
            return Vec::new();
        }
        let keys = std::mem::take(&mut w.keys);
        let overflow = w.overflow.take();
        w.started = now;
        drop(w);
        let summary = |c: Counted| AuditEvent {
            id: uuid::Uuid::new_v4().to_string(),
            occurrences: i64::from(c.n),
            ..(*c.last).clone()
        };
        let mut rows: Vec<AuditEvent> = keys.into_values().flatten().map(summary).collect();
        // The shared key counts many clients: its row names none.
        rows.extend(overflow.flatten().map(summary).map(|r| AuditEvent {
            client_ip: None,
            ..r
        }));
        rows
    }
}

/// Writes each ended window's summary rows ([`write_counts`]), checking every quarter window.
/// At shutdown `serve` writes the window in progress ([`Coalescer::ended`] with `all`).
pub async fn flush_forever<W, F>(coalescer: Arc<Coalescer>, write: W)
where
    W: Fn(Arc<AuditEvent>) -> F,
    F: std::future::Future<Output = Result<(), String>>,
{
    if coalescer.window.is_zero() {
        return std::future::pending().await;
    }
    let tick = (coalescer.window / 4).max(Duration::from_millis(50));
    loop {
        tokio::time::sleep(tick).await;
        write_counts(coalescer.ended(Instant::now(), false), &write).await;
    }
}

/// Writes `rows` (a window's counts) together, each through `write` (the durable path every
/// denial's row takes); one that cannot be written is logged with its count.
pub async fn write_counts<W, F>(rows: Vec<AuditEvent>, write: &W)
where
    W: Fn(Arc<AuditEvent>) -> F,
    F: std::future::Future<Output = Result<(), String>>,
{
    let writes = rows.into_iter().map(|row| {
        let (n, rule) = (row.occurrences, row.route.clone());
        let written = write(Arc::new(row));
        async move {
            if let Err(e) = written.await {
                tracing::error!(error = %e, occurrences = n, rule = ?rule, "cannot record the count of denials without a session");
            }
        }
    });
    futures_util::future::join_all(writes).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(client: &str, route: Option<&str>, admin: Option<&str>) -> Arc<AuditEvent> {
        Arc::new(AuditEvent {
            id: uuid::Uuid::new_v4().to_string(),
            event_type: EVENT_DENIED.into(),
            admin_id: admin.map(Into::into),
            method: "GET".into(),
            path: "/x".into(),
            route: route.map(Into::into),
            required: None,
            reason: "no_route".into(),
            request_id: "r".into(),
            client_ip: Some(client.into()),
            user_agent: None,
            created_at_utc: crate::policy::audit_event::now(),
            mapping_version: None,
            occurrences: 1,
        })
    }

    #[test]
    fn one_row_per_key_and_window_then_one_with_the_count() {
        let c = Coalescer::new(Duration::from_secs(60), 2);
        let t0 = Instant::now();
        assert_eq!(c.admit(&row("a", None, None), t0), Admit::Write);
        for _ in 0..9 {
            assert_eq!(c.admit(&row("a", None, None), t0), Admit::Counted);
        }
        // Another client, a rule: keys of their own.
        assert_eq!(c.admit(&row("b", None, None), t0), Admit::Write);
        // Past two keys: one shared key for every new one.
        assert_eq!(c.admit(&row("c", None, None), t0), Admit::Write);
        assert_eq!(c.admit(&row("d", Some("GET /x"), None), t0), Admit::Counted);
        // A session's denial is always written.
        for _ in 0..3 {
            assert_eq!(c.admit(&row("a", None, Some("admin")), t0), Admit::Write);
        }
        assert!(c.ended(t0 + Duration::from_secs(59), false).is_empty());
        let mut ended = c.ended(t0 + Duration::from_secs(60), false);
        ended.sort_by_key(|r| r.occurrences);
        let counts: Vec<i64> = ended.iter().map(|r| r.occurrences).collect();
        assert_eq!(counts, vec![1, 9]);
        assert_eq!(ended[0].route.as_deref(), Some("GET /x"));
        assert_eq!(
            ended[0].client_ip, None,
            "the shared key's row names no client"
        );
        // The next window starts empty.
        let t1 = t0 + Duration::from_secs(61);
        assert_eq!(c.admit(&row("a", None, None), t1), Admit::Write);
        assert!(c.ended(t1, true).is_empty());
    }

    #[test]
    fn off_writes_every_row() {
        let c = Coalescer::new(Duration::ZERO, 10);
        for _ in 0..3 {
            assert_eq!(c.admit(&row("a", None, None), Instant::now()), Admit::Write);
        }
    }
}
