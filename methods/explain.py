"""Explanation distillation with critique–revision: students that answer and explain.

prepare   CQA + CoS-E splits (dev carved from train for selection; the reported split is
          CQA dev), k training questions per seed;
generate  the teacher LLM's chain per training question through the cached request
          layer (`pipelines/explanations.py`): e = explain(q, a), c = critique(q, a, e),
          e′ = revise(q, a, e, c) only when c names a flaw (length-capped), and
          e* = explain(q, a*) for a wrong choice a* (counterfactual mode);
train     one generative student (seq2seq or causal LM, `training/student_kinds.py`)
          per arm × k × seed on 2 Ray Train workers with DeepSpeed; an arm is
          "<mode>:<source>": mode answer | multitask | cf | multitask+cf, explanation
          source human (CoS-E) | original (e) | revised (e′);
evaluate  answer accuracy and explanation ROUGE-L against the human explanation on the
          reported split; optionally an LLM judge on the study's five dimensions;
report    the mode × source table, the chain's revision rate and length ratio e′/e.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from raydistill.config import ConfigError, ExplainConfig, RunConfig
from raydistill.methods import stages
from raydistill.timing import Stopwatch

DESCRIPTION = (
    "Explanation distillation with critique-revision: the teacher explains, critiques and "
    "selectively revises; seq2seq / causal-LM students learn answer + explanation"
)
MODES = ("answer", "multitask", "cf", "multitask+cf")
SOURCES = ("human", "original", "revised")


def parse_arm(arm: str) -> tuple[str, str]:
    """ "multitask:revised" → ("multitask", "revised"); "answer" → ("answer", "human")."""
    mode, _, source = arm.partition(":")
    source = source or "human"
    if mode not in MODES or source not in SOURCES:
        raise ConfigError(
            f"experiment.arms: {arm!r} is not <mode>:<source> with mode in {', '.join(MODES)} "
            f"and source in {', '.join(SOURCES)}"
        )
    if mode == "answer" and ":" in arm and source != "human":
        raise ConfigError(f"experiment.arms: {arm!r}: answer-only students use no explanation")
    return mode, source


def validate(cfg: RunConfig) -> None:
    from raydistill.pipelines.tasks import spec_for

    if not isinstance(cfg.method, ExplainConfig):
        raise ConfigError(f"method.name must be 'explain' for this method, got {cfg.method.name!r}")
    if not cfg.experiment.arms:
        raise ConfigError("experiment.arms: name at least one <mode>:<source> arm")
    for a in cfg.experiment.arms:
        parse_arm(a)
    kind = spec_for(cfg.data).kind
    if kind != "mcqa":
        raise ConfigError(
            f"method explain needs a multiple-choice QA task; {cfg.data.task} is {kind}"
        )
    if cfg.student.kind not in (None, "seq2seq", "causal_lm"):
        raise ConfigError(
            f"student.kind: explanation students are seq2seq or causal_lm, got {cfg.student.kind}"
        )
    stages.check_model_names(cfg, teacher=False)


@dataclass
class Prepared:
    spec: Any
    rows: dict[str, dict[str, Any]]  # training questions by id
    dev: list[dict[str, Any]]
    test: list[dict[str, Any]]
    plan: dict[tuple[int, int], list[str]]  # (k, seed) → question ids
    chain: dict[str, dict[str, Any]] = field(default_factory=dict)  # id → e, c, e′, e*
    chain_stats: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def wrong_choice(row: dict[str, Any]) -> int:
    """The counterfactual answer a*: the next choice after the gold one."""
    return (int(row["answer"]) + 1) % len(row["choices"])


def prepare(cfg: RunConfig, sw: Stopwatch | None = None) -> Prepared:
    from raydistill.pipelines.kshot import sample_kshot_rows

    sw = sw or Stopwatch()
    validate(cfg)
    splits = stages.load_splits(cfg, sw)
    plan, rows = {}, {}
    for k in cfg.experiment.ks:
        for seed in cfg.experiment.seeds:
            got = sample_kshot_rows(splits.train, k, splits.spec, seed)
            plan[(k, seed)] = [r["id"] for r in got]
            rows.update({r["id"]: r for r in got})
    prep = Prepared(splits.spec, rows, splits.dev, splits.test, plan, timings=sw.t)
    needs_llm = any(
        parse_arm(a)[1] != "human" or "cf" in parse_arm(a)[0] for a in cfg.experiment.arms
    )
    if needs_llm:
        with sw.stage("generate"):
            prep.chain, prep.chain_stats = generate_chain(cfg, list(rows.values()))
        out = Path(cfg.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with (out / "explanations.jsonl").open("w") as f:
            for i, rec in prep.chain.items():
                f.write(json.dumps({"id": i, **rec}) + "\n")
    return prep


def generate_chain(
    cfg: RunConfig, rows: list[dict[str, Any]], llm: Any = None
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """explain → critique → selective revise, and e*, for every row; with stats."""
    if llm is None:
        with stages.generator(cfg) as (client, startup):
            chain, stats = generate_chain(cfg, rows, client)
        return chain, {**stats, "pool_startup_s": round(startup, 1)}
    from raydistill.pipelines.explanations import (
        CRITIQUE_SCHEMA,
        accept_revision,
        critique_messages,
        explain_messages,
        parse_critique,
        parse_explanation,
        revise_messages,
    )
    from raydistill.pipelines.llm_stage import Sampling

    m: ExplainConfig = cfg.method  # type: ignore[assignment]
    rejects: Counter = Counter()
    prompt_tokens: dict[str, int] = {}

    def ask(kind: str, items: list[tuple[str, list]], schema=None) -> dict[str, str | None]:
        sampling = Sampling(
            n=1,
            temperature=m.temperature,
            top_p=m.top_p,
            max_tokens=m.max_new_tokens,
            seed=0,
            json_schema=schema if getattr(llm, "structured_output", False) else None,
        )
        answered = llm.chat([{"key": k, "messages": msgs} for k, msgs in items], sampling)
        prompt_tokens[kind] = int(sum(a.get("prompt_tokens") or 0 for a in answered))
        out = {}
        for a in answered:
            if a.get("llm_error"):
                rejects[f"{kind}:llm_error"] += 1
                out[a["key"]] = None
            else:
                out[a["key"]] = (a.get("candidates") or [None])[0]
        return out

    def q(r):
        return r["question"], list(r["choices"])

    gold = {r["id"]: str(r["choices"][int(r["answer"])]) for r in rows}
    star = {r["id"]: str(r["choices"][wrong_choice(r)]) for r in rows}
    raw = ask(
        "explain",
        [(r["id"], explain_messages(*q(r), gold[r["id"]])) for r in rows]
        + [(r["id"] + "*", explain_messages(*q(r), star[r["id"]])) for r in rows],
    )
    chain: dict[str, dict[str, Any]] = {}
    for r in rows:
        e, why = parse_explanation(raw.get(r["id"]), m.max_explanation_words)
        es, why_s = parse_explanation(raw.get(r["id"] + "*"), m.max_explanation_words)
        if why:
            rejects[f"explain:{why}"] += 1
        if why_s:
            rejects[f"explain_cf:{why_s}"] += 1
        chain[r["id"]] = {"original": e, "cf_answer": wrong_choice(r), "cf_explanation": es}
    have = [r for r in rows if chain[r["id"]]["original"]]
    crit_raw = ask(
        "critique",
        [
            (r["id"], critique_messages(*q(r), gold[r["id"]], chain[r["id"]]["original"]))
            for r in have
        ],
        CRITIQUE_SCHEMA,
    )
    flawed = []
    for r in have:
        c, why = parse_critique(crit_raw.get(r["id"]))
        chain[r["id"]]["critique"] = c
        if c is None:
            rejects[f"critique:{why}"] += 1
        elif c["flaw"]:
            flawed.append(r)
    rev_raw = ask(
        "revise",
        [
            (
                r["id"],
                revise_messages(
                    *q(r),
                    gold[r["id"]],
                    chain[r["id"]]["original"],
                    chain[r["id"]]["critique"]["critique"],
                ),
            )
            for r in flawed
        ],
    )
    revised_n, ratios = 0, []
    for r in rows:
        rec = chain[r["id"]]
        e = rec["original"]
        rec["revised"] = e
        rec["revision"] = "not_needed" if r not in flawed else ""
        if r in flawed:
            new, why = parse_explanation(rev_raw.get(r["id"]), m.max_explanation_words * 2)
            kept, why2 = accept_revision(e, new, m.max_revision_ratio)
            rec["revised"], rec["revision"] = kept, (why or why2 or "revised")
            if rec["revision"] == "revised":
                revised_n += 1
                ratios.append(len(kept.split()) / max(1, len(e.split())))
            else:
                rejects[f"revise:{rec['revision']}"] += 1
    stats = {
        "questions": len(rows),
        "explained": len(have),
        "critiqued": sum(1 for r in have if chain[r["id"]]["critique"] is not None),
        "flawed": len(flawed),
        "revised": revised_n,
        "revision_rate": round(revised_n / len(have), 4) if have else 0.0,
        "length_ratio_revised": round(float(np.mean(ratios)), 3) if ratios else None,
        "mean_words_original": round(
            float(np.mean([len(chain[r["id"]]["original"].split()) for r in have])), 1
        )
        if have
        else None,
        "prompt_tokens": prompt_tokens,
        "rejects": dict(sorted(rejects.items())),
        "llm": llm.stats.summary() if hasattr(llm, "stats") else None,
    }
    return chain, stats


def student_rows(prep: Prepared, ids: list[str], mode: str, source: str) -> list[dict[str, Any]]:
    """Training rows of one arm: the explanation column set from its source, plus the
    counterfactual rows (a wrong choice with its explanation, explanation-only) for cf."""
    out = []
    for i in ids:
        r = dict(prep.rows[i])
        ch = prep.chain.get(i, {})
        if source != "human":
            r["explanation"] = ch.get(source) or ""
        if mode == "answer":
            r["explanation"] = ""
        out.append(r)
        if "cf" in mode and ch.get("cf_explanation"):
            out.append(
                {
                    **prep.rows[i],
                    "id": f"{i}-cf",
                    # The student is told which answer to explain: a* is not the answer.
                    "question": f"{prep.rows[i]['question']} (explain the choice: "
                    f"{prep.rows[i]['choices'][ch['cf_answer']]})",
                    "answer": ch["cf_answer"],
                    "explanation": ch["cf_explanation"],
                    "counterfactual": True,
                }
            )
    return out


def _student_mode(mode: str) -> str:
    return {
        "answer": "answer",
        "multitask": "multitask",
        "cf": "explain",
        "multitask+cf": "multitask",
    }[mode]


def build_jobs(cfg: RunConfig, prep: Prepared) -> list[Any]:
    import dataclasses

    import ray

    from raydistill.registry import resolve_model
    from raydistill.training.loop import TrainJob
    from raydistill.training.student_kinds import job_fields

    s = cfg.student
    refs = ray.put(prep.dev), ray.put(prep.test)
    jobs = []
    for arm in cfg.experiment.arms:
        mode, source = parse_arm(arm)
        fields = job_fields(dataclasses.replace(s, mode=_student_mode(mode)), "mcqa")
        for (k, seed), ids in prep.plan.items():
            jobs.append(
                TrainJob(
                    name=job_name(arm, k, seed),
                    backbone=resolve_model(s.backbone, cfg.resolved_cache_dir()),
                    label_names=[],
                    train_rows=student_rows(prep, ids, mode, source),
                    dev_rows=refs[0],
                    test_rows=refs[1],
                    num_layers=s.num_layers,
                    freeze_embeddings=s.freeze_embeddings,
                    lr=s.lr,
                    head_lr=s.head_lr,
                    weight_decay=s.weight_decay,
                    epochs=s.epochs,
                    batch_size=s.batch_size,
                    max_length=s.max_length,
                    eval_every=s.eval_every,
                    zero_stage=s.zero_stage,
                    seed=s.seed + seed,
                    meta={"arm": arm, "mode": mode, "source": source, "k": k, "seed": seed},
                    **fields,
                )
            )
    return jobs


def job_name(arm: str, k: int, seed: int) -> str:
    return f"{arm.replace(':', '-').replace('+', 'p')}-k{k}-s{seed}"


def signature(cfg: RunConfig, prep: Prepared) -> str:
    from raydistill.cluster.ledger import student_signature
    from raydistill.pipelines.explanations import PROMPT_VERSION

    gen = dict(vars(cfg.method))
    pool = {k: getattr(cfg.pool, k) for k in ("backend", "model", "url")}
    return student_signature(
        cfg, None, {"explain": gen, "generator": pool, "prompt": PROMPT_VERSION}
    )


def _result_row(job: Any, metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        **{k: job.meta[k] for k in ("arm", "mode", "source", "k", "seed")},
        "accuracy": metrics.get("answer_accuracy", metrics.get("score")),
        "answer_parsed": metrics.get("answer_parsed"),
        "explanation_rougeL": metrics.get("explanation_rougeL"),
        "dev_accuracy": metrics["dev_accuracy"],
        "train_rows": metrics["train_rows"],
        "train_s": metrics["train_s"],
    }


def train(cfg: RunConfig, prep: Prepared | None = None, sw=None, callbacks=None):
    from raydistill.cluster.runtime import ensure_ray

    ensure_ray(cfg.cluster)
    sw = sw or Stopwatch()
    prep = prep or prepare(cfg, sw)
    return stages.train_stage(
        cfg, build_jobs(cfg, prep), signature(cfg, prep), _result_row, sw, callbacks
    )


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± sd per (arm, k) over seeds."""
    by: dict[tuple[str, int], list[dict]] = {}
    for r in results:
        by.setdefault((r["arm"], r["k"]), []).append(r)
    out = []
    for (arm, k), rs in sorted(by.items()):
        acc = np.array([r["accuracy"] for r in rs], dtype=float)
        rl = [r["explanation_rougeL"] for r in rs if r.get("explanation_rougeL") is not None]
        out.append(
            {
                "arm": arm,
                "k": k,
                "n": len(rs),
                "accuracy_mean": float(acc.mean()),
                "accuracy_sd": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
                "explanation_rougeL": float(np.nanmean(rl)) if rl else None,
            }
        )
    return out


def run(cfg: RunConfig) -> dict[str, Any]:

    start = stages.start_run(cfg, validate)
    info, out, sw, t0 = start.info, start.out, start.sw, start.t0
    prep = prepare(cfg, sw)
    results = train(cfg, prep, sw)
    sw.t["total"] = round(time.perf_counter() - t0, 2)
    table = summarize(results)
    report = {
        "task": prep.spec.name,
        "method": "explain",
        "summary": table,
        "results": results,
        "chain": prep.chain_stats,
        "timings": sw.t,
        "peak_memory_mb": sw.peak_mb,
        "cluster": info,
        "plots": [],
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    lines = [
        f"# explanation distillation — {prep.spec.name}",
        "",
        "Reported split: CQA dev (never used for selection; dev is carved from train).",
        "",
        "| arm (mode:source) | k | seeds | answer accuracy | ± sd | explanation ROUGE-L vs CoS-E |",
        "|---|---|---|---|---|---|",
    ]
    for t in table:
        rl = "–" if t["explanation_rougeL"] is None else f"{100 * t['explanation_rougeL']:.1f}"
        lines.append(
            f"| {t['arm']} | {t['k']} | {t['n']} | {100 * t['accuracy_mean']:.1f} | "
            f"{100 * t['accuracy_sd']:.1f} | {rl} |"
        )
    c = prep.chain_stats
    if c:
        lines += [
            "",
            "## The teacher's chain",
            "",
            f"- questions {c['questions']}, explained {c['explained']}, critiqued "
            f"{c['critiqued']}, flawed {c['flawed']}, revised {c['revised']} "
            f"(rate {c['revision_rate']}), length ratio e'/e {c['length_ratio_revised']}",
            f"- prompt tokens per call: {c['prompt_tokens']}",
            f"- rejects: {c['rejects']}",
        ]
    lines += ["", "## Stage times (s)", "", *[f"- {k}: {v}" for k, v in sw.t.items()], ""]
    (out / "report.md").write_text("\n".join(lines))
    return report
