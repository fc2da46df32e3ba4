"""Flows and a ready Store for the addons' unit tests (taddons, no proxy process)."""

from mitmproxy import http
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import tflow

from addons import providers


def openai_flow(path="/v1/chat/completions", headers=None, body=b'{"model":"gpt-4o-mini","messages":[]}',
                upstream=None, method="POST"):
    flow = tflow.tflow()
    upstream = upstream or providers.get("openai").DEFAULT_UPSTREAM
    flow.client_conn.proxy_mode = ProxyMode.parse(f"reverse:{upstream}@8101")
    flow.request = http.Request.make(method, upstream + path, body, headers or {})
    flow.response = None
    return flow
