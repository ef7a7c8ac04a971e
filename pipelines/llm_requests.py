"""The one LLM request layer: every call to the pool goes through `LLMClient.chat`.

`chat(rows, sampling)` answers each row's `messages` and returns every row, in input
order, with `candidates`, `generated_tokens`, `prompt_tokens`, `llm_error`,
`llm_error_kind` and `cached` added. On the way:

1. Each row gets its content-addressed key (`request_cache.request_key`: model identity,
   messages, sampling parameters). Rows whose key is in the `RequestCache` are answered
   from it and never sent; rows with the same key in one call are sent once (an answer
   is a function of its key: that is what the cache promises).
2. The rest go through the Ray Data chat stage (`llm_stage.chat_stage`), consumed in the
   driver as a stream: each finished batch's successful answers are written to the
   cache at once, in one transaction. A run interrupted after some batches keeps every
   one of them; its rerun sends only what had not finished. Errors are never cached, so
   they are retried next time.
3. Recovery rounds (`recovery_rounds`, on for a pool's client: `POOL_RECOVERY`): rows
   that failed in a way a restarted replica fixes (transport, timeout, 5xx, garbled
   body) are sent again after `recovery_wait_s`, doubling each round. Why not only more
   per-request retries: a vLLM replica whose engine died answers 500 at once for as long
   as Serve takes to mark it unhealthy (measured: ~60 s on a busy CPU box) and then
   queues requests until its successor has loaded; per-request retries would make every
   batch wait that out in turn, one round waits once for all the rows of the call.
4. If more than `max_error_fraction` of the call's rows end with an error, `chat` raises
   `LLMStageError` (the answers that did arrive are cached already): a pool that is down
   or unreachable from the workers' nodes must stop the job, not leave its seeds silently
   without answers. Below the threshold the failed rows come back marked and counted.

Why only the driver writes the cache: one writer needs no cross-process locking (SQLite
over NFS is unsafe, and Ray Data tasks may run on any node), and the cache dir can be
node-local on a cluster, since the tasks only do HTTP and never touch it.

`stats` (`LLMStats`) counts requests sent, cache hits, errors by kind and tokens, for
reports. Structured output: `Sampling.json_schema` is sent as `response_format` only to
backends that support it (`STRUCTURED_OUTPUT`: vllm and openai yes, hf no).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from raydistill.pipelines.llm_stage import (
    ERROR_BAD_INPUT,
    ERROR_HTTP_5XX,
    RETRYABLE_KINDS,
    SEED_COLUMN,
    ChatResult,
    Sampling,
    chat_stage,
    normalize_messages,
)
from raydistill.pipelines.request_cache import CachedAnswer, RequestCache, request_key
from raydistill.progress import console

logger = logging.getLogger(__name__)

# Which pool backends honour `response_format={"type": "json_schema", ...}`.
STRUCTURED_OUTPUT: dict[str, bool] = {"vllm": True, "openai": True, "hf": False}
ANSWER_COLUMNS = (
    "candidates",
    "generated_tokens",
    "prompt_tokens",
    "llm_error",
    "llm_error_kind",
    "cached",
)
_MAX_NAMED_ERRORS = 3
# Failures a replaced replica can fix: worth a recovery round (a 4xx or a well-formed
# non-answer would come back the same).
RECOVERABLE_KINDS = frozenset(RETRYABLE_KINDS | {ERROR_HTTP_5XX})
# What `LLMClient.for_pool` uses: waits of 15, 30, 60, 120 s (under 4 min in all) cover
# Serve marking a dead vLLM engine's replica unhealthy and starting its successor.
POOL_RECOVERY: dict[str, Any] = {"recovery_rounds": 4, "recovery_wait_s": 15.0}


def model_identity(backend: str, model: str, url: str | None = None) -> str:
    """The cache identity of the model behind a pool: "vllm:smollm2-135m-instruct".

    An external server (`openai`) is identified by its URL and model name. The served
    name ("teacher") is the same for every model and never part of it.
    """
    if backend == "openai":
        return f"openai:{(url or '').rstrip('/')}:{model}"
    return f"{backend}:{model}"


class LLMStageError(RuntimeError):
    """Too many rows of one `LLMClient.chat` call failed.

    `rows` holds every row of the call (failed ones marked), `stats` that call's counts.
    """

    def __init__(self, message: str, rows: list[dict[str, Any]], stats: LLMStats) -> None:
        super().__init__(message)
        self.rows = rows
        self.stats = stats


@dataclass
class LLMStats:
    """What the request layer did, summed over calls (`summary()` for reports)."""

    calls: int = 0
    rows: int = 0
    cache_hits: int = 0  # rows answered from the cache
    duplicates: int = 0  # rows answered by an identical row of the same call
    requests_sent: int = 0  # distinct requests sent to the pool
    attempts: int = 0  # HTTP attempts, retries included
    cache_writes: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # failed rows by kind
    prompt_tokens: int = 0  # of the answers received (not of cache hits)
    generated_tokens: int = 0
    cached_generated_tokens: int = 0  # tokens of cache hits: generated once, not again
    resent: int = 0  # failed requests sent again in recovery rounds
    recovery_rounds: int = 0
    # Seconds a call spent starting its deferred pool (the first uncached request): a
    # rate over a call's seconds subtracts them, or a round's pool rate counts start-up.
    pool_start_s: float = 0.0

    @property
    def failed_rows(self) -> int:
        return sum(self.errors.values())

    def snapshot(self) -> LLMStats:
        return copy.deepcopy(self)

    def since(self, before: LLMStats) -> LLMStats:
        """The counts added after `before` (a `snapshot()`)."""
        out = LLMStats()
        for f in dataclasses.fields(self):
            now, then = getattr(self, f.name), getattr(before, f.name)
            if isinstance(now, dict):
                diff = {k: v - then.get(k, 0) for k, v in now.items() if v - then.get(k, 0)}
                setattr(out, f.name, diff)
            else:
                setattr(out, f.name, now - then)
        return out

    def add(self, other: LLMStats) -> None:
        for f in dataclasses.fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if isinstance(mine, dict):
                for k, v in theirs.items():
                    mine[k] = mine.get(k, 0) + v
            else:
                setattr(self, f.name, mine + theirs)

    def summary(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["errors"] = dict(sorted(self.errors.items()))
        d["failed_rows"] = self.failed_rows
        d["pool_start_s"] = round(self.pool_start_s, 2)
        return d


class DeferredEndpoint:
    """An endpoint whose pool starts when the first request needs it.

    A stage whose requests are all in the cache (a rerun, the judge of a finished run)
    then never starts the pool, which costs 45-90 s on a CPU (vLLM engine start). `start`
    returns the real `Endpoint`; it runs once if it succeeds (a failed start is tried again
    by the next request). `start_s` is the one measure of
    the start-up (a failed start counts too): the client subtracts it from the call it
    happened in, the stage reports it as `pool_startup_s`.
    """

    def __init__(self, start: Any) -> None:
        self._start = start
        self._endpoint: Any = None
        self.start_s = 0.0

    @property
    def started(self) -> bool:
        return self._endpoint is not None

    def resolve(self) -> Any:
        if self._endpoint is None:
            t0 = time.perf_counter()
            try:
                self._endpoint = self._start()
            finally:
                self.start_s += time.perf_counter() - t0
        return self._endpoint


class LLMClient:
    """Cached, batched, fault-counting chat requests to one pool endpoint.

    `endpoint`: where the pool answers (`serving.teacher_pool.Endpoint`). `model_id`: the
    real model's identity for cache keys (`model_identity(...)`). `cache`: a
    `RequestCache`, or None to cache nothing (every call is sent; identical rows of one
    call still share one request). `structured_output`: whether the backend honours
    `Sampling.json_schema` (default: from `backend` via `STRUCTURED_OUTPUT`; unknown →
    no). `batch_size` rows go to one Ray Data task with their requests in flight
    together, `concurrency` tasks at once; each request gets `max_retries` retries with
    backoff (`backoff_s`, doubling) and `timeout_s`. Then rows that failed with a
    `RECOVERABLE_KINDS` error are sent again, up to `recovery_rounds` times, after
    `recovery_wait_s` (doubling; see the module docstring). More than
    `max_error_fraction` of a call's rows failing raises `LLMStageError`.
    """

    def __init__(
        self,
        endpoint: Any,
        model_id: str,
        cache: RequestCache | None = None,
        *,
        backend: str | None = None,
        structured_output: bool | None = None,
        batch_size: int = 32,
        concurrency: int = 1,
        max_retries: int = 2,
        timeout_s: float = 600.0,
        backoff_s: float = 1.0,
        max_error_fraction: float = 0.5,
        num_cpus: float = 0.25,
        recovery_rounds: int = 0,
        recovery_wait_s: float = 15.0,
    ) -> None:
        if not isinstance(model_id, str) or not model_id:
            raise ValueError("LLMClient: model_id must name the real model, e.g. 'vllm:<model>'")
        if not 0.0 <= float(max_error_fraction) <= 1.0:
            raise ValueError(
                f"LLMClient: max_error_fraction must be in [0, 1], got {max_error_fraction}"
            )
        if int(batch_size) < 1 or int(concurrency) < 1 or int(max_retries) < 0:
            raise ValueError(
                "LLMClient: batch_size and concurrency must be >= 1 and max_retries >= 0 "
                f"(got {batch_size}, {concurrency}, {max_retries})"
            )
        self._endpoint = endpoint
        self.model_id = model_id
        self.cache = cache
        self.backend = backend
        if structured_output is None:
            structured_output = STRUCTURED_OUTPUT.get(str(backend), False)
        self.structured_output = bool(structured_output)
        self.batch_size = int(batch_size)
        self.concurrency = int(concurrency)
        self.max_retries = int(max_retries)
        self.timeout_s = float(timeout_s)
        self.backoff_s = float(backoff_s)
        self.max_error_fraction = float(max_error_fraction)
        self.num_cpus = float(num_cpus)
        if int(recovery_rounds) < 0 or float(recovery_wait_s) < 0:
            raise ValueError(
                "LLMClient: recovery_rounds and recovery_wait_s must be >= 0 "
                f"(got {recovery_rounds}, {recovery_wait_s})"
            )
        self.recovery_rounds = int(recovery_rounds)
        self.recovery_wait_s = float(recovery_wait_s)
        self.stats = LLMStats()
        self._warned_schema = False

    @classmethod
    def for_pool(
        cls, endpoint: Any, pool: Any, cache: RequestCache | None = None, **kwargs: Any
    ) -> LLMClient:
        """A client for a started pool from its config (`PoolConfig`: backend, model,
        url, batch_size, concurrency), with `POOL_RECOVERY`; `kwargs` override the other
        settings."""
        kwargs.setdefault("batch_size", pool.batch_size)
        kwargs.setdefault("concurrency", pool.concurrency)
        for name, value in POOL_RECOVERY.items():
            kwargs.setdefault(name, value)
        return cls(
            endpoint,
            model_identity(pool.backend, pool.model, getattr(pool, "url", None)),
            cache,
            backend=pool.backend,
            **kwargs,
        )

    @property
    def endpoint(self) -> Any:
        """Where requests go; a `DeferredEndpoint` starts its pool here, on first use."""
        ep = self._endpoint
        if isinstance(ep, DeferredEndpoint):
            if ep.started:
                return ep.resolve()
            before = ep.start_s
            try:
                return ep.resolve()
            finally:
                self.stats.pool_start_s += ep.start_s - before
        return ep

    @classmethod
    def uncached(cls, endpoint: Any, **kwargs: Any) -> LLMClient:
        """No cache, identity from the endpoint (for callers that only have one)."""
        return cls(endpoint, f"endpoint:{endpoint.base_url}:{endpoint.model}", None, **kwargs)

    def __repr__(self) -> str:
        return f"LLMClient({self.model_id!r}, url={self._url()!r}, cache={self.cache})"

    def _url(self) -> str:
        """The chat URL for messages, without starting a deferred pool to name it."""
        ep = self._endpoint
        if isinstance(ep, DeferredEndpoint) and not ep.started:
            return "(pool not started)"
        return self.endpoint.chat_url

    # ------------------------------------------------------------------ requests

    def effective_sampling(self, sampling: Sampling) -> Sampling:
        """`sampling` as sent: without the JSON schema where the backend cannot use it."""
        if sampling.json_schema is None or self.structured_output:
            return sampling
        if not self._warned_schema:
            logger.warning(
                "%s: backend %s does not support structured output; json_schema is not "
                "sent (the answer is still parsed defensively)",
                self.model_id,
                self.backend,
            )
            self._warned_schema = True
        return dataclasses.replace(sampling, json_schema=None)

    def request_key(self, messages: Any, sampling: Sampling) -> str:
        """The cache key of one request as this client would send it."""
        return request_key(
            self.model_id, normalize_messages(messages), self.effective_sampling(sampling)
        )

    def chat(self, rows: Iterable[Mapping[str, Any]], sampling: Sampling) -> list[dict[str, Any]]:
        """Every row (same order, other columns carried) plus `ANSWER_COLUMNS`.

        Raises `LLMStageError` when more than `max_error_fraction` of the rows failed,
        and ValueError when a row has no `messages` at all (a caller bug, not bad data).
        """
        rows = list(rows)
        sampling = self.effective_sampling(sampling)
        call = LLMStats(calls=1, rows=len(rows))
        keys: list[str | None] = []
        bad: dict[int, str] = {}
        messages: dict[str, list[dict[str, str]]] = {}
        seeds: dict[str, int] = {}  # keys of rows that carry their own sampling seed
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping) or "messages" not in row:
                raise ValueError(f"LLMClient.chat: row {i} has no `messages`: {row!r:.120}")
            try:
                msgs = normalize_messages(row["messages"])
            except ValueError as e:
                bad[i] = f"bad input row: {e}"
                keys.append(None)
                continue
            own = row.get(SEED_COLUMN)
            if own is not None:
                # The row's own seed is part of its request, and so of its cache key.
                own = int(own)
                key = request_key(self.model_id, msgs, dataclasses.replace(sampling, seed=own))
                seeds[key] = own
            else:
                key = request_key(self.model_id, msgs, sampling)
            if key in messages:
                call.duplicates += 1
            messages.setdefault(key, msgs)
            keys.append(key)
        hits = self.cache.get_many(messages) if self.cache is not None else {}
        missing = [k for k in messages if k not in hits]
        try:
            answers = self._send(missing, messages, sampling, call, seeds=seeds) if missing else {}
            self._recover(answers, messages, sampling, call, seeds)
        except BaseException:
            self.stats.add(call)  # what was sent (and cached) before the interruption
            raise

        out: list[dict[str, Any]] = []
        for i, (row, key) in enumerate(zip(rows, keys, strict=True)):
            o = {k: v for k, v in row.items() if k not in ANSWER_COLUMNS}
            if key is None:
                res, cached = ChatResult([], 0, bad[i], 0, ERROR_BAD_INPUT, 0), False
            elif key in hits:
                h = hits[key]
                res = ChatResult(list(h.candidates), h.generated_tokens, "", h.prompt_tokens)
                cached = True
                call.cache_hits += 1
                call.cached_generated_tokens += h.generated_tokens
            else:
                res, cached = answers[key], False
            if res.error:
                call.errors[res.error_kind or "unknown"] = (
                    call.errors.get(res.error_kind or "unknown", 0) + 1
                )
            o.update(
                candidates=list(res.candidates),
                generated_tokens=int(res.generated_tokens),
                prompt_tokens=int(res.prompt_tokens),
                llm_error=res.error,
                llm_error_kind=res.error_kind,
                cached=cached,
            )
            out.append(o)
        self.stats.add(call)
        failed = call.failed_rows
        if rows and failed / len(rows) > self.max_error_fraction:
            raise LLMStageError(self._failure_message(out, failed), out, call)
        if failed:
            logger.warning(
                "%d of %d LLM requests to %s failed (%s)",
                failed,
                len(rows),
                self._url(),
                call.errors,
            )
        return out

    def _failure_message(self, out: list[dict[str, Any]], failed: int) -> str:
        distinct: list[str] = []
        for o in out:
            if o["llm_error"] and o["llm_error"] not in distinct:
                distinct.append(o["llm_error"])
            if len(distinct) == _MAX_NAMED_ERRORS:
                break
        kinds: dict[str, int] = {}
        for o in out:
            if o["llm_error"]:
                kinds[o["llm_error_kind"]] = kinds.get(o["llm_error_kind"], 0) + 1
        first = "; ".join(f"[{i + 1}] {e}" for i, e in enumerate(distinct))
        return (
            f"LLM requests failed for {failed} of {len(out)} rows (more than "
            f"max_error_fraction={self.max_error_fraction:g}) against "
            f"{self._url()} (model {self.model_id}); by kind: "
            f"{dict(sorted(kinds.items()))}; first errors: {first}. Answers that arrived "
            "are cached; a rerun sends only the failed rows."
        )

    def _recover(
        self,
        answers: dict[str, ChatResult],
        messages: dict[str, list[dict[str, str]]],
        sampling: Sampling,
        call: LLMStats,
        seeds: dict[str, int] | None = None,
    ) -> None:
        """Send the recoverable failures in `answers` again (in place), round by round."""
        wait = self.recovery_wait_s
        for round_no in range(1, self.recovery_rounds + 1):
            failed = [
                k for k, r in answers.items() if r.error and r.error_kind in RECOVERABLE_KINDS
            ]
            if not failed:
                return
            kinds = dict(Counter(answers[k].error_kind for k in failed))
            logger.warning(
                "%d LLM requests to %s failed (%s); sending them again in %.0f s "
                "(recovery round %d of %d: the pool may be replacing a replica)",
                len(failed),
                self._url(),
                kinds,
                wait,
                round_no,
                self.recovery_rounds,
            )
            time.sleep(wait)
            call.recovery_rounds += 1
            answers.update(self._send(failed, messages, sampling, call, resend=True, seeds=seeds))
            wait *= 2

    def _send(
        self,
        keys: list[str],
        messages: dict[str, list[dict[str, str]]],
        sampling: Sampling,
        call: LLMStats,
        resend: bool = False,
        seeds: dict[str, int] | None = None,
    ) -> dict[str, ChatResult]:
        """Send `keys` through the Ray Data chat stage; cache each batch as it arrives."""
        import ray.data

        seeds = seeds or {}
        items = [
            {"_key": k, "messages": messages[k], **({SEED_COLUMN: seeds[k]} if k in seeds else {})}
            for k in keys
        ]
        if seeds and len(seeds) < len(keys):
            # One column for every row (Arrow): None keeps the call's own seed.
            for it in items:
                it.setdefault(SEED_COLUMN, None)
        ds = chat_stage(
            ray.data.from_items(items),
            self.endpoint,
            sampling,
            batch_size=self.batch_size,
            concurrency=self.concurrency,
            max_retries=self.max_retries,
            timeout_s=self.timeout_s,
            num_cpus=self.num_cpus,
            backoff_s=self.backoff_s,
        )
        answers: dict[str, ChatResult] = {}
        if resend:
            call.resent += len(keys)
        else:
            call.requests_sent += len(keys)
        # The open stage's progress line (e.g. "generate") counts requests answered.
        line = console()
        line.update(add_total=len(keys), unit="requests")
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            line.update(advance=batch.num_rows)
            done = []
            for rec in batch.to_pylist():
                res = ChatResult(
                    [str(c) for c in rec["candidates"] or []],
                    int(rec["generated_tokens"] or 0),
                    str(rec["llm_error"] or ""),
                    int(rec["prompt_tokens"] or 0),
                    str(rec["llm_error_kind"] or ""),
                    int(rec["llm_attempts"] or 0),
                )
                answers[rec["_key"]] = res
                call.attempts += res.attempts
                call.generated_tokens += res.generated_tokens
                call.prompt_tokens += res.prompt_tokens
                if not res.error:
                    answer = CachedAnswer(res.candidates, res.generated_tokens, res.prompt_tokens)
                    done.append((rec["_key"], self.model_id, answer))
            if self.cache is not None and done:
                call.cache_writes += self.cache.put_many(done)
        lost = [k for k in keys if k not in answers]
        if lost:
            raise RuntimeError(
                f"LLM chat stage returned {len(answers)} of {len(keys)} requests "
                f"({len(lost)} missing) from {self._url()}"
            )
        return answers
