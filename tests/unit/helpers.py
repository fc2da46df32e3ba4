"""Flows and a ready Store for the addons' unit tests (taddons, no proxy process)."""

from mitmproxy import http
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import tflow

from addons import providers
from metrion_cli import accounts, db as dbmod, tokens
from metrion_cli.paths import resolve
from metrion_cli.vault import Vault, load_keyring


def openai_flow(path="/v1/chat/completions", headers=None, body=b'{"model":"gpt-4o-mini","messages":[]}',
                upstream=None, method="POST"):
    flow = tflow.tflow()
    upstream = upstream or providers.get("openai").DEFAULT_UPSTREAM
    flow.client_conn.proxy_mode = ProxyMode.parse(f"reverse:{upstream}@8101")
    flow.request = http.Request.make(method, upstream + path, body, headers or {})
    flow.response = None
    return flow


def data_dir_with_acme(data_dir, key: str) -> tuple:
    """An initialised data directory with account acme, its OpenAI key and a token.
    Returns (metrion db, token)."""
    paths = resolve(data_dir)
    dbmod.initialise(paths)
    load_keyring(create=True)
    db = dbmod.open_metrion(paths)
    accounts.ensure(db, accounts.DEFAULT_ACCOUNT)
    acme = accounts.add(db, "acme")
    Vault.open(paths).put(acme["id"], "openai", key)
    token, _ = tokens.create(db, acme["id"])
    return db, token
