from hypothesis import given, settings, strategies as st

from addons.sse import MAX_EVENT_BYTES, Event, SSEParser

STREAM = (b'event: message_start\r\ndata: {"a":1}\r\n\r\n: keep-alive comment\n'
          b'data: line one\ndata:line two\n\nevent: x\rdata: caf\xc3\xa9\r\r'
          b'data: {"usage":{"prompt_tokens":3}}\n\ndata: [DONE]\n\n')
EXPECTED = [
    Event("message_start", b'{"a":1}'),
    Event(None, b"line one\nline two"),
    Event("x", "café".encode()),
    Event(None, b'{"usage":{"prompt_tokens":3}}'),
    Event(None, b"[DONE]"),
]


def parse(chunks):
    parser = SSEParser()
    return [event for chunk in chunks for event in parser.feed(chunk)]


def test_whole_stream():
    assert parse([STREAM]) == EXPECTED


@settings(max_examples=300)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=20))
def test_any_split_gives_the_same_events(cuts):
    cuts = sorted(set(cuts))
    bounds = [0, *cuts, len(STREAM)]
    assert parse([STREAM[a:b] for a, b in zip(bounds, bounds[1:])]) == EXPECTED


def test_byte_by_byte():
    assert parse([STREAM[i:i + 1] for i in range(len(STREAM))]) == EXPECTED


def test_an_oversized_event_is_dropped_and_the_stream_goes_on():
    parser = SSEParser()
    huge = b"data: " + b"x" * (MAX_EVENT_BYTES + 10)
    events = []
    for i in range(0, len(huge), 65536):
        events += parser.feed(huge[i:i + 65536])
    events += parser.feed(b"\n\ndata: after\n\n")
    assert events == [Event(None, b"after")]
    assert parser.dropped == 1
