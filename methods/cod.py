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

from raydistill.config import CodConfig, ConfigError, RunConfig, stable_hash
from raydistill.methods import stages
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
# Bump when prompts or candidate handling change, so cached generations are not reused.
# 2: edits of a truncated long input are spliced onto its unseen rest (IMDB).
# 3: multi-class prompts ask for words typical of the target class, with demonstrations
#    from the training split; sentence pairs; swap replies echoing the prompt's framing,
#    of function words only or cut off mid-phrase are refused. Binary-sentiment swap
#    prompts are unchanged, so their requests still come from the request cache.
# 4: candidates of multi-paragraph inputs (a news article's headline and body) keep the
#    original's paragraphs; one-paragraph inputs are cleaned as before, and their LLM
#    requests are unchanged (answered from the request cache).
PROMPT_VERSION = 4


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


def class_words_for(
    cfg: RunConfig, spec: Any, train: list[dict[str, Any]]
) -> dict[str, list[str]] | None:
    """Each class's typical words in the rows the teacher trains on (`class_words.py`):
    the demonstrations of multi-class prompts. None for binary sentiment, whose prompt
    keeps its hand-written pairs, and for human counterfactuals."""
    from raydistill.pipelines.class_words import class_words
    from raydistill.pipelines.swaps import opposite_style

    if cfg.method.human_counterfactuals or (opposite_style(spec) and not spec.is_pair):
        return None
    rows = stages.subset(train, cfg.data.teacher_train_rows, cfg.teacher.seed)
    side = cfg.method.counterfactuals.edit_side if spec.is_pair else "text"
    return class_words(rows, spec.label_names, field=side)


def generate(
    cfg: RunConfig,
    spec: Any,
    seeds: list[dict[str, Any]],
    teacher: stages.Teacher,
    class_words: dict[str, list[str]] | None = None,
):
    """Counterfactual records for `seeds`: human CAD edits, or the LLM's (cached)."""
    if cfg.method.human_counterfactuals:
        from raydistill.pipelines.counterfactuals import human_counterfactual_records
        from raydistill.pipelines.datasets import load_human_counterfactuals

        human = load_human_counterfactuals(cfg.data, "train")
        records, stats = human_counterfactual_records(
            seeds, human, teacher.path, cfg.teacher.max_length, fluency_dir(cfg)
        )
        return records, {
            **stats.summary(),
            "source": "human:cad",
            "fluency": fluency_summary(records, model=cfg.method.counterfactuals.fluency_model),
        }
    records, summary = generate_cached(cfg, spec, seeds, teacher.path, class_words)
    human_ref = human_reference_fluency(cfg, seeds)
    if human_ref is not None:
        summary["fluency_human"] = human_ref
    return records, summary


def fluency_dir(cfg: RunConfig) -> str | None:
    """The fluency LM's folder (materialized once from GGUF), or None when off."""
    name = cfg.method.counterfactuals.fluency_model
    if name is None:
        return None
    from raydistill.registry import resolve_model

    return resolve_model(name, cfg.resolved_cache_dir())


def fluency_summary(records: list[dict[str, Any]], **extra: Any) -> dict[str, Any] | None:
    from raydistill.pipelines.fluency import fluency_summary as summary

    return summary(records, **extra)


def human_reference_fluency(cfg: RunConfig, seeds: list[dict[str, Any]]) -> dict | None:
    """On IMDB with local CAD data: the fluency of the human edits of the same seeds, the
    reference the LLM's edits are read against. None elsewhere or with fluency off."""
    if cfg.method.counterfactuals.fluency_model is None or cfg.data.task != "imdb":
        return None
    from raydistill.pipelines.datasets import DataError, load_human_counterfactuals

    try:
        human = load_human_counterfactuals(cfg.data, "train")
    except (DataError, FileNotFoundError):
        return None  # IMDB from the Hub: no CAD pairs to compare with
    scores = _cached_human_fluency(cfg, seeds, human)
    return fluency_summary(
        list(scores.values()), model=cfg.method.counterfactuals.fluency_model, source="human:cad"
    )


def _cached_human_fluency(
    cfg: RunConfig, seeds: list[dict[str, Any]], human: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """`human_fluency`, kept in the cache dir by the pairs and the LM that scored them: a
    rerun (another k, another arm) would otherwise load the LM and rescore every review."""
    from raydistill.pipelines.counterfactual_records import human_fluency
    from raydistill.pipelines.fluency import FLUENCY_VERSION

    name = cfg.method.counterfactuals.fluency_model
    pairs = [(s["id"], s["text"], human[s["id"]]["text"]) for s in seeds if s["id"] in human]
    key = stable_hash({"model": name, "version": FLUENCY_VERSION, "pairs": pairs})
    path = cfg.resolved_cache_dir() / "fluency" / f"human-{key}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            pass  # a torn write: score again
    scores = human_fluency(seeds, human, fluency_dir(cfg))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(scores))
    tmp.replace(path)
    return scores


def generation_key(
    cfg: RunConfig,
    spec: Any,
    teacher_dir: str,
    class_words: dict[str, list[str]] | None = None,
) -> str:
    """Which generations these are: students trained on them are valid only for them."""
    from raydistill.pipelines.class_words import CLASS_WORDS_VERSION
    from raydistill.pipelines.fluency import FLUENCY_VERSION

    words = {"class_words": [CLASS_WORDS_VERSION, class_words]} if class_words else {}
    gen = dict(cfg.method.counterfactuals.__dict__)
    if gen["shown_paragraphs"] is None:
        del gen["shown_paragraphs"]  # added later: unset, the cached records are still these
    if gen["fluency_model"] is None:
        # No fluency ranking: the selection is the one before fluency existed, and so is
        # the key (records cached then are still these).
        del gen["fluency_model"], gen["min_fluency_delta"]
    else:
        # Ranking by fluency changes which flip is kept: the model, the threshold and
        # how fluency is scored are part of what the records are.
        gen["fluency_version"] = FLUENCY_VERSION
    return stable_hash(
        {
            "task": spec.name,
            "backend": cfg.pool.backend,
            "model": cfg.pool.model,
            "url": cfg.pool.url,
            "gen": gen,
            "teacher": teacher_dir,
            "prompt": PROMPT_VERSION,
            **words,
        }
    )


def generate_cached(
    cfg: RunConfig,
    spec: Any,
    seeds: list[dict[str, Any]],
    teacher_dir: str,
    class_words: dict[str, list[str]] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Generate counterfactuals for seeds not in the record cache; start the pool only if
    some are missing (and even then, requests already answered come from the request
    cache). The class words the prompts used are kept beside the cached records."""
    from raydistill.pipelines.counterfactual_records import normalize_record
    from raydistill.pipelines.counterfactuals import (
        generate_counterfactuals,
        load_records,
        save_records,
    )

    key = generation_key(cfg, spec, teacher_dir, class_words)
    path = cfg.resolved_cache_dir() / "counterfactuals" / f"{spec.name}-{key}.parquet"
    cached: dict[str, list[dict[str, Any]]] = {}
    for r in load_records(path) if path.exists() else []:
        cached.setdefault(r["parent_id"], []).append(normalize_record(r))
    missing = [s for s in seeds if s["id"] not in cached]
    if class_words is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".class_words.json").write_text(json.dumps(class_words, indent=1))
    summary: dict[str, Any] = {}
    if missing:
        print(
            f"[raydistill] generating counterfactuals for {len(missing)} seeds "
            f"({len(seeds) - len(missing)} cached) with {cfg.pool.backend}:{cfg.pool.model}",
            flush=True,
        )
        with stages.generator(cfg) as (llm, startup):
            records, stats = generate_counterfactuals(
                missing,
                spec,
                llm,
                teacher_dir,
                cfg.method.counterfactuals,
                source=f"llm:{cfg.pool.model}",
                teacher_max_length=cfg.teacher.max_length,
                teacher_num_gpus=cfg.teacher.num_gpus,
                teacher_num_cpus=cfg.teacher.num_cpus,
                progress=lambda msg: print(f"[raydistill] {msg}", flush=True),
                class_words=class_words,
                fluency_dir=fluency_dir(cfg),
            )
        fresh: dict[str, list[dict[str, Any]]] = {}
        for r in records:
            fresh.setdefault(r["parent_id"], []).append(r)
        cached.update(fresh)
        save_records([r for rs in cached.values() for r in rs], path)
        summary = stats.summary()
        summary["pool_startup_s"] = round(startup.seconds, 1)
    records = [r for s in seeds for r in cached[s["id"]]]
    # Stats over exactly the seeds of this run (cached ones included); with targets: all,
    # "seeds" counts (seed, target class) items and "seed_rows" the seeds.
    flipped = [r for r in records if r["flipped"]]
    gen = cfg.method.counterfactuals
    unfiltered = sum(bool(r["flip_unfiltered"]) for r in records)
    full = {
        "seed_rows": len(seeds),
        "targets": cfg.method.counterfactuals.targets,
        "seeds": len(records),
        "flipped": len(flipped),
        "no_counterfactual": len(records) - len(flipped),
        "flip_rate": round(len(flipped) / len(records), 4) if records else 0.0,
        # Items with a flip before the fluency threshold dropped the non-fluent ones.
        "flip_rate_unfiltered": round(unfiltered / len(records), 4) if records else 0.0,
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
        "cache_key": key,
        "fluency": fluency_summary(
            flipped, model=gen.fluency_model, min_fluency_delta=gen.min_fluency_delta
        ),
    }
    return records, full


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
