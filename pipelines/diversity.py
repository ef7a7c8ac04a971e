"""Keep the generated samples that add the most: near-duplicates out, farthest ones in.

Oversampling NF× and keeping the diverse share is the weakness method's guard against a
generator that writes the same sample again and again. Two steps:

1. `near_duplicates`: MinHash LSH over word shingles (`datasketch`) drops candidates that
   near-copy a labelled example or an earlier candidate (the first of a pair is kept).
2. `farthest_first`: greedy max-min selection in embedding space — each pick is the
   candidate farthest (cosine) from the labelled data *and* everything picked so far, and
   the distances are recomputed after every pick. (Dropping both members of a close pair,
   or scoring once up front, keeps clusters of look-alikes that happen to sit far from the
   labelled data.)

Embeddings come from a real sentence-embedding model (`embed`): all-MiniLM-L6-v2 by
default, any sentence-transformers or HF encoder by name or folder.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

import numpy as np


def _shingles(text: str, n: int = 3) -> set[bytes]:
    w = re.findall(r"\w+", text.lower())
    if len(w) < n:
        return {" ".join(w).encode()} if w else {b""}
    return {" ".join(w[i : i + n]).encode() for i in range(len(w) - n + 1)}


def near_duplicates(
    candidates: Sequence[str],
    reference: Sequence[str] = (),
    threshold: float = 0.7,
    num_perm: int = 128,
) -> list[bool]:
    """For each candidate: True if it near-copies a reference text or an earlier candidate
    (estimated Jaccard of word 3-shingles ≥ `threshold`)."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)

    def sketch(text: str) -> MinHash:
        m = MinHash(num_perm=num_perm, seed=1)
        m.update_batch(list(_shingles(text)))
        return m

    for i, t in enumerate(reference):
        lsh.insert(f"r{i}", sketch(t))
    out = []
    for i, t in enumerate(candidates):
        m = sketch(t)
        dup = bool(lsh.query(m))
        out.append(dup)
        if not dup:
            lsh.insert(f"c{i}", m)
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be 2-D, got shape {x.shape}")
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n == 0, 1.0, n)


def farthest_first(candidates: np.ndarray, reference: np.ndarray, n: int) -> list[int]:
    """Indices of `n` candidates picked greedily by largest cosine distance to the nearest
    of (reference ∪ picked), recomputed after each pick; ties go to the lower index."""
    c = _unit(candidates)
    if n <= 0 or len(c) == 0:
        return []
    r = _unit(reference) if len(reference) else np.zeros((0, c.shape[1]))
    # Distance of each candidate to its nearest reference point (2.0 = nothing yet).
    nearest = (1.0 - (c @ r.T)).min(axis=1) if len(r) else np.full(len(c), 2.0)
    picked: list[int] = []
    alive = np.ones(len(c), dtype=bool)
    for _ in range(min(n, len(c))):
        score = np.where(alive, nearest, -np.inf)
        i = int(np.argmax(score))
        picked.append(i)
        alive[i] = False
        nearest = np.minimum(nearest, 1.0 - c @ c[i])
    return picked


@lru_cache(maxsize=2)
def _encoder(model_dir: str):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(model_dir, device="cpu")


def embed(texts: Sequence[str], model_dir: str, batch_size: int = 64) -> np.ndarray:
    """Sentence embeddings (L2-normalised) from a sentence-transformers model or folder."""
    if not texts:
        return np.zeros((0, 1))
    enc = _encoder(str(model_dir))
    # No tqdm bars: the stage's console line reports progress, and bars written to a
    # `ray job submit` log or CI output are only noise.
    return np.asarray(
        enc.encode(
            list(texts),
            batch_size=batch_size,
            normalize_embeddings=True,
            show_progress_bar=False,
        ),
        dtype=np.float32,
    )
