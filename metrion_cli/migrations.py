"""Schema of metrion.db and vault.db as numbered steps, applied in registration order.

Never edit a step that has shipped: add the next one. `tests/test_migrations.py` checks the
resulting columns and upgrades a database made by the first step only.
"""

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

metrion = Migrations("metrion")
vault = Migrations("metrion_vault")

# Bumped by triggers whenever accounts, tokens or registered keys change, so the running proxy
# notices a revoked token by polling one row instead of re-reading every table.
_BUMP = "UPDATE meta SET value = value + 1 WHERE key = 'config_version';"


@metrion()
def m001_initial(db: Database) -> None:
    db.executescript(
        f"""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
        INSERT INTO meta (key, value) VALUES ('config_version', 1);

        CREATE TABLE accounts (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            plan TEXT NOT NULL DEFAULT 'free' CHECK (plan IN ('free', 'pro')),
            monthly_cap INTEGER,          -- overrides the plan's cap when set
            created TEXT NOT NULL
        );

        CREATE TABLE tokens (
            id INTEGER PRIMARY KEY,
            account_id INTEGER NOT NULL REFERENCES accounts(id),
            sha256 TEXT NOT NULL UNIQUE,  -- the token itself is never stored
            prefix TEXT NOT NULL,         -- first characters, for display only
            name TEXT,
            rpm INTEGER,                  -- per-token requests/minute; NULL = account default
            created TEXT NOT NULL,
            revoked TEXT
        );
        CREATE INDEX tokens_account ON tokens(account_id);

        -- Pass-through keys an account claims: only an HMAC fingerprint, never the key.
        CREATE TABLE registered_keys (
            id INTEGER PRIMARY KEY,
            account_id INTEGER NOT NULL REFERENCES accounts(id),
            provider TEXT NOT NULL,
            fingerprint TEXT NOT NULL UNIQUE,
            last4 TEXT NOT NULL,
            created TEXT NOT NULL
        );

        -- The request log. Token columns are normalised across providers:
        --   input_tokens      every input token billed, cache reads and writes included
        --   output_tokens     every output token, reasoning included
        --   cached_tokens     input tokens read from the provider's cache (part of input_tokens)
        --   cache_write_tokens input tokens written to the cache (part of input_tokens)
        --   reasoning_tokens  output tokens spent on reasoning (part of output_tokens)
        -- NULL means the provider did not report it (usage_note says why); usage_raw keeps
        -- the provider's own usage object as JSON.
        CREATE TABLE requests (
            id INTEGER PRIMARY KEY,
            ts TEXT NOT NULL,             -- arrival, UTC ISO 8601
            account_id INTEGER,
            token_id INTEGER,
            provider TEXT,
            method TEXT,
            endpoint TEXT,                -- path only: the query string may hold a key
            model TEXT,
            status INTEGER,
            streamed INTEGER NOT NULL DEFAULT 0,
            forwarded INTEGER NOT NULL DEFAULT 0,  -- sent upstream; only these count against caps
            input_tokens INTEGER,
            output_tokens INTEGER,
            cached_tokens INTEGER,
            cache_write_tokens INTEGER,
            reasoning_tokens INTEGER,
            total_tokens INTEGER,
            usage_raw TEXT,
            usage_note TEXT,
            ttfb_ms REAL,
            latency_ms REAL,
            request_bytes INTEGER,
            response_bytes INTEGER,
            requester TEXT,               -- x-metrion-user
            mode TEXT,                    -- stored | passthrough | none
            key_fingerprint TEXT,
            upstream_request_id TEXT,
            error TEXT,
            client_aborted INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX requests_ts ON requests(ts);
        CREATE INDEX requests_account_ts ON requests(account_id, ts);

        CREATE TABLE usage_monthly (
            account_id INTEGER NOT NULL,
            month TEXT NOT NULL,          -- YYYY-MM, UTC
            requests INTEGER NOT NULL DEFAULT 0,
            input_tokens INTEGER NOT NULL DEFAULT 0,
            output_tokens INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (account_id, month)
        );

        CREATE TRIGGER accounts_ins AFTER INSERT ON accounts BEGIN {_BUMP} END;
        CREATE TRIGGER accounts_upd AFTER UPDATE ON accounts BEGIN {_BUMP} END;
        CREATE TRIGGER accounts_del AFTER DELETE ON accounts BEGIN {_BUMP} END;
        CREATE TRIGGER tokens_ins AFTER INSERT ON tokens BEGIN {_BUMP} END;
        CREATE TRIGGER tokens_upd AFTER UPDATE ON tokens BEGIN {_BUMP} END;
        CREATE TRIGGER tokens_del AFTER DELETE ON tokens BEGIN {_BUMP} END;
        CREATE TRIGGER registered_keys_ins AFTER INSERT ON registered_keys BEGIN {_BUMP} END;
        CREATE TRIGGER registered_keys_del AFTER DELETE ON registered_keys BEGIN {_BUMP} END;
        """
    )


_VAULT_BUMP = "UPDATE vault_meta SET value = value + 1 WHERE key = 'config_version';"


@vault()
def v001_initial(db: Database) -> None:
    db.executescript(
        f"""
        CREATE TABLE vault_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
        INSERT INTO vault_meta (key, value) VALUES ('config_version', 1);

        -- One row per master key version: a known plaintext encrypted with it, so a wrong
        -- master key is detected at start-up instead of at the first request.
        CREATE TABLE master_keys (
            version INTEGER PRIMARY KEY,
            check_blob BLOB NOT NULL,
            created TEXT NOT NULL
        );

        -- Secrets of the instance itself (the HMAC key for fingerprints), sealed like provider keys.
        CREATE TABLE sealed_secrets (
            name TEXT PRIMARY KEY,
            ciphertext BLOB NOT NULL,
            key_version INTEGER NOT NULL
        );

        -- AES-256-GCM: ciphertext = nonce (12 bytes) || sealed key; the associated data binds
        -- it to (account_id, provider), so a ciphertext copied to another row cannot decrypt.
        CREATE TABLE provider_keys (
            id INTEGER PRIMARY KEY,
            account_id INTEGER NOT NULL,
            provider TEXT NOT NULL,
            ciphertext BLOB NOT NULL,
            key_version INTEGER NOT NULL,
            last4 TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            created TEXT NOT NULL,
            UNIQUE (account_id, provider)
        );

        CREATE TRIGGER provider_keys_ins AFTER INSERT ON provider_keys BEGIN {_VAULT_BUMP} END;
        CREATE TRIGGER provider_keys_upd AFTER UPDATE ON provider_keys BEGIN {_VAULT_BUMP} END;
        CREATE TRIGGER provider_keys_del AFTER DELETE ON provider_keys BEGIN {_VAULT_BUMP} END;
        """
    )


@metrion()
def m002_account_limits(db: Database) -> None:
    # uncapped: no monthly cap whatever the plan (`metrion quota set ACCOUNT none`);
    # rpm: the account's per-token requests/minute, NULL = the instance default, 0 = no limit.
    db.executescript(
        """
        ALTER TABLE accounts ADD COLUMN uncapped INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE accounts ADD COLUMN rpm INTEGER;
        """
    )


@metrion()
def m003_dashboard(db: Database) -> None:
    from .latency import bucket_of, upper_ms

    db.executescript(
        """
        -- The Logs page's facets count through these (a scan of a small index, ~40 ms on a
        -- million rows, instead of the table, ~150 ms each); each costs the writer ~1.3 µs a row.
        CREATE INDEX requests_provider ON requests(provider);
        CREATE INDEX requests_model ON requests(model);
        CREATE INDEX requests_status ON requests(status);
        CREATE INDEX requests_requester ON requests(requester);

        -- Forwarded requests counted by latency bucket (metrion_cli/latency.py): the dashboard's
        -- percentiles come from here, not from sorting the log. le_ms is the bucket's upper edge.
        CREATE TABLE latency_histogram (
            day TEXT NOT NULL,            -- YYYY-MM-DD, UTC, of the request's arrival
            provider TEXT NOT NULL,
            model TEXT NOT NULL,          -- '' when unknown
            le_ms REAL NOT NULL,
            requests INTEGER NOT NULL,
            PRIMARY KEY (day, provider, model, le_ms)
        );
        """
    )
    db.register_function(lambda ms: upper_ms(bucket_of(ms)), name="metrion_le_ms", deterministic=True)
    db.execute(
        """
        INSERT INTO latency_histogram (day, provider, model, le_ms, requests)
        SELECT substr(ts, 1, 10), provider, coalesce(model, ''), metrion_le_ms(latency_ms), count(*)
        FROM requests WHERE forwarded = 1 AND latency_ms IS NOT NULL AND provider IS NOT NULL
        GROUP BY 1, 2, 3, 4
        """
    )


@metrion()
def m004_facet_counts(db: Database) -> None:
    db.executescript(
        """
        -- Requests per value of each column the Logs page facets by, kept by the writer in the
        -- same transaction as the rows: the unfiltered page reads a few rows here instead of
        -- scanning four million-entry indexes (~50 ms each). NULLs are not counted (Datasette's
        -- facets leave them out too).
        CREATE TABLE request_facets (
            facet TEXT NOT NULL,          -- requester, provider, model or status
            value NOT NULL,               -- as stored in requests (status is an integer)
            requests INTEGER NOT NULL,
            PRIMARY KEY (facet, value)
        );
        """
    )
    for column in ("requester", "provider", "model", "status"):
        db.execute(
            f"INSERT INTO request_facets (facet, value, requests) SELECT '{column}', {column}, count(*) "
            f"FROM requests WHERE {column} IS NOT NULL GROUP BY {column}"
        )


@metrion()
def m005_facet_indexes_by_time(db: Database) -> None:
    db.executescript(
        """
        -- A Logs page filtered by a facet value asks for that value's newest rows
        -- (`WHERE "provider" = :p0 ORDER BY ts DESC LIMIT 51`). On a column-only index SQLite
        -- took every matching row and sorted them: 0.8-1.0 s for that query alone, for a
        -- provider holding 17% of a million rows. On (column, ts) it reads the newest 51 in
        -- order. The filtered count still reads the index alone. The entries are wider: the
        -- million-row log grew 28%.
        DROP INDEX IF EXISTS requests_provider;
        DROP INDEX IF EXISTS requests_model;
        DROP INDEX IF EXISTS requests_status;
        DROP INDEX IF EXISTS requests_requester;
        CREATE INDEX IF NOT EXISTS requests_provider_ts ON requests(provider, ts);
        CREATE INDEX IF NOT EXISTS requests_model_ts ON requests(model, ts);
        CREATE INDEX IF NOT EXISTS requests_status_ts ON requests(status, ts);
        CREATE INDEX IF NOT EXISTS requests_requester_ts ON requests(requester, ts);
        """
    )


@metrion()
def m006_facet_combinations(db: Database) -> None:
    db.executescript(
        """
        -- Requests per combination of the Logs page's facet values, kept by the writer in the
        -- same transaction as the rows. A page filtered by facet values (?provider=xai) counts
        -- its facets here: Datasette's GROUP BY over the matching rows took 0.6-0.9 s on a
        -- million-row log where the filter matched 80,000-170,000 of them, each facet cut off
        -- at its 250 ms limit. NULL is a value here (a request with no x-metrion-user), so
        -- the writer matches rows with IS, and no UNIQUE constraint (NULLs never conflict).
        CREATE TABLE request_facet_combinations (
            requester TEXT,
            provider TEXT,
            model TEXT,
            status INTEGER,
            requests INTEGER NOT NULL
        );
        -- The writer finds a combination by all four; a page filtered by one value finds its
        -- combinations by that one (there are as many as requesters, times models and statuses).
        CREATE INDEX request_facet_combinations_values
            ON request_facet_combinations (provider, model, status, requester);
        CREATE INDEX request_facet_combinations_requester ON request_facet_combinations (requester);
        CREATE INDEX request_facet_combinations_model ON request_facet_combinations (model);
        CREATE INDEX request_facet_combinations_status ON request_facet_combinations (status);
        INSERT INTO request_facet_combinations (requester, provider, model, status, requests)
            SELECT requester, provider, model, status, count(*) FROM requests
            GROUP BY requester, provider, model, status;
        """
    )


@metrion()
def m007_facet_indexes_by_column(db: Database) -> None:
    db.executescript(
        """
        -- The Logs page is now ordered by id, newest logged first, not by ts. Datasette orders
        -- a first page by its sort column alone and later pages (`_next=`) by that column then
        -- ascending id: rows of the same ts (a millisecond) came in another order on the first
        -- page than after it, and paging on showed some twice and skipped others. id is unique.
        -- A page filtered by a facet value (`WHERE provider = ? ORDER BY id DESC`) reads its
        -- newest rows in order from the column's own index (its entries end with the id), so
        -- m005's indexes by column and time go: the by-time ones made the log 28% bigger and
        -- the writer slower. requests_ts stays, for time filters and a page sorted by ts.
        DROP INDEX IF EXISTS requests_provider_ts;
        DROP INDEX IF EXISTS requests_model_ts;
        DROP INDEX IF EXISTS requests_status_ts;
        DROP INDEX IF EXISTS requests_requester_ts;
        CREATE INDEX IF NOT EXISTS requests_provider ON requests(provider);
        CREATE INDEX IF NOT EXISTS requests_model ON requests(model);
        CREATE INDEX IF NOT EXISTS requests_status ON requests(status);
        CREATE INDEX IF NOT EXISTS requests_requester ON requests(requester);
        """
    )
