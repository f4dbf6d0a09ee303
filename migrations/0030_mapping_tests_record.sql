-- The tests a mapping version passed (issue 70): `rbac-gateway mapping push` runs the mapping's
-- tests (`*.test.toml` beside the file, or those named with --tests) before it stores anything,
-- refuses a version whose tests fail, and records on the version what it ran:
--   tests_result  'passed' (every case passed), 'skipped' (--skip-tests, said at the push) or
--                 'none' (no test file beside the pushed file); NULL: pushed before this
--                 migration, or by a binary that does not record tests.
--   tests_sha256  the SHA-256 of the test files' bytes, one after the other in the order run
--                 (for one file, `sha256sum FILE`); NULL unless 'passed'.
--   tests_cases   how many cases passed; NULL unless 'passed'.
--   tests_files   the test files run, as the push named them; NULL unless 'passed'.
--
-- Written at insert, never after: the table stays append-only (0009's trigger refuses UPDATE),
-- so a text pushed again keeps the record of its first push (push says so). The grants of
-- deploy/mapping-grants.sql cover the new columns (a pusher's INSERT and a reader's SELECT are
-- on the table).

ALTER TABLE rbac_mapping_store
    ADD COLUMN IF NOT EXISTS tests_result TEXT NULL
        CONSTRAINT rbac_mapping_store_tests_result
            CHECK (tests_result IN ('passed', 'skipped', 'none')),
    ADD COLUMN IF NOT EXISTS tests_sha256 TEXT NULL
        CONSTRAINT rbac_mapping_store_tests_sha256_hex CHECK (tests_sha256 ~ '^[0-9a-f]{64}$'),
    ADD COLUMN IF NOT EXISTS tests_cases INTEGER NULL
        CONSTRAINT rbac_mapping_store_tests_cases CHECK (tests_cases >= 0),
    ADD COLUMN IF NOT EXISTS tests_files TEXT[] NULL;
