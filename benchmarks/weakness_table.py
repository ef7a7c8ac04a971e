"""The weakness-loop table: arms × seeds per task, against the issue's targets.

    python -m benchmarks.weakness_table                          # sst2, seeds 0 1 2
    python -m benchmarks.weakness_table --tasks sst2 conll       # more tasks
    python -m benchmarks.weakness_table --from-run sst2=runs/sst2-weakness   # a finished run

Every task is a run of its recipe (`recipes/<task>-weakness.yaml`) through the same
`methods.weakness.run` entry the CLI calls, so the table measures what users run; or
`--from-run` reads a finished run's `report.json` (e.g. from `raydistill run`). The
arms (`TABLE_ARMS`, else the recipe's): `loop` (error-proportional seeding + diversity
filter), `random` (uniform seeding), `nodiv` (no diversity filter) and `human` (the same
number of human-labelled rows instead of generated ones); `fewshot` is round 0, shared
by all.
Targets are checked and printed as met or missed; nothing here tunes a run to meet them.
Writes `benchmarks/results/weakness_table.{md,json}`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.table_args import add_seed_and_override_args, seeds_override

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

RECIPES = {
    "sst2": "sst2-weakness.yaml",
    "conll": "conll-weakness.yaml",
    "bbc-summary": "bbc-summary-weakness.yaml",
}
# The table's arms where they are more than the recipe's: a recipe is a demo that must
# finish in 20 minutes here, and leaves the no-diversity ablation (the comparison
# (c)) to this table. A `--set experiment.arms=[...]` still wins (it comes later).
TABLE_ARMS = {
    "sst2": "experiment.arms=[loop,random,nodiv,human]",
    "conll": "experiment.arms=[loop,random,nodiv,human]",
}


def table_config(name: str, extra: list[str]) -> Any:
    """The run config of one task's table: its recipe, the table's folder and arms, then
    the `--set` overrides."""
    from raydistill.config import load_config

    return load_config(
        ROOT / "recipes" / RECIPES[name],
        [
            f"out_dir={ROOT / 'benchmarks' / 'runs' / (name + '-weakness')}",
            *([TABLE_ARMS[name]] if name in TABLE_ARMS else []),
            *extra,
        ],
    )


def run_task(name: str, extra: list[str]) -> tuple[dict[str, Any], float]:
    from raydistill.methods.weakness import run

    cfg = table_config(name, extra)
    t0 = time.perf_counter()
    report = run(cfg)
    return report, time.perf_counter() - t0


def per_seed(report: dict[str, Any]) -> dict[str, dict[int, float]]:
    """arm → seed → test score of the kept round; `fewshot` from round 0 (first k only:
    the targets are stated at one k)."""
    rows = report["per_loop"]
    k = min(r["k"] for r in rows)
    out: dict[str, dict[int, float]] = defaultdict(dict)
    for r in rows:
        if r["k"] != k:
            continue
        out[r["arm"]][int(r["seed"])] = float(r["test_score"])
        out["fewshot"][int(r["seed"])] = float(r["baseline_test_score"])
    return dict(out)


def _mean(xs) -> float:
    xs = list(xs)
    return float(np.mean(xs)) if xs else float("nan")


def _paired(a: dict[int, float], b: dict[int, float]) -> list[float]:
    return [a[s] - b[s] for s in sorted(set(a) & set(b))]


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets for this task kind, each with its value and met/missed."""
    s = per_seed(report)
    kind = report["task_kind"]
    loop, few = s.get("loop", {}), s.get("fewshot", {})
    out = []

    def add(name: str, value: float | None, goal: str, met: bool) -> None:
        out.append({"target": name, "value": value, "goal": goal, "met": bool(met)})

    gain = _mean(_paired(loop, few))
    if kind == "classification":
        add("loop − few-shot (points)", 100 * gain, "≥ +10", gain >= 0.10)
        if s.get("human"):
            ratio = _mean(loop.values()) / _mean(s["human"].values())
            add("loop / human labels at equal size", ratio, "≥ 0.90", ratio >= 0.90)
        if s.get("random"):
            d = _mean(_paired(loop, s["random"]))
            add("loop − random seeding (points)", 100 * d, "> 0", d > 0)
    elif kind == "token_classification":
        add("loop − few-shot (entity-F1 points)", 100 * gain, "≥ +5", gain >= 0.05)
    else:
        kept = [r for r in report["per_loop"] if r["arm"] != "human"]
        above = sum(r["test_score"] > r["baseline_test_score"] for r in kept)
        add(
            "loops whose kept round beats few-shot ROUGE-L",
            above,
            f"= {len(kept)}",
            above == len(kept),
        )
    rate, note = pool_rate(report)
    ref = standalone_pool_rate()
    generator = generator_model(report)
    name = "pool rate while generating / standalone pool (committed throughput.json"
    if rate and ref and generator and generator != ref[2]:
        # Another model's rate says nothing about this one's pool.
        add(f"{name}, {ref[2]}; this run's generator is {generator})", None, "≥ 0.80", False)
    elif rate and ref:
        fixed = "; start-up taken out of this older report's LLM seconds" if note else ""
        add(
            f"{name}, {ref[1]}; another day, so a rough ratio{fixed})",
            rate / ref[0],
            "≥ 0.80",
            rate / ref[0] >= 0.80,
        )
    return out


def pool_rate(report: dict[str, Any]) -> tuple[float | None, str]:
    """The run's pool rate (tok/s) and, for a report from before 2026-12-07, a note: those
    counted each round's pool start-up (inside its first LLM call) as generation, so the
    start-up seconds the run recorded (`timings.pool_startup_s`) are taken out here."""
    rate = report.get("pool_tokens_per_s")
    if not rate or report.get("pool_rate_excludes_start"):
        return rate, ""
    rounds = report.get("rounds", [])
    sent = sum(int(r.get("sent_generated_tokens") or 0) for r in rounds)
    llm_s = sum(float(r.get("llm_s") or 0.0) for r in rounds)
    start = float((report.get("timings") or {}).get("pool_startup_s") or 0.0)
    if sent and start and llm_s - start > 0:
        return sent / (llm_s - start), (
            f"{rate:.0f} tok/s as reported, which counted {start:.0f} s of pool start-up as "
            f"generation; {sent / (llm_s - start):.0f} tok/s without it"
        )
    return rate, ""


def standalone_pool_rate(batch_size: int = 64) -> tuple[float, str, str] | None:
    """The warm 1-replica pool's tok/s at `batch_size` from the committed throughput run
    (the recipes' pool batch), with that run's date and model; None when it is not there."""
    path = RESULTS / "throughput.json"
    if not path.exists():
        return None
    d = json.loads(path.read_text())
    for pool in d.get("generation", {}).get("pool", []):
        for r in pool.get("runs", []):
            if r.get("replicas") == 1 and r.get("batch_size") == batch_size:
                label = f"{d.get('date', '?')}, batch {batch_size}"
                return float(r["tokens_per_s"]), label, measured_model(d)
    return None


def generator_model(report: dict[str, Any]) -> str | None:
    """The LLM that wrote a run's samples, where its report records it."""
    return (report.get("generator") or {}).get("model")


def measured_model(result: dict[str, Any]) -> str:
    """The model a throughput result measured: recorded since 2026-12-07; before that,
    the command's --model, else the benchmark's default then."""
    if result.get("model"):
        return str(result["model"])
    words = shlex.split(result.get("command", ""))
    for i, w in enumerate(words[:-1]):
        if w == "--model":
            return words[i + 1]
    return "smollm2-135m-instruct"


def round_rate_lines(report: dict[str, Any]) -> list[str]:
    """The diagnosis under the pool-rate target: the same kind of round call sent alone
    (`benchmarks.round_rate`), when it measured this task's generator."""
    from benchmarks.round_rate import COLD, REFERENCE, WARM, mean_rate

    rate, note = pool_rate(report)
    path = RESULTS / f"round_rate_{report.get('task')}.json"
    generator = generator_model(report)
    if not rate or not path.exists():
        return []
    d = json.loads(path.read_text())
    if generator and generator != d.get("model"):
        return []
    cold = mean_rate(d, COLD)
    warm = mean_rate(d, WARM)
    ref = mean_rate(d, REFERENCE)
    if not (cold and warm and ref):
        return []
    return [
        "",
        f"Pool rate diagnosis (`{d['command'].strip()}`, {d['date']}; "
        f"`round_rate_{d['task']}.md`): the same kind of round call sent alone runs at "
        f"{cold:.0f} tok/s on a just-started pool and {warm:.0f} warm; the CoD reference the "
        f"target uses ran at {ref:.0f} that day. This run's {rate:.0f} tok/s is "
        f"{rate / cold:.2f}× the alone rate on a just-started pool (what a round meets: it "
        f"starts its pool) and {rate / ref:.2f}× the same-day reference."
        + (f" ({note}.)" if note else ""),
    ]


def teacher_line(teacher: dict | None) -> str:
    """The verifier classifier's score as the report has it (the weakness method scores
    its teacher on dev: the test split is the students' alone)."""
    if not teacher:
        return "no teacher classifier"
    for key in ("test_accuracy", "dev_accuracy"):
        if teacher.get(key) is not None:
            return (
                f"teacher {teacher.get('backbone', '')} {key.replace('_', ' ')} {teacher[key]:.3f}"
            )
    return "teacher score not recorded"


def render(tables: dict[str, dict], commands: dict[str, str], wall: dict[str, float]) -> str:
    lines = [
        "# Weakness-targeted augmentation: arms × seeds",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores. Each cell: the test "
        "score of the round a loop keeps (best **dev** score; the test split is never "
        "used for selection). `fewshot` = round 0 (the k labelled seeds), shared by every "
        "arm; `human` = the same number of human-labelled rows as the loop arm kept.",
        "",
    ]
    for name, rep in tables.items():
        s = per_seed(rep)
        seeds = sorted({sd for v in s.values() for sd in v})
        metric = rep["metric"]
        lines += [
            f"## {name} ({rep['task_kind']}, test {metric})",
            "",
            f"Command: `{commands.get(name, '?')}`; wall time {wall.get(name, '?')} s; "
            f"LLM tokens generated {rep.get('llm_generated_tokens', '?')}; "
            f"{teacher_line(rep.get('teacher'))}.",
            "",
            "| arm | " + " | ".join(f"seed {x}" for x in seeds) + " | mean | sd | vs few-shot |",
            "|---|" + "---|" * (len(seeds) + 3),
        ]
        few = s.get("fewshot", {})
        order = ["fewshot", "loop", "random", "nodiv", "human"]
        for arm in [a for a in order if a in s] + [a for a in s if a not in order]:
            v = s[arm]
            xs = [v[x] for x in seeds if x in v]
            sd = float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0
            d = _mean(_paired(v, few))
            cells = " | ".join(f"{100 * v[x]:.1f}" if x in v else "–" for x in seeds)
            lines.append(
                f"| {arm} | {cells} | {100 * _mean(xs):.1f} | {100 * sd:.1f} | {100 * d:+.1f} |"
            )
        kept = defaultdict(list)
        for r in rep["per_loop"]:
            kept[r["arm"]].append(f"r{r['best_round']}/{r['rounds_run']} ({r['train_size']})")
        lines += ["", "Kept round / rounds run (training-set size) per seed:", ""]
        lines += [f"- {a}: {', '.join(v)}" for a, v in sorted(kept.items())]
        lines += ["", "| target | value | goal | |", "|---|---|---|---|"]
        for t in targets(rep):
            v = t["value"]
            if v is None:
                lines.append(f"| {t['target']} | – | {t['goal']} | not measured |")
                continue
            lines.append(
                f"| {t['target']} | {v:.2f} | {t['goal']} | {'met' if t['met'] else '**missed**'} |"
            )
        lines += round_rate_lines(rep)
        gen = defaultdict(lambda: defaultdict(int))
        for r in rep.get("rounds", []):
            arm = r["loop"].split("-k")[0]
            for key in ("asked", "parsed", "label_verified", "accepted", "generated_tokens"):
                gen[arm][key] += int(r.get(key) or 0)
            # Reports from before the request cache counted every token as sent.
            sent = r.get("sent_generated_tokens", r.get("generated_tokens"))
            gen[arm]["sent_generated_tokens"] += int(sent or 0)
            gen[arm]["seconds"] += float(r.get("seconds") or 0)
            for reason, n in r.get("rejects", {}).items():
                gen[arm]["reject:" + reason] += n
        if gen:
            lines += ["", "Generation over all rounds and seeds:", ""]
            for arm, c in sorted(gen.items()):
                rej = ", ".join(
                    f"{k[7:]} {v}" for k, v in sorted(c.items()) if k.startswith("reject:")
                )
                head = (
                    f"- {arm}: asked {c['asked']}, parsed {c['parsed']}, label verified "
                    f"{c['label_verified']}, accepted {c['accepted']}; rejects: {rej or 'none'}; "
                )
                sent, cached = (
                    c["sent_generated_tokens"],
                    c["generated_tokens"] - c["sent_generated_tokens"],
                )
                if not sent:
                    # Answers replayed from the request cache: no pool rate to report.
                    lines.append(head + f"{cached} tokens, all answered from the request cache")
                    continue
                rate = sent / c["seconds"] if c["seconds"] else float("nan")
                lines.append(
                    head + f"{sent} tokens generated in {c['seconds']:.0f} s of round "
                    f"generation = {rate:.0f} tok/s (pool start-up, scoring, verification and "
                    "selection included: a lower bound on the pool's rate)"
                    + (f"; {cached} more answered from the request cache" if cached else "")
                )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", nargs="+", default=["sst2"], choices=list(RECIPES))
    p.add_argument(
        "--from-run",
        nargs="*",
        default=[],
        metavar="TASK=DIR",
        help="read a finished run's report.json instead of running the recipe",
    )
    add_seed_and_override_args(p, "the recipes run one, to stay a short demo")
    p.add_argument("--run-command", default=None, help="the command that made a --from-run run")
    p.add_argument("--tag", default="weakness_table")
    p.add_argument("--render-only", action="store_true", help="rewrite the Markdown from the JSON")
    args = p.parse_args(argv)
    if args.render_only:
        saved = json.loads((RESULTS / f"{args.tag}.json").read_text())
        (RESULTS / f"{args.tag}.md").write_text(
            render(saved["tables"], saved["commands"], saved["wall_s"])
        )
        return 0
    command = "python -m benchmarks.weakness_table " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{args.tag}.json"
    prev = json.loads(path.read_text()) if path.exists() else {}
    tables, commands, wall = (
        prev.get("tables", {}),
        prev.get("commands", {}),
        prev.get("wall_s", {}),
    )
    if args.from_run:
        for item in args.from_run:
            name, _, folder = item.partition("=")
            if name not in RECIPES or not folder:
                p.error(f"--from-run {item!r}: expected TASK=DIR with TASK in {list(RECIPES)}")
            rep_path = Path(folder) / "report.json"
            if not rep_path.is_file():
                p.error(f"--from-run {item!r}: {rep_path} not found (has the run finished?)")
            rep = json.loads(rep_path.read_text())
            tables[name] = rep
            wall[name] = (rep.get("timings") or {}).get("total", "?")
            commands[name] = (args.run_command or f"raydistill run recipes/{RECIPES[name]}") + (
                f"; then `{command}`"
            )
    else:
        for name in args.tasks:
            seeds = seeds_override(args.seeds)
            rep, secs = run_task(name, [seeds, *args.set])
            tables[name], wall[name], commands[name] = rep, round(secs, 1), command
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    path.write_text(
        json.dumps(
            {"commands": commands, "wall_s": wall, "load_average_at_end": load, "tables": tables},
            indent=2,
            default=str,
        )
    )
    (RESULTS / f"{args.tag}.md").write_text(render(tables, commands, wall))
    for name, rep in tables.items():
        for t in targets(rep):
            if t["value"] is None:
                print(f"{name}: {t['target']}: not measured")
                continue
            print(
                f"{name}: {t['target']} = {t['value']:.2f} ({t['goal']}): {'met' if t['met'] else 'MISSED'}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
