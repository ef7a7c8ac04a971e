"""The CoD table's arithmetic: budget check and rendering from a synthetic report."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.cod_table import budget_check, render  # noqa: E402


def _report():
    results, summary = [], []
    for method, k, rows, acc in [
        ("kd", 4, [4, 4], 0.50),
        ("kd", 8, [8, 8], 0.60),
        ("kd+cod", 8, [5, 7], 0.55),
    ]:
        for seed, n in enumerate(rows):
            results.append({"method": method, "k": k, "seed": seed, "train_rows": n})
        summary.append(
            {"method": method, "k": k, "n_seeds": 2, "accuracy": acc, "accuracy_std": 0.0}
            | {"fidelity": acc, "fidelity_std": 0.0}
        )
    return {
        "results": results,
        "summary": summary,
        "teacher": {"backbone": "b", "test_accuracy": 0.9},
        "counterfactuals": {"source": "llm:x", "seeds": 4, "no_counterfactual": 2},
        "cod_gains": [{"method": "kd+cod", "k": 8, "gain": -0.05}],
    }


def test_budget_check_counts_surviving_counterfactuals():
    lines = budget_check(_report())
    [row] = [line for line in lines if line.startswith("| kd+cod")]
    # k/2 = 4 originals + (5 + 7) / 2 - 4 = 2 counterfactuals on average.
    assert row == "| kd+cod | 8 | 6.0 = 4 + 2.0 | 0.500 | 0.550 | 0.600 |"


def test_render_names_each_data_sets_command_and_the_ceiling():
    md = render({"sst2": _report()}, {"sst2": "python -m benchmarks.cod_table --ks 8"}, {})
    assert "Command: `python -m benchmarks.cod_table --ks 8`" in md
    assert "| all | teacher (ceiling, full train split) | 1 | 0.900 |" in md
    assert "kd+cod@k=8: -5.0" in md
    assert "2 (50%)" in md
