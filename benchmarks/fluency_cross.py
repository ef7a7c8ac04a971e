"""Each generator's counterfactuals scored by each bundled LM: fluency without self-scoring.

    python -m benchmarks.fluency_cross \
        --run smollm2-135m-instruct=benchmarks/runs/demo-fp32 \
        --run gemma3-270m=benchmarks/runs/sst2-gemma

A CoD run scores its edits under one LM that is never its generator (a model finds its
own text fluent), so a SmolLM2 run is scored by Gemma and a Gemma run by SmolLM2, and
their Δ columns cannot be compared. This rescored table puts every generator's verified
flips under every scorer: compare generators down a column; the cell where generator and
scorer are the same model is marked: it may flatter its own text. Reads each run
folder's `counterfactuals.parquet`; writes `benchmarks/results/fluency_cross.{md,json}`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SCORERS = ("gemma3-270m", "smollm2-135m-instruct")


def flips(run_dir: Path) -> list[tuple[str, str]]:
    """(original, edited) of every verified flip in a CoD run folder."""
    from raydistill.pipelines.counterfactual_records import load_records

    recs = load_records(run_dir / "counterfactuals.parquet")
    return [(str(r["original_text"]), str(r["text"])) for r in recs if r.get("flipped")]


def score(pairs: list[tuple[str, str]], scorer_name: str) -> dict:
    from raydistill.pipelines.fluency import fluency_summary, scorer_for
    from raydistill.registry import resolve_model

    scored = scorer_for(resolve_model(scorer_name)).fluency_pairs(pairs)
    return fluency_summary(scored, model=scorer_name) or {"n": 0}


def render(cells: dict, command: str, wall_s: float) -> str:
    gens = list(cells)
    lines = [
        "# Counterfactual fluency, every generator under every scorer",
        "",
        f"Command: `{command}` ({wall_s:.0f} s)",
        "",
        "Cell: mean Δ log-prob/token of the edit minus the original (share of edits below "
        "the original; share inserting a word that is not one token of the scorer's "
        "vocabulary; n). `(self)`: the scorer is the generator, which may flatter its own text.",
        "",
        "| generator | " + " | ".join(f"scored by {s}" for s in SCORERS) + " |",
        "|---|" + "---|" * len(SCORERS),
    ]
    for g in gens:
        row = []
        for s in SCORERS:
            c = cells[g].get(s) or {}
            if not c.get("n"):
                row.append("–")
                continue
            mark = " (self)" if s == g else ""
            row.append(
                f"{c['mean_delta']:+.3f}{mark} ({100 * c['share_delta_negative']:.0f}% below; "
                f"OOV {100 * c['share_with_oov']:.0f}%; n={c['n']})"
            )
        lines.append(f"| {g} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", action="append", required=True, help="GENERATOR=RUN_DIR")
    p.add_argument("--tag", default="fluency_cross")
    args = p.parse_args(argv)
    command = "python -m benchmarks.fluency_cross " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    t0 = time.perf_counter()
    cells: dict[str, dict] = {}
    for spec in args.run:
        gen, _, run_dir = spec.partition("=")
        if not run_dir:
            raise SystemExit(f"--run {spec!r}: expected GENERATOR=RUN_DIR")
        pairs = flips(Path(run_dir))
        cells[gen] = {"run": run_dir, **{s: score(pairs, s) for s in SCORERS}}
    wall = time.perf_counter() - t0
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.tag}.json").write_text(
        json.dumps({"command": command, "wall_s": round(wall, 1), "cells": cells}, indent=2)
    )
    (RESULTS / f"{args.tag}.md").write_text(render(cells, command, wall))
    print((RESULTS / f"{args.tag}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
