"""Word-level edit distance: how *minimal* a counterfactual edit is."""

from __future__ import annotations

import difflib
import re

_WORD = re.compile(r"\w+(?:'\w+)?|[^\w\s]")


def words(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens; case and spacing changes are not edits."""
    return _WORD.findall(text.lower())


def word_edit_distance(a: str, b: str) -> int:
    """Levenshtein distance over word tokens (insert, delete, substitute cost 1)."""
    x, y = words(a), words(b)
    if len(x) < len(y):
        x, y = y, x
    prev = list(range(len(y) + 1))
    for i, wx in enumerate(x, 1):
        cur = [i] + [0] * len(y)
        for j, wy in enumerate(y, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (wx != wy))
        prev = cur
    return prev[-1]


def inserted_words(a: str, b: str) -> list[str]:
    """The words `b` puts where `a` had others or none (substituted or inserted), in order.

    Lower-cased word tokens (`words`), punctuation and numbers left out: what an edit
    added to the text, the words whose fluency and vocabulary the report shows.
    """
    x, y = words(a), words(b)
    out: list[str] = []
    ops = difflib.SequenceMatcher(None, x, y, autojunk=False).get_opcodes()
    for tag, _i1, _i2, j1, j2 in ops:
        if tag in ("replace", "insert"):
            out += [w for w in y[j1:j2] if _LETTER.search(w)]
    return out


_LETTER = re.compile(r"[^\W\d_]")


def edit_window(a: str, b: str, context_chars: int) -> tuple[str, str, bool, bool]:
    """The part of `a` and of `b` that differs, with up to `context_chars` characters of
    their shared text either side (cut at whitespace): (a part, b part, cut at the start,
    cut at the end). Texts that differ near both ends come back whole.

    The shared prefix and suffix are the same in both parts, so the parts differ exactly
    where the texts do: a long review's one-word edit is compared locally, not diluted
    over hundreds of unchanged words.
    """
    n = min(len(a), len(b))
    p = 0
    while p < n and a[p] == b[p]:
        p += 1
    s = 0
    while s < n - p and a[len(a) - 1 - s] == b[len(b) - 1 - s]:
        s += 1
    start = 0
    if p > context_chars:
        cut = a.rfind(" ", 0, p - context_chars + 1)
        start = cut + 1 if cut >= 0 else 0
    tail = 0  # characters of the shared suffix dropped from the end
    if s > context_chars:
        suffix = a[len(a) - s :]
        cut = suffix.find(" ", context_chars)
        tail = s - cut if cut >= 0 else 0
    return a[start : len(a) - tail], b[start : len(b) - tail], start > 0, tail > 0


# Closed-class English words: articles, determiners, pronouns, prepositions, conjunctions,
# auxiliaries. A replacement made only of these carries no class ("Yet unlike"), a phrase
# ending in one is cut off ("Encounter A"), and they are never a class's typical words.
# Negations (not, no, never, nobody, nothing) are left out on purpose: on NLI they are
# the words that carry "contradiction".
_FUNCTION_WORDS = """
    a an the this that these those some any each every either neither both all such
    i me my mine we us our ours you your yours he him his she her hers it its they them
    their theirs who whom whose which what where when why how there here
    of in on at by for with without from to into onto upon over under about above below
    between among through during before after against toward towards across along around
    behind beyond near off out up down unlike like than as per via within
    and or but nor yet so if because although though while whereas unless until since
    whether also too very just only even still however therefore thus
    is am are was were be been being do does did has have had will would shall should
    can could may might must
"""
FUNCTION_WORDS = frozenset(_FUNCTION_WORDS.split())
# Words a phrase cannot end in: an article, a determiner, a preposition or a conjunction
# left dangling means the reply was cut off mid-phrase.
_DANGLING_WORDS = """
    a an the this that these those my your his her its our their every each some any
    of in on at by for with from to into onto upon about than as unlike
    and or but nor yet if because although though while whereas very
"""
DANGLING_WORDS = frozenset(_DANGLING_WORDS.split())
