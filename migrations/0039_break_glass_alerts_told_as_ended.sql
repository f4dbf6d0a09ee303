-- A break-glass alert raised for a session revoked before it says "It ended before this alert
-- was raised.", and since this release records the revocation as the end it told
-- (src/stores/alerts.rs, raise_break_glass_sessions): a session restored afterwards (its
-- revocation cleared) has a later end than its alert told, so it counts only once the alert
-- the pass raises again for it, naming it as live, is delivered. An alert of the previous
-- release recorded the session's expiry instead, and a restored session counted on it (a
-- review). Each such alert of a session still revoked is given the end it told: its
-- revocation. An old replica still serving during a rolling deploy may record one more such
-- alert after this ran; it counts for a session restored before that replica stops, as before.
--
-- Console's rbac_break_glass_sessions is read after rbac_gateway_plain (0034, 0038) has locked
-- it and found nothing of Console's role on it that the read would run as the migrating role;
-- where it finds something, the alerts are left and a warning says so (the upgrade goes on).
--
-- Changing it: a new migration (never edit this one).
DO $migration$
BEGIN
  BEGIN
    EXECUTE pg_catalog.replace($sql$
SELECT @s.rbac_gateway_plain('{rbac_break_glass_sessions}'::pg_catalog.text[],
                             '{rbac_break_glass_sessions.id,rbac_break_glass_sessions.revoked_at_utc}'::pg_catalog.text[]);
UPDATE @s.rbac_gateway_alerts a
   SET session_ends_at_utc = b.revoked_at_utc
  FROM @s.rbac_break_glass_sessions b
 WHERE a.key OPERATOR(pg_catalog.=) ('break_glass:' OPERATOR(pg_catalog.||) b.id)
   AND pg_catalog.strpos(a.text, 'It ended before this alert was raised.') OPERATOR(pg_catalog.>) 0
   AND b.revoked_at_utc IS NOT NULL
   AND b.revoked_at_utc OPERATOR(pg_catalog.<) a.session_ends_at_utc;
$sql$, '@s.', pg_catalog.quote_ident(pg_catalog.current_schema()) OPERATOR(pg_catalog.||) '.');
  EXCEPTION WHEN insufficient_privilege THEN
    -- The look refused the table: the alerts are left as they are, and the upgrade goes on
    -- (`check` and the alert pass name the finding).
    RAISE WARNING 'break-glass alerts told as ended were not given their revocation as their end: %', SQLERRM;
  END;
END
$migration$;
