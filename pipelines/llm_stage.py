"""Ray Data stage: send each row's chat `messages` to the teacher pool, keep the answers.

`chat_stage` is built on `ray.data.llm` (`build_processor` + `HttpRequestProcessorConfig`)
against any OpenAI-compatible endpoint (the teacher pool's `Endpoint`). Two properties of
the stock HTTP stage in Ray 2.60 do not fit a long generation job, so the processor is
given its own `session_factory` (a documented field of `HttpRequestProcessorConfig`):

1. The stock stage raises (and so fails the whole Dataset) when a request still fails after
   `max_retries` (connection refused, timeouts), and when a response body is not JSON
   (e.g. a proxy's plain-text 500). Here one bad row must not cost the job: it comes back
   with empty `candidates` and `llm_error` set.
2. The stock stage creates all requests of a batch first but awaits them one after
   another, so only one request is in flight per batch and the server (vLLM, or the hf
   backend's `@serve.batch`) never gets anything to batch. Our session starts each
   request as a task the moment the stage calls `post`, so a batch's requests run
   concurrently (bounded by a semaphore of `batch_size`).

`SafeSessionFactory` therefore retries itself (connection errors, timeouts, 408/429/
502/503/504, exponential backoff) and always hands the stage a 200 "envelope"
`{"status", "body", "error"}` with the raw body as a string. Keeping the body a string
also keeps the Arrow schema of `http_response` fixed whatever the server returns; the
postprocess parses it as untrusted JSON (`parse_chat_response`).

`chat_sync` is the same request/parse logic without Ray (plain httpx + asyncio), for
tests, benchmarks and small jobs.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import ray.data
    from raydistill.serving.teacher_pool import Endpoint

logger = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 429, 502, 503, 504})
MAX_ERROR_CHARS = 500
# Columns the processor adds to the row while it runs; they must not exist in the input.
_INTERNAL = ("payload", "http_response", "_llm_input_error")


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


def parse_envelope(env: Any) -> ChatResult:
    """The `http_response` of our session (`{"status", "body", "error"}`) → result."""
    if not isinstance(env, Mapping):
        return ChatResult([], 0, f"malformed transport result ({type(env).__name__})")
    status = env.get("status")
    try:
        status = int(status) if status is not None else None
    except (TypeError, ValueError):
        status = None
    return parse_http_result(status, env.get("body"), str(env.get("error") or ""))


# ------------------------------------------------------- aiohttp session for Ray Data


class _Envelope:
    """What the Ray Data HTTP stage sees as a response: always 200, JSON = envelope."""

    status = 200
    reason = "OK"

    def __init__(self, status: int | None, body: str, error: str) -> None:
        self._json = {"status": int(status or 0), "body": body, "error": error}

    async def __aenter__(self) -> _Envelope:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        return None

    async def json(self, **_kw: Any) -> dict[str, Any]:
        return self._json


class _SafeSession:
    def __init__(self, factory: SafeSessionFactory) -> None:
        self._f = factory
        self._session: Any = None
        self._sem: asyncio.Semaphore | None = None
        self._tasks: list[asyncio.Task] = []

    async def __aenter__(self) -> _SafeSession:
        import aiohttp

        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._f.timeout_s)
        )
        self._sem = asyncio.Semaphore(self._f.max_in_flight)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        for t in self._tasks:
            if not t.done():
                t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._session.close()

    def post(self, url: str, *, headers: Any = None, data: Any = None, **_kw: Any) -> asyncio.Task:
        # Start now: the stage awaits requests one by one, we want them all in flight.
        task = asyncio.ensure_future(self._post(url, headers, data))
        self._tasks.append(task)
        return task

    async def _post(self, url: str, headers: Any, data: Any) -> _Envelope:
        f = self._f
        last = ""
        attempts = f.max_retries + 1
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(f.retry_wait_s * 2 ** (attempt - 1))
            try:
                async with self._sem, self._session.post(url, headers=headers, data=data) as r:
                    status = r.status
                    raw = await r.read()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # connection refused/reset, timeout, bad payload...
                last = f"{type(e).__name__}: {e}".rstrip(": ")
                continue
            body = raw[: f.max_body_bytes].decode("utf-8", errors="replace")
            if status in RETRYABLE_STATUS and attempt + 1 < attempts:
                last = f"HTTP {status}"
                continue
            return _Envelope(status, body, "")
        return _Envelope(0, "", f"request to {url} failed after {attempts} attempt(s): {last}")


@dataclass
class SafeSessionFactory:
    """`session_factory` for `HttpRequestProcessorConfig` (picklable: it goes to actors)."""

    timeout_s: float = 600.0
    max_in_flight: int = 32
    max_retries: int = 2
    retry_wait_s: float = 1.0
    max_body_bytes: int = 4_000_000

    def __call__(self) -> _SafeSession:
        return _SafeSession(self)


# ------------------------------------------------------------------ Ray Data stage


def _preprocess(row: dict[str, Any], *, model: str, sampling: dict[str, Any]) -> dict[str, Any]:
    try:
        messages = normalize_messages(row.get("messages"))
        err = ""
    except ValueError as e:
        # Still send a (well-formed, tiny) request so the row flows through the stage;
        # the postprocess reports this error instead of the answer.
        messages = [{"role": "user", "content": ""}]
        err = f"bad input row: {e}"
    payload = build_payload(model, messages, Sampling(**sampling))
    if err:
        payload["max_tokens"] = 1
        payload["n"] = 1
    return {"payload": payload, "_llm_input_error": err}


def _postprocess(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in row.items() if k not in _INTERNAL}
    input_error = row.get("_llm_input_error") or ""
    if input_error:
        res = ChatResult([], 0, str(input_error))
    else:
        try:
            res = parse_envelope(row.get("http_response"))
        except Exception as e:  # belt and braces: parsing must never fail the job
            res = ChatResult([], 0, f"could not parse response: {type(e).__name__}: {e}")
    out["candidates"] = [str(c) for c in res.candidates]
    out["generated_tokens"] = int(res.generated_tokens)
    out["llm_error"] = res.error
    return out


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

    `batch_size` rows go to one HTTP actor call and their requests are in flight together
    (the server batches them); `concurrency` is the number of HTTP actors. A row whose
    request fails (after `max_retries` retries) or whose response is malformed comes back
    with `candidates == []` and `llm_error` set; it is never dropped and never raises.
    The input must not have columns named payload, http_response or _llm_input_error.
    """
    from ray.data.llm import HttpRequestProcessorConfig, build_processor

    schema = ds.schema(fetch_if_missing=False)
    names = list(getattr(schema, "names", None) or [])
    clash = [c for c in (*_INTERNAL, "__data") if c in names]
    if clash:
        raise ValueError(f"chat_stage: input columns {clash} are reserved; rename them")

    config = HttpRequestProcessorConfig(
        url=endpoint.chat_url,
        headers=dict(endpoint.headers) or None,
        batch_size=int(batch_size),
        concurrency=int(concurrency),
        # Retries happen inside SafeSessionFactory (the stage's own retry loop raises
        # once they are used up); see the module docstring.
        max_retries=0,
        session_factory=SafeSessionFactory(
            timeout_s=float(timeout_s),
            max_in_flight=max(1, int(batch_size)),
            max_retries=max(0, int(max_retries)),
        ),
        http_request_stage=dict(num_cpus=num_cpus),
    )
    light = dict(num_cpus=min(num_cpus, 0.25) or 0.1)
    processor = build_processor(
        config,
        preprocess=functools.partial(_preprocess, model=endpoint.model, sampling=asdict(sampling)),
        postprocess=_postprocess,
        preprocess_map_kwargs=light,
        postprocess_map_kwargs=light,
    )
    return processor(ds)


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
