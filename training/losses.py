"""Distillation losses: L = CE + α·T²·KL(p_teacher^T ‖ p_student^T) + β·L_LWD.

T² keeps the KD gradient scale independent of the temperature (Hinton et al.), so α
means the same thing whatever T a sweep picks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def kd_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T² · KL(softmax(t/T) ‖ softmax(s/T)), averaged over the batch."""
    t = temperature
    log_p_s = F.log_softmax(student_logits / t, dim=-1)
    log_p_t = F.log_softmax(teacher_logits / t, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1).mean()
    return kl * t * t


class LayerProjection(nn.Module):
    """Maps student hidden states to the teacher's width for LWD (identity if equal)."""

    def __init__(self, student_width: int, teacher_width: int, num_layers: int):
        super().__init__()
        self.identity = student_width == teacher_width
        self.proj = (
            nn.ModuleList()
            if self.identity
            else nn.ModuleList(nn.Linear(student_width, teacher_width) for _ in range(num_layers))
        )

    def forward(self, student_hidden: torch.Tensor) -> torch.Tensor:
        """[B, L, H_s] → [B, L, H_t]."""
        if self.identity:
            return student_hidden
        return torch.stack([p(student_hidden[:, i]) for i, p in enumerate(self.proj)], dim=1)


def lwd_mse(projected_student: torch.Tensor, teacher_hidden: torch.Tensor) -> torch.Tensor:
    """Mean squared error between mapped layers' pooled states, [B, L, H] each."""
    return F.mse_loss(projected_student, teacher_hidden)


def distill_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None = None,
    *,
    alpha: float = 0.0,
    temperature: float = 1.0,
    beta: float = 0.0,
    projected_student_hidden: torch.Tensor | None = None,
    teacher_hidden: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    ce = F.cross_entropy(student_logits, labels)
    total = ce
    parts = {"ce": float(ce.detach())}
    if alpha > 0 and teacher_logits is not None:
        kd = kd_kl(student_logits, teacher_logits, temperature)
        total = total + alpha * kd
        parts["kd"] = float(kd.detach())
    if beta > 0 and teacher_hidden is not None and projected_student_hidden is not None:
        lwd = lwd_mse(projected_student_hidden, teacher_hidden)
        total = total + beta * lwd
        parts["lwd"] = float(lwd.detach())
    parts["loss"] = float(total.detach())
    return total, parts
