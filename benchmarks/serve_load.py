"""Load benchmark: served students vs the same models in-process, in one run.

What one run measures (all ratios are within the run, so a busy shared machine moves
both sides of each ratio):

1. In-process: `StudentClassifier.classify` on batches of 1, 4, 16 ... texts (the
   concurrency levels) with as many torch threads as a replica gets CPUs — the rate the
   model itself allows.
2. Served, 1 replica: `POST /v1/classify` (one text per request) to the Ray Serve student
   app, for the student and the teacher at each concurrency level, from closed-loop
   clients in a separate process (aiohttp on one event loop; its CPU share is reported).
   During each level the CPU time of every Ray process is sampled, so the report says
   what a request costs in the proxy, the replica and the client, and the replica's
   `GET /v1/stats` says how large the batches it formed were.
3. Served, 2 fixed replicas, student at the highest level (on 2 cores: not slower?).
4. Autoscaling: min 1 / max 2 replicas, Serve's autoscaler with a 2 s upscale delay under
   the highest level; the replica count over time and the rate after scaling.

The last line is the headline, e.g. `served_vs_inprocess=0.62 student_vs_teacher=2.8x
p50_c16_ms=74 ...`. Results go to benchmarks/results/serve_load.{md,json}.

This module is the driver (models, the in-process baseline, the Serve phases, the command
line); the load clients are in serve_load_client.py, and the summary (ratios, targets,
headline) and the Markdown report in serve_load_report.py, which needs neither Ray nor
torch, so a results JSON can be re-rendered without rerunning the benchmark.

Models: `--teacher` / `--student` folders. Where they are not given or missing,
`--fallback minilm` (default) builds, offline from the bundled all-MiniLM-L6-v2 package,
a 6-layer teacher and a 2-layer student (first layers kept, mean-pooled, untrained
2-label head: latency only), `tiny` uses the registry's tiny random BERTs.

    python benchmarks/serve_load.py --quick
    python benchmarks/serve_load.py --duration-s 15
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"  # this benchmark only ever talks to the local machine
RESULTS = Path(__file__).resolve().parent / "results"
APP = "students"

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script or a module
from serve_load_client import (  # noqa: E402
    handle_level,
    make_texts,
    run_level,
)
from serve_load_report import summarize, write_report  # noqa: E402


def machine() -> dict[str, Any]:
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu_model = platform.processor()
    import psutil
    import ray
    import torch
    import transformers

    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "mem_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "ray": ray.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


# --------------------------------------------------------------------------- models


def _count_params(folder: str) -> int | None:
    try:
        from safetensors import safe_open

        total = 0
        for f in Path(folder).glob("*.safetensors"):
            with safe_open(str(f), "pt") as st:
                for k in st.keys():  # noqa: SIM118 (safe_open has no __iter__)
                    n = 1
                    for d in st.get_slice(k).get_shape():
                        n *= int(d)
                    total += n
        return total or None
    except Exception:
        return None


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
            print(f"[serve_load] {role} folder {given!r} not found; using --fallback")
    missing = [r for r in ("student", "teacher") if r not in chosen]
    if missing and args.fallback == "minilm":
        for role in missing:
            layers = 2 if role == "student" else None
            chosen[role] = _minilm_classifier(workdir / role, layers)
            notes[role] = (
                f"all-MiniLM-L6-v2, {layers or 6} layers, untrained 2-label head "
                "(bundled package; latency only)"
            )
        missing = []
    for role in missing:
        name = "tiny-bert" if role == "student" else "tiny-bert-wide"
        chosen[role] = resolve_model(name)
        notes[role] = f"registry {name} (random 2-layer BERT)"
    return chosen, notes


def in_process(
    path: str, batches: list[int], seconds: float, threads: int, rounds: int = 3
) -> dict[str, Any]:
    """texts/s of `StudentClassifier.classify` per batch size, `threads` torch threads.

    Each batch size is timed in `rounds` rounds taken in turn; the best round is the rate
    (what the model can do on these cores; the conservative side of served/in-process on a
    machine whose load moves), the spread is kept too.
    """
    import torch

    from raydistill.serving.student_model import StudentClassifier

    torch.set_num_threads(threads)
    clf = StudentClassifier(path, 128)
    texts = make_texts(512, seed=1)
    rates: dict[str, list[float]] = {str(b): [] for b in batches}
    cpu: dict[str, list[float]] = {str(b): [] for b in batches}
    for _ in range(rounds):
        for b in batches:
            clf.classify(texts[:b])  # warm-up
            n, t0, c0 = 0, time.perf_counter(), time.process_time()
            while time.perf_counter() - t0 < seconds / rounds:
                start = (n * b) % (len(texts) - b)
                clf.classify(texts[start : start + b])
                n += 1
            rates[str(b)].append(round(n * b / (time.perf_counter() - t0), 1))
            cpu[str(b)].append(round(1000 * (time.process_time() - c0) / (n * b), 2))
    out: dict[str, Any] = {b: max(r) for b, r in rates.items()}
    out["rounds"] = rates
    # CPU time per text (best round): less sensitive than texts/s to a busy machine.
    out["cpu_ms_per_text"] = {b: min(c) for b, c in cpu.items()}
    # Tokenization alone at the largest batch: what per-batch tokenizing costs.
    b = max(batches)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min(seconds, 1.0):
        clf.tokenizer(texts[:b], padding=True, truncation=True, max_length=128, return_tensors="pt")
        n += 1
    out["tokenize_ms_per_text"] = round(1000 * (time.perf_counter() - t0) / (n * b), 3)
    return out


# --------------------------------------------------------------------------- serving phases


def _wait_healthy(base: str, timeout_s: float = 120) -> None:
    import httpx

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            if httpx.get(f"{base}/healthz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("the student app did not come up")


def _replica_count() -> int:
    from ray import serve

    try:
        app = serve.status().applications[APP]
        states = app.deployments["StudentAPI"].replica_states
        return sum(int(v) for k, v in states.items() if getattr(k, "value", k) == "RUNNING")
    except Exception:
        return -1


def _batch_stats(base: str) -> dict[str, Any]:
    import httpx

    try:
        r = httpx.get(f"{base}/v1/stats", timeout=10)
        return r.json().get("batches", {}) if r.status_code == 200 else {}
    except Exception:
        return {}


def _batches_between(before: dict, after: dict, model: str) -> dict[str, Any] | None:
    a, b = before.get(model, {}), after.get(model, {})
    n = b.get("batches", 0) - a.get("batches", 0)
    items = b.get("items", 0) - a.get("items", 0)
    if n <= 0:
        return None
    return {"batches": n, "mean_size": round(items / n, 2), "max_size_so_far": b.get("max_size")}


def deploy(app_module: str, models: dict[str, str], port: int, args, **kw) -> str:
    import importlib
    import inspect

    from ray import serve

    mod = importlib.import_module(app_module)
    accepted = inspect.signature(mod.build_student_app).parameters
    kw = {k: v for k, v in kw.items() if k in accepted}
    if APP in serve.status().applications:
        serve.delete(APP)
    mod.serve_students(
        models,
        host=HOST,
        port=port,
        blocking=False,
        app_name=APP,
        max_inputs=max(64, args.inputs_per_request),
        num_cpus_per_replica=args.replica_cpus,
        **kw,
    )
    base = f"http://{HOST}:{port}"
    _wait_healthy(base)
    return base


def _free_port(lo: int = 8200, hi: int = 8300) -> int:
    for port in range(lo, hi):
        with socket.socket() as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {lo}-{hi - 1}")


def _say(r: dict[str, Any], label: str = "") -> None:
    print(
        f"[serve_load] {label}{r['model']:7s} c={r['concurrency']:<3d} p50={r['p50_ms']}ms "
        f"p99={r['p99_ms']}ms {r['texts_per_s']} texts/s errors={r['errors']} "
        f"client_cpu={r['client_cpu_share']} batches={r.get('batches')}",
        flush=True,
    )


def run_all(args, models: dict[str, str]) -> dict[str, Any]:
    import ray
    from ray import serve

    levels, top = args.levels, max(args.levels)
    threads = max(1, round(args.replica_cpus))
    inproc = {
        role: in_process(path, levels, args.inproc_seconds, threads)
        for role, path in models.items()
    }
    print(f"[serve_load] in-process texts/s by batch size: {inproc}", flush=True)
    for attempt in range(3):  # Ray gives a raylet 30 s to register: too short when busy
        try:
            ray.init(
                num_cpus=max(4, int(2 * args.replica_cpus) + 2),
                object_store_memory=300_000_000,
                include_dashboard=False,
                log_to_driver=False,
            )
            break
        except Exception as e:
            if attempt == 2 or "timed out during startup" not in str(e):
                raise
            print(f"[serve_load] Ray did not start ({e}); retrying", flush=True)
            ray.shutdown()
            time.sleep(10)
    port = args.port or _free_port()
    url = f"http://{HOST}:{port}/v1/classify"
    pids: dict[int, str] = {}
    settings = dict(
        max_batch_size=args.max_batch_size, batch_wait_timeout_s=args.batch_wait_timeout_s
    )
    out: dict[str, Any] = {
        "in_process": inproc,
        "floor": [],
        "one_replica": [],
        "two_replicas": [],
        "autoscale": {},
    }
    try:
        serve.start(http_options={"host": HOST, "port": port})
        base = deploy(
            args.app_module, models, port, args, min_replicas=1, max_replicas=1, **settings
        )
        # The floor: proxy + ingress route with no model work (GET /healthz).
        for c in (1, max(levels)):
            r = run_level(f"{base}/healthz", "", c, args, pids)
            r["model"] = "healthz"
            _say(r)
            out["floor"].append(r)
        for model in ("student", "teacher"):
            for c in levels:
                s0 = _batch_stats(base)
                r = run_level(url, model, c, args, pids)
                r["batches"] = _batches_between(s0, _batch_stats(base), model)
                _say(r)
                out["one_replica"].append(r)
        s0 = _batch_stats(base)
        r = handle_level("student", max(levels), args.duration_s)
        if r is not None:
            r["batches"] = _batches_between(s0, _batch_stats(base), "student")
            _say(r, "handle, no HTTP ")
            out["handle"] = [r]
        if not args.skip_scaling:
            deploy(args.app_module, models, port, args, min_replicas=2, max_replicas=2, **settings)
            for c in sorted({levels[len(levels) // 2], top}):
                r = run_level(url, "student", c, args, pids)
                _say(r, "2 replicas ")
                out["two_replicas"].append(r)
            out["autoscale"] = autoscale_phase(args, models, port, url, pids, settings)
    finally:
        serve.shutdown()
        ray.shutdown()
    return out


def autoscale_phase(args, models, port, url, pids, settings) -> dict[str, Any]:
    """min 1 / max 2 replicas under the top level: does Serve scale up, and what rate then."""
    import threading

    top = max(args.levels)
    deploy(
        args.app_module,
        models,
        port,
        args,
        min_replicas=1,
        max_replicas=2,
        target_ongoing_requests=args.target_ongoing_requests,
        upscale_delay_s=2.0,
        downscale_delay_s=600.0,
        **settings,
    )
    timeline: list[tuple[float, int]] = []
    stop = threading.Event()
    t0 = time.perf_counter()

    def poll() -> None:
        while not stop.is_set():
            timeline.append((round(time.perf_counter() - t0, 1), _replica_count()))
            stop.wait(1.0)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    # Load in 10 s chunks until the autoscaler (2 s delay, metrics every few seconds) has
    # a second replica running, at most 90 s; then one more level measures the rate.
    chunk = argparse.Namespace(**{**vars(args), "duration_s": 10.0})
    first = run_level(url, "student", top, chunk, pids)
    while _replica_count() < 2 and time.perf_counter() - t0 < 90:
        first = run_level(url, "student", top, chunk, pids)
    scaled_after_s = round(time.perf_counter() - t0, 1) if _replica_count() >= 2 else None
    second = run_level(url, "student", top, args, pids)
    stop.set()
    th.join(timeout=5)
    _say(first, "autoscale (scaling) ")
    _say(second, "autoscale (after)   ")
    return {
        "config": {
            "min_replicas": 1,
            "max_replicas": 2,
            "target_ongoing_requests": args.target_ongoing_requests,
            "upscale_delay_s": 2.0,
        },
        "while_scaling": first,
        "second_replica_running_after_s": scaled_after_s,
        "after": second,
        "replicas_timeline": timeline,
        "max_replicas_seen": max((n for _, n in timeline), default=0),
    }


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--student", help="student checkpoint folder")
    p.add_argument("--teacher", help="teacher classifier folder (e.g. the MiniLM teacher)")
    p.add_argument("--fallback", choices=("minilm", "tiny"), default="minilm")
    p.add_argument("--quick", action="store_true", help="short levels (~3 min in all)")
    p.add_argument("--concurrency", default="1,4,16", help="comma-separated levels")
    p.add_argument("--duration-s", type=float, help="seconds per level (default 10; quick 4)")
    p.add_argument(
        "--inproc-seconds", type=float, help="seconds per in-process batch size (3 rounds)"
    )
    p.add_argument("--inputs-per-request", type=int, default=1)
    p.add_argument("--replica-cpus", type=float, default=1.0)
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--batch-wait-timeout-s", type=float, default=0.005)
    p.add_argument("--target-ongoing-requests", type=float, default=8.0)
    p.add_argument("--no-model-header", dest="model_header", action="store_false")
    p.add_argument(
        "--serve-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment for the Ray processes (e.g. RAY_SERVE_THROUGHPUT_OPTIMIZED=1)",
    )
    p.add_argument(
        "--worker-niceness",
        type=int,
        default=0,
        help="niceness of Ray's worker processes (Serve proxy, replicas); Ray's default is "
        "15, which on a shared machine puts the served path behind every ordinary process, "
        "the in-process baseline and the load client included",
    )
    p.add_argument("--skip-scaling", action="store_true", help="no 2-replica / autoscale phases")
    p.add_argument(
        "--app-module",
        default="raydistill.serving.student_app",
        help="module with serve_students/build_student_app (to benchmark another version)",
    )
    p.add_argument("--port", type=int, help="HTTP port on 127.0.0.1 (default: free in 8200-8299)")
    p.add_argument("--out-dir", default=str(RESULTS))
    p.add_argument("--name", default="serve_load", help="report file stem")
    args = p.parse_args(argv)
    args.levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if not args.levels or any(c < 1 or c > 64 for c in args.levels):
        p.error("concurrency levels must be in 1..64")
    args.duration_s = args.duration_s or (4.0 if args.quick else 10.0)
    args.inproc_seconds = args.inproc_seconds or (3.0 if args.quick else 6.0)

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    serve_env = {"RAY_worker_niceness": str(args.worker_niceness)}
    serve_env.update(kv.split("=", 1) for kv in args.serve_env)
    os.environ.update(serve_env)  # the local cluster's processes inherit this environment
    command = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
    info = machine()
    with tempfile.TemporaryDirectory(prefix="serve_load_") as tmp:
        models, notes = pick_models(args, Path(tmp))
        params = {role: _count_params(path) for role, path in models.items()}
        out = run_all(args, models)
    out = {
        "command": command,
        "machine": info,
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "settings": {
            "app_module": args.app_module,
            "quick": args.quick,
            "concurrency": args.levels,
            "duration_s": args.duration_s,
            "inputs_per_request": args.inputs_per_request,
            "replica_cpus": args.replica_cpus,
            "max_batch_size": args.max_batch_size,
            "batch_wait_timeout_s": args.batch_wait_timeout_s,
            "target_ongoing_requests": args.target_ongoing_requests,
            "model_header": args.model_header,
            "serve_env": serve_env,
        },
        "models": {r: {"what": notes[r], "params": params[r]} for r in ("student", "teacher")},
        **out,
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out["summary"] = summarize(out, args.levels)
    mpath, jpath = write_report(out, Path(args.out_dir), args.name)
    print(mpath.read_text())
    print(f"[serve_load] wrote {mpath} and {jpath}")
    print(out["summary"]["headline"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
