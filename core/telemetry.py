"""Custom job metrics on the Ray dashboard (Metrics tab / Prometheus).

Metrics are created lazily per process and every call is best effort: a job must never
fail because the metrics agent is missing (Ray prefixes them with `ray_` when scraped).
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

FLIP_RATE = "raydistill_counterfactual_flip_rate"
GEN_TOKENS_PER_S = "raydistill_generation_tokens_per_s"
TRAIN_LOSS = "raydistill_train_loss"
ROWS_PROCESSED = "raydistill_rows_processed_total"

_DESCRIPTIONS = {
    FLIP_RATE: ("gauge", "Share of seeds with a teacher-verified counterfactual.", ("task",)),
    GEN_TOKENS_PER_S: (
        "gauge",
        "Teacher-pool generation throughput (generated tokens/s).",
        ("model",),
    ),
    TRAIN_LOSS: ("gauge", "Latest training loss of a student/teacher job (rank 0).", ("job",)),
    ROWS_PROCESSED: ("counter", "Rows processed by a raydistill Ray Data stage.", ("stage",)),
}
_cache: dict[str, Any] = {}


def _metric(name: str):
    if name in _cache:
        return _cache[name]
    kind, desc, tags = _DESCRIPTIONS[name]
    try:
        from ray.util.metrics import Counter, Gauge

        cls = Counter if kind == "counter" else Gauge
        _cache[name] = cls(name, description=desc, tag_keys=tags)
    except Exception:
        log.debug("Ray metrics unavailable for %s", name, exc_info=True)
        _cache[name] = None
    return _cache[name]


def set_gauge(name: str, value: float, **tags: str) -> None:
    m = _metric(name)
    if m is not None:
        try:
            m.set(float(value), tags=tags)
        except Exception:
            log.debug("setting %s failed", name, exc_info=True)


def count_rows(stage: str, n: int) -> None:
    m = _metric(ROWS_PROCESSED)
    if m is not None and n:
        try:
            m.inc(n, tags={"stage": stage})
        except Exception:
            log.debug("counting rows failed", exc_info=True)
