"""Train (or reuse) the teacher classifier with the same Ray Train + DeepSpeed loop.

The teacher is the expensive, reusable part: it is cached under the cache dir by a hash of
everything that shapes it, so reruns, sweeps and benchmarks pay for it once.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from raydistill.config import DataConfig, TeacherConfig, stable_hash
from raydistill.pipelines.tasks import TaskSpec
from raydistill.registry import resolve_model

log = logging.getLogger(__name__)


def teacher_key(data: DataConfig, t: TeacherConfig, spec: TaskSpec) -> str:
    return stable_hash(
        {
            "task": spec.name,
            "labels": spec.label_names,
            "train_file": data.train_file,
            "rows": data.teacher_train_rows,
            "backbone": t.backbone,
            "epochs": t.epochs,
            "lr": t.lr,
            "bs": t.batch_size,
            "len": t.max_length,
            "seed": t.seed,
            # Absent for the [CLS] head so teachers cached before pooling existed stay valid.
            **({"pooling": t.pooling} if t.pooling != "native" else {}),
            # Custom sentence-pair files: the same files read as pairs are another teacher
            # (absent for single texts, so their cached teachers stay valid).
            **({"text_pair": data.text_pair_column} if data.text_pair_column else {}),
            # bf16 trains another teacher; absent at auto so cached teachers stay valid.
            **({"precision": t.precision} if t.precision != "auto" else {}),
            # Length-grouped batches train another teacher; absent when off (the default),
            # so teachers cached before the option existed stay valid.
            **({"batching": "by_length"} if t.group_by_length else {}),
        }
    )


def ensure_teacher(
    data: DataConfig,
    t: TeacherConfig,
    spec: TaskSpec,
    train_rows: list[dict[str, Any]],
    dev_rows: list[dict[str, Any]],
    cache_dir: Path,
    storage_path: str,
) -> tuple[str, dict[str, Any]]:
    """Return (teacher folder, metrics); trains only on a cache miss."""
    if t.checkpoint:
        path = resolve_model(t.checkpoint, cache_dir)
        return path, {"source": "checkpoint", "path": path}
    dest = cache_dir / "teachers" / f"{spec.name}-{teacher_key(data, t, spec)}"
    meta = dest / "raydistill_teacher.json"
    if meta.exists():
        info = json.loads(meta.read_text())
        info["source"] = "cache"
        return str(dest), info
    import ray

    from raydistill.training.fit import fit_jobs
    from raydistill.training.loop import TrainJob

    backbone = resolve_model(t.backbone, cache_dir)
    job = TrainJob(
        name="teacher",
        backbone=backbone,
        label_names=list(spec.label_names),
        train_rows=ray.put(train_rows),
        dev_rows=ray.put(dev_rows),
        test_rows=ray.put(dev_rows),
        num_layers=None,
        pooling=t.pooling,
        lr=t.lr,
        epochs=t.epochs,
        batch_size=t.batch_size,
        max_length=t.max_length,
        eval_every=0,
        zero_stage=0,
        seed=t.seed,
        checkpoint_every=t.checkpoint_every,
        precision=t.precision,
        group_by_length=t.group_by_length,
    )
    t0 = time.perf_counter()
    log.info("training teacher %s on %d rows", t.backbone, len(train_rows))
    [(metrics, ckpt)] = fit_jobs(
        [job],
        num_workers=t.num_workers,
        storage_path=storage_path,
        name=f"teacher-{int(time.time())}",
        max_failures=t.max_failures,
        use_gpu=t.use_gpu,
        progress_stage="teacher",  # the driver's "teacher" line counts this job's steps
        progress_by="steps",
    )
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    ckpt.to_directory(str(tmp))
    info = {
        "dev_accuracy": metrics["accuracy"],
        "train_rows": len(train_rows),
        "train_s": round(time.perf_counter() - t0, 1),
        "backbone": t.backbone,
    }
    (tmp / "raydistill_teacher.json").write_text(json.dumps(info, indent=2))
    shutil.rmtree(dest, ignore_errors=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(dest)
    info["source"] = "trained"
    return str(dest), info
