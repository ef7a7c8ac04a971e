"""Balanced, deterministic k-shot sampling.

Draws are *nested*: for a seed, the k/2 sample is a prefix of the k sample, class by
class. So the CoD budget (k/2 originals + their k/2 counterfactuals) uses exactly the
originals the k-shot baseline also saw, and only the counterfactuals differ.
"""

from __future__ import annotations

import numpy as np

from raydistill.pipelines.datasets import Row


class KShotError(ValueError):
    pass


def class_order(rows: list[Row], num_labels: int, seed: int) -> list[list[int]]:
    """Per class, a seeded permutation of the row indices of that class."""
    rng = np.random.default_rng(seed)
    by_class: list[list[int]] = [[] for _ in range(num_labels)]
    for i, r in enumerate(rows):
        by_class[r["label"]].append(i)
    return [list(rng.permutation(idx)) if idx else [] for idx in by_class]


def per_class_counts(k: int, num_labels: int, seed: int) -> list[int]:
    """k split as evenly as possible; the remainder goes to seeded-random classes."""
    base, extra = divmod(k, num_labels)
    counts = [base] * num_labels
    rng = np.random.default_rng(seed + 7919)
    for c in rng.permutation(num_labels)[:extra]:
        counts[int(c)] += 1
    return counts


def sample_kshot(rows: list[Row], k: int, num_labels: int, seed: int) -> list[Row]:
    if k <= 0:
        raise KShotError(f"k must be positive, got {k}")
    order = class_order(rows, num_labels, seed)
    counts = per_class_counts(k, num_labels, seed)
    picked: list[Row] = []
    for c, (idx, n) in enumerate(zip(order, counts, strict=True)):
        if len(idx) < n:
            raise KShotError(
                f"k={k} needs {n} examples of class {c} but the pool has only {len(idx)}"
            )
        picked.extend(rows[i] for i in idx[:n])
    # Interleave deterministically so a prefix of the list stays balanced.
    rng = np.random.default_rng(seed + 104729)
    return [picked[i] for i in rng.permutation(len(picked))]
