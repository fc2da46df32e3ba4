"""addons/headers.py reads and writes header fields as mitmproxy's Headers would, whatever the
case and repetition of names, and whatever order the calls come in (it caches lower-cased
names)."""

from hypothesis import given, settings, strategies as st
from mitmproxy.http import Headers

from addons import headers

NAMES = [b"authorization", b"Authorization", b"AUTHORIZATION", b"content-encoding", b"Content-Encoding",
         b"x-metrion-user", b"X-Metrion-User", b"X-Metrion-Token", b"x-stainless-os", b"Host", b"x-metrion"]
fields_strategy = st.lists(st.tuples(st.sampled_from(NAMES), st.binary(min_size=0, max_size=8)), max_size=8)
WANTED = [b"authorization", b"content-encoding", b"x-metrion-user", b"x-metrion-token", b"host"]


def reference_get_all(fields, name):
    return [v.decode("utf-8", "surrogateescape") for k, v in fields if k.lower() == name]


def reference_replace(fields, name, encoded):
    out, placed = [], False
    for k, v in fields:
        if k.lower() != name:
            out.append((k, v))
        elif not placed:
            out.append((k, encoded))
            placed = True
    return tuple(out) if placed else (*out, (name, encoded))


@settings(max_examples=300, deadline=None)
@given(fields=fields_strategy, steps=st.lists(st.tuples(st.sampled_from(["get", "replace", "remove", "add", "other"]),
                                                        st.sampled_from(WANTED), st.text(max_size=4)), max_size=6))
def test_reads_and_writes_match_a_plain_loop(fields, steps):
    h = Headers(fields)
    expected = tuple(fields)
    for op, name, value in steps:
        if op == "get":
            assert headers.get_all(h, name) == reference_get_all(expected, name)
            values = reference_get_all(expected, name)
            assert headers.get(h, name, "-") == (", ".join(values) if values else "-")
            assert headers.get_all(h, name) == h.get_all(name)  # mitmproxy's own answer
            wanted = frozenset({name, b"host"})
            assert headers.pick(h, wanted) == {
                n: ", ".join(reference_get_all(expected, n)) for n in wanted if reference_get_all(expected, n)}
        elif op == "replace":
            headers.replace(h, name, value)
            expected = reference_replace(expected, name, value.encode("utf-8", "surrogateescape"))
        elif op == "remove":
            headers.remove(h, {name, b"x-metrion-user"})
            expected = tuple(f for f in expected if f[0].lower() not in {name, b"x-metrion-user"})
        elif op == "add":  # changed through mitmproxy's own API: a new fields tuple
            h.add(name.decode().title(), value)
            expected = (*expected, (name.decode().title().encode(), value.encode("utf-8", "surrogateescape")))
        else:  # another request's headers read in between
            headers.get_all(Headers([(b"Authorization", b"other")]), name)
        assert h.fields == expected
        assert headers.names_starting(h, b"x-metrion-") == {k.lower() for k, _ in expected
                                                            if k.lower().startswith(b"x-metrion-")}


RESPONSE_NAMES = [b"content-type", b"content-length", b"x-request-id", b"date", b"Content-Type", b"X-Request-Id"]


@settings(max_examples=300, deadline=None)
@given(fields=st.lists(st.tuples(st.sampled_from(RESPONSE_NAMES), st.binary(min_size=0, max_size=6)), max_size=6))
def test_pick_fields_matches_a_plain_loop_whether_names_are_lower_case_and_unique_or_not(fields):
    wanted = frozenset({b"content-type", b"content-length", b"x-request-id"})
    assert headers.pick_fields(tuple(fields), wanted) == {
        n: ", ".join(reference_get_all(fields, n)) for n in wanted if reference_get_all(fields, n)}
