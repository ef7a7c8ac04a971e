"""Fault 5 of the teacher pool (issue 14): the pool unreachable or answering garbage.

Scripted 5xx, dropped connections, bodies cut off mid-stream, non-JSON, empty choices
and refused connections, through the Ray Data stage: every seed comes back exactly once,
each failure marked with its kind and counted (never dropped), and a rerun sends only
what had failed. `test_llm_client.py` already covers 503-then-ok, 500, a truncated JSON
body, empty choices, timeouts, the loud failure at > max_error_fraction and a refused
connection; this adds what it does not: backoff timing, dropped/cut connections, garbage
bodies that used to fail their whole batch (lone surrogates, JSON nested to the decoder's
limit), 429/4xx retry rules, a mix of every fault at once, and recovery rounds
(`LLMClient(recovery_rounds=...)`, on for a pool's client) against a replica whose engine
died: it answers 500 at once until Serve replaces it, which per-request retries alone
do not outlast (that is what killing vLLM's engine process did).

Why this way: the pool is a real HTTP server whose every answer the test scripts
(`scripted_llm.ScriptedLLM`), so each fault is exact and repeatable where a real replica
would only fail by chance, while the client, its retries and its Ray Data tasks in other
processes run as they do against a pool; the server counts every attempt on the wire.
A real replica killed mid-generation is test_faults_pool_replica.py.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from pool_fault_seeds import report as _report
from pool_fault_seeds import seed_of as _seed_of
from pool_fault_seeds import seed_rows as _seed_rows
from scripted_llm import DROP, CutBody, ScriptedLLM, completion

from raydistill.pipelines.llm_requests import LLMClient, LLMStageError
from raydistill.pipelines.llm_stage import Sampling
from raydistill.pipelines.request_cache import RequestCache

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]


def _answer(payload):
    n = int((payload or {}).get("n") or 1)
    return 200, completion([f"answer to {_seed_of(payload)}"] * n, prompt_tokens=5)


def _client(server, cache=None, **kw) -> LLMClient:
    kw.setdefault("batch_size", 8)
    kw.setdefault("backoff_s", 0.05)
    kw.setdefault("timeout_s", 5.0)
    return LLMClient(server.endpoint, "scripted:faults", cache, backend="vllm", **kw)


def _attempts_by_seed(server) -> Counter:
    return Counter(_seed_of(p) for p in server.received())


RETRYABLE = {"s1": 500, "s2": 502, "s3": 503, "s4": 504, "s5": 429, "s6": 408}


def test_retries_back_off_exponentially_and_are_bounded(ray_session):
    """Every retryable status gets exactly max_retries more attempts, the k-th after
    backoff_s x 2^(k-1) (x up to 1.25 jitter), then the row is marked and counted."""
    backoff, retries = 0.25, 3

    def down(payload):
        status = RETRYABLE.get(_seed_of(payload))
        if status:
            return status, {"error": {"message": "replica restarting"}}
        return _answer(payload)

    with ScriptedLLM(down) as server:
        client = _client(server, backoff_s=backoff, max_retries=retries)
        out = {o["id"]: o for o in client.chat(_seed_rows(14), Sampling())}
        arrivals = list(zip(server.arrivals, server.received(), strict=True))
    assert all(not out[f"s{i}"]["llm_error"] for i in (0, *range(7, 14)))
    gaps = {}
    for seed, status in RETRYABLE.items():
        kind = "http_5xx" if status >= 500 else "http_4xx"
        assert out[seed]["llm_error_kind"] == kind and f"HTTP {status}" in out[seed]["llm_error"]
        assert f"failed after {retries + 1} attempt(s)" in out[seed]["llm_error"]
        times = [t for t, p in arrivals if _seed_of(p) == seed]
        gaps[seed] = [round(b - a, 2) for a, b in zip(times, times[1:], strict=False)]
        assert len(gaps[seed]) == retries
        for k, gap in enumerate(gaps[seed]):
            # The floor is what backoff guarantees; the ceiling only catches a runaway
            # wait (generous: this machine's CPUs are shared).
            assert backoff * 2**k - 0.02 <= gap <= backoff * 2**k * 1.25 + 3.0, gaps
    assert client.stats.errors == {"http_5xx": 4, "http_4xx": 2}
    assert client.stats.attempts == 8 + 6 * (retries + 1) == server.count
    print(f"\nbackoff gaps (s), backoff_s={backoff}: {gaps}")


# seed -> (what the pool does, error kind, retried?)
GARBAGE = {
    "s1": (lambda p: (0, DROP), "transport", True),  # the replica died mid-request
    "s2": (lambda p: (200, CutBody(b'{"choices": [{"message": {"content": "a du')), "transport", True),
    "s3": (lambda p: (200, "<html><body>502 Bad Gateway</body></html>"), "invalid_json", True),
    "s4": (lambda p: (200, b""), "invalid_json", True),
    "s5": (lambda p: (200, b"\xff\xfe\x00garbage"), "invalid_json", True),
    "s6": (lambda p: (200, '{"x":' * 5000 + "1" + "}" * 5000), "invalid_json", True),
    "s7": (lambda p: (200, {"choices": []}), "no_candidates", False),
    "s8": (lambda p: (200, {"choices": [{"message": {"content": None}}]}), "no_candidates", False),
    "s9": (lambda p: (200, {"object": "chat.completion"}), "bad_response", False),
    "s10": (lambda p: (200, [1, 2, 3]), "bad_response", False),
    "s11": (lambda p: (200, {"error": {"message": "model overloaded"}}), "bad_response", False),
    "s12": (lambda p: (404, {"error": {"message": "no such model"}}), "http_4xx", False),
    "s13": (lambda p: (400, "bad request"), "http_4xx", False),
    "s14": (lambda p: (302, b""), "http_other", False),
}  # fmt: skip


def test_garbage_is_marked_counted_and_the_rest_of_the_batch_survives(ray_session, tmp_path):
    """Each kind of garbage on its own seed, among good ones in the same batches: the
    bad seed is marked with its kind after the right number of attempts; its batch
    mates are answered and cached; nothing is dropped and nothing raises."""
    retries = 2

    def handler(payload):
        bad = GARBAGE.get(_seed_of(payload))
        return bad[0](payload) if bad else _answer(payload)

    rows = _seed_rows(30)  # 14 bad of 30: below max_error_fraction
    with ScriptedLLM(handler) as server:
        cache = RequestCache.in_dir(tmp_path)
        client = _client(server, cache, max_retries=retries)
        out = client.chat(rows, Sampling())
        attempts = _attempts_by_seed(server)
    assert [o["id"] for o in out] == [r["id"] for r in rows]
    got = {o["id"]: (o["llm_error_kind"], attempts[o["id"]]) for o in out if o["llm_error"]}
    assert got == {
        seed: (kind, retries + 1 if retried else 1) for seed, (_, kind, retried) in GARBAGE.items()
    }
    assert all(o["candidates"] == [] for o in out if o["llm_error"])
    assert client.stats.errors == dict(Counter(kind for _, kind, _ in GARBAGE.values()))
    assert client.stats.attempts == sum(attempts.values()) == server.count
    for o in out:
        if o["id"] not in GARBAGE:
            assert o["llm_error"] == "" and o["candidates"] == [f"answer to {o['id']}"]
    assert len(cache) == 16  # errors are never cached


def test_answers_with_lone_surrogates_or_deep_json_no_longer_fail_their_batch(
    ray_session, tmp_path
):
    """A lone-surrogate escape in an answer (or error) body used to raise in Arrow and
    fail the whole Ray Data batch; a body nested just below the JSON decoder's limit
    raised RecursionError. Now: the answer is kept (U+FFFD) and cached, the error kept."""

    def handler(payload):
        seed = _seed_of(payload)
        if seed == "s0":
            return 200, b'{"choices": [{"message": {"content": "caf\\ud800 ok"}}]}'
        if seed == "s1":
            return 503, b'{"error": {"message": "dead \\udc00 engine"}}'
        if seed == "s2":
            return 200, ('{"x":' * 985 + "1" + "}" * 985).encode()
        return _answer(payload)

    with ScriptedLLM(handler) as server:
        cache = RequestCache.in_dir(tmp_path)
        out = _client(server, cache, max_retries=0).chat(_seed_rows(6), Sampling())
    assert out[0]["candidates"] == ["caf\ufffd ok"] and out[0]["llm_error"] == ""
    assert out[1]["llm_error_kind"] == "http_5xx" and "dead \ufffd engine" in out[1]["llm_error"]
    assert (
        out[2]["llm_error_kind"] in ("bad_response", "invalid_json") and out[2]["candidates"] == []
    )
    assert all(o["llm_error"] == "" for o in out[3:])
    assert len(cache) == 4


def test_a_mix_of_every_fault_finishes_counts_each_kind_and_a_rerun_repeats_nothing(
    ray_session, tmp_path
):
    """40 seeds, a quarter of them broken in every way at once, some only at first:
    the call finishes, every seed is in the output exactly once, each failure is counted
    under its kind, and once the pool heals a rerun sends exactly the failed seeds."""
    faults = {
        "s3": lambda p: (503, {"error": {"message": "no replica"}}),
        "s7": lambda p: (0, DROP),
        "s11": lambda p: (200, CutBody(b'{"choices": [')),
        "s13": lambda p: (200, "Internal Server Error"),
        "s17": lambda p: (200, {"choices": []}),
        "s19": lambda p: (500, "Traceback (most recent call last): ..."),
        "s23": lambda p: (200, {"data": "not a completion"}),
        "s29": lambda p: (404, {"error": {"message": "model 'teacher' not found"}}),
        "s31": lambda p: (time.sleep(1.5), _answer(p))[1],  # after the client gave up
    }
    flaky = {"s5", "s9", "s21", "s37"}  # fail once, then answer
    seen: Counter = Counter()
    served: Counter = Counter()  # real answers given, per seed
    lock = threading.Lock()
    healed = threading.Event()

    def handler(payload):
        seed = _seed_of(payload)
        with lock:
            seen[seed] += 1
            nth = seen[seed]
        if not healed.is_set():
            if seed in faults:
                return faults[seed](payload)
            if seed in flaky and nth == 1:
                return (0, DROP) if seed in ("s5", "s21") else (502, b"Bad Gateway")
        with lock:
            served[seed] += 1
        return _answer(payload)

    rows = _seed_rows(40)
    expected = {
        "s3": "http_5xx", "s7": "transport", "s11": "transport", "s13": "invalid_json",
        "s17": "no_candidates", "s19": "http_5xx", "s23": "bad_response", "s29": "http_4xx",
        "s31": "timeout",
    }  # fmt: skip
    with ScriptedLLM(handler) as server:
        client = _client(server, RequestCache.in_dir(tmp_path), max_retries=2, timeout_s=0.5)
        t0 = time.monotonic()
        out = client.chat(rows, Sampling())
        wall = time.monotonic() - t0
        first_count = server.count
        # s31's server threads answer after the client gave up: let them finish first.
        deadline = time.monotonic() + 10
        while len(server.answers) < first_count and time.monotonic() < deadline:
            time.sleep(0.05)
        first = list(server.answers)
        healed.set()
        server.reset()
        rerun = _client(server, RequestCache.in_dir(tmp_path), max_retries=2)
        again = rerun.chat(rows, Sampling())
        second = list(server.answers)
    ids = [r["id"] for r in rows]
    assert [o["id"] for o in out] == ids and [o["id"] for o in again] == ids
    assert {o["id"]: o["llm_error_kind"] for o in out if o["llm_error"]} == expected
    assert client.stats.errors == dict(Counter(expected.values()))
    assert client.stats.attempts == first_count  # every HTTP attempt counted
    assert all(o["llm_error"] == "" for o in out if o["id"] in flaky)
    assert sorted(_seed_of(p) for _, _s, p in second) == sorted(expected)
    assert rerun.stats.cache_hits == 40 - len(expected) and not any(o["llm_error"] for o in again)
    # Each seed got one real answer over both runs, except the slow one: its 3 answers
    # came after the client had given up (never used), then the rerun's.
    assert dict(served) == dict.fromkeys(ids, 1)
    assert [status for _, status, p in first if _seed_of(p) == "s31"] == [200] * 3
    _report(
        "5 mix",
        dict(
            seeds=40,
            out_rows=len(out),
            duplicates=len(out) - len(set(o["id"] for o in out)),
            missing=len(set(ids) - {o["id"] for o in out}),
            failed_rows=client.stats.failed_rows,
            errors=client.stats.errors,
            http_attempts=client.stats.attempts,
            retries=client.stats.attempts - client.stats.requests_sent,
            rerun_requests_sent=rerun.stats.requests_sent,
            rerun_cache_hits=rerun.stats.cache_hits,
            wall_s=round(wall, 1),
        ),
    )


def test_pool_refusing_connections_fails_loudly_with_counts_and_a_rerun_finishes(
    ray_session, tmp_path
):
    """The pool goes away mid-call (connection refused): the rows sent after that fail
    as `transport` after their retries; with most rows failed, `LLMStageError` names the
    counts; the answers that did arrive are cached and the rerun sends only the rest."""
    rows = _seed_rows(16)
    first_arrived = threading.Event()

    def slow_answer(payload):
        first_arrived.set()
        time.sleep(0.6)  # the first batch is still in flight when the pool goes away
        return _answer(payload)

    server = ScriptedLLM(slow_answer).start()
    port = server.port
    client = _client(server, RequestCache.in_dir(tmp_path), batch_size=4, max_retries=2)
    stopper = threading.Thread(
        target=lambda: (first_arrived.wait(60), time.sleep(0.2), server.stop()), daemon=True
    )
    stopper.start()
    t0 = time.monotonic()
    with pytest.raises(LLMStageError) as e:
        client.chat(rows, Sampling())
    wall = time.monotonic() - t0
    stopper.join()
    msg = str(e.value)
    failed = [o for o in e.value.rows if o["llm_error"]]
    answered = [o for o in e.value.rows if not o["llm_error"]]
    assert len(e.value.rows) == 16 and len(failed) > 8 and len(answered) == 16 - len(failed)
    assert f"{len(failed)} of 16 rows" in msg and "transport" in msg and f":{port}/" in msg
    assert all(o["llm_error_kind"] == "transport" for o in failed)
    assert "failed after 3 attempt(s)" in failed[0]["llm_error"]
    assert client.stats.errors == {"transport": len(failed)}

    # The pool is back on the same port: only the failed rows are sent.
    back = ScriptedLLM(_answer, port=port).start()
    try:
        rerun = LLMClient(
            back.endpoint,
            "scripted:faults",
            RequestCache.in_dir(tmp_path),
            backend="vllm",
            batch_size=4,
        )
        out = rerun.chat(rows, Sampling())
        resent = sorted(_seed_of(p) for p in back.received())
    finally:
        back.stop()
    assert resent == sorted(o["id"] for o in failed)
    assert [o["id"] for o in out] == [r["id"] for r in rows] and not any(
        o["llm_error"] for o in out
    )
    _report(
        "5 refused",
        dict(
            seeds=16,
            failed_rows=len(failed),
            errors=client.stats.errors,
            http_attempts=client.stats.attempts,
            raised="LLMStageError",
            wall_s=round(wall, 1),
            rerun_requests_sent=len(resent),
            rerun_cache_hits=rerun.stats.cache_hits,
        ),
    )


class _DeadEngine:
    """A replica whose engine died: 500 EngineDeadError at once for `dead_s` after the
    first request (until Serve marks it unhealthy), then requests wait `queued_s` (the
    successor loading), then answers. What the vLLM engine kill looked like here."""

    def __init__(self, dead_s: float, queued_s: float) -> None:
        self.dead_s, self.queued_s = dead_s, queued_s
        self.t0: float | None = None
        self.served: Counter = Counter()
        self.lock = threading.Lock()

    def __call__(self, payload):
        with self.lock:
            self.t0 = self.t0 or time.monotonic()
        age = time.monotonic() - self.t0
        if age < self.dead_s:
            return 500, {"error": {"message": "EngineDeadError: EngineCore encountered an issue"}}
        if age < self.dead_s + self.queued_s:
            time.sleep(self.dead_s + self.queued_s - age)
        with self.lock:
            self.served[_seed_of(payload)] += 1
        return _answer(payload)


def test_recovery_rounds_outlast_a_replica_replacement_per_request_retries_do_not(
    ray_session, tmp_path
):
    """Per-request retries (1 retry, 0.05 s) give up inside the window of instant 500s;
    without recovery rounds most rows fail and the call raises. With them (waits 1, 2, 4
    s) the failed rows are sent again once the pool is back: every seed answered once."""
    rows = _seed_rows(16)
    with ScriptedLLM(_DeadEngine(dead_s=2.0, queued_s=1.0)) as server:
        plain = _client(server, None, max_retries=1)
        with pytest.raises(LLMStageError, match=r"16 of 16 rows .*http_5xx"):
            plain.chat(rows, Sampling())

    engine = _DeadEngine(dead_s=2.0, queued_s=1.0)
    with ScriptedLLM(engine) as server:
        client = _client(
            server,
            RequestCache.in_dir(tmp_path),
            max_retries=1,
            recovery_rounds=3,
            recovery_wait_s=1.0,
        )
        t0 = time.monotonic()
        out = client.chat(rows, Sampling())
        wall = time.monotonic() - t0
        wire = server.count
    assert [o["id"] for o in out] == [r["id"] for r in rows]
    assert not any(o["llm_error"] for o in out) and client.stats.errors == {}
    assert dict(engine.served) == dict.fromkeys((r["id"] for r in rows), 1)
    s = client.stats
    assert s.requests_sent == 16 and 1 <= s.recovery_rounds <= 3 and s.resent >= 16
    assert s.attempts == wire
    _report(
        "5 dead engine, recovery rounds",
        dict(
            seeds=16,
            failed_rows=0,
            recovery_rounds=s.recovery_rounds,
            requests_resent=s.resent,
            http_attempts=s.attempts,
            wall_s=round(wall, 1),
            without_recovery="LLMStageError: 16 of 16 rows failed (http_5xx)",
        ),
    )


def test_recovery_rounds_are_bounded_when_the_pool_stays_down(ray_session):
    with ScriptedLLM() as gone:
        endpoint = gone.endpoint  # closed once the block ends
    client = LLMClient(
        endpoint, "scripted:faults", None, max_retries=1, backoff_s=0.05,
        recovery_rounds=2, recovery_wait_s=0.2,
    )  # fmt: skip
    t0 = time.monotonic()
    with pytest.raises(LLMStageError, match=r"4 of 4 rows .*transport"):
        client.chat(_seed_rows(4), Sampling())
    assert time.monotonic() - t0 < 60
    s = client.stats
    assert (s.recovery_rounds, s.resent, s.attempts) == (2, 8, 4 * 2 * 3)
