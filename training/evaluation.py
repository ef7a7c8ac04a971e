"""Accuracy, teacher fidelity and boundary fidelity, computed the same way on every rank.

A few-shot student is evaluated far more often than it takes a training step (dev every
`eval_every` epochs, test and counterfactual pairs at the end), so evaluation is built
for repetition: each rank tokenizes its slice once per job, sorted by length so a batch
pads only to its own longest text, and predictions are gathered across ranks.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from raydistill.training.classifier import Input, encode, row_input


def _chars(item: Input) -> int:
    return len(item) if isinstance(item, str) else sum(len(x) for x in item)


class EvalSet:
    """One rank's slice of `texts` (texts or (text, text_pair) pairs, not mixed),
    tokenized once in length-sorted batches."""

    def __init__(self, tokenizer, texts: list[Input], max_length: int, rank=0, world=1, bs=128):
        self.n = len(texts)
        self.world = world
        self.per = math.ceil(self.n / world) if self.n else 0
        lo, hi = min(rank * self.per, self.n), min((rank + 1) * self.per, self.n)
        mine = texts[lo:hi]
        self.order = np.argsort([_chars(t) for t in mine], kind="stable")
        self.batches = []
        for i in range(0, len(mine), bs):
            enc = encode(
                tokenizer,
                [mine[j] for j in self.order[i : i + bs]],
                truncation=True,
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            )
            self.batches.append((enc["input_ids"], enc["attention_mask"]))

    @torch.no_grad()
    def predict(self, model) -> np.ndarray:
        """Argmax labels for all `n` texts, in input order, on every rank."""
        dev = next(model.parameters()).device
        sorted_preds = [
            model(input_ids=ids.to(dev), attention_mask=mask.to(dev))[0].argmax(-1).cpu()
            for ids, mask in self.batches
        ]
        mine = np.zeros(len(self.order), dtype=np.int64)
        if sorted_preds:
            mine[self.order] = torch.cat(sorted_preds).numpy()
        if self.world == 1:
            return mine
        import torch.distributed as dist

        buf = torch.full((self.per,), -1, dtype=torch.long, device=dev)
        buf[: len(mine)] = torch.from_numpy(mine).to(dev)
        out = [torch.empty_like(buf) for _ in range(self.world)]
        dist.all_gather(out, buf)
        return torch.cat(out)[: self.n].cpu().numpy()


class Evaluator:
    """Metrics on fixed rows (and counterfactual pairs), reusable across evaluations."""

    def __init__(self, tokenizer, rows, pairs=None, max_length=64, rank=0, world=1, bs=128):
        self.labels = np.array([int(r["label"]) for r in rows])
        self.teacher = (
            np.array([int(r["teacher_pred"]) for r in rows])
            if rows and "teacher_pred" in rows[0]
            else None
        )
        self.texts = EvalSet(tokenizer, [row_input(r) for r in rows], max_length, rank, world, bs)
        # pairs: [(orig_teacher_pred, orig_text, cf_teacher_pred, cf_text)]; on sentence-pair
        # tasks the texts are (text, text_pair) tuples
        self.pairs = list(pairs or [])
        self.pair_texts = (
            EvalSet(
                tokenizer,
                [p[1] for p in self.pairs] + [p[3] for p in self.pairs],
                max_length,
                rank,
                world,
                bs,
            )
            if self.pairs
            else None
        )

    def __call__(self, model) -> dict[str, Any]:
        was_training = model.training
        model.eval()
        preds = self.texts.predict(model)
        out: dict[str, Any] = {
            "accuracy": float((preds == self.labels).mean()) if len(self.labels) else float("nan")
        }
        if self.teacher is not None:
            out["fidelity"] = float((preds == self.teacher).mean())
        if self.pair_texts is not None:
            pp = self.pair_texts.predict(model)
            m = len(self.pairs)
            agree = [
                (pp[i] == self.pairs[i][0]) and (pp[m + i] == self.pairs[i][2]) for i in range(m)
            ]
            out["boundary_fidelity"] = float(np.mean(agree))
        if was_training:
            model.train()
        return out


def evaluate(model, tokenizer, rows, pairs, max_length, rank=0, world=1) -> dict[str, Any]:
    """One-off evaluation (tokenizes every call; use `Evaluator` for repeated ones)."""
    return Evaluator(tokenizer, rows, pairs, max_length, rank, world)(model)
