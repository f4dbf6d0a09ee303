-- Signed mapping versions (issue 46 item 4): `rbac-gateway mapping push --signing-key FILE`
-- stores, with the version, an Ed25519 signature of the text's exact bytes; gateways started
-- with `--mapping-public-key FILE` apply only versions whose signature verifies under that key,
-- so a database write alone (a row inserted by anyone with INSERT) cannot open a route.
--
-- Written at insert, never after: the table stays append-only (0009's trigger refuses UPDATE),
-- so a version stored unsigned stays unsigned (push a changed text, e.g. with a comment, to
-- store it signed). NULL: pushed without a key.

ALTER TABLE rbac_mapping_store
    ADD COLUMN IF NOT EXISTS signature TEXT NULL
        CONSTRAINT rbac_mapping_store_signature_hex CHECK (signature ~ '^[0-9a-f]{128}$');
