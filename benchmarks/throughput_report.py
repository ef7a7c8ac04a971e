"""Markdown for `benchmarks.throughput` results: kept apart from the measuring code so a
results JSON can be re-rendered without rerunning anything:

    python -c "import json,sys; from benchmarks.throughput_report import render_md; \
print(render_md(json.load(open('benchmarks/results/throughput.json'))))"
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _headline_stage(res: dict[str, Any]) -> Any:
    """The ZeRO stage of the run the overhead headline compares (the recipe's)."""
    try:
        return res["training"]["workloads"][0]["ray"][0]["zero_stage"]
    except (KeyError, IndexError):
        return "?"


def render_md(res: dict[str, Any]) -> str:
    h = res["headline"]
    lines = [
        "# Throughput: teacher pool and training vs their baselines",
        "",
        f"Command: `{res['command']}`  ",
        f"Machine: {res['machine']['cpus']} CPUs, {res['machine']['memory_gb']} GB, "
        f"{res['machine']['platform']}, torch {res['machine']['torch']}; load average at "
        f"start {res['machine']['load_avg_at_start']}. Date: {res['date']}.",
        "",
        "## Headline",
        "",
        f"`{h['line']}`",
        "",
        "| target | measured | met |",
        "|---|---|---|",
        f"| teacher pool ≥ 10× one-request loop | {h['pool_vs_sequential']:.1f}× | "
        f"{'yes' if h['pool_vs_sequential'] >= 10 else 'no'} |",
        f"| pool ≥ 40% of CPU roofline | {h['roofline_pct']:.0f}% | "
        f"{'yes' if h['roofline_pct'] >= 40 else 'no'} |",
        f"| Ray Train + DeepSpeed overhead ≤ 15% (1 worker, ZeRO-{_headline_stage(res)}, "
        f"{'training steps' if 'train_span_overhead_pct' in h else 'in-worker span'}) | "
        f"{h['train_overhead_pct']:.0f}% | {'yes' if h['train_overhead_pct'] <= 15 else 'no'} |",
        "",
        "## Generation (SmolLM2-135M-Instruct, counterfactual prompts on SST-2)",
        "",
    ]
    g = res["generation"]
    roof = res["roofline"]
    lines += [
        f"Peak matmul: fp32 {roof['fp32'] / 1e9:.0f} GFLOP/s, bf16 {roof['bf16'] / 1e9:.0f} "
        f"GFLOP/s → roofline {roof['tokens_per_s']:.0f} tok/s for {g['sequential']['params'] / 1e6:.0f}M "
        "params (2·params FLOPs per token)."
        + (
            f" The decode-shape matmuls below ran faster than the square one in this run, "
            f"so the peak is theirs: {roof['peak'] / 1e9:.0f} GFLOP/s."
            if roof.get("peak_square")
            else ""
        ),
        "",
    ]
    ceiling = {c["batch_size"]: c for c in roof.get("decode_ceiling") or []}
    if ceiling:
        lines += [
            "Decode-shape ceiling: the same model's weight matmuls for one decode step "
            "((batch × 576) times each layer's q, k, v, o, gate, up, down and the 49k-row "
            "LM head), timed alone in bf16 on all cores. No engine can decode faster than "
            "this here; attention, sampling and scheduling come on top.",
            "",
            "| batch | step s | GFLOP/s achieved | tok/s ceiling | % of peak-FLOP roofline |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {b} | {c['step_s']:.4f} | {c['flops_per_s'] / 1e9:.0f} | "
            f"{c['tokens_per_s']:.0f} | {100 * c['tokens_per_s'] / roof['tokens_per_s']:.0f} |"
            for b, c in sorted(ceiling.items())
        ]
        lines.append("")

    def of_ceiling(r: dict[str, Any]) -> str:
        c = ceiling.get(r.get("batch_size", 1))
        return f"{100 * r['tokens_per_s'] / c['tokens_per_s']:.0f}" if c else "–"

    lines += [
        "| generator | replicas | batch | prompts | tokens | s | tok/s | × loop | % roofline "
        "| % decode ceiling |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    s = g["sequential"]
    lines.append(
        f"| transformers loop ({s['dtype']}), one request at a time | – | 1 | {s['prompts']} | "
        f"{s['generated_tokens']} | {s['seconds']} | {s['tokens_per_s']:.1f} | 1.0 | "
        f"{100 * s['tokens_per_s'] / roof['tokens_per_s']:.1f} | "
        f"{of_ceiling(dict(s, batch_size=1))} |"
    )
    for p in g["pool"]:
        for r in p["runs"]:
            lines.append(
                f"| Serve LLM + vLLM pool via Ray Data | {r['replicas']} | {r['batch_size']} | "
                f"{r['prompts']} | {r['generated_tokens']} | {r['seconds']} | "
                f"{r['tokens_per_s']:.1f} | {r['tokens_per_s'] / s['tokens_per_s']:.1f} | "
                f"{100 * r['tokens_per_s'] / roof['tokens_per_s']:.1f} | {of_ceiling(r)} |"
            )
    eng = g.get("engine_in_process")
    if eng:
        for r in eng["runs"]:
            lines.append(
                f"| vLLM engine in-process (`LLM.chat`, no Serve/HTTP) | – | {r['batch_size']} | "
                f"{r['prompts']} | {r['generated_tokens']} | {r['seconds']} | "
                f"{r['tokens_per_s']:.1f} | {r['tokens_per_s'] / s['tokens_per_s']:.1f} | "
                f"{100 * r['tokens_per_s'] / roof['tokens_per_s']:.1f} | {of_ceiling(r)} |"
            )
    lines += [
        "",
        "Pool start-up (not in tok/s): "
        + ", ".join(
            f"{p['runs'][0]['replicas'] if p['runs'] else '?'} replica(s) {p['startup_s']} s"
            for p in g["pool"]
        ),
    ]
    colds = [
        (p["runs"][0]["replicas"], p["cold"]) for p in g["pool"] if p.get("cold") and p["runs"]
    ]
    if colds:
        lines += [
            "",
            "The rows above are warm: each pool first ran the whole prompt set once, untimed, "
            "at its largest batch (a fresh engine's first large batch pays for lazy "
            "allocations; every later round of a job runs warm). That cold pass: "
            + ", ".join(
                f"{r} replica(s) batch {c['batch_size']}: {c['tokens_per_s']:.1f} tok/s "
                f"({c['tokens_per_s'] / s['tokens_per_s']:.1f}× loop)"
                for r, c in colds
            )
            + ".",
        ]
    if g.get("prompt_tokens_mean"):
        best = max((r for p in g["pool"] for r in p["runs"]), key=lambda r: r["tokens_per_s"])
        n_prompt = g["prompt_tokens_mean"] * best["prompts"]
        util = (n_prompt + best["generated_tokens"]) / best["seconds"] / roof["tokens_per_s"]
        lines += [
            "",
            f"Prefill: the prompts average {g['prompt_tokens_mean']:.0f} tokens against at most "
            f"{g['max_new_tokens']} generated, so most FLOPs go to prompt tokens, which "
            "tokens/s of generated text does not count. Counting them, the best pool run "
            f"(batch {best['batch_size']}) used {100 * util:.0f}% of the peak-FLOP roofline.",
        ]
    lines += [
        "",
        "## Training (MiniLM, KD loss, cached teacher logits)",
        "",
        "`student`: 2 layers, frozen embeddings, batch 16 (the recipe's students); "
        "`teacher`: all 6 layers and embeddings trained, batch 32 (the teacher's shape). "
        "`steps`: the training steps alone (forward, loss, backward, optimizer step), the "
        "rate the headline compares. `span`: the same span on both paths (tokenizer + model "
        "build, DeepSpeed engine, steps, evaluation; the Ray path also evaluates its best "
        "epoch on the test rows); the wall column adds Ray Train's worker start and "
        "checkpoint upload.",
        "",
        "| shape | path | workers | samples | steps s | steps samples/s | steps overhead | "
        "span s | span samples/s | span overhead | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    t = res["training"]

    def rate(r, key):
        return f"{r[key]:.1f}" if key in r else "–"

    for shape in t["workloads"]:
        p0 = shape["plain"]
        lines.append(
            f"| {shape['workload']} | plain PyTorch loop | 1 process | {p0['samples']} | "
            f"{p0.get('step_seconds', '–')} | {rate(p0, 'step_samples_per_s')} | – | "
            f"{p0['seconds']} | {p0['samples_per_s']:.1f} | – | {p0['seconds']} |"
        )
        for r in shape["ray"]:
            ov = 100 * (p0["samples_per_s"] / r["samples_per_s"] - 1)
            step_ov = (
                f"{100 * (p0['step_samples_per_s'] / r['step_samples_per_s'] - 1):+.0f}%"
                if "step_samples_per_s" in r and "step_samples_per_s" in p0
                else "–"
            )
            lines.append(
                f"| {shape['workload']} | Ray Train + DeepSpeed ZeRO-{r['zero_stage']} | {r['workers']} | "
                f"{r['samples']} | {r.get('step_seconds', '–')} | {rate(r, 'step_samples_per_s')} | "
                f"{step_ov} | {r['seconds_in_worker']} | {r['samples_per_s']:.1f} | "
                f"{ov:+.0f}% | {r['seconds_wall']} |"
            )
    tf = t.get("teacher_per_step")
    if tf:
        p0 = t["workloads"][0]["plain"]
        lines += [
            "",
            "## Teacher forward passes per training example (student shape)",
            "",
            "| soft labels | teacher forwards / example | samples/s |",
            "|---|---|---|",
            f"| cached (one annotation pass, raydistill) | 1 | {p0['samples_per_s']:.1f} |",
            f"| recomputed every step | {tf['teacher_forwards_per_example']:.0f} | "
            f"{tf['samples_per_s']:.1f} |",
            "",
            f"At the recipe's {t['recipe_epochs']} epochs a per-step teacher would run "
            f"{t['recipe_epochs']} forwards per example instead of 1; measured slowdown of a "
            f"step here: {p0['samples_per_s'] / tf['samples_per_s']:.1f}×.",
        ]
    mem = res.get("peak_memory_mb") or {}
    if mem:
        lines += [
            "",
            "## Peak node memory during this benchmark's stages",
            "",
            "| stage | GiB |",
            "|---|---|",
        ]
        lines += [f"| {k} | {v / 1024:.1f} |" for k, v in mem.items()]
    e2e = res.get("e2e")
    if e2e:
        lines += [
            "",
            f"## End to end: `{e2e['command']}`",
            "",
            f"From `{e2e['report']}`.",
            "",
            "| stage | seconds | peak node memory (GiB) |",
            "|---|---|---|",
        ]
        for k, v in e2e["timings"].items():
            m = e2e.get("peak_memory_mb", {}).get(k)
            lines.append(f"| {k} | {v} | {'' if m is None else f'{m / 1024:.1f}'} |")
    if res.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in res["notes"]]
    return "\n".join(lines) + "\n"


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
