"""`raydistill sweep`: search-space parsing, config application, outputs, and one real sweep.

The integration test runs 4 ASHA trials of the smoke settings on a local Ray cluster with
its dashboard on (ASHA-stopped trials are cleaned up through the dashboard's State API).
"""

from __future__ import annotations

import json
import random
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from raydistill.cluster.runtime import ensure_ray
from raydistill.config import ConfigError, RunConfig, load_config
from raydistill.methods import cod
from raydistill.methods.cod import ARMS
from raydistill.training import tune as T

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "recipes" / "smoke-sweep.yaml"


# ------------------------------------------------------------------ space parsing


def test_each_type_becomes_its_tune_domain():
    from ray.tune.search.sample import Categorical, Float, Integer

    space = {
        "student.temperature": {"type": "grid", "values": [1, 2, 4]},
        "student.alpha": {"type": "uniform", "low": 0.0, "high": 2.0},
        "student.lr": {"type": "loguniform", "low": 1e-5, "high": 1e-3},
        "student.epochs": {"type": "randint", "low": 5, "high": 20},
        "experiment.lwd_beta": {"type": "choice", "values": [0.5, 1.0]},
    }
    dists = T.parse_space(space)
    assert [d.type for d in dists.values()] == [
        "grid",
        "uniform",
        "loguniform",
        "randint",
        "choice",
    ]
    ts = T.tune_space(dists)
    assert ts["student"]["temperature"] == {"grid_search": [1, 2, 4]}
    assert isinstance(ts["student"]["alpha"], Float)
    assert (ts["student"]["alpha"].lower, ts["student"]["alpha"].upper) == (0.0, 2.0)
    lr = ts["student"]["lr"]
    assert isinstance(lr, Float) and "LogUniform" in type(lr.get_sampler()).__name__
    assert isinstance(ts["student"]["epochs"], Integer)
    assert isinstance(ts["experiment"]["lwd_beta"], Categorical)
    assert ts["experiment"]["lwd_beta"].categories == [0.5, 1.0]
    assert T.grid_size(dists) == 3


def test_bare_list_is_a_grid():
    d = T.parse_dist("student.alpha", [0.5, 1.0])
    assert d.type == "grid" and d.values == (0.5, 1.0)


@pytest.mark.parametrize(
    "spec, match",
    [
        (
            {"type": "normal", "low": 0, "high": 1},
            r"student\.alpha: unknown type 'normal'; known: grid",
        ),
        ({"low": 0, "high": 1}, r"student\.alpha: expected a mapping with a 'type'"),
        (0.5, r"student\.alpha: expected a mapping"),
        ({"type": "uniform", "low": 1.0}, r"missing high"),
        ({"type": "uniform", "low": 0, "high": 1, "hi": 2}, r"unknown hi"),
        ({"type": "uniform", "low": 1.0, "high": 1.0}, r"low < high"),
        ({"type": "loguniform", "low": 0.0, "high": 1.0}, r"loguniform needs low > 0"),
        ({"type": "randint", "low": 0.5, "high": 3}, r"randint needs integer"),
        ({"type": "uniform", "low": "a", "high": 1}, r"student\.alpha\.low: expected a number"),
        ({"type": "choice", "values": []}, r"non-empty list"),
    ],
)
def test_bad_distribution_is_named(spec, match):
    with pytest.raises(ConfigError, match=match):
        T.parse_space({"student.alpha": spec})


@pytest.mark.parametrize(
    "key, match",
    [
        ("student.alpah", r"unknown key 'student\.alpah'; known student keys: .*alpha"),
        ("studnet.alpha", r"unknown key 'studnet\.alpha': no section 'studnet'"),
        ("alpha", r"unknown key 'alpha': no section 'alpha'"),
        ("student", r"unknown key 'student'"),
        ("data.task", r"'data\.task' cannot be swept.*sweepable: .*student\.alpha"),
        ("teacher.epochs", r"'teacher\.epochs' cannot be swept"),
        ("experiment.seeds", r"'experiment\.seeds' cannot be swept"),
        ("student.num_workers", r"set sweep\.workers_per_trial"),
        ("student.use_gpu", r"student\.use_gpu cannot be swept: a resource setting"),
        ("student.alpha.x", r"unknown key 'student\.alpha\.x'"),
    ],
)
def test_bad_key_is_named(key, match):
    with pytest.raises(ConfigError, match=match):
        T.parse_space({key: {"type": "grid", "values": [1]}})


def test_empty_space_is_an_error():
    with pytest.raises(ConfigError, match="sweep.space is empty"):
        T.parse_space({})


# ------------------------------------------------------------ applying parameters


def test_apply_params_dotted_and_nested_validated_copy():
    base = load_config(SMOKE)
    cfg = T.apply_params(base, {"student.alpha": np.float64(0.25), "experiment.lwd_beta": 3})
    assert cfg.student.alpha == 0.25 and type(cfg.student.alpha) is float
    assert cfg.experiment.lwd_beta == 3.0
    assert base.student.alpha == 1.0 and base.experiment.lwd_beta == 1.0  # base untouched
    nested = T.apply_params(base.to_dict(), {"student": {"epochs": np.int64(7)}})
    assert nested.student.epochs == 7 and type(nested.student.epochs) is int
    assert nested.student.lr == base.student.lr


def test_apply_params_rejects_bad_values_and_keys():
    base = load_config(SMOKE)
    with pytest.raises(ConfigError, match="student.epochs: expected an integer"):
        T.apply_params(base, {"student.epochs": 2.5})
    with pytest.raises(ConfigError, match="student.alpah"):
        T.apply_params(base, {"student.alpah": 1.0})


def test_trial_config_sets_out_dir_and_workers(tmp_path):
    base = load_config(SMOKE)
    cfg = T.trial_config(base, {"student": {"alpha": 0.5}}, tmp_path / "t1", workers=1)
    assert cfg.out_dir == str(tmp_path / "t1")
    assert cfg.student.num_workers == 1 and cfg.student.alpha == 0.5
    assert isinstance(cfg, RunConfig)


def test_check_sweep_on_recipes():
    for name in ("smoke-sweep.yaml", "sst2-sweep.yaml"):
        dists, metric = T.check_sweep(load_config(ROOT / "recipes" / name), ARMS)
        assert metric == "mean_dev_accuracy"
        assert T.grid_size(dists) * load_config(ROOT / "recipes" / name).sweep.num_samples >= 4


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["sweep.metric=accuracy"], "dev metrics only"),
        (["sweep.mode=up"], "max or min"),
        (["sweep.scheduler=pbt"], "asha or fifo"),
        (["sweep.search_alg=hyperopt"], "random or optuna"),
        (["sweep.max_concurrent_trials=0"], "max_concurrent_trials must be >= 1"),
        (["experiment.arms=[kd,kd+cod]"], "experiment.lwd_beta has no effect"),
        (["sweep.search_alg=optuna"], "optuna cannot take grid"),
    ],
)
def test_check_sweep_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        T.check_sweep(load_config(SMOKE, overrides), ARMS)


def test_check_sweep_rejects_two_betas():
    cfg = load_config(SMOKE)
    cfg.sweep.space = dict(cfg.sweep.space, **{"student.beta": [1.0, 2.0]})
    with pytest.raises(ConfigError, match="same β"):
        T.check_sweep(cfg, ARMS)


def test_check_sweep_type_checks_values_early():
    cfg = load_config(SMOKE)
    cfg.sweep.space = {"student.epochs": {"type": "uniform", "low": 1, "high": 5}}
    with pytest.raises(ConfigError, match="student.epochs: expected an integer"):
        T.check_sweep(cfg, ARMS)
    cfg.sweep.space = {"student.alpha": {"type": "choice", "values": [0.5, "high"]}}
    with pytest.raises(ConfigError, match="student.alpha: expected float"):
        T.check_sweep(cfg, ARMS)


def test_optuna_missing_is_a_clear_error():
    import importlib.util

    if importlib.util.find_spec("optuna") is not None:
        pytest.skip("optuna is installed")
    cfg = load_config(SMOKE, ["sweep.search_alg=optuna"])
    cfg.sweep.space = {"student.alpha": {"type": "uniform", "low": 0.0, "high": 2.0}}
    with pytest.raises(ConfigError, match=r"needs the optuna package"):
        T.check_sweep(cfg, ARMS)


# ------------------------------------------------------------ scheduler and results


def test_asha_stops_weak_trials_but_never_on_the_last_report():
    from ray.tune.schedulers import TrialScheduler

    sched = T._asha(max_reports=2, grace_period=1)
    sched.set_search_properties("mean_dev_accuracy", "max")
    a, b, c = (SimpleNamespace(trial_id=x) for x in "abc")
    for t in (a, b, c):
        sched.on_trial_add(None, t)

    def res(it, v):
        return {"training_iteration": it, "mean_dev_accuracy": v}

    assert sched.on_trial_result(None, a, res(1, 0.9)) == TrialScheduler.CONTINUE
    assert sched.on_trial_result(None, b, res(1, 0.1)) == TrialScheduler.STOP
    # The last report always continues: the trial finishes and writes its results.
    assert sched.on_trial_result(None, a, res(2, 0.95)) == TrialScheduler.CONTINUE
    assert sched.on_trial_result(None, c, res(1, 0.95)) == TrialScheduler.CONTINUE
    assert sched.on_trial_result(None, c, res(2, 0.1)) == TrialScheduler.CONTINUE


def _fake_result(tmp_path, trial_id, params, reports, error=None):
    d = tmp_path / "tune" / trial_id
    d.mkdir(parents=True)
    (d / "result.json").write_text("".join(json.dumps(r) + "\n" for r in reports))
    return SimpleNamespace(
        path=str(d),
        config=params,
        error=error,
        metrics=reports[-1] if reports else {},
        metrics_dataframe=None,
    )


def _job(name, dev, test, i):
    return {"job": name, "dev_accuracy": dev, "accuracy": test, "training_iteration": i}


def test_collect_trials_and_pick_best_use_dev_only(tmp_path):
    dists = T.parse_space({"student.alpha": [0.5, 1.0, 2.0, 4.0]})
    grid = [
        # highest test accuracy, lower dev: must not win
        _fake_result(
            tmp_path,
            "t0",
            {"student": {"alpha": 0.5}},
            [_job("kd-k8-s0", 0.6, 0.99, 1), _job("kd-k8-s1", 0.6, 0.99, 2)],
        ),
        _fake_result(
            tmp_path,
            "t1",
            {"student": {"alpha": 1.0}},
            [_job("kd-k8-s0", 0.8, 0.5, 1), _job("kd-k8-s1", 0.7, 0.5, 2)],
        ),
        # stopped after one job with a high dev score: completed trials win
        _fake_result(tmp_path, "t2", {"student": {"alpha": 2.0}}, [_job("kd-k8-s0", 0.9, 0.5, 1)]),
        _fake_result(
            tmp_path, "t3", {"student": {"alpha": 4.0}}, [], error=RuntimeError("boom\nx")
        ),
    ]
    rows = T.collect_trials(grid, dists, n_jobs=2, sweep_dir=tmp_path)
    by = {r["trial_id"]: r for r in rows}
    assert [by[t]["status"] for t in ("t0", "t1", "t2", "t3")] == [
        "completed",
        "completed",
        "early-stopped",
        "error",
    ]
    assert by["t1"]["mean_dev_accuracy"] == 0.75 and by["t1"]["mean_test_accuracy"] == 0.5
    assert by["t1"]["params"] == {"student.alpha": 1.0}
    assert by["t3"]["error"] == "boom" and by["t3"]["mean_dev_accuracy"] is None
    assert T.pick_best(rows)["trial_id"] == "t1"
    assert T.pick_best(rows, "min")["trial_id"] == "t0"


def test_write_outputs_best_recipe_loads(tmp_path):
    cfg = load_config(SMOKE, [f"out_dir={tmp_path}"])
    dists = T.parse_space(cfg.sweep.space)
    rows = [
        {
            "trial_id": f"t{i}",
            "params": {"student.alpha": a, "experiment.lwd_beta": b},
            "mean_dev_accuracy": dev,
            "mean_test_accuracy": 0.5,
            "jobs_done": n,
            "jobs_total": 2,
            "status": "completed" if n == 2 else "early-stopped",
            "error": None,
            "out_dir": "",
        }
        for i, (a, b, dev, n) in enumerate(
            [(0.5, 0.5, 0.6, 2), (0.5, 2.0, 0.7, 2), (2.0, 0.5, 0.4, 1), (2.0, 2.0, 0.65, 2)]
        )
    ]
    best = T.pick_best(rows)
    summary = {
        "name": cfg.name,
        "space": {k: d.describe() for k, d in dists.items()},
        "metric": "dev_accuracy",
        "mode": "max",
        "scheduler": "asha",
        "search_alg": "random",
        "jobs_per_trial": 2,
        "best_trial": best["trial_id"],
        "trials": rows,
        "timings": {},
    }
    sweep_dir = tmp_path / "sweep"
    paths = T.write_outputs(cfg, summary, best, sweep_dir, "recipes/smoke-sweep.yaml")
    for name in ("trials.json", "trials.md", "best.yaml", "sweep.png"):
        assert (sweep_dir / name).stat().st_size > 0, name
    assert paths["best"] == str(sweep_dir / "best.yaml")
    md = (sweep_dir / "trials.md").read_text()
    assert "t1 **best**" in md and "early-stopped" in md
    got = load_config(sweep_dir / "best.yaml")
    assert got.student.alpha == 0.5 and got.experiment.lwd_beta == 2.0
    assert got.out_dir == str(tmp_path / "best") and got.name == "smoke-sweep-best"
    assert got.student.num_workers == cfg.student.num_workers


# ------------------------------------------------------------------ integration


def _free_port(lo: int = 8300, hi: int = 8399) -> int:
    """A port in [lo, hi] nothing listens on now (tries them in random order)."""
    ports = list(range(lo, hi + 1))
    random.shuffle(ports)
    for p in ports:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                continue
            return p
    pytest.skip(f"no free port in {lo}-{hi}")


@pytest.fixture(scope="module")
def ray_dashboard():
    """A local Ray cluster with its dashboard, which ASHA-stopped trials need."""
    import ray

    from raydistill.cluster.runtime import _dashboard_url, runtime_env

    if ray.is_initialized() and _dashboard_url():  # the session's cluster will do
        yield ray
        return
    replaced = ray.is_initialized()
    if replaced:  # a cluster without a dashboard: ASHA-stopped trials would hang
        ray.shutdown()
    ray.init(
        num_cpus=4,
        object_store_memory=1_000_000_000,
        include_dashboard=True,
        dashboard_port=_free_port(),
        runtime_env=runtime_env(),
    )
    yield ray
    if not replaced:  # else later users expect one running; its session teardown ends it
        ray.shutdown()


# ~6 min on the shared 2-core box (prepare ~2.5 min: teacher, pool, generation; 4 trials
# ~3 min), over the ~4 min budget of the default suite: run it with `pytest -m slow`.
@pytest.mark.slow
@pytest.mark.ray
def test_smoke_sweep_end_to_end(tmp_path_factory, ray_dashboard, data_dir):
    out = tmp_path_factory.mktemp("sweep")
    cache = tmp_path_factory.mktemp("sweep-cache")
    cfg = load_config(
        SMOKE,
        [
            f"out_dir={out}",
            f"cache_dir={cache}",
            "data.teacher_train_rows=600",
            "data.dev_rows=32",
            "data.test_rows=32",
            "teacher.epochs=1",
            "method.counterfactuals.rounds=1",
            "method.counterfactuals.num_candidates=2",
            "student.epochs=4",
            "student.eval_every=2",
            "experiment.arms=[lwd+cod]",  # the CoD path: the driver runs the LLM pool once
            # Serve's proxy on a free port: 8000 may belong to another Ray on this machine.
            f"pool.http_port={_free_port(8400, 8499)}",
        ],
    )
    summary = T.sweep(
        cfg,
        recipe_path=str(SMOKE),
        prepare=cod.prepare,
        train=cod.train,
        arms=ARMS,
        ensure_ray=ensure_ray,
    )

    sweep_dir = out / "sweep"
    for name in ("trials.json", "trials.md", "best.yaml", "sweep.png"):
        assert (sweep_dir / name).stat().st_size > 0, name
    data = json.loads((sweep_dir / "trials.json").read_text())
    rows = data["trials"]
    assert len(rows) == 4 == len(summary["trials"])
    assert {(r["params"]["student.alpha"], r["params"]["experiment.lwd_beta"]) for r in rows} == {
        (0.5, 0.5),
        (0.5, 2.0),
        (2.0, 0.5),
        (2.0, 2.0),
    }
    assert all(r["status"] in ("completed", "early-stopped") for r in rows), rows
    assert rows[0]["jobs_total"] == 2
    for r in rows:
        assert 0.0 <= r["mean_dev_accuracy"] <= 1.0 and 0.0 <= r["mean_test_accuracy"] <= 1.0
        assert 1 <= r["jobs_done"] <= 2
    best = next(r for r in rows if r["trial_id"] == data["best_trial"])
    assert best["status"] == "completed"

    best_cfg = load_config(sweep_dir / "best.yaml")
    assert best_cfg.student.alpha == best["params"]["student.alpha"]
    assert best_cfg.experiment.lwd_beta == best["params"]["experiment.lwd_beta"]
    assert best_cfg.cache_dir == str(cache) and best_cfg.experiment.arms == ["lwd+cod"]

    # One teacher, trained by the driver; the trials reused its prep (a trial calling
    # prepare/ensure_teacher/generate_cached raises, which would show as an error above).
    teachers = [p for p in (cache / "teachers").iterdir() if p.is_dir()]
    assert len(teachers) == 1
    for r in rows:
        tdir = Path(r["out_dir"])
        assert not (tdir / "counterfactuals.parquet").exists()
        assert not (tdir / "generation_stats.json").exists()
        runs = [p.name for p in (tdir / "ray_train").iterdir()]
        assert runs and all(n.startswith("students-") for n in runs), runs
        if r["status"] == "completed":
            trial = json.loads((tdir / "trial.json").read_text())
            assert trial["teacher_dir"] == data["teacher_dir"]
            assert trial["teacher_info"] == data["teacher_info"]
            assert {x["job"] for x in trial["results"]} == {"lwd+cod-k8-s0", "lwd+cod-k8-s1"}
            assert load_config(tdir / "config.yaml").student.num_workers == 1
    # The driver's prepare ran the pool once, in the sweep's own folder.
    assert (out / "counterfactuals.parquet").exists()
