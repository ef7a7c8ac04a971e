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
evaluate  answer accuracy, explanation ROUGE-L and embedding cosine against the human
          explanation and length on the reported split, from the generations scored in
          training (the first `judge_examples` kept per student); with `method.judge`,
          an LLM judge through the pool scores kept student explanations and the
          teacher's human / original / revised ones 1–5 on the study's five dimensions
          (two samples each: parse rate and agreement reported);
report    `cluster/explain_report.py`: the mode × source table, a PNG, examples, the
          chain's revision rate, length ratio e′/e and prompt-prefix reuse per call.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
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
# ExplainConfig fields that shape the evaluation only (not in the students' signature).
EVAL_FIELDS = frozenset(
    {
        "judge",
        "judge_examples",
        "judge_questions",
        "judge_samples",
        "judge_temperature",
        "judge_max_tokens",
        "embedding_model",
    }
)
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
    stages.check_model_names(
        cfg, teacher=False, extra={"method.embedding_model": cfg.method.embedding_model}
    )


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
    needs_llm = any(uses_llm(*parse_arm(a)) for a in cfg.experiment.arms)
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
        return chain, {**stats, "pool_startup_s": round(startup.seconds, 1)}
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
    sent: list[tuple[str, list]] = []  # (call, messages of each request) in sending order

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
        sent.append((kind, [msgs for _, msgs in items]))
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
        # Why not revised: no flaw found, no usable verdict (counted), nothing to critique.
        if r in flawed:
            rec["revision"] = ""
        elif not e:
            rec["revision"] = "no_explanation"
        else:
            rec["revision"] = "not_needed" if rec.get("critique") else "no_verdict"
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
        "prefix": prefix_stats(cfg, sent),
        "rejects": dict(sorted(rejects.items())),
        "llm": llm.stats.summary() if hasattr(llm, "stats") else None,
    }
    return chain, stats


def prefix_stats(cfg: RunConfig, sent: list[tuple[str, list]]) -> dict[str, Any]:
    """Prompt tokens each chain call shares with earlier prompts (the pool model's chat
    template, tokenized here: computed, not read from the engine), and what the pool's
    prefix cache could reuse of them."""
    from raydistill.pipelines.explanations import prefix_caching, prefix_reuse

    caching = prefix_caching(cfg.pool)
    if cfg.pool.backend == "openai":
        return {"caching": caching, "skipped": "pool.backend=openai: no local tokenizer"}
    try:
        from transformers import AutoTokenizer

        from raydistill.registry import resolve_model

        tok = AutoTokenizer.from_pretrained(resolve_model(cfg.pool.model, cfg.resolved_cache_dir()))
        if not getattr(tok, "chat_template", None):
            return {"caching": caching, "skipped": f"{cfg.pool.model} has no chat template"}
    except Exception as e:  # noqa: BLE001 - the stats are optional; the chain is done
        return {"caching": caching, "skipped": f"tokenizer of {cfg.pool.model}: {e}"}

    def ids(msgs: list) -> list[int]:
        text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        return tok(text, add_special_tokens=False)["input_ids"]

    calls = [(kind, [ids(m) for m in msgs]) for kind, msgs in sent]
    block = caching["block_size"] if caching["enabled"] else None
    return {"caching": caching, "calls": prefix_reuse(calls, block)}


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

    s, m = cfg.student, cfg.method
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
                    precision=s.precision,
                    seed=s.seed + seed,
                    meta={"arm": arm, "mode": mode, "source": source, "k": k, "seed": seed},
                    keep_examples=int(getattr(m, "judge_examples", 0)),
                    **fields,
                )
            )
    return jobs


def job_name(arm: str, k: int, seed: int) -> str:
    return f"{arm.replace(':', '-').replace('+', 'p')}-k{k}-s{seed}"


def uses_llm(mode: str, source: str) -> bool:
    """Whether an arm's students learn from the teacher LLM's output (its explanations,
    or the counterfactual ones); answer-only and human-explanation arms do not."""
    return source != "human" or "cf" in mode


def signature(cfg: RunConfig, prep: Prepared | None, job: Any = None) -> str:
    """The ledger signature of `job` (of the LLM-taught students when `job` is None).

    A student that learns from no LLM output keeps its result whatever the chain's
    prompts, generator and sampling were: a prompt change retrains only the arms that
    read the chain (before, it retrained the answer-only and human arms as well).
    """
    from raydistill.cluster.ledger import student_signature
    from raydistill.pipelines.explanations import PROMPT_VERSION

    if job is not None and not uses_llm(job.meta["mode"], job.meta["source"]):
        return student_signature(cfg, None, {"explain": "no LLM output"})
    # Evaluation-only fields stay out: turning the judge on must not retrain students.
    gen = {k: v for k, v in vars(cfg.method).items() if k not in EVAL_FIELDS}
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
        # The first judge_examples generations, and every generated explanation (for the
        # cosine and length; dropped from report.json, kept in results.jsonl).
        "examples": metrics.get("examples"),
        "explanations": metrics.get("explanations"),
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
        cfg, build_jobs(cfg, prep), partial(signature, cfg, prep), _result_row, sw, callbacks
    )


def explanation_quality(cfg: RunConfig, prep: Prepared, results: list[dict[str, Any]]) -> dict:
    """Adds explanation_cosine / _words / _empty to each student's row (its generated
    explanations against human CoS-E on the reported split); returns the same for the
    teacher's original and revised explanations of the training questions."""
    from raydistill.pipelines.diversity import embed
    from raydistill.pipelines.explanations import explanation_similarity
    from raydistill.registry import resolve_model

    m: ExplainConfig = cfg.method  # type: ignore[assignment]
    todo = [
        r for r in results if r.get("explanations") and len(r["explanations"]) == len(prep.test)
    ]
    if not todo and not prep.chain:
        return {}
    model = resolve_model(m.embedding_model, cfg.resolved_cache_dir())
    memo: dict[str, Any] = {}

    def embed_memo(texts: list[str]) -> list[Any]:
        new = [t for t in texts if t not in memo]
        memo.update(zip(new, embed(new, model), strict=True))
        return [memo[t] for t in texts]

    refs = [str(r.get("explanation") or "") for r in prep.test]
    for r in todo:
        q = explanation_similarity(r["explanations"], refs, embed_memo)
        r.update({f"explanation_{k}": q[k] for k in ("cosine", "words", "empty")})
    ids = sorted(i for i, c in prep.chain.items() if c.get("original"))
    human = [str(prep.rows[i].get("explanation") or "") for i in ids]
    return {
        src: explanation_similarity([prep.chain[i].get(src) or "" for i in ids], human, embed_memo)
        for src in ("original", "revised")
        if ids
    }


def judge_stage(
    cfg: RunConfig, prep: Prepared, results: list[dict[str, Any]], llm: Any = None
) -> dict[str, Any]:
    """The LLM judge (`pipelines/explanations.py`) on every explaining student's kept
    generations and on the teacher's human / original / revised explanations."""
    if llm is None:
        with stages.generator(cfg) as (client, startup):
            out = judge_stage(cfg, prep, results, client)
        return {**out, "pool_startup_s": round(startup.seconds, 1)}
    from raydistill.pipelines.explanations import (
        PROMPT_VERSION,
        item_means,
        judge_items,
        judge_messages,
        judge_paired,
        judge_summary,
        student_judge_items,
        teacher_judge_items,
        teacher_judge_questions,
    )

    m: ExplainConfig = cfg.method  # type: ignore[assignment]
    students, skipped = student_judge_items(results, {str(r["id"]): r for r in prep.test})
    revised, unrevised = teacher_judge_questions(prep.chain, m.judge_questions)
    teacher = teacher_judge_items(prep.rows, prep.chain, revised + unrevised)
    judged = judge_items(
        llm,
        students + teacher,
        samples=m.judge_samples,
        temperature=m.judge_temperature,
        top_p=m.top_p,
        max_tokens=m.judge_max_tokens,
    )
    rev = set(revised)
    on_revised = [
        j for j in judged if j["group"].startswith("teacher ") and j["key"].split("|", 1)[1] in rev
    ]
    groups = judge_summary(judged)
    example = judge_messages("<question>", ["<choice a>", "<choice b>"], "<answer>", "<e>")
    return {
        "prompt_version": PROMPT_VERSION,
        "prompt": "\n".join(f"[{x['role']}] {x['content']}" for x in example),
        "samples": m.judge_samples,
        "temperature": m.judge_temperature,
        "groups": groups,
        "students_not_judged": skipped,
        "teacher_questions": {"revised": len(revised), "unrevised": len(unrevised)},
        "original_vs_revised": judge_paired(on_revised, "teacher original", "teacher revised"),
        "item_means": {j["key"]: item_means(j) for j in judged},
        "llm": llm.stats.summary() if hasattr(llm, "stats") else None,
    }


def summarize(results: list[dict[str, Any]], judge: dict | None = None) -> list[dict[str, Any]]:
    """Mean ± sd of accuracy per (arm, k) over seeds; explanation metrics' means; the
    judge's means and parse rate for the arm's kept explanations."""
    from raydistill.pipelines.explanations import student_group

    by: dict[tuple[str, int], list[dict]] = {}
    for r in results:
        by.setdefault((r["arm"], r["k"]), []).append(r)
    groups = (judge or {}).get("groups", {})

    def mean_of(rs: list[dict], key: str) -> float | None:
        xs = [r[key] for r in rs if r.get(key) is not None]
        return float(np.nanmean(xs)) if xs else None

    out = []
    for (arm, k), rs in sorted(by.items()):
        acc = np.array([r["accuracy"] for r in rs], dtype=float)
        g = groups.get(student_group(arm, k)) or {}
        out.append(
            {
                "arm": arm,
                "k": k,
                "n": len(rs),
                "accuracy_mean": float(acc.mean()),
                "accuracy_sd": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
                **{
                    f"explanation_{x}": mean_of(rs, f"explanation_{x}")
                    for x in ("rougeL", "cosine", "words", "empty")
                },
                "judge": g.get("means"),
                "judge_parse_rate": g.get("parse_rate"),
            }
        )
    return out


def run(cfg: RunConfig) -> dict[str, Any]:
    from raydistill.cluster.explain_report import examples, teacher_examples, write_report

    start = stages.start_run(cfg, validate)
    info, out, sw, t0 = start.info, start.out, start.sw, start.t0
    m: ExplainConfig = cfg.method  # type: ignore[assignment]
    prep = prepare(cfg, sw)
    results = train(cfg, prep, sw)
    with sw.stage("quality"):
        teacher_quality = explanation_quality(cfg, prep, results)
    judge = None
    if m.judge:
        with sw.stage("judge"):
            judge = judge_stage(cfg, prep, results)
    sw.t["total"] = round(time.perf_counter() - t0, 2)
    report = {
        "task": prep.spec.name,
        "method": "explain",
        "summary": summarize(results, judge),
        "results": [{k: v for k, v in r.items() if k != "explanations"} for r in results],
        "chain": {**prep.chain_stats, "quality": teacher_quality} if prep.chain_stats else {},
        "judge": judge,
        "examples": examples(prep.test, results),
        "teacher_examples": teacher_examples(prep.rows, prep.chain),
        "timings": sw.t,
        "peak_memory_mb": sw.peak_mb,
        "cluster": info,
    }
    write_report(out, report)
    return report
