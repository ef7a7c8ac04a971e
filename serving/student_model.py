"""A distilled sequence classifier as a plain Python object: load a folder, label texts.

No Ray here, so the logic is unit-testable and reusable in batch jobs; the Serve app
(`student_app`) wraps it at the edge. The forward pass (tokenize, pad-token handling, no
grad) is `raydistill.training.classifier.Classifier`'s, the one the teacher runs during
training, so serving and training cannot drift apart; this class only adds label names
and probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

KIND = "sequence_classification"


class StudentClassifier:
    """An HF sequence classifier folder, ready to label texts.

    `classify(texts)` returns, per text (or (text, text_pair) sentence pair, tokenized
    as the tokenizer's pair), `{"label", "label_id", "probs": {label: p}}` with
    label names from `config.id2label`. Texts are truncated to `max_length` tokens and
    processed `batch_size` at a time in eval mode under `torch.no_grad()`; all texts of
    one call are tokenized together, so a served batch costs one tokenizer call per chunk.
    """

    kind = KIND

    def __init__(
        self,
        model_dir: str,
        max_length: int = 128,
        *,
        batch_size: int = 32,
        device: str | None = None,
    ):
        from raydistill.training.classifier import Classifier

        # device None: the replica's Ray assignment (cuda with num_gpus_per_replica > 0).
        clf = Classifier(model_dir, max_length=max_length, batch_size=batch_size, device=device)
        cfg = clf.model.config
        limit = getattr(cfg, "max_position_embeddings", None) or max_length
        clf.max_length = int(min(max_length, limit))
        self._clf = clf
        self.labels = _label_names(cfg)

    # The wrapped classifier's parts, under the names callers have used.
    model_dir = property(lambda self: self._clf.model_dir)
    tokenizer = property(lambda self: self._clf.tokenizer)
    model = property(lambda self: self._clf.model)
    device = property(lambda self: self._clf.device)
    max_length = property(lambda self: self._clf.max_length)
    batch_size = property(lambda self: self._clf.batch_size)

    def classify(self, texts: Sequence[str | tuple[str, str]]) -> list[dict[str, Any]]:
        """Label each text, or each (text, text_pair) sentence pair (the two may mix)."""
        from raydistill.training.classifier import softmax

        if isinstance(texts, str):
            raise TypeError("classify() takes a list of strings, not a single string")
        texts = [tuple(t) if isinstance(t, list) else t for t in texts]
        if not texts:
            return []
        probs = softmax(self._clf.logits(texts)).tolist()
        labels = self.labels
        out: list[dict[str, Any]] = []
        for row in probs:
            best = max(range(len(row)), key=row.__getitem__)
            out.append(
                {
                    "label": labels[best],
                    "label_id": best,
                    "probs": dict(zip(labels, row, strict=True)),
                }
            )
        return out

    # The kind-independent entry point the Serve app batches through.
    run = classify

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "labels": list(self.labels)}


def _label_names(cfg) -> list[str]:
    id2label = {int(k): str(v) for k, v in (cfg.id2label or {}).items()}
    return [id2label.get(i, f"LABEL_{i}") for i in range(cfg.num_labels)]


def read_labels(model_dir: str) -> list[str]:
    """Label names of a checkpoint from its config alone (no weights loaded)."""
    from transformers import AutoConfig

    from raydistill.training.pooled_classifier import register

    register()
    return _label_names(AutoConfig.from_pretrained(model_dir))
