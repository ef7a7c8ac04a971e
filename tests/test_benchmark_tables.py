"""The CoD table's arithmetic: budget check and rendering from a synthetic report."""

import json
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


def test_quality_table_puts_fluency_per_generator_beside_the_human_reference():
    from benchmarks.cod_table import quality_table

    def fl(delta, oov, n, model="gemma3-270m", **kw):
        return {"mean_delta": delta, "share_with_oov": oov, "n": n, "model": model, **kw}

    llm = _report()
    llm["counterfactuals"] |= {"flip_rate": 0.5, "mean_edit_words": 1.4}
    llm["counterfactuals"]["fluency"] = fl(-0.8123, 0.25, 20)
    fluent = _report()
    fluent["counterfactuals"] |= {"flip_rate": 0.4, "flip_rate_unfiltered": 0.5}
    fluent["counterfactuals"]["fluency"] = fl(-0.2, 0.0, 16, min_fluency_delta=-0.5)
    # Gemma as the generator: scored by the other LM, and the row says so.
    gemma = _report()
    gemma["counterfactuals"]["fluency"] = fl(-1.5, 0.4, 9, model="smollm2-135m-instruct")
    imdb = _report()
    imdb["counterfactuals"] |= {"flip_rate": 0.6}
    imdb["counterfactuals"]["fluency"] = fl(-0.31, 0.1, 10)
    imdb["counterfactuals"]["fluency_human"] = fl(-0.05, 0.02, 12)
    human = _report()
    human["counterfactuals"] = {"source": "human:cad", "seeds": 12, "flip_rate": 0.9}
    human["counterfactuals"]["fluency"] = fl(-0.05, 0.02, 12)
    old = _report()  # a run from before fluency: dashes, not an error
    lines = quality_table(
        {
            "sst2": llm,
            "sst2-fluent": fluent,
            "sst2-gemma": gemma,
            "imdb-llm": imdb,
            "imdb-human": human,
            "old": old,
        }
    )
    rows = {line.split(" | ")[0] + " | " + line.split(" | ")[1]: line for line in lines[6:]}
    assert len(rows) == 7
    assert rows["| sst2 | llm:x"].endswith("| -0.812 | 25% | 20 | gemma3-270m |")
    assert "| 0.4 (0.5 without Δ ≥ -0.5) |" in rows["| sst2-fluent | llm:x"]
    assert rows["| sst2-gemma | llm:x"].endswith("| -1.500 | 40% | 9 | smollm2-135m-instruct |")
    assert rows["| imdb-llm | llm:x"].endswith("| -0.310 | 10% | 10 | gemma3-270m |")
    ref = rows["| imdb-llm | human:cad, same seeds (reference)"]
    assert ref == (
        "| imdb-llm | human:cad, same seeds (reference) | 12 | – | – | – | – | -0.050 | 2% | 12 "
        "| gemma3-270m |"
    )
    assert rows["| imdb-human | human:cad"].endswith("| -0.050 | 2% | 12 | gemma3-270m |")
    assert rows["| old | llm:x"].endswith("| – | – | – | – |")


def test_decode_ceiling_times_the_models_own_matmul_shapes(tmp_path):
    import json

    from benchmarks.generation_throughput import decode_matmul_ceiling

    cfg = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 1000,
    }
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    rows = decode_matmul_ceiling(str(tmp_path), [1, 8], reps=1)
    assert [r["batch_size"] for r in rows] == [1, 8]
    # Per layer q, o (64x64), k, v (64x32: 2 of 4 heads), gate, up, down (64x128); LM head.
    per_token = 2 * (2 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128) + 64 * 1000)
    for r in rows:
        assert abs(r["flops_per_s"] * r["step_s"] - per_token * r["batch_size"]) < 1e-3 * per_token
        assert r["tokens_per_s"] == r["batch_size"] / r["step_s"]


def test_throughput_report_shows_pool_runs_against_the_decode_ceiling():
    from benchmarks.throughput_report import render_md

    seq = {"dtype": "float32", "prompts": 2, "generated_tokens": 20, "seconds": 2.0}
    res = {
        "command": "python -m benchmarks.throughput --quick",
        "date": "d",
        "machine": {"cpus": 2, "memory_gb": 1, "platform": "p", "torch": "t", "load_avg_at_start": []},
        "headline": {"line": "x", "pool_vs_sequential": 10.0, "roofline_pct": 5.0, "train_overhead_pct": 1.0},
        "roofline": {
            "fp32": 1e11,
            "bf16": 1e11,
            "tokens_per_s": 1000.0,
            "decode_ceiling": [
                {"batch_size": 1, "step_s": 0.02, "tokens_per_s": 50.0, "flops_per_s": 1e10},
                {"batch_size": 64, "step_s": 0.2, "tokens_per_s": 320.0, "flops_per_s": 1e11},
            ],
        },
        "generation": {
            "sequential": seq | {"tokens_per_s": 10.0, "params": 1e8},
            "pool": [
                {
                    "startup_s": 1.0,
                    "runs": [
                        {"replicas": 1, "batch_size": 64, "prompts": 64, "generated_tokens": 1000,
                         "seconds": 10.0, "tokens_per_s": 100.0}
                    ],
                }
            ],
        },
        "training": {"workloads": []},
    }  # fmt: skip
    md = render_md(res)
    # 100 tok/s at batch 64 against a 320 tok/s ceiling; the loop's 10 against 50 at batch 1.
    assert "| 100.0 | 10.0 | 10.0 | 31 |" in md
    assert "| 10.0 | 1.0 | 1.0 | 20 |" in md
    assert "| 64 | 0.2000 | 100 | 320 | 32 |" in md


def test_roofline_peak_is_the_best_rate_measured():
    from benchmarks.generation_throughput import use_best_peak

    roof = {"peak": 100e9, "decode_ceiling": [{"flops_per_s": 80e9}, {"flops_per_s": 120e9}]}
    use_best_peak(roof, params=1e9)
    assert roof["peak"] == 120e9 and roof["peak_square"] == 100e9
    assert roof["tokens_per_s"] == 60.0
    roof = {"peak": 200e9, "decode_ceiling": [{"flops_per_s": 120e9}]}
    use_best_peak(roof, params=1e9)
    assert roof["peak"] == 200e9 and "peak_square" not in roof and roof["tokens_per_s"] == 100.0


def _weakness_report(kind: str = "classification"):
    # Seeds 0/1: few-shot 0.50/0.60; loop 0.70/0.72; random 0.65/0.74; human 0.80/0.85.
    per_loop = []
    for arm, scores in {
        "loop": [0.70, 0.72],
        "random": [0.65, 0.74],
        "human": [0.80, 0.85],
    }.items():
        for seed, sc in enumerate(scores):
            per_loop.append(
                {
                    "arm": arm,
                    "k": 32,
                    "seed": seed,
                    "best_round": 1,
                    "rounds_run": 2,
                    "test_score": sc,
                    "dev_score": sc,
                    "train_size": 64,
                    "baseline_test_score": [0.50, 0.60][seed],
                }
            )
    return {
        "task_kind": kind,
        "metric": "accuracy",
        "per_loop": per_loop,
        "rounds": [
            {
                "loop": "loop-k32-s0",
                "asked": 10,
                "parsed": 8,
                "label_verified": 6,
                "accepted": 4,
                "rejects": {"label_disagrees": 2, "unparsable": 2},
            },
        ],
    }


def test_weakness_targets_are_computed_per_seed_and_can_be_missed():
    from benchmarks.weakness_table import render, targets

    t = {x["target"]: x for x in targets(_weakness_report())}
    gain = t["loop − few-shot (points)"]
    assert abs(gain["value"] - 16.0) < 1e-9 and gain["met"]  # (0.20 + 0.12) / 2
    ratio = t["loop / human labels at equal size"]
    assert abs(ratio["value"] - 0.71 / 0.825) < 1e-9 and not ratio["met"]
    vs_random = t["loop − random seeding (points)"]
    assert abs(vs_random["value"] - 1.5) < 1e-9 and vs_random["met"]  # (0.05 - 0.02) / 2
    md = render({"sst2": _weakness_report()}, {"sst2": "cmd"}, {"sst2": 12.0})
    assert "| fewshot | 50.0 | 60.0 | 55.0 |" in md
    assert "| loop / human labels at equal size | 0.92 | ≥ 0.90 | met |" not in md
    assert "**missed**" in md and "label_disagrees 2, unparsable 2" in md
    assert "no teacher classifier" in md  # the hand-made report has none
    rep = dict(_weakness_report(), teacher={"backbone": "minilm", "dev_accuracy": 0.8633})
    md = render({"sst2": rep}, {"sst2": "cmd"}, {"sst2": 12.0})
    assert "teacher minilm dev accuracy 0.863." in md
    ner = targets(_weakness_report("token_classification"))
    assert [x["target"] for x in ner] == ["loop − few-shot (entity-F1 points)"]
    # The pool's rate while generating, against the committed standalone figure.
    from benchmarks.weakness_table import standalone_pool_rate

    ref, _, model = standalone_pool_rate(64)
    assert 100 < ref < 1000 and model == "smollm2-135m-instruct"
    for rate, met in ((0.5 * ref, False), (0.9 * ref, True)):
        rep = {**_weakness_report("token_classification"), "pool_tokens_per_s": rate}
        (pool,) = [x for x in targets(rep) if x["target"].startswith("pool rate")]
        assert abs(pool["value"] - rate / ref) < 1e-9 and pool["met"] is met
    # Another generator's rate is not compared with SmolLM2's pool: not measured, not met.
    rep = {
        **_weakness_report("token_classification"),
        "pool_tokens_per_s": 2 * ref,
        "generator": {"backend": "vllm", "model": "qwen2.5-coder-0.5b-instruct"},
    }
    (pool,) = [x for x in targets(rep) if x["target"].startswith("pool rate")]
    assert pool["value"] is None and not pool["met"] and "qwen2.5" in pool["target"]
    md = render({"conll": rep}, {"conll": "c"}, {"conll": 1.0})
    assert (
        "this run's generator is qwen2.5-coder-0.5b-instruct) | – | ≥ 0.80 | not measured |" in md
    )


def test_throughput_model_is_read_from_the_result_or_its_command():
    from benchmarks.weakness_table import measured_model

    assert measured_model({"model": "m1", "command": "x --model m2"}) == "m1"
    assert measured_model({"command": "python -m benchmarks.throughput --model m2 --quick"}) == "m2"
    assert measured_model({"command": "python -m benchmarks.throughput"}) == "smollm2-135m-instruct"


def test_round_rate_render_and_ratios_from_hand_made_runs():
    from benchmarks.round_rate import mean_rate, render

    def run(workload: str, trial: int, rate: float) -> dict:
        return {
            "workload": workload, "trial": trial, "rows": 48, "n": 4, "max_tokens": 64,
            "schema": "no JSON" not in workload, "generated_tokens": int(rate * 10),
            "tokens_per_sequence": 20.0, "failed_rows": 0, "seconds": 10.0,
            "tokens_per_s": rate,
        }  # fmt: skip

    res = {
        "command": "python -m benchmarks.round_rate", "date": "d", "machine": {"cpus": 2},
        "task": "sst2", "model": "m", "backend": "vllm", "pool_batch_size": 64, "loops": 3,
        "per_seed": 4, "startup_s": 50.0,
        "runs": [
            run("round, pool just started", 0, 80.0),
            run("round, warm", 1, 150.0),
            run("round, warm", 2, 170.0),
            run("round, warm, no JSON schema", 1, 200.0),
            run("CoD reference (throughput.json's workload), warm", 1, 190.0),
        ],
    }  # fmt: skip
    assert mean_rate(res, "round, warm") == 160.0 and mean_rate(res, "nothing") is None
    md = render(res)
    assert "| round on a just-started pool / the same round warm | 0.50 |" in md
    assert "| round warm with schema / without | 0.80 |" in md
    assert "| round, pool just started | 0 | 48 × 4 | 64 | yes | 800 | 20.0 | 10.0 | 80.0 |" in md


def test_weakness_generation_rate_counts_only_tokens_the_pool_generated():
    """A rerun answered from the request cache once reported 1,538 tok/s for a 38 tok/s
    pool: cached answers are counted apart and never enter the rate."""
    from benchmarks.weakness_table import render

    def md(generated: int, sent: int | None) -> str:
        rep = _weakness_report()
        rnd = {**rep["rounds"][0], "generated_tokens": generated, "seconds": 10.0}
        if sent is not None:
            rnd["sent_generated_tokens"] = sent
        return render({"sst2": {**rep, "rounds": [rnd]}}, {"sst2": "c"}, {"sst2": 1.0})

    assert "500 tokens, all answered from the request cache" in md(500, 0)
    assert "tok/s" not in md(500, 0).split("Generation over")[1]
    mixed = md(500, 200)
    assert "200 tokens generated in 10 s of round generation = 20 tok/s" in mixed
    assert "300 more answered from the request cache" in mixed
    # Older reports (no sent count) generated every token they counted.
    assert "500 tokens generated in 10 s of round generation = 50 tok/s" in md(500, None)


def test_fault_runner_keeps_verdicts_and_fault_figures():
    from benchmarks.faults import parse, render

    out = "\n".join(
        [
            "tests/test_faults_pool.py::test_hf_replica_killed ",
            '\x1b[36mFAULT hf-kill: {"missing": 0, "dup": 0, "seeds": 24}\x1b[0m',
            "FAULT worker-kill: killed worker 1 after partial_0001_0000120_x; fit 9.0s",
            'FAULT 1 hf replica actor killed: {"dup": 0}',
            "PASSED",
            "=== short test summary info ===",
            "PASSED tests/test_faults_pool.py::test_hf_replica_killed",
            "FAILED tests/test_train_faults.py::test_worker_killed - AssertionError: 0 < 0",
        ]
    )
    got = parse(out)
    assert got["verdicts"] == {
        "tests/test_faults_pool.py::test_hf_replica_killed": "PASSED",
        "tests/test_train_faults.py::test_worker_killed": "FAILED",
    }
    assert got["faults"][0] == {
        "fault": "hf-kill",
        "figures": {"missing": 0, "dup": 0, "seeds": 24},
    }
    assert got["faults"][1]["figures"].startswith("killed worker 1")
    assert got["faults"][2] == {"fault": "1 hf replica actor killed", "figures": {"dup": 0}}
    md = render(
        {"command": "c", "date": "d", "wall_s": 1, "load_average": [0], "returncode": 1, **got}
    )
    assert "| `tests/test_train_faults.py::test_worker_killed` | FAILED |" in md


def test_every_cod_table_data_set_loads_as_a_config():
    """Each data set of the table is its recipe plus overrides: all must validate."""
    from benchmarks.cod_table import DATASETS, recipe_for
    from raydistill.config import load_config

    for name, (overrides, _) in DATASETS.items():
        cfg = load_config(recipe_for(name), overrides)
        assert cfg.method.name == "cod", name
    bbc = load_config(recipe_for("bbc-rewrite"), DATASETS["bbc-rewrite"][0])
    assert (bbc.data.task, bbc.method.counterfactuals.strategy) == ("bbc_news", "rewrite")


def test_demo_time_fresh_cache_links_only_what_install_leaves(tmp_path):
    from benchmarks.demo_time import fresh_cache, render

    base = tmp_path / "cache"
    for name in ("models", "gguf", "teachers", "counterfactuals"):
        (base / name).mkdir(parents=True)
    (base / "llm_requests.sqlite").write_text("answers")
    d = fresh_cache(base, tmp_path)
    assert sorted(p.name for p in d.iterdir()) == ["gguf", "models"]
    assert (d / "models").resolve() == (base / "models").resolve()
    run = {
        "precision": "bf16",
        "wall_s": 600.0,
        "load_average_start": 0.1,
        "load_average_end": 1.9,
        "timings": {"teacher": 100.0, "annotate": 20.0, "generate": 90.0, "train": 300.0},
        "teacher_test_accuracy": 0.83,
        "student_train_s": 290.0,
        "student_step_s": 120.0,
        "student_precision": ["bf16-autocast"],
        "summary": [{"arm": "kd", "k": 8, "n_seeds": 3, "accuracy": 0.6, "accuracy_std": 0.01}],
        "cod_gains": [{"arm": "kd+cod", "k": 8, "gain": 0.05}],
        "flip_rate": 0.9,
    }
    md = render([run], "python -m benchmarks.demo_time")
    assert "| bf16 (bf16-autocast) | 10.0 | 0.1→1.9 | 100.0 | 20.0 | 90.0 | 300.0 |" in md
    assert "| kd | 8 | 0.600 ± 0.010 |" in md and "kd+cod@8: +5.0" in md


def test_render_reads_reports_that_name_arms():
    """Reports name a row's arm `arm` since the method modules; older ones `method`."""
    rep = _report()
    for r in rep["summary"] + rep["results"] + rep["cod_gains"]:
        r["arm"] = r.pop("method")
    md = render({"sst2": rep}, {"sst2": "c"}, {})
    assert "| 8 | kd+cod | 2 | 0.550 ± 0.000 |" in md and "kd+cod@k=8: -5.0" in md


def test_cod_k_curve_merges_the_small_and_large_k_runs(tmp_path):
    """One row per k from both runs; the later run's k wins; the gains are recomputed."""
    from benchmarks.cod_k_curve import write

    def saved(cmd, rows):
        summary = [
            {"method": m, "k": k, "n_seeds": n, "accuracy": a, "accuracy_std": 0.01}
            for m, k, n, a in rows
        ]
        return {
            "commands": {"sst2": cmd},
            "wall_s": {"sst2": 600.0},
            "tables": {"sst2": {"summary": summary}},
        }

    small = saved("small", [("kd", 8, 5, 0.50), ("kd+cod", 8, 5, 0.58), ("kd", 128, 5, 0.1)])
    large = saved("large", [("kd", 128, 3, 0.70), ("kd+cod", 128, 3, 0.705), ("ce", 128, 3, 0.69)])
    paths = []
    for name, obj in (("a", small), ("b", large)):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(obj))
    md = write(paths, "sst2", tmp_path)
    lines = {
        ln.split(" | ")[0]: ln for ln in md.splitlines() if ln.startswith("| ") and ln[2].isdigit()
    }
    assert list(lines) == ["| 8", "| 128"]
    assert "| 8 | 5 |" in lines["| 8"] and lines["| 8"].endswith("| +8.0 |  |")
    assert "| 128 | 3 | 0.690 ± 0.010 | 0.700 ± 0.010 |" in lines["| 128"]
    assert lines["| 128"].endswith("| +0.5 |  |")
    assert "`small` (10 min)" in md and "`large` (10 min)" in md
    assert (tmp_path / "cod_k_curve_sst2.png").stat().st_size > 0


def test_fluency_cross_marks_self_scoring_and_dashes_missing_cells():
    from benchmarks.fluency_cross import render

    def cell(delta, neg, oov, n):
        return {"mean_delta": delta, "share_delta_negative": neg, "share_with_oov": oov, "n": n}

    cells = {
        "smollm2-135m-instruct": {
            "gemma3-270m": cell(-0.5371, 0.9545, 0.3636, 22),
            "smollm2-135m-instruct": cell(-0.381, 0.64, 0.36, 22),
        },
        "gemma3-270m": {"gemma3-270m": cell(-1.069, 0.79, 0.1, 29), "smollm2-135m-instruct": {}},
    }
    lines = render(cells, "cmd", 31.0).splitlines()
    smol, gemma = lines[-2], lines[-1]
    assert smol == (
        "| smollm2-135m-instruct | -0.537 (95% below; OOV 36%; n=22) | "
        "-0.381 (self) (64% below; OOV 36%; n=22) |"
    )
    assert gemma == "| gemma3-270m | -1.069 (self) (79% below; OOV 10%; n=29) | – |"


def test_round_rate_sends_what_a_round_sends_on_fresh_rows_per_trial():
    """The benchmark's prompts are the recipe's generation prompts, `loops` × seeds per
    round of them, on training rows no other trial uses (a warm call must not reuse a
    cold call's prompt prefixes)."""
    from benchmarks.round_rate import ROOT, round_rows
    from raydistill.config import load_config
    from raydistill.pipelines.augment import messages_for
    from raydistill.pipelines.datasets import load_split
    from raydistill.pipelines.llm_stage import SEED_COLUMN
    from raydistill.pipelines.tasks import spec_for

    cfg = load_config(ROOT / "recipes" / "sst2-weakness.yaml", [])
    spec, train = spec_for(cfg.data), load_split(cfg.data, "train")
    trials = [round_rows(cfg, train, spec, 3, t) for t in range(3)]
    assert all(len(rows) == 3 * cfg.method.seeds_per_round for rows in trials)
    texts = [str(r["messages"]) for rows in trials for r in rows]
    assert len(set(texts)) == len(texts)
    seeds = [r[SEED_COLUMN] for rows in trials for r in rows]
    assert len(set(seeds)) == len(seeds)
    first = trials[0][0]["messages"]
    assert any(first == messages_for(r, spec, cfg.method.max_seed_chars) for r in train)


def test_pool_rate_of_an_older_report_leaves_out_the_pool_start_up():
    """Reports before 2026-12-07 counted each round's pool start (inside its first call)
    as generation; the table takes the recorded start-up seconds out, and leaves a report
    that already excludes it as it is."""
    from benchmarks.weakness_table import pool_rate, targets

    rounds = [
        {**_weakness_report()["rounds"][0], "sent_generated_tokens": 1000, "llm_s": 15.0},
        {**_weakness_report()["rounds"][0], "sent_generated_tokens": 1000, "llm_s": 15.0},
    ]
    old = {
        **_weakness_report(),
        "rounds": rounds,
        "pool_tokens_per_s": 2000 / 30.0,
        "timings": {"pool_startup_s": 20.0},
    }
    rate, note = pool_rate(old)
    assert rate == 200.0 and "67 tok/s as reported" in note and "20 s of pool start-up" in note
    (row,) = [t for t in targets(old) if t["target"].startswith("pool rate")]
    assert "start-up taken out" in row["target"]
    new = {**old, "pool_rate_excludes_start": True}
    assert pool_rate(new) == (2000 / 30.0, "")
    assert pool_rate({**old, "timings": {}}) == (2000 / 30.0, "")


def test_the_weakness_table_runs_every_ablation_arm_where_a_recipe_runs_fewer():
    """The 20-minute recipes leave the no-diversity arm to the table; the table must still
    run it (the issue's comparison (c)), and a user's `--set experiment.arms=` wins."""
    from benchmarks.weakness_table import RECIPES, ROOT, table_config
    from raydistill.config import load_config

    for task in ("sst2", "conll"):
        recipe = load_config(ROOT / "recipes" / RECIPES[task])
        table = table_config(task, [])
        assert table.experiment.arms == ["loop", "random", "nodiv", "human"], task
        assert "nodiv" not in recipe.experiment.arms, task  # the recipe stays a short demo
        assert table.method == recipe.method and table.student == recipe.student
    assert table_config("sst2", ["experiment.arms=[loop]"]).experiment.arms == ["loop"]
    assert table_config("bbc-summary", []).experiment.arms == ["loop", "human"]
