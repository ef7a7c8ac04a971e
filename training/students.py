"""Students: any HF encoder or decoder, truncated to N layers, plus the LWD projection.

The classifier is kept intact inside `DistillStudent` so the checkpoint is a plain
`save_pretrained` folder that `AutoModelForSequenceClassification` loads; the projection
is training-only and saved beside it, not inside it. `pooling="mean"` (the default) wraps
the backbone in `PooledForSequenceClassification` (mean over tokens); `"native"` keeps the
backbone's own sequence-classification head ([CLS] pooler for BERT, last token for Llama).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from raydistill.config import POOLINGS
from raydistill.training.classifier import mean_pool
from raydistill.training.losses import LayerProjection


def default_layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """Student layer i (1-based hidden_states index) → teacher layer, spread evenly."""
    return [round(i * teacher_layers / student_layers) for i in range(1, student_layers + 1)]


def load_classifier(
    backbone_dir: str,
    label_names: list[str],
    num_layers: int | None = None,
    pooling: str = "mean",
):
    """A fresh classifier on a pretrained backbone (its first `num_layers` layers)."""
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    cfg = AutoConfig.from_pretrained(backbone_dir)
    labels = dict(
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={n: i for i, n in enumerate(label_names)},
    )
    depth = {}
    if num_layers is not None:
        total = getattr(cfg, "num_hidden_layers", None)
        if total is not None and num_layers > total:
            raise ValueError(f"student.num_layers={num_layers} but {backbone_dir} has {total}")
        depth["num_hidden_layers"] = num_layers
    if pooling == "mean":
        from raydistill.training.pooled_classifier import (
            PooledClassifierConfig,
            PooledForSequenceClassification,
            register,
        )

        register()
        encoder = AutoModel.from_pretrained(backbone_dir, **depth)
        if encoder.config.pad_token_id is None:
            encoder.config.pad_token_id = encoder.config.eos_token_id
        pcfg = PooledClassifierConfig(encoder=encoder.config.to_dict(), pooling="mean", **labels)
        return PooledForSequenceClassification(pcfg, encoder=encoder)
    model = AutoModelForSequenceClassification.from_pretrained(
        backbone_dir, ignore_mismatched_sizes=True, **labels, **depth
    )
    if model.config.pad_token_id is None:
        # Decoder-only backbones need a pad id to find the last real token.
        model.config.pad_token_id = model.config.eos_token_id
    return model


class DistillStudent(nn.Module):
    def __init__(
        self,
        backbone_dir: str,
        label_names: list[str],
        num_layers: int | None = None,
        layer_map: list[int] | None = None,
        teacher_width: int | None = None,
        teacher_layers: int | None = None,
        freeze_embeddings: bool = False,
        pooling: str = "mean",
    ):
        super().__init__()
        self.model = load_classifier(backbone_dir, label_names, num_layers, pooling)
        if freeze_embeddings:
            emb = (
                getattr(self.model.base_model, "embeddings", None)
                or self.model.get_input_embeddings()
            )
            emb.requires_grad_(False)
        n_layers = int(self.model.config.num_hidden_layers)
        width = int(self.model.config.hidden_size)
        self.layer_map = layer_map
        if layer_map is None and teacher_layers:
            self.layer_map = default_layer_map(n_layers, teacher_layers)
        self.projection = None
        if self.layer_map is not None and teacher_width:
            if len(self.layer_map) != n_layers:
                raise ValueError(
                    f"lwd_layer_map has {len(self.layer_map)} entries; the student has {n_layers} layers"
                )
            self.projection = LayerProjection(width, teacher_width, n_layers)

    def forward(self, input_ids, attention_mask, with_hidden: bool = False):
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=with_hidden
        )
        if not with_hidden or self.projection is None:
            return out.logits, None
        # hidden_states[0] is the embedding output; student layers are 1..N.
        pooled = torch.stack([mean_pool(h, attention_mask) for h in out.hidden_states[1:]], dim=1)
        return out.logits, self.projection(pooled)

    def save(self, out_dir: str | Path, tokenizer=None) -> None:
        out_dir = Path(out_dir)
        self.model.save_pretrained(out_dir, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(out_dir)
        if self.projection is not None and not self.projection.identity:
            from safetensors.torch import save_file

            save_file(
                {k: v.contiguous() for k, v in self.projection.state_dict().items()},
                str(out_dir / "lwd_projection.safetensors"),
            )
