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


def _entity_stratified(rows: list[Row], k: int, seed: int) -> list[Row]:
    """Greedy cover: for each entity type (rarest first) one sentence that has it, while
    k allows; then fill with a seeded-random draw from the rest."""
    from raydistill.pipelines.bio import tags_to_spans

    rng = np.random.default_rng(seed)
    order = [int(i) for i in rng.permutation(len(rows))]
    types_of = {i: {t for t, _, _ in tags_to_spans(rows[i]["tags"])} for i in order}
    freq: dict[str, int] = {}
    for ts in types_of.values():
        for t in ts:
            freq[t] = freq.get(t, 0) + 1
    picked: list[int] = []
    covered: set[str] = set()
    for t in sorted(freq, key=lambda x: (freq[x], x)):
        if len(picked) >= k or t in covered:
            continue
        i = next(i for i in order if t in types_of[i] and i not in picked)
        picked.append(i)
        covered |= types_of[i]
    chosen = set(picked)
    picked += [i for i in order if i not in chosen][: k - len(picked)]
    return [rows[i] for i in picked]


def sample_kshot_rows(rows: list[Row], k: int, spec, seed: int) -> list[Row]:
    """k rows for a task kind, deterministic per seed.

    classification: `sample_kshot` (balanced per class, nested in k); token
    classification: every entity type present covered when k allows; seq2seq: uniform;
    mcqa: balanced per answer index (so a student cannot learn "always B").
    """
    if k <= 0:
        raise KShotError(f"k must be positive, got {k}")
    if len(rows) < k:
        raise KShotError(f"k={k} but the pool has only {len(rows)} rows")
    if spec.kind == "classification":
        return sample_kshot(rows, k, spec.num_labels, seed)
    if spec.kind == "token_classification":
        return _entity_stratified(rows, k, seed)
    if spec.kind == "mcqa":
        n = max(r["answer"] for r in rows) + 1
        idx = [{**r, "label": r["answer"]} for r in rows]
        try:
            got = sample_kshot(idx, k, n, seed)
        except KShotError:  # an answer position too rare: fall back to uniform
            got = None
        if got is not None:
            by_id = {r["id"]: r for r in rows}
            return [by_id[r["id"]] for r in got]
    rng = np.random.default_rng(seed)
    return [rows[int(i)] for i in rng.permutation(len(rows))[:k]]
