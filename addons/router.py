"""Router: which provider a request is for, decided by the listener it arrived on.

- A reverse listener whose upstream is a provider's (its public API, or the URL given for it in
  `metrion_upstream`) serves that provider.
- Any other request gets a 404 from Metrion and is not forwarded.
- While Metrion shuts down, new requests get a 503 in the provider's shape (retryable: the
  SDKs retry it on a new connection) so that the requests in flight can finish and be recorded.
- Takes the `x-metrion-*` headers off every routed request (the requester name and an optional
  account token for pass-through) so that none of them reaches the provider, and sets the
  provider's fixed headers (Anthropic's `anthropic-version`).
"""

import json
from collections.abc import Sequence
import logging

from mitmproxy import ctx, exceptions, http
from mitmproxy.proxy.mode_specs import ReverseMode

from addons import headers as fast_headers
from addons import providers
from addons.refuse import refuse
from metrion_cli.tokens import hide_tokens

logger = logging.getLogger("metrion")

MAX_REQUESTER_CHARS = 200


def parse_upstreams(specs: list[str] | tuple[str, ...]) -> dict[str, str]:
    """`openai=http://127.0.0.1:9001` -> {"openai": "http://127.0.0.1:9001"}, defaults filled in."""
    upstreams = {name: module.DEFAULT_UPSTREAM for name, module in providers.PROVIDERS.items()}
    for spec in specs:
        name, sep, url = spec.partition("=")
        if not sep or not url:
            raise ValueError(f"expected PROVIDER=URL, got {spec!r}")
        if name not in providers.PROVIDERS:
            raise ValueError(f"unknown provider {name!r} (known: {', '.join(providers.PROVIDERS)})")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"upstream for {name} must be an http:// or https:// URL, got {url!r}")
        upstreams[name] = url
    return upstreams


def _normalise(url: str) -> str:
    return url.rstrip("/").lower()


def _escape(c: str) -> str:
    if c.isprintable():
        return c
    code = ord(c)
    # Bytes that were not UTF-8 arrive as surrogates (surrogateescape): show the byte itself.
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\x{code:02x}"


def clean_requester(value: str) -> str:
    """Control characters and bytes that are not UTF-8 escaped, length bounded, a Metrion token
    (sent here by mistake) cut out: the header is the client's, the row is ours."""
    return hide_tokens("".join(map(_escape, value[:MAX_REQUESTER_CHARS])))


def index_upstreams(specs: Sequence[str]) -> dict[str, str]:
    """Normalised upstream URL -> provider; raises ValueError on a bad or ambiguous spec."""
    by_upstream: dict[str, str] = {}
    for name, url in parse_upstreams(specs).items():
        if _normalise(url) in by_upstream:
            raise ValueError(f"{name} and {by_upstream[_normalise(url)]} share the upstream {url}")
        by_upstream[_normalise(url)] = name
    return by_upstream


class Router:
    def __init__(self, store=None) -> None:
        self.store = store
        self.by_upstream: dict[str, str] = index_upstreams([])
        self._by_mode: dict[int, tuple] = {}  # id(listener's mode) -> (mode, provider)
        self.fixed_headers = {name: {k.encode(): v for k, v in module.FIXED_REQUEST_HEADERS.items()}
                              for name, module in providers.PROVIDERS.items()}
        self.stream_usage = False

    def load(self, loader) -> None:
        loader.add_option(
            "metrion_upstream", Sequence[str], [],
            "Upstream URL of a provider, as PROVIDER=URL (repeatable), e.g. "
            "openai=http://127.0.0.1:9001. A reverse listener whose target is that URL serves "
            "that provider; without it, the provider's public API.",
        )

        loader.add_option(
            "metrion_stream_usage", bool, False,
            "Ask OpenAI-style chat streams for usage (add stream_options.include_usage when the "
            "client did not), and take the extra usage chunk out of what the client receives. "
            "Off: such streams are forwarded unchanged and their usage is recorded as not reported.",
        )
        loader.add_option(
            "metrion_anthropic_version", str, providers.get("anthropic").FIXED_REQUEST_HEADERS["anthropic-version"],
            "The anthropic-version header sent upstream on every Anthropic request, whatever the "
            "client sent: the one change Metrion makes to a request.",
        )

    def configure(self, updated) -> None:
        if "metrion_anthropic_version" in updated:
            self.fixed_headers["anthropic"][b"anthropic-version"] = ctx.options.metrion_anthropic_version
        if "metrion_stream_usage" in updated:
            self.stream_usage = ctx.options.metrion_stream_usage
        if "metrion_upstream" in updated:
            try:
                self.by_upstream = index_upstreams(ctx.options.metrion_upstream)
            except ValueError as e:
                raise exceptions.OptionsError(f"metrion_upstream: {e}") from None
            self._by_mode = {}

    def route(self, flow: http.HTTPFlow) -> str | None:
        """The provider this flow's listener serves, or None."""
        mode = flow.client_conn.proxy_mode
        # A listener's connections share its mode object: found by identity first (the
        # mode is kept in the entry, so a freed one's id cannot be mistaken for it).
        entry = self._by_mode.get(id(mode))
        if entry is None or entry[0] is not mode:
            if len(self._by_mode) > 1000:
                self._by_mode.clear()
            entry = self._by_mode[id(mode)] = (
                mode, self.by_upstream.get(_normalise(mode.data)) if isinstance(mode, ReverseMode) else None)
        return entry[1]

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        meta = flow.metadata["metrion"] = {}
        if self.store is not None:
            self.store.inflight[flow.id] = flow
        provider = self.route(flow)
        headers = flow.request.headers
        ours = fast_headers.names_starting(headers, b"x-metrion-")
        if ours:
            values = fast_headers.pick(headers, frozenset(ours))
            requester = values.get(b"x-metrion-user")
            meta["requester"] = clean_requester(requester) if requester else None
            meta["metrion_token"] = values.get(b"x-metrion-token") or None
            fast_headers.remove(headers, ours)
        if provider is None:
            meta["error"] = "no provider serves this listener"
            flow.response = http.Response.make(
                404, json.dumps({"error": {"message": "Metrion: no provider is configured for this "
                                           "address; see `metrion serve --help`", "type": "not_found"}}),
                {"content-type": "application/json"})
            return
        meta["provider"] = provider
        if self.store is not None and self.store.closing:
            return refuse(flow, "unavailable", "Metrion is shutting down; retry the request",
                          {"connection": "close"}, final=False)
        for name, value in self.fixed_headers[provider].items():
            fast_headers.replace(headers, name, value)
        if self.stream_usage:
            self._ask_for_stream_usage(flow, meta, providers.get(provider))

    @staticmethod
    def _ask_for_stream_usage(flow: http.HTTPFlow, meta: dict, provider) -> None:
        ask = getattr(provider, "ask_for_stream_usage", None)
        body = flow.request.raw_content
        if ask is None or not body or flow.request.headers.get("content-encoding"):
            return
        changed = ask(flow.request.path, body)
        if changed is not None:
            flow.request.content = changed
            meta["hide_usage_event"] = provider.is_usage_only_event
