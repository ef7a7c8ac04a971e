"""Weakness-targeted augmentation: the student shows where it is weak, the LLM writes more
samples like those, and the loop repeats until the dev metric stops improving.

One round, for every (arm, k, seed) loop still running:
  1. train the student on T_i (round 0: the k labelled seeds, shared by every arm);
  2. error value Err(x) = exp(−h(x)) of each labelled example in the scoring pool (the k
     seeds + `scoring_pool_rows` more labelled train rows; never dev or test);
  3. draw seeds ∝ Err^(1/τ) without replacement (`random` arm: uniformly);
  4. the LLM writes NF × n candidates like them (cached requests, `pipelines/augment.py`);
  5. verify: NER spans by string match, summary bounds, no seed copies; classification: the
     teacher classifier agrees with the intended label;
  6. diversity: MinHash near-duplicates out, then farthest-first in embedding space from
     the labelled data and everything accepted so far (`nodiv` arm: n verified at random);
  7. T_{i+1} = T_i ∪ accepted; stop after `patience` rounds without a dev gain.
The `human` arm trains on the same number of human-labelled rows instead (the method's
labelled-data comparison). Every round's samples are saved with their lineage; a rerun
resumes from the last complete round and retrains no finished student.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from raydistill.config import ConfigError, RunConfig, WeaknessConfig, stable_hash
from raydistill.methods import stages
from raydistill.timing import Stopwatch

DESCRIPTION = (
    "Weakness-targeted augmentation: the student's errors pick seeds, the LLM writes new "
    "labelled samples like them, verified diverse ones are added each round until dev plateaus"
)
KINDS = ("classification", "token_classification", "seq2seq")


@dataclass(frozen=True)
class Arm:
    seeding: str | None  # "error" | "random" | None (no generation)
    diversity: bool = True
    human: bool = False


ARMS: dict[str, Arm] = {
    "loop": Arm("error", True),
    "random": Arm("random", True),
    "nodiv": Arm("error", False),
    "human": Arm(None, False, human=True),
}
BASELINE = "fewshot"  # round 0: the k labelled seeds alone


def validate(cfg: RunConfig) -> None:
    from raydistill.pipelines.tasks import spec_for

    m = cfg.method
    if not isinstance(m, WeaknessConfig):
        raise ConfigError(f"method.name must be 'weakness' for this method, got {m.name!r}")
    bad = [a for a in cfg.experiment.arms if a not in ARMS]
    if bad or not cfg.experiment.arms:
        raise ConfigError(
            f"experiment.arms: {bad or '[]'} not weakness arms; choose from {', '.join(ARMS)}"
        )
    kind = spec_for(cfg.data).kind
    if kind not in KINDS:
        raise ConfigError(f"method weakness supports {', '.join(KINDS)}; {cfg.data.task} is {kind}")
    if m.verify not in ("teacher", "none"):
        raise ConfigError(f"method.verify: {m.verify!r} is not one of teacher, none")
    for key in ("max_rounds", "samples_per_round", "seeds_per_round"):
        if int(getattr(m, key)) < 1:
            raise ConfigError(f"method.{key} must be >= 1, got {getattr(m, key)}")
    if m.patience < 1 or m.oversample < 1 or m.seed_temperature <= 0:
        raise ConfigError("method.patience >= 1, method.oversample >= 1, seed_temperature > 0")
    stages.check_model_names(cfg, extra={"method.embedding_model": m.embedding_model})


@dataclass
class Prepared:
    spec: Any
    teacher: stages.Teacher | None
    rows: dict[str, dict[str, Any]]  # every labelled train row this run uses, by id
    dev: list[dict[str, Any]]
    test: list[dict[str, Any]]
    kshot: dict[tuple[int, int], list[str]]
    scoring: dict[tuple[int, int], list[str]]  # the labelled pool scored for seeding
    human: dict[tuple[int, int], list[str]]  # human-labelled rows, in the order added
    timings: dict[str, float] = field(default_factory=dict)


def _classification(prep_or_spec: Any) -> bool:
    spec = getattr(prep_or_spec, "spec", prep_or_spec)
    return spec.kind == "classification"


def prepare(cfg: RunConfig, sw: Stopwatch | None = None) -> Prepared:
    """Splits, the teacher (classification), the k-shot seeds, scoring and human pools."""
    from raydistill.pipelines.kshot import sample_kshot_rows

    sw = sw or Stopwatch()
    validate(cfg)
    m: WeaknessConfig = cfg.method  # type: ignore[assignment]
    splits = stages.load_splits(cfg, sw)
    cls = _classification(splits.spec)
    by_id = {r["id"]: r for r in splits.train}
    kshot, scoring, human = {}, {}, {}
    need_human = "human" in cfg.experiment.arms
    for k in cfg.experiment.ks:
        for seed in cfg.experiment.seeds:
            seeds = sample_kshot_rows(splits.train, k, splits.spec, seed)
            ids = [r["id"] for r in seeds]
            rest = [r["id"] for r in splits.train if r["id"] not in set(ids)]
            order = np.random.default_rng(1000 + seed).permutation(len(rest))
            pool = [rest[i] for i in order[: m.scoring_pool_rows]]
            extra = m.max_rounds * m.samples_per_round if need_human else 0
            hum = [rest[i] for i in order[m.scoring_pool_rows : m.scoring_pool_rows + extra]]
            kshot[(k, seed)], scoring[(k, seed)], human[(k, seed)] = ids, pool, hum
    # The seeds are drawn before the teacher trains: an infeasible k fails in seconds.
    teacher = (
        stages.teacher_stage(cfg, splits, sw)
        if cls and (m.verify == "teacher" or cfg.student.alpha > 0)
        else None
    )
    used = {i for d in (kshot, scoring, human) for ids in d.values() for i in ids}
    rows = {i: by_id[i] for i in used}
    dev, test = splits.dev, splits.test
    if teacher is not None:
        ann = stages.annotate_stage(
            cfg, teacher, {"train": list(rows.values()), "dev": dev, "test": test}, False, sw
        )
        rows = {r["id"]: stages.slim(r) for r in ann["train"]}
        dev, test = [stages.slim(r) for r in ann["dev"]], [stages.slim(r) for r in ann["test"]]
    return Prepared(splits.spec, teacher, rows, dev, test, kshot, scoring, human, sw.t)


# ------------------------------------------------------------------ students


def job_name(arm: str, k: int, seed: int, rnd: int) -> str:
    return f"{BASELINE if rnd == 0 else arm}-k{k}-s{seed}-r{rnd}"


def _job(cfg: RunConfig, prep: Prepared, name: str, rows: list[dict], meta: dict, refs) -> Any:
    from raydistill.registry import resolve_model
    from raydistill.training.loop import TrainJob

    s = cfg.student
    kind_fields: dict[str, Any] = {}
    if not _classification(prep):
        from raydistill.training.student_kinds import job_fields

        kind_fields = job_fields(s, prep.spec.kind)
    alpha = s.alpha if prep.teacher is not None and all("teacher_logits" in r for r in rows) else 0
    return TrainJob(
        name=name,
        backbone=resolve_model(s.backbone, cfg.resolved_cache_dir()),
        label_names=list(prep.spec.label_names),
        train_rows=[dict(r) for r in rows],
        dev_rows=refs[0],
        test_rows=refs[1],
        num_layers=s.num_layers,
        pooling=s.pooling,
        freeze_embeddings=s.freeze_embeddings,
        alpha=alpha,
        temperature=s.temperature,
        lr=s.lr,
        head_lr=s.head_lr,
        weight_decay=s.weight_decay,
        epochs=s.epochs,
        batch_size=s.batch_size,
        max_length=s.max_length,
        eval_every=s.eval_every,
        zero_stage=s.zero_stage,
        precision=s.precision,
        seed=s.seed + meta["seed"],
        meta=meta,
        **kind_fields,
    )


def _result_row(job: Any, metrics: dict[str, Any]) -> dict[str, Any]:
    score = metrics.get("score", metrics.get("accuracy"))
    return {
        "arm": job.meta["arm"],
        "k": job.meta["k"],
        "seed": job.meta["seed"],
        "round": job.meta["round"],
        "train_size": metrics["train_rows"],
        "generated": job.meta["generated"],
        "test_score": score,
        "dev_score": metrics["dev_accuracy"],
        "train_s": metrics["train_s"],
        # The optimizer steps' share of train_s (the rest: model build, dev and test
        # evaluation), so a report can say where a student's time went.
        **{k: metrics[k] for k in ("step_s", "steps") if k in metrics},
        **{k: v for k, v in metrics.items() if k in ("accuracy", "entity_f1", "rougeL")},
    }


def signature(cfg: RunConfig, prep: Prepared) -> str:
    from raydistill.cluster.ledger import student_signature

    # A round's students depend on the generation settings and the generator, not on how
    # many rounds may follow: growing max_rounds or patience resumes, it does not retrain.
    # `ner_name_checks` enters below, for NER only, so other tasks keep their signature.
    skip = ("max_rounds", "patience", "ner_name_checks")
    gen = {k: v for k, v in vars(cfg.method).items() if k not in skip}
    pool = {k: getattr(cfg.pool, k) for k in ("backend", "model", "url")}
    extra: dict[str, Any] = {"weakness": gen, "generator": pool, "version": "weakness-v1"}
    if prep.spec.kind == "token_classification":
        # NER samples since the entity-type enum in the JSON schema: other generations,
        # so other students (classification and summary schemas did not change).
        extra["schema"] = "ner-type-enum"
        if cfg.method.ner_name_checks:
            # Capitalised entities that agree with the seed's labels: other accepted
            # samples than before the checks, so other students (off: the old ones).
            # v2: lower-case occurrences of a stated name are not tagged.
            extra["ner_checks"] = "names-v2"
    if prep.spec.kind == "seq2seq":
        # Summaries that echo the prompt's instruction are refused since, and overlap is
        # counted in content words since: other accepted samples, so other students.
        extra["summary_checks"] = "instruction-echo+content-words"
    return student_signature(cfg, prep.teacher.path if prep.teacher else None, extra)


# ------------------------------------------------------------------ error values


def quality(prep: Prepared, ckpt: str, rows: list[dict], max_length: int) -> np.ndarray:
    """h(x) in [0, 1] per row: gold-label probability, entity F1 or ROUGE-L."""
    if _classification(prep):
        from raydistill.training.classifier import Classifier, softmax

        clf = Classifier(ckpt, max_length=max_length)
        p = softmax(clf.logits([r["text"] for r in rows]))
        return np.array([p[i, int(r["label"])] for i, r in enumerate(rows)])
    from raydistill.training.student_kinds import per_example_quality

    return np.asarray(per_example_quality(ckpt, rows), dtype=float)


# ------------------------------------------------------------------ one round


def _write_json(path: Path, obj: Any) -> None:
    """Atomic: a crash leaves the old file or none, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, default=str))
    os.replace(tmp, path)


def teacher_check(cfg: RunConfig, prep: Prepared, cands: list[dict]) -> None:
    """Classification: the teacher classifier must agree with each verified candidate's
    intended label (`method.verify: teacher`); verdicts and teacher columns are set in
    place. One Ray Data pass for every loop's candidates of a round, not one per loop."""
    from raydistill.pipelines.soft_labels import annotate_rows

    m: WeaknessConfig = cfg.method  # type: ignore[assignment]
    ok = [c for c in cands if c["verdict"] == "verified"]
    if not (_classification(prep) and prep.teacher is not None and ok):
        return
    ann = {
        r["id"]: r
        for r in annotate_rows(
            [{k: c[k] for k in ("id", "text", "label")} for c in ok],
            prep.teacher.path,
            max_length=cfg.teacher.max_length,
            num_cpus=cfg.teacher.num_cpus,
            num_gpus=cfg.teacher.num_gpus,
        )
    }
    for c in ok:
        a = ann[c["id"]]
        if m.verify == "teacher" and int(a["teacher_pred"]) != int(c["label"]):
            c.update(verdict="rejected", reason="teacher_disagrees")
            continue
        c["teacher_logits"] = list(map(float, a["teacher_logits"]))
        c["teacher_pred"] = int(a["teacher_pred"])


def select(
    cfg: RunConfig, prep: Prepared, arm: Arm, cands: list[dict], reference: list[dict], seed: int
) -> tuple[list[dict], dict[str, int]]:
    """The diversity filter over candidates that passed every check (`teacher_check`
    first, for classification); verdicts are updated in place. Returns (accepted,
    counts by step)."""
    from raydistill.pipelines.diversity import embed, farthest_first, near_duplicates

    m: WeaknessConfig = cfg.method  # type: ignore[assignment]
    ok = [c for c in cands if c["verdict"] == "verified"]
    counts = {
        "kind_checks_passed": len(ok) + sum(c.get("reason") == "teacher_disagrees" for c in cands),
        "label_verified": len(ok),
    }
    n = m.samples_per_round
    if arm.diversity and ok:
        dup = near_duplicates(
            [c["text"] for c in ok], [r["text"] for r in reference], m.minhash_threshold
        )
        for c, d in zip(ok, dup, strict=True):
            if d:
                c.update(verdict="rejected", reason="near_duplicate")
        ok = [c for c, d in zip(ok, dup, strict=True) if not d]
        counts["after_dedupe"] = len(ok)
        from raydistill.registry import resolve_model

        model = resolve_model(m.embedding_model, cfg.resolved_cache_dir())
        emb = embed([c["text"] for c in ok] + [r["text"] for r in reference], model)
        picked = farthest_first(emb[: len(ok)], emb[len(ok) :], n) if ok else []
    else:
        picked = list(np.random.default_rng(seed).permutation(len(ok))[:n])
    keep = {int(i) for i in picked}
    accepted = []
    for i, c in enumerate(ok):
        if i in keep:
            c["verdict"] = "accepted"
            accepted.append(c)
        else:
            c.update(verdict="rejected", reason="not_selected")
    counts["accepted"] = len(accepted)
    return accepted, counts


def generate_round(cfg, prep, loops, rnd, students, llm, root) -> None:
    """Seeds, candidates and accepted samples of round `rnd` for each loop; saved per loop.

    Three passes over the loops: seeds from each loop's own student; one LLM call for
    every loop's prompts (each loop keeps its own sampling seed) and one teacher pass for
    every candidate; then each loop's diversity selection and round file."""
    from raydistill.pipelines.augment import Request, candidates_per_seed, generate_many
    from raydistill.pipelines.error_values import error_values, histogram, sample_seeds

    m: WeaknessConfig = cfg.method  # type: ignore[assignment]
    plans = []
    for (arm_name, k, seed), _state in loops.items():
        t0 = time.perf_counter()
        pool_ids = prep.kshot[(k, seed)] + prep.scoring[(k, seed)]
        pool = [prep.rows[i] for i in pool_ids]
        h = quality(prep, students[(arm_name, k, seed)], pool, cfg.student.max_length)
        err = error_values(h)
        picked = sample_seeds(
            pool_ids,
            err,
            m.seeds_per_round,
            temperature=m.seed_temperature,
            seed=stable_int(arm_name, k, seed, rnd),
            uniform=ARMS[arm_name].seeding == "random",
        )
        request = Request(
            [prep.rows[i] for i in picked],
            rnd,
            arm_name,
            candidates_per_seed(m.samples_per_round, len(picked), m.oversample),
            stable_int(arm_name, k, seed, rnd) % (2**31),
        )
        plans.append(((arm_name, k, seed), picked, err, request, time.perf_counter() - t0))
    t0 = time.perf_counter()
    generated = generate_many(
        [p[3] for p in plans],
        prep.spec,
        llm,
        temperature=m.temperature,
        top_p=m.top_p,
        max_new_tokens=m.max_new_tokens,
        max_seed_chars=m.max_seed_chars,
        ner_name_checks=m.ner_name_checks,
    )
    teacher_check(cfg, prep, [c for cands, _ in generated for c in cands])
    shared_s = (time.perf_counter() - t0) / max(1, len(plans))
    for ((arm_name, k, seed), picked, err, _req, own_s), (cands, stats) in zip(
        plans, generated, strict=True
    ):
        t1 = time.perf_counter()
        reference = [prep.rows[i] for i in prep.kshot[(k, seed)]] + loops[(arm_name, k, seed)][
            "generated"
        ]
        accepted, counts = select(cfg, prep, ARMS[arm_name], cands, reference, seed + rnd)
        record = {
            "round": rnd,
            "seeds": picked,
            "error_mean": float(err.mean()),
            "error_hist": histogram(err),
            "stats": {**stats.summary(), **counts},
            # This loop's own work plus an equal share of the round's shared calls.
            "seconds": round(own_s + shared_s + time.perf_counter() - t1, 1),
            "candidates": cands,
        }
        _write_json(root / f"{arm_name}-k{k}-s{seed}" / f"round_{rnd}.json", record)


def reused_row(prev: dict[str, Any], arm: str, rnd: int) -> dict[str, Any]:
    """Round `rnd`'s result for a loop whose training set did not change: the previous
    round's student and scores under this round's name, with no training time. Its dev
    score ties the previous one, so the plateau rule counts the round as no gain."""
    row = {k: v for k, v in prev.items() if k not in ("step_s", "steps")}
    name = job_name(arm, prev["k"], prev["seed"], rnd)
    return {**row, "job": name, "arm": arm, "round": rnd, "train_s": 0.0, "reused": prev["job"]}


def plateau_step(state: dict[str, Any], dev_score: float, rnd: int, patience: int) -> None:
    """Record round `rnd`'s dev score: a strict gain becomes the kept round; `patience`
    rounds in a row without one stop the loop (ties are not gains: a round that only
    matches the best adds data without evidence it helps)."""
    if dev_score > state["best"][0]:
        state["best"], state["bad"] = (dev_score, rnd), 0
    else:
        state["bad"] += 1
        state["stopped"] = state["bad"] >= patience


def stable_int(*parts: Any) -> int:
    return int(stable_hash(list(map(str, parts)))[:8], 16)


# ------------------------------------------------------------------ the loop


def run(cfg: RunConfig) -> dict[str, Any]:
    """The whole weakness loop; returns the report dict (also written to out_dir)."""
    import ray

    from raydistill.cluster.weakness_report import write_report

    start = stages.start_run(cfg, validate)
    info, out, sw, t0 = start.info, start.out, start.sw, start.t0
    m: WeaknessConfig = cfg.method  # type: ignore[assignment]
    prep = prepare(cfg, sw)
    sig = signature(cfg, prep)
    root = out / "weakness" / sig[:12]
    refs = (ray.put(prep.dev), ray.put(prep.test))
    keys = [(k, s) for k in cfg.experiment.ks for s in cfg.experiment.seeds]
    gen_arms = [a for a in cfg.experiment.arms if not ARMS[a].human]
    loops = {
        (a, k, s): {"generated": [], "history": [], "best": (-1.0, 0), "bad": 0, "stopped": False}
        for a in cfg.experiment.arms
        for k, s in keys
    }

    def meta(arm, k, s, rnd, gen):
        return {"arm": arm if rnd else BASELINE, "k": k, "seed": s, "round": rnd, "generated": gen}

    # Round 0: one few-shot student per (k, seed), shared by every arm.
    jobs = [
        _job(
            cfg,
            prep,
            job_name("", k, s, 0),
            [prep.rows[i] for i in prep.kshot[(k, s)]],
            meta("", k, s, 0, 0),
            refs,
        )
        for k, s in keys
    ]
    results = stages.train_stage(cfg, jobs, sig, _result_row, sw)
    by_job = {r["job"]: r for r in results}
    students = {}
    for (a, k, s), st in loops.items():
        r0 = by_job[job_name(a, k, s, 0)]
        st["history"].append(r0)
        st["best"] = (r0["dev_score"], 0)
        st["train_ids"] = list(prep.kshot[(k, s)])
        students[(a, k, s)] = r0["checkpoint"]
    rounds_done = 0
    for rnd in range(1, m.max_rounds + 1):
        active = {key: st for key, st in loops.items() if not st["stopped"]}
        if not active:
            break
        rounds_done = rnd
        todo = {
            key: st
            for key, st in active.items()
            if key[0] in gen_arms
            and not (root / f"{key[0]}-k{key[1]}-s{key[2]}" / f"round_{rnd}.json").exists()
        }
        if todo:
            with sw.stage("generate"), stages.generator(cfg) as (llm, startup):
                generate_round(cfg, prep, todo, rnd, students, llm, root)
            sw.t["pool_startup_s"] = round(sw.t.get("pool_startup_s", 0) + startup.seconds, 1)
        jobs, reused = [], {}
        for (a, k, s), st in active.items():
            base = [prep.rows[i] for i in prep.kshot[(k, s)]]
            if ARMS[a].human:
                ref = loops.get(("loop", k, s))
                size = len(ref["generated"]) if ref else rnd * m.samples_per_round
                extra = [prep.rows[i] for i in prep.human[(k, s)][:size]]
                gen = []
            else:
                rec = json.loads((root / f"{a}-k{k}-s{s}" / f"round_{rnd}.json").read_text())
                new = [c for c in rec["candidates"] if c["verdict"] == "accepted"]
                st["generated"] = st["generated"] + [_task_row(c) for c in new]
                extra, gen = [], st["generated"]
            rows = base + extra + gen
            ids = [r["id"] for r in rows]
            if ids == st["train_ids"]:
                # Nothing accepted this round: the same rows would train the same student
                # (one BBC headline round spent 6 min on two such students).
                reused[job_name(a, k, s, rnd)] = reused_row(st["history"][-1], a, rnd)
                continue
            st["train_ids"] = ids
            jobs.append(
                _job(cfg, prep, job_name(a, k, s, rnd), rows, meta(a, k, s, rnd, len(gen)), refs)
            )
        results = stages.train_stage(cfg, jobs, sig, _result_row, sw) if jobs else []
        by_job = {**reused, **{r["job"]: r for r in results}}
        for (a, k, s), st in active.items():
            row = by_job[job_name(a, k, s, rnd)]
            st["history"].append(row)
            students[(a, k, s)] = row["checkpoint"]
            plateau_step(st, row["dev_score"], rnd, m.patience)
        # The human arm follows its loop arm's length (equal-size comparison).
        for (a, k, s), st in loops.items():
            if ARMS[a].human and ("loop", k, s) in loops:
                st["stopped"] = loops[("loop", k, s)]["stopped"]
    sw.t["total"] = round(time.perf_counter() - t0, 2)
    return write_report(
        out,
        cfg=cfg,
        spec=prep.spec,
        loops=loops,
        rounds_dir=root,
        teacher_info=prep.teacher.info if prep.teacher else None,
        timings=sw.t,
        peak_memory_mb=sw.peak_mb,
        cluster=info,
        rounds_done=rounds_done,
    )


TASK_COLUMNS = (
    "id",
    "text",
    "text_pair",
    "label",
    "tokens",
    "tags",
    "source",
    "target",
    "teacher_logits",
    "teacher_pred",
    "parent_id",
    "round",
)


def _task_row(c: dict[str, Any]) -> dict[str, Any]:
    """An accepted candidate as a training row (its lineage columns stay in the round file)."""
    return {k: c[k] for k in TASK_COLUMNS if k in c}


def train(cfg: RunConfig, prep: Prepared | None = None, sw=None, callbacks=None):
    """For Ray Tune: the loop is its own training schedule, so a trial runs it whole."""
    return run(cfg)["results"]
