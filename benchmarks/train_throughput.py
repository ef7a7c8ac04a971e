"""Training throughput: a plain PyTorch loop vs the Ray Train + DeepSpeed path, same work.

Split from `throughput.py` (which drives the whole benchmark) because it is its own
concept: one `Workload`, run identically by both paths so their samples/s compare.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any


def training_rows(n: int, teacher_dir: str, max_length: int, with_hidden: bool):
    """SST-2 rows with cached teacher logits (and hidden states for LWD)."""
    import random

    from raydistill.config import DataConfig
    from raydistill.pipelines.datasets import load_split
    from raydistill.pipelines.soft_labels import TeacherAnnotator
    from raydistill.pipelines.tasks import get_task

    spec = get_task("sst2")
    rows = random.Random(1).sample(load_split(DataConfig(task="sst2"), "train"), n)
    ann = TeacherAnnotator(teacher_dir, max_length=max_length, with_hidden=with_hidden)
    batch = ann({"text": [r["text"] for r in rows]})
    out = []
    for i, r in enumerate(rows):
        row = {"text": r["text"], "label": int(r["label"])}
        row["teacher_logits"] = list(map(float, batch["teacher_logits"][i]))
        if with_hidden:
            row["teacher_hidden"] = batch["teacher_hidden"][i]
        out.append(row)
    return spec, out


@dataclass
class Workload:
    """One training shape, run identically by the plain loop and the Ray Train path."""

    name: str
    backbone: str
    label_names: list[str]
    rows: list[dict[str, Any]]
    dev_rows: list[dict[str, Any]]
    num_layers: int | None  # None: all layers (the teacher's shape)
    freeze_embeddings: bool
    epochs: int
    batch_size: int
    max_length: int = 64
    lr: float = 3e-4

    @property
    def samples(self) -> int:
        return self.epochs * (len(self.rows) // self.batch_size) * self.batch_size


def plain_torch_training(w: Workload, *, threads: int, teacher_dir: str | None = None):
    """The same model, loss and batches as `training.loop.run_job`, in one process.

    With `teacher_dir` the teacher's logits are recomputed inside every step (what a
    training loop without the cached annotation pass does) instead of read from the rows.
    """
    import numpy as np
    import torch
    from transformers import AutoTokenizer

    from raydistill.training.batching import Batcher
    from raydistill.training.classifier import Classifier
    from raydistill.training.evaluation import evaluate
    from raydistill.training.losses import distill_loss
    from raydistill.training.students import DistillStudent

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    teacher = Classifier(teacher_dir, max_length=w.max_length) if teacher_dir else None
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(w.backbone)
    student = DistillStudent(
        w.backbone, w.label_names, num_layers=w.num_layers, freeze_embeddings=w.freeze_embeddings
    )
    data = Batcher(tok, w.rows, w.max_length)
    texts = [r["text"] for r in w.rows]
    params = [p for p in student.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=w.lr, weight_decay=0.01)
    rng = np.random.default_rng(0)
    steps_per_epoch = max(1, len(data) // w.batch_size)
    teacher_forwards = 0
    step_s = 0.0
    student.train()
    for _ in range(w.epochs):
        perm = torch.from_numpy(rng.permutation(len(data)))
        for i in range(steps_per_epoch):
            ts = time.perf_counter()
            idx = perm[i * w.batch_size : (i + 1) * w.batch_size]
            if teacher is not None:
                t_logits = torch.from_numpy(teacher.logits([texts[j] for j in idx.tolist()]))
                teacher_forwards += len(idx)
            else:
                t_logits = data.t_logits[idx]
            logits, _ = student(*data.batch(idx))
            loss, _ = distill_loss(
                logits, data.labels[idx], t_logits.float(), alpha=1.0, temperature=2.0
            )
            optim.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)  # the Ray path clips too (equal work)
            optim.step()
            step_s += time.perf_counter() - ts
    m = evaluate(student.model, tok, w.dev_rows, None, w.max_length)
    dt = time.perf_counter() - t0
    return {
        "workload": w.name,
        "seconds": round(dt, 2),
        "samples": w.samples,
        "samples_per_s": w.samples / dt,
        # Steady state: the training steps alone, without model build and evaluation.
        "step_seconds": round(step_s, 3),
        "step_samples_per_s": w.samples / step_s,
        "dev_accuracy": m["accuracy"],
        "teacher_forwards_per_example": teacher_forwards / len(w.rows) if teacher else 0.0,
    }


def ray_training(
    w: Workload, *, workers: int, storage: str, threads_per_worker: int, zero_stage: int = 2
):
    """The raydistill path: one TrainJob through `fit_jobs` (Ray Train + DeepSpeed)."""
    from raydistill.training.fit import fit_jobs
    from raydistill.training.loop import TrainJob

    job = TrainJob(
        name=f"bench-{w.name}-w{workers}",
        backbone=w.backbone,
        label_names=w.label_names,
        train_rows=w.rows,
        dev_rows=w.dev_rows,
        test_rows=w.dev_rows,
        num_layers=w.num_layers,
        freeze_embeddings=w.freeze_embeddings,
        alpha=1.0,
        temperature=2.0,
        lr=w.lr,
        epochs=w.epochs,
        # Per-rank micro-batch: the global batch (and so the work per epoch) stays equal.
        batch_size=max(1, w.batch_size // workers),
        max_length=w.max_length,
        eval_every=0,
        zero_stage=zero_stage,
    )
    t0 = time.perf_counter()
    [(metrics, _ckpt)] = fit_jobs(
        [job],
        num_workers=workers,
        storage_path=storage,
        name=f"throughput-{w.name}-w{workers}-z{zero_stage}-{int(time.time())}",
        threads_per_worker=threads_per_worker,
    )
    wall = time.perf_counter() - t0
    # metrics["train_s"] is measured inside the worker over the same span as the plain
    # loop (tokenizer + model build, DeepSpeed engine, steps, final evaluation);
    # `wall` adds Ray Train's worker-group start and checkpoint upload.
    return {
        "workload": w.name,
        "workers": workers,
        "zero_stage": zero_stage,
        "seconds_in_worker": metrics["train_s"],
        "seconds_wall": round(wall, 2),
        "samples": w.samples,
        "samples_per_s": w.samples / metrics["train_s"],
        "step_seconds": metrics["step_s"],
        "step_samples_per_s": w.samples / metrics["step_s"],
        "samples_per_s_wall": w.samples / wall,
        "dev_accuracy": metrics["dev_accuracy"],
    }
