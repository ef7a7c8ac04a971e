"""The content-addressed store of finished LLM answers (one SQLite file in the cache dir).

A request's key is the sha256 of the canonical JSON of everything that decides its answer:
the model's identity (not the pool's served name "teacher", which every model shares),
the normalized messages and every sampling parameter (n, temperature, top_p, max_tokens,
seed, json schema). Equal requests get equal keys on any machine and in any process, so
a rerun after a crash, the next round of a method, or another method asking the same
thing is answered from here and never sent again.

Why SQLite: answers arrive a batch at a time and each batch must be durable at once (an
interrupted run keeps what finished); one small transaction per batch is what SQLite does
well, with WAL so readers never block the writer, and the file needs no server. Values
are JSON text (candidates + token counts): loading a cache never unpickles anything.

Only one process writes (the driver, see `LLMClient`); SQLite then needs no locking
across machines, so a node-local `cache_dir` works on a cluster. The file must be on a
local filesystem: SQLite's locking is unreliable on NFS and impossible on object stores.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CACHE_FILE = "llm_requests.sqlite"
# Bump when what a key covers, or how it is computed, changes: old answers stop matching.
KEY_VERSION = 1
_MAX_KEYS_PER_QUERY = 500  # SQLite's bound-parameter limit is 999 on old builds


def request_key(model_id: str, messages: Sequence[Mapping[str, str]], sampling: Any) -> str:
    """sha256 hex of the canonical JSON of (model, messages, sampling parameters).

    `messages` must already be normalized (`llm_stage.normalize_messages`: a list of
    `{role, content}` strings). Numbers are normalized by type (temperature 1 == 1.0),
    dict keys sorted, no whitespace: the key depends on the request, not on how it was
    written down.
    """
    if not isinstance(model_id, str) or not model_id:
        raise ValueError("model_id must be a non-empty string naming the real model")
    doc = {
        "v": KEY_VERSION,
        "model": model_id,
        "messages": [{"role": str(m["role"]), "content": str(m["content"])} for m in messages],
        "sampling": sampling_params(sampling),
    }
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sampling_params(sampling: Any) -> dict[str, Any]:
    """The sampling parameters that shape an answer, as plain normalized JSON values."""
    return {
        "n": int(sampling.n),
        "temperature": float(sampling.temperature),
        "top_p": float(sampling.top_p),
        "max_tokens": int(sampling.max_tokens),
        "seed": None if sampling.seed is None else int(sampling.seed),
        "json_schema": getattr(sampling, "json_schema", None),
    }


@dataclass(frozen=True)
class CachedAnswer:
    """One finished, successful answer."""

    candidates: list[str]
    generated_tokens: int
    prompt_tokens: int


def _candidates_json(candidates: Iterable[Any]) -> str:
    """Candidates as stored: readable UTF-8 JSON, or ASCII-escaped JSON when an answer
    holds a lone surrogate (JSON's "\\ud800" decodes to one, and SQLite's UTF-8 cannot
    hold it; found by the Hypothesis round-trip test). Both read back the same."""
    text = json.dumps([str(c) for c in candidates], ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps([str(c) for c in candidates], ensure_ascii=True)
    return text


class RequestCacheError(RuntimeError):
    """The cache file cannot be opened or used (names the file)."""


class RequestCache:
    """Finished LLM answers by request key, in one SQLite file (WAL mode).

    `RequestCache(path)` opens (or creates) the file; `RequestCache.in_dir(cache_dir)`
    uses `<cache_dir>/llm_requests.sqlite`. `get_many` reads, `put_many` writes a batch in
    one transaction (durable when it returns). Rows that fail to decode (a damaged value)
    count as misses and are logged, so the request is simply sent again. Thread-safe;
    meant for one writing process.
    """

    def __init__(self, path: str | Path) -> None:
        text = str(path)
        if "://" in text:
            raise RequestCacheError(
                f"LLM request cache {text}: SQLite needs a local file, not a URI; give "
                "cache_dir a local (node-local is fine) path"
            )
        self.path = Path(path)
        self._lock = threading.Lock()
        self.corrupt = 0  # values that failed to decode (counted as misses)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: a commit survives a killed process; a power cut may lose the last few.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS answers ("
                " key TEXT PRIMARY KEY,"
                " model_id TEXT NOT NULL,"
                " candidates TEXT NOT NULL,"
                " generated_tokens INTEGER NOT NULL,"
                " prompt_tokens INTEGER NOT NULL,"
                " created REAL NOT NULL)"
            )
            self._db.commit()
        except (sqlite3.Error, OSError) as e:
            raise RequestCacheError(f"LLM request cache {self.path}: cannot open: {e}") from e

    @classmethod
    def in_dir(cls, cache_dir: str | Path) -> RequestCache:
        return cls(Path(cache_dir) / CACHE_FILE)

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0])

    def __repr__(self) -> str:
        return f"RequestCache({str(self.path)!r})"

    def get_many(self, keys: Iterable[str]) -> dict[str, CachedAnswer]:
        """The cached answers among `keys` (missing keys are absent from the result)."""
        keys = list(dict.fromkeys(keys))
        out: dict[str, CachedAnswer] = {}
        with self._lock:
            for i in range(0, len(keys), _MAX_KEYS_PER_QUERY):
                chunk = keys[i : i + _MAX_KEYS_PER_QUERY]
                marks = ",".join("?" * len(chunk))
                try:
                    rows = self._db.execute(
                        "SELECT key, candidates, generated_tokens, prompt_tokens FROM answers"
                        f" WHERE key IN ({marks})",
                        chunk,
                    ).fetchall()
                except sqlite3.Error as e:
                    raise RequestCacheError(f"LLM request cache {self.path}: {e}") from e
                for key, cands, gen, prompt in rows:
                    answer = _decode(cands, gen, prompt)
                    if answer is None:
                        self.corrupt += 1
                        logger.warning("LLM request cache %s: bad value for %s", self.path, key)
                        continue
                    out[key] = answer
        return out

    def put_many(self, items: Iterable[tuple[str, str, CachedAnswer]]) -> int:
        """Store `(key, model_id, answer)` items in one transaction; returns how many."""
        now = time.time()
        rows = [
            (
                key,
                model_id,
                _candidates_json(a.candidates),
                int(a.generated_tokens),
                int(a.prompt_tokens),
                now,
            )
            for key, model_id, a in items
        ]
        if not rows:
            return 0
        with self._lock:
            try:
                with self._db:  # one transaction: all of the batch or none of it
                    self._db.executemany(
                        "INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?)", rows
                    )
            except sqlite3.Error as e:
                raise RequestCacheError(f"LLM request cache {self.path}: write failed: {e}") from e
        return len(rows)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> RequestCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _decode(cands: Any, gen: Any, prompt: Any) -> CachedAnswer | None:
    try:
        values = json.loads(cands)
    except (TypeError, ValueError):
        return None
    if not isinstance(values, list) or not values or not all(isinstance(c, str) for c in values):
        return None
    if not isinstance(gen, int) or not isinstance(prompt, int) or gen < 0 or prompt < 0:
        return None
    return CachedAnswer(values, gen, prompt)
