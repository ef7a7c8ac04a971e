"""A weakness round's generation against the same pool standing alone.

    python -m benchmarks.round_rate [--recipe sst2-weakness] [--loops 3] [--trials 2]

The weakness report's pool rate (tokens the pool generated for the run ÷ seconds inside
its LLM calls) was compared with `throughput.json`'s warm pool on CoD prompts, and came
out at about half. That compares two workloads and two engine states. This benchmark
sends what a round sends — the recipe's generation prompts on real training rows, `n`
candidates per seed, its token budget and JSON schema, `--loops` loops' prompts in one
call, through the same `LLMClient` (uncached) — to one pool, in the order that separates
the causes:

1. the round's call on a pool just started (every round starts its pool: the CPUs go
   to the students between rounds), as the loop sees it;
2. the same kind of call again, warm (fresh seeds, so no prefix-cache reuse);
3. the same, warm, without the JSON schema;
4. the CoD prompts of `throughput.json` (n = 1, 48 new tokens, no schema), warm, as the
   reference measured on the same day.

Writes `benchmarks/results/round_rate_<task>.{json,md}`; `benchmarks.weakness_table`
compares a run's rate with (1) when the task and model match.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.throughput import RESULTS, machine

ROOT = Path(__file__).resolve().parents[1]
# The workloads' names, as the results JSON keeps them (benchmarks.weakness_table reads them).
COLD = "round, pool just started"
WARM = "round, warm"
PLAIN = "round, warm, no JSON schema"
REFERENCE = "CoD reference (throughput.json's workload), warm"


def round_rows(cfg: Any, train: list[dict], spec: Any, loops: int, trial: int) -> list[dict]:
    """`loops` × seeds_per_round prompts on training rows, a disjoint set per trial (so a
    warm call never reuses a cold call's prompt prefixes)."""
    import random

    from raydistill.pipelines.augment import messages_for
    from raydistill.pipelines.llm_stage import SEED_COLUMN

    m = cfg.method
    n = loops * m.seeds_per_round
    rng = random.Random(1234)
    order = rng.sample(range(len(train)), min(len(train), n * 8))
    picked = [train[i] for i in order[trial * n : (trial + 1) * n]]
    if len(picked) < n:
        raise SystemExit(f"round_rate: the train split has too few rows for {n} seeds × trials")
    return [
        {"messages": messages_for(s, spec, m.max_seed_chars), SEED_COLUMN: 7919 * trial + j}
        for j, s in enumerate(picked)
    ]


def timed(llm: Any, rows: list[dict], sampling: Any) -> dict[str, Any]:
    t0 = time.perf_counter()
    out = llm.chat(rows, sampling)
    dt = time.perf_counter() - t0
    tokens = int(sum(int(r.get("generated_tokens") or 0) for r in out))
    failed = sum(1 for r in out if r.get("llm_error"))
    return {
        "rows": len(rows),
        "n": sampling.n,
        "sequences": len(rows) * sampling.n,
        "max_tokens": sampling.max_tokens,
        "schema": sampling.json_schema is not None,
        "generated_tokens": tokens,
        "tokens_per_sequence": round(tokens / max(1, len(rows) * sampling.n), 1),
        "failed_rows": failed,
        "seconds": round(dt, 2),
        "tokens_per_s": round(tokens / dt, 1) if dt > 0 else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default="sst2-weakness", help="a recipes/<name>.yaml")
    ap.add_argument("--loops", type=int, default=3, help="loops whose prompts share one call")
    ap.add_argument("--trials", type=int, default=2, help="warm repeats of (2) and (3)")
    ap.add_argument("--set", nargs="*", default=[], help="recipe key=value overrides")
    args = ap.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import dataclasses

    from benchmarks.generation_throughput import cod_prompts
    from raydistill.cluster.runtime import ensure_ray
    from raydistill.config import load_config
    from raydistill.pipelines.augment import candidates_per_seed, task_schema
    from raydistill.pipelines.datasets import load_split
    from raydistill.pipelines.llm_requests import LLMClient
    from raydistill.pipelines.llm_stage import Sampling
    from raydistill.pipelines.tasks import spec_for
    from raydistill.serving.teacher_pool import make_pool

    cfg = load_config(ROOT / "recipes" / f"{args.recipe}.yaml", args.set)
    m, spec = cfg.method, spec_for(cfg.data)
    train = load_split(cfg.data, "train")
    per_seed = candidates_per_seed(m.samples_per_round, m.seeds_per_round, m.oversample)
    ensure_ray()
    pool = make_pool(cfg.pool, cfg.resolved_cache_dir())
    t0 = time.perf_counter()
    endpoint = pool.start()
    startup_s = time.perf_counter() - t0
    llm = LLMClient.for_pool(endpoint, cfg.pool, None)
    schema = task_schema(spec) if llm.structured_output else None
    round_sampling = Sampling(
        n=per_seed,
        temperature=m.temperature,
        top_p=m.top_p,
        max_tokens=m.max_new_tokens,
        json_schema=schema,
    )
    runs: list[dict[str, Any]] = []

    def record(name: str, trial: int, rows: list[dict], sampling: Any) -> None:
        r = {"workload": name, "trial": trial, **timed(llm, rows, sampling)}
        runs.append(r)
        print(
            f"  {name} (trial {trial}): {r['generated_tokens']} tokens in {r['seconds']} s "
            f"= {r['tokens_per_s']} tok/s",
            flush=True,
        )

    try:
        record(
            COLD,
            0,
            round_rows(cfg, train, spec, args.loops, 0),
            round_sampling,
        )
        cod = [{"messages": p} for p in cod_prompts(128)]
        cod_sampling = Sampling(n=1, temperature=0.9, top_p=0.95, max_tokens=48)
        for trial in range(1, args.trials + 1):
            rows = round_rows(cfg, train, spec, args.loops, 2 * trial - 1)
            record(WARM, trial, rows, round_sampling)
            rows = round_rows(cfg, train, spec, args.loops, 2 * trial)
            plain = dataclasses.replace(round_sampling, json_schema=None)
            record(PLAIN, trial, rows, plain)
            record(REFERENCE, trial, cod, cod_sampling)
    finally:
        pool.shutdown()

    res = {
        "command": "python -m benchmarks.round_rate "
        + shlex.join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "task": spec.name,
        "model": cfg.pool.model,
        "backend": cfg.pool.backend,
        "pool_batch_size": cfg.pool.batch_size,
        "loops": args.loops,
        "per_seed": per_seed,
        "startup_s": round(startup_s, 1),
        "runs": runs,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    base = RESULTS / f"round_rate_{spec.name}"
    base.with_suffix(".json").write_text(json.dumps(res, indent=2))
    base.with_suffix(".md").write_text(render(res))
    print(f"wrote {base}.md and .json", flush=True)
    return 0


def mean_rate(res: dict[str, Any], workload: str) -> float | None:
    """Mean tok/s of a workload's runs, or None when it has none."""
    xs = [r["tokens_per_s"] for r in res["runs"] if r["workload"] == workload and r["tokens_per_s"]]
    return sum(xs) / len(xs) if xs else None


def render(res: dict[str, Any]) -> str:
    cold = mean_rate(res, COLD)
    warm = mean_rate(res, WARM)
    plain = mean_rate(res, PLAIN)
    ref = mean_rate(res, REFERENCE)
    lines = [
        f"# A weakness round's generation vs the pool alone ({res['task']})",
        "",
        f"Command: `{res['command'].strip()}`  ",
        f"Machine: {res['machine']['cpus']} CPUs. Date: {res['date']}. Pool: "
        f"{res['backend']} {res['model']}, 1 replica, client batch {res['pool_batch_size']}, "
        f"started in {res['startup_s']} s.",
        "",
        f"A round's call: {res['loops']} loops' seeds in one call, {res['per_seed']} "
        "candidates per seed (`n`), the recipe's token budget and temperature.",
        "",
        "| workload | trial | rows × n | max tokens | schema | tokens | tokens/seq | s | tok/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["runs"]:
        lines.append(
            f"| {r['workload']} | {r['trial']} | {r['rows']} × {r['n']} | {r['max_tokens']} | "
            f"{'yes' if r['schema'] else 'no'} | {r['generated_tokens']} | "
            f"{r['tokens_per_sequence']} | {r['seconds']} | {r['tokens_per_s']} |"
        )
    if cold and warm and ref:
        lines += [
            "",
            "| ratio | value |",
            "|---|---|",
            f"| round on a just-started pool / the same round warm | {cold / warm:.2f} |",
            f"| round warm / CoD reference warm | {warm / ref:.2f} |",
        ]
        if plain:
            lines.append(f"| round warm with schema / without | {warm / plain:.2f} |")
        lines.append(f"| round on a just-started pool / CoD reference warm | {cold / ref:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
