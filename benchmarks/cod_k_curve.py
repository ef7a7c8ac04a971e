"""SST-2 CoD over the whole k grid: one table and one plot from two committed runs.

    python -m benchmarks.cod_k_curve    # cod_table, cod_table_large_k, cod_table_k512 .json

The small-k grid (k = 8 … 64, 5 seeds), k = 128 and k = 512 are separate
`benchmarks.cod_table` runs: students train full-batch for a fixed number of epochs, so
a k = 512 student costs ~8× a k = 64 one, and on two cores the large-k runs had to make
do with fewer seeds and only the KD / KD+CoD arms. They share the recipe, the cached teacher and the generator, so their rows
line up; each row says how many seeds it has, and the commands of both runs are quoted.
This renders no new numbers: it answers the paper's question (does the CoD gain vanish
as k grows?) from the files as committed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from raydistill.cluster.report import arm_of

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
ARMS = ["ce", "kd", "kd+cod", "lwd", "lwd+cod"]
LABEL = {"ce": "CE", "kd": "KD", "kd+cod": "KD+CoD", "lwd": "LWD", "lwd+cod": "LWD+CoD"}


def merged(paths: list[Path], dataset: str) -> tuple[dict, list[str]]:
    """{(arm, k): summary row} over the runs (a later run's k replaces an earlier's)."""
    rows, commands = {}, []
    for path in paths:
        saved = json.loads(path.read_text())
        rep = saved["tables"].get(dataset)
        if rep is None:
            raise SystemExit(f"{path} has no {dataset!r} table (has {list(saved['tables'])})")
        commands.append(f"`{saved['commands'][dataset]}` ({saved['wall_s'][dataset] / 60:.0f} min)")
        for r in rep["summary"]:
            rows[(arm_of(r), r["k"])] = r
    return rows, commands


def cell(r: dict | None) -> str:
    return "" if r is None else f"{r['accuracy']:.3f} ± {r['accuracy_std']:.3f}"


def render(rows: dict, commands: list[str], dataset: str) -> str:
    ks = sorted({k for _, k in rows})
    out = [
        f"# CoD on {dataset} over the whole k grid",
        "",
        "Made by `python -m benchmarks.cod_k_curve` from these runs:",
        "",
        *[f"- {c}" for c in commands],
        "",
        "Test accuracy, mean ± sd over seeds. Gain = KD+CoD − KD in points; a CoD arm "
        "trains on k/2 originals plus their verified counterfactuals.",
        "",
        "| k | seeds | " + " | ".join(LABEL[a] for a in ARMS) + " | KD+CoD − KD | LWD+CoD − LWD |",
        "|---" * (len(ARMS) + 4) + "|",
    ]
    for k in ks:
        seeds = max(rows[(a, k)]["n_seeds"] for a in ARMS if (a, k) in rows)
        gains = []
        for base in ("kd", "lwd"):
            a, b = rows.get((base + "+cod", k)), rows.get((base, k))
            gains.append(f"{100 * (a['accuracy'] - b['accuracy']):+.1f}" if a and b else "")
        cells = [cell(rows.get((a, k))) for a in ARMS]
        out.append(f"| {k} | {seeds} | " + " | ".join(cells) + " | " + " | ".join(gains) + " |")
    return "\n".join(out) + "\n"


def plot(rows: dict, path: Path, dataset: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for arm in ARMS:
        pts = sorted((k, r) for (a, k), r in rows.items() if a == arm)
        if not pts:
            continue
        ax.errorbar(
            [k for k, _ in pts],
            [r["accuracy"] for _, r in pts],
            yerr=[r["accuracy_std"] for _, r in pts],
            marker="o",
            capsize=3,
            linestyle="-" if arm.endswith("+cod") else "--",
            label=arm,
        )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k (labelled examples)")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{dataset}: CoD across k")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(paths: list[Path], dataset: str, out: Path) -> str:
    rows, commands = merged(paths, dataset)
    md = render(rows, commands, dataset)
    (out / f"cod_k_curve_{dataset}.md").write_text(md)
    plot(rows, out / f"cod_k_curve_{dataset}.png", dataset)
    return md


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="sst2")
    p.add_argument(
        "--runs", nargs="+", default=["cod_table", "cod_table_large_k", "cod_table_k512"]
    )
    args = p.parse_args(argv)
    paths = [RESULTS / f"{tag}.json" for tag in args.runs]
    missing = [str(x) for x in paths if not x.is_file()]
    if missing:
        p.error(f"not found: {', '.join(missing)} (run benchmarks.cod_table first)")
    print(write(paths, args.dataset, RESULTS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
