"""What a sweep leaves behind: the trials table (Markdown), the best config as a recipe, and
the α/β-vs-dev-accuracy plot.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from raydistill.config import (
    RunConfig,
    dump_config,
)
from raydistill.training.sweep_space import apply_params

log = logging.getLogger(__name__)


# ------------------------------------------------------------------- outputs


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "—" if v is None else str(v)


def trials_markdown(summary: dict[str, Any]) -> str:
    rows = summary["trials"]
    keys = list(summary["space"])
    lines = [
        f"# Sweep {summary['name']}",
        "",
        f"{len(rows)} trials, {summary['jobs_per_trial']} student job(s) each; scheduler "
        f"{summary['scheduler']}, search {summary['search_alg']}, selected on "
        f"{summary['metric']} ({summary['mode']}, mean over the trial's jobs). Test accuracy is "
        "shown for reference only.",
        "",
        "Space: " + "; ".join(f"`{k}` {v}" for k, v in summary["space"].items()),
        "",
        "| trial | "
        + " | ".join(f"`{k}`" for k in keys)
        + " | mean dev acc | mean test acc | jobs | status |",
        "|---|" + "---|" * len(keys) + "---|---|---|---|",
    ]
    for r in rows:
        mark = " **best**" if r["trial_id"] == summary.get("best_trial") else ""
        lines.append(
            f"| {r['trial_id']}{mark} | "
            + " | ".join(_fmt(r["params"].get(k)) for k in keys)
            + f" | {_fmt(r['mean_dev_accuracy'])} | {_fmt(r['mean_test_accuracy'])} | "
            f"{r['jobs_done']}/{r['jobs_total']} | {r['status']} |"
        )
    errors = [r for r in rows if r["error"]]
    if errors:
        lines += ["", "Errors:", ""] + [f"- {r['trial_id']}: {r['error']}" for r in errors]
    t = summary.get("timings") or {}
    if t:
        lines += ["", "Timings (s): " + ", ".join(f"{k} {v}" for k, v in t.items())]
    return "\n".join(lines) + "\n"


def write_outputs(
    cfg: RunConfig,
    summary: dict[str, Any],
    best: dict[str, Any] | None,
    sweep_dir: Path,
    recipe_path: str | None = None,
) -> dict[str, str]:
    sweep_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "trials_json": str(sweep_dir / "trials.json"),
        "trials_md": str(sweep_dir / "trials.md"),
    }
    (sweep_dir / "trials.json").write_text(json.dumps(summary, indent=1, default=str))
    (sweep_dir / "trials.md").write_text(trials_markdown(summary))
    if best is not None:
        paths["best"] = str(sweep_dir / "best.yaml")
        write_best(cfg, best, sweep_dir / "best.yaml", recipe_path)
    try:
        plot_sweep(summary, sweep_dir / "sweep.png")
        paths["plot"] = str(sweep_dir / "sweep.png")
    except Exception as e:  # a plot must not lose the sweep's results
        log.warning("sweep plot failed: %s", e)
    return paths


def best_config(cfg: RunConfig, best: dict[str, Any]) -> RunConfig:
    """The recipe with the winning params: runs the full grid with the recipe's workers."""
    out = apply_params(cfg, best["params"])
    out.name = f"{cfg.name}-best"
    out.out_dir = str(Path(cfg.out_dir) / "best")
    return out


def write_best(cfg: RunConfig, best: dict[str, Any], path: Path, recipe_path: str | None) -> None:
    dump_config(best_config(cfg, best), path)
    params = ", ".join(f"{k}={v}" for k, v in best["params"].items())
    header = (
        f"# Best trial {best['trial_id']} of sweep {cfg.name}"
        + (f" ({recipe_path})" if recipe_path else "")
        + f": {params}\n# mean dev accuracy {best['mean_dev_accuracy']} over "
        f"{best['jobs_done']} job(s). Rerun with: raydistill run {path}\n"
    )
    path.write_text(header + path.read_text())


def plot_sweep(summary: dict[str, Any], path: Path) -> None:
    """Parallel coordinates of the swept params → mean dev accuracy, one line per trial."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import cm, colors

    rows = [r for r in summary["trials"] if r["mean_dev_accuracy"] is not None]
    keys = list(summary["space"])
    axes_names = keys + ["mean dev acc"]
    fig, ax = plt.subplots(figsize=(max(5.0, 2.0 * len(axes_names)), 4.2))
    if not rows:
        ax.text(0.5, 0.5, "no trial reported", ha="center", va="center")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return

    def column(name: str) -> tuple[list[float], list[str]]:
        vals = [
            r["mean_dev_accuracy"] if name == "mean dev acc" else r["params"].get(name)
            for r in rows
        ]
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in vals):
            lo, hi = min(vals), max(vals)
            log_axis = summary["space"].get(name, "").startswith("loguniform") and lo > 0
            f = (lambda v: math.log10(v)) if log_axis else (lambda v: v)
            span = (f(hi) - f(lo)) or 1.0
            ticks = [_fmt(lo), _fmt(hi)] if hi != lo else [_fmt(lo), _fmt(lo)]
            return [(f(v) - f(lo)) / span if hi != lo else 0.5 for v in vals], ticks
        cats = sorted({json.dumps(v) for v in vals})
        pos = {c: (i / (len(cats) - 1) if len(cats) > 1 else 0.5) for i, c in enumerate(cats)}
        return [pos[json.dumps(v)] for v in vals], [cats[0], cats[-1]]

    cols = [column(n) for n in axes_names]
    accs = [r["mean_dev_accuracy"] for r in rows]
    norm = colors.Normalize(min(accs), max(accs) if max(accs) > min(accs) else min(accs) + 1e-9)
    cmap = cm.get_cmap("viridis") if hasattr(cm, "get_cmap") else matplotlib.colormaps["viridis"]
    xs = list(range(len(axes_names)))
    for i, r in enumerate(rows):
        ys = [c[0][i] for c in cols]
        best = r["trial_id"] == summary.get("best_trial")
        ax.plot(
            xs,
            ys,
            color="crimson" if best else cmap(norm(r["mean_dev_accuracy"])),
            linestyle="--" if r["status"] == "early-stopped" else "-",
            linewidth=2.6 if best else 1.4,
            marker="o",
            alpha=0.9,
            label=f"best {r['trial_id']}" if best else None,
        )
    for x, (_name, (_v, ticks)) in enumerate(zip(axes_names, cols, strict=True)):
        ax.axvline(x, color="0.6", linewidth=0.8)
        ax.text(x, -0.08, ticks[0], ha="center", va="top", fontsize=8)
        ax.text(x, 1.08, ticks[1], ha="center", va="bottom", fontsize=8)
    ax.set_xticks(xs, axes_names, fontsize=9)
    ax.tick_params(axis="x", pad=16)
    ax.set_yticks([])
    ax.set_ylim(-0.15, 1.15)
    ax.set_xlim(-0.3, len(xs) - 0.7)
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="mean dev accuracy")
    stopped = any(r["status"] == "early-stopped" for r in rows)
    ax.set_title(
        f"Sweep {summary['name']}: {len(rows)} trials"
        + (" (dashed: stopped early by ASHA)" if stopped else ""),
        fontsize=10,
    )
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
