"""Training rows → the batches of one job: this rank's shard, the tokenized tensors, and
each epoch's row order.

Kept apart from the loop (training/loop.py), which only asks for a shard, a `Batcher`
and an `epoch_order` per epoch: how rows are split, padded and ordered is one concept,
tested on its own (tests/test_students.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def equal_shard(rows: list, rng: np.random.Generator, rank: int, world: int) -> list:
    """This rank's rows; equal shards (the remainder dropped) so ranks take equal steps."""
    order = rng.permutation(len(rows))
    n_eff = len(order) - (len(order) % world) if len(order) >= world else len(order)
    return [rows[i] for i in order[:n_eff][rank::world]] or [rows[order[0]]]


class Batcher:
    """Tokenize once per job; slice tensors per step."""

    def __init__(self, tokenizer, rows: list[dict[str, Any]], max_length: int):
        from raydistill.training.classifier import encode, row_input

        # Sentence-pair rows (text + text_pair) are tokenized as pairs.
        enc = encode(
            tokenizer,
            [row_input(r) for r in rows],
            truncation=True,
            max_length=max_length,
            padding=True,
            return_tensors="pt",
        )
        self.ids = enc["input_ids"]
        self.mask = enc["attention_mask"]
        self.lengths = self.mask.sum(dim=1).numpy()
        self.labels = torch.tensor([int(r["label"]) for r in rows], dtype=torch.long)
        self.t_logits = (
            torch.tensor(np.array([r["teacher_logits"] for r in rows]), dtype=torch.float32)
            if rows and "teacher_logits" in rows[0]
            else None
        )
        has_hidden = [r.get("teacher_hidden") is not None for r in rows]
        if any(has_hidden) and not all(has_hidden):
            lacking = [
                r.get("id", i) for i, r in enumerate(rows) if r.get("teacher_hidden") is None
            ]
            raise ValueError(
                f"{len(lacking)} of {len(rows)} training rows lack teacher_hidden "
                f"(e.g. {lacking[:3]}): annotate every row, or none, with hidden states"
            )
        self.t_hidden = (
            torch.tensor(np.array([r["teacher_hidden"] for r in rows]), dtype=torch.float32)
            if rows and all(has_hidden)
            else None
        )

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows `idx`, cut to the columns any of them uses.

        Tokenizing once pads every row to the longest in the job (64 tokens on SST-2,
        whose median sentence is ~20): without the cut a step computes mostly padding.
        Works for left- and right-padding tokenizers alike.
        """
        ids, mask = self.ids[idx], self.mask[idx]
        used = mask.any(dim=0).nonzero()
        if len(used):
            lo, hi = int(used.min()), int(used.max()) + 1
            ids, mask = ids[:, lo:hi], mask[:, lo:hi]
        return ids, mask


def epoch_order(
    rng: np.random.Generator, lengths: np.ndarray, micro: int, group: bool, window: int = 50
) -> torch.Tensor:
    """One epoch's row order; consecutive `micro`-sized slices are the batches.

    `group`: shuffle, sort each window of `window` batches by length, then shuffle the
    order of the batches. Every row still appears once per epoch and each batch is still
    drawn from a random window, but a batch pads only to lengths near its own, so a step
    computes little padding. Without `group`: a plain permutation.
    """
    perm = rng.permutation(len(lengths))
    if not group or micro >= len(lengths):
        return torch.from_numpy(perm)
    span = micro * window
    batches = []
    for w in range(0, len(perm), span):
        chunk = perm[w : w + span]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches += [chunk[i : i + micro] for i in range(0, len(chunk), micro)]
    # Full batches in random order, a short remainder (if any) last: the loop takes
    # len // micro batches per epoch, so a remainder is dropped as in a plain permutation.
    full = [b for b in batches if len(b) == micro]
    rest = [b for b in batches if len(b) < micro]
    order = rng.permutation(len(full))
    return torch.from_numpy(np.concatenate([full[i] for i in order] + rest))
