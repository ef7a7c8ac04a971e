"""Seeds and figures shared by the teacher-pool fault tests (test_faults_pool_*.py).

    from pool_fault_seeds import seed_of, seed_rows   # tests/ is on sys.path (conftest)

`seed_rows(n)` builds n chat rows whose user message names the seed ("seed 3: ..."), so a
scripted pool or a counting proxy can tell from a request alone which seed it carries
(`seed_of(payload)` -> "s3"): that is how the tests count, on the wire, how often each
seed was sent and answered. `report(name, figures)` prints the `FAULT <name>: {json}`
line that `benchmarks/faults.py` collects into benchmarks/results/faults_run.{md,json}.
"""

from __future__ import annotations

import json

from scripted_llm import last_user_message


def seed_rows(n: int) -> list[dict]:
    return [
        {
            "id": f"s{i}",
            "label": i % 2,
            "messages": [
                {"role": "system", "content": "You rewrite movie reviews."},
                {"role": "user", "content": f"seed {i}: the plot was fine and the cast good."},
            ],
        }
        for i in range(n)
    ]


def seed_of(payload) -> str:
    return "s" + last_user_message(payload).split(":")[0].split()[-1]


def report(name: str, figures: dict) -> None:
    print(f"\nFAULT {name}: {json.dumps(figures, sort_keys=True)}")
