"""Load a task's splits as plain rows `{id, text, label}` from a local folder or the Hub.

Rows are validated here, once, so every later stage can trust them: a missing column, an
unknown label, an empty text or an unreadable file is an error that names the file and
the row. Splits have roles: `train` (teacher training and the k-shot pool), `dev`
(student selection; never a k-shot source), `test` (the reported metric).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from raydistill.config import DataConfig
from raydistill.pipelines.tasks import TaskSpec, get_task

Row = dict[str, Any]
ROLES = ("train", "dev", "test")


class DataError(ValueError):
    """Bad input data; the message names the file and row."""


def default_data_dir() -> Path | None:
    d = os.environ.get("RAYDISTILL_DATA_DIR")
    if d:
        return Path(d).expanduser()
    # A checkout next to the shared data folder (this project's development layout).
    here = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
    return here.resolve() if here.exists() else None


def read_table(path: str | Path) -> list[dict[str, Any]]:
    """CSV / TSV / JSONL → list of dicts, with errors that name the file."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix in (".jsonl", ".json"):
            out = []
            with path.open(encoding="utf-8") as f:
                for i, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise DataError(f"{path}: line {i} is not valid JSON ({e.msg})") from e
                    if not isinstance(obj, dict):
                        raise DataError(f"{path}: line {i} is not a JSON object")
                    out.append(obj)
            return out
        if suffix in (".tsv", ".csv"):
            delim = "\t" if suffix == ".tsv" else ","
            with path.open(encoding="utf-8", newline="") as f:
                # SST-2's TSVs contain bare quotes inside sentences: no quoting for TSV.
                quoting = csv.QUOTE_NONE if delim == "\t" else csv.QUOTE_MINIMAL
                return list(csv.DictReader(f, delimiter=delim, quoting=quoting))
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from e
    except csv.Error as e:
        raise DataError(f"{path}: unreadable table ({e})") from e
    raise DataError(f"{path}: unsupported file type {suffix!r} (use .tsv, .csv, .jsonl)")


def _parse_label(value: Any, spec: TaskSpec, names_ok: bool, where: str) -> int:
    names = [n.lower() for n in spec.label_names]
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError(f"{where}: empty label")
    if isinstance(value, str):
        v = value.strip()
        if v.lower() in names and (names_ok or not v.lstrip("-").isdigit()):
            return names.index(v.lower())
        if v.lstrip("-").isdigit():
            value = int(v)
        else:
            raise DataError(f"{where}: unknown label {value!r}; known: {list(spec.label_names)}")
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise DataError(f"{where}: unknown label {value!r}; known: {list(spec.label_names)}")
    idx = int(value)
    if not 0 <= idx < spec.num_labels:
        raise DataError(
            f"{where}: unknown label {value!r}; expected 0..{spec.num_labels - 1} "
            f"or one of {list(spec.label_names)}"
        )
    return idx


def rows_from_records(
    records: list[dict[str, Any]],
    spec: TaskSpec,
    source: str,
    text_column: str,
    label_column: str,
    names_ok: bool = True,
    id_prefix: str = "",
) -> list[Row]:
    """Validate records into rows; every problem names `source` and the row number."""
    if records:
        cols = set(records[0])
        for col in (text_column, label_column):
            if col not in cols:
                raise DataError(
                    f"{source}: missing column {col!r} (columns: {', '.join(sorted(cols))})"
                )
    rows = []
    for i, rec in enumerate(records, 1):
        where = f"{source}: row {i}"
        text = rec.get(text_column)
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: empty text in column {text_column!r}")
        label = _parse_label(rec.get(label_column), spec, names_ok, where)
        rows.append({"id": f"{id_prefix}{i - 1}", "text": text.strip(), "label": label})
    return rows


def _local_task_dir(cfg: DataConfig, spec: TaskSpec) -> Path | None:
    base = Path(cfg.data_dir).expanduser() if cfg.data_dir else default_data_dir()
    if base is None or spec.local_folder is None:
        return None
    d = base / spec.local_folder
    return d if d.exists() else None


def _load_hub(spec: TaskSpec, role: str) -> list[Row]:
    if spec.hub_id is None:
        raise DataError(f"task {spec.name!r} has no local files and no Hub id")
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - datasets is a dependency
        raise DataError("loading from the Hub needs the `datasets` package") from e
    split = spec.hub_splits.get(role, role)
    try:
        ds = datasets.load_dataset(spec.hub_id, spec.hub_config, split=split)
    except Exception as e:
        raise DataError(
            f"could not load {spec.hub_id}{'/' + spec.hub_config if spec.hub_config else ''} "
            f"split {split!r} from the Hub ({type(e).__name__}: {e}); offline, point "
            f"data.data_dir or $RAYDISTILL_DATA_DIR at a local copy"
        ) from e
    records = []
    for r in ds:
        text = " ".join(str(r[f]) for f in spec.hub_text_fields if r.get(f))
        label = r[spec.hub_label_field]
        if spec.hub_label_map is not None:
            if label not in spec.hub_label_map:
                raise DataError(f"{spec.hub_id}:{split}: unknown label {label!r}")
            label = spec.hub_label_map[label]
        records.append({"text": text, "label": label})
    return rows_from_records(
        records, spec, f"{spec.hub_id}:{split}", "text", "label", False, f"{role}-"
    )


def load_split(cfg: DataConfig, role: str) -> list[Row]:
    """One split's rows for a role (train/dev/test), local first, then the Hub."""
    if role not in ROLES:
        raise ValueError(f"unknown split role {role!r}; known: {ROLES}")
    spec = get_task(cfg.task, cfg.label_names)
    if spec.name == "custom":
        path = getattr(cfg, f"{role}_file")
        if path is None:
            raise DataError(f"task 'custom' needs data.{role}_file")
        records = read_table(path)
        return rows_from_records(
            records, spec, str(path), cfg.text_column, cfg.label_column, True, f"{role}-"
        )
    folder = _local_task_dir(cfg, spec)
    if folder is not None and (folder / spec.local_files[role]).exists():
        path = folder / spec.local_files[role]
        return rows_from_records(
            read_table(path),
            spec,
            str(path),
            spec.local_text_column,
            spec.local_label_column,
            spec.local_labels_are_names,
            f"{role}-",
        )
    return _load_hub(spec, role)


def load_human_counterfactuals(cfg: DataConfig, role: str = "train") -> dict[str, Row]:
    """IMDB-CAD: original row id → its human-written counterfactual row.

    `paired_*.tsv` holds each original next to its minimal edit under one `batch_id`; the
    original is recognised by its text, the other member of the pair is the edit.
    """
    spec = get_task(cfg.task)
    folder = _local_task_dir(cfg, spec)
    if spec.name != "imdb" or folder is None:
        raise DataError("human counterfactuals exist only for task imdb with local CAD data")
    originals = load_split(cfg, role)
    path = folder / f"paired_{role}.tsv"
    records = read_table(path)
    pairs: dict[str, list[dict[str, Any]]] = {}
    for i, rec in enumerate(records, 1):
        if "batch_id" not in rec:
            raise DataError(f"{path}: row {i}: missing column 'batch_id'")
        pairs.setdefault(rec["batch_id"], []).append(rec)
    batch_of, batch_of_prefix = {}, {}
    for bid, members in pairs.items():
        for j, m in enumerate(members):
            text = (m.get("Text") or "").strip()
            batch_of[text] = (bid, j)
            batch_of_prefix.setdefault(text[:60], (bid, j))
    out: dict[str, Row] = {}
    for row in originals:
        # A handful of CAD originals differ from their paired copy by a few characters;
        # fall back to the opening words.
        hit = batch_of.get(row["text"]) or batch_of_prefix.get(row["text"][:60])
        if hit is None or len(pairs[hit[0]]) != 2:
            raise DataError(f"{path}: no counterfactual pair for original {row['id']}")
        bid = hit[0]
        others = [pairs[bid][1 - hit[1]]]
        cf = rows_from_records(others, spec, f"{path} batch {bid}", "Text", "Sentiment", True)[0]
        out[row["id"]] = {"id": f"{row['id']}/human", "text": cf["text"], "label": cf["label"]}
    return out
