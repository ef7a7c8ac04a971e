"""Words typical of each class, from the task's own training rows: the few-shot
demonstrations of multi-class word-swap prompts ("replace 'shares' with a word typical of
tech" → "software").

How they are chosen: class-conditional log-odds of each word against all other classes,
with an informative Dirichlet prior (the "fightin' words" statistic of Monroe, Colaresi
& Quinn, 2008), over document frequencies (a word counts once per row, so one long
article cannot make its pet word typical), keeping words of letters only, not function
words, seen in at least `min_rows` rows of the class; ranked by the z-score of the
log-odds, which discounts rare words the way raw frequency ratios do not.

Why not the teacher's occlusion saliency (`swaps.Saliency`) on a sample of train rows:
it costs one teacher forward per word per row (a 400-word BBC article is 400 forwards;
50 rows per class, 100k forwards, minutes on 2 cores), a small sample is dominated by its
own rows' topics, and the teacher already has its say where it matters: it picks which
of the seed's words to replace and verifies every edit. These words only show a small
generator what "typical of <class>" looks like. Counting is deterministic and takes a
second, so the words are recomputed per run and their content goes into the generation
cache key (`methods/cod.generation_key`) and beside the cached counterfactuals.

For sentence pairs the edited side is counted (NLI hypotheses: "sleeping", "nobody",
"outdoors" are the known class markers).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

from raydistill.pipelines.edits import FUNCTION_WORDS

_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")
# The prior's total weight: large enough that a word seen in a handful of rows is not
# "typical" of anything, small next to a task's thousands of rows.
PRIOR_WEIGHT = 500.0
# Version of this statistic: part of the generation cache key.
CLASS_WORDS_VERSION = 1


def row_words(text: str, min_chars: int = 3) -> set[str]:
    """The distinct content words of a text, lower-cased (no contractions or hyphenated
    pieces: "i'm", "year-old" are not a class's vocabulary)."""
    out = set()
    for w in _WORD.findall(text.lower()):
        if len(w) >= min_chars and w not in FUNCTION_WORDS and w.isalpha():
            out.add(w)
    return out


def class_words(
    rows: list[dict[str, Any]],
    label_names: tuple[str, ...] | list[str],
    *,
    field: str = "text",
    top: int = 8,
    min_rows: int = 3,
) -> dict[str, list[str]]:
    """label name → its `top` most typical words in `rows` (by log-odds z-score).

    `rows` are `{field: str, label: int}`; a class with no rows gets an empty list, and
    a word is another class's only if it is more typical there. Deterministic: ties
    break alphabetically.
    """
    num = len(label_names)
    docs = [Counter() for _ in range(num)]
    for i, r in enumerate(rows):
        label = int(r["label"])
        if not 0 <= label < num:
            raise ValueError(f"row {r.get('id', i)}: label {label} outside 0..{num - 1}")
        docs[label].update(row_words(str(r.get(field) or "")))
    total = Counter()
    for c in docs:
        total.update(c)
    n_all = sum(total.values())
    out: dict[str, list[str]] = {}
    for c, name in enumerate(label_names):
        n_c = sum(docs[c].values())
        n_rest = n_all - n_c
        scored = []
        for w, y_c in docs[c].items():
            if y_c < min_rows:
                continue
            a_w = PRIOR_WEIGHT * total[w] / n_all
            y_rest = total[w] - y_c
            delta = math.log((y_c + a_w) / (n_c + PRIOR_WEIGHT - y_c - a_w)) - math.log(
                (y_rest + a_w) / (n_rest + PRIOR_WEIGHT - y_rest - a_w)
            )
            z = delta / math.sqrt(1.0 / (y_c + a_w) + 1.0 / (y_rest + a_w))
            if z > 0:
                scored.append((-z, w))
        out[str(name)] = [w for _, w in sorted(scored)[:top]]
    return out


def swap_demos(
    words: dict[str, list[str]] | None, source: str, target: str, n: int = 4
) -> list[tuple[str, str]]:
    """Few-shot (word, replacement) pairs for a swap from `source` to `target`: the
    source class's typical words, each answered with one of the target's."""
    if not words:
        return []
    src, tgt = words.get(source) or [], words.get(target) or []
    return list(zip(src[:n], tgt[:n], strict=False))
