"""Credentials: swap a Metrion token for the account's stored key, or let a provider key through.

- `mtr_` token where the provider's SDK puts its key: looked up by SHA-256 in the in-memory
  directory; the account's stored key for this provider replaces it, in the same place.
- Unknown or revoked token, no stored key, no credential at all, or two different credentials:
  401 in the provider's shape, nothing forwarded.
- A credential with `mtr_` starting a word that is not read as a token (another scheme, a tab
  or a colon after `Bearer`): 401, rather than sending the token to the provider as a key.
- A token left anywhere once the key is in place (another header, a trailer, the URL path, a
  query parameter, percent-encoded or not): 401 naming where, in either mode; only the slots are
  swapped, so it would go to the provider.
- Anything else is a provider key (pass-through): forwarded untouched and attributed to the
  account of an `x-metrion-token` header, else to the account that registered the key's
  fingerprint, else to the default account.
- Fails closed: any error here answers 500 rather than forwarding the token.
"""

import time
import urllib.parse

from mitmproxy import http

from addons import headers as fast_headers
from addons import providers
from addons.refuse import fail_closed, refuse
from addons.store import Store
from metrion_cli.tokens import TOKEN_IN_TEXT, TOKEN_PREFIX, TOKEN_PREFIX_BYTES, hash_token
from metrion_cli.vault import fingerprint


def find_credentials(flow: http.HTTPFlow, slots) -> list[tuple[providers.CredentialSlot, str]]:
    found = []
    for slot in slots:
        if slot.location == "header":
            found.extend((slot, credential_in(slot, value))
                         for value in fast_headers.get_all(flow.request.headers, slot.header))
        else:
            found.extend((slot, v) for v in flow.request.query.get_all(slot.name))
    return found


def credential_in(slot: providers.CredentialSlot, value: str) -> str:
    """The credential in a header slot's value: its scheme (any case) and spaces taken off."""
    scheme = slot.scheme
    if scheme and value[:len(scheme)].lower() == scheme.lower():
        value = value[len(scheme):]
    return value.strip()


def slot_example(slot: providers.CredentialSlot) -> str:
    """How a token goes in this slot, for an error message."""
    if slot.location == "header":
        return f"as `{slot.name}: {slot.scheme}mtr_...`"
    return f"as the `{slot.name}` query parameter"


def put_credential(flow: http.HTTPFlow, slot: providers.CredentialSlot, key: str) -> None:
    if slot.location == "header":
        fast_headers.replace(flow.request.headers, slot.header, slot.scheme + key)
    else:
        # Rewrite only our parameter (by its decoded name, as it was found): the rest of the
        # query string goes on byte for byte.
        path, _, query = flow.request.path.partition("?")
        parts = [p if _query_name(p) != slot.name else f"{slot.name}={urllib.parse.quote(key, safe='')}"
                 for p in query.split("&")]
        flow.request.path = f"{path}?{'&'.join(parts)}"


def drop_credential(flow: http.HTTPFlow, slot: providers.CredentialSlot) -> None:
    if slot.location == "header":
        del flow.request.headers[slot.name]
    else:
        path, _, query = flow.request.path.partition("?")
        parts = [p for p in query.split("&") if _query_name(p) != slot.name]
        flow.request.path = f"{path}?{'&'.join(parts)}" if parts else path


def _query_name(part: str) -> str:
    return urllib.parse.unquote_plus(part.partition("=")[0])


def token_left_in(request: http.Request) -> str | None:
    """Where a Metrion token is left in the request as it would go, or None: any header or
    trailer, the URL path, the query (percent-encoded or not). Only the credential slots are
    swapped, so a token anywhere else would reach the provider. Says where by name (unless the
    name holds `mtr_` itself), never by value."""
    trailers = request.data.trailers
    for name, value in (*request.data.headers.fields, *(trailers.fields if trailers else ())):
        if TOKEN_PREFIX_BYTES in value or TOKEN_PREFIX_BYTES in name:
            name_text = name.decode("utf-8", "surrogateescape")
            if TOKEN_IN_TEXT.search(f"{name_text}:{value.decode('utf-8', 'surrogateescape')}"):
                return "a header" if TOKEN_PREFIX in name_text else f"the {_shown(name_text)} header"
    raw = request.data.path
    if TOKEN_PREFIX_BYTES in raw or b"%" in raw:
        target, _, query = raw.decode("utf-8", "surrogateescape").partition("?")
        if TOKEN_IN_TEXT.search(urllib.parse.unquote(target)):
            return "the URL path"
        for name, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
            if TOKEN_IN_TEXT.search(f"{name}={value}"):
                return "a query parameter" if TOKEN_PREFIX in name else f"the {_shown(name)} query parameter"
    return None


def _shown(name: str) -> str:
    """A client's header or parameter name, quoted for a message: escaped, at most 60 characters."""
    return repr(name if len(name) <= 60 else name[:57] + "...")


# A token not in the snapshot triggers one reload (it may be seconds old); a token still unknown
# after that is not looked for again for this long, so garbage tokens cannot hammer the database.
UNKNOWN_TOKEN_TTL = 1.0
# Provider keys are under ~200 characters; a longer credential is not worth keeping.
MAX_CACHED_KEY_CHARS = 256


class Credentials:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._unknown: dict[str, float] = {}  # token sha256 -> when to look again
        self._hashes: dict[str, str] = {}     # token -> sha256, bounded
        self._fingerprints: dict[tuple[bytes, str], str] = {}  # (secret, pass-through key) -> fingerprint, bounded

    def request(self, flow: http.HTTPFlow):
        """Synchronous when the snapshot knows the request's tokens (nearly always); else a
        coroutine that reloads it once first (mitmproxy awaits it)."""
        if flow.response or flow.error or not flow.live:
            return None
        meta = flow.metadata.get("metrion")
        if not meta or not meta.get("provider"):
            return None
        try:
            provider = providers.get(meta["provider"])
            found = find_credentials(flow, provider.CREDENTIALS)
            unseen = self._unseen_tokens(found, meta.get("metrion_token"))
            if unseen:
                return self._reload_then_authorise(flow, meta, provider, found, unseen)
            self._authorise(flow, meta, provider, found)
        except Exception as e:
            fail_closed(flow, "Credentials", e)
        return None

    async def _reload_then_authorise(self, flow, meta, provider, found, unseen: list[str]) -> None:
        try:
            await self.store.refresh()
            if len(self._unknown) > 10_000:
                self._unknown.clear()
            retry_at = time.monotonic() + UNKNOWN_TOKEN_TTL
            for sha in unseen:
                if sha not in self.store.directory.tokens:
                    self._unknown[sha] = retry_at
            self._authorise(flow, meta, provider, found)
        except Exception as e:
            fail_closed(flow, "Credentials", e)

    def _unseen_tokens(self, found, claimed: str | None) -> list[str]:
        """Hashes of this request's tokens that the snapshot has not seen (and that were not
        looked for in the last UNKNOWN_TOKEN_TTL)."""
        known = self.store.directory.tokens
        if len(found) == 1 and not claimed and self._hashes.get(found[0][1]) in known:
            return []  # the common case: one token, seen before
        tokens = [v for _, v in found if v.startswith(TOKEN_PREFIX)] + ([claimed] if claimed else [])
        if not tokens:
            return []
        unknown, now = self._unknown, time.monotonic()
        return [h for h in map(self._hash, tokens) if h not in known and unknown.get(h, 0.0) < now]

    def _hash(self, token: str) -> str:
        sha = self._hashes.get(token)
        if sha is None:
            if len(self._hashes) > 10_000:
                self._hashes.clear()
            sha = self._hashes[token] = hash_token(token)
        return sha

    def _fingerprint(self, secret: bytes, key: str) -> str:
        """The key's fingerprint, an HMAC made once per key and secret (as `_hash` for tokens).
        Only key-sized values are kept: junk of any length is fingerprinted each time."""
        fp = self._fingerprints.get((secret, key))
        if fp is None:
            fp = fingerprint(secret, key)
            if len(key) <= MAX_CACHED_KEY_CHARS:
                if len(self._fingerprints) > 10_000:
                    self._fingerprints.clear()
                self._fingerprints[(secret, key)] = fp
        return fp

    def _authorise(self, flow: http.HTTPFlow, meta: dict, provider, found) -> None:
        self._swap_or_pass(flow, meta, provider, found)
        if flow.response is None:
            where = token_left_in(flow.request)
            if where:
                refuse(flow, "invalid_token",
                       f"a Metrion token in {where} would go to {provider.NAME} as it is: send it only "
                       f"where {provider.NAME}'s SDK sends its key, {slot_example(found[0][0])}; "
                       "nothing was forwarded")

    def _swap_or_pass(self, flow: http.HTTPFlow, meta: dict, provider, found) -> None:
        directory = self.store.directory
        if not found:
            return refuse(flow, "missing_credential",
                          "no API key: send your Metrion token (mtr_...) or a provider key")
        if len(found) > 1 and len({value for _, value in found}) > 1:
            return refuse(flow, "conflicting_credentials",
                          "the request carries two different credentials; send exactly one")
        slot, credential = found[0]
        if credential.startswith(TOKEN_PREFIX):
            token = directory.tokens.get(self._hash(credential))
            if token is None or token.revoked:
                return refuse(flow, "invalid_token", "unknown or revoked Metrion token")
            meta.update(account_id=token.account_id, token_id=token.token_id, token_rpm=token.rpm,
                        mode="stored")
            stored = directory.keys.get((token.account_id, provider.NAME))
            if stored is None:
                account = directory.accounts.get(token.account_id)
                name = account.name if account else str(token.account_id)
                return refuse(flow, "no_stored_key",
                              f"account {name!r} has no {provider.NAME} key; add one with "
                              f"`metrion keys add {name} {provider.NAME}`")
            meta["key_fingerprint"] = stored.fingerprint
            if stored.key is None:
                return refuse(flow, "internal", f"the stored {provider.NAME} key could not be "
                              "decrypted; the operator's log says why")
            # The same token in another slot (or twice in one) goes: only the key is sent.
            if len(found) > 1:
                for other in {other for other, _ in found[1:] if other != slot}:
                    drop_credential(flow, other)
            put_credential(flow, slot, stored.key)
            return
        if TOKEN_IN_TEXT.search(credential):
            # A token behind a scheme or separator the slot does not use ("Token mtr_...",
            # "Bearer<TAB>mtr_...", "Bearer:mtr_..."): taken for a provider key, it would go to
            # the provider.
            return refuse(flow, "invalid_token",
                          f"a Metrion token must be sent where {provider.NAME}'s SDK sends its key, "
                          f"{slot_example(slot)}; it was not forwarded")
        meta["mode"] = "passthrough"
        meta["key_fingerprint"] = key_fp = self._fingerprint(directory.instance_secret, credential)
        claimed = meta.get("metrion_token")
        if claimed:
            token = directory.tokens.get(self._hash(claimed))
            if token is None or token.revoked:
                return refuse(flow, "invalid_token", "unknown or revoked Metrion token in x-metrion-token")
            meta.update(account_id=token.account_id, token_id=token.token_id, token_rpm=token.rpm)
            return
        meta["account_id"] = directory.fingerprints.get(key_fp, directory.default_account_id)
