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

from benchmarks.throughput_report import render_md
from benchmarks.train_throughput import (
    Workload,
    plain_torch_training,
    ray_training,
    training_rows,
)

RESULTS = Path(__file__).resolve().parent / "results"


# ------------------------------------------------------------------ roofline


def peak_matmul_flops(n: int = 2048, reps: int = 5) -> dict[str, float]:
    """Best achieved FLOP/s of a square matmul in fp32 and bf16 on all cores."""
    import torch

    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(n, n, dtype=dtype)
        b = torch.randn(n, n, dtype=dtype)
        torch.matmul(a, b)  # warm-up (thread pool, kernels)
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            torch.matmul(a, b)
            best = min(best, time.perf_counter() - t0)
        out[name] = 2 * n**3 / best
    out["peak"] = max(out["fp32"], out["bf16"])
    return out


def decode_matmul_ceiling(model_dir: str, batch_sizes: list[int], reps: int = 3) -> list[dict]:
    """Tokens/s one decode step's weight matmuls allow at each batch size, in bf16.

    The peak-FLOP/s roofline assumes square 2048-wide matmuls; a decode step of a 576-wide
    model multiplies (batch × 576) by (576 × 192 … 49152) matrices, which run far below
    peak on a CPU. Timing exactly those products (q, k, v, o, gate, up, down per layer and
    the tied LM head) gives the ceiling any engine could reach here before attention,
    sampling and scheduling: the diagnosis for a low roofline fraction.
    """
    import torch

    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    h, inter = cfg["hidden_size"], cfg["intermediate_size"]
    heads, kv = (
        cfg["num_attention_heads"],
        cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
    )
    kv_w = h // heads * kv
    layer = [(h, h), (h, kv_w), (h, kv_w), (h, h), (h, inter), (h, inter), (inter, h)]
    shapes = layer * cfg["num_hidden_layers"] + [(h, cfg["vocab_size"])]
    weights = {s: torch.randn(*s, dtype=torch.bfloat16) for s in set(shapes)}
    out = []
    for bs in batch_sizes:
        xs = {k: torch.randn(bs, k, dtype=torch.bfloat16) for k in {s[0] for s in shapes}}
        for s in shapes:  # warm-up
            xs[s[0]] @ weights[s]
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            for s in shapes:
                xs[s[0]] @ weights[s]
            best = min(best, time.perf_counter() - t0)
        flops = 2 * bs * sum(a * b for a, b in shapes)
        out.append(
            {
                "batch_size": bs,
                "step_s": best,
                "tokens_per_s": bs / best,
                "flops_per_s": flops / best,
            }
        )
    return out


def use_best_peak(roof: dict[str, Any], params: float) -> None:
    """The roofline's peak is the best matmul rate measured in the run.

    A single timing of one square matmul on a shared 2-core machine can come out below
    what the decode-shape matmuls reach minutes later; a peak below a measured rate would
    flatter every fraction of it.
    """
    best = max([roof["peak"], *(c["flops_per_s"] for c in roof.get("decode_ceiling") or [])])
    if best > roof["peak"]:
        roof["peak_square"] = roof["peak"]
        roof["peak"] = best
    roof["tokens_per_s"] = roof["peak"] / (2 * params)


# ------------------------------------------------------------------ generation


def cod_prompts(n: int, seed: int = 0) -> list[list[dict[str, str]]]:
    """Real counterfactual prompts on SST-2 training sentences (the job's workload)."""
    import random

    from raydistill.pipelines.datasets import load_split
    from raydistill.pipelines.prompts import counterfactual_messages
    from raydistill.pipelines.tasks import get_task

    from raydistill.config import DataConfig

    spec = get_task("sst2")
    rows = load_split(DataConfig(task="sst2"), "train")
    rng = random.Random(seed)
    picked = rng.sample(rows, n)
    out = []
    for r in picked:
        src = spec.label_names[int(r["label"])]
        tgt = spec.label_names[1 - int(r["label"])]
        out.append(counterfactual_messages(spec, r["text"], src, tgt))
    return out


def sequential_generation(
    model_dir: str, prompts, max_new_tokens: int, dtype: str = "float32"
) -> dict[str, Any]:
    """One prompt at a time through `model.generate` (all cores)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).eval()
    params = sum(p.numel() for p in model.parameters())
    tokens, t_total = 0, 0.0
    torch.manual_seed(0)
    for i, messages in enumerate([prompts[0], *prompts]):  # first call is a warm-up
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
        if not isinstance(ids, torch.Tensor):  # some versions return a BatchEncoding
            ids = ids["input_ids"]
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=True,
                temperature=0.9,
                top_p=0.95,
                max_new_tokens=max_new_tokens,
                pad_token_id=tok.pad_token_id or tok.eos_token_id,
            )
        dt = time.perf_counter() - t0
        if i == 0:
            continue
        tokens += int(out.shape[1] - ids.shape[1])
        t_total += dt
    return {
        "dtype": dtype,
        "prompts": len(prompts),
        "generated_tokens": tokens,
        "seconds": round(t_total, 2),
        "tokens_per_s": tokens / t_total,
        "params": params,
    }


def pool_generation(
    model: str,
    prompts,
    max_new_tokens: int,
    batch_sizes: list[int],
    replicas: int,
    port: int,
) -> dict[str, Any]:
    """Start the vLLM teacher pool and stream the prompts through it with Ray Data."""
    import ray
    from raydistill.pipelines.llm_stage import Sampling, chat_stage
    from raydistill.serving.teacher_pool import make_pool

    from raydistill.config import PoolConfig

    cfg = PoolConfig(
        backend="vllm",
        model=model,
        min_replicas=replicas,
        max_replicas=replicas,
        http_port=port,
    )
    pool = make_pool(cfg)
    t0 = time.perf_counter()
    endpoint = pool.start()
    startup = time.perf_counter() - t0
    runs = []
    try:
        sampling = Sampling(n=1, temperature=0.9, top_p=0.95, max_tokens=max_new_tokens)
        # Warm-up: one untimed pass over the whole prompt set at the largest batch. The
        # first large batch a fresh engine sees pays for lazy allocations (KV blocks,
        # kernels for new shapes): measured 105 tok/s cold vs 177 warm for the same 64
        # requests. Every later round of a job runs warm, so the rates below are
        # steady-state; the cold pass is reported beside them.
        t1 = time.perf_counter()
        rows = chat_stage(
            ray.data.from_items([{"messages": m} for m in prompts]),
            endpoint,
            sampling,
            batch_size=max(batch_sizes),
        ).take_all()
        cold_s = time.perf_counter() - t1
        cold_tokens = int(sum(int(r["generated_tokens"] or 0) for r in rows))
        for bs in batch_sizes:
            ds = ray.data.from_items([{"messages": m} for m in prompts])
            t1 = time.perf_counter()
            rows = chat_stage(ds, endpoint, sampling, batch_size=bs).take_all()
            dt = time.perf_counter() - t1
            errors = [r["llm_error"] for r in rows if r.get("llm_error")]
            tokens = int(sum(int(r["generated_tokens"] or 0) for r in rows))
            runs.append(
                {
                    "replicas": replicas,
                    "batch_size": bs,
                    "prompts": len(rows),
                    "generated_tokens": tokens,
                    "seconds": round(dt, 2),
                    "tokens_per_s": tokens / dt,
                    "failed_requests": len(errors),
                    "first_error": errors[0] if errors else None,
                }
            )
            print(
                f"  pool replicas={replicas} batch={bs}: {tokens} tokens in {dt:.1f}s "
                f"= {tokens / dt:.0f} tok/s ({len(errors)} failed)",
                flush=True,
            )
    finally:
        pool.shutdown()
    return {
        "startup_s": round(startup, 1),
        "cold": {
            "batch_size": max(batch_sizes),
            "prompts": len(prompts),
            "generated_tokens": cold_tokens,
            "seconds": round(cold_s, 2),
            "tokens_per_s": cold_tokens / cold_s,
        },
        "runs": runs,
    }


def engine_generation(model: str, n_prompts: int, max_new_tokens: int, batch_sizes: list[int]):
    """The vLLM engine in-process (`vllm.LLM.chat`, no Serve, no HTTP), same settings as
    the pool's CPU defaults: how much of the pool's time goes to serving rather than to
    the engine. Runs in a child process so the engine's memory is returned afterwards."""
    import subprocess

    cmd = [
        sys.executable, "-m", "benchmarks.throughput", "--engine-only", "--model", model,
        "--engine-args", json.dumps({"n": n_prompts, "max_new": max_new_tokens, "bs": batch_sizes}),
    ]  # fmt: skip
    env = dict(os.environ, VLLM_CPU_NUM_OF_RESERVED_CPU="0")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("ENGINE_RESULT "):
            return json.loads(line[len("ENGINE_RESULT ") :])
    raise RuntimeError(f"in-process engine run failed: {out.stderr[-2000:]}")


def _engine_only(model: str, args: dict[str, Any]) -> None:
    from raydistill.serving.teacher_pool import CPU_ENGINE_DEFAULTS
    from vllm import LLM, SamplingParams

    from raydistill.registry import resolve_model

    prompts = cod_prompts(args["n"])
    t0 = time.perf_counter()
    llm = LLM(
        model=resolve_model(model),
        dtype="bfloat16",
        max_model_len=1024,
        gpu_memory_utilization=0.1,
        **CPU_ENGINE_DEFAULTS,
    )
    startup = time.perf_counter() - t0
    sp = SamplingParams(n=1, temperature=0.9, top_p=0.95, max_tokens=args["max_new"])
    llm.chat(prompts[: max(args["bs"])], sp, use_tqdm=False)  # warm-up at the largest batch
    runs = []
    for bs in args["bs"]:
        t1, tokens = time.perf_counter(), 0
        for i in range(0, len(prompts), bs):
            outs = llm.chat(prompts[i : i + bs], sp, use_tqdm=False)
            tokens += sum(len(o.outputs[0].token_ids) for o in outs)
        dt = time.perf_counter() - t1
        runs.append(
            {"batch_size": bs, "prompts": len(prompts), "generated_tokens": tokens, "seconds": round(dt, 2),
             "tokens_per_s": tokens / dt}
        )  # fmt: skip
    print("ENGINE_RESULT " + json.dumps({"startup_s": round(startup, 1), "runs": runs}), flush=True)


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


def plot(res: dict[str, Any], path: Path) -> None:
    """Generation tok/s against batch size per path, and training samples/s per path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = res["generation"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for p in g["pool"]:
        runs = sorted(p["runs"], key=lambda r: r["batch_size"])
        if runs:
            ax1.plot(
                [r["batch_size"] for r in runs],
                [r["tokens_per_s"] for r in runs],
                "o-",
                label=f"pool via Ray Data, {runs[0]['replicas']} replica(s)",
            )
    eng = g.get("engine_in_process")
    if eng:
        runs = sorted(eng["runs"], key=lambda r: r["batch_size"])
        ax1.plot(
            [r["batch_size"] for r in runs],
            [r["tokens_per_s"] for r in runs],
            "s--",
            label="vLLM engine in-process",
        )
    seq = g["sequential"]["tokens_per_s"]
    ax1.axhline(seq, color="grey", ls=":", label=f"one-request loop ({seq:.1f})")
    ax1.axhline(10 * seq, color="red", ls=":", label="10× the loop (target)")
    ax1.set_xscale("log", base=2)
    ax1.set_xlabel("requests in flight (batch)")
    ax1.set_ylabel("generated tokens/s")
    ax1.set_title("Teacher generation, SmolLM2-135M")
    ax1.legend(fontsize=8)
    labels, rates = [], []
    for shape in res["training"]["workloads"]:
        p0 = shape["plain"]
        labels.append(f"{shape['workload']}\nplain")
        rates.append(p0.get("step_samples_per_s", p0["samples_per_s"]))
        for r in shape["ray"]:
            labels.append(f"{shape['workload']}\nZ{r['zero_stage']} w{r['workers']}")
            rates.append(r.get("step_samples_per_s", r["samples_per_s"]))
    ax2.bar(range(len(rates)), rates, color="tab:blue")
    ax2.set_xticks(range(len(rates)), labels, fontsize=7)
    ax2.set_ylabel("samples/s (training steps)")
    ax2.set_title(
        "Training: plain PyTorch vs Ray Train + DeepSpeed (Z = ZeRO stage, w = workers)", fontsize=9
    )
    fig.suptitle(res["command"], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    ap.add_argument("--engine-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--engine-args", default="{}", help=argparse.SUPPRESS)
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
    if args.engine_only:
        _engine_only(args.model, json.loads(args.engine_args))
        return 0

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from raydistill.cluster.runtime import ensure_ray
    from raydistill.cluster.stages import Stopwatch

    from raydistill.registry import cache_root, resolve_model

    quick = args.quick
    cores = os.cpu_count() or 2
    res: dict[str, Any] = {
        "command": "python -m benchmarks.throughput "
        + shlex.join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
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
    roof["tokens_per_s"] = roof["peak"] / (2 * seq["params"])
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
