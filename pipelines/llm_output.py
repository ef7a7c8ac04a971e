"""Defensive parsing of LLM output, for every method: it is untrusted text.

Small instruction models wrap the answer in chatter ("Sure! Here is the answer:"), quotes,
markdown and code fences, or refuse. This module holds only what is true of any answer:

- `clean_text(raw)`: the generic cleaner, (text, "") or (None, reason). It never cuts
  what follows the answer ("Explanation: ...", a second paragraph): explanation
  distillation keeps exactly that part.
- `parse_json_object(text)`: the first complete JSON object in an answer (code fences and
  chatter around it allowed), or a reject reason. Structured output
  (`Sampling.json_schema`) makes valid JSON likely, not certain: a backend may ignore
  the schema, and `max_tokens` still truncates.

What an answer must be for one method lives with that method: CoD's validator (echoes,
trailing notes, length, minimality) is `pipelines/counterfactual_checks.py`. Callers count
the reasons in their stats; nothing is dropped silently.
"""

from __future__ import annotations

import json
import re
from typing import Any

from raydistill.pipelines.edits import words

REJECT_EMPTY = "empty"
REJECT_REFUSAL = "refusal"

# Chatter a model puts before any answer ("Sure!", "Here is ...:", "Answer:"). Whole
# words only: "Surely the best film" and "Oklahoma!" are answers, not chatter; a dash
# separates only with a space after it ("Result-oriented" is a word).
GENERIC_PREFIXES = r"""
        (?:sure|okay|ok|certainly|of\ course)\b[!,.]?\s*
      | here(?:'s|\ is|\ are)\b[^:\n]*:\s*
"""
_GENERIC_PREFIX = re.compile(
    rf"""^\s*(?:{GENERIC_PREFIXES}
      | (?:the\ )?(?:output|answer|result|response)\s*(?::|[\-–](?=\s))\s*
    )""",
    re.IGNORECASE | re.VERBOSE,
)
REFUSAL = re.compile(
    r"\b(?:i\s*(?:'m|am)\s*(?:sorry|unable|not able)|i\s*can(?:no|')t|as an ai|"
    r"i\s*(?:will|would)\s*not|cannot (?:help|assist|comply))\b",
    re.IGNORECASE,
)
_QUOTES = "\"'“”‘’`«»"
_FENCE = re.compile(r"^```\w*\n?|```$")


def strip_markup(raw: str) -> str:
    """Carriage returns, a code fence around the whole answer, markdown bold."""
    s = raw.replace("\r", "").strip()
    s = _FENCE.sub("", s).strip()
    return s.replace("**", "").strip()


def is_refusal(s: str) -> bool:
    """A refusal near the start ("I'm sorry, but I can't ...")."""
    return bool(REFUSAL.search(s[:200]))


def strip_prefixes(s: str, pattern: re.Pattern, times: int = 3) -> str:
    """Cut leading chatter repeatedly ("Sure! Here is the answer: ...")."""
    for _ in range(times):
        new = pattern.sub("", s, count=1)
        if new == s:
            break
        s = new.strip()
    return s


def strip_quotes(s: str) -> str:
    """Quotes around the whole answer (nested too), or a lone opening one."""
    s = s.strip()
    # Indices, not slices: peeling n nested quote pairs by slicing copies the text n times
    # (a 300k-character run of backticks took 4 s).
    i, j = 0, len(s)
    while j - i >= 2 and s[i] in _QUOTES and s[j - 1] in _QUOTES:
        i, j = i + 1, j - 1
        while i < j and s[i].isspace():
            i += 1
        while j > i and s[j - 1].isspace():
            j -= 1
    s = s[i:j]
    # A lone opening quote with no closing one (the model ran out of tokens).
    if s and s[0] in _QUOTES and s.count(s[0]) == 1:
        s = s[1:].strip()
    return s


def _tidy_whitespace(s: str) -> str:
    """Runs of spaces collapsed, lines stripped, paragraphs kept (at most one blank line)."""
    lines = [re.sub(r"[ \t\f\v]+", " ", line).strip() for line in s.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def clean_text(raw: str | None) -> tuple[str | None, str]:
    """The generic cleaner: (text, "") for a usable answer, or (None, reason).

    Strips markup (code fences, bold), leading chatter ("Sure! Here is the answer:"),
    quotes around the whole answer and extra whitespace (paragraphs are kept). Rejects
    `empty` (nothing with a letter or digit left) and `refusal`. Everything after the
    answer stays: a trailing "Explanation: ..." is content here.
    """
    if not isinstance(raw, str):
        return None, REJECT_EMPTY
    s = strip_markup(raw)
    if is_refusal(s):
        return None, REJECT_REFUSAL
    # Markup again: a fence opened after the chatter ("Sure!\n```\n...") starts only now.
    s = strip_markup(strip_prefixes(s, _GENERIC_PREFIX))
    s = _tidy_whitespace(strip_quotes(s))
    if not words(s):
        return None, REJECT_EMPTY
    return s, ""


def clean_candidate(raw: str | None, original: str, max_ratio: float = 3.0, **kwargs: Any):
    """CoD's validator, kept here for old imports: see `counterfactual_checks`."""
    from raydistill.pipelines.counterfactual_checks import clean_candidate as cod_clean

    return cod_clean(raw, original, max_ratio, **kwargs)


# ------------------------------------------------------------------------- JSON

JSON_EMPTY = "empty"  # no text at all
JSON_MISSING = "no_json"  # no '{' anywhere
JSON_TRUNCATED = "truncated"  # an object starts but never ends (max_tokens cut it)
JSON_INVALID = "invalid_json"  # braces, but nothing in them decodes
JSON_NOT_OBJECT = "not_object"  # valid JSON, but a list / string / number
JSON_TOO_LONG = "too_long"
JSON_REJECTS = (
    JSON_EMPTY,
    JSON_MISSING,
    JSON_TRUNCATED,
    JSON_INVALID,
    JSON_NOT_OBJECT,
    JSON_TOO_LONG,
)
MAX_JSON_CHARS = 200_000
_MAX_OBJECT_STARTS = 32  # '{' positions tried: bounds the work on adversarial text
_JSON_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)(?:```|$)", re.DOTALL)
_DECODER = json.JSONDecoder()
_SURROGATE = re.compile("[\ud800-\udfff]")


def _writable(obj: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """`obj` with lone surrogates (JSON escapes like "\\udc00") replaced by U+FFFD.

    `json.loads` keeps them, but no UTF-8 writer (Parquet, SQLite, JSON files) accepts
    them, so a value holding one would fail the batch that stores it, not this row.
    """
    try:
        text = json.dumps(obj, ensure_ascii=False)
    except (RecursionError, ValueError, TypeError):
        return None, JSON_INVALID  # decodable, but too deep to write back
    if not _SURROGATE.search(text):
        return obj, ""
    try:
        return json.loads(_SURROGATE.sub("\ufffd", text)), ""
    except (RecursionError, ValueError):
        return None, JSON_INVALID


def _matching_brace(s: str, start: int) -> int | None:
    """Index of the '}' closing the '{' at `start` (JSON strings respected), or None."""
    depth, in_str, esc = 0, False, False
    for i in range(start, len(s)):
        c = s[i]
        if in_str:
            if esc:
                esc = False
            elif c == "\\":
                esc = True
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return i
    return None


def _first_object(s: str) -> tuple[dict[str, Any] | None, str]:
    """The first complete JSON object in `s` that is not nested in a broken one."""
    pos, tried, seen_brace = 0, 0, False
    while tried < _MAX_OBJECT_STARTS:
        start = s.find("{", pos)
        if start < 0:
            break
        seen_brace, tried = True, tried + 1
        try:
            obj, _ = _DECODER.raw_decode(s, start)
        except (ValueError, RecursionError):
            obj = None
        if isinstance(obj, dict):
            return obj, ""
        end = _matching_brace(s, start)
        if end is None:
            # Everything after this '{' is inside it: an inner object is only a fragment.
            return None, JSON_TRUNCATED
        pos = end + 1  # skip the whole broken span ("{curly}" in chatter), not into it
    return None, (JSON_INVALID if seen_brace else JSON_MISSING)


def parse_json_object(text: str | None) -> tuple[dict[str, Any] | None, str]:
    """Untrusted LLM text → (the JSON object it holds, "") or (None, reason).

    Accepts a bare object, one in a code fence, or one with chatter before and after
    ("Sure! {...} Hope this helps."); nested objects are kept whole. A truncated object
    (the answer hit `max_tokens`) is rejected as `truncated`, never repaired: a cut-off
    string value would read as a complete, wrong answer. Reasons are `JSON_REJECTS`.
    Never raises.
    """
    if not isinstance(text, str) or not text.strip():
        return None, JSON_EMPTY
    if len(text) > MAX_JSON_CHARS:
        return None, JSON_TOO_LONG
    s = text.strip()
    try:
        whole = json.loads(s)
    except (ValueError, RecursionError):
        whole = None
    else:
        return _writable(whole) if isinstance(whole, dict) else (None, JSON_NOT_OBJECT)
    reason = JSON_MISSING
    for m in _JSON_FENCE.finditer(s):
        body = m.group(1).strip()
        try:
            fenced = json.loads(body)
        except (ValueError, RecursionError):
            continue
        if isinstance(fenced, dict):
            return _writable(fenced)
        reason = JSON_NOT_OBJECT
    obj, why = _first_object(s)
    if obj is not None:
        return _writable(obj)
    return None, (why if why != JSON_MISSING else reason)
