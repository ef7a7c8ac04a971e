"""Load benchmark: a served student vs a served teacher through the Ray Serve student app.

Starts `raydistill.serving.student_app` on 127.0.0.1 with two models, "student" and
"teacher", then for each model and each concurrency level (default 1, 4, 16) sends a
bounded number of `POST /v1/classify` requests from closed-loop asyncio clients and
records p50/p90/p99 latency and throughput. Writes benchmarks/results/serve_load.md and
serve_load.json with the command line and a machine description.

Models: `--teacher` / `--student` folders (e.g. the trained MiniLM teacher classifier and
a distilled student). Where they are not given or missing, `--fallback` decides:
`minilm` (default) builds, offline from the bundled all-MiniLM-L6-v2 package, a 6-layer
teacher-sized and a 2-layer student-sized classifier with untrained heads (the recipe's
sizes; latency only, labels meaningless), `tiny` uses the registry's tiny random BERTs.

    python benchmarks/serve_load.py --quick
    python benchmarks/serve_load.py --teacher ~/.cache/raydistill/teachers/sst2-... \
        --student runs/sst2/students/kd+cod-k16-s0 --requests 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shlex
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"  # this benchmark only ever talks to the local machine
RESULTS = Path(__file__).resolve().parent / "results"

_WORDS = [
    "the",
    "film",
    "is",
    "a",
    "warm",
    "funny",
    "and",
    "moving",
    "story",
    "with",
    "terrific",
    "performances",
    "but",
    "the",
    "plot",
    "drags",
    "in",
    "the",
    "middle",
    "and",
    "the",
    "ending",
    "feels",
    "rushed",
    "dull",
    "tedious",
    "brilliant",
    "charming",
    "clumsy",
    "heartfelt",
    "predictable",
    "sharp",
    "witty",
    "overlong",
    "gorgeous",
    "flat",
    "script",
    "direction",
    "cast",
    "music",
    "camera",
    "work",
    "makes",
    "it",
    "worth",
    "seeing",
    "never",
    "quite",
    "comes",
    "together",
]


def make_texts(n: int, seed: int = 0, min_words: int = 8, max_words: int = 30) -> list[str]:
    """Review-like sentences of SST-2 length (deterministic)."""
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(_WORDS) for _ in range(rng.randint(min_words, max_words)))
        for _ in range(n)
    ]


# --------------------------------------------------------------------------- machine / models


def machine() -> dict[str, Any]:
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu_model = platform.processor()
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    import ray
    import torch
    import transformers

    return {
        "nproc": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "cpu_model": cpu_model,
        "mem_gb": mem_gb,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "ray": ray.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def _count_params(folder: str) -> int | None:
    try:
        from safetensors import safe_open

        total = 0
        for f in Path(folder).glob("*.safetensors"):
            with safe_open(str(f), "pt") as st:
                for k in st.keys():  # noqa: SIM118 (safe_open has no __iter__)
                    total += _numel(st, k)
        return total or None
    except Exception:
        return None


def _numel(st, key: str) -> int:
    n = 1
    for d in st.get_slice(key).get_shape():
        n *= int(d)
    return n


def _minilm_classifier(dest: Path, num_layers: int | None) -> str:
    from transformers import AutoTokenizer

    from raydistill.registry import resolve_minilm
    from raydistill.training.students import load_classifier

    src = resolve_minilm()
    # The recipes' student shape (mean-pooled, first layers' weights kept).
    model = load_classifier(str(src), ["negative", "positive"], num_layers)
    model.save_pretrained(dest, safe_serialization=True)
    AutoTokenizer.from_pretrained(src).save_pretrained(dest)
    return str(dest)


def pick_models(args, workdir: Path) -> tuple[dict[str, str], dict[str, str]]:
    """({"student": folder, "teacher": folder}, {role: description})."""
    from raydistill.registry import resolve_model

    chosen: dict[str, str] = {}
    notes: dict[str, str] = {}
    for role, given in (("student", args.student), ("teacher", args.teacher)):
        if given and (Path(given).expanduser() / "config.json").exists():
            chosen[role] = str(Path(given).expanduser().resolve())
            notes[role] = f"given folder {chosen[role]}"
        elif given:
            print(
                f"[serve_load] {role} folder {given!r} not found; using --fallback {args.fallback}"
            )
    missing = [r for r in ("student", "teacher") if r not in chosen]
    if missing and args.fallback == "minilm":
        try:
            for role in missing:
                layers = 2 if role == "student" else None
                chosen[role] = _minilm_classifier(workdir / role, layers)
                notes[role] = (
                    f"all-MiniLM-L6-v2, {layers or 6} layers, untrained 2-label head "
                    "(bundled package; latency only)"
                )
            missing = []
        except Exception as e:  # package not installed: fall through to tiny
            print(f"[serve_load] MiniLM fallback unavailable ({e}); using tiny models")
    for role in missing:
        name = "tiny-bert" if role == "student" else "tiny-bert-wide"
        chosen[role] = resolve_model(name)
        notes[role] = f"registry {name} (random 2-layer BERT)"
    return chosen, notes


# --------------------------------------------------------------------------- load


def _free_port(lo: int = 8200, hi: int = 8300) -> int:
    for port in range(lo, hi):
        with socket.socket() as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {lo}-{hi - 1}")


def _pct(xs: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


async def run_level(
    url: str, model: str, concurrency: int, n_requests: int, texts: list[str], per_request: int
) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    errors = 0
    next_i = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal next_i, errors
        while next_i < n_requests:
            i = next_i
            next_i += 1
            start = (i * per_request) % len(texts)
            body = {"model": model, "inputs": texts[start : start + per_request]}
            t0 = time.perf_counter()
            try:
                r = await client.post(url, json=body)
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            dt = time.perf_counter() - t0
            if ok:
                latencies.append(dt)
            else:
                errors += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    done = len(latencies)
    return {
        "model": model,
        "concurrency": concurrency,
        "requests": n_requests,
        "ok": done,
        "errors": errors,
        "inputs_per_request": per_request,
        "wall_s": round(wall, 3),
        "p50_ms": round(_pct(latencies, 50) * 1000, 1),
        "p90_ms": round(_pct(latencies, 90) * 1000, 1),
        "p99_ms": round(_pct(latencies, 99) * 1000, 1),
        "mean_ms": round(sum(latencies) / done * 1000, 1) if done else None,
        "req_per_s": round(done / wall, 2) if wall else None,
        "texts_per_s": round(done * per_request / wall, 1) if wall else None,
    }


def requests_for(concurrency: int, args) -> int:
    if args.requests:
        return int(args.requests)
    per_client = 8 if args.quick else 40
    return max(20 if args.quick else 100, per_client * concurrency)


# --------------------------------------------------------------------------- report


def write_report(out: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    jpath = out_dir / "serve_load.json"
    mpath = out_dir / "serve_load.md"
    jpath.write_text(json.dumps(out, indent=2) + "\n")
    m = out["machine"]
    lines = [
        "# Serve load: student vs teacher",
        "",
        f"Command: `{out['command']}`",
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['mem_gb']} GB RAM, "
        f"GPU: {m['gpu'] or 'none'}; load average at start {m['loadavg_at_start']}; "
        f"Ray {m['ray']}, torch {m['torch']}, transformers {m['transformers']}.",
        "",
        f"Setup: one Ray Serve app on {HOST}, models multiplexed in one pool deployment "
        f"({out['settings']['replicas']} replica(s), {out['settings']['replica_cpus']} CPU each), "
        f"`@serve.batch` max {out['settings']['max_batch_size']} / "
        f"{out['settings']['batch_wait_timeout_s'] * 1000:.0f} ms; closed-loop clients, "
        f"{out['settings']['inputs_per_request']} text(s) per request; "
        f"{out['settings']['warmup']} warm-up requests per model not counted.",
        "",
        "| model | params | what |",
        "|---|---:|---|",
    ]
    for role, info in out["models"].items():
        params = f"{info['params'] / 1e6:.1f} M" if info.get("params") else "?"
        lines.append(f"| {role} | {params} | {info['what']} |")
    lines += [
        "",
        "| model | concurrency | requests | errors | p50 ms | p90 ms | p99 ms | req/s | texts/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in out["results"]:
        lines.append(
            f"| {r['model']} | {r['concurrency']} | {r['ok']} | {r['errors']} | {r['p50_ms']} "
            f"| {r['p90_ms']} | {r['p99_ms']} | {r['req_per_s']} | {r['texts_per_s']} |"
        )
    speed = out.get("speedup")
    if speed:
        lines += [
            "",
            "Student/teacher throughput ratio per concurrency: "
            + ", ".join(f"c={c}: {v}x" for c, v in speed.items())
            + ".",
        ]
    lines += [
        "",
        "Notes: numbers from a shared machine are noisy (see the load average); the "
        "client, the HTTP proxy and the replicas share the same CPUs. Quick mode sends few "
        "requests, so p99 is close to the maximum.",
        "",
    ]
    mpath.write_text("\n".join(lines))
    return mpath, jpath


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--student", help="student checkpoint folder")
    p.add_argument("--teacher", help="teacher classifier folder (e.g. the MiniLM teacher)")
    p.add_argument("--fallback", choices=("minilm", "tiny"), default="minilm")
    p.add_argument("--quick", action="store_true", help="few requests per level (~1 min)")
    p.add_argument("--concurrency", default="1,4,16", help="comma-separated levels")
    p.add_argument("--requests", type=int, help="requests per level (default: scales with level)")
    p.add_argument("--inputs-per-request", type=int, default=1)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--replica-cpus", type=float, default=1.0)
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--batch-wait-timeout-s", type=float, default=0.005)
    p.add_argument("--port", type=int, help="HTTP port on 127.0.0.1 (default: free in 8200-8299)")
    p.add_argument("--out-dir", default=str(RESULTS))
    args = p.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if any(c < 1 or c > 64 for c in levels):
        p.error("concurrency levels must be in 1..64")
    if args.requests is not None and not 1 <= args.requests <= 5000:
        p.error("--requests must be in 1..5000")

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import ray
    from ray import serve

    from raydistill.serving.student_app import serve_students

    command = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
    info = machine()
    with tempfile.TemporaryDirectory(prefix="serve_load_") as tmp:
        models, notes = pick_models(args, Path(tmp))
        ray.init(
            num_cpus=max(4, int(args.replicas * args.replica_cpus) + 2),
            object_store_memory=500_000_000,
            include_dashboard=False,
            log_to_driver=False,
        )
        port = args.port or _free_port()
        url = f"http://{HOST}:{port}/v1/classify"
        results: list[dict[str, Any]] = []
        try:
            serve_students(
                models,
                host=HOST,
                port=port,
                blocking=False,
                min_replicas=args.replicas,
                max_replicas=args.replicas,
                max_batch_size=args.max_batch_size,
                batch_wait_timeout_s=args.batch_wait_timeout_s,
                num_cpus_per_replica=args.replica_cpus,
                max_inputs=max(64, args.inputs_per_request),
            )
            texts = make_texts(512)
            for model in ("student", "teacher"):
                # Warm-up: loads the checkpoint into the multiplexed pool, JITs nothing.
                asyncio.run(run_level(url, model, 1, args.warmup, texts, args.inputs_per_request))
                for c in levels:
                    n = requests_for(c, args)
                    r = asyncio.run(run_level(url, model, c, n, texts, args.inputs_per_request))
                    print(
                        f"[serve_load] {model:7s} c={c:<3d} n={n:<4d} p50={r['p50_ms']}ms "
                        f"p99={r['p99_ms']}ms {r['req_per_s']} req/s errors={r['errors']}",
                        flush=True,
                    )
                    results.append(r)
        finally:
            serve.shutdown()
            ray.shutdown()
        params = {role: _count_params(path) for role, path in models.items()}

    by = {(r["model"], r["concurrency"]): r for r in results}
    speedup = {
        str(c): round(by[("student", c)]["req_per_s"] / by[("teacher", c)]["req_per_s"], 2)
        for c in levels
        if by.get(("student", c), {}).get("req_per_s")
        and by.get(("teacher", c), {}).get("req_per_s")
    }
    out = {
        "command": command,
        "machine": info,
        "settings": {
            "quick": args.quick,
            "concurrency": levels,
            "inputs_per_request": args.inputs_per_request,
            "warmup": args.warmup,
            "replicas": args.replicas,
            "replica_cpus": args.replica_cpus,
            "max_batch_size": args.max_batch_size,
            "batch_wait_timeout_s": args.batch_wait_timeout_s,
        },
        "models": {
            role: {"what": notes[role], "params": params[role]} for role in ("student", "teacher")
        },
        "results": results,
        "speedup": speedup,
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    mpath, jpath = write_report(out, Path(args.out_dir))
    print(mpath.read_text())
    print(f"[serve_load] wrote {mpath} and {jpath}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
