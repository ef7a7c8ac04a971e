"""What makes two LLM requests the same, and where their answers are kept
(pipelines/request_cache.py, pipelines/llm_requests.py).

`request_key` is stable under rewording of the same request and changes with everything
that shapes an answer (model identity, messages, every sampling field, the JSON schema);
`model_identity` names the real model behind a pool; the SQLite request cache round-trips
answers in WAL mode and treats a damaged value as a miss; structured output
(`Sampling.json_schema`) is sent, and keyed, only where the backend supports it.
Unit tests, without Ray: the client is built against an endpoint it never calls. These
keys are what let a rerun send only the unfinished rows, which test_llm_client.py checks
by counting requests on the wire.
"""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from raydistill.pipelines.llm_requests import LLMClient, model_identity
from raydistill.pipelines.llm_stage import Sampling, build_payload
from raydistill.pipelines.request_cache import (
    CachedAnswer,
    RequestCache,
    RequestCacheError,
    request_key,
)

MSGS = [
    {"role": "system", "content": "You edit movie reviews."},
    {"role": "user", "content": "Opposite of 'great':"},
]
SCHEMA = {
    "title": "edit",
    "type": "object",
    "properties": {"text": {"type": "string"}, "changed": {"type": "integer"}},
    "required": ["text"],
}


# ============================================================ keys and storage


class _FakeEndpoint:
    """Only for tests that build a client but send nothing."""

    base_url = "http://127.0.0.1:9/v1"
    model = "teacher"
    headers: dict = {}
    chat_url = base_url + "/chat/completions"


def test_request_key_is_stable_and_sensitive_to_everything_that_shapes_an_answer():
    base = Sampling(n=2, temperature=0.9, top_p=0.95, max_tokens=12, seed=3)
    k = request_key("vllm:smollm2", MSGS, base)
    assert len(k) == 64 and k == request_key("vllm:smollm2", [dict(m) for m in MSGS], base)
    # The same request written differently: same key.
    same = Sampling(n=2, temperature=0.9, top_p=0.95, max_tokens=12, seed=3)
    assert request_key("vllm:smollm2", MSGS, same) == k
    assert request_key("m", MSGS, Sampling(temperature=1)) == request_key(
        "m", MSGS, Sampling(temperature=1.0)
    )
    reordered = dict(reversed(list(SCHEMA.items())))
    assert request_key("m", MSGS, Sampling(json_schema=SCHEMA)) == request_key(
        "m", MSGS, Sampling(json_schema=reordered)
    )
    client = LLMClient(_FakeEndpoint(), "vllm:smollm2")
    assert client.request_key(np.array(MSGS, dtype=object), base) == k  # Arrow/numpy rows

    changed = [
        request_key("vllm:other", MSGS, base),
        request_key("hf:smollm2", MSGS, base),
        request_key(
            "vllm:smollm2", [MSGS[0], {"role": "user", "content": "Opposite of 'good':"}], base
        ),
        request_key(
            "vllm:smollm2", [MSGS[0], {"role": "assistant", "content": MSGS[1]["content"]}], base
        ),
        request_key("vllm:smollm2", MSGS[1:], base),
        request_key("vllm:smollm2", [*MSGS, {"role": "user", "content": ""}], base),
    ]
    for field, value in [
        ("n", 3),
        ("temperature", 0.8),
        ("top_p", 1.0),
        ("max_tokens", 13),
        ("seed", 4),
        ("seed", None),
        ("json_schema", SCHEMA),
    ]:
        kw = dict(n=2, temperature=0.9, top_p=0.95, max_tokens=12, seed=3)
        kw[field] = value
        changed.append(request_key("vllm:smollm2", MSGS, Sampling(**kw)))
    changed.append(
        request_key(
            "vllm:smollm2",
            MSGS,
            Sampling(**{**base.__dict__, "json_schema": {**SCHEMA, "required": []}}),
        )
    )
    assert len(set(changed)) == len(changed) and k not in changed
    with pytest.raises(ValueError, match="model_id"):
        request_key("", MSGS, base)


def test_model_identity_names_the_real_model():
    assert model_identity("vllm", "smollm2-135m-instruct") == "vllm:smollm2-135m-instruct"
    assert model_identity("openai", "gpt-x", "https://h/v1/") == "openai:https://h/v1:gpt-x"

    class Pool:
        backend, model, url, batch_size, concurrency = "hf", "tiny-llama", None, 8, 2

    c = LLMClient.for_pool(_FakeEndpoint(), Pool())
    assert (c.model_id, c.batch_size, c.concurrency, c.structured_output) == (
        "hf:tiny-llama",
        8,
        2,
        False,
    )
    with pytest.raises(ValueError, match="max_error_fraction"):
        LLMClient(_FakeEndpoint(), "m", max_error_fraction=1.5)


def test_request_cache_round_trip_persists_in_wal_mode(tmp_path):
    cache = RequestCache.in_dir(tmp_path / "c")
    assert cache.path == tmp_path / "c" / "llm_requests.sqlite"
    assert cache.get_many(["a", "b"]) == {}
    ans = CachedAnswer(["x", "ümlaut ✓"], 5, 9)
    assert cache.put_many([("a", "m", ans)]) == 1
    cache.close()
    again = RequestCache.in_dir(tmp_path / "c")
    assert again.get_many(["a", "b"]) == {"a": ans} and len(again) == 1
    mode = sqlite3.connect(again.path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    # A damaged value is a miss (sent again), never a crash or a wrong answer.
    with sqlite3.connect(again.path) as db:
        db.execute("UPDATE answers SET candidates = '{not json' WHERE key = 'a'")
    assert again.get_many(["a"]) == {} and again.corrupt == 1
    with pytest.raises(RequestCacheError, match="local file"):
        RequestCache("s3://bucket/llm_requests.sqlite")


# ============================================================ structured output


def test_json_schema_payload_shape_and_backend_capability():
    p = build_payload("teacher", MSGS, Sampling(json_schema=SCHEMA))
    assert p["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "edit", "schema": SCHEMA},
    }
    untitled = {"type": "object", "title": "not a valid name!"}
    assert (
        build_payload("t", MSGS, Sampling(json_schema=untitled))["response_format"]["json_schema"][
            "name"
        ]
        == "output"
    )
    assert "response_format" not in build_payload("t", MSGS, Sampling())
    with pytest.raises(ValueError, match="json_schema"):
        build_payload("t", MSGS, Sampling(json_schema=["not", "a", "dict"]))
    s = Sampling(json_schema=SCHEMA)
    vllm = LLMClient(_FakeEndpoint(), "vllm:m", backend="vllm")
    hf = LLMClient(_FakeEndpoint(), "hf:m", backend="hf")
    assert vllm.effective_sampling(s).json_schema == SCHEMA
    assert hf.effective_sampling(s).json_schema is None
    # Not sent → not part of the key: the hf request is the plain one.
    assert hf.request_key(MSGS, s) == hf.request_key(MSGS, Sampling())
    assert vllm.request_key(MSGS, s) != vllm.request_key(MSGS, Sampling())


def test_a_deferred_pool_starts_only_for_a_request_the_cache_cannot_answer(tmp_path):
    """A stage whose answers are all cached (a rerun, the judge of a finished run) never
    starts the pool; the first miss starts it, once."""
    from raydistill.pipelines.llm_requests import DeferredEndpoint
    from raydistill.pipelines.llm_stage import normalize_messages

    starts = []

    def start():
        starts.append(1)
        raise RuntimeError("pool started")

    with RequestCache(tmp_path / "c.sqlite") as cache:
        client = LLMClient(DeferredEndpoint(start), "vllm:m", cache)
        sampling = Sampling(n=1, max_tokens=8)
        key = request_key(
            client.model_id, normalize_messages(MSGS), client.effective_sampling(sampling)
        )
        cache.put_many([(key, "vllm:m", CachedAnswer(["a fine film"], 3, 9))])
        [row] = client.chat([{"messages": MSGS}], sampling)
        assert row["candidates"] == ["a fine film"] and row["cached"]
        assert starts == [] and "pool not started" in repr(client)
        other = [{"role": "user", "content": "Opposite of 'dull':"}]
        with pytest.raises(RuntimeError, match="pool started"):
            client.chat([{"messages": other}], sampling)
        assert starts == [1]
