"""CoD's validator: is this LLM answer a usable minimal edit of the original?

Built from the generic cleaning steps in `llm_output` (markup, refusals, chatter, quotes),
plus what only a counterfactual edit must satisfy: the prompt's own framing echoed back
("Movie review sentence (negative): ...") is stripped, a trailing note or explanation is
cut (an edit is one sentence; the model's reasoning about it is not part of it), only the
first paragraph counts, and the result must differ from the original (`echo`), stay near
its length (`too_long`) and, when asked, change few of its words (`not_minimal`).
Explanation distillation keeps what CoD cuts here, which is why this is not in the
generic cleaner.

Word-swap replies (`check_replacement`) are one word or short phrase; a reply that echoes
the prompt's framing (`Opposite of 'marketing`, `tech: software`, "Replace 'x' with...")
is `framing`, one made only of function words (`Yet unlike`) is `function_words`, one
ending in an article, preposition or conjunction (`Encounter A`) is `fragment`: each
would otherwise be spliced into a text. On sentence pairs (`split_pair_reply`,
`edits_kept_side`, `kept_side_intact`) one side is edited and the other must come back
verbatim; a candidate that changes or replaces the kept side is `kept_side_changed`.
"""

from __future__ import annotations

import re
from typing import Any

from raydistill.pipelines.edits import DANGLING_WORDS, FUNCTION_WORDS, word_edit_distance, words
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
# Word-swap replies.
REJECT_UNPARSABLE = "unparsable"
REJECT_FRAMING = "framing"
REJECT_FUNCTION_WORDS = "function_words"
REJECT_FRAGMENT = "fragment"
# Sentence pairs: the side that must stay verbatim was changed (or edited instead).
REJECT_KEPT_CHANGED = "kept_side_changed"

__all__ = [
    "REJECT_ECHO",
    "REJECT_EMPTY",
    "REJECT_FRAGMENT",
    "REJECT_FRAMING",
    "REJECT_FUNCTION_WORDS",
    "REJECT_KEPT_CHANGED",
    "REJECT_NOT_MINIMAL",
    "REJECT_REFUSAL",
    "REJECT_TOO_LONG",
    "REJECT_UNPARSABLE",
    "check_replacement",
    "clean_candidate",
    "cut_trailer",
    "edits_kept_side",
    "is_minimal",
    "kept_side_intact",
    "pair_inputs",
    "split_pair_reply",
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


def _label_colon(label_names: tuple[str, ...] | list[str]) -> re.Pattern | None:
    """A class name followed by a colon ("tech: ...", "Contradiction:"): the prompt's
    framing, not an edit."""
    if not label_names:
        return None
    labels = "|".join(re.escape(str(x)) for x in label_names)
    return re.compile(rf"(?<![\w-])(?:{labels})\s*:", re.IGNORECASE)


def cut_trailer(s: str) -> str:
    """Drop a trailing note/explanation paragraph ("\\n\\nNote: I replaced ...")."""
    m = _TRAILER.search(s)
    return s[: m.start()].strip() if m else s


def paragraphs(text: str) -> list[str]:
    """The non-empty paragraphs (blank-line separated) of a text, stripped."""
    return [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]


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
    colon = _label_colon(tuple(label_names))
    if colon is not None and not colon.match(original.strip()):
        # "contradiction: A man sleeps." A leading class name is the prompt's framing
        # (unless the original itself starts that way): cut like the echoes above.
        s = strip_prefixes(s, re.compile(rf"^\s*{colon.pattern}\s*", re.IGNORECASE), times=1)
    s = cut_trailer(s)
    # Multi-paragraph answers: as many leading paragraphs as the original has are the
    # candidate (one for a sentence; a news article's headline and body are two), the
    # rest is chatter. Cutting every reply to its first paragraph once made each BBC
    # candidate a bare headline, rejected as not_minimal: 0 of 30 seeds flipped.
    n = max(1, len(paragraphs(original)))
    paras = paragraphs(s)[:n]
    s = strip_quotes("\n\n".join(paras))
    s = "\n\n".join(re.sub(r"\s+", " ", p).strip() for p in paragraphs(s))
    if not words(s):
        return None, REJECT_EMPTY
    if words(s) == words(original):
        return None, REJECT_ECHO
    if len(s) > max_ratio * max(len(original), 40):
        return None, REJECT_TOO_LONG
    if not is_minimal(original, s, max_edit_fraction):
        return None, REJECT_NOT_MINIMAL
    return s, ""


def is_minimal(original: str, text: str, max_edit_fraction: float | None) -> bool:
    """At most `max_edit_fraction` of the original's words changed (3 always allowed)."""
    if max_edit_fraction is None:
        return True
    allowed = max(3, int(max_edit_fraction * len(words(original))))
    return word_edit_distance(original, text) <= allowed


# ----------------------------------------------------------------- word-swap replies

_HAS_LETTER = re.compile(r"[^\W\d_]")
_REPLY_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")
# The prompt's labels before an answer: cut, and what follows is the answer.
_REPLY_PREFIX = re.compile(
    r"^(?:opposite(?: of [^:]*)?|answer|replacement)\s*[:\-–]\s*", re.IGNORECASE
)
# The prompts' own wording left in what should be a bare word ("Opposite of 'marketing",
# "Replace 'shares' with...", "a word typical of tech").
_FRAMING = re.compile(
    r"^(?:opposite|replace|replacement|answer|word)\b|\btypical of\b|\bopposite of\b",
    re.IGNORECASE,
)


def check_replacement(
    raw: Any,
    *,
    word: str | None = None,
    label_names: tuple[str, ...] | list[str] = (),
    max_words: int = 3,
    max_chars: int = 40,
) -> tuple[str | None, str]:
    """One word-swap reply → (replacement, "") or (None, reason); never raises.

    The first line counts; a leading "Opposite of 'x':" / "Answer:" is cut (what follows
    is the answer), quotes and trailing explanations are dropped. Rejected:
    `unparsable` (empty, no letter, longer than `max_words` words), `framing` (a class
    name followed by a colon, the prompt's wording, the asked word quoted back),
    `function_words` (only words like "yet", "unlike", "the"), `fragment` (a phrase
    ending in an article, preposition or conjunction: "Encounter A").
    """
    if not isinstance(raw, str):
        return None, REJECT_UNPARSABLE
    line = raw.strip().split("\n", 1)[0].strip()
    colon = _label_colon(label_names)
    if colon is not None and colon.search(line):
        return None, REJECT_FRAMING
    line = _REPLY_PREFIX.sub("", line)
    line = line.strip().strip("\"'“”‘’`*").strip()
    line = re.split(r"[.;:!?(\[]", line, maxsplit=1)[0].strip().strip("\"'“”‘’`,").strip()
    if not line or not _HAS_LETTER.search(line):
        return None, REJECT_UNPARSABLE
    if _FRAMING.search(line) or (word and f"'{word.lower()}" in line.lower()):
        return None, REJECT_FRAMING
    if len(line.split()) > max_words or len(line) > max_chars:
        return None, REJECT_UNPARSABLE
    toks = [t.lower() for t in _REPLY_WORD.findall(line)]
    if toks and all(t in FUNCTION_WORDS for t in toks):
        return None, REJECT_FUNCTION_WORDS
    if len(toks) > 1 and toks[-1] in DANGLING_WORDS:
        return None, REJECT_FRAGMENT
    return line, ""


# ------------------------------------------------------------------ sentence pairs

EDIT_SIDES = ("text", "text_pair")


def pair_inputs(
    edited: list[str], kept: list[str] | None, edit_side: str = "text_pair"
) -> list[Any]:
    """Teacher inputs for edited texts: the texts themselves on single-text tasks, else
    (text, text_pair) pairs with the kept side in its place."""
    if kept is None:
        return list(edited)
    if edit_side not in EDIT_SIDES:
        raise ValueError(f"edit_side must be one of {EDIT_SIDES}, got {edit_side!r}")
    if len(kept) != len(edited):
        raise ValueError(f"{len(edited)} edited texts but {len(kept)} kept ones")
    if edit_side == "text_pair":
        return list(zip(kept, edited, strict=True))
    return list(zip(edited, kept, strict=True))


def _side_line(name: str) -> re.Pattern:
    return re.compile(
        rf"^\s*(?:(?:rewritten|new|original|edited|revised|changed)\s+)?{re.escape(name)}"
        rf"\s*(?:\([^)\n]*\))?\s*:\s*(.*)$",
        re.IGNORECASE,
    )


def split_pair_reply(raw: Any, kept: str, kept_name: str, edited_name: str) -> tuple[Any, str]:
    """A reply on a sentence pair → (the edited side's text, "") or (None, reason).

    A model shown both sides may answer with both ("Premise: ...\nHypothesis: ..."):
    the edited side is taken from its line, and if the kept side comes back changed the
    reply is `kept_side_changed`. A reply with no side labels is returned as it is
    (`edits_kept_side` checks it once cleaned).
    """
    if not isinstance(raw, str):
        return raw, ""
    lines = strip_markup(raw).split("\n")
    found: dict[str, str] = {}
    for name in (kept_name, edited_name):
        pat = _side_line(name)
        for j, line in enumerate(lines):
            m = pat.match(line)
            if m:
                value = m.group(1).strip()
                rest = [x.strip() for x in lines[j + 1 :] if x.strip()]
                found[name] = value or (rest[0] if rest else "")
                break
    if kept_name in found and kept_name != edited_name:
        if words(strip_quotes(found[kept_name])) != words(kept):
            return None, REJECT_KEPT_CHANGED
        if edited_name not in found:
            return None, REJECT_EMPTY
    if edited_name in found:
        return found[edited_name], ""
    return raw, ""


def edits_kept_side(candidate: str, kept: str, edited: str) -> bool:
    """Is a cleaned candidate the kept side, or an edit of it, instead of an edit of the
    edited side? True when it is nearer (in words) the kept side than the edited side,
    and nearer the kept side than the edited side itself was: NLI hypotheses often copy
    much of their premise, and a plain "nearer the premise" test would refuse good edits.
    """
    to_kept = word_edit_distance(candidate, kept)
    return to_kept < word_edit_distance(candidate, edited) and to_kept < word_edit_distance(
        edited, kept
    )


def kept_side_intact(original: dict[str, Any], candidate: dict[str, Any], edit_side: str) -> bool:
    """The side a pair counterfactual keeps is verbatim the original's."""
    kept = "text" if edit_side == "text_pair" else "text_pair"
    return candidate.get(kept) == original.get(kept)
