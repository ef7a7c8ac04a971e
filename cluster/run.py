"""The CoD job: prepare (teacher, annotations, counterfactuals) → train students → report.

Each stage writes its result under `out_dir` (and reusable ones under the cache dir), so a
rerun resumes where the last one stopped: the teacher is reused by hash, counterfactuals
already generated are not asked for again, and students already trained are skipped.
`train(cfg)` is the entry point shared by the CLI, `ray job submit` and Ray Tune.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from raydistill.config import RunConfig, stable_hash
from raydistill.pipelines.tasks import TaskSpec, get_task
from raydistill.timing import Stopwatch

log = logging.getLogger(__name__)

# method → (uses KD, uses LWD, uses counterfactuals)
METHODS: dict[str, tuple[bool, bool, bool]] = {
    "ce": (False, False, False),
    "ce+cod": (False, False, True),
    "kd": (True, False, False),
    "kd+cod": (True, False, True),
    "lwd": (True, True, False),
    "lwd+cod": (True, True, True),
}
# Bump when prompts or candidate handling change, so cached generations are not reused.
# 2: edits of a truncated long input are spliced onto its unseen rest (IMDB).
PROMPT_VERSION = 2


def check_methods(methods: list[str]) -> None:
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"unknown method(s) {bad}; known: {', '.join(METHODS)}")


@dataclass
class Prepared:
    spec: TaskSpec
    teacher_dir: str
    teacher_info: dict[str, Any]
    originals: dict[str, dict[str, Any]]  # annotated k-shot rows by id
    counterfactuals: dict[str, dict[str, Any]]  # annotated usable CF rows by parent id
    dev: list[dict[str, Any]]
    test: list[dict[str, Any]]
    gen_stats: dict[str, Any]
    teacher_width: int
    teacher_layers: int
    plan: dict[tuple[str, int, int], list[str]] = field(default_factory=dict)  # job → row ids
    timings: dict[str, float] = field(default_factory=dict)


def _subset(rows: list[dict[str, Any]], n: int | None, seed: int) -> list[dict[str, Any]]:
    if n is None or n >= len(rows):
        return rows
    idx = np.random.default_rng(seed).permutation(len(rows))[:n]
    return [rows[i] for i in sorted(idx)]


def _slim(row: dict[str, Any]) -> dict[str, Any]:
    """Evaluation rows need the teacher's prediction, not its hidden states."""
    return {k: v for k, v in row.items() if k not in ("teacher_hidden", "split")}


def draws(cfg: RunConfig, train: list[dict[str, Any]], num_labels: int):
    """(method, k, seed) → the original rows it trains on (CoD: k/2 of them)."""
    from raydistill.pipelines.kshot import sample_kshot

    out: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
    for seed in cfg.experiment.seeds:
        for k in cfg.experiment.ks:
            full = sample_kshot(train, k, num_labels, seed)
            half = sample_kshot(train, max(1, k // 2), num_labels, seed)
            for m in cfg.experiment.methods:
                out[(m, k, seed)] = half if METHODS[m][2] else full
    return out


def prepare(cfg: RunConfig, sw: Stopwatch | None = None) -> Prepared:
    from raydistill.pipelines.datasets import load_human_counterfactuals, load_split
    from raydistill.pipelines.soft_labels import annotate_rows
    from raydistill.training.teacher import ensure_teacher

    sw = sw or Stopwatch()
    check_methods(cfg.experiment.methods)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = cfg.resolved_cache_dir()
    spec = get_task(cfg.data.task, cfg.data.label_names)
    with sw.stage("data"):
        train = load_split(cfg.data, "train")
        dev = _subset(load_split(cfg.data, "dev"), cfg.data.dev_rows, 1)
        test = _subset(load_split(cfg.data, "test"), cfg.data.test_rows, 2)
    with sw.stage("teacher"):
        teacher_dir, teacher_info = ensure_teacher(
            cfg.data,
            cfg.teacher,
            spec,
            _subset(train, cfg.data.teacher_train_rows, cfg.teacher.seed),
            dev,
            cache,
            storage_path=str((out / "ray_train").resolve()),
        )
    from transformers import AutoConfig

    from raydistill.training.pooled_classifier import register

    register()  # the teacher may be a mean-pooled checkpoint
    tcfg = AutoConfig.from_pretrained(teacher_dir)
    plan = draws(cfg, train, spec.num_labels)
    needs_hidden = any(METHODS[m][1] for m in cfg.experiment.methods)
    originals = {r["id"]: r for rows in plan.values() for r in rows}
    with sw.stage("annotate"):
        # One Ray Data pass over every row the run needs (one teacher forward per row).
        tagged = (
            [dict(r, split="kshot") for r in originals.values()]
            + [dict(r, split="dev") for r in dev]
            + [dict(r, split="test") for r in test]
        )
        ann = annotate_rows(
            tagged, teacher_dir, max_length=cfg.teacher.max_length, with_hidden=needs_hidden
        )
        originals = {r["id"]: r for r in ann if r["split"] == "kshot"}
        dev = [_slim(r) for r in ann if r["split"] == "dev"]
        test = [_slim(r) for r in ann if r["split"] == "test"]
    teacher_info = dict(
        teacher_info,
        test_accuracy=float(np.mean([r["teacher_pred"] == r["label"] for r in test])),
        dev_accuracy=float(np.mean([r["teacher_pred"] == r["label"] for r in dev])),
    )
    cod_seeds = {
        r["id"]: originals[r["id"]]
        for (m, _k, _s), rows in plan.items()
        if METHODS[m][2]
        for r in rows
    }
    cf_records: list[dict[str, Any]] = []
    gen_stats: dict[str, Any] = {}
    if cod_seeds:
        with sw.stage("generate"):
            if cfg.data.human_counterfactuals:
                from raydistill.pipelines.counterfactuals import human_counterfactual_records

                human = load_human_counterfactuals(cfg.data, "train")
                cf_records, stats = human_counterfactual_records(
                    list(cod_seeds.values()), human, teacher_dir, cfg.teacher.max_length
                )
                gen_stats = {**stats.summary(), "source": "human:cad"}
            else:
                cf_records, gen_stats = generate_cached(
                    cfg, spec, list(cod_seeds.values()), teacher_dir
                )
        # Human edits are ground truth and used whatever the teacher says; LLM edits only
        # when the teacher verified the flip.
        counterfactuals = {
            r["parent_id"]: r for r in cf_records if r["flipped"] or r["source"].startswith("human")
        }
        from raydistill.pipelines.counterfactuals import save_records

        save_records(cf_records, out / "counterfactuals.parquet")
        (out / "generation_stats.json").write_text(json.dumps(gen_stats, indent=2))
    else:
        counterfactuals = {}
    return Prepared(
        spec=spec,
        teacher_dir=teacher_dir,
        teacher_info=teacher_info,
        originals=originals,
        counterfactuals=counterfactuals,
        dev=dev,
        test=test,
        gen_stats=gen_stats,
        teacher_width=int(tcfg.hidden_size),
        teacher_layers=int(tcfg.num_hidden_layers),
        plan={key: [r["id"] for r in rows] for key, rows in plan.items()},
        timings=sw.t,
    )


def generate_cached(
    cfg: RunConfig, spec: TaskSpec, seeds: list[dict[str, Any]], teacher_dir: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Generate counterfactuals for seeds not already in the cache; start the pool only if needed."""
    from raydistill.pipelines.counterfactuals import (
        GenerationStats,
        generate_counterfactuals,
        load_records,
        save_records,
    )
    from raydistill.serving.teacher_pool import make_pool

    key = stable_hash(
        {
            "task": spec.name,
            "backend": cfg.pool.backend,
            "model": cfg.pool.model,
            "url": cfg.pool.url,
            "gen": cfg.generation.__dict__,
            "teacher": teacher_dir,
            "prompt": PROMPT_VERSION,
        }
    )
    path = cfg.resolved_cache_dir() / "counterfactuals" / f"{spec.name}-{key}.parquet"
    cached = {r["parent_id"]: r for r in load_records(path)} if path.exists() else {}
    missing = [s for s in seeds if s["id"] not in cached]
    stats = GenerationStats()
    if missing:
        print(
            f"[raydistill] generating counterfactuals for {len(missing)} seeds "
            f"({len(seeds) - len(missing)} cached) with {cfg.pool.backend}:{cfg.pool.model}",
            flush=True,
        )
        pool = make_pool(cfg.pool, cfg.resolved_cache_dir())
        t0 = time.perf_counter()
        endpoint = pool.start()
        startup = time.perf_counter() - t0
        try:
            records, stats = generate_counterfactuals(
                missing,
                spec,
                endpoint,
                teacher_dir,
                cfg.generation,
                source=f"llm:{cfg.pool.model}",
                batch_size=cfg.pool.batch_size,
                concurrency=cfg.pool.concurrency,
                teacher_max_length=cfg.teacher.max_length,
                progress=lambda msg: print(f"[raydistill] {msg}", flush=True),
            )
        finally:
            pool.shutdown()
        for r in records:
            cached[r["parent_id"]] = r
        save_records(list(cached.values()), path)
        summary = stats.summary()
        summary["pool_startup_s"] = round(startup, 1)
    records = [cached[s["id"]] for s in seeds]
    # Stats over exactly the seeds of this run (cached ones included).
    flipped = [r for r in records if r["flipped"]]
    full = {
        "seeds": len(records),
        "flipped": len(flipped),
        "no_counterfactual": len(records) - len(flipped),
        "flip_rate": round(len(flipped) / len(records), 4) if records else 0.0,
        "mean_edit_words": round(float(np.mean([r["edit_words"] for r in flipped])), 2)
        if flipped
        else None,
        "mean_attempts": round(float(np.mean([r["attempts"] for r in records])), 2)
        if records
        else None,
        "generated_tokens": int(sum(r["generated_tokens"] for r in records)),
        "cached_seeds": len(seeds) - len(missing),
        "this_run": summary if missing else None,
        "tokens_per_s": summary.get("tokens_per_s") if missing else None,
        "source": f"llm:{cfg.pool.model}",
        # Which generations these are: students trained on them are valid only for them.
        "cache_key": key,
    }
    return records, full


def build_jobs(cfg: RunConfig, prep: Prepared) -> list[Any]:
    """One TrainJob per (method, k, seed), rows shipped once through the object store."""
    import ray

    from raydistill.registry import resolve_model
    from raydistill.training.loop import TrainJob

    s = cfg.student
    backbone = resolve_model(s.backbone, cfg.resolved_cache_dir())
    dev_ref, test_ref = ray.put(prep.dev), ray.put(prep.test)
    # Counterfactual pairs with the teacher's prediction on each member, for boundary
    # fidelity; a job is scored only on pairs whose original it did not train on.
    pairs_by_parent = {
        pid: (
            int(prep.originals[pid]["teacher_pred"]),
            prep.originals[pid]["text"],
            int(np.argmax(cf["teacher_logits"])),
            cf["text"],
        )
        for pid, cf in prep.counterfactuals.items()
        if pid in prep.originals
    }
    jobs = []
    for (method, k, seed), ids in prep.plan.items():
        if (
            method not in cfg.experiment.methods
            or k not in cfg.experiment.ks
            or seed not in cfg.experiment.seeds
        ):
            continue
        kd, lwd, cod = METHODS[method]
        originals = [prep.originals[i] for i in ids]
        rows = [dict(r) for r in originals]
        if cod:
            rows += [dict(prep.counterfactuals[i]) for i in ids if i in prep.counterfactuals]
        if not lwd:
            # Only LWD reads hidden states; the rest would ship them for nothing (and some
            # sources, e.g. human edits, carry them while the originals do not).
            for r in rows:
                r.pop("teacher_hidden", None)
        used = set(ids)
        pairs = [p for pid, p in pairs_by_parent.items() if pid not in used]
        jobs.append(
            TrainJob(
                name=job_name(method, k, seed),
                backbone=backbone,
                label_names=list(prep.spec.label_names),
                train_rows=rows,
                dev_rows=dev_ref,
                test_rows=test_ref,
                pairs=pairs or None,
                num_layers=s.num_layers,
                pooling=s.pooling,
                freeze_embeddings=s.freeze_embeddings,
                alpha=s.alpha if kd else 0.0,
                beta=(cfg.experiment.lwd_beta if s.beta == 0 else s.beta) if lwd else 0.0,
                temperature=s.temperature,
                lr=s.lr,
                head_lr=s.head_lr,
                weight_decay=s.weight_decay,
                epochs=s.epochs,
                batch_size=s.batch_size,
                max_length=s.max_length,
                eval_every=s.eval_every,
                lwd_layer_map=s.lwd_layer_map,
                teacher_width=prep.teacher_width,
                teacher_layers=prep.teacher_layers,
                zero_stage=s.zero_stage,
                seed=s.seed + seed,
                meta={
                    "method": method,
                    "k": k,
                    "seed": seed,
                    "originals": len(originals),
                    "counterfactuals": len(rows) - len(originals),
                },
            )
        )
    return jobs


def job_name(method: str, k: int, seed: int) -> str:
    return f"{method}-k{k}-s{seed}"


def read_results(out_dir: Path) -> list[dict[str, Any]]:
    path = out_dir / "results.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def student_signature(cfg: RunConfig, teacher_dir: str, counterfactuals: str | None = None) -> str:
    """What a finished student's result is valid for; a rerun skips jobs that match.

    Execution knobs that do not change what a student learns stay out, so a grid rerun
    with another ZeRO stage or worker placement reuses the students already trained.
    `counterfactuals` names the generations CoD arms train on (their cache key): new
    generations (another prompt version, generator, config) retrain the students.
    """
    learned = {
        k: v
        for k, v in cfg.student.__dict__.items()
        if k not in ("zero_stage", "placement_strategy")
    }
    sig: dict[str, Any] = {
        "student": learned,
        "lwd_beta": cfg.experiment.lwd_beta,
        "teacher": teacher_dir,
    }
    if counterfactuals is not None:
        sig["counterfactuals"] = counterfactuals
    return stable_hash(sig)


def train(
    cfg: RunConfig,
    prep: Prepared | None = None,
    sw: Stopwatch | None = None,
    callbacks: list | None = None,
) -> list[dict[str, Any]]:
    """Train every (method, k, seed) student not trained yet; return all results.

    `callbacks` go to the Ray Train RunConfig (Ray Tune passes its report callback here).
    """
    from raydistill.cluster.runtime import ensure_ray
    from raydistill.training.loop import fit_jobs

    ensure_ray(cfg.cluster)
    sw = sw or Stopwatch()
    prep = prep or prepare(cfg, sw)
    out = Path(cfg.out_dir)
    cf = prep.gen_stats.get("cache_key") or prep.gen_stats.get("source")
    signature = student_signature(cfg, prep.teacher_dir, cf)
    done = {r["job"] for r in read_results(out) if r.get("signature") == signature}
    jobs = [j for j in build_jobs(cfg, prep) if j.name not in done]
    if done:
        print(f"[raydistill] {len(done)} students already trained, {len(jobs)} to go", flush=True)
    if jobs:
        with sw.stage("train"):
            results = fit_jobs(
                jobs,
                num_workers=cfg.student.num_workers,
                storage_path=str((out / "ray_train").resolve()),
                name=f"students-{int(time.time())}",
                run_callbacks=callbacks,
                placement_strategy=cfg.student.placement_strategy,
                use_gpu=cfg.student.use_gpu,
            )
        students = out / "students"
        with (out / "results.jsonl").open("a") as f:
            for job, (metrics, ckpt) in zip(jobs, results, strict=True):
                dest = students / job.name
                shutil.rmtree(dest, ignore_errors=True)
                ckpt.to_directory(str(dest))
                prov = dest / "raydistill_train.json"
                nodes = json.loads(prov.read_text())["worker_nodes"] if prov.exists() else None
                row = {
                    "job": job.name,
                    "method": job.meta["method"],
                    "k": job.meta["k"],
                    "seed": job.meta["seed"],
                    "accuracy": metrics["accuracy"],
                    "fidelity": metrics.get("fidelity"),
                    "boundary_fidelity": metrics.get("boundary_fidelity"),
                    "dev_accuracy": metrics["dev_accuracy"],
                    "train_rows": metrics["train_rows"],
                    "originals": job.meta["originals"],
                    "counterfactuals": job.meta["counterfactuals"],
                    "train_s": metrics["train_s"],
                    "worker_nodes": nodes,
                    "checkpoint": str(dest),
                    "signature": signature,
                }
                f.write(json.dumps(row) + "\n")
    return [r for r in read_results(out) if r.get("signature") == signature]


def run(cfg: RunConfig) -> dict[str, Any]:
    """The whole CoD job; returns the report dict (also written to out_dir)."""
    from raydistill.cluster.report import write_report
    from raydistill.cluster.runtime import ensure_ray
    from raydistill.config import dump_config

    t0 = time.perf_counter()
    info = ensure_ray(cfg.cluster)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "config.yaml")
    sw = Stopwatch()
    prep = prepare(cfg, sw)
    results = train(cfg, prep, sw)
    sw.t["total"] = round(time.perf_counter() - t0, 2)
    return write_report(
        out,
        cfg=cfg,
        results=results,
        gen_stats=prep.gen_stats,
        teacher_info=prep.teacher_info,
        timings=sw.t,
        peak_memory_mb=sw.peak_mb,
        cluster=info,
    )
