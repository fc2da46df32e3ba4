"""Header reads and writes straight on `Headers.fields`, the (name, value) byte pairs.

mitmproxy's dict-like `Headers` converts and lower-cases every field on every lookup (a dozen
calls per field); the hooks read or replace a few headers of every request, so they go to the
fields directly. Names are given as lower-case bytes; values come back as mitmproxy gives them
(UTF-8, undecodable bytes as surrogates).
"""

from operator import itemgetter

from mitmproxy.http import Headers

# Header names as they came -> lower case. Clients and providers send the same few names in
# the same case on every message, so one dict lookup replaces a `lower()` (and its new bytes
# object) per field. Bounded in count and in name length.
# Names longer than _LOWER_LONGEST are lower-cased each time, never kept: a client cannot pin
# large names in memory through it.
_LOWER_MAX = 4096
_LOWER_LONGEST = 64
_name = itemgetter(0)


class _LowerNames(dict):
    def __missing__(self, name: bytes) -> bytes:
        low = name.lower()
        if len(name) <= _LOWER_LONGEST:
            if len(self) >= _LOWER_MAX:
                self.clear()
            self[name] = low
        return low


_LOWER = _LowerNames()
lower = _LOWER.__getitem__

# The fields last read and their lower-case names. The hooks of one request read the same
# fields one after another (Router, Credentials, BodyCheck), so the names are lowered once
# per request and each lookup is a search of a list in C. Measured in the proxy under load,
# each Python pass over an SDK's sixteen headers cost several µs. A tuple's identity is
# enough: it cannot change, and the one kept here cannot be freed and its address reused.
_last: tuple[tuple, list[bytes]] = ((), [])


def lowered(fields: tuple) -> list[bytes]:
    """The fields' names in lower case, in order. Shared: callers must not change the list."""
    global _last
    seen, names = _last
    if seen is not fields:
        names = list(map(lower, map(_name, fields)))
        if type(fields) is tuple:
            _last = (fields, names)
    return names


def _set(headers: Headers, fields: tuple, names: list[bytes]) -> None:
    """New fields whose lower-case names the caller knows."""
    global _last
    headers.fields = fields
    _last = (fields, names)


def names_starting(headers: Headers, prefix: bytes) -> set[bytes]:
    """The lower-cased names of the fields whose name starts with `prefix` (lower case)."""
    names = lowered(headers.fields)
    # Most requests carry none: one C-level join answers that.
    if b"\0" + prefix not in b"\0" + b"\0".join(names):
        return set()
    return {name for name in names if name.startswith(prefix)}


def get_all(headers: Headers, name: bytes) -> list[str]:
    fields = headers.fields
    names = lowered(fields)
    if name not in names:
        return []
    at = names.index(name)
    if names.count(name) == 1:
        return [fields[at][1].decode("utf-8", "surrogateescape")]
    return [fields[i][1].decode("utf-8", "surrogateescape") for i, low in enumerate(names) if low == name]


def get(headers: Headers, name: bytes, default: str = "") -> str:
    """The header's value, several folded with ", " as `Headers.get` does; else `default`."""
    values = get_all(headers, name)
    return ", ".join(values) if values else default


def replace(headers: Headers, name: bytes, value: str) -> None:
    """One value where the header was (at its first place), or added at the end."""
    encoded = value.encode("utf-8", "surrogateescape")
    fields = headers.fields
    names = lowered(fields)
    if name not in names:
        _set(headers, (*fields, (name, encoded)), [*names, name])
        return
    at = names.index(name)
    field = (fields[at][0], encoded)
    if names.count(name) == 1:
        _set(headers, (*fields[:at], field, *fields[at + 1:]), names)
        return
    kept = [(f, low) for f, low in zip(fields[at + 1:], names[at + 1:]) if low != name]
    _set(headers, (*fields[:at], field, *(f for f, _ in kept)), [*names[:at + 1], *(low for _, low in kept)])


def remove(headers: Headers, names: set[bytes] | frozenset[bytes]) -> None:
    fields = headers.fields
    low = lowered(fields)
    if names.isdisjoint(low):
        return
    kept = [(f, n) for f, n in zip(fields, low) if n not in names]
    _set(headers, tuple(f for f, _ in kept), [n for _, n in kept])


def pick(headers: Headers, names: frozenset[bytes]) -> dict[bytes, str]:
    """The named headers' values (several of one name folded with ", "); absent ones left out."""
    fields = headers.fields
    low = lowered(fields)
    found: dict[bytes, str] = {}
    for name in names.intersection(low):  # a few names, each searched for in C
        at = low.index(name)
        if low.count(name) == 1:
            found[name] = fields[at][1].decode("utf-8", "surrogateescape")
        else:
            found[name] = ", ".join(fields[i][1].decode("utf-8", "surrogateescape")
                                    for i, n in enumerate(low) if n == name)
    return found
