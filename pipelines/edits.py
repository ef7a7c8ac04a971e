"""Word-level edit distance: how *minimal* a counterfactual edit is."""

from __future__ import annotations

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
