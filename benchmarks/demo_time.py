"""`make demo` after install, on a fresh cache, per training precision.

    python -m benchmarks.demo_time                        # bf16 then fp32 (student + teacher)
    python -m benchmarks.demo_time --precisions bf16 --set student.epochs=30

Each run is `raydistill run recipes/sst2-cod.yaml` in its own process with a cache that
holds only what `make install` leaves in it (the bundled models converted to HF folders:
`models/`, `gguf/`, linked from the real cache), so the teacher is trained, the pool
started, every counterfactual generated and every student trained, as on a fresh clone.
The precision runs go one after the other on the same machine, so their wall times
compare as a ratio; the accuracies say whether bf16 autocast changed what was learnt.
Writes `benchmarks/results/demo_time.{md,json}`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RECIPE = ROOT / "recipes" / "sst2-cod.yaml"
# What scripts/install.sh's warm-up leaves in the cache; everything else starts empty.
INSTALLED = ("models", "gguf")


def fresh_cache(base: Path, parent: Path | None = None) -> Path:
    """A cache dir as a fresh install leaves it: the converted models, nothing learnt."""
    d = Path(tempfile.mkdtemp(prefix="rd-demo-cache-", dir=parent))
    for name in INSTALLED:
        if (base / name).exists():
            (d / name).symlink_to(base / name)
    return d


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def run_once(precision: str, extra: list[str], base_cache: Path) -> dict:
    from raydistill.cluster.report import arm_of

    cache = fresh_cache(base_cache)
    out = ROOT / "benchmarks" / "runs" / f"demo-{precision}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        sys.executable,
        "-m",
        "raydistill.cluster.cli",
        "run",
        str(RECIPE),
        f"out_dir={out}",
        f"cache_dir={cache}",
        f"student.precision={precision}",
        f"teacher.precision={precision}",
        *extra,
    ]
    load0 = load_average()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    (out / "logs").mkdir(parents=True, exist_ok=True)
    (out / "logs" / "benchmark_console.txt").write_text(proc.stdout + proc.stderr)
    shutil.rmtree(cache, ignore_errors=True)
    if proc.returncode != 0:
        raise SystemExit(
            f"demo run ({precision}) failed with exit {proc.returncode}; console in "
            f"{out / 'logs' / 'benchmark_console.txt'}:\n{proc.stderr[-3000:]}"
        )
    rep = json.loads((out / "report.json").read_text())
    return {
        "precision": precision,
        "command": " ".join(shlex.quote(c) for c in cmd[1:]),
        "wall_s": round(wall, 1),
        "load_average_start": load0,
        "load_average_end": load_average(),
        "timings": rep.get("timings"),
        "teacher_test_accuracy": (rep.get("teacher") or {}).get("test_accuracy"),
        **student_stats(out),
        "summary": [
            {"arm": arm_of(r), **{k: r[k] for k in ("k", "n_seeds", "accuracy", "accuracy_std")}}
            for r in rep["summary"]
        ],
        "cod_gains": rep.get("cod_gains"),
        "flip_rate": (rep.get("counterfactuals") or {}).get("flip_rate"),
    }


def student_stats(out: Path) -> dict:
    """Per-student seconds and precision from the run's ledger (`results.jsonl`; the
    report's result rows leave them out)."""
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line]
    return {
        "students": len(rows),
        "student_train_s": round(sum(r.get("train_s") or 0 for r in rows), 1),
        "student_step_s": round(sum(r.get("step_s") or 0 for r in rows), 1),
        "student_precision": sorted({str(r.get("precision")) for r in rows}),
    }


def render(runs: list[dict], command: str) -> str:
    from raydistill.cluster.report import arm_of

    lines = [
        "# `make demo` on a fresh cache, per training precision",
        "",
        *[
            f"Command: `{c}`"
            for c in dict.fromkeys(r.get("benchmark_command", command) for r in runs)
        ],
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, no GPU. Each run is "
        "`raydistill run recipes/sst2-cod.yaml` with a cache holding only the installed "
        "models (teacher, counterfactuals and LLM answers computed anew). Runs went one "
        "after the other: compare them as ratios.",
        "",
        "| precision | wall (min) | load avg start→end | teacher (s) | annotate (s) | "
        "generate (s) | train (s) | 24 students: train_s / step_s | teacher test acc | "
        "flip rate |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        t = r["timings"] or {}
        lines.append(
            f"| {r['precision']} ({'/'.join(r['student_precision'])}) | "
            f"{r['wall_s'] / 60:.1f} | {r['load_average_start']}→{r['load_average_end']} | "
            f"{t.get('teacher')} | {t.get('annotate')} | {t.get('generate')} | "
            f"{t.get('train')} | {r['student_train_s']} / {r['student_step_s']} | "
            f"{r['teacher_test_accuracy']:.3f} | {r['flip_rate']} |"
        )
    lines += ["", "Test accuracy per arm (mean ± sd over the recipe's seeds):", ""]
    arms = [(s["arm"], s["k"]) for s in runs[0]["summary"]]
    lines.append("| arm | k | " + " | ".join(r["precision"] for r in runs) + " |")
    lines.append("|---|---|" + "---|" * len(runs))
    for m, k in arms:
        cells = []
        for r in runs:
            s = next((x for x in r["summary"] if (x["arm"], x["k"]) == (m, k)), None)
            cells.append("–" if s is None else f"{s['accuracy']:.3f} ± {s['accuracy_std']:.3f}")
        lines.append(f"| {m} | {k} | " + " | ".join(cells) + " |")
    lines += ["", "CoD gains (points):", ""]
    for r in runs:
        gains = ", ".join(
            f"{arm_of(g)}@{g['k']}: {100 * g['gain']:+.1f}" for g in r["cod_gains"] or []
        )
        lines.append(f"- {r['precision']}: {gains}")
    notes = RESULTS / "demo_time_notes.md"
    if notes.exists():
        lines += ["", notes.read_text().rstrip()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--precisions", nargs="+", default=["bf16", "fp32"])
    p.add_argument("--set", nargs="*", default=[], help="extra key=value overrides")
    p.add_argument("--tag", default="demo_time")
    p.add_argument(
        "--refresh",
        action="store_true",
        help="re-read the run folders' ledgers into the saved JSON and re-render",
    )
    args = p.parse_args(argv)
    if args.refresh:
        saved = json.loads((RESULTS / f"{args.tag}.json").read_text())
        for r in saved["runs"]:
            r.update(student_stats(ROOT / "benchmarks" / "runs" / f"demo-{r['precision']}"))
        (RESULTS / f"{args.tag}.json").write_text(json.dumps(saved, indent=2))
        (RESULTS / f"{args.tag}.md").write_text(render(saved["runs"], saved["command"]))
        return 0
    command = "python -m benchmarks.demo_time " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    base = Path(os.environ.get("RAYDISTILL_CACHE") or "~/.cache/raydistill").expanduser()
    RESULTS.mkdir(parents=True, exist_ok=True)
    # Runs of other precisions already in the file are kept (each with its command), so
    # one precision can be rerun on its own.
    path = RESULTS / f"{args.tag}.json"
    saved = json.loads(path.read_text()) if path.exists() else {"runs": []}
    for r in saved["runs"]:
        r.setdefault("benchmark_command", saved.get("command", "?"))
    runs = [r for r in saved["runs"] if r["precision"] not in args.precisions]
    for prec in args.precisions:
        runs.append(run_once(prec, args.set, base) | {"benchmark_command": command})
        print(f"{prec}: {runs[-1]['wall_s']:.0f} s", flush=True)
        (RESULTS / f"{args.tag}.json").write_text(
            json.dumps({"command": command, "runs": runs}, indent=2)
        )
        (RESULTS / f"{args.tag}.md").write_text(render(runs, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
