"""The explanation-distillation report: what a user checks after `raydistill run
recipes/cqa-explain.yaml`.

Per arm (mode × explanation source): answer accuracy mean ± sd over seeds on the reported
split, ROUGE-L and embedding cosine of the student's explanations against human CoS-E,
their length, and the LLM judge's means per dimension with its parse rate; a PNG of
accuracy and judge scores per arm; example explanations per arm; and the teacher's chain:
revision rate, length ratio e′/e, the judge on original vs revised explanations, and how
many prompt tokens each call shares with earlier prompts (what prefix caching can save).
Written as report.json (everything), report.md and explain.png.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from raydistill.pipelines.explanations import DIMENSIONS

_SHORT = {d: d[:5] for d in DIMENSIONS}
PLOT = "explain.png"


def examples(test: list[dict[str, Any]], results: list[dict[str, Any]], per_arm: int = 3) -> dict:
    """Per arm, the first `per_arm` kept generations of its lowest k and seed, with the
    question, gold answer and human explanation beside them."""
    by_id = {str(r["id"]): r for r in test}
    out: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(results, key=lambda r: (r["arm"], r["k"], r["seed"])):
        if r["arm"] in out or not r.get("examples"):
            continue
        shown = []
        for ex in r["examples"][:per_arm]:
            row = by_id.get(str(ex.get("id")), {})
            shown.append(
                {
                    **ex,
                    "key": f"student {r['arm']} k={r['k']}|s{r['seed']}:{ex.get('id')}",
                    "question": row.get("question"),
                    "gold": row["choices"][int(row["answer"])] if row else None,
                    "human": row.get("explanation"),
                }
            )
        out[r["arm"]] = shown
    return out


def teacher_examples(
    rows: dict[str, dict[str, Any]], chain: dict[str, dict[str, Any]], n: int = 3
) -> list[dict[str, Any]]:
    """The first `n` questions (id order) the teacher revised: original, critique, revised."""
    out = []
    for i in sorted(chain):
        c = chain[i]
        if c.get("revision") != "revised" or i not in rows:
            continue
        row = rows[i]
        out.append(
            {
                "id": i,
                "question": row["question"],
                "answer": row["choices"][int(row["answer"])],
                "human": row.get("explanation"),
                "original": c.get("original"),
                "critique": (c.get("critique") or {}).get("critique"),
                "revised": c.get("revised"),
            }
        )
        if len(out) == n:
            break
    return out


def _f(x: Any, scale: float = 1.0, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and x != x):
        return "–"
    return f"{scale * float(x):.{digits}f}"


def modal_cell(group: dict[str, Any]) -> str:
    """A judge group's most common score and its share, "–" for results without it."""
    if group.get("modal_score") is None:
        return "–"
    return f"{group['modal_score']} ({_f(group.get('modal_share'), 100)}%)"


def judge_group_lines(groups: dict[str, Any], names: list[str] | None = None) -> list[str]:
    """The judge's table per group (all of them, or `names` in that order): items, parse
    rate, agreement between two samples, the most common score and the mean per
    dimension. One renderer for the run report and `benchmarks/explain_table`, so the two
    never show the same judge result in different columns."""
    lines = [
        "| group | items | parse rate | agreement exact / ±1 | most common score | "
        + " | ".join(DIMENSIONS)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(DIMENSIONS),
    ]
    for name in names if names is not None else sorted(groups):
        g = groups.get(name)
        if not g:
            continue
        lines.append(
            f"| {name} | {g['items']} | {_f(g.get('parse_rate'), 100)}% | "
            f"{_f(g.get('agreement_exact'), 100)}% / {_f(g.get('agreement_within_1'), 100)}% | "
            f"{modal_cell(g)} | " + " | ".join(_judge_cells(g.get("means"))) + " |"
        )
    return lines


def _judge_cells(means: dict[str, float] | None) -> list[str]:
    return [_f((means or {}).get(d), digits=2) for d in DIMENSIONS]


def _chain_lines(c: dict[str, Any], judge: dict[str, Any] | None) -> list[str]:
    lines = [
        "",
        "## The teacher's chain",
        "",
        f"- questions {c.get('questions')}, explained {c.get('explained')}, critiqued "
        f"{c.get('critiqued')}, flawed {c.get('flawed')}, revised {c.get('revised')} "
        f"(rate {c.get('revision_rate')}), length ratio e′/e of revised ones "
        f"{c.get('length_ratio_revised')} (cap: method.max_revision_ratio)",
        f"- rejects: {c.get('rejects') or 'none'}",
    ]
    for src, q in (c.get("quality") or {}).items():
        lines.append(
            f"- {src}: {_f(q.get('words'))} words, cosine to human CoS-E {_f(q.get('cosine'), digits=3)}"
        )
    pre = c.get("prefix") or {}
    cache = pre.get("caching") or {}
    lines += [
        "",
        "### Prompt prefixes of the 3-call chain",
        "",
        f"Prefix caching: {cache.get('enabled')} (block size {cache.get('block_size')}; "
        f"{cache.get('why', '?')}). Pool-reported prompt tokens per call: "
        f"{c.get('prompt_tokens')}.",
        "",
    ]
    if pre.get("calls"):
        lines += [
            "Computed from the prompts (the pool model's chat template, tokenized), not read "
            "from the engine: a prompt's shared prefix is what it has in common with the start "
            "of any earlier prompt; reusable = rounded down to whole KV blocks. An upper "
            "bound: a full cache evicts.",
            "",
            "| call | requests | prompt tokens | shared prefix | reusable (blocks) | "
            "prefill / request | prompt / request |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, s in pre["calls"].items():
            lines.append(
                f"| {name} | {s['requests']} | {s['prompt_tokens']} | "
                f"{s['shared_prefix_tokens']} | {s['reusable_tokens']} | "
                f"{s['prefill_per_request']} | {s['prompt_per_request']} |"
            )
    elif pre.get("skipped"):
        lines.append(f"Prefix reuse not computed: {pre['skipped']}.")
    if judge:
        groups = judge.get("groups", {})
        lines += [
            "",
            "### The judge on the teacher's explanations (training questions, gold answer)",
            "",
            *judge_group_lines(groups, [f"teacher {s}" for s in ("human", "original", "revised")]),
        ]
        p = judge.get("original_vs_revised") or {}
        if p.get("n"):
            lines += [
                "",
                f"On the {p['n']} revised questions (paired; item score = mean of its parsed "
                "samples):",
                "",
                "| | " + " | ".join(DIMENSIONS) + " |",
                "|---|" + "---|" * len(DIMENSIONS),
                "| original | " + " | ".join(_judge_cells(p["teacher original"])) + " |",
                "| revised | " + " | ".join(_judge_cells(p["teacher revised"])) + " |",
                "| revised − original | "
                + " | ".join(f"{p['difference'][d]:+.2f}" for d in DIMENSIONS)
                + " |",
            ]
        else:
            lines.append("\nNo revised question has parsed judge scores for both versions.")
    return lines


def render_md(report: dict[str, Any]) -> str:
    judge = report.get("judge")
    head = "| arm (mode:source) | k | seeds | accuracy | ± sd | ROUGE-L | cosine | words |"
    rule = "|---|---|---|---|---|---|---|---|"
    if judge:
        head += " judge parsed | " + " | ".join(_SHORT[d] for d in DIMENSIONS) + " |"
        rule += "---|" * (1 + len(DIMENSIONS))
    lines = [
        f"# explanation distillation — {report.get('task')}",
        "",
        "Reported split: CQA dev (never used for selection; dev is carved from train). "
        "Accuracy in %, mean ± sd over seeds. ROUGE-L (×100) and cosine (MiniLM) of the "
        "student's explanations against human CoS-E; words = mean length of its non-empty "
        "explanations."
        + (
            f" Judge: 1–5 per dimension, mean over the parsed samples ({judge.get('samples')} "
            "per kept explanation); 'judge parsed' = share of samples that parsed."
            if judge
            else " Judge: off (method.judge=false)."
        ),
        "",
        head,
        rule,
    ]
    for t in report.get("summary", []):
        row = (
            f"| {t['arm']} | {t['k']} | {t['n']} | {_f(t['accuracy_mean'], 100)} | "
            f"{_f(t['accuracy_sd'], 100)} | {_f(t.get('explanation_rougeL'), 100)} | "
            f"{_f(t.get('explanation_cosine'), digits=3)} | {_f(t.get('explanation_words'))} |"
        )
        if judge:
            rate = t.get("judge_parse_rate")
            row += f" {_f(rate, 100, 0)}{'%' if rate is not None else ''} | "
            row += " | ".join(_judge_cells(t.get("judge"))) + " |"
        lines.append(row)
    if report.get("plots"):
        lines += ["", f"![accuracy and judge scores per arm]({report['plots'][0]})"]
    if judge:
        lines += [
            "",
            "## The judge",
            "",
            f"Prompt ({judge.get('prompt_version')}), temperature {judge.get('temperature')}, "
            f"{judge.get('samples')} samples per item; an answer that does not parse is a "
            "counted failure, never a score.",
            "",
            "```",
            str(judge.get("prompt", "")),
            "```",
            "",
            "Most common score: the score the judge gave most often and its share of all "
            "parsed scores; near 100% means the judge gives one score to everything, and "
            "its agreement then says nothing.",
            "",
            "| group | items | samples | parsed | failures | agreement exact | within ±1 "
            "| most common score |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, g in sorted(judge.get("groups", {}).items()):
            modal = modal_cell(g)
            lines.append(
                f"| {name} | {g['items']} | {g['samples']} | {g['parsed']} | "
                f"{g['failures'] or 'none'} | {_f(g['agreement_exact'], 100)}% | "
                f"{_f(g['agreement_within_1'], 100)}% ({g['agreement_pairs']} pairs) | {modal} |"
            )
        lines.append(f"\nKept generations not judged: {judge.get('students_not_judged')}.")
    item = (judge or {}).get("item_means") or {}
    if report.get("examples"):
        lines += ["", "## Example explanations per arm", ""]
        for arm, exs in report["examples"].items():
            lines += [f"### {arm}", ""]
            for ex in exs:
                mark = "✓" if ex.get("correct") else "✗"
                js = item.get(ex.get("key"))
                jtxt = (
                    " — judge " + ", ".join(f"{_SHORT[d]} {js[d]:.1f}" for d in DIMENSIONS)
                    if js
                    else ""
                )
                why = f" because {ex['explanation']}" if ex.get("explanation") else ""
                lines.append(
                    f"- Q: {ex.get('question')} (gold: {ex.get('gold')}) → {mark} "
                    f"**{ex.get('answer')}**{why}{jtxt}  \n"
                    f"  human: {ex.get('human') or '–'}"
                )
            lines.append("")
    c = report.get("chain") or {}
    if c:
        lines += _chain_lines(c, judge)
        if report.get("teacher_examples"):
            lines += ["", "### Revised explanations (the first few, by question id)"]
        for ex in report.get("teacher_examples") or []:
            lines += [
                "",
                f"- Q: {ex['question']} (answer: {ex['answer']})",
                f"  - original: {ex['original']}",
                f"  - critique: {ex['critique']}",
                f"  - revised: {ex['revised']}",
                f"  - human: {ex['human']}",
            ]
    lines += ["", "## Stage times (s)", ""]
    lines += [f"- {k}: {v}" for k, v in (report.get("timings") or {}).items()]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> bool:
    """Accuracy ± sd per arm, and (with the judge) its mean score per dimension."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = report.get("summary") or []
    if not rows:
        return False
    judged = [t for t in rows if t.get("judge")]
    labels = [f"{t['arm']}\nk={t['k']}" for t in rows]
    n = 2 if judged else 1
    fig, axes = plt.subplots(1, n, figsize=(6 * n, 4.5), squeeze=False)
    ax = axes[0][0]
    x = np.arange(len(rows))
    ax.bar(
        x,
        [100 * t["accuracy_mean"] for t in rows],
        yerr=[100 * t["accuracy_sd"] for t in rows],
        capsize=3,
    )
    ax.set_xticks(x, labels, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("answer accuracy (%), mean ± sd over seeds")
    ax.set_title("accuracy per arm")
    if judged:
        ax = axes[0][1]
        xj = np.arange(len(judged))
        w = 0.8 / len(DIMENSIONS)
        for i, d in enumerate(DIMENSIONS):
            ax.bar(xj + i * w, [t["judge"][d] for t in judged], w, label=d)
        ax.set_xticks(
            xj + 0.4 - w / 2, [f"{t['arm']}\nk={t['k']}" for t in judged], rotation=45,
            ha="right", fontsize=7,
        )  # fmt: skip
        ax.set_ylim(1, 5)
        ax.set_ylabel("LLM judge score (1–5)")
        ax.set_title("judge scores of kept student explanations")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(out_dir: str | Path, report: dict[str, Any]) -> dict[str, Any]:
    """report.json, explain.png and report.md in `out_dir`; returns the report."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report["plots"] = [PLOT] if plot(report, out / PLOT) else []
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "report.md").write_text(render_md(report))
    return report
