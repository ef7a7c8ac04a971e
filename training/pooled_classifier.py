"""A sequence classifier that mean-pools any encoder: the default student and teacher head.

Why not `BertForSequenceClassification`: it classifies the [CLS] vector through a pooler,
and sentence encoders such as all-MiniLM-L6-v2 were trained to be *mean*-pooled, so their
[CLS] vector carries little. Measured on IMDB-CAD at k = 8 (5 seeds, 2-layer students):
CLS students learn almost nothing from human counterfactuals (0.561 → 0.570), mean-pooled
ones gain +8 to +10 points. Mean pooling also works for decoder-only backbones.

This file is self-contained (torch + transformers only) because `save_pretrained` copies
it into every checkpoint: `AutoModelForSequenceClassification.from_pretrained(path,
trust_remote_code=True)` loads a student with plain transformers, no raydistill needed.
Inside raydistill the classes are registered with the Auto classes, so no flag is needed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput


class PooledClassifierConfig(PretrainedConfig):
    """The wrapped encoder's own config (as a dict) plus the pooling and label head."""

    model_type = "raydistill_pooled"

    def __init__(self, encoder: dict[str, Any] | None = None, pooling: str = "mean", **kwargs):
        super().__init__(**kwargs)
        self.encoder = dict(encoder or {})
        if pooling not in ("mean", "first"):
            raise ValueError(f"pooling must be 'mean' or 'first', got {pooling!r}")
        self.pooling = pooling
        # Shapes other code reads from any classifier config (widths, depth for LWD).
        for key in (
            "hidden_size",
            "num_hidden_layers",
            "max_position_embeddings",
            "pad_token_id",
            "eos_token_id",
        ):
            if key in self.encoder and getattr(self, key, None) is None:
                setattr(self, key, self.encoder[key])

    def encoder_config(self) -> PretrainedConfig:
        enc = dict(self.encoder)
        return AutoConfig.for_model(enc.pop("model_type"), **enc)


def pool(hidden: torch.Tensor, mask: torch.Tensor | None, how: str) -> torch.Tensor:
    """[B, T, H] → [B, H]: mean over real tokens, or the first token."""
    if how == "first":
        return hidden[:, 0]
    if mask is None:
        return hidden.mean(1)
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


class PooledForSequenceClassification(PreTrainedModel):
    config_class = PooledClassifierConfig
    base_model_prefix = "encoder"

    def __init__(self, config: PooledClassifierConfig, encoder: nn.Module | None = None):
        super().__init__(config)
        self.encoder = (
            encoder if encoder is not None else AutoModel.from_config(config.encoder_config())
        )
        pooler = getattr(self.encoder, "pooler", None)
        if isinstance(pooler, nn.Module):
            # BERT-style encoders carry a [CLS] pooler this head never reads: keep its
            # weights (the checkpoint stays complete) but train nothing that gets no grad.
            pooler.requires_grad_(False)
        width = int(config.encoder["hidden_size"])
        self.dropout = nn.Dropout(float(config.encoder.get("hidden_dropout_prob", 0.1) or 0.0))
        self.classifier = nn.Linear(width, config.num_labels)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # Only the head is ours; the encoder's weights come from its checkpoint.
        if module is getattr(self, "classifier", None):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)

    def get_input_embeddings(self) -> nn.Module:
        return self.encoder.get_input_embeddings()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput:
        kwargs.pop("return_dict", None)
        out = self.encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_hidden_states=output_hidden_states,
            **kwargs,
        )
        pooled = pool(out.last_hidden_state, attention_mask, self.config.pooling)
        logits = self.classifier(self.dropout(pooled))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=out.hidden_states if output_hidden_states else None,
        )


def register() -> None:
    """Make the Auto classes know the model in this process (idempotent)."""
    from transformers import AutoModelForSequenceClassification

    try:
        AutoConfig.register(PooledClassifierConfig.model_type, PooledClassifierConfig)
        AutoModelForSequenceClassification.register(
            PooledClassifierConfig, PooledForSequenceClassification
        )
    except ValueError:
        pass  # already registered
    # Saved checkpoints name this file in `auto_map`, so plain transformers can load them.
    PooledClassifierConfig.register_for_auto_class()
    PooledForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
