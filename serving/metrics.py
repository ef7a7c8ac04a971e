"""Serving bookkeeping: shadow-mode agreement and batch sizes, as local counts and Ray metrics.

`ShadowStats` keeps exact counts in the process (served as JSON at `GET /v1/shadow`) and
`BatchStats` counts the batches the replica's `@serve.batch` queue formed (sizes, model
time; `GET /v1/stats`), so an operator can see whether concurrent requests really merge.
Both mirror into Ray's metrics system (`ray.util.metrics`), which the Ray dashboard's
Metrics tab and Prometheus scrape and which aggregate across replicas. Ray exports user
metrics with a `ray_` prefix, so `raydistill_shadow_requests_total` is scraped as
`ray_raydistill_shadow_requests_total`.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

SHADOW_REQUESTS = "raydistill_shadow_requests_total"
SHADOW_INPUTS = "raydistill_shadow_inputs_total"
SHADOW_AGREED = "raydistill_shadow_agreed_total"
SHADOW_ERRORS = "raydistill_shadow_errors_total"
SHADOW_AGREEMENT = "raydistill_shadow_agreement"

SHADOW_METRIC_NAMES = (
    SHADOW_REQUESTS,
    SHADOW_INPUTS,
    SHADOW_AGREED,
    SHADOW_ERRORS,
    SHADOW_AGREEMENT,
)
BATCH_SIZE = "raydistill_batch_size"
BATCH_MODEL_SECONDS = "raydistill_batch_model_seconds"
BATCH_SIZE_BOUNDARIES = [1.5, 2.5, 4.5, 8.5, 16.5, 32.5, 64.5]


class ShadowSampler:
    """Deterministic fraction sampler: request n (1-based) is taken when
    floor(n * f) > floor((n - 1) * f), so exactly floor(N * f) of the first N are taken,
    spread evenly (f=0.5 takes every second request, f=1 all, f=0 none)."""

    def __init__(self, fraction: float):
        if not (isinstance(fraction, int | float) and 0.0 <= float(fraction) <= 1.0):
            raise ValueError(f"shadow_fraction must be in [0, 1], got {fraction!r}")
        self.fraction = float(fraction)
        self._seen = 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            self._seen += 1
            n = self._seen
        return math.floor(n * self.fraction) > math.floor((n - 1) * self.fraction)


def labels_agree(student: dict[str, Any], teacher: dict[str, Any], same_label_names: bool) -> bool:
    """Compare label names when both models share their label set, else label ids."""
    if same_label_names:
        return student["label"] == teacher["label"]
    return int(student["label_id"]) == int(teacher["label_id"])


@dataclass
class _Counts:
    requests: int = 0
    inputs: int = 0
    agreed: int = 0
    errors: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "inputs": self.inputs,
            "agreed": self.agreed,
            "errors": self.errors,
            "agreement": (self.agreed / self.inputs) if self.inputs else None,
        }


@dataclass
class ShadowStats:
    """Counts of shadowed requests/inputs and label agreement, per student model.

    `agreement` = agreed inputs / shadowed inputs (null until one input is compared).
    """

    teacher: str | None = None
    fraction: float = 0.0
    _total: _Counts = field(default_factory=_Counts)
    _by_model: dict[str, _Counts] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _ray: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self._ray = _make_ray_metrics()

    def record(self, model: str, n_inputs: int, n_agreed: int) -> None:
        with self._lock:
            per = self._by_model.setdefault(model, _Counts())
            for c in (self._total, per):
                c.requests += 1
                c.inputs += n_inputs
                c.agreed += n_agreed
            agreement = per.agreed / per.inputs if per.inputs else None
        if self._ray:
            tags = {"model": model}
            try:
                self._ray["requests"].inc(1, tags=tags)
                if n_inputs:
                    self._ray["inputs"].inc(n_inputs, tags=tags)
                if n_agreed:
                    self._ray["agreed"].inc(n_agreed, tags=tags)
                if agreement is not None:
                    self._ray["agreement"].set(agreement, tags=tags)
            except Exception:  # metrics must never break serving
                logger.debug("recording Ray shadow metrics failed", exc_info=True)

    def record_error(self, model: str) -> None:
        with self._lock:
            self._total.errors += 1
            self._by_model.setdefault(model, _Counts()).errors += 1
        if self._ray:
            try:
                self._ray["errors"].inc(1, tags={"model": model})
            except Exception:
                logger.debug("recording Ray shadow metrics failed", exc_info=True)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            out = self._total.as_dict()
            out["by_model"] = {m: c.as_dict() for m, c in sorted(self._by_model.items())}
        out["teacher"] = self.teacher
        out["fraction"] = self.fraction
        return out


def _make_ray_metrics() -> dict[str, Any] | None:
    """Ray metrics objects, or None where Ray's metrics API is unavailable."""
    try:
        from ray.util.metrics import Counter, Gauge

        keys = ("model",)
        return {
            "requests": Counter(
                SHADOW_REQUESTS,
                description="Requests also scored by the teacher (shadow mode).",
                tag_keys=keys,
            ),
            "inputs": Counter(
                SHADOW_INPUTS,
                description="Inputs scored by both student and teacher (shadow mode).",
                tag_keys=keys,
            ),
            "agreed": Counter(
                SHADOW_AGREED,
                description="Shadowed inputs where the student's label equals the teacher's.",
                tag_keys=keys,
            ),
            "errors": Counter(
                SHADOW_ERRORS,
                description="Shadow teacher calls that failed (the client answer is unaffected).",
                tag_keys=keys,
            ),
            "agreement": Gauge(
                SHADOW_AGREEMENT,
                description="Student-teacher label agreement over shadowed inputs (0..1).",
                tag_keys=keys,
            ),
        }
    except Exception:
        logger.debug("Ray metrics unavailable; shadow stats stay local", exc_info=True)
        return None


@dataclass
class _BatchCounts:
    batches: int = 0
    items: int = 0
    max_size: int = 0
    model_s: float = 0.0
    sizes: dict[int, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "items": self.items,
            "mean_size": round(self.items / self.batches, 3) if self.batches else None,
            "max_size": self.max_size,
            "model_ms_per_item": round(1000 * self.model_s / self.items, 3) if self.items else None,
            "sizes": {str(k): v for k, v in sorted(self.sizes.items())},
        }


@dataclass
class BatchStats:
    """Batches one replica ran per model: count, items, size histogram, model seconds."""

    _by_model: dict[str, _BatchCounts] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _ray: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self._ray = _make_batch_metrics()

    def record(self, model: str, size: int, model_seconds: float) -> None:
        with self._lock:
            c = self._by_model.setdefault(model, _BatchCounts())
            c.batches += 1
            c.items += size
            c.max_size = max(c.max_size, size)
            c.model_s += model_seconds
            c.sizes[size] = c.sizes.get(size, 0) + 1
        if self._ray:
            try:
                self._ray["size"].observe(size, tags={"model": model})
                self._ray["seconds"].observe(model_seconds, tags={"model": model})
            except Exception:
                logger.debug("recording Ray batch metrics failed", exc_info=True)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {m: c.as_dict() for m, c in sorted(self._by_model.items())}


def _make_batch_metrics() -> dict[str, Any] | None:
    try:
        from ray.util.metrics import Histogram

        return {
            "size": Histogram(
                BATCH_SIZE,
                description="Inputs per model call formed by the replica's batch queue.",
                boundaries=BATCH_SIZE_BOUNDARIES,
                tag_keys=("model",),
            ),
            "seconds": Histogram(
                BATCH_MODEL_SECONDS,
                description="Seconds one batched model call took (tokenize + forward).",
                boundaries=[0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0],
                tag_keys=("model",),
            ),
        }
    except Exception:
        logger.debug("Ray metrics unavailable; batch stats stay local", exc_info=True)
        return None
