"""Counterfactual records: one row per (seed, target class), as stored and reported.

A record carries the edit and the teacher's view of it (logits, pooled hidden states for
LWD), how it was found (rounds, attempts, tokens), the edited side as it was
(`original_text`) and its fluency (`pipelines/fluency.py`: `lp_orig`, `lp_edit`,
`lp_delta`, `inserted_words`, `oov_words`; None / [] where not scored). Records cached
before a field existed are completed by `normalize_record`: a parquet table takes its
columns from its first row, so every row must have them all.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from raydistill.pipelines.fluency import RECORD_FIELDS, with_fluency_defaults


def llm_record(
    p: dict[str, Any], r: dict[str, Any], source: str, rnd: int, flipped: bool
) -> dict[str, Any]:
    """The record of generation item `p` after round `rnd`, from its verified row `r`."""
    rec = {
        "id": f"{p['id']}/cf",
        "parent_id": p.get("parent_id", p["id"]),
        "source": source,
        "text": str(r["cf_text"]) if flipped else "",
        "label": int(p["target"]),
        "parent_label": int(p["label"]),
        "flipped": flipped,
        "rounds": rnd,
        "attempts": int(p["attempts"]),
        "edit_words": int(r["edit_words"]) if flipped else -1,
        "teacher_logits": floats(r["cf_logits"]) if flipped else [],
        "teacher_hidden": floats(r["cf_hidden"]) if flipped else [],
        "teacher_pred": int(p["target"]) if flipped else -1,
        "generated_tokens": int(p["tokens"]),
        # The edited side as it was, for the report and the fluency comparison.
        "original_text": str(p["text"]),
        "flip_unfiltered": flipped or bool(p.get("had_flip")),
    }
    fl = json.loads(str(r.get("fluency") or "{}")) if flipped else {}
    rec.update(with_fluency_defaults({k: fl[k] for k in RECORD_FIELDS if k in fl}))
    if "kept" in p:
        # A sentence pair: the edited side in its place, the kept side as it was.
        edited = rec["text"]
        if p["edit_side"] == "text_pair":
            rec.update(text=p["kept"] if flipped else "", text_pair=edited)
        else:
            rec.update(text=edited, text_pair=p["kept"] if flipped else "")
        rec["edit_side"] = p["edit_side"]
    return rec


def normalize_record(rec: dict[str, Any]) -> dict[str, Any]:
    """A record cached before fluency, with the fields later ones carry."""
    rec.setdefault("original_text", None)
    rec.setdefault("flip_unfiltered", bool(rec["flipped"]))
    return with_fluency_defaults(rec)


def floats(x: Any) -> list:
    """Arrow/numpy nested arrays, or their JSON text → plain nested lists of float."""
    if isinstance(x, (str, bytes)):
        x = json.loads(x)
    return np.asarray(x.tolist() if hasattr(x, "tolist") else x, dtype=np.float32).tolist()


def human_fluency(
    seeds: list[dict[str, Any]], human: dict[str, dict[str, Any]], fluency_dir: str
) -> dict[str, dict[str, Any]]:
    """Seed id → the fluency fields of its human CAD edit (the seeds that have one)."""
    from raydistill.pipelines.fluency import scorer_for

    have = [s for s in seeds if s["id"] in human]
    scored = scorer_for(fluency_dir).fluency_pairs(
        [(s["text"], human[s["id"]]["text"]) for s in have]
    )
    return {s["id"]: {k: f[k] for k in RECORD_FIELDS} for s, f in zip(have, scored, strict=True)}


def save_records(records: list[dict[str, Any]], path: str | Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.parquet")
    # Columns from every row, not the first one's (which is what from_pylist takes): a
    # cache mixing records from before and after a new field keeps the field.
    keys = list(dict.fromkeys(k for r in records for k in r))
    pq.write_table(pa.table({k: [r.get(k) for r in records] for k in keys}), tmp)
    tmp.rename(path)


def load_records(path: str | Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()
