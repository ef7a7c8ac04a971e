"""System performance, measured side by side in one run (absolute times drift here).

1. Teacher generation tokens/s: a one-request-at-a-time `transformers.generate` loop over
   the same model (how reference CoD code calls its generator) vs the raydistill teacher
   pool (Ray Serve LLM + vLLM) fed by Ray Data, at several batch sizes (and, in the full
   run, replica counts); ratio to the loop and fraction of the CPU roofline
   (2·params FLOPs per token against the measured peak matmul FLOP/s).
2. Training samples/s: a plain PyTorch loop vs the raydistill Ray Train + DeepSpeed path at
   equal work with 1 worker, and the Ray path with 2 workers; overhead in %.
3. Teacher forward passes per training example: cached soft labels (one annotation pass)
   vs a teacher forward inside every step, both measured.
4. End-to-end stage times and peak memory of `recipes/sst2-cod.yaml`, read from a run's
   report.json (`--e2e-report`), plus peak node memory of this benchmark's own stages.

    python -m benchmarks.throughput --quick        # headline ratios, < 3 min
    python -m benchmarks.throughput                # full: writes results/throughput.{md,json}

The last printed line is the headline, e.g.
`pool_vs_sequential=12.3x roofline=41% train_overhead=8%`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.generation_throughput import (
    cod_prompts,
    decode_matmul_ceiling,
    engine_generation,
    peak_matmul_flops,
    pool_generation,
    sequential_generation,
    use_best_peak,
)
from benchmarks.throughput_report import plot, render_md
from benchmarks.train_throughput import (
    Workload,
    plain_torch_training,
    ray_training,
    training_rows,
)

RESULTS = Path(__file__).resolve().parent / "results"


# ------------------------------------------------------------------ driver


def find_teacher(cache: Path) -> str | None:
    hits = sorted((cache / "teachers").glob("sst2-*/raydistill_teacher.json"))
    return str(hits[-1].parent) if hits else None


def machine() -> dict[str, Any]:
    import psutil
    import torch

    return {
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _write_md(base: str, res: dict[str, Any]) -> None:
    plot(res, RESULTS / f"{base}.png")
    md = render_md(res).replace(
        "\n## Headline\n", f"\n![throughput]({base}.png)\n\n## Headline\n", 1
    )
    notes = RESULTS / "throughput_notes.md"  # the diagnosis, written by people, kept on re-runs
    if notes.exists():
        md += "\n" + notes.read_text()
    (RESULTS / f"{base}.md").write_text(md)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="headline ratios in < 3 min")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--e2e-report", default="runs/sst2-cod/report.json")
    ap.add_argument("--out", default=None, help="results basename (default: throughput[_quick])")
    ap.add_argument("--port", type=int, default=8011)
    ap.add_argument(
        "--render-only",
        action="store_true",
        help="rewrite the Markdown from the results JSON (and throughput_notes.md); measure nothing",
    )
    args = ap.parse_args(argv)
    if args.render_only:
        base = args.out or ("throughput_quick" if args.quick else "throughput")
        res = json.loads((RESULTS / f"{base}.json").read_text())
        _write_md(base, res)
        return 0

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from raydistill.cluster.runtime import ensure_ray
    from raydistill.registry import cache_root, resolve_model
    from raydistill.timing import Stopwatch

    quick = args.quick
    cores = os.cpu_count() or 2
    res: dict[str, Any] = {
        "command": "python -m benchmarks.throughput "
        + shlex.join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        # The pool rows compare only with runs of this same model (benchmarks.weakness_table).
        "model": args.model,
        "quick": quick,
        "notes": [],
    }
    sw = Stopwatch()
    # Enough prompts that a batch of 128 is one full engine batch; the pool's fixed cost
    # per Ray Data run (actor start, first request) is then a small share of the time.
    n_prompts = 64 if quick else 128
    n_seq = 2 if quick else 8
    max_new = 32 if quick else 48
    # replicas -> batch sizes. Two replicas share 2 cores, so small batches there only
    # repeat what one replica shows at a slower rate.
    grid = {1: [64]} if quick else {1: [8, 32, 64, 128], 2: [64, 128]}
    batch_sizes = sorted({b for bs in grid.values() for b in bs})

    with sw.stage("roofline"):
        roof = peak_matmul_flops(n=1024 if quick else 2048)
    model_dir = resolve_model(args.model)
    prompts = cod_prompts(n_prompts)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    prompt_tokens = [
        len(tok(tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True)).input_ids)
        for m in prompts
    ]
    with sw.stage("sequential_generation"):
        # The baseline gets its best dtype on this CPU (bf16 can win where AMX exists).
        seq_runs = [
            sequential_generation(model_dir, prompts[:n_seq], max_new, dtype)
            # Both dtypes in --quick too: which one wins varies between runs of this
            # machine (bf16 20.4 vs fp32 13.5 tok/s in one, the reverse in another), and a
            # weak baseline would inflate the headline ratio.
            for dtype in ("float32", "bfloat16")
        ]
        seq = max(seq_runs, key=lambda r: r["tokens_per_s"])
        for r in seq_runs:
            print(f"  sequential loop {r['dtype']}: {r['tokens_per_s']:.1f} tok/s", flush=True)
    with sw.stage("decode_ceiling"):
        roof["decode_ceiling"] = decode_matmul_ceiling(model_dir, [1, *batch_sizes])
    use_best_peak(roof, seq["params"])
    for c in roof["decode_ceiling"]:
        print(
            f"  decode matmuls at batch {c['batch_size']}: {c['tokens_per_s']:.0f} tok/s ceiling "
            f"({c['flops_per_s'] / 1e9:.0f} GFLOP/s)",
            flush=True,
        )
    res["roofline"] = roof
    print(
        f"  sequential loop: {seq['tokens_per_s']:.1f} tok/s; roofline {roof['tokens_per_s']:.0f} tok/s",
        flush=True,
    )

    ensure_ray()
    pools = []
    with sw.stage("pool_generation"):
        for r, sizes in grid.items():
            pools.append(pool_generation(args.model, prompts, max_new, sizes, r, args.port))
    engine = None
    if not quick:
        with sw.stage("engine_generation"):
            engine = engine_generation(args.model, n_prompts, max_new, batch_sizes)
        for r in engine["runs"]:
            print(f"  engine in-process batch={r['batch_size']}: {r['tokens_per_s']:.0f} tok/s")
    res["generation"] = {
        "engine_in_process": engine,
        "sequential": seq,
        "sequential_all": seq_runs,
        "pool": pools,
        "max_new_tokens": max_new,
        # Prefill work the generated-token rate does not count (2·params FLOPs per prompt token).
        "prompt_tokens_mean": sum(prompt_tokens) / len(prompt_tokens),
    }
    best_pool = max(run["tokens_per_s"] for p in pools for run in p["runs"])

    teacher = find_teacher(cache_root()) or find_teacher(Path(".cache/raydistill"))
    backbone = resolve_model("all-minilm-l6-v2")
    if teacher is None:
        teacher = backbone
        res["notes"].append(
            "no trained SST-2 teacher in the cache: the MiniLM backbone with an untrained "
            "head stands in (speed is the same, accuracies are meaningless)"
        )
    n_rows = 128 if quick else 256
    spec, rows = training_rows(n_rows, teacher, 64, with_hidden=False)
    labels = list(spec.label_names)
    dev = rows[:16]
    workloads = [
        # The few-shot student: 2 MiniLM layers, frozen embeddings (the recipe's shape).
        Workload("student", backbone, labels, rows, dev, 2, True, 4, 16),
    ]
    if not quick:
        # The teacher's shape: all 6 layers and the embeddings trained, batch 32.
        workloads.append(
            Workload("teacher", backbone, labels, rows, dev, None, False, 1, 32, lr=5e-5)
        )
    storage = str(Path(cache_root()) / "bench-train")
    from raydistill.config import load_config

    recipe_stage = load_config(Path(__file__).resolve().parents[1] / "recipes" / "sst2-cod.yaml")
    recipe_stage = recipe_stage.student.zero_stage
    shapes = []
    per_step = None
    with sw.stage("training"):
        for w in workloads:
            plain = plain_torch_training(w, threads=cores)
            print(f"  {w.name} plain torch: {plain['samples_per_s']:.1f} samples/s", flush=True)
            ray_runs = []
            # The recipe's ZeRO stage first (the headline), then the other stage (isolates
            # ZeRO's cost) and 2 workers.
            other = 2 if recipe_stage == 0 else 0
            grid = [(1, recipe_stage)]
            if not quick:
                grid += [(1, other), (2, recipe_stage)]
            for workers, stage in grid:
                r = ray_training(
                    w,
                    workers=workers,
                    storage=storage,
                    threads_per_worker=max(1, cores // workers),
                    zero_stage=stage,
                )
                ray_runs.append(r)
                print(
                    f"  {w.name} ray train {workers} worker(s) ZeRO-{stage}: "
                    f"{r['samples_per_s']:.1f} samples/s",
                    flush=True,
                )
            shapes.append({"workload": w.name, "plain": plain, "ray": ray_runs})
        if not quick:
            per_step = plain_torch_training(workloads[0], threads=cores, teacher_dir=teacher)
    res["training"] = {
        "workloads": shapes,
        "teacher_per_step": per_step,
        "rows": n_rows,
        "recipe_epochs": 60,
    }
    res["peak_memory_mb"] = sw.peak_mb
    res["stage_seconds"] = sw.t

    e2e = Path(args.e2e_report)
    if e2e.exists():
        rep = json.loads(e2e.read_text())
        res["e2e"] = {
            "report": str(e2e),
            "command": "raydistill run recipes/sst2-cod.yaml",
            "timings": rep.get("timings", {}),
            "peak_memory_mb": rep.get("peak_memory_mb", {}),
        }

    student = shapes[0]
    # Samples/s is a rate: the headline compares the training steps themselves. The span
    # including one-time costs (model build, DeepSpeed engine, evaluations) is reported
    # beside it; on jobs of a few seconds it measures those costs, not training.
    plain0, ray0 = student["plain"], student["ray"][0]
    overhead = 100 * (plain0["step_samples_per_s"] / ray0["step_samples_per_s"] - 1)
    span_overhead = 100 * (plain0["samples_per_s"] / ray0["samples_per_s"] - 1)
    ratio = best_pool / seq["tokens_per_s"]
    roof_pct = 100 * best_pool / roof["tokens_per_s"]
    line = (
        f"pool_vs_sequential={ratio:.1f}x roofline={roof_pct:.0f}% train_overhead={overhead:.0f}%"
    )
    res["headline"] = {
        "pool_vs_sequential": ratio,
        "roofline_pct": roof_pct,
        "train_overhead_pct": overhead,
        "train_span_overhead_pct": span_overhead,
        "best_pool_tokens_per_s": best_pool,
        "line": line,
    }
    base = args.out or ("throughput_quick" if quick else "throughput")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{base}.json").write_text(json.dumps(res, indent=2, default=str))
    _write_md(base, res)
    print(f"wrote {RESULTS / base}.md and .json", flush=True)
    print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
