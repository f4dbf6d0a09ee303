//! One round trip per database step (issue 51), counted at the server's side of the wire
//! (`helpers::PgWire`): a cold request's session, admin and roles in one exchange of one round
//! trip; a rule's live ticket grants in one; a batch of audit rows in one. Nothing else a cold
//! request sends names the admin (no second lookup).

use crate::helpers::*;
use crate::tickets::grant;

#[tokio::test]
async fn a_cold_request_a_ticket_check_and_an_audit_batch_each_take_one_round_trip() {
    let db = TestDb::new().await;
    let up = Upstream::start().await;
    let wire = PgWire::start(&db.url).await;
    let mut opts = GatewayOpts::new(core_routes(), &db, up.addr);
    opts.database_url = wire.url.clone();
    let gw = Gateway::start(opts).await;
    settle(&[&gw]).await;

    // Allowed, cold: the session and its principal.
    let (admin, token) = db.admin_with_roles(&["console-audit-user"]).await;
    let hash = rbac_gateway::stores::identity::token_hash(&token);
    let from = wire.exchanges().len();
    let r = gw.get("/console/customers/1", Some(&token)).await;
    assert_eq!(r.status, 200);
    let seen: Vec<Exchange> = wire.exchanges()[from..].to_vec();
    let lookups: Vec<&Exchange> = seen.iter().filter(|e| e.mentions(&hash)).collect();
    assert_eq!(lookups.len(), 1, "one exchange reads the session: {seen:?}");
    assert_eq!(lookups[0].round_trips, 1, "{:?}", lookups[0]);
    assert!(
        !seen.iter().any(|e| e.mentions(&admin)),
        "no second lookup names the admin: {seen:?}"
    );

    // A rule with customer_param: the live ticket grants, read on every request.
    let (granted, token) = db.admin_with_roles(&["console-user"]).await;
    grant(&db, &granted, "raptor-audit-admin", 7, "T-1").await;
    assert_eq!(
        gw.get("/ops", Some(&token)).await.status,
        403,
        "primes the cache"
    );
    let from = wire.exchanges().len();
    let r = gw.get("/console/customers/7/audit", Some(&token)).await;
    assert_eq!(r.status, 200, "the ticket grant allows it");
    let seen: Vec<Exchange> = wire.exchanges()[from..].to_vec();
    let tickets: Vec<&Exchange> = seen
        .iter()
        .filter(|e| e.mentions("rbac_gateway_ticket_grants"))
        .collect();
    assert_eq!(tickets.len(), 1, "{seen:?}");
    assert_eq!(tickets[0].round_trips, 1, "{:?}", tickets[0]);

    // A denial: its row in one exchange of one round trip.
    let r = gw.get("/ops", Some(&token)).await;
    assert_eq!(r.status, 403);
    let id = r.request_id();
    eventually(
        std::time::Duration::from_secs(5),
        "the row's exchange ended",
        || async { wire.exchanges().iter().any(|e| e.mentions(&id)) },
    )
    .await;
    let rows: Vec<Exchange> = wire
        .exchanges()
        .into_iter()
        .filter(|e| e.mentions(&id))
        .collect();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].round_trips, 1, "{:?}", rows[0]);
    assert_eq!(db.audit_rows(&id).await.len(), 1);
}
