"""Ray Data stage: the teacher classifier annotates rows once.

Each row gains `teacher_logits` (raw, the loss applies the temperature), `teacher_pred`
and, when asked, `teacher_hidden` (mean-pooled states of every layer, so any LWD layer
map works without another teacher forward). Training then reads these columns: the
teacher runs once per example, not once per step.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from raydistill.telemetry import count_rows
from raydistill.training.classifier import Classifier


class TeacherAnnotator:
    """Callable class for `Dataset.map_batches` (one teacher per actor)."""

    def __init__(self, model_dir: str, max_length: int = 64, with_hidden: bool = False):
        self.clf = Classifier(model_dir, max_length=max_length)
        self.with_hidden = with_hidden

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        texts = [str(t) for t in batch["text"]]
        if "text_pair" in batch:  # sentence-pair tasks: the teacher reads both sides
            texts = list(zip(texts, [str(t) for t in batch["text_pair"]], strict=True))
        if self.with_hidden:
            logits, hidden = self.clf.logits_and_hidden(texts)
            batch["teacher_hidden"] = [h.astype(np.float32) for h in hidden]
        else:
            logits = self.clf.logits(texts)
        batch["teacher_logits"] = [row.astype(np.float32) for row in logits]
        batch["teacher_pred"] = logits.argmax(-1).astype(np.int64)
        count_rows("annotate", len(texts))
        return batch


def annotate_rows(
    rows: list[dict[str, Any]],
    teacher_dir: str,
    *,
    max_length: int = 64,
    with_hidden: bool = False,
    batch_size: int = 64,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    progress_stage: str | None = None,
) -> list[dict[str, Any]]:
    """Annotate plain rows through a Ray Data stage and return them (order kept).

    `num_gpus` (teacher.num_gpus) is the actor's GPU share: the classifier runs on CUDA
    only when Ray assigned it one, never on a GPU it merely sees. `progress_stage`: the
    driver's progress line that counts rows as they come back (the annotation stage's;
    verification passes during generation leave it None)."""
    import ray

    from raydistill.progress import console

    if not rows:
        return []
    ds = ray.data.from_items(rows)
    ds = ds.map_batches(
        TeacherAnnotator,
        fn_constructor_kwargs=dict(
            model_dir=teacher_dir, max_length=max_length, with_hidden=with_hidden
        ),
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=1),  # one actor: one model copy
        num_cpus=num_cpus,
        num_gpus=float(num_gpus),
    )
    line = console() if progress_stage else None
    if line is not None:
        line.update(progress_stage, total=len(rows), unit="rows")
    out = []
    for row in ds.iter_rows():  # what take_all does, with a count as rows arrive
        out.append(row)
        if line is not None:
            line.update(progress_stage, advance=1)

    def key(r: dict[str, Any]) -> tuple[Any, Any]:
        return (r["id"], r.get("split"))

    by_id = {key(r): r for r in out}
    if len(by_id) != len(rows):
        raise RuntimeError(f"teacher annotation returned {len(by_id)} of {len(rows)} rows")
    return [_to_python(by_id[key(r)]) for r in rows]


def _to_python(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in row.items():
        if isinstance(v, np.ndarray):
            out[k] = v.tolist()
        elif isinstance(v, np.generic):
            out[k] = v.item()
        else:
            out[k] = v
    return out
