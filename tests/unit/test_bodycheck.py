import json

import pytest
from hypothesis import given, strategies as st

from addons import providers
from addons.providers import request_problem

ANTHROPIC = providers.get("anthropic").REQUIRED_FIELDS
OPENAI = providers.get("openai").REQUIRED_FIELDS
GEMINI = providers.get("gemini").REQUIRED_FIELDS


@pytest.mark.parametrize("required, path, body, problem", [
    (OPENAI, "/v1/chat/completions", b'{"model":"m","messages":[]}', None),
    (OPENAI, "/v1/chat/completions?beta=true", b'{"model":"m"}', "lacks required field: messages"),
    (OPENAI, "/v1/chat/completions", b'not json', "not valid JSON"),
    (OPENAI, "/v1/chat/completions", b'[1, 2]', "not a JSON object"),
    (OPENAI, "/v1/chat/completions", b'', "not valid JSON"),
    (OPENAI, "/v1/models", b'', None),
    (OPENAI, "/v1/responses", b'{"input":"x"}', "lacks required field: model"),
    (ANTHROPIC, "/v1/messages", b'{"model":"c","messages":[]}', "lacks required field: max_tokens"),
    (ANTHROPIC, "/v1/messages", b'{"messages":[]}', "lacks required fields: model, max_tokens"),
    (GEMINI, "/v1beta/models/g:generateContent?key=x", b'{"contents":[]}', None),
    (GEMINI, "/v1/models/g:streamGenerateContent?alt=sse", b'{}', "lacks required field: contents"),
])
def test_request_problem(required, path, body, problem):
    found = request_problem(required, "POST", path, body)
    assert (found is None) if problem is None else (problem in found)


def test_large_bodies_are_checked_without_parsing():
    big = b'{"model":"m","messages":[{"content":"' + b"x" * (3 * 1024 * 1024) + b'"}]}'
    assert request_problem(OPENAI, "POST", "/v1/chat/completions", big) is None
    assert "messages" in request_problem(OPENAI, "POST", "/v1/chat/completions", big.replace(b'"messages"', b'"m2"'))


@given(st.binary(max_size=300))
def test_never_raises_on_any_body(body):
    for module in providers.PROVIDERS.values():
        for suffix in module.REQUIRED_FIELDS:
            request_problem(module.REQUIRED_FIELDS, "POST", "/v1" + suffix, body)


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(),
                    lambda c: st.lists(c) | st.dictionaries(st.text(), c), max_leaves=20))
def test_never_raises_on_any_json(value):
    request_problem(OPENAI, "POST", "/v1/chat/completions", json.dumps(value).encode())
