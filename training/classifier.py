"""Inference with an HF sequence classifier: logits and pooled hidden states.

The teacher classifier is used for three jobs (soft labels, flip verification, fidelity),
always through this class, so its forward runs in exactly one place and its outputs can be
cached with the rows instead of recomputed in every training step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


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

        from raydistill.training.devices import resolve_device
        from raydistill.training.pooled_classifier import register

        register()  # mean-pooled checkpoints load without trust_remote_code
        self.model_dir = str(model_dir)
        self.device = resolve_device(device)
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
    def _forward(self, texts: list[str], hidden: bool):
        enc = self.tokenizer(
            texts,
            truncation=True,
            max_length=self.max_length,
            padding=True,
            return_tensors="pt",
        ).to(self.device)
        self.forward_calls += len(texts)
        out = self.model(**enc, output_hidden_states=hidden)
        return out, enc["attention_mask"]

    def logits(self, texts: list[str]) -> np.ndarray:
        chunks = []
        for i in range(0, len(texts), self.batch_size):
            out, _ = self._forward(texts[i : i + self.batch_size], hidden=False)
            chunks.append(out.logits.float().cpu().numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, self.num_labels), np.float32)

    def logits_and_hidden(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Logits [N, C] and mean-pooled hidden states of every layer [N, L+1, H]."""
        logits, hidden = [], []
        for i in range(0, len(texts), self.batch_size):
            out, mask = self._forward(texts[i : i + self.batch_size], hidden=True)
            logits.append(out.logits.float().cpu().numpy())
            pooled = torch.stack([mean_pool(h, mask) for h in out.hidden_states], dim=1)
            hidden.append(pooled.float().cpu().numpy())
        return np.concatenate(logits), np.concatenate(hidden)


def softmax(x: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = x / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
