"""Header reads and writes straight on `Headers.fields`, the (name, value) byte pairs.

mitmproxy's dict-like `Headers` converts and lower-cases every field on every lookup (a dozen
calls per field); the hooks read or replace a few headers of every request, so they go to the
fields directly. Names are given as lower-case bytes; values come back as mitmproxy gives them
(UTF-8, undecodable bytes as surrogates).
"""

from mitmproxy.http import Headers


def get_all(headers: Headers, name: bytes) -> list[str]:
    return [v.decode("utf-8", "surrogateescape") for k, v in headers.fields if k.lower() == name]


def get(headers: Headers, name: bytes, default: str = "") -> str:
    """The header's value, several folded with ", " as `Headers.get` does; else `default`."""
    values = get_all(headers, name)
    return ", ".join(values) if values else default


def replace(headers: Headers, name: bytes, value: str) -> None:
    """One value where the header was (at its first place), or added at the end."""
    encoded = value.encode("utf-8", "surrogateescape")
    fields, placed = [], False
    for field in headers.fields:
        if field[0].lower() != name:
            fields.append(field)
        elif not placed:
            fields.append((field[0], encoded))
            placed = True
    if not placed:
        fields.append((name, encoded))
    headers.fields = tuple(fields)


def remove(headers: Headers, names: set[bytes] | frozenset[bytes]) -> None:
    headers.fields = tuple(f for f in headers.fields if f[0].lower() not in names)


def pick(headers: Headers, names: frozenset[bytes]) -> dict[bytes, str]:
    """The named headers' values in one pass, several of one name folded with ", "."""
    found: dict[bytes, str] = {}
    for name, value in headers.fields:
        name = name.lower()
        if name in names:
            text = value.decode("utf-8", "surrogateescape")
            found[name] = f"{found[name]}, {text}" if name in found else text
    return found
