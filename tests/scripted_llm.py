"""A scripted OpenAI-compatible chat server for tests: real HTTP, answers chosen by the test.

    from scripted_llm import ScriptedLLM, completion   # tests/ is on sys.path (conftest)

    def answer(payload):                 # the decoded JSON request body
        return 200, completion(["a dull film"] * payload.get("n", 1))

    with ScriptedLLM(answer) as llm:     # listens on a free 127.0.0.1 port
        client = LLMClient(llm.endpoint, "scripted:test", cache)
        ...
        assert llm.count == 3            # POST /v1/chat/completions received
        llm.payloads[0]["messages"]      # what was sent, in arrival order

The handler gets the request payload (a dict; `None` when the body was not JSON) and
returns `(status, body)`: a dict is sent as JSON, `bytes`/`str` as they are (to script
garbage or truncated JSON). It may sleep (to script timeouts) or raise (→ HTTP 500, which
the test sees as a 5xx). Two bodies script a broken connection: `DROP` closes it without
any response (a replica that died mid-request), `CutBody(data)` declares more bytes than
it sends, then closes (a body cut off on the wire). Requests are handled on their own
threads, so concurrent clients (Ray Data tasks on this machine) are served concurrently.
`GET /v1/models` lists `model`. The default handler answers every choice with
"answer: <last user message>"; `forward_to(url)` makes the server a counting proxy in
front of a real pool. `arrivals` and `answers` time what happened, for backoff checks.

Why a real server rather than a mock: the code under test is the HTTP client, its retries
and its Ray Data tasks in other processes; only a socket exercises all of them.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from raydistill.serving.teacher_pool import Endpoint

Handler = Callable[[dict[str, Any] | None], tuple[int, Any]]

DROP = object()  # as a body: close the connection without answering


class CutBody:
    """As a body: send `data` under a Content-Length `missing` bytes longer, then close."""

    def __init__(self, data: bytes, missing: int = 64) -> None:
        self.data, self.missing = bytes(data), int(missing)


def forward_to(url: str, timeout_s: float = 300.0) -> Handler:
    """A handler that sends each payload on to `url` (a real pool's chat URL) and answers
    with what came back: the scripted server becomes a proxy that counts the requests a
    pool received. A request the pool never answered (connection refused or dropped) is
    dropped here too, so the client sees a transport error, as it would without us."""
    import httpx

    def forward(payload: dict[str, Any] | None) -> tuple[int, Any]:
        try:
            r = httpx.post(url, json=payload, timeout=timeout_s)
        except httpx.HTTPError:
            return 0, DROP
        return r.status_code, r.content

    return forward


def completion(
    contents: list[str], *, prompt_tokens: int = 7, completion_tokens: int | None = None
) -> dict[str, Any]:
    """An OpenAI chat-completion body with one choice per content string."""
    if completion_tokens is None:
        completion_tokens = sum(len(c.split()) for c in contents)
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "model": "teacher",
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": c},
                "finish_reason": "stop",
            }
            for i, c in enumerate(contents)
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def last_user_message(payload: dict[str, Any] | None) -> str:
    msgs = (payload or {}).get("messages") or []
    users = [m.get("content", "") for m in msgs if isinstance(m, dict) and m.get("role") == "user"]
    return str(users[-1]) if users else ""


def echo_handler(payload: dict[str, Any] | None) -> tuple[int, Any]:
    """Every choice is "answer: <last user message>"."""
    n = int((payload or {}).get("n") or 1)
    return 200, completion([f"answer: {last_user_message(payload)}"] * n)


class _Server(ThreadingHTTPServer):
    # A batch's requests connect all at once; the default backlog (5) let the kernel drop
    # SYNs beyond it, and a client with a short timeout saw a connect timeout for a request
    # the server never received.
    request_queue_size = 128


class ScriptedLLM:
    """The server (see the module docstring). `start()`/`stop()` or use it as a context."""

    def __init__(
        self, handler: Handler | None = None, *, model: str = "teacher", port: int = 0
    ) -> None:
        self.handler: Handler = handler or echo_handler
        self.model = model
        self._port = int(port)  # 0: a free one; a fixed one brings a "pool" back where it was
        self.payloads: list[dict[str, Any] | None] = []
        self.arrivals: list[float] = []  # time.monotonic() of each payload's arrival
        # (time answered, status or None when dropped, payload), in the order answered
        self.answers: list[tuple[float, int | None, dict[str, Any] | None]] = []
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> ScriptedLLM:
        owner = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _send(
                self, status: int, body: Any, chat: bool = False, payload: Any = None
            ) -> None:
                if body is DROP:
                    self.close_connection = True
                    owner._answered(None, payload)
                    return
                cut = 0
                if isinstance(body, CutBody):
                    body, cut = body.data, body.missing
                    self.close_connection = True
                if isinstance(body, bytes | bytearray):
                    data, ctype = bytes(body), "application/octet-stream"
                elif isinstance(body, str):
                    data, ctype = body.encode("utf-8"), "text/plain; charset=utf-8"
                else:
                    data, ctype = json.dumps(body).encode("utf-8"), "application/json"
                self.send_response(int(status))
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data) + cut))
                self.end_headers()
                # The client may have given up (a scripted timeout): nothing to do then.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(data)
                if chat:
                    owner._answered(int(status), payload)

            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": owner.model}]})
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                try:
                    payload = json.loads(raw)
                except ValueError:
                    payload = None
                with owner._lock:
                    owner.payloads.append(payload)
                    owner.arrivals.append(time.monotonic())
                try:
                    status, body = owner.handler(payload)
                except Exception as e:
                    status, body = 500, {"error": {"message": f"handler raised {e!r}"}}
                self._send(status, body, True, payload)

        server = _Server(("127.0.0.1", self._port), _Handler)
        server.daemon_threads = True
        server.block_on_close = False  # a handler still sleeping must not hold up stop()
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> ScriptedLLM:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- what it saw

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("ScriptedLLM is not running")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.base_url, self.model, {})

    @property
    def count(self) -> int:
        """Chat requests received so far (retries included)."""
        with self._lock:
            return len(self.payloads)

    def _answered(self, status: int | None, payload: Any) -> None:
        with self._lock:
            self.answers.append((time.monotonic(), status, payload))

    def received(self) -> list[dict[str, Any] | None]:
        """A copy of the chat payloads received, in arrival order."""
        with self._lock:
            return list(self.payloads)

    def reset(self, handler: Handler | None = None) -> None:
        """Forget the requests seen; optionally script new answers."""
        with self._lock:
            self.payloads.clear()
            self.arrivals.clear()
            self.answers.clear()
            if handler is not None:
                self.handler = handler
