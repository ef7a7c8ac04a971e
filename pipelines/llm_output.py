"""Defensive parsing of LLM output: it is untrusted text.

Small instruction models wrap the answer in chatter ("Here is the revised sentence:"),
quotes, markdown and trailing notes, refuse, or echo the input. `clean_candidate` turns a
raw completion into the edited text or a reason it was rejected; rejections are counted by
reason in the generation stats, never silently dropped.
"""

from __future__ import annotations

import re

from raydistill.pipelines.edits import word_edit_distance, words

REJECT_EMPTY = "empty"
REJECT_REFUSAL = "refusal"
REJECT_ECHO = "echo"
REJECT_TOO_LONG = "too_long"
REJECT_NOT_MINIMAL = "not_minimal"

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


def _echo_prefix(noun: str | None, label_names: tuple[str, ...]) -> re.Pattern | None:
    """The prompt's own framing echoed back: "Rewritten movie review sentence (positive):"."""
    if not noun and not label_names:
        return None
    labels = "|".join(re.escape(x) for x in label_names) or r"[^)]{1,20}"
    head = rf"(?:(?:rewritten|new|original)\s+)?{re.escape(noun)}" if noun else r"(?!)"
    return re.compile(
        rf"^\s*(?:{head}\s*(?:\(\s*(?:{labels})\s*\))?|\(\s*(?:{labels})\s*\))\s*[:\-–]\s*",
        re.IGNORECASE,
    )


def clean_candidate(
    raw: str | None,
    original: str,
    max_ratio: float = 3.0,
    *,
    noun: str | None = None,
    label_names: tuple[str, ...] | list[str] = (),
    max_edit_fraction: float | None = None,
) -> tuple[str | None, str]:
    """Return (text, "") for a usable candidate, or (None, reason) for a rejected one.

    `noun` and `label_names` (the task's) let it strip the prompt's framing when a small
    model echoes it ("Movie review sentence (negative): ..."); a reply that is only that
    framing is empty. With `max_edit_fraction`, a candidate that changes more than that
    share of the original's words (3 words are always allowed) is a rewrite, not a
    minimal edit, and is rejected as "not_minimal".
    """
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
    echo = _echo_prefix(noun, tuple(label_names))
    if echo is not None:
        for _ in range(2):
            new = echo.sub("", s, count=1)
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
    if max_edit_fraction is not None:
        allowed = max(3, int(max_edit_fraction * len(words(original))))
        if word_edit_distance(original, s) > allowed:
            return None, REJECT_NOT_MINIMAL
    return s, ""
