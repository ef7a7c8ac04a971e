"""CoD's counterfactual source and its cache: human CAD edits, or the LLM pool's
teacher-verified edits kept on disk by a key of everything that shapes them.

Split from `methods/cod.py` because the key is a contract of its own: a cached record is
reused only while the key (generator, prompts, teacher, class words, fluency ranking)
is unchanged, and adding a config field must not silently invalidate or, worse, alias
earlier generations. `cod.py` re-exports these names.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from raydistill.config import RunConfig, stable_hash
from raydistill.methods import stages

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
