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
_LOWER: dict[bytes, bytes] = {}
_LOWER_MAX = 4096
_LOWER_LONGEST = 64
_name = itemgetter(0)


def lower(name: bytes) -> bytes:
    low = _LOWER.get(name)
    if low is None:
        low = name.lower()
        if len(name) <= _LOWER_LONGEST:
            if len(_LOWER) >= _LOWER_MAX:
                _LOWER.clear()
            _LOWER[name] = low
    return low


def names_starting(headers: Headers, prefix: bytes) -> set[bytes]:
    """The lower-cased names of the fields whose name starts with `prefix` (lower case)."""
    # One C-level join and lower() over all names first: most requests carry none, and a
    # Python loop over the fields cost ~4 µs (SDKs send a dozen x- headers).
    if b"\0" + prefix not in b"\0" + b"\0".join(map(_name, headers.fields)).lower():
        return set()
    return {low for low in map(lower, map(_name, headers.fields)) if low.startswith(prefix)}


def get_all(headers: Headers, name: bytes) -> list[str]:
    get = _LOWER.get
    return [v.decode("utf-8", "surrogateescape") for k, v in headers.fields if (get(k) or lower(k)) == name]


def get(headers: Headers, name: bytes, default: str = "") -> str:
    """The header's value, several folded with ", " as `Headers.get` does; else `default`."""
    values = get_all(headers, name)
    return ", ".join(values) if values else default


def replace(headers: Headers, name: bytes, value: str) -> None:
    """One value where the header was (at its first place), or added at the end."""
    headers.fields = replaced(headers.fields, name, value)


def replaced(fields: tuple, name: bytes, value: str) -> tuple:
    """`fields` as `replace` leaves them, without touching any Headers."""
    encoded = value.encode("utf-8", "surrogateescape")
    get = _LOWER.get
    kept, placed = [], False
    for field in fields:
        if (get(field[0]) or lower(field[0])) != name:
            kept.append(field)
        elif not placed:
            kept.append((field[0], encoded))
            placed = True
    if not placed:
        kept.append((name, encoded))
    return tuple(kept)


def remove(headers: Headers, names: set[bytes] | frozenset[bytes]) -> None:
    get = _LOWER.get
    headers.fields = tuple(f for f in headers.fields if (get(f[0]) or lower(f[0])) not in names)


def pick(headers: Headers, names: frozenset[bytes]) -> dict[bytes, str]:
    """The named headers' values in one pass, several of one name folded with ", "."""
    return pick_fields(headers.fields, names)


def lower_case_dict(fields: tuple) -> dict[bytes, bytes] | None:
    """The fields as one dict made in C, when every name is in lower case and sent once (HTTP/2
    peers, and many HTTP/1 ones); else None. A provider's answer has a dozen fields or more,
    looked at one by one in Python otherwise."""
    as_sent = dict(fields)
    return as_sent if len(as_sent) == len(fields) and b"\0".join(as_sent).islower() else None


def pick_fields(fields: tuple, names: frozenset[bytes], as_sent: dict[bytes, bytes] | None = None) -> dict[bytes, str]:
    """`pick` over (name, value) pairs, without a Headers around them. `as_sent`: the fields'
    `lower_case_dict`, when the caller has made it already."""
    if as_sent is None:
        as_sent = lower_case_dict(fields)
    if as_sent is not None:
        return {name: as_sent[name].decode("utf-8", "surrogateescape") for name in names if name in as_sent}
    found: dict[bytes, str] = {}
    get = _LOWER.get
    for name, value in fields:
        name = get(name) or lower(name)
        if name in names:
            text = value.decode("utf-8", "surrogateescape")
            found[name] = f"{found[name]}, {text}" if name in found else text
    return found
