"""The Ray Train + DeepSpeed distillation loop.

One `TorchTrainer` fit trains a *list* of jobs (a student per method × k × seed, or the
teacher): few-shot students train in seconds, so starting a worker group per student
would cost more than the training. Every job is data-parallel over all workers through
`deepspeed.initialize` (ZeRO stage from config; gloo on CPU, NCCL on GPU), selects its best
epoch on the dev split, evaluates on the test split and reports one HF checkpoint.

Sequence classifiers (`kind="sequence_classification"`, CE + KD + LWD) keep their own
tuned path; every other student kind (training/student_kinds.py) goes through one generic
path with the same sharding, DeepSpeed config, dev selection and report. Under ZeRO-3 the
trained parameters are partitioned across ranks, so evaluation and saving use an
unpartitioned copy refreshed from the gathered parameters (`_EvalCopy`).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from raydistill.telemetry import TRAIN_LOSS, set_gauge
from raydistill.training.batching import Batcher, epoch_order, equal_shard
from raydistill.training.devices import assigned_device, training_precision
from raydistill.training.evaluation import Evaluator, evaluate  # noqa: F401  (re-exported)
from raydistill.training.losses import distill_loss
from raydistill.training.students import DistillStudent

log = logging.getLogger(__name__)


@dataclass
class TrainJob:
    """What one student (or teacher) training needs; rows travel as Ray object refs."""

    name: str
    backbone: str
    label_names: list[str]
    train_rows: Any  # ObjectRef or list of rows {text, label, [teacher_logits, teacher_hidden]}
    dev_rows: Any  # rows {text, label, [teacher_pred]}
    test_rows: Any
    pairs: Any = (
        None  # [(orig_teacher_pred, orig_text, cf_teacher_pred, cf_text)] for boundary fidelity
    )
    num_layers: int | None = None
    pooling: str = "mean"
    freeze_embeddings: bool = False
    alpha: float = 0.0
    beta: float = 0.0
    temperature: float = 1.0
    lr: float = 5e-5
    head_lr: float | None = None
    weight_decay: float = 0.01
    epochs: float = 1.0
    batch_size: int | None = None
    max_length: int = 64
    eval_every: int = 0
    lwd_layer_map: list[int] | None = None
    teacher_width: int | None = None
    teacher_layers: int | None = None
    zero_stage: int = 2
    seed: int = 0
    # Partial checkpoints every this many epochs (0 = at job ends only), so a restarted
    # worker group resumes a long job instead of redoing it (training/train_state.py).
    checkpoint_every: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)
    # The student kind (training/student_kinds.py) and the task kind its rows have; for
    # generative kinds the mcqa target mode, the generation cap and the prompt template
    # (None = the kind's default for the task kind). `student_kinds.job_fields` fills them.
    kind: str = "sequence_classification"
    task_kind: str = "classification"
    mode: str = "answer"
    max_new_tokens: int = 32
    prompt_format: str | None = None
    # Generative mcqa students: keep the first N test generations in the metrics
    # (`StudentKind.keep_examples`; the explain method judges them). 0 = keep none.
    keep_examples: int = 0
    # auto | bf16-native | bf16 | fp32 (devices.training_precision says what each means per device).
    precision: str = "auto"
    # Batch rows of similar length together (`epoch_order`): on SST-2 random batches of 32
    # compute 3.0x the real tokens, length-grouped ones 1.05x. Classifier jobs only.
    group_by_length: bool = False


def _get(x: Any) -> Any:
    import ray

    return ray.get(x) if isinstance(x, ray.ObjectRef) else x


def deepspeed_config(
    job: TrainJob, micro_batch: int, world: int, on_gpu: bool = False, bf16: bool = False
) -> dict[str, Any]:
    """`bf16`: train in bfloat16 (GPUs with bf16 tensor cores, `devices.bf16_supported`);
    the losses are computed in fp32 either way."""
    zero: dict[str, Any] = {"stage": job.zero_stage}
    if job.zero_stage > 0 and not on_gpu:
        # Overlapping reduction with backward needs CUDA streams; on CPU (gloo) it and the
        # contiguous-gradient copies only add work: ZeRO-2 on one CPU worker ran at 78% of a
        # plain loop's samples/s with them, 87% without (2-layer MiniLM student, batch 16).
        zero.update(overlap_comm=False, contiguous_gradients=False)
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": 1,
        "train_batch_size": micro_batch * world,
        "zero_optimization": zero,
        # Our own AdamW (DeepSpeed's fused one needs CUDA); ZeRO wraps it.
        "zero_allow_untested_optimizer": True,
        "gradient_clipping": 1.0,
        "fp16": {"enabled": False},
        "bf16": {"enabled": bool(bf16 and on_gpu)},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def _ds_config(job: TrainJob, micro_batch: int, world: int) -> dict[str, Any]:
    """The DeepSpeed config for this worker's Ray assignment (bf16 on Ampere+ GPUs)."""
    device = assigned_device()
    on_gpu = device.startswith("cuda")
    bf16 = training_precision(job.precision, device) == "bf16"
    return deepspeed_config(job, micro_batch, world, on_gpu=on_gpu, bf16=bf16)


def _autocast(job: TrainJob):
    """(a factory of the context the training forward runs in, the precision's name):
    bf16 autocast where the job's precision resolves to it on this worker's device (CPU),
    else a no-op context."""
    prec = training_precision(job.precision, assigned_device())

    def cast():
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec == "bf16-autocast")

    return cast, prec


def _start_state(restored, t0: float):
    """(first step, best, history, step seconds, permutation, t0) for a fresh job, or for
    one resumed from a partial checkpoint (its clock moved back by the time already spent)."""
    if restored is None:
        return 1, (-1.0, 0, None), [], 0.0, None, t0
    r = restored.state
    best = (r.best_score, r.best_step, restored.best)
    return r.step + 1, best, r.history, r.step_s, restored.perm, t0 - r.elapsed_s


class _EvalCopy:
    """The module to evaluate and save: the trained one, or under ZeRO-3 a copy of it.

    ZeRO-3 leaves each rank only its shard of every parameter, so the trained module's
    `state_dict()` is empty and a forward pass needs all ranks in lockstep (sharded
    evaluation and generation would hang on uneven shards). The copy is made before
    `deepspeed.initialize` partitions the module, and `refresh()` — a collective every rank
    calls at the same step — loads the gathered parameters into it.
    """

    def __init__(self, module: torch.nn.Module, zero_stage: int):
        self.module = module
        self.copy = copy.deepcopy(module) if zero_stage == 3 else None

    def to(self, device) -> None:
        if self.copy is not None:
            self.copy.to(device)

    def refresh(self) -> torch.nn.Module:
        if self.copy is None:
            return self.module
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(self.module.parameters()), modifier_rank=None):
            self.copy.load_state_dict(self.module.state_dict())
        return self.copy


def _write_student_info(ckpt_dir: str, info: dict[str, Any]) -> None:
    with open(os.path.join(ckpt_dir, "raydistill_student.json"), "w") as f:
        json.dump(info, f, indent=1)


def param_groups(student: DistillStudent, lr: float, head_lr: float | None) -> list[dict]:
    """The pretrained body at `lr`, the new parts (label head, LWD projection) at `head_lr`.

    A randomly initialised head fitted from k examples needs a far larger step than the
    pretrained layers under it, which a few-shot job should barely move: one learning rate
    either leaves the head untrained or wrecks the body.
    """
    trainable = [(n, p) for n, p in student.named_parameters() if p.requires_grad]
    body_ids = {id(p) for p in student.model.base_model.parameters()}
    body = [p for _, p in trainable if id(p) in body_ids]
    head = [p for _, p in trainable if id(p) not in body_ids]
    if head_lr is None:
        return [{"params": body + head, "lr": lr}]
    return [g for g in ({"params": body, "lr": lr}, {"params": head, "lr": head_lr}) if g["params"]]


def _progress(
    name: str, rank: int, step: int, total_steps: int, loss: float, t0: float, on_step=None
) -> None:
    """Rank 0, every step: `on_step(job, step, total)` (the driver's progress line,
    throttled by the caller, raydistill.progress.WorkerProgress). Every tenth of a job:
    the loss gauge on the dashboard and, for long jobs (the teacher), a log line; few-shot
    students are too quick for one.

    A log record, not a print: Ray Train V2 patches `print` on its workers to go both to
    the root logger and (Ray having replaced sys.stdout) to stdout, so a printed line
    reached the worker's logs, and the driver's console, twice.
    """
    if rank != 0:
        return
    if on_step is not None:
        on_step(name, step, total_steps)
    if step % max(1, total_steps // 10):
        return
    set_gauge(TRAIN_LOSS, loss, job=name)
    if total_steps >= 50:
        el = time.perf_counter() - t0
        log.info(
            "[%s] step %d/%d loss %.4f %.0fs elapsed, ~%.0fs left",
            name,
            step,
            total_steps,
            loss,
            el,
            el / step * (total_steps - step),
        )


def _loop_state(step: int, best: tuple, history: list, step_s: float, t0: float):
    from raydistill.training.train_state import LoopState

    return LoopState(
        step=step,
        best_score=float(best[0]),
        best_step=int(best[1]),
        history=list(history),
        step_s=step_s,
        elapsed_s=time.perf_counter() - t0,
    )


def _resume_metrics(restored) -> dict[str, Any]:
    """What a resumed job reports: where it picked up, and whether exactly."""
    if restored is None:
        return {"resumed_from_step": 0}
    return {
        "resumed_from_step": restored.state.step,
        "optimizer_restored": restored.optimizer_restored,
    }


def run_job(
    job: TrainJob, rank: int, world: int, report, ckpts=None, on_step=None
) -> dict[str, Any]:
    """Train, select on dev, evaluate on test; `report(metrics, ckpt_dir)` once per job.

    `ckpts` (train_state.JobCheckpoints) writes partial checkpoints and resumes from one;
    `on_step(job name, step, total steps)` is called on rank 0 after every step.
    """
    from raydistill.training.deepspeed_ops import use_prefix_extensions_dir
    from raydistill.training.train_state import JobCheckpoints

    use_prefix_extensions_dir()  # before deepspeed builds its CPU comm op
    ckpts = ckpts or JobCheckpoints(0.0, rank, job.zero_stage)
    if job.kind != "sequence_classification":
        return _run_kind_job(job, rank, world, report, ckpts, on_step)
    import deepspeed
    from transformers import AutoTokenizer

    t0 = time.perf_counter()
    torch.manual_seed(job.seed)
    np.random.seed(job.seed)
    train_rows, dev_rows, test_rows = _get(job.train_rows), _get(job.dev_rows), _get(job.test_rows)
    pairs = _get(job.pairs) if job.pairs is not None else None
    tokenizer = AutoTokenizer.from_pretrained(job.backbone)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    lwd = job.beta > 0
    student = DistillStudent(
        job.backbone,
        job.label_names,
        num_layers=job.num_layers,
        layer_map=job.lwd_layer_map,
        teacher_width=job.teacher_width if lwd else None,
        teacher_layers=job.teacher_layers if lwd else None,
        freeze_embeddings=job.freeze_embeddings,
        pooling=job.pooling,
    )
    if lwd and student.projection is None:
        raise ValueError(f"job {job.name}: beta>0 needs teacher_width and teacher_layers")
    # Equal shards (drop the remainder) so every rank takes the same number of steps.
    rng = np.random.default_rng(job.seed)
    shard = equal_shard(train_rows, rng, rank, world)
    data = Batcher(tokenizer, shard, job.max_length)
    micro = len(data) if job.batch_size is None else min(job.batch_size, len(data))
    steps_per_epoch = max(1, len(data) // micro)
    optim = torch.optim.AdamW(
        param_groups(student, job.lr, job.head_lr), weight_decay=job.weight_decay
    )
    total_steps = max(1, int(round(job.epochs * steps_per_epoch)))
    restored = ckpts.start(steps_per_epoch, total_steps, student, optim, rng)
    evaluated = _EvalCopy(student, job.zero_stage)  # `student` itself below ZeRO-3
    engine, _, _, _ = deepspeed.initialize(
        model=student,
        optimizer=optim,
        config=_ds_config(job, micro, world),
    )
    evaluated.to(engine.device)
    autocast, precision = _autocast(job)
    live = student
    layer_idx = torch.tensor(student.layer_map) if (lwd and student.layer_map) else None
    eval_steps = job.eval_every * steps_per_epoch if job.eval_every else total_steps
    dev_eval = Evaluator(tokenizer, dev_rows, None, job.max_length, rank, world)
    last_parts: dict[str, float] = {}
    # step_s: time in training steps alone (benchmarks separate it from fixed costs)
    first, best, history, step_s, perm, t0 = _start_state(restored, t0)
    engine.train()
    for step in range(first, total_steps + 1):
        ts = time.perf_counter()
        i = (step - 1) % steps_per_epoch
        if i == 0 and job.batch_size is not None:
            perm = epoch_order(rng, data.lengths, micro, job.group_by_length)
        sl = slice(i * micro, (i + 1) * micro)
        idx = perm[sl] if job.batch_size is not None else torch.arange(len(data))
        dev = engine.device  # CPU here; the worker's GPU under use_gpu (NCCL backend)
        ids, mask = data.batch(idx)
        with autocast():
            logits, proj = engine(ids.to(dev), mask.to(dev), with_hidden=lwd)
        t_hidden = (
            data.t_hidden[idx][:, layer_idx].to(dev)
            if (lwd and data.t_hidden is not None)
            else None
        )
        loss, last_parts = distill_loss(
            logits.float(),
            data.labels[idx].to(dev),
            data.t_logits[idx].to(dev) if data.t_logits is not None else None,
            alpha=job.alpha,
            temperature=job.temperature,
            beta=job.beta,
            projected_student_hidden=None if proj is None else proj.float(),
            teacher_hidden=t_hidden,
        )
        engine.backward(loss)
        engine.step()
        step_s += time.perf_counter() - ts
        _progress(job.name, rank, step, total_steps, last_parts["loss"], t0, on_step)
        if step % eval_steps == 0 or step == total_steps:
            live = evaluated.refresh()
            m = dev_eval(live.model)
            history.append({"step": step, "dev_accuracy": m["accuracy"], **last_parts})
            if m["accuracy"] > best[0]:
                best = (
                    m["accuracy"],
                    step,
                    {k: v.detach().cpu().clone() for k, v in live.model.state_dict().items()},
                )
        if ckpts.due(step):
            live = evaluated.refresh()
            ckpts.save(step, live, best[2], _loop_state(step, best, history, step_s, t0), rng, perm)
    if best[2] is not None:
        live.model.load_state_dict(best[2])
    metrics = Evaluator(tokenizer, test_rows, pairs, job.max_length, rank, world)(live.model)
    metrics.update(
        {
            "job": job.name,
            "dev_accuracy": best[0],
            "best_step": best[1],
            "train_rows": len(train_rows),
            "train_s": round(time.perf_counter() - t0, 2),
            "step_s": round(step_s, 3),
            "steps": total_steps,
            "final_loss": last_parts.get("loss", float("nan")),
            "precision": precision,
            **_resume_metrics(restored),
            **{f"meta_{k}": v for k, v in job.meta.items()},
        }
    )
    ckpt_dir = None
    if rank == 0:
        ckpt_dir = tempfile.mkdtemp(prefix=f"rd-{job.name.replace('/', '_')}-")
        live.save(ckpt_dir, tokenizer)
        _write_student_info(
            ckpt_dir,
            {
                "kind": job.kind,
                "task_kind": job.task_kind,
                "label_names": list(job.label_names),
                "max_length": job.max_length,
            },
        )
    report(metrics, ckpt_dir, history)
    return metrics


def _run_kind_job(
    job: TrainJob, rank: int, world: int, report, ckpts, on_step=None
) -> dict[str, Any]:
    """`run_job` for every kind but sequence classification, through `StudentKind`.

    Same contract as the classifier path: equal shards, `deepspeed.initialize` with the
    job's config, dev selection every `eval_every` epochs on the kind's "score" (reported
    as `dev_accuracy` too, which Tune and the ledger read), test metrics of the best step,
    one `report(metrics, ckpt_dir, history)`. Dev and test predictions are made on strided
    shards of the rows and gathered, so every rank scores the same predictions.
    """
    import deepspeed

    from raydistill.training.student_kinds import (
        kind_for_job,
        kind_param_groups,
        predict_sharded,
    )

    t0 = time.perf_counter()
    torch.manual_seed(job.seed)
    np.random.seed(job.seed)
    train_rows, dev_rows, test_rows = _get(job.train_rows), _get(job.dev_rows), _get(job.test_rows)
    kind = kind_for_job(job)
    tokenizer = kind.tokenizer(job.backbone)
    model = kind.build(job)
    rng = np.random.default_rng(job.seed)
    data = kind.encode(tokenizer, equal_shard(train_rows, rng, rank, world), job.max_length)
    # Rows can make different numbers of examples (mcqa multitask: a row without an
    # explanation makes one), and every rank must take the same number of steps. Each rank
    # counts every rank's shard itself (same seed, same shards): no collective before
    # DeepSpeed has set this rank's device.
    n = min(
        kind.count_examples(equal_shard(train_rows, np.random.default_rng(job.seed), r, world))
        for r in range(world)
    )
    data = {k: v[:n] for k, v in data.items()}
    micro = n if job.batch_size is None else min(job.batch_size, n)
    steps_per_epoch = max(1, n // micro)
    optim = torch.optim.AdamW(
        kind_param_groups(model, job.lr, job.head_lr), weight_decay=job.weight_decay
    )
    total_steps = max(1, int(round(job.epochs * steps_per_epoch)))
    restored = ckpts.start(steps_per_epoch, total_steps, model, optim, rng)
    evaluated = _EvalCopy(model, job.zero_stage)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optim,
        config=_ds_config(job, micro, world),
    )
    evaluated.to(engine.device)
    autocast, precision = _autocast(job)
    eval_steps = job.eval_every * steps_per_epoch if job.eval_every else total_steps
    last_parts: dict[str, float] = {}
    live = model
    first, best, history, step_s, perm, t0 = _start_state(restored, t0)
    engine.train()
    for step in range(first, total_steps + 1):
        ts = time.perf_counter()
        i = (step - 1) % steps_per_epoch
        if i == 0 and job.batch_size is not None:
            perm = torch.from_numpy(rng.permutation(n))
        idx = perm[i * micro : (i + 1) * micro] if job.batch_size is not None else torch.arange(n)
        batch = {k: v.to(engine.device) for k, v in kind.batch(data, idx).items()}
        with autocast():
            loss, last_parts = kind.loss(engine, batch)
        engine.backward(loss)
        engine.step()
        step_s += time.perf_counter() - ts
        _progress(job.name, rank, step, total_steps, last_parts["loss"], t0, on_step)
        if step % eval_steps == 0 or step == total_steps:
            live = evaluated.refresh()
            score = kind.dev_score(live, tokenizer, dev_rows, rank, world)
            history.append({"step": step, "dev_accuracy": score, "dev_score": score, **last_parts})
            if score > best[0]:
                sd = {k: v.detach().cpu().clone() for k, v in live.state_dict().items()}
                best = (score, step, sd)
        if ckpts.due(step):
            live = evaluated.refresh()
            ckpts.save(step, live, best[2], _loop_state(step, best, history, step_s, t0), rng, perm)
    if best[2] is not None:
        live.load_state_dict(best[2])
    metrics: dict[str, Any] = kind.metrics(
        predict_sharded(kind, live, tokenizer, test_rows, rank, world), test_rows
    )
    metrics.update(
        {
            "job": job.name,
            "kind": job.kind,
            "dev_accuracy": best[0],
            "dev_score": best[0],
            "best_step": best[1],
            "train_rows": len(train_rows),
            "train_examples": n * world,
            "train_s": round(time.perf_counter() - t0, 2),
            "step_s": round(step_s, 3),
            "steps": total_steps,
            "final_loss": last_parts.get("loss", float("nan")),
            "precision": precision,
            **_resume_metrics(restored),
            **{f"meta_{k}": v for k, v in job.meta.items()},
        }
    )
    ckpt_dir = None
    if rank == 0:
        ckpt_dir = tempfile.mkdtemp(prefix=f"rd-{job.name.replace('/', '_')}-")
        kind.save(live, ckpt_dir, tokenizer)
    report(metrics, ckpt_dir, history)
    return metrics
