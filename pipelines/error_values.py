"""Error values and seed sampling: where the student is weak, and which seeds to write from.

The weakness loop writes new samples like the ones the student gets wrong. A labelled
example's error value is Err(x) = exp(−h(x)), with h the student's quality on x in [0, 1]
(gold-label probability, entity F1 or ROUGE-L): a perfect example still weighs e^−1, so no
seed ever has zero chance, and the spread between easy and hard ones is bounded (e^1 ≈ 2.7×
at temperature 1). Seeds are then drawn in proportion to Err^(1/τ) without replacement:
τ → 0 takes the hardest first, large τ approaches uniform (the random-seeding ablation
uses `uniform=True`, which is exactly uniform).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def error_values(quality: Sequence[float]) -> np.ndarray:
    """Err = exp(−h) for qualities h in [0, 1]; NaN/out-of-range qualities are an error."""
    h = np.asarray(quality, dtype=float)
    if h.ndim != 1:
        raise ValueError(f"quality must be a 1-D sequence, got shape {h.shape}")
    bad = np.flatnonzero(~np.isfinite(h) | (h < -1e-9) | (h > 1 + 1e-9))
    if len(bad):
        raise ValueError(
            f"quality must be finite and in [0, 1]; rows {bad[:5].tolist()} have "
            f"{h[bad[:5]].tolist()}"
        )
    return np.exp(-np.clip(h, 0.0, 1.0))


def seed_probabilities(err: Sequence[float], temperature: float = 1.0) -> np.ndarray:
    """p_i ∝ Err_i^(1/τ): the sampling distribution `sample_seeds` draws from."""
    if temperature <= 0:
        raise ValueError(f"seed temperature must be > 0, got {temperature}")
    e = np.asarray(err, dtype=float)
    if len(e) == 0:
        return e
    if np.any(e <= 0) or not np.all(np.isfinite(e)):
        raise ValueError("error values must be finite and > 0 (they are exp(-h))")
    logits = np.log(e) / float(temperature)
    w = np.exp(logits - logits.max())
    return w / w.sum()


def sample_seeds(
    ids: Sequence[str],
    err: Sequence[float],
    n: int,
    *,
    temperature: float = 1.0,
    seed: int = 0,
    uniform: bool = False,
) -> list[str]:
    """`n` distinct ids drawn ∝ Err^(1/τ) (or uniformly), without replacement.

    Asking for more seeds than there are examples returns all of them, hardest first, so a
    small labelled set is used whole rather than failing.
    """
    ids = list(ids)
    if len(ids) != len(err):
        raise ValueError(f"{len(ids)} ids but {len(err)} error values")
    if n <= 0 or not ids:
        return []
    rng = np.random.default_rng(seed)
    if n >= len(ids):
        order = np.argsort(-np.asarray(err, dtype=float), kind="stable")
        return [ids[i] for i in order]
    p = None if uniform else seed_probabilities(err, temperature)
    picked = rng.choice(len(ids), size=n, replace=False, p=p)
    return [ids[i] for i in picked]


def histogram(err: Sequence[float], bins: int = 10) -> dict[str, list[float]]:
    """Counts over [e^−1, 1] (the range Err can take), for the report's per-round plot."""
    edges = np.linspace(np.exp(-1.0), 1.0, bins + 1)
    counts, _ = np.histogram(np.clip(np.asarray(err, dtype=float), edges[0], edges[-1]), edges)
    return {"edges": [round(float(x), 4) for x in edges], "counts": counts.tolist()}
