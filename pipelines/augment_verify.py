"""Checks a generated sample must pass before it can teach the student.

A generated label is a claim, not a fact. NER: every stated entity must occur in the text
with a known type; its spans and BIO tags are computed here by token match, so the tags
the student learns are the text's, not the model's arithmetic. With the name checks on, a
stated entity must also look like a name (a capital letter: 99.96 % of CoNLL-2003's train
entities have one, against "points", "baby girl" and "332.66" that Qwen2.5-0.5B labelled)
and agree with the seed's own labels (a seed entity reused with another type, or left
untagged, teaches the student the opposite of the gold data). Summarization: a summary
must be non-empty, shorter than its document, and overlap it within bounds in content
words (no overlap = not about the document; near-total = a copy; "the" and "of" prove
nothing). Every kind: a sample that copies its seed
teaches nothing new. Classification's check is a teacher agreeing with the intended label
(done in the method with the task's teacher). Each reject is a named reason.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from raydistill.pipelines.bio import spans_to_tags

# Reject reasons.
R_COPY = "copy_of_seed"
R_ENTITY_ABSENT = "entity_absent"
R_WRONG_TYPE = "wrong_type"
R_OVERLAPPING = "overlapping"
R_CONFLICTING = "conflicting_types"
R_SUMMARY_EMPTY = "summary_empty"
R_SUMMARY_LONG = "summary_not_shorter"
R_OVERLAP_LOW = "summary_overlap_low"
R_OVERLAP_HIGH = "summary_overlap_high"
R_TOO_LONG = "too_long"
R_SUMMARY_ECHO = "summary_echoes_prompt"
R_NO_CONTENT = "summary_no_content_words"
R_NO_WORDS = "no_words"
R_NOT_A_NAME = "entity_not_a_name"
R_CONTRADICTS_SEED = "contradicts_seed"
R_SEED_ENTITY_UNTAGGED = "seed_entity_untagged"

_TOKEN = re.compile(r"\w+(?:[-'.&]\w+)*|[^\w\s]")


def tokenize(text: str) -> list[str]:
    """CoNLL-style tokens: words (with inner hyphens/apostrophes) and single punctuation."""
    return _TOKEN.findall(text)


def _words(text: str) -> list[str]:
    return [w.lower() for w in re.findall(r"\w+", text)]


@lru_cache(maxsize=1)
def _stop_words() -> frozenset[str]:
    # scikit-learn's English list (318 words): a list users know, not one invented here.
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


def content_words(text: str) -> list[str]:
    """Lower-cased words that are not English stop words (numbers count as content)."""
    stop = _stop_words()
    return [w for w in _words(text) if w not in stop]


def jaccard(a: str, b: str) -> float:
    wa, wb = set(_words(a)), set(_words(b))
    if not wa and not wb:
        return 1.0
    return len(wa & wb) / len(wa | wb)


def is_copy(text: str, seed_text: str, threshold: float = 0.9) -> bool:
    """Same words as the seed (≥ `threshold` Jaccard overlap), whatever the spacing/case."""
    return jaccard(text, seed_text) >= threshold


def _find_all(tokens: list[str], needle: list[str], case_sensitive: bool = False) -> list[int]:
    fold = (lambda t: t) if case_sensitive else str.lower
    hay, nd = [fold(t) for t in tokens], [fold(t) for t in needle]
    return [i for i in range(len(tokens) - len(nd) + 1) if hay[i : i + len(nd)] == nd]


def _surface_key(surface: str) -> str:
    """An entity's identity: its tokens, lower-cased (a headline's "CHINA" is "China")."""
    return " ".join(tokenize(surface)).lower()


def _has_capital(tokens: list[str] | str) -> bool:
    return any(c.isupper() for t in tokens for c in t)


def _seed_gazetteer(seed_entities: list[tuple[str, str]]) -> dict[str, tuple[list[str], str]]:
    """lower-cased key → (the seed's tokens, its one type). A surface the seed gives two
    types is ambiguous and left out: it can neither contradict nor be missed."""
    types: dict[str, set[str]] = {}
    surface: dict[str, list[str]] = {}
    for text, typ in seed_entities:
        key = _surface_key(text)
        types.setdefault(key, set()).add(typ.upper())
        surface.setdefault(key, tokenize(text))
    return {k: (surface[k], next(iter(t))) for k, t in types.items() if len(t) == 1 and k}


def ner_sample(
    text: str,
    entities: list[tuple[str, str]],
    types: list[str],
    max_tokens: int = 128,
    *,
    name_checks: bool = False,
    seed_entities: list[tuple[str, str]] | None = None,
) -> tuple[dict[str, Any] | None, str]:
    """(text, stated entities) → ({tokens, tags, spans}, "") or (None, reason).

    Longer entities are placed first; every occurrence of an entity is tagged (a name
    tagged once and left untagged elsewhere would teach both answers). An entity with no
    occurrence outside longer ones already placed is `overlapping`; one surface given two
    types is `conflicting_types`; a type outside the task's is `wrong_type`.

    `name_checks` (the weakness loop's default, for cased text): a text with no word is
    `no_words`, a stated entity without a capital letter `entity_not_a_name` (and its
    lower-case occurrences in the text stay untagged: matching ignores case), and, given
    the seed's (surface, type) pairs as `seed_entities`, a sample that reuses a seed
    entity with another type is `contradicts_seed` and one that writes a seed entity
    (same case) untagged is `seed_entity_untagged`. Off, the checks are the ones before.
    """
    tokens = tokenize(text)
    if len(tokens) > max_tokens:
        return None, R_TOO_LONG
    if name_checks and not any(c.isalpha() for t in tokens for c in t):
        return None, R_NO_WORDS
    known = {t.upper() for t in types}
    by_surface: dict[str, str] = {}
    for surface, typ in entities:
        t = typ.upper()
        if t not in known:
            return None, R_WRONG_TYPE
        if name_checks and not _has_capital(surface):
            return None, R_NOT_A_NAME
        key = _surface_key(surface)
        if by_surface.get(key, t) != t:
            return None, R_CONFLICTING
        by_surface[key] = t
    gazetteer = _seed_gazetteer(seed_entities or []) if name_checks else {}
    if any(gazetteer.get(k, (None, t))[1] != t for k, t in by_surface.items()):
        return None, R_CONTRADICTS_SEED
    taken = [False] * len(tokens)
    spans: list[tuple[str, int, int]] = []
    for key in sorted(by_surface, key=lambda k: -len(k.split())):
        needle = key.split()
        hits = _find_all(tokens, needle)
        if not hits:
            return None, R_ENTITY_ABSENT
        placed = lower = 0
        for i in hits:
            if any(taken[i : i + len(needle)]):
                continue
            if name_checks and not _has_capital(tokens[i : i + len(needle)]):
                lower += 1  # the stated "Companies" is a name; "companies" in the text is not
                continue
            for j in range(i, i + len(needle)):
                taken[j] = True
            spans.append((by_surface[key], i, i + len(needle)))
            placed += 1
        if not placed:
            return None, R_NOT_A_NAME if lower else R_OVERLAPPING
    # Case-sensitive: the seed's "US" in a sentence is a name, "us" is not.
    for seed_toks, _ in gazetteer.values():
        for i in _find_all(tokens, seed_toks, case_sensitive=True):
            if not any(taken[i : i + len(seed_toks)]):
                return None, R_SEED_ENTITY_UNTAGGED
    spans.sort(key=lambda s: s[1])
    return {"tokens": tokens, "tags": spans_to_tags(spans, len(tokens)), "spans": spans}, ""


def summary_problem(
    source: str,
    target: str,
    *,
    min_overlap: float = 0.2,
    max_overlap: float = 0.95,
    max_source_words: int = 600,
    instruction: str | None = None,
    max_instruction_overlap: float = 0.6,
) -> str:
    """ "" when (source, target) is a usable summary pair, else the reason.

    Overlap = the share of the summary's content words (stop words left out) found in the
    document: below `min_overlap` the summary is not about the document, above
    `max_overlap` with a short document it is a copy of its start. Counted over all
    words, as ROUGE-1 precision did before, "The of the and a" overlapped any English
    document fully and passed; a summary with no content word at all is refused.
    `instruction`: the prompt's words about the summary; a "summary" that is mostly those
    words (SmolLM2-135M wrote "One line of at most 10 words that states the document's
    main point ..." as a summary, and it passed the document-overlap check) is refused.
    """
    s_words, t_words = source.split(), target.split()
    if not t_words:
        return R_SUMMARY_EMPTY
    if instruction:
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=False)
        if scorer.score(instruction, target)["rouge1"].precision >= max_instruction_overlap:
            return R_SUMMARY_ECHO
    if len(s_words) > max_source_words:
        return R_TOO_LONG
    if len(t_words) >= len(s_words):
        return R_SUMMARY_LONG
    t_content = content_words(target)
    if not t_content:
        return R_NO_CONTENT
    in_doc = set(content_words(source))
    p = sum(w in in_doc for w in t_content) / len(t_content)
    if p < min_overlap:
        return R_OVERLAP_LOW
    if p > max_overlap and len(t_words) * 3 >= len(s_words):
        return R_OVERLAP_HIGH
    return ""
