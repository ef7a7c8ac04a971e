"""Results as tables and plots: report.md, report.json, accuracy_vs_k.png.

Reports are rebuilt from `results.jsonl` (plus the generation stats file), so `raydistill
report OUT_DIR` re-renders a finished or half-finished run without retraining anything.
"""

from __future__ import annotations

import json
import platform
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

METHOD_ORDER = ["ce", "ce+cod", "kd", "kd+cod", "lwd", "lwd+cod"]


def arm_of(row: dict[str, Any]) -> str:
    """A result row's arm (ledgers written before the rename call it "method")."""
    return row.get("arm") or row["method"]


def aggregate(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± std over seeds per (arm, k)."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        groups[(arm_of(r), int(r["k"]))].append(r)
    rows = []
    for (method, k), rs in groups.items():
        row: dict[str, Any] = {"arm": method, "k": k, "n_seeds": len(rs)}
        for metric in ("accuracy", "fidelity", "boundary_fidelity"):
            vals = [r[metric] for r in rs if r.get(metric) is not None]
            row[metric] = float(np.mean(vals)) if vals else None
            row[f"{metric}_std"] = float(np.std(vals)) if vals else None
        rows.append(row)
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    rows.sort(key=lambda r: (r["k"], order.get(r["arm"], 99), r["arm"]))
    return rows


# CoD's arms and the baseline each is compared with (the method's arm registry declares
# these; reports re-rendered from an old run folder fall back to them).
COD_BASELINES = {"ce+cod": "ce", "kd+cod": "kd", "lwd+cod": "lwd"}


def cod_gains(
    agg: list[dict[str, Any]], baselines: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """Accuracy gain of each arm over its declared baseline, per k (both must have run)."""
    baselines = COD_BASELINES if baselines is None else baselines
    by = {(arm_of(r), r["k"]): r for r in agg}
    gains = []
    for (m, k), r in sorted(by.items(), key=lambda x: (x[0][1], x[0][0])):
        base = by.get((baselines.get(m), k))
        if base is not None:
            gains.append(
                {
                    "k": k,
                    "arm": m,
                    "baseline": arm_of(base),
                    "gain": r["accuracy"] - base["accuracy"],
                }
            )
    return gains


def _fmt(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "–"
    return f"{mean:.3f} ± {std:.3f}" if std is not None else f"{mean:.3f}"


def plot_accuracy_vs_k(
    agg: list[dict[str, Any]], path: Path, title: str, teacher_acc: float | None
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    methods = [m for m in METHOD_ORDER if any(arm_of(r) == m for r in agg)]
    methods += sorted({arm_of(r) for r in agg} - set(methods))
    for m in methods:
        rs = sorted((r for r in agg if arm_of(r) == m), key=lambda r: r["k"])
        ks = [r["k"] for r in rs]
        ax.errorbar(
            ks,
            [r["accuracy"] for r in rs],
            yerr=[r["accuracy_std"] or 0 for r in rs],
            marker="o",
            capsize=3,
            linestyle="-" if m.endswith("+cod") else "--",
            label=m,
        )
    if teacher_acc is not None:
        ax.axhline(teacher_acc, color="grey", linestyle=":", label="teacher")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k (labelled examples)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(
    out_dir: str | Path,
    *,
    cfg: Any = None,
    results: list[dict[str, Any]] | None = None,
    gen_stats: dict[str, Any] | None = None,
    teacher_info: dict[str, Any] | None = None,
    timings: dict[str, float] | None = None,
    peak_memory_mb: dict[str, float] | None = None,
    cluster: dict[str, Any] | None = None,
    baselines: dict[str, str] | None = None,
    reused: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Aggregate a run's ledger into report.{json,md} and accuracy_vs_k.png.

    Anything not given is taken from the previous report.json, so `raydistill report`
    re-renders a finished run folder.
    """
    out = Path(out_dir)
    if results is None:
        from raydistill.cluster.ledger import read_results

        results = read_results(out)
    if not results:
        raise FileNotFoundError(f"{out}: no results.jsonl rows to report on")
    if gen_stats is None and (out / "generation_stats.json").exists():
        gen_stats = json.loads((out / "generation_stats.json").read_text())
    prev = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else {}
    teacher_info = teacher_info or prev.get("teacher") or {}
    timings = timings or prev.get("timings") or {}
    peak_memory_mb = peak_memory_mb or prev.get("peak_memory_mb") or {}
    cluster = cluster or prev.get("cluster") or {}
    task = cfg.data.task if cfg is not None else prev.get("task", "?")
    baselines = baselines or prev.get("baselines") or COD_BASELINES
    agg = aggregate(results)
    gains = cod_gains(agg, baselines)
    g = gen_stats or {}
    report = {
        "task": task,
        "results": [
            {
                "arm": arm_of(r),
                **{
                    k: r.get(k)
                    for k in (
                        "k",
                        "seed",
                        "accuracy",
                        "fidelity",
                        "boundary_fidelity",
                        "train_rows",
                        "checkpoint",
                    )
                },
            }
            for r in results
        ],
        "summary": agg,
        "baselines": baselines,
        "cod_gains": gains,
        "counterfactuals": {
            "flip_rate": g.get("flip_rate"),
            "mean_edit_words": g.get("mean_edit_words"),
            "tokens_per_s": g.get("tokens_per_s"),
            **{
                k: v
                for k, v in g.items()
                if k not in ("flip_rate", "mean_edit_words", "tokens_per_s")
            },
        },
        "teacher": teacher_info,
        "timings": timings,
        "peak_memory_mb": peak_memory_mb,
        "cluster": cluster,
        # What this run took from earlier runs instead of recomputing (resume).
        "reused": reused if reused is not None else prev.get("reused"),
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
    }
    from raydistill.progress import console

    line = console()  # the run's last stage line: report files written
    line.open("report", total=3, unit="files")
    try:
        (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
        line.update("report", advance=1)
        plot_accuracy_vs_k(
            agg,
            out / "accuracy_vs_k.png",
            f"{task}: student accuracy vs k",
            teacher_info.get("test_accuracy"),
        )
        line.update("report", advance=1)
        (out / "report.md").write_text(render_markdown(report))
        line.update("report", advance=1)
    finally:
        line.close("report")
    return report


def render_markdown(report: dict[str, Any]) -> str:
    lines = [f"# raydistill report: {report['task']}", ""]
    t = report.get("teacher") or {}
    if t:
        lines.append(
            f"Teacher: `{t.get('backbone', t.get('path', '?'))}` ({t.get('source', '?')}), "
            f"test accuracy {t.get('test_accuracy', float('nan')):.3f}, "
            f"dev accuracy {t.get('dev_accuracy', float('nan')):.3f}."
        )
        lines.append("")
    lines += [
        "## Student accuracy (mean ± std over seeds)",
        "",
        "| k | arm | seeds | accuracy | fidelity | boundary fidelity |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["summary"]:
        lines.append(
            f"| {r['k']} | {arm_of(r)} | {r['n_seeds']} | {_fmt(r['accuracy'], r['accuracy_std'])} | "
            f"{_fmt(r['fidelity'], r['fidelity_std'])} | "
            f"{_fmt(r['boundary_fidelity'], r['boundary_fidelity_std'])} |"
        )
    if report["cod_gains"]:
        lines += [
            "",
            "## CoD gain over its baseline (accuracy points)",
            "",
            "| k | arm | baseline | gain |",
            "|---|---|---|---|",
        ]
        for gn in report["cod_gains"]:
            base = gn.get("baseline") or COD_BASELINES.get(arm_of(gn), "?")
            lines.append(f"| {gn['k']} | {arm_of(gn)} | {base} | {100 * gn['gain']:+.1f} |")
    c = report["counterfactuals"]
    if c and c.get("flip_rate") is not None:
        lines += ["", "## Counterfactuals", ""]
        for key in (
            "source",
            "seeds",
            "flipped",
            "no_counterfactual",
            "flip_rate",
            "mean_edit_words",
            "mean_attempts",
            "generated_tokens",
            "tokens_per_s",
            "cached_seeds",
        ):
            if c.get(key) is not None:
                lines.append(f"- {key}: {c[key]}")
        fl = c.get("fluency") or {}
        if fl.get("min_fluency_delta") is not None:
            lines.append(
                f"- flip_rate without the fluency threshold ({fl['min_fluency_delta']}): "
                f"{c.get('flip_rate_unfiltered')}"
            )
        for key, what in (("fluency", "LLM edits"), ("fluency_human", "human CAD edits")):
            if c.get(key):
                lines.append(f"- fluency of the {what}: {fluency_line(c[key])}")
        run = c.get("this_run") or {}
        if run.get("rejects"):
            lines.append(f"- rejected candidates by reason (this run): {run['rejects']}")
    reused = report.get("reused") or {}
    if reused:
        lines += ["", "## Reused from earlier runs", ""]
        lines += [f"- {k}: {v}" for k, v in reused.items()]
    if report.get("timings"):
        mem = report.get("peak_memory_mb") or {}
        lines += [
            "",
            "## Wall time and peak memory by stage",
            "",
            "Memory: the driver node's memory in use (all processes), peak during the stage.",
            "",
            "| stage | seconds | peak node memory (GiB) |",
            "|---|---|---|",
        ]
        for k, v in report["timings"].items():
            m = f"{mem[k] / 1024:.1f}" if k in mem else ""
            lines.append(f"| {k} | {v} | {m} |")
    lines += ["", "![accuracy vs k](accuracy_vs_k.png)", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------ counterfactuals.md


def fluency_line(f: dict[str, Any]) -> str:
    """One line from a fluency summary (`pipelines/fluency.py:fluency_summary`)."""
    return (
        f"mean Δ log-prob/token {f['mean_delta']:+.3f} ({f['mean_lp_orig']:.3f} → "
        f"{f['mean_lp_edit']:.3f}), {100 * f['share_with_oov']:.0f}% with an out-of-vocabulary "
        f"word, n = {f['n']} (LM: {f.get('model', '?')})"
    )


def _cell(text: Any, limit: int | None = None) -> str:
    s = " ".join(str(text).split()).replace("|", "\\|")
    return s if limit is None or len(s) <= limit else s[: limit - 1] + "…"


def _edited_side(rec: dict[str, Any]) -> str:
    return str(rec.get("text_pair") if rec.get("edit_side") == "text_pair" else rec["text"])


def counterfactual_rows(
    records: list[dict[str, Any]], label_names: list[str] | None = None, context: int = 80
) -> list[str]:
    """One Markdown table row per record: the seed and its edit (long texts: the changed
    part with `context` characters either side), words edited, whether the teacher
    flipped, log-prob per token of original → edit (Δ), inserted and out-of-vocabulary
    words."""
    from raydistill.pipelines.edits import edit_window

    def lab(i: Any) -> str:
        i = int(i)
        return label_names[i] if label_names and 0 <= i < len(label_names) else str(i)

    rows = []
    for r in records:
        orig = r.get("original_text")
        edit = _edited_side(r) if r.get("flipped") or r["source"].startswith("human") else ""
        if orig and edit:
            a, b, head, tail = edit_window(orig, edit, context)
            dots = ("… " if head else "", " …" if tail else "")
            orig_cell = _cell(dots[0] + a + dots[1])
            edit_cell = _cell(dots[0] + b + dots[1])
        else:
            orig_cell, edit_cell = _cell(orig or "?", 300), _cell(edit or "–")
        if r.get("lp_delta") is not None:
            lp = f"{r['lp_orig']:.2f} → {r['lp_edit']:.2f} ({r['lp_delta']:+.2f})"
        else:
            lp = "–"
        ins = ", ".join(r.get("inserted_words") or []) or "–"
        oov = ", ".join(r.get("oov_words") or []) or "–"
        rows.append(
            f"| {orig_cell} ({lab(r['parent_label'])}) | {edit_cell} ({lab(r['label'])}) | "
            f"{r['edit_words'] if r['edit_words'] >= 0 else '–'} | "
            f"{'yes' if r['flipped'] else 'no'} | {lp} | {_cell(ins)} | {_cell(oov)} |"
        )
    return rows


def render_counterfactuals_md(
    records: list[dict[str, Any]],
    *,
    task: str,
    label_names: list[str] | None = None,
    fluency: dict[str, Any] | None = None,
) -> str:
    sources = sorted({str(r["source"]) for r in records}) or ["?"]
    lines = [
        f"# Counterfactuals: {task} ({', '.join(sources)}), {len(records)} items",
        "",
        "`flipped`: the teacher predicts the target label on the edit (human edits are kept "
        "either way). Fluency: mean log-probability per token (nats) of the original → the "
        "edit under a separate LM, on the changed part with its context, and Δ = edit − "
        "original (0: as fluent as the original). OOV: inserted words that are not one "
        "token of the LM's vocabulary as a whole word (invented or rare words).",
        "",
    ]
    if fluency:
        lines += [f"Fluency over the edits: {fluency_line(fluency)}.", ""]
    lines += [
        "| seed (label) | counterfactual (target label) | words edited | flipped | "
        "log-prob/token orig → edit (Δ) | inserted words | OOV words |",
        "|---|---|---|---|---|---|---|",
        *counterfactual_rows(records, label_names),
    ]
    return "\n".join(lines) + "\n"


def write_counterfactuals_md(path: str | Path, records: list[dict[str, Any]], **kw: Any) -> None:
    """`counterfactuals.md`: every counterfactual of a run with its fluency."""
    Path(path).write_text(render_counterfactuals_md(records, **kw))
