"""The chat stage's side of the wire (pipelines/llm_stage.py), without a server.

A pool's answers are untrusted: `parse_chat_response` and `parse_http_result` turn any
body (malformed choices, odd usage, error objects, non-JSON, HTTP errors) into a
`ChatResult` with an error instead of raising; `normalize_messages` and `build_payload`
check and build what is sent; `chat_sync` against an unreachable endpoint reports each
request's error. Unit tests, without Ray: the same functions run inside the Ray Data
stage, which test_teacher_pool_serve.py pushes real datasets through.
"""

from __future__ import annotations

import json

import pytest
from pool_endpoints import USER
from pool_endpoints import dead_endpoint as _dead_endpoint

from raydistill.pipelines.llm_stage import (
    ChatResult,
    Sampling,
    build_payload,
    chat_results,
    chat_sync,
    normalize_messages,
    parse_chat_response,
    parse_http_result,
)

pytestmark = pytest.mark.timeout(900)


GOOD = {
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "a"}},
        {"index": 1, "message": {"role": "assistant", "content": "b"}},
    ],
    "usage": {"completion_tokens": 7},
}


@pytest.mark.parametrize(
    "obj, cands, tokens, err",
    [
        (GOOD, ["a", "b"], 7, ""),
        ({"choices": [{"message": {"content": "x"}}]}, ["x"], 0, ""),  # no usage
        ({**GOOD, "usage": {"completion_tokens": "7"}}, ["a", "b"], 0, ""),
        ({**GOOD, "usage": {"completion_tokens": -3}}, ["a", "b"], 0, ""),
        ({**GOOD, "usage": {"completion_tokens": True}}, ["a", "b"], 0, ""),
        ({**GOOD, "usage": {"completion_tokens": 4.0}}, ["a", "b"], 4, ""),
        ({**GOOD, "usage": "lots"}, ["a", "b"], 0, ""),
        # malformed choices are skipped, the rest kept
        (
            {
                "choices": [
                    None,
                    "str",
                    {"message": None},
                    {"message": {"content": None}},
                    {"message": {"content": 5}},
                    {"message": {"content": "ok"}},
                    {"message": {"content": [{"type": "text", "text": "p"}, {"x": 1}]}},
                    {"text": "legacy"},
                ]
            },
            ["ok", "p", "legacy"],
            0,
            "",
        ),
        ({"choices": []}, [], 0, "0 choices"),
        ({"choices": [{"message": {"content": None}}]}, [], 0, "none with text"),
        ({"choices": "abc"}, [], 0, "no 'choices' list"),
        ({}, [], 0, "no 'choices' list"),
        ({"error": {"message": "model overloaded"}}, [], 0, "model overloaded"),
        ({"error": "boom"}, [], 0, "boom"),
        ({"detail": [{"msg": "field required"}]}, [], 0, "field required"),
        ([1, 2], [], 0, "not a JSON object"),
        ("choices", [], 0, "not a JSON object"),
        (None, [], 0, "not a JSON object"),
        (42, [], 0, "not a JSON object"),
    ],
)
def test_parse_chat_response_untrusted(obj, cands, tokens, err):
    res = parse_chat_response(obj)
    assert isinstance(res, ChatResult)
    assert res.candidates == cands
    assert res.generated_tokens == tokens
    if err:
        assert err in res.error
    else:
        assert res.error == ""


def test_parse_http_result():
    ok = json.dumps(GOOD)
    assert parse_http_result(200, ok) == ChatResult(["a", "b"], 7, "")
    assert parse_http_result(200, ok.encode()) == ChatResult(["a", "b"], 7, "")
    r = parse_http_result(500, "Internal Server Error")
    assert r.candidates == [] and r.error.startswith("HTTP 500") and "Internal" in r.error
    r = parse_http_result(400, json.dumps({"error": {"message": "n: too big"}}))
    assert r.error == "HTTP 400: n: too big"
    assert "not valid JSON" in parse_http_result(200, "<html>").error
    assert "not valid JSON" in parse_http_result(200, "").error
    assert "not valid JSON" in parse_http_result(200, b"\xff\xfe").error
    assert parse_http_result(None, None, "ConnectError: refused").error == "ConnectError: refused"
    assert "x" * 600 not in parse_http_result(502, "x" * 5000).error  # clipped
    colour = "original exception: \x1b[36mray::ServeReplica\x1b[39m\n  boom"
    assert (
        parse_http_result(500, colour).error
        == "HTTP 500: original exception: ray::ServeReplica boom"
    )


def test_normalize_messages_and_payload():
    import numpy as np

    msgs = np.array([{"role": "user", "content": "hi"}], dtype=object)
    assert normalize_messages(msgs) == [{"role": "user", "content": "hi"}]
    for bad in (None, "hi", [], [{"role": "user"}], [{"role": None, "content": "x"}], 5, [3]):
        with pytest.raises(ValueError):
            normalize_messages(bad)
    p = build_payload("teacher", USER, Sampling(n=3, seed=None))
    assert p["n"] == 3 and p["model"] == "teacher" and "seed" not in p
    assert build_payload("t", USER, Sampling(seed=5))["seed"] == 5


def test_chat_sync_unreachable_reports_errors():
    dead = _dead_endpoint()
    res = chat_results(dead, [USER, USER], Sampling(), max_retries=0)
    assert [r.candidates for r in res] == [[], []]
    assert all("failed after 1 attempt" in r.error for r in res)
    with pytest.raises(RuntimeError, match="2 of 2 chat requests failed"):
        chat_sync(dead, [USER, USER], Sampling(), max_retries=0)
    assert chat_sync(dead, [USER], Sampling(), max_retries=0, raise_on_error=False) == [([], 0)]
