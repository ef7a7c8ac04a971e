"""The teacher's explanation chain: explain → critique → (selective) revise, and the judge.

For a multiple-choice question q with choices and gold answer a the LLM writes
  e  = explain(q, a)         why a is right (given a: the teacher rationalises, it does not
                             answer — the question is what a student learns from);
  c  = critique(q, a, e)     whether e has a flaw (wrong, vague, not contrastive, too long)
                             and what it is, as JSON {"flaw": bool, "critique": str};
  e′ = revise(q, a, e, c)    only when c names a flaw (selective revision), capped in
                             length relative to e (revised explanations ran 2.6× longer in
                             the reference study, which recommends revising selectively);
  e* = explain(q, a*)        for a wrong choice a* (the counterfactual mode's input).
The three prompts share their first messages, so a pool with prefix caching reuses the
prefill of calls 2 and 3. The judge scores an explanation 1–5 on the study's five
dimensions; an answer it cannot parse is a counted failure, never a default score.
"""

from __future__ import annotations

import re
from typing import Any

from raydistill.pipelines.llm_output import clean_text, parse_json_object

# v2: the critique and judge prompts name their JSON keys without example values. v1
# showed `{"flaw": true, "critique": "..."}` and a judge example of all 3s, and
# SmolLM2-135M copied them: 128 of 128 critiques said flaw with "..." or the prompt's own
# words, and the judge gave 3 to nearly everything.
PROMPT_VERSION = "explain-v2"
SYSTEM = (
    "You are a careful teacher. You explain answers to commonsense questions in one or two "
    "short sentences that say why the answer is right and the other choices are not."
)
DIMENSIONS = (
    "plausibility",
    "understandability",
    "completeness",
    "satisfaction",
    "contrastiveness",
)
CRITIQUE_SCHEMA = {
    "type": "object",
    "properties": {"flaw": {"type": "boolean"}, "critique": {"type": "string"}},
    "required": ["flaw", "critique"],
}
JUDGE_SCHEMA = {
    "type": "object",
    "properties": {d: {"type": "integer", "minimum": 1, "maximum": 5} for d in DIMENSIONS},
    "required": list(DIMENSIONS),
}

# Reject reasons.
R_EMPTY = "empty"
R_NO_VERDICT = "no_verdict"
R_UNNAMED_FLAW = "unnamed_flaw"
R_TOO_LONG = "too_long"
R_MISSING_DIM = "missing_dimension"
R_OUT_OF_RANGE = "out_of_range"


def _choices(choices: list[str]) -> str:
    return "; ".join(f"({chr(97 + i)}) {c}" for i, c in enumerate(choices))


def _question_block(q: str, choices: list[str], answer: str) -> str:
    return f"Question: {q}\nChoices: {_choices(choices)}\nAnswer: {answer}"


def explain_messages(q: str, choices: list[str], answer: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": _question_block(q, choices, answer)},
        {"role": "user", "content": "Explain why this answer is right, in at most two sentences."},
    ]


def critique_messages(q: str, choices: list[str], answer: str, e: str) -> list[dict[str, str]]:
    # Same first two messages as explain_messages: a prefix-caching pool reuses them.
    return [
        *explain_messages(q, choices, answer)[:2],
        {"role": "user", "content": f"Explanation: {e}"},
        {
            "role": "user",
            "content": (
                "Critique this explanation. Does it have a flaw: wrong, vague, not saying why "
                "the other choices are worse, or too long? Answer with a JSON object with "
                'two keys: "flaw" (true if it has such a flaw, false if not) and "critique" '
                "(the flaw in your own words, in one sentence; empty if there is none)."
            ),
        },
    ]


def revise_messages(
    q: str, choices: list[str], answer: str, e: str, critique: str
) -> list[dict[str, str]]:
    return [
        *critique_messages(q, choices, answer, e)[:3],
        {"role": "user", "content": f"Critique: {critique}"},
        {
            "role": "user",
            "content": (
                "Rewrite the explanation to fix the critique. Keep it short: at most two sentences."
            ),
        },
    ]


def judge_messages(q: str, choices: list[str], answer: str, e: str) -> list[dict[str, str]]:
    dims = ", ".join(DIMENSIONS)
    return [
        {"role": "system", "content": "You rate explanations strictly and consistently."},
        {
            "role": "user",
            "content": (
                f"{_question_block(q, choices, answer)}\nExplanation: {e}\n\nRate the "
                f"explanation from 1 (worst) to 5 (best) on each of: {dims}. Answer with "
                "a JSON object only, with those five keys and your integer score for each."
            ),
        },
    ]


_LEAD = re.compile(r"^(?:explanation|revised explanation|rewrite|answer)\s*[:\-–]\s*", re.I)


def parse_explanation(raw: str | None, max_words: int = 80) -> tuple[str | None, str]:
    """An explanation answer → (text, "") or (None, reason); keeps the whole text."""
    text, why = clean_text(raw)
    if not text:
        return None, why or R_EMPTY
    text = _LEAD.sub("", text).strip()
    if not text:
        return None, R_EMPTY
    if len(text.split()) > max_words:
        return None, R_TOO_LONG
    return text, ""


_NO_FLAW = re.compile(
    r"\b(?:no (?:flaws?|issues?|problems?)|(?:is|looks) (?:correct|fine|good|clear)|"
    r"nothing (?:wrong|to (?:fix|improve)))\b",
    re.I,
)
_FLAW = re.compile(
    r"\b(?:flaw|vague|wrong|incorrect|unclear|missing|does not|doesn't|fails)\b", re.I
)
_WORD = re.compile(r"[^\W\d_]{2}")  # two letters in a row: the critique says something


def parse_critique(raw: str | None) -> tuple[dict[str, Any] | None, str]:
    """A critique → ({"flaw": bool, "critique": str}, "") or (None, reason).

    JSON first; prose is read by its words ("no flaws", "is correct" → no flaw; "vague",
    "missing", "does not" → flaw). A critique that says neither is `no_verdict`: revising on
    a guess would change explanations for no reason. A JSON flaw whose critique names
    nothing ("...", empty) is `unnamed_flaw`, for the same reason.
    """
    obj, _ = parse_json_object(raw)
    flaw = obj.get("flaw") if obj is not None else None
    if isinstance(flaw, str) and flaw.strip().lower() in ("true", "yes", "false", "no"):
        flaw = flaw.strip().lower() in ("true", "yes")
    if isinstance(flaw, bool):
        crit = obj.get("critique") if isinstance(obj.get("critique"), str) else ""
        if flaw and not _WORD.search(crit):
            # "flaw: true" with "..." or nothing: a revision would have nothing to fix.
            return None, R_UNNAMED_FLAW
        return {"flaw": flaw, "critique": crit}, ""
    text, why = clean_text(raw)
    if not text:
        return None, why or R_EMPTY
    if _NO_FLAW.search(text) and not re.search(r"\bbut\b", text, re.I):
        return {"flaw": False, "critique": text}, ""
    if _FLAW.search(text):
        return {"flaw": True, "critique": text}, ""
    return None, R_NO_VERDICT


def accept_revision(original: str, revised: str | None, max_ratio: float = 1.5) -> tuple[str, str]:
    """(the explanation to keep, why the revision was not used or "").

    A revision longer than `max_ratio` × the original is dropped for the original
    (`too_long`): the cap is what keeps selective revision's e′/e bounded.
    """
    if not revised:
        return original, R_EMPTY
    if len(revised.split()) > max_ratio * max(1, len(original.split())):
        return original, R_TOO_LONG
    return revised, ""


def parse_judge(raw: str | None) -> tuple[dict[str, int] | None, str]:
    """Judge answer → ({dimension: 1..5}, "") or (None, reason). Never a default score."""
    obj, why = parse_json_object(raw)
    if obj is None:
        return None, f"json_{why}"
    lowered = {str(k).strip().lower(): v for k, v in obj.items()}
    out: dict[str, int] = {}
    for d in DIMENSIONS:
        if d not in lowered:
            return None, R_MISSING_DIM
        v = lowered[d]
        if isinstance(v, bool):
            return None, R_OUT_OF_RANGE
        if isinstance(v, str) and v.strip().isdigit():
            v = int(v.strip())
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if not isinstance(v, int) or not 1 <= v <= 5:
            return None, R_OUT_OF_RANGE
        out[d] = v
    return out, ""


# ------------------------------------------------------------------ the judge

R_LLM_ERROR = "llm_error"
R_NO_SAMPLE = "no_sample"  # the pool answered fewer samples than asked


def judge_items(
    llm: Any,
    items: list[dict[str, Any]],
    *,
    samples: int = 2,
    temperature: float = 0.7,
    top_p: float = 0.95,
    max_tokens: int = 64,
) -> list[dict[str, Any]]:
    """Score each item ({key, group, question, choices, answer, explanation}) with
    `samples` judge samples (one request, n = samples, through the cached request layer).

    Returns per item {key, group, scores, reasons}: `scores[i]` is sample i's
    {dimension: 1..5} or None, `reasons[i]` why it is None ("" when parsed). A sample
    that does not parse stays None: it is counted as a failure, never given a score.
    """
    from raydistill.pipelines.llm_stage import Sampling

    sampling = Sampling(
        n=samples,
        temperature=temperature,
        top_p=top_p,
        max_tokens=max_tokens,
        seed=0,
        json_schema=JUDGE_SCHEMA if getattr(llm, "structured_output", False) else None,
    )
    asked = [
        {
            "key": it["key"],
            "messages": judge_messages(
                it["question"], list(it["choices"]), it["answer"], it["explanation"]
            ),
        }
        for it in items
    ]
    answered = llm.chat(asked, sampling) if asked else []
    out = []
    for it, a in zip(items, answered, strict=True):
        cands = [] if a.get("llm_error") else list(a.get("candidates") or [])
        scores: list[dict[str, int] | None] = []
        reasons: list[str] = []
        for i in range(samples):
            if a.get("llm_error"):
                sc, why = None, R_LLM_ERROR
            elif i >= len(cands):
                sc, why = None, R_NO_SAMPLE
            else:
                sc, why = parse_judge(cands[i])
            scores.append(sc)
            reasons.append(why)
        out.append({"key": it["key"], "group": it["group"], "scores": scores, "reasons": reasons})
    return out


def item_means(judged: dict[str, Any]) -> dict[str, float] | None:
    """One judged item's score per dimension: the mean of its parsed samples (None if none)."""
    ok = [s for s in judged["scores"] if s is not None]
    if not ok:
        return None
    return {d: sum(s[d] for s in ok) / len(ok) for d in DIMENSIONS}


def judge_summary(judged: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per group: items, samples, parsed samples, parse rate, failures by reason, the
    mean per dimension over parsed samples, and agreement between each item's first two
    samples where both parsed (share of dimension scores equal, and within ±1), and the
    most common score with its share of all parsed scores: a judge that gives every
    explanation the same score agrees with itself perfectly and measures nothing, which
    agreement alone cannot show."""
    by: dict[str, list[dict[str, Any]]] = {}
    for j in judged:
        by.setdefault(j["group"], []).append(j)
    out: dict[str, dict[str, Any]] = {}
    for group, js in by.items():
        parsed = [s for j in js for s in j["scores"] if s is not None]
        n_samples = sum(len(j["scores"]) for j in js)
        fails: dict[str, int] = {}
        for j in js:
            for why in j["reasons"]:
                if why:
                    fails[why] = fails.get(why, 0) + 1
        pairs = [
            (j["scores"][0], j["scores"][1])
            for j in js
            if len(j["scores"]) >= 2 and j["scores"][0] is not None and j["scores"][1] is not None
        ]
        cells = [(a[d], b[d]) for a, b in pairs for d in DIMENSIONS]
        values = [s[d] for s in parsed for d in DIMENSIONS]
        mode = max(sorted(set(values)), key=values.count) if values else None
        out[group] = {
            "items": len(js),
            "samples": n_samples,
            "parsed": len(parsed),
            "parse_rate": round(len(parsed) / n_samples, 4) if n_samples else None,
            "failures": dict(sorted(fails.items())),
            "means": {d: round(sum(s[d] for s in parsed) / len(parsed), 3) for d in DIMENSIONS}
            if parsed
            else None,
            "agreement_pairs": len(pairs),
            "agreement_exact": round(sum(a == b for a, b in cells) / len(cells), 4)
            if cells
            else None,
            "agreement_within_1": round(sum(abs(a - b) <= 1 for a, b in cells) / len(cells), 4)
            if cells
            else None,
            "modal_score": mode,
            "modal_share": round(values.count(mode) / len(values), 4) if values else None,
        }
    return out


def judge_paired(
    judged: list[dict[str, Any]], a: str, b: str, qid_of=lambda key: key.split("|", 1)[1]
) -> dict[str, Any]:
    """Groups `a` and `b` on the questions both have a parsed score for: n and the mean
    per dimension of each (item scores = mean of parsed samples), and b − a."""
    means: dict[str, dict[str, dict[str, float]]] = {a: {}, b: {}}
    for j in judged:
        if j["group"] in means and (m := item_means(j)) is not None:
            means[j["group"]][qid_of(j["key"])] = m
    both = sorted(set(means[a]) & set(means[b]))
    if not both:
        return {"n": 0}

    def avg(g: str, d: str) -> float:
        return round(sum(means[g][q][d] for q in both) / len(both), 3)

    return {
        "n": len(both),
        a: {d: avg(a, d) for d in DIMENSIONS},
        b: {d: avg(b, d) for d in DIMENSIONS},
        "difference": {d: round(avg(b, d) - avg(a, d), 3) for d in DIMENSIONS},
    }


# ------------------------------------------------------------------ similarity and length


def explanation_similarity(
    generated: list[str], references: list[str], embed: Any
) -> dict[str, float | int | None]:
    """Embedding cosine of each generated explanation with its reference over the pairs
    that have a reference (an empty generation scores 0, as it does in ROUGE-L), the mean
    length in words of the non-empty generations and the share of empty ones.

    `embed(texts)` returns L2-normalised rows (pipelines/diversity.embed).
    """
    pairs = [
        (str(g or "").strip(), str(r).strip()) for g, r in zip(generated, references, strict=True)
    ]
    pairs = [(g, r) for g, r in pairs if r]
    said = [g for g, _ in pairs if g]
    out: dict[str, float | int | None] = {
        "pairs": len(pairs),
        "empty": round(1 - len(said) / len(pairs), 4) if pairs else None,
        "words": round(sum(len(g.split()) for g in said) / len(said), 2) if said else None,
        "cosine": None,
    }
    if not pairs:
        return out
    texts = sorted({t for g, r in pairs for t in (g, r) if t})
    vecs = dict(zip(texts, embed(texts), strict=True))
    cos = [float(vecs[g] @ vecs[r]) if g else 0.0 for g, r in pairs]
    out["cosine"] = round(sum(cos) / len(cos), 4)
    return out


# ------------------------------------------------------------------ prefix reuse of the chain


def prefix_caching(pool: Any) -> dict[str, Any]:
    """Whether the pool caches prompt prefixes, and at what block size (vLLM reuses
    whole KV blocks only), from the pool config (`PoolConfig`) and vLLM 0.32's defaults."""
    ek = dict(getattr(pool, "engine_kwargs", None) or {})
    if pool.backend == "hf":
        return {
            "enabled": False,
            "block_size": None,
            "why": "the hf backend keeps no KV cache between requests",
        }
    if pool.backend != "vllm":
        return {"enabled": None, "block_size": None, "why": "an external server: unknown"}
    block = ek.get("block_size") or (16 if pool.num_gpus > 0 else 128)
    return {
        "enabled": bool(ek.get("enable_prefix_caching", True)),
        "block_size": int(block),
        "why": (
            "pool.engine_kwargs sets it"
            if "enable_prefix_caching" in ek
            else "not set by raydistill: vLLM 0.32 enables it for decoder LMs (off on CPU "
            "only for MLA models and RISC-V)"
        )
        + (
            "; block_size from pool.engine_kwargs"
            if "block_size" in ek
            else "; vLLM 0.32 uses 128-token blocks on CPU, 16 on GPU"
        ),
    }


def prefix_reuse(calls: list[tuple[str, list[list[int]]]], block_size: int | None) -> dict:
    """Prompt tokens of each call of the chain that an earlier prompt already holds.

    `calls`: (call name, token ids of each prompt) in the order they are sent. A prompt's
    shared prefix is its longest leading run of tokens equal to the start of any earlier
    prompt (of this call or an earlier one): what a prefix cache that keeps every
    earlier prompt can skip, an upper bound (a full cache evicts). vLLM reuses whole
    blocks only, so `reusable_tokens` rounds each shared prefix down to `block_size`
    (None: no block-granular cache, token level). Identical prompts are sent once and
    counted once.
    """
    seen: set[int] = set()
    sent: set[tuple[int, ...]] = set()
    out: dict[str, Any] = {}
    for name, seqs in calls:
        total = shared = reusable = n = 0
        for ids in seqs:
            if tuple(ids) in sent:
                continue
            sent.add(tuple(ids))
            h, run, hashes, matching = 0, 0, [], True
            for i, t in enumerate(ids):
                h = hash((h, int(t)))
                hashes.append(h)
                if matching and h in seen:
                    run = i + 1
                else:
                    matching = False
            seen.update(hashes)
            n += 1
            total += len(ids)
            shared += run
            reusable += run if not block_size else (run // block_size) * block_size
        out[name] = {
            "requests": n,
            "prompt_tokens": total,
            "shared_prefix_tokens": shared,
            "reusable_tokens": reusable,
            "prefill_per_request": round((total - reusable) / n, 1) if n else None,
            "prompt_per_request": round(total / n, 1) if n else None,
        }
    return out


# ------------------------------------------------------------------ what the judge scores


def _choice_text(row: dict[str, Any], i: int | None, fallback: str) -> str:
    return str(row["choices"][i]) if i is not None else fallback


def student_judge_items(
    results: list[dict[str, Any]], rows_by_id: dict[str, dict[str, Any]]
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Judge items for the kept generations of every student that explains: the
    question, the student's own answer (the choice it named, else its text) and its
    explanation; group "student <arm> k=<k>". Also counts what was not judged, by reason."""
    items, skipped = [], {"no_explanation": 0, "unknown_question": 0}
    for r in results:
        for ex in r.get("examples") or []:
            row = rows_by_id.get(str(ex.get("id")))
            if row is None:
                skipped["unknown_question"] += 1
                continue
            if not str(ex.get("explanation") or "").strip():
                skipped["no_explanation"] += 1
                continue
            items.append(
                {
                    "key": f"student {r['arm']} k={r['k']}|s{r['seed']}:{ex['id']}",
                    "group": student_group(r["arm"], r["k"]),
                    "question": row["question"],
                    "choices": list(row["choices"]),
                    "answer": _choice_text(row, ex.get("choice"), str(ex.get("answer") or "")),
                    "explanation": str(ex["explanation"]),
                }
            )
    return items, skipped


def student_group(arm: str, k: int) -> str:
    return f"student {arm} k={k}"


def teacher_judge_questions(chain: dict[str, dict[str, Any]], n: int) -> tuple[list, list]:
    """(revised question ids, unrevised ones): up to `n` of each, in id order, among the
    questions with a teacher explanation."""
    ids = sorted(i for i, c in chain.items() if c.get("original"))
    revised = [i for i in ids if chain[i].get("revision") == "revised"][:n]
    kept = [i for i in ids if chain[i].get("revision") != "revised"][:n]
    return revised, kept


def teacher_judge_items(
    rows: dict[str, dict[str, Any]], chain: dict[str, dict[str, Any]], ids: list[str]
) -> list[dict[str, Any]]:
    """Judge items for the human (CoS-E), original and revised explanation of each
    training question in `ids` (given the gold answer); group "teacher <source>". An
    unrevised question's revised text is its original: the request layer sends it once."""
    items = []
    for i in ids:
        row, c = rows[i], chain[i]
        gold = str(row["choices"][int(row["answer"])])
        for source, text in (
            ("human", row.get("explanation")),
            ("original", c.get("original")),
            ("revised", c.get("revised")),
        ):
            if str(text or "").strip():
                items.append(
                    {
                        "key": f"teacher {source}|{i}",
                        "group": f"teacher {source}",
                        "question": row["question"],
                        "choices": list(row["choices"]),
                        "answer": gold,
                        "explanation": str(text),
                    }
                )
    return items
