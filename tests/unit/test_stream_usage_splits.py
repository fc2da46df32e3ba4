"""Whatever the chunking, and whatever garbage a stream carries, the taps pass every byte on
unchanged, never raise, and read the same usage."""

import json
import re

import pytest
from hypothesis import given, settings, strategies as st

from addons import providers
from addons.providers import openai
from addons.recorder import SSETap
from metrion_cli.fakes import FakeUpstream
from providers_table import CASES


def streams():
    """One real stream per provider, as its fake upstream sends it (Gemini's has CRLF line
    ends; Mistral's is given them too, so both framings are split)."""
    import httpx2 as httpx
    found = {}
    for case in CASES:
        with FakeUpstream(case.provider) as fake:
            path, headers, body = case.raw_stream("sk-test-key-for-split-tests-0000")
            if case.provider == "openai":
                body = {**body, "stream_options": {"include_usage": True}}
            httpx.post(fake.url + path, headers=headers, json=body)
            sent = fake.sent[-1].body
            found[case.provider] = (path, sent.replace(b"\n", b"\r\n") if case.provider == "mistral" else sent)
    return found


STREAMS = streams()


def tap_through(provider: str, path: str, chunks: list[bytes]):
    tap = SSETap(providers.get(provider).stream_reader(path), "")
    out = b"".join(tap(chunk) for chunk in chunks)
    tap(b"")
    model, usage, _ = tap.result(providers.get(provider), path)
    return out, usage, model


@pytest.mark.parametrize("provider", list(STREAMS))
@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30))
def test_any_chunking_gives_the_same_usage(provider, cuts):
    path, body = STREAMS[provider]
    bounds = [0, *sorted({c % (len(body) + 1) for c in cuts}), len(body)]
    whole_out, whole_usage, whole_model = tap_through(provider, path, [body])
    out, usage, model = tap_through(provider, path, [body[a:b] for a, b in zip(bounds, bounds[1:])])
    assert out == whole_out == body
    assert (usage.input_tokens, usage.output_tokens, usage.raw) == \
           (whole_usage.input_tokens, whole_usage.output_tokens, whole_usage.raw)
    assert whole_usage.input_tokens is not None and model == whole_model


@pytest.mark.parametrize("provider", list(STREAMS))
@given(garbage=st.lists(st.binary(max_size=200), max_size=20))
def test_garbage_passes_unchanged_and_never_raises(provider, garbage):
    path, _ = STREAMS[provider]
    out, usage, _ = tap_through(provider, path, garbage)
    assert out == b"".join(garbage)


@pytest.mark.parametrize("provider", list(STREAMS))
def test_skipping_unneeded_events_reads_what_parsing_every_event_reads(provider):
    # One chunk per event is how streams usually arrive, and the one case where the tap skips
    # the events its reader says it does not need; byte by byte, nothing is ever skipped.
    path, body = STREAMS[provider]
    events = re.findall(rb".*?(?:\r\n\r\n|\n\n)", body, re.S)
    assert b"".join(events) == body and len(events) >= 3
    by_event = SSETap(providers.get(provider).stream_reader(path), "")
    by_byte = SSETap(providers.get(provider).stream_reader(path), "")
    assert b"".join(by_event(e) for e in events) == b"".join(by_byte(body[i:i + 1]) for i in range(len(body)))
    read_by_event = by_event.result(providers.get(provider), path)
    assert read_by_event == by_byte.result(providers.get(provider), path)
    assert read_by_event[0] and read_by_event[1].input_tokens is not None


def test_crlf_events_with_several_lines_are_read_whole():
    """A CRLF line end inside an event is not the event's end (it once was, in batches)."""
    stream = (b'event: response.created\r\ndata: {"type":"response.created","response":{"model":"gpt-4o",'
              b'"usage":null}}\r\n\r\nevent: response.completed\r\ndata: {"type":"response.completed",'
              b'"response":{"model":"gpt-4o","usage":{"input_tokens":5,"output_tokens":7,"total_tokens":12}}}'
              b'\r\n\r\n')
    for cut in range(len(stream) + 1):
        out, usage, model = tap_through("openai", "/v1/responses", [stream[:cut], stream[cut:]])
        assert out == stream
        assert (usage.input_tokens, usage.output_tokens, usage.total_tokens, model) == (5, 7, 12, "gpt-4o")


def test_hidden_usage_event_with_crlf_lines_leaves_the_rest_intact():
    chunks = [b'data: {"model":"gpt-4o","choices":[{"delta":{"content":"hi"}}]}\r\n\r\n',
              b'data: {"model":"gpt-4o","choices":[],\r\ndata: "usage":{"prompt_tokens":3,"completion_tokens":4,'
              b'"total_tokens":7}}\r\n\r\n',
              b'data: [DONE]\r\n\r\n']
    tap = SSETap(providers.get("openai").stream_reader("/v1/chat/completions"), "", openai.is_usage_only_event)
    out = b"".join(b"".join(tap(c)) for c in chunks + [b""])
    assert out == chunks[0] + chunks[2]
    _, usage, _ = tap.result(providers.get("openai"), "/v1/chat/completions")
    assert (usage.input_tokens, usage.output_tokens) == (3, 4)


def test_a_long_run_of_small_events_before_a_large_usage_event_is_read():
    """Batches are halved at event boundaries to find the events worth reading; when one event
    holds most of a batch's bytes, the run of small events before it must not be peeled one
    by one (3,000 of them once overflowed the stack and lost the usage)."""
    head = {"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4o-mini"}
    small = b"".join(b"data: " + json.dumps({**head, "choices": [{"delta": {"content": "w"}}]}).encode() + b"\n\n"
                     for _ in range(3000))
    usage = {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
    large = b"data: " + json.dumps({**head, "choices": [], "usage": usage, "pad": "x" * 400_000}).encode() + b"\n\n"
    for eol in (b"\n", b"\r\n"):
        body = (small + large + b"data: [DONE]\n\n").replace(b"\n", eol)
        tap = SSETap(openai.stream_reader("/v1/chat/completions"), "")
        assert tap.pass_on(body) == body
        model, read, error = tap.result(openai, "/v1/chat/completions")
        assert (model, read.input_tokens, read.output_tokens, read.note) == ("gpt-4o-mini", 5, 7, None), eol


def test_runs_of_blank_lines_before_the_model_is_known_are_read_through():
    """Halving can leave a piece of blank lines alone; while the reader still lacks the model it
    needs every piece, and such a piece once recursed forever (the usage was lost)."""
    body = b'data: {"a":1}\n\ndata: {"b":2}\n\n\ndata: {"choices":[],"usage":{"prompt_tokens":5}}\n\n'
    tap = SSETap(openai.stream_reader("/v1/chat/completions"), "")
    passed = tap.stream_callable()
    assert passed(body) == body and passed(b"") == b""
    _, usage, _ = tap.result(openai, "/v1/chat/completions")
    assert usage.raw == {"prompt_tokens": 5} and usage.note is None


def test_usage_split_over_data_lines_after_its_key_is_read():
    """SSE lets an event's data run over several `data:` lines (joined with a line end, which
    JSON reads as whitespace): a split between `"usage":` and its object must not hide it."""
    head = b'data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4o-mini",'
    body = (head + b'"choices":[{"delta":{"content":"hi"}}],"usage":null}\n\n'
            + head + b'"choices":[],"usage":\ndata: {"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}\n\n'
            + b"data: [DONE]\n\n")
    for eol in (b"\n", b"\r\n"):
        stream = body.replace(b"\n", eol)
        events = re.findall(rb".*?(?:\r\n\r\n|\n\n)", stream, re.S)
        out, usage, model = tap_through("openai", "/v1/chat/completions", events)
        assert out == stream
        assert (model, usage.input_tokens, usage.output_tokens, usage.note) == ("gpt-4o-mini", 5, 7, None), eol


def test_progress_moves_with_every_chunk_even_when_nothing_is_passed_on():
    """The upstream watchdog's sign of life: half an event, or a hidden usage event, passes
    nothing on to the client, yet the upstream is alive and must not be cut off."""
    tap = SSETap(providers.get("openai").stream_reader("/v1/chat/completions"), "", openai.is_usage_only_event)
    usage = b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}\n\n'
    seen = [tap.progress]
    for chunk in (b'data: {"id":"c","choices":[{"delta":{"content":"Hi"}}]', b"}\n\n", usage[:40], usage[40:]):
        tap(chunk)
        assert tap.progress > seen[-1], chunk
        seen.append(tap.progress)
    assert tap.bytes == len(b'data: {"id":"c","choices":[{"delta":{"content":"Hi"}}]}\n\n')  # the usage event was hidden
