"""Counterfactual-infused distillation (CoD): k/2 originals + their counterfactuals.

prepare: data → teacher classifier → k-shot plan → one teacher annotation pass
generate: the LLM pool writes minimal edits that flip the teacher; the teacher verifies
train: one student per (arm, k, seed) on 2+ Ray Train workers with DeepSpeed,
       L = CE + α·T²·KL(teacher) + β·L_LWD; CoD arms see k/2 originals + counterfactuals
report: accuracy and teacher fidelity per arm and k, each CoD arm's gain over its baseline

A rerun resumes: the teacher is reused by hash, counterfactuals by seed id from the
generation cache (and every LLM request from the request cache), and finished students
from the ledger (`cluster/ledger.py`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from raydistill.config import CodConfig, ConfigError, RunConfig
from raydistill.methods import stages
from raydistill.methods.cod_generation import (  # noqa: F401 - re-exported, cod's public API
    PROMPT_VERSION,
    class_words_for,
    fluency_dir,
    fluency_summary,
    generate,
    generate_cached,
    generation_key,
    human_reference_fluency,
)
from raydistill.timing import Stopwatch

DESCRIPTION = (
    "counterfactual-infused distillation: k/2 originals + teacher-verified LLM "
    "counterfactuals (classification)"
)


@dataclass(frozen=True)
class Arm:
    """One loss arm: which terms it uses, and what its gain is measured against."""

    kd: bool
    lwd: bool
    cod: bool
    baseline: str | None = None  # the arm this one is compared with in the report


ARMS: dict[str, Arm] = {
    "ce": Arm(kd=False, lwd=False, cod=False),
    "ce+cod": Arm(kd=False, lwd=False, cod=True, baseline="ce"),
    "kd": Arm(kd=True, lwd=False, cod=False),
    "kd+cod": Arm(kd=True, lwd=False, cod=True, baseline="kd"),
    "lwd": Arm(kd=True, lwd=True, cod=False),
    "lwd+cod": Arm(kd=True, lwd=True, cod=True, baseline="lwd"),
}
BASELINES = {name: a.baseline for name, a in ARMS.items() if a.baseline}


def check_arms(arms: list[str]) -> None:
    bad = [a for a in arms if a not in ARMS]
    if bad:
        raise ConfigError(f"experiment.arms: unknown arm(s) {bad}; known: {', '.join(ARMS)}")


def validate(cfg: RunConfig) -> None:
    """Everything that can be wrong before any work starts."""
    if not isinstance(cfg.method, CodConfig):
        raise ConfigError(f"method.name must be 'cod' for this method, got {cfg.method.name!r}")
    check_arms(cfg.experiment.arms)
    gen = cfg.method.counterfactuals
    fluency = {"method.counterfactuals.fluency_model": gen.fluency_model}
    stages.check_model_names(cfg, pool=not cfg.method.human_counterfactuals, extra=fluency)
    from raydistill.registry import TINY

    # (Random tiny models judge nothing either way: the smoke recipes may share one.)
    if gen.fluency_model is not None and gen.fluency_model == cfg.pool.model not in TINY:
        import warnings

        warnings.warn(
            f"method.counterfactuals.fluency_model is the generator ({cfg.pool.model}): it "
            "will judge its own edits fluent; pick another LM for a fair measure",
            stacklevel=2,
        )
    from raydistill.pipelines.tasks import spec_for

    kind = spec_for(cfg.data).kind
    if kind != "classification":
        raise ConfigError(f"method cod needs a classification task; {cfg.data.task} is {kind}")


@dataclass
class Prepared:
    spec: Any  # TaskSpec
    teacher_dir: str
    teacher_info: dict[str, Any]
    originals: dict[str, dict[str, Any]]  # annotated k-shot rows by id
    # usable CF rows by parent id: one each (targets: runner_up) or one per other class
    counterfactuals: dict[str, list[dict[str, Any]]]
    dev: list[dict[str, Any]]
    test: list[dict[str, Any]]
    gen_stats: dict[str, Any]
    teacher_width: int
    teacher_layers: int
    plan: dict[tuple[str, int, int], list[str]] = field(default_factory=dict)  # job → row ids
    timings: dict[str, float] = field(default_factory=dict)


def draws(cfg: RunConfig, train: list[dict[str, Any]], num_labels: int):
    """(arm, k, seed) → the original rows it trains on (CoD arms: k/2 of them)."""
    from raydistill.pipelines.kshot import sample_kshot

    out: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
    for seed in cfg.experiment.seeds:
        for k in cfg.experiment.ks:
            full = sample_kshot(train, k, num_labels, seed)
            half = sample_kshot(train, max(1, k // 2), num_labels, seed)
            for m in cfg.experiment.arms:
                out[(m, k, seed)] = half if ARMS[m].cod else full
    return out


def prepare(cfg: RunConfig, sw: Stopwatch | None = None) -> Prepared:
    """Teacher, the k-shot plan, one annotation pass and the counterfactuals."""
    sw = sw or Stopwatch()
    validate(cfg)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    splits = stages.load_splits(cfg, sw)
    # The k-shot plan before the teacher: an infeasible k fails in seconds, not after
    # minutes of teacher training.
    plan = draws(cfg, splits.train, splits.spec.num_labels)
    teacher = stages.teacher_stage(cfg, splits, sw)
    needs_hidden = any(ARMS[m].lwd for m in cfg.experiment.arms)
    kshot = {r["id"]: r for rows in plan.values() for r in rows}
    ann = stages.annotate_stage(
        cfg,
        teacher,
        {"kshot": list(kshot.values()), "dev": splits.dev, "test": splits.test},
        needs_hidden,
        sw,
    )
    originals = {r["id"]: r for r in ann["kshot"]}
    dev = [stages.slim(r) for r in ann["dev"]]
    test = [stages.slim(r) for r in ann["test"]]
    teacher_info = dict(
        teacher.info,
        test_accuracy=stages.teacher_accuracy(test),
        dev_accuracy=stages.teacher_accuracy(dev),
    )
    cod_seeds = {
        r["id"]: originals[r["id"]]
        for (m, _k, _s), rows in plan.items()
        if ARMS[m].cod
        for r in rows
    }
    counterfactuals: dict[str, list[dict[str, Any]]] = {}
    gen_stats: dict[str, Any] = {}
    if cod_seeds:
        with sw.stage("generate"):
            words = class_words_for(cfg, splits.spec, splits.train)
            if words is not None:
                (out / "class_words.json").write_text(json.dumps(words, indent=1))
            records, gen_stats = generate(
                cfg, splits.spec, list(cod_seeds.values()), teacher, words
            )
        # Human edits are ground truth and used whatever the teacher says; LLM edits only
        # when the teacher verified the flip.
        for r in records:
            if r["flipped"] or r["source"].startswith("human"):
                counterfactuals.setdefault(r["parent_id"], []).append(r)
        from raydistill.cluster.report import write_counterfactuals_md
        from raydistill.pipelines.counterfactuals import save_records

        save_records(records, out / "counterfactuals.parquet")
        (out / "generation_stats.json").write_text(json.dumps(gen_stats, indent=2))
        write_counterfactuals_md(
            out / "counterfactuals.md",
            records,
            task=splits.spec.name,
            label_names=list(splits.spec.label_names),
            fluency=gen_stats.get("fluency"),
        )
    return Prepared(
        spec=splits.spec,
        teacher_dir=teacher.path,
        teacher_info=teacher_info,
        originals=originals,
        counterfactuals=counterfactuals,
        dev=dev,
        test=test,
        gen_stats=gen_stats,
        teacher_width=teacher.width,
        teacher_layers=teacher.layers,
        plan={key: [r["id"] for r in rows] for key, rows in plan.items()},
        timings=sw.t,
    )


def build_jobs(cfg: RunConfig, prep: Prepared) -> list[Any]:
    """One TrainJob per (arm, k, seed), rows shipped once through the object store."""
    import ray

    from raydistill.registry import resolve_model
    from raydistill.training.classifier import row_input
    from raydistill.training.loop import TrainJob

    s = cfg.student
    backbone = resolve_model(s.backbone, cfg.resolved_cache_dir())
    dev_ref, test_ref = ray.put(prep.dev), ray.put(prep.test)
    # Counterfactual pairs with the teacher's prediction on each member, for boundary
    # fidelity; a job is scored only on pairs whose original it did not train on.
    # (Inputs are (text, text_pair) tuples on sentence-pair tasks.)
    pairs_by_parent = {
        pid: [
            (
                int(prep.originals[pid]["teacher_pred"]),
                row_input(prep.originals[pid]),
                int(np.argmax(cf["teacher_logits"])),
                row_input(cf),
            )
            for cf in cfs
        ]
        for pid, cfs in prep.counterfactuals.items()
        if pid in prep.originals
    }
    jobs = []
    for (arm_name, k, seed), ids in prep.plan.items():
        if (
            arm_name not in cfg.experiment.arms
            or k not in cfg.experiment.ks
            or seed not in cfg.experiment.seeds
        ):
            continue
        arm = ARMS[arm_name]
        originals = [prep.originals[i] for i in ids]
        rows = [dict(r) for r in originals]
        if arm.cod:
            rows += [dict(cf) for i in ids for cf in prep.counterfactuals.get(i, [])]
        if not arm.lwd:
            # Only LWD reads hidden states; the rest would ship them for nothing (and some
            # sources, e.g. human edits, carry them while the originals do not).
            for r in rows:
                r.pop("teacher_hidden", None)
        used = set(ids)
        pairs = [p for pid, ps in pairs_by_parent.items() if pid not in used for p in ps]
        jobs.append(
            TrainJob(
                name=job_name(arm_name, k, seed),
                backbone=backbone,
                label_names=list(prep.spec.label_names),
                train_rows=rows,
                dev_rows=dev_ref,
                test_rows=test_ref,
                pairs=pairs or None,
                num_layers=s.num_layers,
                pooling=s.pooling,
                freeze_embeddings=s.freeze_embeddings,
                alpha=s.alpha if arm.kd else 0.0,
                beta=(cfg.experiment.lwd_beta if s.beta == 0 else s.beta) if arm.lwd else 0.0,
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
                precision=s.precision,
                seed=s.seed + seed,
                meta={
                    "method": arm_name,
                    "k": k,
                    "seed": seed,
                    "originals": len(originals),
                    "counterfactuals": len(rows) - len(originals),
                },
            )
        )
    return jobs


def job_name(arm: str, k: int, seed: int) -> str:
    return f"{arm}-k{k}-s{seed}"


def signature(cfg: RunConfig, prep: Prepared) -> str:
    """The ledger signature of this run's students (counterfactuals included)."""
    from raydistill.cluster.ledger import student_signature

    cf = prep.gen_stats.get("cache_key") or prep.gen_stats.get("source")
    return student_signature(cfg, prep.teacher_dir, {"counterfactuals": cf})


def _result_row(job: Any, metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        "arm": job.meta["method"],
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
        "step_s": metrics.get("step_s"),
        "precision": metrics.get("precision"),
    }


def train(
    cfg: RunConfig,
    prep: Prepared | None = None,
    sw: Stopwatch | None = None,
    callbacks: list | None = None,
) -> list[dict[str, Any]]:
    """Train every (arm, k, seed) student not trained yet; return all of this run's results.

    Given `prep` (Ray Tune passes the driver's), nothing is prepared again: no teacher is
    trained and no LLM is called. `callbacks` go to the Ray Train RunConfig.
    """
    from raydistill.cluster.runtime import ensure_ray

    ensure_ray(cfg.cluster)
    sw = sw or Stopwatch()
    prep = prep or prepare(cfg, sw)
    return stages.train_stage(
        cfg, build_jobs(cfg, prep), signature(cfg, prep), _result_row, sw, callbacks
    )


def run(cfg: RunConfig) -> dict[str, Any]:
    """The whole CoD job; returns the report dict (also written to out_dir)."""
    from raydistill.cluster.report import write_report

    start = stages.start_run(cfg, validate)
    info, out, sw, t0 = start.info, start.out, start.sw, start.t0
    prep = prepare(cfg, sw)
    from raydistill.cluster.ledger import Ledger

    jobs = {job_name(*key) for key in prep.plan}
    students_done = len(jobs & Ledger(out).done(signature(cfg, prep)))
    results = train(cfg, prep, sw)
    sw.t["total"] = round(time.perf_counter() - t0, 2)
    g = prep.gen_stats
    reused = {
        "teacher": prep.teacher_info.get("source") in ("cache", "checkpoint"),
        "counterfactual_seeds": f"{g.get('cached_seeds', 0)} of {g.get('seeds', 0)}",
        "llm_requests_from_cache": ((g.get("this_run") or {}).get("llm") or {}).get(
            "cache_hits", 0
        ),
        "students": f"{students_done} of {len(jobs)}",
    }
    return write_report(
        out,
        cfg=cfg,
        results=results,
        gen_stats=prep.gen_stats,
        teacher_info=prep.teacher_info,
        timings=sw.t,
        peak_memory_mb=sw.peak_mb,
        cluster=info,
        baselines=BASELINES,
        reused=reused,
    )
