"""CoD's validator: is this LLM answer a usable minimal edit of the original?

Built from the generic cleaning steps in `llm_output` (markup, refusals, chatter, quotes),
plus what only a counterfactual edit must satisfy: the prompt's own framing echoed back
("Movie review sentence (negative): ...") is stripped, a trailing note or explanation is
cut (an edit is one sentence; the model's reasoning about it is not part of it), only the
first paragraph counts, and the result must differ from the original (`echo`), stay near
its length (`too_long`) and, when asked, change few of its words (`not_minimal`).
Explanation distillation keeps what CoD cuts here, which is why this is not in the
generic cleaner.
"""

from __future__ import annotations

import re

from raydistill.pipelines.edits import word_edit_distance, words
from raydistill.pipelines.llm_output import (
    GENERIC_PREFIXES,
    REJECT_EMPTY,
    REJECT_REFUSAL,
    is_refusal,
    strip_markup,
    strip_prefixes,
    strip_quotes,
)

REJECT_ECHO = "echo"
REJECT_TOO_LONG = "too_long"
REJECT_NOT_MINIMAL = "not_minimal"

__all__ = [
    "REJECT_ECHO",
    "REJECT_EMPTY",
    "REJECT_NOT_MINIMAL",
    "REJECT_REFUSAL",
    "REJECT_TOO_LONG",
    "clean_candidate",
    "cut_trailer",
]

# The generic chatter plus the labels a model puts before an edit ("Revised sentence:").
_PREFIX = re.compile(
    rf"""^\s*(?:{GENERIC_PREFIXES}
      | (?:the\ )?(?:new|revised|edited|modified|rewritten|flipped|changed|counterfactual|output|answer|result|text|sentence|review)
        (?:\ (?:sentence|text|review|version|counterfactual|example))?\s*(?::|[\-–](?=\s))\s*
      | (?:counterfactual|rewrite|edit)\s*\d*\s*(?::|[\-–](?=\s))\s*
      | [\w\ ()-]{{0,40}}?\b(?:rewritten|revised|edited|modified|new|counterfactual|flipped)\b[^:\n]{{0,40}}:\s*
    )""",
    re.IGNORECASE | re.VERBOSE,
)
_TRAILER = re.compile(
    r"\n\s*(?:\(?note|explanation|this (?:edit|change|revision)|i (?:changed|replaced)|"
    r"changes?:|\*\*?explanation)",
    re.IGNORECASE,
)


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


def cut_trailer(s: str) -> str:
    """Drop a trailing note/explanation paragraph ("\\n\\nNote: I replaced ...")."""
    m = _TRAILER.search(s)
    return s[: m.start()].strip() if m else s


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
    s = strip_markup(raw)
    if is_refusal(s):
        return None, REJECT_REFUSAL
    # Markup again: a fence opened after the chatter ("Sure!\n```\n...") starts only now.
    s = strip_markup(strip_prefixes(s, _PREFIX))
    echo = _echo_prefix(noun, tuple(label_names))
    if echo is not None:
        s = strip_prefixes(s, echo, times=2)
    s = cut_trailer(s)
    # Multi-paragraph answers: the first non-empty paragraph is the candidate.
    paras = [p.strip() for p in re.split(r"\n\s*\n", s) if p.strip()]
    s = paras[0] if paras else ""
    s = strip_quotes(s)
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
