"""Defensive parsing of LLM output: it is untrusted text.

Small instruction models wrap the answer in chatter ("Here is the revised sentence:"),
quotes, markdown and trailing notes, refuse, or echo the input. `clean_candidate` turns a
raw completion into the edited text or a reason it was rejected; rejections are counted by
reason in the generation stats, never silently dropped.
"""

from __future__ import annotations

import re

from raydistill.pipelines.edits import words

REJECT_EMPTY = "empty"
REJECT_REFUSAL = "refusal"
REJECT_ECHO = "echo"
REJECT_TOO_LONG = "too_long"

_PREFIX = re.compile(
    r"""^\s*(?:
        (?:sure|okay|ok|certainly|of\ course)[!,.]?\s*
      | here(?:'s|\ is|\ are)\b[^:\n]*:\s*
      | (?:the\ )?(?:new|revised|edited|modified|rewritten|flipped|changed|counterfactual|output|answer|result|text|sentence|review)
        (?:\ (?:sentence|text|review|version|counterfactual|example))?\s*[:\-–]\s*
      | (?:counterfactual|rewrite|edit)\s*\d*\s*[:\-–]\s*
      | [\w\ ()-]{0,40}?\b(?:rewritten|revised|edited|modified|new|counterfactual|flipped)\b[^:\n]{0,40}:\s*
    )""",
    re.IGNORECASE | re.VERBOSE,
)
_REFUSAL = re.compile(
    r"\b(?:i\s*(?:'m|am)\s*(?:sorry|unable|not able)|i\s*can(?:no|')t|as an ai|"
    r"i\s*(?:will|would)\s*not|cannot (?:help|assist|comply))\b",
    re.IGNORECASE,
)
_QUOTES = "\"'“”‘’`«»"
_TRAILER = re.compile(
    r"\n\s*(?:\(?note|explanation|this (?:edit|change|revision)|i (?:changed|replaced)|"
    r"changes?:|\*\*?explanation)",
    re.IGNORECASE,
)


def _strip_quotes(s: str) -> str:
    s = s.strip()
    while len(s) >= 2 and s[0] in _QUOTES and s[-1] in _QUOTES:
        s = s[1:-1].strip()
    # A lone opening quote with no closing one (the model ran out of tokens).
    if s and s[0] in _QUOTES and s.count(s[0]) == 1:
        s = s[1:].strip()
    return s


def clean_candidate(
    raw: str | None, original: str, max_ratio: float = 3.0
) -> tuple[str | None, str]:
    """Return (text, "") for a usable candidate, or (None, reason) for a rejected one."""
    if not isinstance(raw, str):
        return None, REJECT_EMPTY
    s = raw.replace("\r", "").strip()
    s = re.sub(r"^```\w*\n?|```$", "", s).strip()  # code fences
    s = s.replace("**", "").strip()
    if _REFUSAL.search(s[:200]):
        return None, REJECT_REFUSAL
    # Keep the part after the chatter: cut leading phrases repeatedly ("Sure! Here is:").
    for _ in range(3):
        new = _PREFIX.sub("", s, count=1)
        if new == s:
            break
        s = new.strip()
    m = _TRAILER.search(s)
    if m:
        s = s[: m.start()].strip()
    # Multi-paragraph answers: the first non-empty paragraph is the candidate.
    paras = [p.strip() for p in re.split(r"\n\s*\n", s) if p.strip()]
    s = paras[0] if paras else ""
    s = _strip_quotes(s)
    s = re.sub(r"\s+", " ", s).strip()
    if not words(s):
        return None, REJECT_EMPTY
    if words(s) == words(original):
        return None, REJECT_ECHO
    if len(s) > max_ratio * max(len(original), 40):
        return None, REJECT_TOO_LONG
    return s, ""
