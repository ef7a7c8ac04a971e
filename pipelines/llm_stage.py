"""Ray Data stage: send each row's chat `messages` to the teacher pool, keep the answers.

`chat_stage` is a plain Ray Data `map_batches` task around the async client below
(`chat_results`: httpx + asyncio, retries with backoff on connection errors, timeouts and
408/429/502/503/504) against any OpenAI-compatible endpoint (the teacher pool's
`Endpoint`). A batch's requests are all in flight at once, so the server (vLLM, or the hf
backend's `@serve.batch`) batches them; a request that still fails, or whose answer is
malformed, comes back as a row with empty `candidates` and `llm_error` set: one bad row
never costs the job.

Why not `ray.data.llm`'s HTTP processor (what this stage used before): it starts an actor
and its map stages anew for every dataset execution, a fixed ~1.9 s per generation round
here against 0.07 s for a plain map (`benchmarks/results/pool_paths.md`); in Ray 2.60 it
also awaited a batch's requests one at a time and failed the whole Dataset on one
unreachable request, which needed a custom session to work around.

`chat_sync` is the same request/parse logic without Ray, for tests, benchmarks and small
jobs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import ray.data

    from raydistill.serving.teacher_pool import Endpoint

logger = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 429, 502, 503, 504})
MAX_ERROR_CHARS = 500


@dataclass
class Sampling:
    n: int = 1
    temperature: float = 0.9
    top_p: float = 0.95
    max_tokens: int = 48
    seed: int | None = None


class ChatResult(NamedTuple):
    candidates: list[str]
    generated_tokens: int
    error: str  # "" when fine


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
        out.append({"role": str(m["role"]), "content": str(m["content"])})
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
    return payload


# ---------------------------------------------------------------------- parsing


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _clip(s: str, n: int = MAX_ERROR_CHARS) -> str:
    """One line, no terminal colour codes (Ray's tracebacks carry them), at most n chars."""
    s = " ".join(_ANSI.sub("", str(s)).split())
    return s if len(s) <= n else s[: n - 3] + "..."


def _error_message(obj: Any) -> str | None:
    """The error text of an OpenAI/FastAPI-style error body, if it is one."""
    if not isinstance(obj, Mapping):
        return None
    err = obj.get("error")
    if err:
        if isinstance(err, Mapping):
            msg = err.get("message") or err.get("detail") or json.dumps(err, default=str)
            return _clip(str(msg))
        return _clip(str(err))
    if "detail" in obj and "choices" not in obj:  # FastAPI's default error body
        return _clip(json.dumps(obj["detail"], default=str))
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


def parse_chat_response(obj: Any) -> ChatResult:
    """An OpenAI chat-completions response (already JSON-decoded, untrusted) → result.

    Candidates are the string contents of the choices, in order; choices that are
    malformed are skipped (so there may be fewer than `n`). `generated_tokens` is
    `usage.completion_tokens` when it is a non-negative integer, else 0. The error is
    non-empty when the body is an error or holds no usable choice.
    """
    if not isinstance(obj, Mapping):
        return ChatResult([], 0, f"response is not a JSON object (got {type(obj).__name__})")
    choices = obj.get("choices")
    if not isinstance(choices, list):
        msg = _error_message(obj)
        if msg:
            return ChatResult([], 0, f"server error: {msg}")
        return ChatResult(
            [], 0, f"response has no 'choices' list: {_clip(json.dumps(obj, default=str), 200)}"
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
            candidates.append(text)
    usage = obj.get("usage")
    tokens = usage.get("completion_tokens") if isinstance(usage, Mapping) else None
    if isinstance(tokens, float) and tokens.is_integer():
        tokens = int(tokens)
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
        tokens = 0
    if not candidates:
        why = "0 choices" if not choices else f"{len(choices)} choice(s), none with text content"
        return ChatResult([], tokens, f"response has no usable candidates ({why})")
    return ChatResult(candidates, tokens, "")


def parse_http_result(status: int | None, body: str | bytes | None, error: str = "") -> ChatResult:
    """A transport outcome (HTTP status, raw body, transport error) → result."""
    if error:
        return ChatResult([], 0, _clip(error))
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else (body or "")
    try:
        obj, decoded = json.loads(text), True
    except ValueError:
        obj, decoded = None, False
    if status is None or not (200 <= int(status) < 300):
        msg = _error_message(obj) or _clip(text, 300) or "(empty body)"
        return ChatResult([], 0, f"HTTP {status}: {msg}")
    if not decoded:
        return ChatResult(
            [], 0, f"response is not valid JSON: {_clip(text or '(empty body)', 200)!r}"
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
) -> ray.data.Dataset:
    """Rows with `messages` → the same rows plus `candidates`, `generated_tokens`, `llm_error`.

    `batch_size` rows go to one task and their requests are in flight together (the
    server batches them); `concurrency` tasks run at once. A row whose request fails
    (after `max_retries` retries) or whose response is malformed comes back with
    `candidates == []` and `llm_error` set; it is never dropped and never raises. Columns
    of those three names in the input are replaced.
    """
    import ray.data

    return ds.map_batches(
        _ChatBatch(endpoint, sampling, int(batch_size), float(timeout_s), int(max_retries)),
        batch_size=int(batch_size),
        batch_format="pyarrow",
        num_cpus=num_cpus,
        compute=ray.data.TaskPoolStrategy(size=max(1, int(concurrency))),
    )


_OUT_COLUMNS = ("candidates", "generated_tokens", "llm_error")


@dataclass
class _ChatBatch:
    """One Ray Data batch → its chat answers (picklable: it travels to the task)."""

    endpoint: Any
    sampling: Sampling
    max_in_flight: int
    timeout_s: float
    max_retries: int

    def __call__(self, table: Any) -> Any:
        import pyarrow as pa

        if "messages" not in table.column_names:
            raise ValueError(
                f"chat_stage: rows need a `messages` column; got columns {table.column_names}"
            )
        results = chat_results(
            self.endpoint,
            table.column("messages").to_pylist(),
            self.sampling,
            self.max_in_flight,
            timeout_s=self.timeout_s,
            max_retries=self.max_retries,
        )
        table = table.drop_columns([c for c in _OUT_COLUMNS if c in table.column_names])
        cols = {
            "candidates": pa.array(
                [[str(c) for c in r.candidates] for r in results], type=pa.list_(pa.string())
            ),
            "generated_tokens": pa.array([int(r.generated_tokens) for r in results], pa.int64()),
            "llm_error": pa.array([str(r.error) for r in results], pa.string()),
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
) -> list[ChatResult]:
    import httpx

    sem = asyncio.Semaphore(max(1, int(max_concurrency)))
    limits = httpx.Limits(max_connections=max(1, int(max_concurrency)))
    headers = {"Content-Type": "application/json", **endpoint.headers}

    async def one(client: httpx.AsyncClient, messages: Any) -> ChatResult:
        try:
            payload = build_payload(endpoint.model, normalize_messages(messages), sampling)
        except ValueError as e:
            return ChatResult([], 0, f"bad input row: {e}")
        last = ""
        for attempt in range(max_retries + 1):
            if attempt:
                await asyncio.sleep(2 ** (attempt - 1))
            try:
                async with sem:
                    r = await client.post(endpoint.chat_url, json=payload, headers=headers)
            except httpx.HTTPError as e:
                last = f"{type(e).__name__}: {e}".rstrip(": ")
                continue
            if r.status_code in RETRYABLE_STATUS and attempt < max_retries:
                last = f"HTTP {r.status_code}"
                continue
            return parse_http_result(r.status_code, r.content)
        return ChatResult(
            [],
            0,
            f"request to {endpoint.chat_url} failed after {max_retries + 1} attempt(s): {last}",
        )

    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        return list(await asyncio.gather(*(one(client, m) for m in messages_list)))


def chat_results(
    endpoint: Endpoint,
    messages_list: Sequence[Any],
    sampling: Sampling,
    max_concurrency: int = 32,
    *,
    timeout_s: float = 600.0,
    max_retries: int = 2,
) -> list[ChatResult]:
    """Like `chat_sync`, with the per-request error kept (`ChatResult.error`)."""
    coro = _chat_async(endpoint, messages_list, sampling, max_concurrency, timeout_s, max_retries)
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
    )
    failed = [r.error for r in results if r.error]
    if failed:
        msg = f"{len(failed)} of {len(results)} chat requests failed; first: {failed[0]}"
        if raise_on_error:
            raise RuntimeError(msg)
        logger.warning(msg)
    return [(r.candidates, r.generated_tokens) for r in results]
