"""Faults of the teacher pool (issue 14, faults 1 and 5): nothing lost, nothing repeated.

Fault 1, a replica killed mid-generation: a real pool (the hf backend on tiny-llama here;
vLLM on SmolLM2 in the slow test) answers the chat stage through the cached `LLMClient`
while a thread `ray.kill`s the Serve replica actor with requests in flight. Serve starts
a new replica; the job must finish with every seed in the output exactly once, failed
rows marked and counted (never dropped), and a rerun must send only the rows that had
not finished. The requests a pool received are counted on the wire: the client talks to
a `ScriptedLLM` that forwards to the pool (`forward_to`), and a seed is "processed" each
time the pool answered it 200.

Fault 5, the pool unreachable or answering garbage: scripted 5xx, dropped connections,
bodies cut off mid-stream, non-JSON, empty choices and refused connections, through the
Ray Data stage. `test_llm_requests.py` already covers 503-then-ok, 500, a truncated JSON
body, empty choices, timeouts, the loud failure at > max_error_fraction and a refused
connection; this adds what it does not: backoff timing, dropped/cut connections, garbage
bodies that used to fail their whole batch (lone surrogates, JSON nested to the decoder's
limit), 429/4xx retry rules, a mix of every fault at once, and recovery rounds
(`LLMClient(recovery_rounds=...)`, on for a pool's client) against a replica whose engine
died: it answers 500 at once until Serve replaces it, which per-request retries alone
do not outlast (that is what killing vLLM's engine process did).
"""

from __future__ import annotations

import importlib.util
import json
import socket
import threading
import time
from collections import Counter

import pytest
from scripted_llm import DROP, CutBody, ScriptedLLM, completion, forward_to, last_user_message

from raydistill.config import PoolConfig
from raydistill.pipelines.llm_requests import (
    POOL_RECOVERY,
    LLMClient,
    LLMStageError,
    model_identity,
)
from raydistill.pipelines.llm_stage import ERROR_KINDS, Sampling
from raydistill.pipelines.request_cache import RequestCache

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]


def _free_port(lo: int = 8100, hi: int = 8200) -> int:
    for port in range(lo, hi):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {lo}-{hi - 1}")


def _seed_rows(n: int) -> list[dict]:
    return [
        {
            "id": f"s{i}",
            "label": i % 2,
            "messages": [
                {"role": "system", "content": "You rewrite movie reviews."},
                {"role": "user", "content": f"seed {i}: the plot was fine and the cast good."},
            ],
        }
        for i in range(n)
    ]


def _seed_of(payload) -> str:
    return "s" + last_user_message(payload).split(":")[0].split()[-1]


# ============================================================ fault 1: replica killed


def _replica_names(app: str) -> list[str]:
    import ray

    return sorted(
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith(f"SERVE_REPLICA::{app}#")
    )


def _kill_actor(name: str) -> None:
    import ray

    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)


def _kill_engine_process(name: str) -> None:
    """SIGKILL vLLM's engine-core process (a child of the replica), not the actor."""
    import psutil

    procs = [
        p
        for p in psutil.process_iter(["name", "cmdline"])
        if "EngineCore" in (p.info["name"] or "") + " ".join(p.info["cmdline"] or [])
    ]
    assert procs, "no vLLM EngineCore process found"
    for proc in procs:
        proc.kill()


class _ReplicaKiller(threading.Thread):
    """Kill the app's replica (`kill(actor name)`) once the pool has answered `after`
    requests and more are in flight (so the kill lands mid-generation, not between
    batches)."""

    def __init__(
        self, proxy: ScriptedLLM, app: str, after: int, deployment: str, kill=_kill_actor
    ) -> None:
        super().__init__(daemon=True)
        self.proxy, self.app, self.after, self.deployment = proxy, app, after, deployment
        self.kill = kill
        self.killed: str | None = None
        self.at: float | None = None
        self.in_flight = 0
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def run(self) -> None:

        try:
            while not self._ready():
                if self._halt.wait(0.02):
                    return
            names = [n for n in _replica_names(self.app) if f"#{self.deployment}" in n]
            assert len(names) == 1, (names, _replica_names(self.app))
            self.in_flight = self.proxy.count - len(self.proxy.answers)
            self.kill(names[0])
            self.killed, self.at = names[0], time.monotonic()
        except BaseException as e:  # reported by the test
            self.error = e

    def _ready(self) -> bool:
        answers = list(self.proxy.answers)
        ok = sum(1 for _, status, _ in answers if status == 200)
        return ok >= self.after and self.proxy.count - len(answers) >= 2

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=30)


def _wait_running(app: str, limit_s: float = 600) -> None:
    from raydistill.serving.teacher_pool import _serve_app_not_running

    deadline = time.monotonic() + limit_s
    while (why := _serve_app_not_running(app)) and time.monotonic() < deadline:
        time.sleep(1)
    assert why is None, why


def _run_with_replica_kill(
    endpoint, app, deployment, rows, sampling, cache_dir, model_id, backend, kill=_kill_actor, **kw
):
    """One chat call through a counting proxy, the replica killed mid-way (while the
    second batch is in flight), then a rerun once the app is RUNNING again.

    Returns the numbers the test and the results file need. A call that fails loudly
    (`LLMStageError`: most rows failed) counts as finished with those rows."""
    _wait_running(app)
    # The proxy gives up just after the client does, so Serve sees the disconnect and
    # drops the request, as it would with the client connected to it directly.
    timeout_s = float(kw.get("timeout_s", 600.0))
    with ScriptedLLM(forward_to(endpoint.chat_url, timeout_s + 1.0)) as proxy:
        client = LLMClient(
            proxy.endpoint, model_id, RequestCache.in_dir(cache_dir), backend=backend, **kw
        )
        killer = _ReplicaKiller(proxy, app, kw["batch_size"], deployment, kill)
        before = _replica_names(app)
        killer.start()
        t0 = time.monotonic()
        raised = None
        try:
            out = client.chat(rows, sampling)
        except LLMStageError as e:
            out, raised = e.rows, str(e)
        wall = time.monotonic() - t0
        killer.stop()
        assert killer.error is None, killer.error
        assert killer.killed, f"the pool finished before the kill ({proxy.count} requests)"
        first = list(proxy.answers)
        after_kill = [t for t, status, _ in first if status == 200 and t > killer.at]
        recovered_s = (min(after_kill) - killer.at) if after_kill else None

        _wait_running(app)
        time.sleep(2)  # requests the client gave up on may still be answered: let them
        first_pool = list(proxy.answers)
        proxy.reset()
        rerun_kw = dict(kw, timeout_s=max(timeout_s, 120.0))  # the pool is back
        proxy.handler = forward_to(endpoint.chat_url, rerun_kw["timeout_s"] + 1.0)
        rerun_client = LLMClient(
            proxy.endpoint, model_id, RequestCache.in_dir(cache_dir), backend=backend, **rerun_kw
        )
        t1 = time.monotonic()
        again = rerun_client.chat(rows, sampling)
        rerun_wall = time.monotonic() - t1
        second = list(proxy.answers)
    return dict(
        out=out,
        again=again,
        stats=client.stats,
        rerun_stats=rerun_client.stats,
        first=first,
        first_pool=first_pool,
        second=second,
        raised=raised,
        killed=killer.killed,
        in_flight=killer.in_flight,
        before=before,
        after=_replica_names(app),
        wall_s=wall,
        rerun_wall_s=rerun_wall,
        recovered_s=recovered_s,
    )


def _check_nothing_lost_or_repeated(rows, r, client_gives_up: bool = False) -> dict:
    """The fault-1 promise, asserted; returns the figures for benchmarks/results.

    `client_gives_up`: the client's timeout is shorter than the restart, so requests it
    abandoned may still be answered by the pool later (wasted work, counted, not used)."""
    ids = [row["id"] for row in rows]
    out, again, stats = r["out"], r["again"], r["stats"]
    # The job finished and every seed is in its output exactly once, in order.
    assert [o["id"] for o in out] == ids
    failed = [o for o in out if o["llm_error"]]
    for o in out:
        if o["llm_error"]:  # marked with the error, not dropped
            assert o["candidates"] == [] and o["llm_error_kind"] in ERROR_KINDS
        else:
            assert o["candidates"] and all(isinstance(c, str) for c in o["candidates"])
    # ... and counted.
    assert stats.failed_rows == len(failed)
    assert sum(stats.errors.values()) == len(failed)
    # Serve replaced the killed replica.
    assert r["killed"] in r["before"] and r["killed"] not in r["after"] and r["after"]

    # On the wire: a seed the pool answered (200) is never answered again, in the run or
    # in its rerun; the rerun sends exactly the seeds that had failed, once each.
    answered = Counter(_seed_of(p) for _, status, p in r["first_pool"] if status == 200)
    used = {o["id"] for o in out if not o["llm_error"]}
    assert set(answered) >= used
    wasted = sum(answered.values()) - len(used)
    if not client_gives_up:
        assert max(answered.values()) == 1 and wasted == 0, answered
    resent = [_seed_of(p) for _, _status, p in r["second"]]
    assert sorted(resent) == sorted(o["id"] for o in failed)
    assert r["rerun_stats"].requests_sent == len(failed)
    assert r["rerun_stats"].cache_hits == len(rows) - len(failed)
    assert [o["id"] for o in again] == ids and not any(o["llm_error"] for o in again)
    for o, a in zip(out, again, strict=True):
        if not o["llm_error"]:
            assert a["cached"] and a["candidates"] == o["candidates"]
    rerun_answered = Counter(_seed_of(p) for _, s, p in r["second"] if s == 200)
    assert dict(rerun_answered) == dict.fromkeys((o["id"] for o in failed), 1)
    if not client_gives_up:  # each seed answered by the pool exactly once, all told
        assert dict(answered + rerun_answered) == dict.fromkeys(ids, 1)

    statuses = Counter(str(s) for _, s, _ in r["first_pool"])
    return dict(
        seeds=len(rows),
        out_rows=len(out),
        duplicates=len(out) - len({o["id"] for o in out}),
        missing=len(set(ids) - {o["id"] for o in out}),
        failed_rows=len(failed),
        errors=dict(stats.errors),
        requests_in_flight_at_kill=r["in_flight"],
        http_attempts=stats.attempts,
        retries=stats.attempts - stats.requests_sent,
        recovery_rounds=stats.recovery_rounds,
        requests_resent=stats.resent,
        pool_answers_by_status=dict(statuses),
        pool_answers_never_used=wasted,
        raised=r["raised"] and r["raised"][:200],
        rerun_requests_sent=len(resent),
        rerun_cache_hits=r["rerun_stats"].cache_hits,
        wall_s=round(r["wall_s"], 1),
        replica_back_after_s=None if r["recovered_s"] is None else round(r["recovered_s"], 1),
        rerun_wall_s=round(r["rerun_wall_s"], 1),
    )


def _report(name: str, figures: dict) -> None:
    print(f"\nFAULT {name}: {json.dumps(figures, sort_keys=True)}")


@pytest.fixture(scope="module")
def serve_port(ray_session):
    from ray import serve
    from ray.serve.context import _get_global_client

    serve.start(http_options={"host": "127.0.0.1", "port": _free_port()})
    yield int(_get_global_client().http_config.port)
    serve.shutdown()


@pytest.fixture(scope="module")
def hf_pool(serve_port):
    from raydistill.serving.teacher_pool import make_pool

    cfg = PoolConfig(
        backend="hf", model="tiny-llama", http_port=serve_port, batch_size=8, startup_timeout_s=240
    )
    pool = make_pool(cfg)
    t0 = time.monotonic()
    endpoint = pool.start()
    print(f"\nhf pool ready in {time.monotonic() - t0:.1f} s")
    yield pool, endpoint, cfg
    pool.shutdown()


def _hf_kill_run(hf_pool, tmp_path, **kw):
    pool, endpoint, cfg = hf_pool
    rows = _seed_rows(24)
    kw = dict(dict(batch_size=8, concurrency=1, max_retries=2, backoff_s=1.0, timeout_s=120), **kw)
    r = _run_with_replica_kill(
        endpoint,
        pool.app_name,
        "HFChatDeployment",
        rows,
        Sampling(n=2, max_tokens=16, temperature=0.9, seed=0),
        tmp_path,
        model_identity("hf", cfg.model),
        "hf",
        **kw,
    )
    return rows, r


def test_hf_replica_killed_mid_generation(hf_pool, tmp_path):
    """The client's defaults (2 retries, backoff 1 s, a long timeout): Serve's router
    holds and re-routes the requests of the dead replica until its successor is up."""
    rows, r = _hf_kill_run(hf_pool, tmp_path)
    assert r["raised"] is None
    _report("1 hf replica actor killed", _check_nothing_lost_or_repeated(rows, r))


@pytest.mark.slow
def test_hf_replica_restart_outlasting_the_client_timeout(hf_pool, tmp_path):
    """A client timeout (1 retry) shorter than the restart: the requests in flight and
    those sent before the new replica is up time out. They come back marked `timeout`
    and counted (or, when most rows failed, in `LLMStageError`); the rerun sends exactly
    them, and the answers that had arrived are reused.

    The premise depends on how fast this machine restarts a replica (10.8-18 s here; an
    8 s timeout once found the replica back in time on CI, so no row timed out). So the
    test checks the premise it got: a request in flight at the kill gives up after
    `2 * timeout + backoff`; when the replica was back sooner than that, the run proved
    nothing and is repeated with a timeout a quarter of the measured restart. When the
    premise held, a run without a timed-out row fails the test."""
    timeout_s, tried = 3.0, []
    for attempt in range(2):
        rows, r = _hf_kill_run(
            hf_pool, tmp_path / f"try{attempt}", timeout_s=timeout_s, max_retries=1
        )
        figures = _check_nothing_lost_or_repeated(rows, r, client_gives_up=True)
        gives_up_after = 2 * timeout_s + 1.0  # two attempts and one 1 s backoff
        back = figures["replica_back_after_s"]
        premise = back is None or back > gives_up_after + 1.0
        tried.append(dict(timeout_s=timeout_s, gives_up_after_s=gives_up_after, **figures))
        if premise or figures["failed_rows"]:
            break
        timeout_s = max(1.0, round(back / 4, 1))
    assert premise or figures["failed_rows"], f"the replica was always back in time: {tried}"
    assert figures["failed_rows"] > 0, tried
    assert set(figures["errors"]) <= {"timeout", "http_5xx"}, tried
    _report(f"1 hf replica killed, client timeout {timeout_s:g} s", figures)


VLLM_MISSING = importlib.util.find_spec("vllm") is None


@pytest.mark.slow
@pytest.mark.vllm
# 6–21 min each on 2 cores (a vLLM replica restarts): run on purpose with
# `make test-faults`; `make test-slow` (CI) leaves them out to stay inside its budget.
@pytest.mark.fault_bench
@pytest.mark.timeout(2400)
@pytest.mark.skipif(VLLM_MISSING, reason="vllm is not installed")
@pytest.mark.parametrize("target", ["replica_actor", "engine_process"])
def test_vllm_replica_killed_mid_generation(serve_port, tmp_path, target):
    """vLLM (Serve LLM) on SmolLM2: the LLMServer replica actor, or its engine-core
    process, killed mid-generation, with the client a pool's jobs use (`POOL_RECOVERY`).
    Minutes on CPU (each restart loads the engine). With the engine killed, the replica
    answers 500 at once until Serve marks it unhealthy (~60 s here), which per-request
    retries alone did not outlast."""
    from raydistill.serving.teacher_pool import make_pool

    cfg = PoolConfig(
        backend="vllm", model="smollm2-135m-instruct", http_port=serve_port, startup_timeout_s=900
    )
    pool = make_pool(cfg)
    endpoint = pool.start()
    try:
        rows = _seed_rows(24)
        r = _run_with_replica_kill(
            endpoint,
            pool.app_name,
            "LLMServer",
            rows,
            Sampling(n=2, max_tokens=16, temperature=0.9, seed=0),
            tmp_path,
            model_identity("vllm", cfg.model),
            "vllm",
            kill=_kill_actor if target == "replica_actor" else _kill_engine_process,
            batch_size=8,
            concurrency=1,
            **POOL_RECOVERY,
        )
        figures = _check_nothing_lost_or_repeated(rows, r)
        _report(f"1 vllm {target} killed", figures)
    finally:
        pool.shutdown()


# ============================================================ fault 5: garbage and outages


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
