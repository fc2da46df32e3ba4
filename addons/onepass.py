"""OnePass: the common request, routed, authorised, checked and counted in one function.

The chain (Router, Credentials, BodyCheck, Quota) is the general path and the reference. Each
of its hooks runs cold, after ~1 ms of mitmproxy's own work, and pays for its own preamble,
header scan and calls. Measured, paired with the lean Master (order rotated, 14 rounds): the
chain 89.1% of its requests per CPU-second and +129 µs at c=1; one pass (a prototype) 91.9%
and +80 µs. `make bench-ab` against the chain alone: 102.6% requests per CPU-second, c=1 -34 µs.

`admit(flow)` takes only a request the chain would forward unchanged but for the key swap and
the provider's fixed headers: a routed listener, not shutting down, no `x-metrion-*` or
`content-encoding` header, no `mtr_` outside the credential slots (in the headers, path or
query), exactly one credential among the provider's header slots, a known unrevoked Metrion
token whose hash is cached, the account's decrypted stored key, a body the endpoint accepts,
the month current and the account under its cap and the token under its rate.
It leaves the flow as the chain would (meta, headers, the quota's counts) and returns True.
Anything else returns False having changed nothing (expired rate-limit stamps aside, which the
chain drops too), and the chain runs; so does an error raised here (Metrion logs it), before
the count and the changes to the flow, which come last. tests/unit/test_onepass.py runs both
over the same requests and compares the results.
"""

from mitmproxy import http

from addons import headers as fast_headers
from addons import providers
from addons.credentials import credential_in
from metrion_cli.tokens import TOKEN_PREFIX, TOKEN_PREFIX_BYTES

_METRION_PREFIX = b"x-metrion-"


class OnePass:
    def __init__(self, router, credentials, quota, store) -> None:
        self.router, self.credentials, self.quota, self.store = router, credentials, quota, store
        # provider -> {header name: slot}; None when a slot is a query parameter (the chain's)
        self.slots: dict[str, dict[bytes, providers.CredentialSlot] | None] = {}
        for name, module in providers.PROVIDERS.items():
            slots = {slot.header: slot for slot in module.CREDENTIALS if slot.location == "header"}
            # The key is put in before the fixed headers, the chain's other order: the same
            # only while no fixed header is a credential slot.
            apart = not slots.keys() & router.fixed_headers[name].keys()
            self.slots[name] = slots if len(slots) == len(module.CREDENTIALS) and apart else None

    def admit(self, flow: http.HTTPFlow) -> bool:
        router, store = self.router, self.store
        if store.closing or router.stream_usage:
            return False
        provider_name = router.route(flow)
        slots = self.slots.get(provider_name)
        if not slots:
            return False
        data = flow.request.data
        headers = data.headers
        fields = headers.fields
        get, lower = fast_headers._LOWER.get, fast_headers.lower
        at, slot = -1, None
        for i, (name, value) in enumerate(fields):
            low = get(name) or lower(name)
            if low in slots:
                if at >= 0:
                    return False  # two credentials, or one twice: the chain decides
                at, slot = i, slots[low]
            elif (low.startswith(_METRION_PREFIX) or low == b"content-encoding"
                  or TOKEN_PREFIX_BYTES in value or TOKEN_PREFIX_BYTES in low):
                return False  # the chain's: x-metrion-* headers, a compressed body, mtr_ outside the slots
        if slot is None:
            return False
        path = data.path
        if TOKEN_PREFIX_BYTES in path or b"%" in path:
            return False  # a token in the path or query, maybe percent-encoded: the chain looks
        credential = credential_in(slot, fields[at][1].decode("utf-8", "surrogateescape"))
        if not credential.startswith(TOKEN_PREFIX):
            return False
        sha = self.credentials._hashes.get(credential)
        directory = store.directory
        token = directory.tokens.get(sha) if sha is not None else None
        if token is None or token.revoked:
            return False
        provider = providers.get(provider_name)
        stored = directory.keys.get((token.account_id, provider.NAME))
        if stored is None or stored.key is None or TOKEN_PREFIX in stored.key or data.trailers is not None:
            return False  # none, or one the chain would look at after the swap; trailers likewise
        if providers.request_problem(provider.REQUIRED_FIELDS, data.method.decode("utf-8", "surrogateescape").upper(),
                                     path.decode("utf-8", "surrogateescape"), data.content or b""):
            return False
        # The headers as they will go, made before anything changes: a key that cannot be
        # encoded raises here, and the chain then fails closed on it.
        # The key where the token was (its header is there once), then the fixed headers, as
        # Router and Credentials do in the other order: they touch different names.
        sent = (fields[at][0], (slot.scheme + stored.key).encode("utf-8", "surrogateescape"))
        fields = (*fields[:at], sent, *fields[at + 1:])
        for name, value in router.fixed_headers[provider_name].items():
            fields = fast_headers.replaced(fields, name, value)
        meta = {"provider": provider_name, "account_id": token.account_id, "token_id": token.token_id,
                "token_rpm": token.rpm, "mode": "stored", "key_fingerprint": stored.fingerprint,
                "month": self.quota.month}
        if not self._count(meta, directory.accounts.get(token.account_id)):
            return False
        # Counted: only assignments from here on. Anything that could raise would send the
        # request to the chain, which would count it again.
        headers.fields = fields
        flow.metadata["metrion"] = meta
        store.inflight[flow.id] = flow
        return True

    def _count(self, meta: dict, account) -> bool:
        """Quota's admission, with Quota's own checks, done: False where Quota would refuse, or
        at a month's turn (Quota starts the month)."""
        quota = self.quota
        if not quota.month_starts <= self.store.now() < quota.month_ends:
            return False
        used = quota.used.get(meta["account_id"], 0)
        if quota.reached_cap(account, used) is not None:
            return False
        limiter_key, rpm = quota._rate_limit(meta, account)
        if rpm and quota.take_rate_slot(limiter_key, rpm) is not None:
            return False
        quota.used[meta["account_id"]] = used + 1
        return True
