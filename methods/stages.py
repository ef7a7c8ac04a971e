"""Stages every method shares: data, teacher, annotation, the LLM generator, training.

A method module strings these together; each stage is a function with its inputs as
arguments, so a method reads as a script and Ray Tune can hand a stage prepared inputs.
Stages time themselves on the `Stopwatch` they are given (what the report's stage table
and the dashboard show) and persist what they make under `out_dir` or the cache dir.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from raydistill.config import RunConfig
from raydistill.progress import console
from raydistill.timing import Stopwatch

log = logging.getLogger(__name__)
Row = dict[str, Any]


@dataclass
class RunStart:
    """What every method's `run` starts from: the cluster, the run folder, a stopwatch."""

    info: dict[str, Any]  # cluster description (+ storage warnings) for the report
    out: Path
    sw: Stopwatch
    t0: float


def check_model_names(
    cfg: RunConfig, *, teacher: bool = True, pool: bool = True, extra: dict | None = None
) -> None:
    """Every model name a run will load, checked before the first expensive stage (a
    typo in `pool.model` used to surface only after the teacher had trained). Only the
    name is checked (registered, tiny-*, an existing folder or a Hub id); nothing loads.
    `pool.model` of an OpenAI-compatible server is the server's own name: not checked."""
    from raydistill.registry import check_model_name

    names = {"student.backbone": cfg.student.backbone}
    if teacher:
        names["teacher.backbone"] = cfg.teacher.backbone
    if pool and cfg.pool.backend != "openai":
        names["pool.model"] = cfg.pool.model
    names.update(extra or {})
    for key, name in names.items():
        if name is not None:
            check_model_name(name, key)


def start_run(cfg: RunConfig, validate: Callable[[RunConfig], None]) -> RunStart:
    """Validate, join or start Ray, check storage, create the run folder, save the config.

    Validation comes first, so a bad recipe fails before any cluster work.
    """
    from raydistill.cluster.runtime import check_storage, ensure_ray
    from raydistill.config import dump_config

    t0 = time.perf_counter()
    validate(cfg)
    info = ensure_ray(cfg.cluster)
    info["storage_warnings"] = check_storage(cfg)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "config.yaml")
    return RunStart(info, out, Stopwatch(), t0)


def subset(rows: list[Row], n: int | None, seed: int) -> list[Row]:
    """`n` rows drawn without replacement (file order kept); all of them if n is None."""
    if n is None or n >= len(rows):
        return rows
    idx = np.random.default_rng(seed).permutation(len(rows))[:n]
    return [rows[i] for i in sorted(idx)]


def slim(row: Row) -> Row:
    """Evaluation rows need the teacher's prediction, not its hidden states."""
    return {k: v for k, v in row.items() if k not in ("teacher_hidden", "split")}


@dataclass
class Splits:
    spec: Any  # TaskSpec
    train: list[Row]
    dev: list[Row]
    test: list[Row]


def load_splits(cfg: RunConfig, sw: Stopwatch) -> Splits:
    """Train, dev (`data.dev_rows` of it) and test (`data.test_rows`), validated per kind."""
    from raydistill.pipelines.datasets import load_split
    from raydistill.pipelines.tasks import spec_for

    spec = spec_for(cfg.data)
    with sw.stage("data"):
        train = load_split(cfg.data, "train")
        dev = subset(load_split(cfg.data, "dev"), cfg.data.dev_rows, 1)
        test = subset(load_split(cfg.data, "test"), cfg.data.test_rows, 2)
    return Splits(spec, train, dev, test)


@dataclass
class Teacher:
    path: str
    info: dict[str, Any]
    width: int
    layers: int


def teacher_stage(cfg: RunConfig, splits: Splits, sw: Stopwatch) -> Teacher:
    """The teacher classifier: reused from the cache by config hash, else trained."""
    from transformers import AutoConfig

    from raydistill.cluster.runtime import train_storage
    from raydistill.training.pooled_classifier import register
    from raydistill.training.teacher import ensure_teacher

    with sw.stage("teacher"):
        path, info = ensure_teacher(
            cfg.data,
            cfg.teacher,
            splits.spec,
            subset(splits.train, cfg.data.teacher_train_rows, cfg.teacher.seed),
            splits.dev,
            cfg.resolved_cache_dir(),
            storage_path=train_storage(cfg),
        )
    register()  # the teacher may be a mean-pooled checkpoint
    tcfg = AutoConfig.from_pretrained(path)
    return Teacher(path, info, int(tcfg.hidden_size), int(tcfg.num_hidden_layers))


def annotate_stage(
    cfg: RunConfig, teacher: Teacher, groups: dict[str, list[Row]], with_hidden: bool, sw
) -> dict[str, list[Row]]:
    """Teacher logits (and hidden states) on every row of every group, in one Ray Data pass
    (one teacher forward per row); groups come back in their input order."""
    from raydistill.pipelines.soft_labels import annotate_rows

    with sw.stage("annotate"):
        tagged = [dict(r, split=g) for g, rows in groups.items() for r in rows]
        ann = annotate_rows(
            tagged,
            teacher.path,
            max_length=cfg.teacher.max_length,
            with_hidden=with_hidden,
            num_cpus=cfg.teacher.num_cpus,
            num_gpus=cfg.teacher.num_gpus,
            progress_stage="annotate",
        )
    return {g: [r for r in ann if r["split"] == g] for g in groups}


def teacher_accuracy(rows: list[Row]) -> float:
    return float(np.mean([r["teacher_pred"] == r["label"] for r in rows])) if rows else float("nan")


@dataclass
class PoolStart:
    """When the stage's pool started: `seconds` it took, 0.0 if no request needed it.

    `attempted` is set before the start and `started` after it: a start that failed
    half-way (replicas up, the app not) still has a pool to shut down. The seconds are
    the deferred endpoint's own measure (`DeferredEndpoint.start_s`), the same figure
    the client leaves out of a round's LLM seconds.
    """

    endpoint: Any = None  # the stage's DeferredEndpoint
    started: bool = False
    attempted: bool = False

    @property
    def seconds(self) -> float:
        return 0.0 if self.endpoint is None else self.endpoint.start_s


@contextlib.contextmanager
def generator(cfg: RunConfig) -> Iterator[tuple[Any, PoolStart]]:
    """Yield (LLMClient, PoolStart) for the recipe's pool; shut the pool down after.

    The pool starts on the first request the cache cannot answer: every request goes
    through the client's content-addressed cache in the cache dir, so a rerun after a
    crash, or another round, never repeats a finished request, and a stage whose answers
    are all cached never pays for a pool start. Read `PoolStart.seconds` after the work.
    """
    from raydistill.console import quiet_libraries
    from raydistill.pipelines.llm_requests import DeferredEndpoint, LLMClient
    from raydistill.pipelines.request_cache import RequestCache
    from raydistill.serving.teacher_pool import make_pool

    pool = make_pool(cfg.pool, cfg.resolved_cache_dir())
    timing = PoolStart()

    def start() -> Any:
        timing.attempted = True
        if cfg.pool.backend != "openai":
            import ray.serve  # noqa: F401  (Serve's driver logger exists now, to be quieted)
        quiet_libraries()
        console().update(note=f"starting the {cfg.pool.backend} pool")  # the stage's line
        endpoint = pool.start()
        timing.started = True
        console().update(note="")
        quiet_libraries()  # anything the pool's start configured
        return endpoint

    timing.endpoint = DeferredEndpoint(start)
    cache = RequestCache.in_dir(cfg.resolved_cache_dir())
    try:
        yield LLMClient.for_pool(timing.endpoint, cfg.pool, cache), timing
    finally:
        if timing.attempted:
            pool.shutdown()
        cache.close()


def train_run_name(signature: str, todo: list[Any]) -> str:
    """The Ray Train run's name: the same for the same unfinished students.

    The ledger gets a stage's rows only when its whole fit returns, so a driver killed
    mid-stage (or a `ray job submit` job stopped) would lose every student already
    trained in it. Ray Train V2 reloads a run's checkpoint snapshot when a trainer with
    the same name and storage path starts, and the loop skips the jobs whose
    checkpoints it finds (training/fit.py): with this name the rerun trains only the
    rest. (Deleting results.jsonl therefore does not retrain; delete `ray_train/` too.)
    """
    from raydistill.config import stable_hash

    return "students-" + stable_hash({"signature": signature, "jobs": [j.name for j in todo]})[:16]


def train_stage(
    cfg: RunConfig,
    jobs: list[Any],
    signature: str | Callable[[Any], str],
    result_row: Callable[[Any, dict[str, Any]], dict[str, Any]],
    sw: Stopwatch,
    callbacks: list | None = None,
) -> list[dict[str, Any]]:
    """Train the jobs not finished under their signature in one TorchTrainer; ledger them.

    `signature`: one for every job, or `signature(job)` when jobs depend on different
    inputs (explain: an answer-only student does not depend on the teacher's prompts,
    so a prompt change must not retrain it). `result_row(job, metrics)` is the method's
    row for one finished student; the stage adds the job name, checkpoint folder, worker
    nodes and signature. Returns every ledger row under the jobs' signatures, earlier
    runs' included.
    """
    from raydistill.cluster.ledger import Ledger
    from raydistill.cluster.runtime import train_storage
    from raydistill.training.fit import fit_jobs

    sig_of = signature if callable(signature) else (lambda _job: signature)
    sigs = {j.name: sig_of(j) for j in jobs}
    out = Path(cfg.out_dir)
    ledger = Ledger(out)
    done_by_sig = {s: ledger.done(s) for s in set(sigs.values())}
    # checkpoint_every is execution, not what the student learns: set here for every
    # method, on copies so the caller's jobs stay as built.
    todo = [
        replace(j, checkpoint_every=cfg.student.checkpoint_every)
        for j in jobs
        if j.name not in done_by_sig[sigs[j.name]]
    ]
    done = len(jobs) - len(todo)
    if done:
        log.info("%d students already trained, %d to go", done, len(todo))
    if todo:
        with sw.stage("train"):
            # One line for the whole stage: students finished / all of this run's students
            # (those a rerun found in the ledger count as done), the one in flight by step.
            console().update("train", total=len(jobs), initial=done, unit="students")
            run_sig = sorted(set(sigs.values()))
            results = fit_jobs(
                todo,
                num_workers=cfg.student.num_workers,
                storage_path=train_storage(cfg),
                name=train_run_name(run_sig[0] if len(run_sig) == 1 else str(run_sig), todo),
                run_callbacks=callbacks,
                placement_strategy=cfg.student.placement_strategy,
                use_gpu=cfg.student.use_gpu,
                max_failures=cfg.student.max_failures,
                progress_stage="train",
                progress_initial=done,
            )
        rows = []
        for job, (metrics, ckpt) in zip(todo, results, strict=True):
            dest = out / "students" / job.name
            shutil.rmtree(dest, ignore_errors=True)
            ckpt.to_directory(str(dest))
            prov = dest / "raydistill_train.json"
            nodes = json.loads(prov.read_text())["worker_nodes"] if prov.exists() else None
            rows.append(
                {
                    "job": job.name,
                    **result_row(job, metrics),
                    "worker_nodes": nodes,
                    "checkpoint": str(dest),
                    "signature": sigs[job.name],
                }
            )
        ledger.append(rows)  # each student is durable once its row is written
    wanted = set(sigs.values())
    return [r for r in ledger.read() if r.get("signature") in wanted]
