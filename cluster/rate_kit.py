"""A blind human-rating kit for explanations, and the import of what raters send back.

The explanation study this project follows had people rate explanations 1–5 on five
dimensions without knowing which system wrote them. `make_kit` writes one static HTML
page per rater (12 explanations by default, shuffled, systems hidden behind opaque item
ids; the page needs no server and saves the answers as JSON or CSV in the browser), the
items as CSV, and `key.json` — the item → system map the organiser keeps. `import_ratings`
reads returned files, rejects what does not fit the kit *counted by reason* (unknown
item, score out of range, missing dimension, another kit, a repeated answer), and turns
the rest into a per-system table with inter-rater agreement on the items two raters saw.

Items come from any JSONL (`question`, `choices`, `answer`, `explanation`, `system`) or
from an explain run (`items_from_explain_run`: human CoS-E, teacher original, teacher
revised where the revision changed it).
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import json
import random
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from raydistill.pipelines.explanations import DIMENSIONS

REQUIRED = ("question", "choices", "answer", "explanation", "system")


class KitError(ValueError):
    """Bad kit input: names the file, row and field."""


@dataclass
class Item:
    item_id: str
    system: str
    question: str
    choices: list[str]
    answer: str
    explanation: str
    source_id: str


def _item_id(kit: str, source_id: str, system: str) -> str:
    # Opaque and stable: raters cannot read the system out of it; the organiser's key can.
    return hashlib.sha256(f"{kit}|{source_id}|{system}".encode()).hexdigest()[:10]


def read_items(path: str | Path, kit: str = "kit") -> list[Item]:
    """Items from JSONL; a bad row raises KitError naming file, row and field."""
    from raydistill.pipelines.datasets import DataError, read_table

    try:
        rows = read_table(path)  # JSONL parsing with errors that name file and line
    except DataError as e:
        raise KitError(str(e)) from e
    out, seen = [], set()
    for n, row in enumerate(rows, 1):
        for f in REQUIRED:
            if f not in row:
                raise KitError(f"{path}: row {n}: missing field {f!r}")
        choices = row["choices"]
        if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
            raise KitError(f"{path}: row {n}: field 'choices' must be a list of strings")
        for f in ("question", "answer", "explanation", "system"):
            if not isinstance(row[f], str) or not row[f].strip():
                raise KitError(f"{path}: row {n}: field {f!r} must be a non-empty string")
        source = str(row.get("id", n))
        key = (source, row["system"])
        if key in seen:
            raise KitError(f"{path}: row {n}: item {source!r} of system {row['system']!r} repeated")
        seen.add(key)
        out.append(
            Item(
                _item_id(kit, source, row["system"]),
                row["system"],
                row["question"],
                choices,
                row["answer"],
                row["explanation"].strip(),
                source,
            )
        )
    return out


def items_from_explain_run(run_dir: str | Path, rows: Iterable[dict[str, Any]], kit: str = "kit"):
    """Human CoS-E, teacher original and (where a revision changed it) teacher revised
    explanations of an explain run's questions. `rows`: the task's rows (id, question,
    choices, answer index, explanation) — the run folder keeps only the chain."""
    chain = {}
    for line in (Path(run_dir) / "explanations.jsonl").read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            chain[str(rec["id"])] = rec
    out = []
    for r in rows:
        rec = chain.get(str(r["id"]))
        if rec is None:
            continue
        choices = [str(c) for c in r["choices"]]
        base = dict(question=r["question"], choices=choices, answer=choices[int(r["answer"])])
        texts = {"human": r.get("explanation"), "teacher-original": rec.get("original")}
        if rec.get("revision") == "revised":
            texts["teacher-revised"] = rec.get("revised")
        for system, text in texts.items():
            if isinstance(text, str) and text.strip():
                sid = str(r["id"])
                out.append(
                    Item(
                        _item_id(kit, sid, system),
                        system,
                        source_id=sid,
                        explanation=text.strip(),
                        **base,
                    )
                )
    return out


def assign(
    items: list[Item], raters: int, per_rater: int = 12, raters_per_item: int = 2, seed: int = 0
) -> list[list[Item]]:
    """Each rater's page: `per_rater` distinct items, systems balanced, order shuffled.

    Every chosen item goes to `raters_per_item` raters (agreement needs overlap). Items
    are drawn round-robin over systems so each system gets the same share of ratings.
    """
    if raters < 1 or per_rater < 1 or raters_per_item < 1:
        raise KitError("raters, per_rater and raters_per_item must be >= 1")
    if raters_per_item > raters:
        raise KitError(f"raters_per_item={raters_per_item} needs at least that many raters")
    slots = raters * per_rater
    if slots % raters_per_item:
        raise KitError(f"raters × per_rater = {slots} is not a multiple of raters_per_item")
    need = slots // raters_per_item
    rng = random.Random(seed)
    by_system: dict[str, list[Item]] = defaultdict(list)
    for it in items:
        by_system[it.system].append(it)
    for v in by_system.values():
        rng.shuffle(v)
    chosen: list[Item] = []
    systems = sorted(by_system)
    while len(chosen) < need and any(by_system.values()):
        for s in systems:
            if by_system[s] and len(chosen) < need:
                chosen.append(by_system[s].pop())
    if len(chosen) < need:
        raise KitError(f"{raters} raters × {per_rater} items need {need} items; only {len(chosen)}")
    # Deal copies so no rater sees an item twice: copy j of item i goes to rater
    # (i + j·stride) mod raters, which are distinct for j < raters_per_item.
    pages: list[list[Item]] = [[] for _ in range(raters)]
    stride = max(1, raters // raters_per_item)
    for i, it in enumerate(chosen):
        for j in range(raters_per_item):
            pages[(i + j * stride) % raters].append(it)
    if any(len(p) != per_rater for p in pages):
        # Uneven deal (few raters): fall back to a shuffled greedy fill.
        pages = [[] for _ in range(raters)]
        for it in chosen:
            free = sorted(
                (p for p in range(raters) if it not in pages[p] and len(pages[p]) < per_rater),
                key=lambda p: len(pages[p]),
            )[:raters_per_item]
            if len(free) < raters_per_item:
                raise KitError("could not deal the items without repeating one on a page")
            for p in free:
                pages[p].append(it)
    for p in pages:
        rng.shuffle(p)
    return pages


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Explanation rating — rater {rater}</title>
<style>
body {{ font-family: sans-serif; max-width: 52em; margin: 2em auto; line-height: 1.4 }}
.item {{ border: 1px solid #bbb; border-radius: 6px; padding: 1em; margin: 1em 0 }}
.q {{ font-weight: bold }} .expl {{ background: #f4f4f4; padding: .5em }}
table.likert td, table.likert th {{ padding: 0 .5em; text-align: center }}
.missing {{ outline: 2px solid #c00 }}
</style></head><body>
<h1>Rate the explanations</h1>
<p>Kit <code id="kit">{kit}</code>, page for rater <b>{rater}</b>. For each question, read the
correct answer and its explanation, then rate the explanation from 1 (not at all) to 5
(completely) on each dimension. Which system wrote an explanation is not shown.</p>
<p><label>Your name or id: <input id="rater" value="{rater}"></label></p>
<form id="form">{items}</form>
<p><button type="button" id="save-json">Save answers (JSON)</button>
<button type="button" id="save-csv">Save answers (CSV)</button>
<span id="status" role="status"></span></p>
<script type="application/json" id="kit-data">{data}</script>
<script>
const KIT = JSON.parse(document.getElementById("kit-data").textContent);
function collect() {{
  const answers = [], missing = [];
  for (const it of KIT.items) {{
    const row = {{item_id: it}};
    const box = document.getElementById("item-" + it);
    let complete = true;
    for (const d of KIT.dimensions) {{
      const c = document.querySelector(`input[name="${{it}}__${{d}}"]:checked`);
      if (c) row[d] = Number(c.value); else complete = false;
    }}
    box.classList.toggle("missing", !complete);
    if (complete) answers.push(row); else missing.push(it);
  }}
  return {{answers, missing}};
}}
function download(name, text, type) {{
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([text], {{type}}));
  a.download = name;
  document.body.appendChild(a); a.click(); a.remove();
}}
function save(kind) {{
  const {{answers, missing}} = collect();
  const status = document.getElementById("status");
  if (missing.length) {{ status.textContent = missing.length + " item(s) not fully rated"; return; }}
  const rater = document.getElementById("rater").value.trim() || KIT.rater;
  const safe = rater.replace(/[^A-Za-z0-9_-]/g, "_");
  if (kind === "json") {{
    download(`ratings_${{safe}}.json`, JSON.stringify({{kit: KIT.kit, rater, answers}}, null, 1), "application/json");
  }} else {{
    const head = ["kit", "rater", "item_id", ...KIT.dimensions];
    const lines = [head.join(",")].concat(answers.map(a =>
      [KIT.kit, JSON.stringify(rater), a.item_id, ...KIT.dimensions.map(d => a[d])].join(",")));
    download(`ratings_${{safe}}.csv`, lines.join("\\n") + "\\n", "text/csv");
  }}
  status.textContent = "saved " + answers.length + " answers";
}}
document.getElementById("save-json").onclick = () => save("json");
document.getElementById("save-csv").onclick = () => save("csv");
</script></body></html>
"""


def _item_html(n: int, it: Item) -> str:
    e = html.escape
    choices = "".join(f"<li>{e(c)}</li>" for c in it.choices)
    rows = "".join(
        f"<tr><th scope='row'>{d}</th>"
        + "".join(
            f"<td><input type='radio' name='{it.item_id}__{d}' value='{v}' aria-label='{d} {v}'></td>"
            for v in range(1, 6)
        )
        + "</tr>"
        for d in DIMENSIONS
    )
    head = "".join(f"<th>{v}</th>" for v in range(1, 6))
    return (
        f"<div class='item' id='item-{it.item_id}'><p class='q'>{n}. {e(it.question)}</p>"
        f"<ul>{choices}</ul><p>Answer: <b>{e(it.answer)}</b></p>"
        f"<p class='expl'>{e(it.explanation)}</p>"
        f"<table class='likert'><tr><th></th>{head}</tr>{rows}</table></div>"
    )


def make_kit(
    items: list[Item],
    out_dir: str | Path,
    *,
    kit: str = "kit",
    raters: int = 4,
    per_rater: int = 12,
    raters_per_item: int = 2,
    seed: int = 0,
) -> dict[str, Any]:
    """Write rater_<i>.html, items.csv (no systems) and key.json; return the key."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pages = assign(items, raters, per_rater, raters_per_item, seed)
    for i, page in enumerate(pages, 1):
        data = {
            "kit": kit,
            "rater": f"r{i}",
            "dimensions": list(DIMENSIONS),
            "items": [it.item_id for it in page],
        }
        body = "".join(_item_html(n, it) for n, it in enumerate(page, 1))
        # JSON inside <script>: "</" must not close the element early.
        blob = json.dumps(data).replace("</", "<\\/")
        (out / f"rater_{i}.html").write_text(
            _PAGE.format(kit=html.escape(kit), rater=f"r{i}", items=body, data=blob),
            encoding="utf-8",
        )
    used = {it.item_id: it for p in pages for it in p}
    with (out / "items.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["item_id", "question", "choices", "answer", "explanation"])
        for it in used.values():
            w.writerow([it.item_id, it.question, " | ".join(it.choices), it.answer, it.explanation])
    key = {
        "kit": kit,
        "dimensions": list(DIMENSIONS),
        "items": {i: {"system": it.system, "source_id": it.source_id} for i, it in used.items()},
        "pages": {f"r{n}": [it.item_id for it in p] for n, p in enumerate(pages, 1)},
    }
    (out / "key.json").write_text(json.dumps(key, indent=1))
    return key


def _read_answers(path: Path) -> tuple[str | None, str | None, list[dict[str, Any]]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        doc = json.loads(text)
        if not isinstance(doc, dict) or not isinstance(doc.get("answers"), list):
            raise KitError(f"{path}: expected an object with an 'answers' list")
        return doc.get("kit"), doc.get("rater"), doc["answers"]
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows:
        return None, None, []
    return rows[0].get("kit"), rows[0].get("rater"), rows


def import_ratings(kit_dir: str | Path, files: Iterable[str | Path]) -> dict[str, Any]:
    """Returned JSON/CSV files → per-system table, agreement and rejects by reason."""
    key = json.loads((Path(kit_dir) / "key.json").read_text())
    items, dims = key["items"], key["dimensions"]
    rejects: Counter = Counter()
    kept: dict[tuple[str, str], dict[str, int]] = {}  # (rater, item) → scores
    for f in files:
        path = Path(f)
        try:
            kit, rater, answers = _read_answers(path)
        except (json.JSONDecodeError, UnicodeDecodeError, csv.Error) as e:
            raise KitError(f"{path}: unreadable ratings file ({e})") from e
        if kit != key["kit"]:
            rejects["wrong_kit"] += len(answers) or 1
            continue
        rater = str(rater or path.stem)
        for a in answers:
            item = a.get("item_id") if isinstance(a, dict) else None
            if item not in items:
                rejects["unknown_item"] += 1
                continue
            scores, why = {}, None
            for d in dims:
                v = a.get(d)
                try:
                    iv = int(v)
                except (TypeError, ValueError):
                    why = "missing_dimension" if v in (None, "") else "bad_score"
                    break
                if str(v).strip() not in (str(iv), f"{iv}.0") or not 1 <= iv <= 5:
                    why = "bad_score"
                    break
                scores[d] = iv
            if why:
                rejects[why] += 1
            elif (rater, item) in kept:
                rejects["duplicate"] += 1
            else:
                kept[(rater, item)] = scores
    by_system: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    raters_of: dict[str, set] = defaultdict(set)
    for (rater, item), scores in kept.items():
        s = items[item]["system"]
        raters_of[s].add(rater)
        for d, v in scores.items():
            by_system[s][d].append(v)
    table = []
    for s in sorted(by_system):
        row: dict[str, Any] = {"system": s, "ratings": len(by_system[s][dims[0]])}
        row["raters"] = len(raters_of[s])
        for d in dims:
            xs = np.asarray(by_system[s][d], dtype=float)
            row[d] = round(float(xs.mean()), 3)
            row[f"{d}_sd"] = round(float(xs.std(ddof=1)), 3) if len(xs) > 1 else 0.0
        table.append(row)
    # Agreement on items two raters saw: exact and within-one rates over all dimensions.
    per_item: dict[str, list[dict[str, int]]] = defaultdict(list)
    for (_r, item), scores in kept.items():
        per_item[item].append(scores)
    diffs = [
        abs(a[d] - b[d])
        for ss in per_item.values()
        for i, a in enumerate(ss)
        for b in ss[i + 1 :]
        for d in dims
    ]
    agreement = {
        "pairs": len(diffs) // len(dims) if dims else 0,
        "exact": round(float(np.mean([x == 0 for x in diffs])), 3) if diffs else None,
        "within_one": round(float(np.mean([x <= 1 for x in diffs])), 3) if diffs else None,
        "mean_abs_diff": round(float(np.mean(diffs)), 3) if diffs else None,
    }
    return {
        "kit": key["kit"],
        "ratings": len(kept),
        "rejects": dict(sorted(rejects.items())),
        "table": table,
        "agreement": agreement,
    }


def render_table(result: dict[str, Any]) -> str:
    dims = [d for d in DIMENSIONS]
    lines = [
        f"# Human ratings — kit {result['kit']}",
        "",
        f"{result['ratings']} ratings kept; rejected: "
        + (", ".join(f"{k} {v}" for k, v in result["rejects"].items()) or "none")
        + ".",
        "",
        "| system | ratings | raters | " + " | ".join(dims) + " |",
        "|---|---|---|" + "---|" * len(dims),
    ]
    for r in result["table"]:
        cells = " | ".join(f"{r[d]:.2f} ± {r[d + '_sd']:.2f}" for d in dims)
        lines.append(f"| {r['system']} | {r['ratings']} | {r['raters']} | {cells} |")
    a = result["agreement"]
    lines += [
        "",
        f"Agreement over {a['pairs']} rater pairs on shared items: exact {a['exact']}, "
        f"within one point {a['within_one']}, mean |difference| {a['mean_abs_diff']}.",
        "",
    ]
    return "\n".join(lines)
