"""A distilled student as a plain Python object: load an HF classifier folder, label texts.

No Ray here, so the logic is unit-testable and reusable in batch jobs; the Serve app
(`student_app`) wraps it at the edge.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class StudentClassifier:
    """An HF sequence classifier folder, ready to label texts.

    `classify(texts)` returns, per text, `{"label", "label_id", "probs": {label: p}}` with
    label names from `config.id2label`. Texts are truncated to `max_length` tokens and
    processed `batch_size` at a time in eval mode under `torch.no_grad()`.
    """

    def __init__(
        self,
        model_dir: str,
        max_length: int = 128,
        *,
        batch_size: int = 32,
        device: str | None = None,
    ):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from raydistill.training.pooled_classifier import register

        register()  # mean-pooled students load without trust_remote_code
        self.model_dir = str(model_dir)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.batch_size = int(batch_size)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.model = AutoModelForSequenceClassification.from_pretrained(self.model_dir)
        if self.tokenizer.pad_token is None and self.tokenizer.eos_token is not None:
            # Decoder-style classifiers (GPT/Llama heads) ship without a pad token.
            self.tokenizer.pad_token = self.tokenizer.eos_token
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.to(self.device).eval()
        cfg = self.model.config
        limit = getattr(cfg, "max_position_embeddings", None) or max_length
        self.max_length = int(min(max_length, limit))
        id2label = {int(k): str(v) for k, v in (cfg.id2label or {}).items()}
        self.labels = [id2label.get(i, f"LABEL_{i}") for i in range(cfg.num_labels)]

    def classify(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        import torch

        if isinstance(texts, str):
            raise TypeError("classify() takes a list of strings, not a single string")
        texts = list(texts)
        out: list[dict[str, Any]] = []
        with torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                chunk = texts[start : start + self.batch_size]
                enc = self.tokenizer(
                    chunk,
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                probs = self.model(**enc).logits.float().softmax(dim=-1).cpu()
                for row in probs.tolist():
                    best = max(range(len(row)), key=row.__getitem__)
                    out.append(
                        {
                            "label": self.labels[best],
                            "label_id": best,
                            "probs": {
                                lab: float(p) for lab, p in zip(self.labels, row, strict=True)
                            },
                        }
                    )
        return out


def read_labels(model_dir: str) -> list[str]:
    """Label names of a checkpoint from its config alone (no weights loaded)."""
    from transformers import AutoConfig

    from raydistill.training.pooled_classifier import register

    register()
    cfg = AutoConfig.from_pretrained(model_dir)
    id2label = {int(k): str(v) for k, v in (cfg.id2label or {}).items()}
    return [id2label.get(i, f"LABEL_{i}") for i in range(cfg.num_labels)]
