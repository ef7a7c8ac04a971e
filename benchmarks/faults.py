"""Run the fault-injection tests once and collect their figures.

    python -m benchmarks.faults                 # default-suite faults (pool, garbage, parsers)
    python -m benchmarks.faults --slow          # + Train worker killed, node leaving, hf timeout
    python -m benchmarks.faults --slow --bench  # + vLLM replica / engine killed (20+ min each)

Each fault is a test that asserts its own outcome (nothing lost, nothing duplicated, the
run survives or fails loudly); this script runs them through pytest with `-s`, keeps each
test's verdict and the `FAULT <name>: ...` lines the tests print (rows expected / out /
duplicated / missing, requests re-sent, steps recomputed, time to recover), and writes
`benchmarks/results/faults_run.{json,md}`. `faults.md` next to it explains the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

DEFAULT = [
    "tests/test_faults_pool_replica.py",
    "tests/test_faults_pool_garbage.py",
    "tests/test_llm_output_properties.py",
]
SLOW = ["tests/test_train_faults.py", "tests/test_faults_pool_replica.py", "tests/test_resume.py"]

# pytest -rA's short summary: "PASSED tests/x.py::test", "FAILED tests/x.py::test - why".
_VERDICT = re.compile(r"^(PASSED|FAILED|ERROR|XFAIL|XPASS) (tests/\S+::\S+)")
_FAULT = re.compile(r"^FAULT (.+?): (.*)$")


def parse(output: str) -> dict:
    """Verdicts per test and FAULT lines (JSON payloads decoded where they are JSON)."""
    verdicts, faults = {}, []
    for raw in output.splitlines():
        line = re.sub(r"\x1b\[[0-9;]*m", "", raw).strip()
        if m := _VERDICT.match(line):
            verdicts[m.group(2)] = m.group(1)
        elif m := _FAULT.match(line):
            body = m.group(2)
            try:
                payload = json.loads(body)
            except json.JSONDecodeError:
                payload = body
            faults.append({"fault": m.group(1), "figures": payload})
    return {"verdicts": verdicts, "faults": faults}


def render(run: dict) -> str:
    lines = [
        "# Fault-injection run",
        "",
        f"Command: `{run['command']}`; {run['date']}; wall {run['wall_s']} s; load average "
        f"at start {run['load_average']}. pytest exit code {run['returncode']}.",
        "",
        "| test | verdict |",
        "|---|---|",
    ]
    lines += [f"| `{t}` | {v} |" for t, v in sorted(run["verdicts"].items())]
    lines += ["", "## Figures the tests printed", ""]
    for f in run["faults"]:
        fig = f["figures"]
        text = json.dumps(fig, sort_keys=True) if not isinstance(fig, str) else fig
        lines.append(f"- **{f['fault']}**: {text}")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--slow", action="store_true", help="also the slow fault tests")
    p.add_argument("--bench", action="store_true", help="also the vLLM kill runs (fault_bench)")
    p.add_argument("--tag", default="faults_run")
    args = p.parse_args(argv)
    files = list(dict.fromkeys(DEFAULT + (SLOW if args.slow else [])))
    marks = "not slow" if not args.slow else ("" if args.bench else "not fault_bench")
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-s", "-rA", "-v"]
    cmd += ["-m", marks, *files]
    env = dict(os.environ, RAY_AUTH_MODE=os.environ.get("RAY_AUTH_MODE", "token"))
    t0 = time.time()
    load = os.getloadavg()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    run = {
        "command": "python -m benchmarks.faults "
        + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "pytest": " ".join(shlex.quote(c) for c in cmd[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t0)),
        "wall_s": round(time.time() - t0, 1),
        "load_average": [round(x, 2) for x in load],
        "returncode": proc.returncode,
        **parse(proc.stdout + "\n" + proc.stderr),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.tag}.json").write_text(json.dumps(run, indent=1))
    (RESULTS / f"{args.tag}.md").write_text(render(run))
    failed = [t for t, v in run["verdicts"].items() if v in ("FAILED", "ERROR")]
    print(
        f"faults: {len(run['verdicts'])} tests, {len(failed)} failed, "
        f"{len(run['faults'])} FAULT figures → {RESULTS / (args.tag + '.md')}"
    )
    if not run["verdicts"]:
        print(proc.stdout[-3000:] + proc.stderr[-3000:])
    return 0 if proc.returncode == 0 and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
