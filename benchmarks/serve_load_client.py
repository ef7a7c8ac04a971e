"""The load side of benchmarks/serve_load.py: closed-loop clients and CPU accounting.

The client runs as its own process (`python serve_load_client.py URL MODEL C SECONDS N
HEADER`) on one asyncio loop with aiohttp, so the load generator neither shares the
benchmark driver's interpreter (and GIL) nor costs more than a few percent of a core (it
reports its own CPU time). `run_level` starts it and samples, from /proc, the CPU time of
every Ray process around it, so each level says what a request costs in the proxy, the
replica and the rest of Ray. `handle_level` drives the replica through a Serve handle
from the driver, without HTTP: the proxy's share of a request, by difference.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

APP = "students"

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


# --------------------------------------------------------------------------- load client


async def _client_loop(
    url: str, model: str, concurrency: int, duration_s: float, per_request: int, header: bool
) -> dict[str, Any]:
    import aiohttp

    texts = make_texts(512, seed=1)
    headers = {"serve_multiplexed_model_id": model} if header else {}
    latencies: list[float] = []
    errors = 0
    counter = 0

    async def worker(session, stop_at: float) -> None:
        nonlocal errors, counter
        while time.perf_counter() < stop_at:
            i = counter
            counter += 1
            start = (i * per_request) % len(texts)
            body = {"model": model, "inputs": texts[start : start + per_request]}
            t0 = time.perf_counter()
            try:
                if model:
                    req = session.post(url, json=body, headers=headers)
                else:  # the serving path without a model: GET /healthz
                    req = session.get(url)
                async with req as r:
                    await r.read()
                    ok = r.status == 200
            except aiohttp.ClientError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - t0)
            else:
                errors += 1

    conn = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
        # Warm-up (connections, the model in the replica), not counted.
        await asyncio.gather(
            *(worker(session, time.perf_counter() + 0.5) for _ in range(concurrency))
        )
        warm = len(latencies) + errors
        latencies.clear()
        errors = 0
        c0 = time.process_time()
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(session, t0 + duration_s) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
        cpu = time.process_time() - c0
    return {
        "latencies": latencies,
        "errors": errors,
        "warm_requests": warm,
        "wall_s": wall,
        "client_cpu_s": cpu,
    }


def client_main(argv: list[str]) -> int:
    """`serve_load_client.py URL MODEL C DURATION PER_REQUEST HEADER`: one level, JSON out."""
    url, model, c, dur, per, header = argv
    out = asyncio.run(_client_loop(url, model, int(c), float(dur), int(per), header == "1"))
    print(json.dumps(out))
    return 0


def run_level(url: str, model: str, concurrency: int, args, pids) -> dict[str, Any]:
    """One closed-loop level from a client subprocess, with per-process CPU accounting."""
    import numpy as np

    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        url,
        model,
        str(concurrency),
        str(args.duration_s),
        str(args.inputs_per_request),
        "1" if args.model_header else "0",
    ]
    before = cpu_by_role(pids)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.duration_s + 300)
    after = cpu_by_role(pids)
    if proc.returncode != 0:
        raise RuntimeError(f"load client failed: {proc.stderr[-2000:]}")
    raw = json.loads(proc.stdout.strip().splitlines()[-1])
    lat = np.asarray(raw["latencies"]) * 1000
    done, wall = len(lat), raw["wall_s"]
    # The client's own CPU is measured inside it; the rest from /proc over the whole call
    # (which includes the client's start-up and warm-up, so shares are upper bounds).
    cpu = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    return {
        "model": model,
        "concurrency": concurrency,
        "ok": done,
        "errors": raw["errors"],
        "inputs_per_request": args.inputs_per_request,
        "wall_s": round(wall, 2),
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if done else None,
        "p90_ms": round(float(np.percentile(lat, 90)), 1) if done else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 1) if done else None,
        "req_per_s": round(done / wall, 1),
        "texts_per_s": round(done * args.inputs_per_request / wall, 1),
        "client_cpu_share": round(raw["client_cpu_s"] / wall, 3),
        "client_cpu_ms_per_req": round(1000 * raw["client_cpu_s"] / max(done, 1), 2),
        "cpu_s_by_role": {k: round(v, 2) for k, v in sorted(cpu.items()) if v > 0.005},
        # Per request incl. the warm-up ones (the /proc window spans both).
        "cpu_ms_per_req": {
            k: round(1000 * v / max(done + raw["warm_requests"], 1), 2)
            for k, v in sorted(cpu.items())
            if v > 0.005
        },
    }


# --------------------------------------------------------------------------- CPU accounting


def _role(cmdline: list[str]) -> str | None:
    head = " ".join(cmdline[:2])
    for needle, role in (
        ("ProxyActor", "proxy"),
        ("ServeReplica", "replica"),
        ("ServeController", "controller"),
        ("raylet", "raylet"),
        ("gcs_server", "gcs"),
        ("dashboard", "dashboard"),
    ):
        if needle in head:
            return role
    return None


def cpu_by_role(pids: dict[int, str]) -> dict[str, float]:
    """CPU seconds (user+sys) per Ray process role; refreshes the pid → role map."""
    import psutil

    out: dict[str, float] = {}
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            role = pids.get(p.pid) or _role(p.info["cmdline"] or [])
            if role is None:
                continue
            pids[p.pid] = role
            t = p.cpu_times()
            out[role] = out.get(role, 0.0) + t.user + t.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def handle_level(model: str, concurrency: int, duration_s: float) -> dict[str, Any] | None:
    """The replica without HTTP: closed-loop `StudentAPI.run` calls through a handle from
    this process (what the proxy's share of a request costs, by difference)."""
    import numpy as np
    from ray import serve

    try:
        h = serve.get_deployment_handle("StudentAPI", APP)
    except Exception:
        return None
    texts = make_texts(512, seed=1)

    async def go() -> tuple[list[float], float]:
        lat: list[float] = []
        n = 0

        async def worker(stop_at: float, keep: bool) -> None:
            nonlocal n
            while time.perf_counter() < stop_at:
                n += 1
                t0 = time.perf_counter()
                await h.options(multiplexed_model_id=model).run.remote(model, [texts[n % 512]])
                if keep:
                    lat.append(time.perf_counter() - t0)

        warm = time.perf_counter() + 0.5
        await asyncio.gather(*(worker(warm, False) for _ in range(concurrency)))
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(t0 + duration_s, True) for _ in range(concurrency)))
        return lat, time.perf_counter() - t0

    try:
        lat, wall = asyncio.run(go())
    except Exception as e:  # e.g. another app version without `run`
        print(f"[serve_load] handle level skipped: {type(e).__name__}: {e}")
        return None
    ms = np.asarray(lat) * 1000
    return {
        "model": model,
        "concurrency": concurrency,
        "ok": len(lat),
        "errors": 0,
        "inputs_per_request": 1,
        "wall_s": round(wall, 2),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p90_ms": round(float(np.percentile(ms, 90)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        "req_per_s": round(len(lat) / wall, 1),
        "texts_per_s": round(len(lat) / wall, 1),
        "client_cpu_share": None,
        "client_cpu_ms_per_req": None,
        "cpu_s_by_role": {},
    }


if __name__ == "__main__":
    raise SystemExit(client_main(sys.argv[1:]))
