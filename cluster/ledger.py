"""The results ledger: one JSON line per finished student, and what makes it reusable.

Every method writes its students' results to `<out_dir>/results.jsonl` through
`Ledger.append`, each row stamped with a *signature*; a rerun of the same command reads
the rows whose signature matches and trains only the rest. That is how `raydistill run`
resumes after a crash, and how a grid grows (more seeds, more k) without retraining.

The signature covers everything that changes a student's result and nothing that does
not: the student's learned settings (not `zero_stage` or `placement_strategy`, which
change how it is trained, not what it learns), every data setting that picks rows
(task, files, columns, `dev_rows`, `test_rows`; not the folder they are read from), the
teacher's checkpoint, `experiment.lwd_beta`, and whatever the method adds (CoD: the
cache key of the counterfactuals its arms train on).

Appends are one `write` of whole lines, flushed and fsynced, so a driver killed mid-write
leaves at most one torn last line, which `read` skips and counts instead of crashing.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from raydistill.config import RunConfig, stable_hash

log = logging.getLogger(__name__)

RESULTS_FILE = "results.jsonl"
# StudentConfig fields that change how a student is trained, not what it learns.
EXECUTION_ONLY = ("zero_stage", "placement_strategy", "max_failures", "checkpoint_every")
# StudentConfig fields added after ledgers existed: left out of the hash at their
# default, so finished runs still resume; any other value is another student.
ADDED_LATER = {"precision": "auto"}
# DataConfig fields that say where files are, not which rows are used.
LOCATION_ONLY = ("data_dir",)


def student_signature(
    cfg: RunConfig, teacher_dir: str | None, extra: dict[str, Any] | None = None
) -> str:
    """The hash a finished student's result is valid for (see the module docstring)."""
    learned = {k: v for k, v in vars(cfg.student).items() if k not in EXECUTION_ONLY}
    for k, default in ADDED_LATER.items():
        if learned.get(k) == default:
            del learned[k]
    data = {k: v for k, v in vars(cfg.data).items() if k not in LOCATION_ONLY}
    sig: dict[str, Any] = {
        "student": learned,
        "data": data,
        "lwd_beta": cfg.experiment.lwd_beta,
        "teacher": teacher_dir,
        "method": cfg.method.name,
    }
    sig.update(extra or {})
    return stable_hash(sig)


class Ledger:
    """`results.jsonl` of one run folder."""

    def __init__(self, out_dir: str | Path) -> None:
        self.path = Path(out_dir) / RESULTS_FILE
        self.torn = 0  # unreadable lines skipped by the last read

    def read(self, signature: str | None = None) -> list[dict[str, Any]]:
        """All rows (or those with `signature`), skipping and counting torn lines."""
        if not self.path.exists():
            return []
        rows, self.torn = [], 0
        for n, line in enumerate(self.path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                self.torn += 1
                log.warning("%s line %d is not JSON (a torn write?); skipped", self.path, n)
                continue
            if isinstance(row, dict) and (signature is None or row.get("signature") == signature):
                rows.append(row)
        return rows

    def done(self, signature: str) -> set[str]:
        """Names of the jobs already finished under `signature`."""
        return {r["job"] for r in self.read(signature) if "job" in r}

    def append(self, rows: Iterable[dict[str, Any]]) -> None:
        text = "".join(json.dumps(r, default=str) + "\n" for r in rows)
        if not text:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a+b") as f:
            # A driver killed mid-write leaves a torn last line with no newline: start on
            # a line of our own, or the first new row would be glued to it and lost.
            if f.seek(0, os.SEEK_END) > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    text = "\n" + text
            f.write(text.encode())
            f.flush()
            os.fsync(f.fileno())


def read_results(out_dir: str | Path) -> list[dict[str, Any]]:
    """Every row of a run folder's ledger (for reports)."""
    return Ledger(out_dir).read()
