"""The weakness loop's report: learning curves, per-round generation stats, error values.

What a user checks after a run: did each round help (test metric vs training-set size, per
arm, mean over seeds — the method's learning-curve figure), where generated samples were
lost (asked → parsed → verified → diverse → accepted, rejects by reason), how the error
values moved, and whether generated samples match the same number of human labels.
Written as report.json (everything), report.md (tables) and two PNGs.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np


def _mean_sd(xs: list[float]) -> tuple[float, float]:
    a = np.asarray([x for x in xs if x is not None], dtype=float)
    if not len(a):
        return float("nan"), float("nan")
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def best_rows(loops: dict) -> list[dict[str, Any]]:
    """Per loop: the round it keeps (best dev score) with that round's test score."""
    out = []
    for (arm, k, seed), st in loops.items():
        best_round = st["best"][1]
        row = next(r for r in st["history"] if r["round"] == best_round)
        out.append(
            {
                "arm": arm,
                "k": k,
                "seed": seed,
                "best_round": best_round,
                "rounds_run": len(st["history"]) - 1,
                "test_score": row["test_score"],
                "dev_score": row["dev_score"],
                "train_size": row["train_size"],
                "baseline_test_score": st["history"][0]["test_score"],
            }
        )
    return out


def summarize(loops: dict) -> dict[str, Any]:
    """Mean ± sd of the kept round's test score per (arm, k), and gains over few-shot."""
    rows = best_rows(loops)
    by = defaultdict(list)
    base: dict[int, dict[int, float]] = defaultdict(dict)  # k → seed → round-0 score
    for r in rows:
        by[(r["arm"], r["k"])].append(r["test_score"])
        base[r["k"]][r["seed"]] = r["baseline_test_score"]
    table = []
    for (arm, k), xs in sorted(by.items()):
        m, sd = _mean_sd(xs)
        bm, _ = _mean_sd(list(base[k].values()))
        table.append(
            {"arm": arm, "k": k, "n": len(xs), "test_mean": m, "test_sd": sd, "gain": m - bm}
        )
    for k, per_seed in sorted(base.items()):
        m, sd = _mean_sd(list(per_seed.values()))
        table.append(
            {
                "arm": "fewshot",
                "k": k,
                "n": len(per_seed),
                "test_mean": m,
                "test_sd": sd,
                "gain": 0.0,
            }
        )
    return {"per_loop": rows, "table": table}


def curve(loops: dict) -> dict[str, list[dict[str, float]]]:
    """arm → [{round, train_size, test mean, dev mean}] over seeds (and k)."""
    acc = defaultdict(lambda: defaultdict(list))
    for (arm, k, _seed), st in loops.items():
        for r in st["history"]:
            acc[(arm, k)][r["round"]].append(r)
    out = {}
    for (arm, k), by_round in acc.items():
        out[f"{arm}-k{k}"] = [
            {
                "round": rnd,
                "train_size": float(np.mean([r["train_size"] for r in rs])),
                "test_mean": _mean_sd([r["test_score"] for r in rs])[0],
                "dev_mean": _mean_sd([r["dev_score"] for r in rs])[0],
                "n": len(rs),
            }
            for rnd, rs in sorted(by_round.items())
        ]
    return out


def round_stats(rounds_dir: Path) -> list[dict[str, Any]]:
    """One row per (loop, round) from the saved round files."""
    out = []
    for f in sorted(Path(rounds_dir).glob("*/round_*.json")):
        rec = json.loads(f.read_text())
        reasons = Counter(c["reason"] for c in rec["candidates"] if c["verdict"] == "rejected")
        out.append(
            {
                "loop": f.parent.name,
                "round": rec["round"],
                **{k: v for k, v in rec["stats"].items() if k != "rejects"},
                "rejects": dict(sorted(reasons.items())),
                "error_mean": round(rec["error_mean"], 4),
                "error_hist": rec["error_hist"],
                "seconds": rec["seconds"],
            }
        )
    return out


def _plots(out: Path, curves: dict, stats: list[dict], metric: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, pts in sorted(curves.items()):
        ax.plot([p["train_size"] for p in pts], [p["test_mean"] for p in pts], "o-", label=name)
    ax.set_xlabel("training-set size (labelled + generated)")
    ax.set_ylabel(f"test {metric} (mean over seeds)")
    ax.set_title("weakness loop: learning curve per arm")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "learning_curve.png", dpi=120)
    plt.close(fig)
    files.append("learning_curve.png")
    loop_rounds = defaultdict(lambda: None)
    for s in stats:
        if s["loop"].startswith("loop-"):
            h = loop_rounds[s["round"]]
            c = np.asarray(s["error_hist"]["counts"], dtype=float)
            loop_rounds[s["round"]] = (s["error_hist"]["edges"], c if h is None else h[1] + c)
    if loop_rounds:
        fig, ax = plt.subplots(figsize=(6, 4))
        for rnd, (edges, counts) in sorted(loop_rounds.items()):
            mids = (np.asarray(edges[:-1]) + np.asarray(edges[1:])) / 2
            ax.plot(mids, counts, "o-", label=f"before round {rnd}")
        ax.set_xlabel("error value exp(-quality)")
        ax.set_ylabel("labelled examples (all loop-arm seeds)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "error_values.png", dpi=120)
        plt.close(fig)
        files.append("error_values.png")
    return files


def _rate(s: dict[str, Any]) -> str:
    """A round's pool rate (tok/s), or – for rounds from the cache or older round files."""
    sent, secs = s.get("sent_generated_tokens", 0), s.get("llm_s", 0.0)
    return f"{sent / secs:.0f}" if sent and secs > 0 else "–"


def write_report(
    out_dir: str | Path,
    *,
    cfg: Any,
    spec: Any,
    loops: dict,
    rounds_dir: Path,
    teacher_info: dict | None,
    timings: dict,
    peak_memory_mb: dict,
    cluster: dict,
    rounds_done: int,
) -> dict[str, Any]:
    out = Path(out_dir)
    metric = {"classification": "accuracy", "token_classification": "entity F1"}.get(
        spec.kind, "ROUGE-L"
    )
    summary = summarize(loops)
    curves = curve(loops)
    stats = round_stats(rounds_dir)
    tokens = sum(s.get("generated_tokens", 0) for s in stats)
    sent = sum(s.get("sent_generated_tokens", 0) for s in stats)
    llm_s = sum(s.get("llm_s", 0.0) for s in stats)
    pool_rate = round(sent / llm_s, 1) if llm_s > 0 and sent else None
    report = {
        "task": spec.name,
        "task_kind": spec.kind,
        "metric": metric,
        "method": "weakness",
        "rounds_done": rounds_done,
        "summary": summary["table"],
        "per_loop": summary["per_loop"],
        "curves": curves,
        "rounds": stats,
        "llm_generated_tokens": tokens,
        # Generated tokens the pool produced for this run ÷ seconds inside the LLM calls
        # (None when every answer came from the request cache).
        "pool_tokens_per_s": pool_rate,
        # Since 2026-12-07 the LLM seconds leave out a pool start inside the call.
        "pool_rate_excludes_start": True,
        # Which LLM wrote the samples: a pool rate compares only with the same model's.
        "generator": {"backend": cfg.pool.backend, "model": cfg.pool.model},
        "results": [r for st in loops.values() for r in st["history"]],
        "teacher": teacher_info,
        "timings": timings,
        "peak_memory_mb": peak_memory_mb,
        "cluster": cluster,
    }
    report["plots"] = _plots(out, curves, stats, metric)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    lines = [
        f"# weakness loop — {spec.name} ({spec.kind}), metric: test {metric}",
        "",
        f"Rounds run: {rounds_done}; kept round per loop = best dev score. LLM tokens "
        f"generated: {tokens}. Total {timings.get('total', '?')} s.",
        "",
        "Pool rate while generating (tokens generated for this run ÷ seconds inside the "
        "LLM calls, pool start-up excluded): "
        + (f"{pool_rate} tok/s." if pool_rate else "– (every answer came from the cache)."),
        "",
        "| arm | k | seeds | test (kept round) | ± sd | gain vs few-shot |",
        "|---|---|---|---|---|---|",
    ]
    for t in summary["table"]:
        lines.append(
            f"| {t['arm']} | {t['k']} | {t['n']} | {100 * t['test_mean']:.1f} | "
            f"{100 * t['test_sd']:.1f} | {100 * t['gain']:+.1f} |"
        )
    lines += [
        "",
        "## Learning curve (mean over seeds)",
        "",
        "| arm | round | train size | dev | test |",
        "|---|---|---|---|---|",
    ]
    for name, pts in sorted(curves.items()):
        for p in pts:
            lines.append(
                f"| {name} | {p['round']} | {p['train_size']:.0f} | {100 * p['dev_mean']:.1f} | "
                f"{100 * p['test_mean']:.1f} |"
            )
    lines += [
        "",
        "## Generation per round",
        "",
        "| loop | round | asked | parsed | kind checks | label verified | deduped | "
        "accepted | rejects | err mean | LLM tok/s | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in stats:
        rej = ", ".join(f"{k} {v}" for k, v in s["rejects"].items())
        lines.append(
            f"| {s['loop']} | {s['round']} | {s['asked']} | {s['parsed']} | "
            f"{s.get('kind_checks_passed', '')} | {s.get('label_verified', '')} | "
            f"{s.get('after_dedupe', '–')} | {s.get('accepted', '')} | {rej} | "
            f"{s['error_mean']} | {_rate(s)} | {s['seconds']} |"
        )
    lines += ["", "## Stage times (s)", ""]
    lines += [f"- {k}: {v}" for k, v in timings.items()]
    lines += ["", *[f"![{p}]({p})" for p in report["plots"]], ""]
    (out / "report.md").write_text("\n".join(lines))
    return report
