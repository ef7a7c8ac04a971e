"""Pins of CoD's behaviour written before the spine moved (issue 11): the k-shot plan, the
jobs built from it, the report's aggregation and gains, and the CLI's exit codes.

The numbers and ids below were produced by the code as it stood before the move; the
move must leave every one of them unchanged.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from raydistill.cluster.report import aggregate, cod_gains
from raydistill.config import load_config
from raydistill.methods.cod import Prepared, build_jobs, draws

POOL = [{"id": f"r{i}", "text": f"t{i}", "label": i % 2} for i in range(40)]

PLAN = {
    ("ce", 4, 0): ["r23", "r33", "r38", "r8"],
    ("ce", 4, 1): ["r20", "r15", "r39", "r2"],
    ("ce", 8, 0): ["r15", "r8", "r4", "r38", "r9", "r12", "r33", "r23"],
    ("ce", 8, 1): ["r39", "r32", "r21", "r19", "r20", "r36", "r2", "r15"],
    ("kd+cod", 4, 0): ["r23", "r8"],
    ("kd+cod", 4, 1): ["r15", "r2"],
    ("kd+cod", 8, 0): ["r23", "r33", "r38", "r8"],
    ("kd+cod", 8, 1): ["r20", "r15", "r39", "r2"],
}


def _cfg(*extra: str):
    return load_config(
        None,
        [
            "experiment.ks=[4,8]",
            "experiment.seeds=[0,1]",
            "experiment.arms=[kd,kd+cod,lwd,ce]",
            *extra,
        ],
    )


def test_kshot_plan_is_unchanged():
    plan = draws(_cfg(), POOL, 2)
    assert len(plan) == 16
    for key, ids in PLAN.items():
        assert [r["id"] for r in plan[key]] == ids, key
    # Baselines of one (k, seed) share the draw; a CoD arm takes the k/2 draw.
    for k in (4, 8):
        for s in (0, 1):
            full = [r["id"] for r in plan[("kd", k, s)]]
            assert full == [r["id"] for r in plan[("lwd", k, s)]] == PLAN[("ce", k, s)]
            if k // 2 in (4, 8):
                half = [r["id"] for r in plan[("kd", k // 2, s)]]
                assert [r["id"] for r in plan[("kd+cod", k, s)]] == half


def _prepared(cfg) -> Prepared:
    from raydistill.pipelines.tasks import get_task

    plan = draws(cfg, POOL, 2)
    rng = np.random.default_rng(0)
    originals = {}
    for rows in plan.values():
        for r in rows:
            originals[r["id"]] = dict(
                r,
                teacher_logits=[0.1, 0.9] if r["label"] else [0.8, 0.2],
                teacher_pred=r["label"],
                teacher_hidden=rng.normal(size=(3, 4)).tolist(),
            )
    # Counterfactuals for two of the CoD seeds only (the others got none).
    cfs = {
        pid: [
            {
                "id": f"{pid}/cf",
                "parent_id": pid,
                "text": originals[pid]["text"] + " not",
                "label": 1 - originals[pid]["label"],
                "teacher_logits": [0.9, 0.1] if originals[pid]["label"] else [0.1, 0.9],
                "teacher_hidden": rng.normal(size=(3, 4)).tolist(),
                "flipped": True,
                "source": "llm:x",
            }
        ]
        for pid in ("r23", "r15")
    }
    return Prepared(
        spec=get_task("sst2"),
        teacher_dir="/nonexistent/teacher",
        teacher_info={},
        originals=originals,
        counterfactuals=cfs,
        dev=[{"id": "d0", "text": "x", "label": 0, "teacher_pred": 0}],
        test=[{"id": "e0", "text": "y", "label": 1, "teacher_pred": 1}],
        gen_stats={},
        teacher_width=4,
        teacher_layers=2,
        plan={key: [r["id"] for r in rows] for key, rows in plan.items()},
    )


def test_jobs_built_from_the_plan(ray_session):
    cfg = _cfg("student.backbone=tiny-bert", "experiment.lwd_beta=0.7", "student.alpha=1.5")
    jobs = {j.name: j for j in build_jobs(cfg, _prepared(cfg))}
    assert sorted(jobs) == sorted(
        f"{m}-k{k}-s{s}" for m in ("kd", "kd+cod", "lwd", "ce") for k in (4, 8) for s in (0, 1)
    )
    kd, cod, lwd, ce = (jobs[f"{m}-k8-s0"] for m in ("kd", "kd+cod", "lwd", "ce"))
    assert (kd.alpha, kd.beta) == (1.5, 0.0)
    assert (lwd.alpha, lwd.beta) == (1.5, 0.7)
    assert (ce.alpha, ce.beta) == (0.0, 0.0)
    assert (cod.alpha, cod.beta) == (1.5, 0.0)
    # CoD arm: its 4 originals plus the one counterfactual among them (r23).
    assert [r["id"] for r in cod.train_rows] == ["r23", "r33", "r38", "r8", "r23/cf"]
    assert cod.meta == {"method": "kd+cod", "k": 8, "seed": 0, "originals": 4, "counterfactuals": 1}
    # Hidden states travel only to LWD jobs.
    assert all("teacher_hidden" not in r for r in kd.train_rows + cod.train_rows)
    assert all("teacher_hidden" in r for r in lwd.train_rows)
    # Boundary-fidelity pairs: only pairs whose original the job did not train on.
    assert cod.pairs is not None and [p[1] for p in cod.pairs] == ["t15"]
    assert jobs["kd+cod-k8-s1"].pairs is not None and [
        p[1] for p in jobs["kd+cod-k8-s1"].pairs
    ] == ["t23"]


RESULTS = [
    {"method": "kd", "k": 8, "seed": 0, "accuracy": 0.50, "fidelity": 0.60},
    {"method": "kd", "k": 8, "seed": 1, "accuracy": 0.60, "fidelity": 0.70},
    {"method": "kd+cod", "k": 8, "seed": 0, "accuracy": 0.70, "fidelity": 0.80},
    {"method": "kd+cod", "k": 8, "seed": 1, "accuracy": 0.60, "fidelity": 0.60},
    {"method": "lwd", "k": 16, "seed": 0, "accuracy": 0.65, "fidelity": None},
    {"method": "lwd+cod", "k": 16, "seed": 0, "accuracy": 0.70, "fidelity": None},
    {"method": "ce", "k": 8, "seed": 0, "accuracy": 0.52, "fidelity": 0.5},
]


def test_report_aggregation_and_gains():
    agg = aggregate(RESULTS)
    assert [(r["k"], r["arm"], r["n_seeds"]) for r in agg] == [
        (8, "ce", 1),
        (8, "kd", 2),
        (8, "kd+cod", 2),
        (16, "lwd", 1),
        (16, "lwd+cod", 1),
    ]
    kd = agg[1]
    assert kd["accuracy"] == pytest.approx(0.55) and kd["accuracy_std"] == pytest.approx(0.05)
    assert kd["fidelity"] == pytest.approx(0.65)
    assert agg[3]["fidelity"] is None and agg[3]["boundary_fidelity"] is None
    gains = cod_gains(agg)
    assert [(g["k"], g["arm"], g["baseline"]) for g in gains] == [
        (8, "kd+cod", "kd"),
        (16, "lwd+cod", "lwd"),
    ]
    assert gains[0]["gain"] == pytest.approx(0.10) and gains[1]["gain"] == pytest.approx(0.05)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "raydistill.cluster.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (("run", "recipes/nope.yaml"), "does not exist"),
        (("run", "recipes/smoke-cod.yaml", "student.alpah=1"), "student.alpah"),
        (("run", "recipes/smoke-cod.yaml", "data.task=nosuchtask"), "unknown task"),
        # (Before the move this one was a raw ValueError traceback.)
        (("run", "recipes/smoke-cod.yaml", "experiment.arms=[kd,zz]"), "zz"),
        # Fail fast (issue 14): names checked before Ray starts or a teacher trains.
        (("run", "recipes/smoke-cod.yaml", "pool.backend=tgi"), "pool.backend: 'tgi'"),
        (("run", "recipes/sst2-cod.yaml", "pool.model=nosuchmodel"), "pool.model: unknown"),
        (("run", "recipes/smoke-cod.yaml", "student.backbone=nope"), "student.backbone"),
        (
            ("run", "recipes/smoke-weakness.yaml", "method.embedding_model=nope"),
            "method.embedding_model",
        ),
    ],
)
def test_cli_bad_input_exits_2_with_one_error_line(args, message):
    p = _cli(*args)
    assert p.returncode == 2, p.stderr[-2000:]
    assert "raydistill: error:" in p.stderr and message in p.stderr
    assert "Traceback" not in p.stderr


def test_cli_help_exits_0():
    p = _cli("--help")
    assert p.returncode == 0 and "run" in p.stdout


@pytest.mark.parametrize("method, recipe", [("cod", "smoke-cod"), ("weakness", "smoke-weakness")])
def test_infeasible_k_fails_before_the_teacher_trains(method, recipe, monkeypatch, tmp_path):
    """`k=100000 needs ... examples` used to come after minutes of teacher training."""
    import importlib

    from raydistill.config import load_config
    from raydistill.methods import stages
    from raydistill.pipelines.kshot import KShotError

    def teacher_stage(*a, **kw):
        raise AssertionError("the teacher stage ran before the k-shot check")

    monkeypatch.setattr(stages, "teacher_stage", teacher_stage)
    cfg = load_config(
        Path(__file__).resolve().parents[1] / "recipes" / f"{recipe}.yaml",
        [f"out_dir={tmp_path}", "experiment.ks=[100000]"],
    )
    with pytest.raises(KShotError, match="100000"):
        importlib.import_module(f"raydistill.methods.{method}").prepare(cfg)
