"""The cached LLM client (pipelines/llm_requests.py) sending real requests.

`LLMClient.chat` keeps rows in order, answers from the request cache, sends duplicates
once, retries faults then marks and counts them by kind, raises loudly when most rows
fail, and on a rerun (after failures or an interrupted driver) sends only the rows that
had not finished; CoD's `generate_counterfactuals` through the client reruns from the
cache without sending anything.

The integration tests push real requests through the Ray Data chat stage on the
session's local Ray cluster (conftest's `ray_session`) to a real scripted HTTP server
(`scripted_llm.ScriptedLLM`) and count what it received: only a socket exercises the
client, its retries and its Ray Data tasks in other processes, and counting on the wire
is what proves nothing was sent twice. The keys and the cache themselves are tested
without Ray in test_llm_request_cache.py; pool faults beyond these, in
test_faults_pool_garbage.py.
"""

from __future__ import annotations

import threading
import time

import pytest
from scripted_llm import ScriptedLLM, completion, last_user_message

from raydistill.pipelines.llm_requests import LLMClient, LLMStageError, LLMStats
from raydistill.pipelines.llm_stage import Sampling
from raydistill.pipelines.request_cache import RequestCache


def _rows(n: int, prefix: str = "p") -> list[dict]:
    return [
        {
            "id": f"{prefix}{i}",
            "extra": {"k": i},
            "messages": [{"role": "user", "content": f"{prefix}{i}"}],
        }
        for i in range(n)
    ]


def _answer_for(prompt: str) -> str:
    return f"answer to {prompt}"


def _answering(payload):
    n = int(payload.get("n") or 1)
    return 200, completion([_answer_for(last_user_message(payload))] * n, prompt_tokens=5)


# ============================================================ through Ray + HTTP


@pytest.fixture
def server():
    with ScriptedLLM(_answering) as s:
        yield s


def _client(server, cache=None, **kw) -> LLMClient:
    kw.setdefault("batch_size", 4)
    kw.setdefault("backoff_s", 0.05)
    return LLMClient(server.endpoint, "scripted:test", cache, backend="vllm", **kw)


@pytest.mark.ray
def test_chat_keeps_rows_in_order_answers_from_cache_and_sends_duplicates_once(
    ray_session, server, tmp_path
):
    cache = RequestCache.in_dir(tmp_path)
    client = _client(server, cache)
    rows = _rows(6)
    rows.insert(3, dict(rows[1], id="dup"))  # same messages as p1
    rows.append({"id": "bad", "messages": [{"role": "user", "content": None}]})
    out = client.chat(rows, Sampling(n=2, seed=0))
    assert [o["id"] for o in out] == [r["id"] for r in rows]
    assert server.count == 6  # p0..p5 once each; the duplicate and the bad row not sent
    for r, o in zip(rows[:-1], out[:-1], strict=True):
        prompt = r["messages"][0]["content"]
        assert o["extra"] == r["extra"] and o["messages"] == r["messages"]
        assert o["candidates"] == [_answer_for(prompt)] * 2, o
        assert o["llm_error"] == "" and not o["cached"]
        assert o["prompt_tokens"] == 5 and o["generated_tokens"] == 6  # 2 x 3 words
    assert out[-1]["candidates"] == [] and out[-1]["llm_error_kind"] == "bad_input"
    assert "null role or content" in out[-1]["llm_error"]
    assert len(cache) == 6
    s = client.stats
    assert (s.requests_sent, s.cache_hits, s.duplicates, s.errors) == (6, 0, 1, {"bad_input": 1})
    assert (s.generated_tokens, s.prompt_tokens) == (36, 30)

    # The same call again: nothing is sent, every answer is the cached one.
    again = _client(server, RequestCache.in_dir(tmp_path)).chat(rows, Sampling(n=2, seed=0))
    assert server.count == 6
    assert [o["candidates"] for o in again] == [o["candidates"] for o in out]
    assert [o["cached"] for o in again] == [True] * 7 + [False]
    # Another sampling parameter is another request.
    _client(server, cache).chat(rows[:2], Sampling(n=2, seed=1))
    assert server.count == 8


@pytest.mark.ray
def test_rows_with_their_own_sampling_seed_share_one_call(ray_session, server, tmp_path):
    """Several callers' rows in one pass (the weakness loop's arms in one round): each
    row's `sampling_seed` reaches the pool and its cache key; rows without one keep the
    call's seed; the same prompt under two seeds is two requests."""
    cache = RequestCache.in_dir(tmp_path)
    rows = _rows(3)
    rows = [dict(r, sampling_seed=7) for r in rows] + [
        dict(rows[0], id="again", sampling_seed=8),
        dict(rows[1], id="plain"),
    ]
    out = _client(server, cache).chat(rows, Sampling(n=1, seed=1))
    assert [o["id"] for o in out] == [r["id"] for r in rows]
    assert all(o["llm_error"] == "" for o in out)
    sent = sorted((last_user_message(p), p.get("seed")) for p in server.received())
    assert sent == [("p0", 7), ("p0", 8), ("p1", 1), ("p1", 7), ("p2", 7)]
    # A rerun of any one row alone, with its seed, is a cache hit.
    hit = _client(server, RequestCache.in_dir(tmp_path)).chat([rows[3]], Sampling(n=1, seed=1))
    assert hit[0]["cached"] and server.count == 5
    miss = _client(server, cache).chat([dict(rows[3], sampling_seed=9)], Sampling(n=1, seed=1))
    assert not miss[0]["cached"] and server.count == 6


@pytest.mark.ray
def test_rerun_after_failures_sends_only_the_unfinished_rows(ray_session, server, tmp_path):
    """Issue 11's acceptance test: count what the endpoint receives across a rerun."""
    rows = _rows(10)
    broken = {"p2", "p5", "p7", "p8"}

    def half_down(payload):
        if last_user_message(payload) in broken:
            return 503, {"error": {"message": "replica restarting"}}
        return _answering(payload)

    server.reset(half_down)
    first = _client(server, RequestCache.in_dir(tmp_path), max_retries=0).chat(rows, Sampling())
    assert server.count == 10  # 4 of 10 failed: below max_error_fraction, nothing raised
    assert {o["id"] for o in first if o["llm_error"]} == broken

    server.reset(_answering)  # the pool is back
    client = _client(server, RequestCache.in_dir(tmp_path), max_retries=0)
    final = client.chat(rows, Sampling())
    sent = [last_user_message(p) for p in server.received()]
    assert sorted(sent) == sorted(broken)  # each unfinished row exactly once, nothing else
    assert [o["id"] for o in final] == [r["id"] for r in rows]
    for r, o in zip(rows, final, strict=True):
        assert o["candidates"] == [_answer_for(r["id"])] and o["llm_error"] == ""
        assert o["cached"] == (r["id"] not in broken)
    assert client.stats.cache_hits == 6 and client.stats.requests_sent == 4


class _Crash(Exception):
    pass


class _CrashingCache(RequestCache):
    """A driver that dies after its first committed batch."""

    def put_many(self, items):
        if len(self) > 0:
            raise _Crash("driver killed")
        return super().put_many(items)


def _settle(server, quiet_s: float = 1.5, limit_s: float = 30.0) -> None:
    """Wait until no request has arrived for `quiet_s` (tasks of an abandoned run)."""
    t0, last, since = time.monotonic(), server.count, time.monotonic()
    while time.monotonic() - t0 < limit_s:
        time.sleep(0.2)
        if server.count != last:
            last, since = server.count, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return


@pytest.mark.ray
def test_rerun_after_an_interrupted_driver_repeats_no_committed_request(
    ray_session, server, tmp_path
):
    rows = _rows(12)
    with pytest.raises(_Crash):
        _client(server, _CrashingCache.in_dir(tmp_path), batch_size=2).chat(rows, Sampling())
    _settle(server)
    cache = RequestCache.in_dir(tmp_path)
    committed = {
        k
        for k in cache.get_many(
            _client(server).request_key(r["messages"], Sampling()) for r in rows
        )
    }
    assert 2 <= len(committed) < 12  # the first batch was durable before the crash
    server.reset()
    final = _client(server, cache, batch_size=2).chat(rows, Sampling())
    sent = [last_user_message(p) for p in server.received()]
    assert len(sent) == len(set(sent)) == 12 - len(committed)
    assert [o["candidates"] for o in final] == [[_answer_for(r["id"])] for r in rows]
    assert sum(o["cached"] for o in final) == len(committed)


@pytest.mark.ray
def test_faults_are_retried_then_marked_and_counted_by_kind(ray_session, server, tmp_path):
    attempts: dict[str, int] = {}
    lock = threading.Lock()

    def faulty(payload):
        prompt = last_user_message(payload)
        with lock:
            attempts[prompt] = attempts.get(prompt, 0) + 1
            nth = attempts[prompt]
        if prompt == "flaky" and nth == 1:
            return 503, {"error": {"message": "busy"}}
        if prompt == "down":
            return 500, {"error": {"message": "engine dead"}}
        if prompt == "trunc":
            return 200, b'{"choices": [{"message": {"content": "a du'
        if prompt == "empty":
            return 200, {"choices": [], "usage": {"completion_tokens": 0}}
        if prompt == "slow":
            time.sleep(2.0)
        return _answering(payload)

    server.reset(faulty)
    names = ["flaky", "down", "trunc", "empty", "slow", "ok1", "ok2", "ok3", "ok4"]
    rows = [{"id": n, "messages": [{"role": "user", "content": n}]} for n in names]
    client = _client(server, RequestCache.in_dir(tmp_path), timeout_s=0.5, max_retries=2)
    t0 = time.monotonic()
    out = {o["id"]: o for o in client.chat(rows, Sampling())}
    print(f"\n9 rows with faults, 2 retries: {time.monotonic() - t0:.1f} s")
    assert out["flaky"]["llm_error"] == "" and out["flaky"]["candidates"] == ["answer to flaky"]
    kinds = {n: out[n]["llm_error_kind"] for n in names if out[n]["llm_error"]}
    assert kinds == {
        "down": "http_5xx",
        "trunc": "invalid_json",
        "empty": "no_candidates",
        "slow": "timeout",
    }
    assert "failed after 3 attempt(s): HTTP 500: engine dead" in out["down"]["llm_error"]
    assert server.endpoint.chat_url in out["down"]["llm_error"]
    assert all(out[n]["candidates"] == [] for n in kinds)
    # 5xx, truncated bodies and timeouts are retried; an answer with no choices is not.
    assert {n: attempts[n] for n in ("flaky", "down", "trunc", "empty", "slow")} == {
        "flaky": 2,
        "down": 3,
        "trunc": 3,
        "empty": 1,
        "slow": 3,
    }
    assert client.stats.errors == {
        "http_5xx": 1,
        "invalid_json": 1,
        "no_candidates": 1,
        "timeout": 1,
    }
    assert client.stats.attempts == 2 + 3 + 3 + 1 + 3 + 4
    # Errors are not cached: the next call sends exactly the failed rows again.
    server.reset(_answering)
    client.chat(rows, Sampling())
    assert sorted(last_user_message(p) for p in server.received()) == sorted(kinds)


@pytest.mark.ray
def test_most_rows_failing_raises_a_clear_error_and_keeps_the_answers(
    ray_session, server, tmp_path
):
    def mostly_down(payload):
        if last_user_message(payload) == "p0":
            return _answering(payload)
        return 503, {"error": {"message": "no replica"}}

    server.reset(mostly_down)
    cache = RequestCache.in_dir(tmp_path)
    client = _client(server, cache, max_retries=0)
    with pytest.raises(LLMStageError) as e:
        client.chat(_rows(4), Sampling())
    msg = str(e.value)
    assert "3 of 4 rows" in msg and server.endpoint.chat_url in msg
    assert "HTTP 503: no replica" in msg and "http_5xx" in msg
    assert isinstance(e.value, RuntimeError) and len(e.value.rows) == 4
    assert len(cache) == 1  # the one answer that arrived is kept
    # Exactly at the threshold (2 of 4) nothing raises.
    server.reset(lambda p: _answering(p) if last_user_message(p) in ("p0", "p1") else (500, b""))
    out = _client(server, None, max_retries=0).chat(_rows(4), Sampling())
    assert sum(bool(o["llm_error"]) for o in out) == 2


@pytest.mark.ray
def test_unreachable_pool_raises_naming_the_url(ray_session, tmp_path):
    with ScriptedLLM() as gone:
        endpoint = gone.endpoint  # its port, closed once the block ends
    client = LLMClient(endpoint, "scripted:test", None, max_retries=1, backoff_s=0.05)
    with pytest.raises(LLMStageError, match=r"3 of 3 rows .*127\.0\.0\.1.*transport"):
        client.chat(_rows(3), Sampling())
    assert client.stats.errors == {"transport": 3}


@pytest.mark.ray
def test_a_rounds_llm_seconds_exclude_the_deferred_pool_start(ray_session):
    """The pool starts inside the first call that needs it. A weakness round's pool rate
    once counted that start-up as generation and read 78 tok/s for a 158 tok/s pool."""
    from raydistill.pipelines.augment import Request, generate_many
    from raydistill.pipelines.llm_requests import DeferredEndpoint
    from raydistill.pipelines.tasks import get_task

    def slow(payload):
        time.sleep(0.2)  # the generation the rate is about
        n = int(payload.get("n") or 1)
        return 200, completion(['{"text": "a fine film"}'] * n, completion_tokens=5 * n)

    with ScriptedLLM(slow) as server:

        def start():
            time.sleep(1.5)  # the engine starting
            return server.endpoint

        client = LLMClient(DeferredEndpoint(start), "scripted:test", None, backend="openai")
        seeds = [{"id": f"s{i}", "text": f"a film number {i}", "label": 1} for i in range(3)]
        t0 = time.perf_counter()
        ((cands, stats),) = generate_many(
            [Request(seeds, 1, "loop", 2, 7)],
            get_task("sst2"),
            client,
            temperature=0.8,
            top_p=0.95,
            max_new_tokens=16,
            max_seed_chars=200,
        )
        wall = time.perf_counter() - t0
    assert len(cands) == 6 and stats.sent_generated_tokens == 30
    assert client.stats.pool_start_s >= 1.5
    assert client.stats.summary()["pool_start_s"] >= 1.5
    assert 0.2 <= stats.llm_s <= wall - 1.5


def test_stats_since_and_summary():
    s = LLMStats(requests_sent=3, errors={"timeout": 1})
    before = s.snapshot()
    s.add(LLMStats(requests_sent=2, cache_hits=4, errors={"timeout": 1, "http_5xx": 2}))
    d = s.since(before)
    assert (d.requests_sent, d.cache_hits, d.errors) == (2, 4, {"timeout": 1, "http_5xx": 2})
    assert s.summary()["failed_rows"] == 4 and before.errors == {"timeout": 1}


# ============================================================ CoD through the client


def _swap_answers(payload):
    """Deterministic answers to swap prompts ("Opposite of 'word':"), chatter included."""
    prompt = last_user_message(payload)
    n = int(payload.get("n") or 1)
    word = prompt.split("'")[1] if prompt.count("'") >= 2 else "x"
    opts = ["dreadful", "awful", "boring", word, "Sure! 'tedious'"]
    return 200, completion([opts[(len(word) + i) % len(opts)] for i in range(n)])


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    from transformers import AutoTokenizer

    from raydistill.registry import resolve_model
    from raydistill.training.students import load_classifier

    bert = resolve_model("tiny-bert")
    teacher = str(tmp_path_factory.mktemp("teacher"))
    load_classifier(bert, ["negative", "positive"]).save_pretrained(teacher)
    AutoTokenizer.from_pretrained(bert).save_pretrained(teacher)
    return teacher


@pytest.mark.ray
def test_cod_through_the_client_a_cached_rerun_sends_nothing_and_gives_the_same_records(
    ray_session, tiny_teacher, tmp_path
):
    """Swap strategy, 2 rounds (round 2 asks new per-round prompts). The old call with an
    Endpoint is `test_teacher_pool_serve.py::TestHFBackend::test_generate_counterfactuals`.
    Most of the time here is the teacher's Ray Data stages (~7 s each), not the LLM."""
    from raydistill.config import CounterfactualConfig
    from raydistill.pipelines.counterfactuals import generate_counterfactuals
    from raydistill.pipelines.tasks import get_task
    from raydistill.training.classifier import Classifier

    texts = [
        "a gorgeous , witty , seductive movie .",
        "the plot is a dull and tired mess .",
        "one of the best films of the year",
    ]
    logits = Classifier(tiny_teacher).logits(texts)
    seeds = [
        {"id": f"s{i}", "text": t, "label": i % 2, "teacher_logits": lg.tolist()}
        for i, (t, lg) in enumerate(zip(texts, logits, strict=True))
    ]
    gen = CounterfactualConfig(
        strategy="swap", num_candidates=3, rounds=2, max_new_tokens=12, swap_words=[2, 4]
    )
    spec = get_task("sst2")
    with ScriptedLLM(_swap_answers) as server:
        client = LLMClient(server.endpoint, "scripted:s", RequestCache.in_dir(tmp_path))
        t0 = time.monotonic()
        first, stats = generate_counterfactuals(
            seeds, spec, client, tiny_teacher, gen, source="llm:s"
        )
        sent = server.count
        print(f"\nswap, first run: {time.monotonic() - t0:.1f} s, {sent} requests")
        assert sent > 0 and stats.llm["requests_sent"] == sent and stats.llm["errors"] == {}
        assert stats.llm["cache_hits"] == 0
        rounds = {int(p["seed"]) for p in server.received()}
        server.reset()
        t0 = time.monotonic()
        again, again_stats = generate_counterfactuals(
            seeds,
            spec,
            LLMClient(server.endpoint, "scripted:s", RequestCache.in_dir(tmp_path)),
            tiny_teacher,
            gen,
            source="llm:s",
        )
        print(f"swap, rerun from the cache: {time.monotonic() - t0:.1f} s")
        assert server.count == 0  # every request of every round came from the cache
    # Round 1 always asks; round 2 only for seeds round 1 left unflipped (the tiny
    # teacher's head is random, so that varies between runs).
    assert gen.seed + 1 in rounds and rounds <= {gen.seed + 1, gen.seed + 2}
    assert first == again and len(first) == 3
    # Two seeds can share a salient word, hence one swap prompt: sent once in the first
    # run, but a cache hit for each row on the rerun.
    assert again_stats.llm["cache_hits"] == sent + stats.llm["duplicates"]
    assert again_stats.llm["requests_sent"] == 0
    assert again_stats.generated_tokens == stats.generated_tokens > 0
    assert again_stats.candidates == stats.candidates and again_stats.rejects == stats.rejects
    with pytest.raises(TypeError, match="LLMClient"):
        generate_counterfactuals(seeds, spec, client, tiny_teacher, gen, source="s", batch_size=4)
