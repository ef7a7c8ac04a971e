"""Token classification students (BIO tagging, e.g. CoNLL-2003 NER).

Rows carry words and one BIO tag per word; the tokenizer splits words into word pieces.
Only the first piece of each word is labelled (the rest, and special tokens, get -100,
which cross-entropy ignores), and a word's prediction is read from its first piece: one
decision per word, as the gold standard has. Words cut off by `max_length` are predicted
"O", so truncation costs recall in the metric instead of silently shrinking the test.

KD: when every training row carries `teacher_logits` as one vector per word
([n_words, n_tags], e.g. from a teacher tagger), the loss adds α·T²·KL on the same
first-piece positions through `losses.distill_loss`. Without them α is ignored.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from raydistill.training import task_metrics
from raydistill.training.losses import distill_loss
from raydistill.training.student_kinds import StudentKind, length_sorted_batches


def first_pieces(enc, n_rows: int) -> list[list[tuple[int, int]]]:
    """Per row, (position, word index) of every word's first word piece."""
    out = []
    for b in range(n_rows):
        seen, firsts = set(), []
        for pos, w in enumerate(enc.word_ids(b)):
            if w is not None and w not in seen:
                seen.add(w)
                firsts.append((pos, w))
        out.append(firsts)
    return out


class TokenClassificationKind(StudentKind):
    name = "token_classification"
    auto_class = "AutoModelForTokenClassification"
    eval_batch: ClassVar[int] = 64

    def head_kwargs(self) -> dict[str, Any]:
        names = list(self.settings.label_names)
        return dict(
            num_labels=len(names),
            id2label=dict(enumerate(names)),
            label2id={n: i for i, n in enumerate(names)},
            ignore_mismatched_sizes=True,  # the backbone may be a tagger with other tags
        )

    def tokenizer(self, source: str):
        tok = super().tokenizer(source)
        try:
            tok(["a"], is_split_into_words=True).word_ids(0)
        except (ValueError, AttributeError) as e:
            raise ValueError(
                f"{source}: token classification needs a fast tokenizer (word_ids): {e}"
            ) from e
        return tok

    def _tokenize(self, tokenizer, rows: list[dict], max_length: int):
        enc = tokenizer(
            [list(r["tokens"]) for r in rows],
            is_split_into_words=True,
            truncation=True,
            max_length=max_length,
            padding=True,
            return_tensors="pt",
        )
        return enc, first_pieces(enc, len(rows))

    def encode(self, tokenizer, rows: list[dict], max_length: int) -> dict[str, torch.Tensor]:
        enc, firsts = self._tokenize(tokenizer, rows, max_length)
        tag_id = {t: i for i, t in enumerate(self.settings.label_names)}
        labels = torch.full(enc["input_ids"].shape, -100, dtype=torch.long)
        for b, r in enumerate(rows):
            if len(r["tags"]) != len(r["tokens"]):
                raise ValueError(
                    f"row {r.get('id', b)}: {len(r['tokens'])} tokens, {len(r['tags'])} tags"
                )
            for pos, w in firsts[b]:
                tag = r["tags"][w]
                if tag not in tag_id:
                    raise ValueError(
                        f"row {r.get('id', b)}: tag {tag!r} is not in {sorted(tag_id)}"
                    )
                labels[b, pos] = tag_id[tag]
        out = {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "labels": labels,
        }
        teacher = self._teacher_logits(rows, firsts, labels.shape)
        if teacher is not None:
            out["teacher_logits"] = teacher
        return out

    def _teacher_logits(self, rows, firsts, shape) -> torch.Tensor | None:
        if self.alpha <= 0:
            return None
        has = [r.get("teacher_logits") is not None for r in rows]
        if not any(has):
            return None  # nothing to distil from: plain CE
        if not all(has):
            raise ValueError(
                f"{has.count(False)} of {len(rows)} rows lack teacher_logits: annotate every "
                "row, or none, with per-word teacher logits"
            )
        n_tags = len(self.settings.label_names)
        out = torch.zeros((*shape, n_tags), dtype=torch.float32)
        for b, r in enumerate(rows):
            t = np.asarray(r["teacher_logits"], dtype=np.float32)
            if t.shape != (len(r["tokens"]), n_tags):
                raise ValueError(
                    f"row {r.get('id', b)}: teacher_logits has shape {t.shape}; token "
                    f"classification needs one vector per word, ({len(r['tokens'])}, {n_tags})"
                )
            for pos, w in firsts[b]:
                out[b, pos] = torch.from_numpy(t[w])
        return out

    def loss(self, model, batch: dict[str, torch.Tensor]):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        sel = batch["labels"] != -100
        teacher = batch.get("teacher_logits")
        return distill_loss(
            logits[sel],
            batch["labels"][sel],
            teacher[sel] if teacher is not None else None,
            alpha=self.alpha,
            temperature=self.temperature,
        )

    @torch.no_grad()
    def predict(self, model, tokenizer, rows: list[dict]) -> list[list[str]]:
        """BIO tags per word, one list per row (input order)."""
        was_training = model.training
        model.eval()
        dev = next(model.parameters()).device
        names = self.settings.label_names
        out: list[list[str]] = [["O"] * len(r["tokens"]) for r in rows]
        for idx in length_sorted_batches([len(r["tokens"]) for r in rows], self.eval_batch):
            chunk = [rows[i] for i in idx]
            enc, firsts = self._tokenize(tokenizer, chunk, self.settings.max_length)
            logits = model(
                input_ids=enc["input_ids"].to(dev), attention_mask=enc["attention_mask"].to(dev)
            ).logits
            best = logits.argmax(-1).cpu()
            for b, i in enumerate(idx):
                for pos, w in firsts[b]:
                    out[i][w] = names[int(best[b, pos])]
        if was_training:
            model.train()
        return out

    def metrics(self, preds: list[list[str]], rows: list[dict]) -> dict[str, float]:
        m = task_metrics.entity_scores([r["tags"] for r in rows], preds)
        return {**m, "score": m["entity_f1"]}

    def quality(self, preds: list[list[str]], rows: list[dict]) -> list[float]:
        return [
            task_metrics.sentence_entity_f1(r["tags"], p) for p, r in zip(preds, rows, strict=True)
        ]
