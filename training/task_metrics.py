"""Task metrics for the student kinds beyond classification, from the libraries users trust.

Entity F1 comes from `seqeval` (CoNLL's entity-level scoring: an entity counts only when
its type and both boundaries match) and ROUGE-L from `rouge-score`'s scorer, called
directly so the numbers match what `rouge_score` users report. What the libraries do not
cover — reading a choice out of free generated text — is here, and is deliberately strict
about ambiguity: a hedge that names two choices is not given credit for either.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

# "<answer> because <explanation>": the shape explanation-distilled students generate.
BECAUSE = " because "
_BECAUSE_RE = re.compile(r"\s*\bbecause\b\s*", re.IGNORECASE)
_ANSWER_LEAD_RE = re.compile(r"^\s*(?:the\s+)?answer(?:\s+is)?\s*[:\-]?\s*", re.IGNORECASE)
_ARTICLES = {"a", "an", "the"}


def entity_scores(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, float]:
    """Micro entity precision/recall/F1 (seqeval, default CoNLL mode) and token accuracy.

    `gold` and `pred` hold one BIO tag list per sentence, of equal lengths; a sentence
    with no entities on either side scores as agreement, not as a division by zero.
    """
    from seqeval.metrics import f1_score, precision_score, recall_score

    gold, pred = [list(g) for g in gold], [list(p) for p in pred]
    for i, (g, p) in enumerate(zip(gold, pred, strict=True)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: {len(g)} gold tags but {len(p)} predicted")
    n_tok = sum(len(g) for g in gold)
    hits = sum(a == b for g, p in zip(gold, pred, strict=True) for a, b in zip(g, p, strict=True))
    return {
        "entity_f1": float(f1_score(gold, pred, zero_division=0)) if gold else float("nan"),
        "entity_precision": float(precision_score(gold, pred, zero_division=0))
        if gold
        else float("nan"),
        "entity_recall": float(recall_score(gold, pred, zero_division=0)) if gold else float("nan"),
        "token_accuracy": hits / n_tok if n_tok else float("nan"),
    }


def sentence_entity_f1(gold: Sequence[str], pred: Sequence[str]) -> float:
    """Entity F1 of one sentence; 1.0 when neither side has an entity."""
    from seqeval.metrics import f1_score

    from raydistill.pipelines.bio import tags_to_spans

    if not tags_to_spans(list(gold)) and not any(t != "O" for t in pred):
        return 1.0
    return float(f1_score([list(gold)], [list(pred)], zero_division=0))


def rouge_l(preds: Sequence[str], refs: Sequence[str]) -> list[float]:
    """ROUGE-L F-measure per (prediction, reference) pair (rouge-score, Porter stemming)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [
        float(scorer.score(str(r), str(p))["rougeL"].fmeasure)
        for p, r in zip(preds, refs, strict=True)
    ]


def split_explanation(generated: Any) -> tuple[str, str]:
    """'<answer> because <explanation>' → (answer, explanation); no 'because' → (text, '')."""
    if not isinstance(generated, str):
        return "", ""
    parts = _BECAUSE_RE.split(generated.strip(), maxsplit=1)
    answer = parts[0].strip()
    return answer, (parts[1].strip() if len(parts) > 1 else "")


def _norm(s: Any) -> str:
    words = re.sub(r"[^0-9a-z]+", " ", str(s).lower()).split()
    while words and words[0] in _ARTICLES:
        words = words[1:]
    return " ".join(words)


def parse_answer(generated: Any, choices: Sequence[Any]) -> int | None:
    """The index of the choice a generated answer names, or None.

    Only the part before "because" is read (an "answer:" lead is dropped); texts are
    compared lower-cased, punctuation-free and without a leading article. In order: the
    choice it equals; else the longest choice it starts with; else the only choice it
    contains as whole words. Anything else (empty, non-text, two choices named) is None.
    """
    if not isinstance(generated, str) or not choices:
        return None
    answer = _norm(_ANSWER_LEAD_RE.sub("", split_explanation(generated)[0]))
    if not answer:
        return None
    normed = [_norm(c) if isinstance(c, str) else "" for c in choices]
    for i, c in enumerate(normed):
        if c and c == answer:
            return i
    starts = [(len(c), -i) for i, c in enumerate(normed) if c and answer.startswith(c + " ")]
    if starts:
        return -max(starts)[1]
    padded = f" {answer} "
    inside = {c: i for i, c in reversed(list(enumerate(normed))) if c and f" {c} " in padded}
    # A choice that is part of a longer contained choice ("york" in "new york") is not a
    # second answer.
    kept = [
        i for c, i in inside.items() if not any(c != o and f" {c} " in f" {o} " for o in inside)
    ]
    return kept[0] if len(kept) == 1 else None


def mcqa_scores(
    generated: Sequence[str], rows: Sequence[dict[str, Any]], explanations: bool
) -> dict[str, float]:
    """Answer accuracy, the share of outputs that name a choice at all, and (when the
    student explains) ROUGE-L of its explanation against the gold one, over rows that
    have a gold explanation."""
    parsed = [parse_answer(g, r["choices"]) for g, r in zip(generated, rows, strict=True)]
    out = {
        "answer_accuracy": float(
            np.mean([p == int(r["answer"]) for p, r in zip(parsed, rows, strict=True)])
        )
        if rows
        else float("nan"),
        "answer_parsed": float(np.mean([p is not None for p in parsed])) if rows else float("nan"),
    }
    if explanations:
        pairs = [
            (split_explanation(g)[1], r["explanation"])
            for g, r in zip(generated, rows, strict=True)
            if str(r.get("explanation") or "").strip()
        ]
        out["explanation_rougeL"] = (
            float(np.mean(rouge_l([p for p, _ in pairs], [r for _, r in pairs])))
            if pairs
            else float("nan")
        )
    return out


def kept_generations(
    generated: Sequence[str], rows: Sequence[dict[str, Any]], n: int
) -> list[dict[str, Any]]:
    """The first `n` generations as {id, answer, explanation, choice, correct}: what an
    explanation-distilled student wrote, kept for a judge and for reports. `choice` is
    the parsed choice index (None when the answer names no single choice)."""
    out = []
    for g, r in zip(list(generated)[:n], list(rows)[:n], strict=True):
        answer, why = split_explanation(g)
        choice = parse_answer(g, r["choices"])
        out.append(
            {
                "id": str(r.get("id", len(out))),
                "answer": answer,
                "explanation": why,
                "choice": choice,
                "correct": choice == int(r["answer"]),
            }
        )
    return out
