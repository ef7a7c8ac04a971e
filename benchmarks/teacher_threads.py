"""What `teacher.num_cpus` buys: the swap strategy's saliency stage at 1 and 2 CPUs.

    python -m benchmarks.teacher_threads --teacher ~/.cache/raydistill/teachers/imdb-... \
        --task imdb --rows 16 --max-length 256 --cpus 1 2

Ray sets an actor's OMP_NUM_THREADS to its CPUs, so at the default `teacher.num_cpus: 1`
the teacher's Ray Data stages run one torch thread whatever the node has (the IMDB
saliency stage ran at 100 % of one of this machine's 2 cores). This runs the real stage
(`pipelines.swaps.Saliency` in `map_batches`, as `generation_rounds.swap_rounds` does) on
the same training rows at each CPU share, checks that the word rankings agree, and writes
`benchmarks/results/teacher_threads.{md,json}`.
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


def seeds(task: str, n: int) -> list[dict]:
    import numpy as np

    from raydistill.config import DataConfig
    from raydistill.pipelines.datasets import load_split

    rows = load_split(DataConfig(task=task), "train")
    rows = [rows[i] for i in sorted(np.random.default_rng(0).choice(len(rows), n, replace=False))]
    return [{"id": r["id"], "text": r["text"], "source_label": int(r["label"])} for r in rows]


def saliency_pass(rows: list[dict], teacher: str, max_length: int, cpus: float):
    import ray

    from raydistill.pipelines.swaps import Saliency

    t0 = time.perf_counter()
    out = (
        ray.data.from_items(rows)
        .map_batches(
            Saliency,
            fn_constructor_kwargs=dict(teacher_dir=teacher, max_length=max_length, top=16),
            batch_size=16,
            batch_format="numpy",
            concurrency=1,
            num_cpus=cpus,
        )
        .take_all()
    )
    wall = time.perf_counter() - t0
    return {r["id"]: [int(i) for i in r["ranked"]] for r in out}, wall


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", required=True, help="a teacher classifier folder")
    ap.add_argument("--task", default="imdb")
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--cpus", type=float, nargs="+", default=[1.0, 2.0])
    ap.add_argument("--tag", default="teacher_threads")
    args = ap.parse_args(argv)
    import ray

    from raydistill.pipelines.swaps import word_spans

    rows = seeds(args.task, args.rows)
    words = sum(min(len(word_spans(r["text"])), 200) for r in rows)
    ray.init(num_cpus=4, include_dashboard=False)
    # One untimed pass starts the worker pool and loads the teacher files into the page
    # cache, so the first timed share is not charged for it.
    saliency_pass(rows[:1], args.teacher, args.max_length, 1.0)
    runs, rankings = [], {}
    for cpus in args.cpus:
        rankings[cpus], wall = saliency_pass(rows, args.teacher, args.max_length, cpus)
        runs.append({"cpus": cpus, "wall_s": round(wall, 1), "words_per_s": round(words / wall, 1)})
    ray.shutdown()
    base = rankings[args.cpus[0]]
    same = {f"{c:g}": sum(rankings[c][k] == base[k] for k in base) for c in args.cpus}
    command = "python -m benchmarks.teacher_threads " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    out = {
        "command": command,
        "task": args.task,
        "rows": len(rows),
        "occluded_words": words,
        "max_length": args.max_length,
        "runs": runs,
        "same_top16_ranking_as_first": same,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.tag}.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [
        "# Teacher stage threads (`teacher.num_cpus`)",
        "",
        f"Command: `{command}`",
        "",
        f"The swap strategy's saliency stage (`Saliency` in Ray Data, one actor) on "
        f"{len(rows)} {args.task} training rows (a fixed random sample): {words} occluded words, one teacher forward "
        f"each at {args.max_length} tokens.",
        "",
        "| teacher.num_cpus | wall (s) | words/s | speed-up | rows with the same top-16 ranking |",
        "|---|---|---|---|---|",
    ]
    for r in runs:
        agree = same[format(r["cpus"], "g")]
        lines.append(
            f"| {r['cpus']:g} | {r['wall_s']} | {r['words_per_s']} | "
            f"{runs[0]['wall_s'] / r['wall_s']:.2f}x | {agree} of {len(rows)} |"
        )
    (RESULTS / f"{args.tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
