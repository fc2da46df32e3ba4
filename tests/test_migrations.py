from sqlite_utils import Database

from metrion_cli import db as dbmod, migrations
from metrion_cli.paths import resolve
from metrion_cli.writer import REQUEST_COLUMNS


def test_schema_after_all_migrations(data_dir):
    paths = resolve(data_dir)
    dbmod.initialise(paths)
    db = Database(paths.metrion_db)
    assert set(db.table_names()) >= {"accounts", "tokens", "registered_keys", "requests", "usage_monthly", "meta"}
    assert set(REQUEST_COLUMNS) <= set(db["requests"].columns_dict)
    assert db["tokens"].columns_dict == {
        "id": int, "account_id": int, "sha256": str, "prefix": str, "name": str, "rpm": int,
        "created": str, "revoked": str}
    vault = Database(paths.vault_db)
    assert set(vault["provider_keys"].columns_dict) == {
        "id", "account_id", "provider", "ciphertext", "key_version", "last4", "fingerprint", "created"}


def test_migrations_run_once_and_in_order(data_dir):
    paths = resolve(data_dir)
    dbmod.initialise(paths)
    dbmod.initialise(paths)
    db = Database(paths.metrion_db)
    applied = [m.name for m in migrations.metrion.applied(db)]
    assert applied == [m.name for m in migrations.metrion._migrations]


def test_config_version_moves_when_tokens_change(data_dir):
    paths = resolve(data_dir)
    dbmod.initialise(paths)
    db = Database(dbmod.connect(paths.metrion_db))
    before = db.execute("SELECT value FROM meta WHERE key = 'config_version'").fetchone()[0]
    db["accounts"].insert({"name": "a", "plan": "free", "created": "x"})
    after = db.execute("SELECT value FROM meta WHERE key = 'config_version'").fetchone()[0]
    assert after > before
