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

PROMPT_VERSION = "explain-v1"
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
                "the other choices are worse, or too long? Answer with JSON: "
                '{"flaw": true or false, "critique": "..."}'
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
                "JSON only, e.g. " + "{" + ", ".join(f'"{d}": 3' for d in DIMENSIONS) + "}"
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


def parse_critique(raw: str | None) -> tuple[dict[str, Any] | None, str]:
    """A critique → ({"flaw": bool, "critique": str}, "") or (None, reason).

    JSON first; prose is read by its words ("no flaws", "is correct" → no flaw; "vague",
    "missing", "does not" → flaw). A critique that says neither is `no_verdict`: revising on
    a guess would change explanations for no reason.
    """
    obj, _ = parse_json_object(raw)
    if obj is not None and isinstance(obj.get("flaw"), bool):
        crit = obj.get("critique")
        return {"flaw": obj["flaw"], "critique": crit if isinstance(crit, str) else ""}, ""
    if obj is not None and isinstance(obj.get("flaw"), str):
        v = obj["flaw"].strip().lower()
        if v in ("true", "yes", "false", "no"):
            crit = obj.get("critique") if isinstance(obj.get("critique"), str) else ""
            return {"flaw": v in ("true", "yes"), "critique": crit}, ""
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
