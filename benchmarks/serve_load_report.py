"""The report side of benchmarks/serve_load.py: targets, headline and the Markdown table.

Kept apart from the driver (models, Ray Serve phases, the command line) because this part
needs neither Ray nor torch: it reads only the results dict that `serve_load.main` builds
and writes to benchmarks/results/<name>.json, so a committed results JSON can be
re-summarized and re-rendered without rerunning anything:

    python -c "import json; from pathlib import Path; \
from benchmarks.serve_load_report import write_report; \
write_report(json.load(open('benchmarks/results/serve_load.json')), Path('/tmp'), 'serve_load')"
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"  # as in serve_load.py: the report names the host the app listened on


def summarize(out: dict[str, Any], levels: list[int]) -> dict[str, Any]:
    """Ratios, targets (met / missed) and the headline line."""
    top, low = max(levels), sorted(levels)[len(levels) // 2]
    by = {(r["model"], r["concurrency"]): r for r in out["one_replica"]}
    stu, tea = by.get(("student", top)), by.get(("teacher", top))
    inproc_top = out["in_process"]["student"][str(top)]
    ratio = stu["texts_per_s"] / inproc_top if stu else None
    s_vs_t = stu["texts_per_s"] / tea["texts_per_s"] if stu and tea and tea["texts_per_s"] else None
    mid = by.get(("student", low))
    two = {r["concurrency"]: r for r in out["two_replicas"]}.get(top)
    two_vs_one = two["texts_per_s"] / stu["texts_per_s"] if two and stu else None
    auto = out.get("autoscale") or {}
    targets = {
        f"served texts/s at c={top} >= 50% of in-process batch-{top}": (
            ratio is not None and ratio >= 0.5,
            f"{ratio:.2f}" if ratio is not None else "n/a",
        ),
        f"p50 at c={top} <= 100 ms (student)": (
            stu is not None and stu["p50_ms"] is not None and stu["p50_ms"] <= 100,
            f"{stu['p50_ms']} ms" if stu else "n/a",
        ),
        f"throughput does not fall from c={low} to c={top}": (
            bool(stu and mid and stu["texts_per_s"] >= 0.95 * mid["texts_per_s"]),
            f"{mid['texts_per_s'] if mid else '?'} -> {stu['texts_per_s'] if stu else '?'} texts/s",
        ),
        f"student >= 2.5x teacher served at c={top}": (
            s_vs_t is not None and s_vs_t >= 2.5,
            f"{s_vs_t:.2f}x" if s_vs_t is not None else "n/a",
        ),
        f"2 replicas not slower than 1 at c={top}": (
            two_vs_one is not None and two_vs_one >= 0.95,
            f"{two_vs_one:.2f}x" if two_vs_one is not None else "not run",
        ),
        "autoscaling exercised (1 -> 2 replicas under load)": (
            auto.get("max_replicas_seen", 0) >= 2,
            f"max replicas seen {auto.get('max_replicas_seen', 'not run')}",
        ),
    }
    inproc_ratio = out["in_process"]["student"][str(top)] / out["in_process"]["teacher"][str(top)]
    # CPU efficiency: model CPU per text in-process / all serving CPU per text (proxy,
    # replica, controller, ...; not the client) at the top level. Robust to a busy machine.
    eff = None
    if stu and stu.get("cpu_ms_per_req"):
        served_cpu = sum(v for k, v in stu["cpu_ms_per_req"].items() if k != "dashboard")
        eff = out["in_process"]["student"]["cpu_ms_per_text"][str(top)] / max(served_cpu, 1e-9)
    headline = (
        f"served_vs_inprocess={ratio:.2f} student_vs_teacher={s_vs_t:.1f}x "
        f"p50_c{top}_ms={stu['p50_ms']:.0f} inprocess_student_vs_teacher={inproc_ratio:.1f}x"
        + (f" two_vs_one_replica={two_vs_one:.2f}x" if two_vs_one is not None else "")
        + (f" served_cpu_efficiency={eff:.2f}" if eff is not None else "")
        if stu and tea
        else "served_vs_inprocess=n/a"
    )
    return {
        "served_vs_inprocess": round(ratio, 3) if ratio is not None else None,
        "student_vs_teacher": round(s_vs_t, 3) if s_vs_t is not None else None,
        "inprocess_student_vs_teacher": round(inproc_ratio, 3),
        "served_cpu_efficiency": round(eff, 3) if eff is not None else None,
        "two_vs_one_replica": round(two_vs_one, 3) if two_vs_one is not None else None,
        "targets": {k: {"met": bool(m), "value": v} for k, (m, v) in targets.items()},
        "headline": headline,
    }


def _row(r: dict[str, Any], label: str) -> str:
    b = r.get("batches") or {}
    cpu = r.get("cpu_ms_per_req", {})
    per = ", ".join(f"{k} {v:.1f}" for k, v in cpu.items() if k in ("proxy", "replica"))
    return (
        f"| {label} | {r['model']} | {r['concurrency']} | {r['ok']} | {r['errors']} | "
        f"{r['p50_ms']} | {r['p90_ms']} | {r['p99_ms']} | {r['texts_per_s']} | "
        f"{b.get('mean_size', '–')} | {r['client_cpu_share']} | {per or '–'} |"
    )


def write_report(out: dict[str, Any], out_dir: Path, name: str) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    jpath, mpath = out_dir / f"{name}.json", out_dir / f"{name}.md"
    jpath.write_text(json.dumps(out, indent=2) + "\n")
    m, st, sm = out["machine"], out["settings"], out["summary"]
    lines = [
        "# Serve load: served students vs the same models in-process",
        "",
        f"Command: `{out['command']}`",
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['mem_gb']} GB RAM, GPU: "
        f"{m['gpu'] or 'none'}; load average at start {m['loadavg_at_start']}, at end "
        f"{out['loadavg_at_end']} (the machine is shared: compare ratios within this run); "
        f"Ray {m['ray']}, torch {m['torch']}, transformers {m['transformers']}.",
        "",
        f"Setup: app `{st['app_module']}` on {HOST}; replicas of {st['replica_cpus']} CPU "
        f"({max(1, round(st['replica_cpus']))} torch thread(s)); `@serve.batch` max "
        f"{st['max_batch_size']} / {st['batch_wait_timeout_s'] * 1000:.0f} ms; closed-loop "
        f"aiohttp clients in their own process, {st['inputs_per_request']} text(s) per "
        f"request, {st['duration_s']} s per level after a 0.5 s warm-up"
        + (", model header sent for multiplexed routing" if st["model_header"] else "")
        + (f"; Ray environment {st['serve_env']}" if st.get("serve_env") else "")
        + ".",
        "",
        "| model | params | what |",
        "|---|---:|---|",
    ]
    for role, info in out["models"].items():
        params = f"{info['params'] / 1e6:.1f} M" if info.get("params") else "?"
        lines.append(f"| {role} | {params} | {info['what']} |")
    ip = out["in_process"]
    sizes = [k for k in ip["student"] if k.isdigit()]
    cpu_rows = [
        f"| {role} CPU ms/text | "
        + " | ".join(str(ip[role]["cpu_ms_per_text"][b]) for b in sizes)
        + " | |"
        for role in ("student", "teacher")
    ]
    lines += [
        "",
        "In-process `StudentClassifier.classify`, texts/s by batch size (same thread count; "
        "best of 3 rounds, all rounds in the JSON):",
        "",
        "| model | " + " | ".join(f"batch {b}" for b in sizes) + " | tokenize ms/text |",
        "|---|" + "---:|" * (len(sizes) + 1),
    ]
    for role in ("student", "teacher"):
        lines.append(
            f"| {role} | "
            + " | ".join(str(ip[role][b]) for b in sizes)
            + f" | {ip[role]['tokenize_ms_per_text']} |"
        )
    lines += cpu_rows
    lines += [
        "",
        "Served (`POST /v1/classify`). *batch*: mean batch the replica formed in the level "
        "(`GET /v1/stats`); *client CPU*: the load generator's CPU share of one core; "
        "*CPU ms/req*: proxy and replica CPU per request (from /proc, includes warm-up).",
        "",
        "| setup | model | c | requests | errors | p50 ms | p90 ms | p99 ms | texts/s | batch "
        "| client CPU | CPU ms/req |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    lines += [_row(r, "floor: GET /healthz") for r in out.get("floor", [])]
    lines += [_row(r, "1 replica") for r in out["one_replica"]]
    lines += [_row(r, "1 replica, handle call (no HTTP)") for r in out.get("handle", [])]
    lines += [_row(r, "2 replicas") for r in out["two_replicas"]]
    auto = out.get("autoscale") or {}
    if auto:
        lines.append(_row(auto["while_scaling"], "autoscale 1→2, last 10 s before scaling"))
        lines.append(_row(auto["after"], "autoscale 1→2, after"))
        changes = [
            (t, n)
            for i, (t, n) in enumerate(auto["replicas_timeline"])
            if i == 0 or n != auto["replicas_timeline"][i - 1][1]
        ]
        tl = ", ".join(f"{n} at {t} s" for t, n in changes)
        lines += [
            "",
            f"Autoscaling config {auto['config']}; running replicas under load: {tl} "
            f"(second replica running after {auto.get('second_replica_running_after_s')} s).",
        ]
    lines += ["", "Targets:", ""]
    for k, v in sm["targets"].items():
        lines.append(f"- {'met' if v['met'] else 'MISSED'}: {k} ({v['value']})")
    lines += [
        "",
        "CPU efficiency (in-process model CPU per text at the top batch size / CPU of all "
        f"serving processes per request at the top level): {sm['served_cpu_efficiency']}.",
        "",
        f"Student/teacher in-process at the top batch size: "
        f"{sm['inprocess_student_vs_teacher']}x (the compute ratio the served ratio is "
        "bounded by).",
        "",
        "Diagnosis and the changes behind these numbers: serve_load_diagnosis.md.",
        "",
        f"`{sm['headline']}`",
        "",
    ]
    mpath.write_text("\n".join(lines))
    return mpath, jpath
