"""Records → validated rows for the non-classification kinds (and NLI text pairs).

One function per kind; each problem is a DataError naming the source, row and field, so
later stages can trust every row (schema in notes/contracts.md).
"""

from __future__ import annotations

import json
from typing import Any

from raydistill.pipelines.bio import bio_problem


class DataError(ValueError):
    """Bad input data; the message names the file and row."""


def need_columns(records: list[dict[str, Any]], cols: list[str], source: str) -> None:
    if records:
        have = set(records[0])
        for col in cols:
            if col not in have:
                raise DataError(
                    f"{source}: missing column {col!r} (columns: {', '.join(sorted(map(str, have)))})"
                )


def _text(rec: dict, col: str, where: str, what: str = "text") -> str:
    v = rec.get(col)
    if not isinstance(v, str) or not v.strip():
        raise DataError(f"{where}: empty {what} in column {col!r}")
    return v.strip()


def _str_list(value: Any, where: str, col: str, sep: str | None) -> list[str]:
    """A list from JSONL, or a string split on `sep` (whitespace when None) from CSV/TSV."""
    if isinstance(value, str):
        s = value.strip()
        if s.startswith("["):
            try:
                value = json.loads(s)
            except json.JSONDecodeError:
                value = s.split(sep)
        else:
            value = [p.strip() for p in s.split(sep)] if s else []
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise DataError(f"{where}: column {col!r} must be a list of strings")
    return value


def token_rows(
    records, tag_names, source, tokens_col="tokens", tags_col="tags", id_prefix=""
) -> list[dict]:
    need_columns(records, [tokens_col, tags_col], source)
    known = set(tag_names)
    rows = []
    for i, rec in enumerate(records, 1):
        where = f"{source}: row {i}"
        tokens = _str_list(rec.get(tokens_col), where, tokens_col, None)
        tags = rec.get(tags_col)
        if isinstance(tags, list) and all(
            isinstance(t, int) and not isinstance(t, bool) for t in tags
        ):
            if any(not 0 <= t < len(tag_names) for t in tags):
                raise DataError(f"{where}: tag index out of range in column {tags_col!r}")
            tags = [tag_names[t] for t in tags]
        tags = _str_list(tags, where, tags_col, None)
        if not tokens or any(not t.strip() for t in tokens):
            raise DataError(f"{where}: empty tokens in column {tokens_col!r}")
        if len(tokens) != len(tags):
            raise DataError(
                f"{where}: {len(tokens)} tokens but {len(tags)} tags (columns "
                f"{tokens_col!r}, {tags_col!r})"
            )
        for t in tags:
            if t not in known:
                raise DataError(
                    f"{where}: unknown tag {t!r} in column {tags_col!r}; known: {list(tag_names)}"
                )
        bad = bio_problem(tags)
        if bad:
            raise DataError(f"{where}: malformed BIO in column {tags_col!r}: {bad}")
        rows.append(
            {"id": f"{id_prefix}{i - 1}", "text": " ".join(tokens), "tokens": tokens, "tags": tags}
        )
    return rows


def seq2seq_rows(records, source, source_col="source", target_col="target", id_prefix=""):
    need_columns(records, [source_col, target_col], source)
    rows = []
    for i, rec in enumerate(records, 1):
        where = f"{source}: row {i}"
        src = _text(rec, source_col, where, "source")
        tgt = _text(rec, target_col, where, "target")
        rows.append({"id": f"{id_prefix}{i - 1}", "text": src, "source": src, "target": tgt})
    return rows


def mcqa_rows(
    records,
    source,
    question_col="question",
    choices_col="choices",
    answer_col="answer",
    explanation_col="explanation",
    id_prefix="",
):
    need_columns(records, [question_col, choices_col, answer_col], source)
    rows = []
    for i, rec in enumerate(records, 1):
        where = f"{source}: row {i}"
        q = _text(rec, question_col, where, "question")
        choices = [c.strip() for c in _str_list(rec.get(choices_col), where, choices_col, "|")]
        if len(choices) < 2 or any(not c for c in choices):
            raise DataError(f"{where}: column {choices_col!r} needs at least 2 non-empty choices")
        a = rec.get(answer_col)
        if isinstance(a, str) and a.strip().lstrip("-").isdigit() and a.strip() not in choices:
            a = int(a.strip())
        if isinstance(a, str):
            if a.strip() not in choices:
                raise DataError(
                    f"{where}: answer {a!r} in column {answer_col!r} is not among the choices"
                )
            a = choices.index(a.strip())
        if isinstance(a, bool) or not isinstance(a, int) or not 0 <= a < len(choices):
            raise DataError(
                f"{where}: answer {a!r} in column {answer_col!r} is out of range 0..{len(choices) - 1}"
            )
        exp = rec.get(explanation_col)
        exp = exp.strip() if isinstance(exp, str) and exp.strip() else None
        rows.append(
            {
                "id": f"{id_prefix}{i - 1}",
                "text": q,
                "question": q,
                "choices": choices,
                "answer": a,
                "explanation": exp,
            }
        )
    return rows
