"""One generation step of the weakness loop: seeds → new labelled candidate samples.

The seeds go through the cached LLM request layer (one Ray Data stage over the pool);
every answer is parsed and checked for its task kind, and every candidate — kept or not —
keeps its lineage: parent seed id, round, arm, prompt hash, verdict and reject reason.
Stats count the candidates asked, parsed and verified and the rejects by reason, so a
round's report shows where samples were lost. The teacher check for classification and
the diversity filter come after this step (they need the teacher and all candidates).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from raydistill.pipelines.augment_prompts import (
    R_LLM_ERROR,
    classification_messages,
    ner_messages,
    parse_sample,
    prompt_hash,
    schema_for,
    summary_instruction,
    summary_messages,
)
from raydistill.pipelines.augment_verify import R_COPY, is_copy, ner_sample, summary_problem
from raydistill.pipelines.bio import entity_types, tags_to_spans

Row = dict[str, Any]


@dataclass
class AugmentStats:
    asked: int = 0
    answered: int = 0
    parsed: int = 0
    verified: int = 0
    generated_tokens: int = 0
    # The pool's rate while this call ran: tokens generated for it (cache hits excluded)
    # over the call's wall time, so a round's report can set it beside the standalone
    # pool figure of `benchmarks/throughput`.
    sent_generated_tokens: int = 0
    llm_s: float = 0.0
    rejects: Counter = field(default_factory=Counter)

    def reject(self, reason: str) -> None:
        self.rejects[reason] += 1

    def summary(self) -> dict[str, Any]:
        return {
            "asked": self.asked,
            "answered": self.answered,
            "parsed": self.parsed,
            "verified": self.verified,
            "generated_tokens": self.generated_tokens,
            "sent_generated_tokens": self.sent_generated_tokens,
            "llm_s": round(self.llm_s, 2),
            "rejects": dict(sorted(self.rejects.items())),
        }


def seed_entities(row: Row) -> list[tuple[str, str]]:
    """(surface, type) of each entity in a token-classification row."""
    toks = list(row["tokens"])
    return [(" ".join(toks[s:e]), t) for t, s, e in tags_to_spans(list(row["tags"]))]


def messages_for(seed: Row, spec: Any, max_seed_chars: int) -> list:
    if spec.kind == "classification":
        return classification_messages(seed, spec, max_seed_chars)
    if spec.kind == "token_classification":
        return ner_messages(seed, seed_entities(seed))
    if spec.kind == "seq2seq":
        return summary_messages(seed, max_seed_chars * 2)
    raise ValueError(f"weakness augmentation has no prompt for task kind {spec.kind!r}")


def task_schema(spec: Any) -> dict[str, Any]:
    """The structured-output schema for a task: the entity-type enum only where the task
    has BIO tags (a classification task's label names are not tags)."""
    if spec.kind == "token_classification":
        return schema_for(spec.kind, entity_types(spec.label_names))
    return schema_for(spec.kind)


def candidates_per_seed(samples: int, seeds: int, oversample: float) -> int:
    """Candidates each seed is asked for so that NF × samples are written in all."""
    return max(1, math.ceil(oversample * samples / max(1, seeds)))


def _sample_id(parent: str, rnd: int, arm: str, j: int, body: str) -> str:
    h = hashlib.sha256(f"{parent}|{rnd}|{arm}|{j}|{body}".encode()).hexdigest()[:10]
    return f"gen-r{rnd}-{h}"


def build_candidate(
    sample: dict[str, Any],
    seed: Row,
    spec: Any,
    min_overlap: float = 0.2,
    *,
    ner_name_checks: bool = False,
) -> tuple[Row | None, str]:
    """A parsed answer → a row of the task's schema (labels from the seed), or a reason.
    `ner_name_checks`: `augment_verify.ner_sample`'s name checks against this seed."""
    if spec.kind == "classification":
        if is_copy(sample["text"], seed["text"]):
            return None, R_COPY
        row = {"text": sample["text"], "label": int(seed["label"])}
        if seed.get("text_pair"):
            row["text_pair"] = seed["text_pair"]
        return row, ""
    if spec.kind == "token_classification":
        if is_copy(sample["text"], seed["text"]):
            return None, R_COPY
        got, why = ner_sample(
            sample["text"],
            sample["entities"],
            entity_types(spec.label_names),
            name_checks=ner_name_checks,
            seed_entities=seed_entities(seed) if ner_name_checks else None,
        )
        if got is None:
            return None, why
        return {
            "text": " ".join(got["tokens"]),
            "tokens": got["tokens"],
            "tags": got["tags"],
        }, ""
    if spec.kind == "seq2seq":
        if is_copy(sample["source"], seed["source"]):
            return None, R_COPY
        why = summary_problem(
            sample["source"],
            sample["target"],
            min_overlap=min_overlap,
            instruction=summary_instruction(len(str(seed["target"]).split())),
        )
        if why:
            return None, why
        return {
            "text": sample["source"],
            "source": sample["source"],
            "target": sample["target"],
        }, ""
    raise ValueError(f"no candidate builder for task kind {spec.kind!r}")


@dataclass
class Request:
    """One caller's share of a generation call: its seeds, candidates per seed and
    sampling seed (the weakness loop: one loop's seeds in one round)."""

    seeds: list[Row]
    rnd: int
    arm: str
    per_seed: int
    sampling_seed: int


def generate_many(
    requests: list[Request],
    spec: Any,
    llm: Any,
    *,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    max_seed_chars: int,
    ner_name_checks: bool = False,
) -> list[tuple[list[Row], AugmentStats]]:
    """Every request's candidates and stats, with as few LLM calls as possible.

    Requests that ask for the same number of samples per seed share one call (each row
    keeps its own sampling seed, so every request's answers, and their cache keys, are
    what it would get alone); one large call keeps the pool's batches full, where a
    call per request leaves it draining between calls. The call's seconds are shared
    among the requests by the tokens generated for each, so a round's rate adds up.
    """
    from raydistill.pipelines.llm_stage import SEED_COLUMN, Sampling

    out: list[tuple[list[Row], AugmentStats] | None] = [None] * len(requests)
    structured = bool(getattr(llm, "structured_output", False))
    for n in sorted({r.per_seed for r in requests}):
        group = [i for i, r in enumerate(requests) if r.per_seed == n]
        rows = []
        for i in group:
            for s in requests[i].seeds:
                msgs = messages_for(s, spec, max_seed_chars)
                rows.append(
                    {
                        "request": i,
                        "seed_id": s["id"],
                        "messages": msgs,
                        "prompt_hash": prompt_hash(msgs),
                        # Round and arm in the sampling seed: another round asks anew, a
                        # rerun of this one is answered from the request cache.
                        SEED_COLUMN: int(requests[i].sampling_seed),
                    }
                )
        sampling = Sampling(
            n=n,
            temperature=temperature,
            top_p=top_p,
            max_tokens=max_new_tokens,
            json_schema=task_schema(spec) if structured else None,
        )
        stats = getattr(llm, "stats", None)
        started_s = getattr(stats, "pool_start_s", 0.0)
        t0 = time.perf_counter()
        answered = llm.chat(rows, sampling) if rows else []
        # The pool starts inside the first call that needs it: its start-up is not
        # generation, and counting it once halved a round's reported rate.
        call_s = time.perf_counter() - t0 - (getattr(stats, "pool_start_s", 0.0) - started_s)
        for i in group:
            r = requests[i]
            mine = [a for a in answered if a["request"] == i]
            out[i] = collect_candidates(
                mine,
                r.seeds,
                spec,
                rnd=r.rnd,
                arm=r.arm,
                per_seed=n,
                ner_name_checks=ner_name_checks,
            )
        sent = sum(out[i][1].sent_generated_tokens for i in group)
        for i in group:
            st = out[i][1]
            share = st.sent_generated_tokens / sent if sent else 1 / len(group)
            st.llm_s = call_s * share
    return [o for o in out if o is not None]


def generate_candidates(
    seeds: list[Row],
    spec: Any,
    llm: Any,
    *,
    rnd: int,
    arm: str,
    per_seed: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    max_seed_chars: int,
    sampling_seed: int,
) -> tuple[list[Row], AugmentStats]:
    """Ask for `per_seed` samples per seed; return every candidate with its lineage.

    Accepted-so-far candidates have verdict "verified"; rejected ones keep their reason
    (and the raw answer, for debugging prompts). Only verified ones carry task columns.
    """
    ((cands, stats),) = generate_many(
        [Request(seeds, rnd, arm, per_seed, sampling_seed)],
        spec,
        llm,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        max_seed_chars=max_seed_chars,
    )
    return cands, stats


def collect_candidates(
    answered: list[Row],
    seeds: list[Row],
    spec: Any,
    *,
    rnd: int,
    arm: str,
    per_seed: int,
    ner_name_checks: bool = False,
) -> tuple[list[Row], AugmentStats]:
    """The chat answers for `seeds` → candidates with lineage, and their stats."""
    stats = AugmentStats()
    by_id = {s["id"]: s for s in seeds}
    out: list[Row] = []
    for a in answered:
        seed = by_id[a["seed_id"]]
        stats.asked += per_seed
        stats.generated_tokens += int(a.get("generated_tokens") or 0)
        if not a.get("cached"):
            stats.sent_generated_tokens += int(a.get("generated_tokens") or 0)
        lineage = {
            "parent_id": seed["id"],
            "round": rnd,
            "arm": arm,
            "prompt_hash": a["prompt_hash"],
        }
        if a.get("llm_error"):
            stats.reject(R_LLM_ERROR)
            stats.rejects[R_LLM_ERROR] += per_seed - 1
            out.append(
                {
                    **lineage,
                    "id": _sample_id(seed["id"], rnd, arm, -1, a["llm_error"]),
                    "verdict": "rejected",
                    "reason": R_LLM_ERROR,
                    "raw": a["llm_error"],
                }
            )
            continue
        cands = list(a.get("candidates") or [])
        stats.answered += len(cands)
        if len(cands) < per_seed:
            stats.rejects["missing_candidate"] += per_seed - len(cands)
        for j, raw in enumerate(cands):
            sample, why = parse_sample(raw, spec.kind)
            row: Row | None = None
            if sample is not None:
                stats.parsed += 1
                row, why = build_candidate(sample, seed, spec, ner_name_checks=ner_name_checks)
            sid = _sample_id(seed["id"], rnd, arm, j, str(raw))
            if row is None:
                stats.reject(why)
                out.append(
                    {
                        **lineage,
                        "id": sid,
                        "verdict": "rejected",
                        "reason": why,
                        "raw": str(raw)[:2000],
                    }
                )
                continue
            stats.verified += 1
            out.append({**lineage, **row, "id": sid, "verdict": "verified", "reason": ""})
    return out, stats
