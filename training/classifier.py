"""Inference with an HF sequence classifier: logits and pooled hidden states.

The teacher classifier is used for three jobs (soft labels, flip verification, fidelity),
always through this class, so its forward runs in exactly one place and its outputs can be
cached with the rows instead of recomputed in every training step.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

# One classifier input: a text, or a sentence pair (text, text_pair) such as an NLI
# premise and hypothesis. Pairs are tokenized as the tokenizer's pair template
# ([CLS] a [SEP] b [SEP] for BERT).
Input = str | tuple[str, str]


def row_input(row: dict[str, Any]) -> Input:
    """A data row's classifier input: (text, text_pair) when the row has a pair."""
    pair = row.get("text_pair")
    return (str(row["text"]), str(pair)) if pair is not None else str(row["text"])


def tokenizer_args(items: Sequence[Input]) -> tuple[list[str]] | tuple[list[str], list[str]]:
    """Positional arguments of `tokenizer(...)` for a batch of inputs of one shape.

    Texts → ([texts],); pairs → ([firsts], [seconds]). A batch mixing the two is an error
    here (the caller groups them: `Classifier.logits` does).
    """
    pairs = [isinstance(x, tuple | list) for x in items]
    if not any(pairs):
        return ([str(x) for x in items],)
    if not all(pairs):
        raise ValueError("a tokenizer batch mixes single texts and (text, text_pair) pairs")
    bad = [i for i, x in enumerate(items) if len(x) != 2]
    if bad:
        raise ValueError(f"input {bad[0]} is not a (text, text_pair) pair: {items[bad[0]]!r}")
    return [str(a) for a, _ in items], [str(b) for _, b in items]


def encode(tokenizer, items: Sequence[Input], **kwargs: Any):
    """Tokenize texts or pairs. Segment ids are dropped: the students' forward takes ids
    and a mask only, so the teacher is trained without them too, and inference (teacher
    verification, serving) must not feed what training never saw. The pair's sides are
    told apart by the separator token."""
    enc = tokenizer(*tokenizer_args(items), **kwargs)
    enc.pop("token_type_ids", None)
    return enc


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens: [B, T, H] × [B, T] → [B, H]."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


class Classifier:
    """One HF sequence-classifier folder; the serving `StudentClassifier` wraps this too.

    `device` None: what Ray assigned this process (`training.devices.assigned_device`):
    cuda in a Ray Data actor or Serve replica given a GPU, cpu in one given none even on a
    GPU node (the GPU belongs to whoever Ray gave it to), cpu in the Ray driver.
    """

    def __init__(
        self,
        model_dir: str | Path,
        max_length: int = 64,
        batch_size: int = 64,
        device: str | None = None,
    ):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from raydistill.training.devices import resolve_device, use_assigned_cpu_threads
        from raydistill.training.pooled_classifier import register

        register()  # mean-pooled checkpoints load without trust_remote_code
        self.model_dir = str(model_dir)
        self.device = resolve_device(device)
        if self.device == "cpu":
            # A Ray Data actor's CPU share (teacher.num_cpus) is its thread count.
            use_assigned_cpu_threads()
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        # safetensors only: a pickled checkpoint (pytorch_model.bin) is refused, not unpickled.
        self.model = AutoModelForSequenceClassification.from_pretrained(
            self.model_dir, use_safetensors=True
        )
        if self.tokenizer.pad_token is None and self.tokenizer.eos_token is not None:
            # Decoder-style classifiers (GPT/Llama heads) ship without a pad token.
            self.tokenizer.pad_token = self.tokenizer.eos_token
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.to(self.device).eval()
        self.max_length = max_length
        self.batch_size = batch_size
        self.forward_calls = 0  # counted so benchmarks can show what caching saves

    @property
    def num_labels(self) -> int:
        return int(self.model.config.num_labels)

    @torch.no_grad()
    def _forward(self, texts: list[Input], hidden: bool):
        enc = encode(
            self.tokenizer,
            texts,
            truncation=True,
            max_length=self.max_length,
            padding=True,
            return_tensors="pt",
        ).to(self.device)
        self.forward_calls += len(texts)
        out = self.model(**enc, output_hidden_states=hidden)
        return out, enc["attention_mask"]

    def logits(self, texts: Sequence[Input]) -> np.ndarray:
        """Logits [N, C] of texts and/or (text, text_pair) pairs, in input order."""
        return _by_shape(texts, self._logits)

    def _logits(self, texts: list[Input]) -> np.ndarray:
        chunks = []
        for i in range(0, len(texts), self.batch_size):
            out, _ = self._forward(texts[i : i + self.batch_size], hidden=False)
            chunks.append(out.logits.float().cpu().numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, self.num_labels), np.float32)

    def logits_and_hidden(self, texts: Sequence[Input]) -> tuple[np.ndarray, np.ndarray]:
        """Logits [N, C] and mean-pooled hidden states of every layer [N, L+1, H]."""
        both = _by_shape(texts, lambda xs: self._logits_and_hidden(xs), parts=2)
        return both[0], both[1]

    def _logits_and_hidden(self, texts: list[Input]) -> tuple[np.ndarray, np.ndarray]:
        logits, hidden = [], []
        for i in range(0, len(texts), self.batch_size):
            out, mask = self._forward(texts[i : i + self.batch_size], hidden=True)
            logits.append(out.logits.float().cpu().numpy())
            pooled = torch.stack([mean_pool(h, mask) for h in out.hidden_states], dim=1)
            hidden.append(pooled.float().cpu().numpy())
        return np.concatenate(logits), np.concatenate(hidden)


def _by_shape(items: Sequence[Input], fn, parts: int = 1):
    """`fn` over the single texts and over the pairs separately, results in input order.

    One request batch of the serving app may mix both shapes; a tokenizer call cannot.
    """
    items = list(items)
    pair = [isinstance(x, tuple | list) for x in items]
    if all(pair) or not any(pair):
        return fn([tuple(x) if p else x for x, p in zip(items, pair, strict=True)])
    idx = [[i for i, p in enumerate(pair) if not p], [i for i, p in enumerate(pair) if p]]
    outs = [fn([tuple(items[i]) if p else items[i] for i in group]) for p, group in enumerate(idx)]
    if parts == 1:
        outs = [(o,) for o in outs]
    merged = []
    for k in range(max(parts, 1)):
        first = outs[0][k]
        res = np.zeros((len(items), *first.shape[1:]), dtype=first.dtype)
        for group, o in zip(idx, outs, strict=True):
            res[group] = o[k]
        merged.append(res)
    return merged[0] if parts == 1 else tuple(merged)


def softmax(x: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = x / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
