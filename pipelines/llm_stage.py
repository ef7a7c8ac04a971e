"""Ray Data stage: send each row's chat `messages` to the teacher pool, keep the answers.

`chat_stage` is a plain Ray Data `map_batches` task around the async client below
(`chat_results`: httpx + asyncio, bounded retries with exponential backoff on connection
errors, timeouts, 408/429/5xx and unparsable (e.g. truncated) response bodies) against
any OpenAI-compatible endpoint (the teacher pool's `Endpoint`). A batch's requests are all
in flight at once, so the server (vLLM, or the hf backend's `@serve.batch`) batches them;
a request that still fails, or whose answer is malformed, comes back as a row with empty
`candidates`, `llm_error` set and `llm_error_kind` naming the kind (`ERROR_KINDS`): one
bad row never costs the job. Callers go through `pipelines/llm_requests.py:LLMClient`,
which caches answers and fails loudly when most rows of a call error.

Why not `ray.data.llm`'s HTTP processor (what this stage used before): it starts an actor
and its map stages anew for every dataset execution, a fixed ~1.9 s per generation round
here against 0.07 s for a plain map (`benchmarks/results/pool_paths.md`); in Ray 2.60 it
also awaited a batch's requests one at a time and failed the whole Dataset on one
unreachable request, which needed a custom session to work around.

`chat_sync` is the same request/parse logic without Ray (and without the cache), for
tests, benchmarks and small jobs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import random
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import ray.data

    from raydistill.serving.teacher_pool import Endpoint

logger = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
MAX_ERROR_CHARS = 500

# What went wrong with a row (`ChatResult.error_kind`, the `llm_error_kind` column).
ERROR_BAD_INPUT = "bad_input"  # the row's messages are not a list of {role, content}
# Optional int column: the row's own sampling seed (overrides `Sampling.seed`).
SEED_COLUMN = "sampling_seed"
ERROR_TRANSPORT = "transport"  # connection refused/reset, DNS, protocol errors
ERROR_TIMEOUT = "timeout"
ERROR_HTTP_5XX = "http_5xx"
ERROR_HTTP_4XX = "http_4xx"  # e.g. 404 unknown model, 400 bad request (not retried)
ERROR_HTTP_OTHER = "http_other"  # 1xx/3xx: not a chat answer
ERROR_INVALID_JSON = "invalid_json"  # body is not JSON (truncated, HTML, garbage)
ERROR_BAD_RESPONSE = "bad_response"  # JSON, but not a chat completion (or an error body)
ERROR_NO_CANDIDATES = "no_candidates"  # a completion with no usable choice
ERROR_KINDS = (
    ERROR_BAD_INPUT,
    ERROR_TRANSPORT,
    ERROR_TIMEOUT,
    ERROR_HTTP_5XX,
    ERROR_HTTP_4XX,
    ERROR_HTTP_OTHER,
    ERROR_INVALID_JSON,
    ERROR_BAD_RESPONSE,
    ERROR_NO_CANDIDATES,
)
# Worth another attempt: the server or the network may do better next time. A 4xx or a
# well-formed answer without choices would come back the same.
RETRYABLE_KINDS = frozenset({ERROR_TRANSPORT, ERROR_TIMEOUT, ERROR_INVALID_JSON})

_SCHEMA_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass
class Sampling:
    """Sampling parameters of one chat request (all of them are part of the cache key).

    `json_schema` (a JSON Schema dict) asks for structured output: the request carries
    OpenAI/vLLM `response_format={"type": "json_schema", ...}`. Only backends that
    support it get it (`LLMClient` drops it for the others); parse the answer with
    `llm_output.parse_json_object` either way, since it is still untrusted text.
    """

    n: int = 1
    temperature: float = 0.9
    top_p: float = 0.95
    max_tokens: int = 48
    seed: int | None = None
    json_schema: dict[str, Any] | None = None


class ChatResult(NamedTuple):
    candidates: list[str]
    generated_tokens: int
    error: str  # "" when fine
    prompt_tokens: int = 0
    error_kind: str = ""  # one of ERROR_KINDS when `error` is set
    attempts: int = 1  # HTTP attempts made (retries included); 0 for a bad input row


# --------------------------------------------------------------------- requests


def normalize_messages(messages: Any) -> list[dict[str, str]]:
    """Rows from Arrow hold lists/arrays of mappings; turn them into plain JSON dicts.

    Raises ValueError on anything that is not a non-empty list of {role, content}.
    """
    if isinstance(messages, str | bytes) or messages is None:
        raise ValueError(
            f"messages must be a list of {{role, content}} dicts, got {messages!r:.80}"
        )
    if hasattr(messages, "tolist"):
        messages = messages.tolist()
    try:
        items = list(messages)
    except TypeError:
        raise ValueError(f"messages must be a list, got {type(messages).__name__}") from None
    if not items:
        raise ValueError("messages is empty")
    out = []
    for i, m in enumerate(items):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise ValueError(f"messages[{i}] is not a {{role, content}} dict: {m!r:.80}")
        if m["role"] is None or m["content"] is None:
            raise ValueError(f"messages[{i}] has a null role or content")
        role, content = str(m["role"]), str(m["content"])
        if _SURROGATE.search(role) or _SURROGATE.search(content):
            # Not encodable as UTF-8: neither the cache key nor the HTTP body can hold it.
            raise ValueError(f"messages[{i}] holds a lone surrogate (not valid Unicode text)")
        out.append({"role": role, "content": content})
    return out


def build_payload(model: str, messages: list[dict[str, str]], sampling: Sampling) -> dict[str, Any]:
    """The OpenAI chat-completions request body."""
    payload: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "n": int(sampling.n),
        "temperature": float(sampling.temperature),
        "top_p": float(sampling.top_p),
        "max_tokens": int(sampling.max_tokens),
    }
    if sampling.seed is not None:
        payload["seed"] = int(sampling.seed)
    if sampling.json_schema is not None:
        payload["response_format"] = response_format(sampling.json_schema)
    return payload


def response_format(schema: Mapping[str, Any]) -> dict[str, Any]:
    """OpenAI/vLLM structured output for a JSON Schema dict.

    The schema's `title` names it when it is a valid name (OpenAI allows
    `[A-Za-z0-9_-]{1,64}`), else "output".
    """
    if not isinstance(schema, Mapping):
        raise ValueError(f"json_schema must be a dict (a JSON Schema), got {type(schema).__name__}")
    title = schema.get("title")
    name = title if isinstance(title, str) and _SCHEMA_NAME.match(title) else "output"
    return {"type": "json_schema", "json_schema": {"name": name, "schema": dict(schema)}}


# ---------------------------------------------------------------------- parsing


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def valid_text(s: str) -> str:
    """`s` with lone surrogates replaced by U+FFFD.

    JSON may escape them ("\\ud800") and `json.loads` keeps them, but no UTF-8 writer
    (Arrow, SQLite, httpx) accepts them: one such answer would fail its whole batch.
    """
    return _SURROGATE.sub("\ufffd", s) if _SURROGATE.search(s) else s


def _clip(s: str, n: int = MAX_ERROR_CHARS) -> str:
    """One line, no terminal colour codes (Ray's tracebacks carry them), at most n chars."""
    s = valid_text(" ".join(_ANSI.sub("", str(s)).split()))
    return s if len(s) <= n else s[: n - 3] + "..."


def _json_preview(obj: Any, n: int = MAX_ERROR_CHARS) -> str:
    """`obj` as clipped JSON for an error message; never raises.

    A body nested just below the decoder's depth limit decodes, and then fails to encode
    one stack frame deeper (RecursionError): the preview must not turn it into a crash.
    """
    try:
        return _clip(json.dumps(obj, default=str), n)
    except (RecursionError, ValueError, TypeError):
        return "(JSON nested too deeply to show)"


def _show(value: Any) -> str:
    """An untrusted JSON value as one clipped line (strings as they are)."""
    return _clip(value) if isinstance(value, str) else _json_preview(value)


def _error_message(obj: Any) -> str | None:
    """The error text of an OpenAI/FastAPI-style error body, if it is one."""
    if not isinstance(obj, Mapping):
        return None
    err = obj.get("error")
    if err:
        if isinstance(err, Mapping):
            return _show(err.get("message") or err.get("detail") or err)
        return _show(err)
    if "detail" in obj and "choices" not in obj:  # FastAPI's default error body
        return _json_preview(obj["detail"])
    return None


def _content_text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI "content parts"
        texts = [
            p["text"]
            for p in content
            if isinstance(p, Mapping) and p.get("type") == "text" and isinstance(p.get("text"), str)
        ]
        return "".join(texts) if texts else None
    return None


def _count(usage: Any, key: str) -> int:
    """A non-negative integer token count from `usage`, else 0 (untrusted)."""
    v = usage.get(key) if isinstance(usage, Mapping) else None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        return 0
    return v


def parse_chat_response(obj: Any) -> ChatResult:
    """An OpenAI chat-completions response (already JSON-decoded, untrusted) → result.

    Candidates are the string contents of the choices, in order; choices that are
    malformed are skipped (so there may be fewer than `n`). `generated_tokens` and
    `prompt_tokens` are `usage.completion_tokens` / `usage.prompt_tokens` when they are
    non-negative integers, else 0. The error is non-empty when the body is an error or
    holds no usable choice.
    """
    if not isinstance(obj, Mapping):
        return ChatResult(
            [],
            0,
            f"response is not a JSON object (got {type(obj).__name__})",
            error_kind=ERROR_BAD_RESPONSE,
        )
    choices = obj.get("choices")
    if not isinstance(choices, list):
        msg = _error_message(obj)
        if msg:
            return ChatResult([], 0, f"server error: {msg}", error_kind=ERROR_BAD_RESPONSE)
        return ChatResult(
            [],
            0,
            f"response has no 'choices' list: {_json_preview(obj, 200)}",
            error_kind=ERROR_BAD_RESPONSE,
        )
    candidates: list[str] = []
    for ch in choices:
        if not isinstance(ch, Mapping):
            continue
        msg = ch.get("message")
        text = _content_text(msg.get("content")) if isinstance(msg, Mapping) else None
        if text is None and isinstance(ch.get("text"), str):  # completions-style choice
            text = ch["text"]
        if text is not None:
            candidates.append(valid_text(text))
    usage = obj.get("usage")
    tokens, prompt = _count(usage, "completion_tokens"), _count(usage, "prompt_tokens")
    if not candidates:
        why = "0 choices" if not choices else f"{len(choices)} choice(s), none with text content"
        return ChatResult(
            [],
            tokens,
            f"response has no usable candidates ({why})",
            prompt,
            ERROR_NO_CANDIDATES,
        )
    return ChatResult(candidates, tokens, "", prompt)


def _status_kind(status: int | None) -> str:
    if status is not None and 500 <= int(status) < 600:
        return ERROR_HTTP_5XX
    if status is not None and 400 <= int(status) < 500:
        return ERROR_HTTP_4XX
    return ERROR_HTTP_OTHER


def parse_http_result(
    status: int | None, body: str | bytes | None, error: str = "", error_kind: str = ""
) -> ChatResult:
    """A transport outcome (HTTP status, raw body, transport error) → result."""
    if error:
        return ChatResult([], 0, _clip(error), error_kind=error_kind or ERROR_TRANSPORT)
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else (body or "")
    try:
        obj, decoded = json.loads(text), True
    except (ValueError, RecursionError):
        obj, decoded = None, False
    if status is None or not (200 <= int(status) < 300):
        msg = _error_message(obj) or _clip(text, 300) or "(empty body)"
        return ChatResult([], 0, f"HTTP {status}: {msg}", error_kind=_status_kind(status))
    if not decoded:
        return ChatResult(
            [],
            0,
            f"response is not valid JSON: {_clip(text or '(empty body)', 200)!r}",
            error_kind=ERROR_INVALID_JSON,
        )
    return parse_chat_response(obj)


def chat_stage(
    ds: ray.data.Dataset,
    endpoint: Endpoint,
    sampling: Sampling,
    *,
    batch_size: int = 32,
    concurrency: int = 1,
    max_retries: int = 2,
    timeout_s: float = 600.0,
    num_cpus: float = 0.25,
    backoff_s: float = 1.0,
) -> ray.data.Dataset:
    """Rows with `messages` → the same rows plus the answer columns (`OUT_COLUMNS`).

    Added: `candidates`, `generated_tokens`, `prompt_tokens`, `llm_error`,
    `llm_error_kind`, `llm_attempts`. `batch_size` rows go to one task and their requests
    are in flight together (the server batches them); `concurrency` tasks run at once. A
    row whose request fails (after `max_retries` retries, waiting `backoff_s`, 2x, 4x...
    between them) or whose response is malformed comes back with `candidates == []` and
    `llm_error` set; it is never dropped and never raises. Columns of those names in the
    input are replaced.
    """
    import ray.data

    return ds.map_batches(
        _ChatBatch(
            endpoint,
            sampling,
            int(batch_size),
            float(timeout_s),
            int(max_retries),
            float(backoff_s),
        ),
        batch_size=int(batch_size),
        batch_format="pyarrow",
        num_cpus=num_cpus,
        compute=ray.data.TaskPoolStrategy(size=max(1, int(concurrency))),
    )


OUT_COLUMNS = (
    "candidates",
    "generated_tokens",
    "prompt_tokens",
    "llm_error",
    "llm_error_kind",
    "llm_attempts",
)


@dataclass
class _ChatBatch:
    """One Ray Data batch → its chat answers (picklable: it travels to the task)."""

    endpoint: Any
    sampling: Sampling
    max_in_flight: int
    timeout_s: float
    max_retries: int
    backoff_s: float = 1.0

    def __call__(self, table: Any) -> Any:
        import pyarrow as pa

        if "messages" not in table.column_names:
            raise ValueError(
                f"chat_stage: rows need a `messages` column; got columns {table.column_names}"
            )
        seeds = None
        if SEED_COLUMN in table.column_names:
            seeds = [None if v is None else int(v) for v in table.column(SEED_COLUMN).to_pylist()]
        results = chat_results(
            self.endpoint,
            table.column("messages").to_pylist(),
            self.sampling,
            self.max_in_flight,
            timeout_s=self.timeout_s,
            max_retries=self.max_retries,
            backoff_s=self.backoff_s,
            seeds=seeds,
        )
        table = table.drop_columns([c for c in OUT_COLUMNS if c in table.column_names])
        cols = {
            "candidates": pa.array(
                [[str(c) for c in r.candidates] for r in results], type=pa.list_(pa.string())
            ),
            "generated_tokens": pa.array([int(r.generated_tokens) for r in results], pa.int64()),
            "prompt_tokens": pa.array([int(r.prompt_tokens) for r in results], pa.int64()),
            "llm_error": pa.array([str(r.error) for r in results], pa.string()),
            "llm_error_kind": pa.array([str(r.error_kind) for r in results], pa.string()),
            "llm_attempts": pa.array([int(r.attempts) for r in results], pa.int64()),
        }
        for name, col in cols.items():
            table = table.append_column(name, col)
        return table


# ----------------------------------------------------------------- without Ray


async def _chat_async(
    endpoint: Endpoint,
    messages_list: Sequence[Any],
    sampling: Sampling,
    max_concurrency: int,
    timeout_s: float,
    max_retries: int,
    backoff_s: float = 1.0,
    seeds: Sequence[int | None] | None = None,
) -> list[ChatResult]:
    import httpx

    sem = asyncio.Semaphore(max(1, int(max_concurrency)))
    limits = httpx.Limits(max_connections=max(1, int(max_concurrency)))
    headers = {"Content-Type": "application/json", **endpoint.headers}

    async def one(client: httpx.AsyncClient, messages: Any, seed: int | None) -> ChatResult:
        own = sampling if seed is None else dataclasses.replace(sampling, seed=int(seed))
        try:
            payload = build_payload(endpoint.model, normalize_messages(messages), own)
        except ValueError as e:
            return ChatResult([], 0, f"bad input row: {e}", error_kind=ERROR_BAD_INPUT, attempts=0)
        tries = max(0, int(max_retries)) + 1
        for attempt in range(tries):
            if attempt:
                # Exponential backoff with jitter, so retried rows do not arrive together.
                await asyncio.sleep(backoff_s * 2 ** (attempt - 1) * (1 + 0.25 * random.random()))
            status = None
            try:
                async with sem:
                    r = await client.post(endpoint.chat_url, json=payload, headers=headers)
            except httpx.TimeoutException as e:
                why = f"{type(e).__name__}: {e}".rstrip(": ")
                res = parse_http_result(None, None, why, ERROR_TIMEOUT)
            except httpx.HTTPError as e:
                why = f"{type(e).__name__}: {e}".rstrip(": ")
                res = parse_http_result(None, None, why, ERROR_TRANSPORT)
            else:
                status = r.status_code
                res = parse_http_result(status, r.content)
            res = res._replace(attempts=attempt + 1)
            if not res.error:
                return res
            if res.error_kind not in RETRYABLE_KINDS and status not in RETRYABLE_STATUS:
                return res  # a 4xx or a well-formed non-answer: the same again next time
        return res._replace(
            error=_clip(
                f"request to {endpoint.chat_url} failed after {tries} attempt(s): {res.error}"
            )
        )

    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        row_seeds = list(seeds) if seeds is not None else [None] * len(messages_list)
        return list(
            await asyncio.gather(
                *(one(client, m, sd) for m, sd in zip(messages_list, row_seeds, strict=True))
            )
        )


def chat_results(
    endpoint: Endpoint,
    messages_list: Sequence[Any],
    sampling: Sampling,
    max_concurrency: int = 32,
    *,
    timeout_s: float = 600.0,
    max_retries: int = 2,
    backoff_s: float = 1.0,
    seeds: Sequence[int | None] | None = None,
) -> list[ChatResult]:
    """Like `chat_sync`, with the per-request error kept (`ChatResult.error`).

    `seeds`: a sampling seed per row (None keeps `sampling.seed`), so rows of several
    callers with their own seeds share one pass through the pool."""
    coro = _chat_async(
        endpoint,
        messages_list,
        sampling,
        max_concurrency,
        timeout_s,
        max_retries,
        backoff_s,
        seeds,
    )
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    # Called from inside a running event loop (a notebook, an async actor): use a thread.
    box: dict[str, Any] = {}

    def runner() -> None:
        try:
            box["out"] = asyncio.run(coro)
        except BaseException as e:
            box["err"] = e

    t = threading.Thread(target=runner, daemon=True)
    t.start()
    t.join()
    if "err" in box:
        raise box["err"]
    return box["out"]


def chat_sync(
    endpoint: Endpoint,
    messages_list: Sequence[Any],
    sampling: Sampling,
    max_concurrency: int = 32,
    *,
    timeout_s: float = 600.0,
    max_retries: int = 2,
    raise_on_error: bool = True,
    backoff_s: float = 1.0,
) -> list[tuple[list[str], int]]:
    """Send every conversation concurrently (plain httpx) → `(candidates, tokens)` each.

    With `raise_on_error` (the default) a failed request raises `RuntimeError` naming
    how many failed and the first error; otherwise failures come back as `([], 0)` (use
    `chat_results` to see why).
    """
    results = chat_results(
        endpoint,
        messages_list,
        sampling,
        max_concurrency,
        timeout_s=timeout_s,
        max_retries=max_retries,
        backoff_s=backoff_s,
    )
    failed = [r.error for r in results if r.error]
    if failed:
        msg = f"{len(failed)} of {len(results)} chat requests failed; first: {failed[0]}"
        if raise_on_error:
            raise RuntimeError(msg)
        logger.warning(msg)
    return [(r.candidates, r.generated_tokens) for r in results]
