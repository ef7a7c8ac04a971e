"""Ray Tune sweeps over a recipe: one prepare in the driver, one Ray Train fit per trial.

The expensive, hyperparameter-independent part of a run (teacher classifier, the Ray Data
annotation pass, LLM counterfactuals) is computed once by `prepare()` in the driver and
shipped to every trial through the object store. A trial only applies its parameters to a
copy of the recipe and distills its students with `train()`, whose Ray Train reports reach
Tune through `TuneReportCallback` (Train V2 cannot be handed to a `Tuner` directly).

Search space (`sweep.space` in a recipe), dotted keys → distributions::

    student.alpha:      {type: uniform, low: 0.0, high: 2.0}
    student.lr:         {type: loguniform, low: 1.0e-5, high: 1.0e-3}
    student.epochs:     {type: randint, low: 10, high: 61}     # high is exclusive
    student.temperature: {type: grid, values: [1, 2, 4]}       # every value, × num_samples
    experiment.lwd_beta: {type: choice, values: [0.5, 1.0]}    # (a bare list is a grid)

Only keys that leave the prepared data unchanged are sweepable: `student.*` (not the
resource settings `num_workers` = `sweep.workers_per_trial`, `use_gpu`,
`placement_strategy`) and `experiment.lwd_beta`. β for the LWD methods is
`student.beta` when nonzero, else `experiment.lwd_beta`: sweep one of them (a
`student.beta` value of 0 falls back to `lwd_beta`). Keys no method of the recipe reads
(α or T without KD, β without LWD) are rejected: every trial would be the same.

Each report of a trial is one student job (method × k × seed). Schedulers and searchers
see `mean_dev_accuracy`, the running mean over the trial's jobs so far, so ASHA can stop a
trial after its first seeds; the best trial is chosen on dev accuracy only (test accuracy
is recorded for reference, never for selection).

Outputs, under `<out_dir>/sweep/`: `trials.json`, `trials.md`, `best.yaml` (the winning
full config as a recipe for `raydistill run`), `sweep.png`, and one folder per trial under
`trials/<trial_id>/` (its results.jsonl and student checkpoints).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from raydistill.config import (
    ConfigError,
    ExperimentConfig,
    RunConfig,
    StudentConfig,
    config_from_dict,
    dump_config,
    merge_dicts,
)

log = logging.getLogger(__name__)

DIST_TYPES = ("grid", "choice", "uniform", "loguniform", "randint")
# Student fields that are resources, not hyperparameters (why, for the error message).
_NOT_SWEPT = {
    "num_workers": "set sweep.workers_per_trial",
    "use_gpu": "a resource setting, the same for every trial",
    "placement_strategy": "a resource setting, the same for every trial",
}
# section → (dataclass, sweepable fields). Anything else would change what prepare()
# computed (teacher, data, k-shot plan, counterfactuals) or how the sweep itself runs.
SWEEPABLE: dict[str, tuple[type, set[str]]] = {
    "student": (
        StudentConfig,
        {f.name for f in dataclasses.fields(StudentConfig)} - set(_NOT_SWEPT),
    ),
    "experiment": (ExperimentConfig, {"lwd_beta"}),
}
# Keys that only some methods read: sweeping them with no such method is wasted compute.
_KD_KEYS = {"student.alpha", "student.temperature"}
_LWD_KEYS = {"student.beta", "experiment.lwd_beta", "student.lwd_layer_map"}
TRIAL_MEMORY = 256 * 1024**2  # the Tune trial's own request (it only drives a TorchTrainer)
# Metrics a sweep may select on (per-job dev accuracy is selected through its running mean).
DEV_METRICS = {"dev_accuracy": "mean_dev_accuracy", "mean_dev_accuracy": "mean_dev_accuracy"}


# --------------------------------------------------------------------- search space


@dataclasses.dataclass(frozen=True)
class Dist:
    """One parsed search dimension."""

    key: str
    type: str
    values: tuple | None = None
    low: float | int | None = None
    high: float | int | None = None

    def domain(self):
        from ray import tune

        if self.type == "grid":
            return tune.grid_search(list(self.values))
        if self.type == "choice":
            return tune.choice(list(self.values))
        if self.type == "uniform":
            return tune.uniform(self.low, self.high)
        if self.type == "loguniform":
            return tune.loguniform(self.low, self.high)
        return tune.randint(self.low, self.high)

    def examples(self) -> list[Any]:
        """Values that cover the dimension's kinds, to type-check against the schema early."""
        if self.values is not None:
            return list(self.values)
        if self.type == "randint":
            return [self.low, self.high - 1]
        return [float(self.low), float(self.high)]  # uniform samples are always floats

    def describe(self) -> str:
        if self.values is not None:
            return f"{self.type} {list(self.values)}"
        return f"{self.type} [{self.low}, {self.high}{')' if self.type == 'randint' else ']'}"


def check_key(key: str) -> None:
    """A dotted key must name a sweepable field of the schema."""
    if not isinstance(key, str) or not key:
        raise ConfigError(f"sweep.space: key {key!r} is not a dotted config key")
    section, _, name = key.partition(".")
    top = {f.name for f in dataclasses.fields(RunConfig)}
    if section not in top or not name:
        raise ConfigError(
            f"sweep.space: unknown key {key!r}: no section {section!r}; "
            f"sweepable: {', '.join(sweepable_keys())}"
        )
    if section not in SWEEPABLE:
        raise ConfigError(
            f"sweep.space: {key!r} cannot be swept: trials share one prepared teacher, data "
            f"and counterfactual set; sweepable: {', '.join(sweepable_keys())}"
        )
    cls, allowed = SWEEPABLE[section]
    fields = {f.name for f in dataclasses.fields(cls)}
    if name not in fields or "." in name:
        raise ConfigError(
            f"sweep.space: unknown key {key!r}; known {section} keys: {', '.join(sorted(fields))}"
        )
    if section == "student" and name in _NOT_SWEPT:
        raise ConfigError(f"sweep.space: {key} cannot be swept: {_NOT_SWEPT[name]}")
    if name not in allowed:
        raise ConfigError(
            f"sweep.space: {key!r} cannot be swept: trials share one prepared k-shot plan; "
            f"sweepable: {', '.join(sweepable_keys())}"
        )


def sweepable_keys() -> list[str]:
    return [f"{s}.{n}" for s, (_c, names) in SWEEPABLE.items() for n in sorted(names)]


def _number(v: Any, where: str) -> float | int:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ConfigError(f"{where}: expected a number, got {v!r}")
    return v


def parse_dist(key: str, spec: Any) -> Dist:
    """`{type: …, …}` (or a bare list, meaning a grid) → Dist; errors name the key."""
    check_key(key)
    where = f"sweep.space.{key}"
    if isinstance(spec, list | tuple):
        spec = {"type": "grid", "values": list(spec)}
    if not isinstance(spec, dict) or "type" not in spec:
        raise ConfigError(
            f"{where}: expected a mapping with a 'type' ({', '.join(DIST_TYPES)}), got {spec!r}"
        )
    kind = spec["type"]
    if kind not in DIST_TYPES:
        raise ConfigError(f"{where}: unknown type {kind!r}; known: {', '.join(DIST_TYPES)}")
    need = {"values"} if kind in ("grid", "choice") else {"low", "high"}
    extra = sorted(set(spec) - need - {"type"})
    missing = sorted(need - set(spec))
    if extra or missing:
        raise ConfigError(
            f"{where}: type {kind} takes {', '.join(sorted(need))}"
            + (f"; unknown {', '.join(extra)}" if extra else "")
            + (f"; missing {', '.join(missing)}" if missing else "")
        )
    if kind in ("grid", "choice"):
        values = spec["values"]
        if not isinstance(values, list | tuple) or not values:
            raise ConfigError(f"{where}: values must be a non-empty list, got {values!r}")
        return Dist(key, kind, values=tuple(values))
    low, high = _number(spec["low"], f"{where}.low"), _number(spec["high"], f"{where}.high")
    if not low < high:
        raise ConfigError(f"{where}: needs low < high, got low={low}, high={high}")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}: loguniform needs low > 0, got {low}")
    if kind == "randint" and not (isinstance(low, int) and isinstance(high, int)):
        raise ConfigError(f"{where}: randint needs integer low/high, got {low}, {high}")
    return Dist(key, kind, low=low, high=high)


def parse_space(space: dict[str, Any]) -> dict[str, Dist]:
    """Validate `sweep.space` (keys and distributions), dotted key → Dist."""
    if not isinstance(space, dict) or not space:
        raise ConfigError(
            "sweep.space is empty: give at least one dimension, e.g. "
            "student.alpha: {type: uniform, low: 0.0, high: 2.0}"
        )
    return {key: parse_dist(key, spec) for key, spec in space.items()}


def tune_space(dists: dict[str, Dist]) -> dict[str, Any]:
    """Nested Tune param_space ({'student': {'alpha': tune.uniform(…)}})."""
    return nest({k: d.domain() for k, d in dists.items()})


def grid_size(dists: dict[str, Dist]) -> int:
    n = 1
    for d in dists.values():
        if d.type == "grid":
            n *= len(d.values)
    return n


# ------------------------------------------------------------ applying parameters


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        node = tree
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return tree


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _plain(v: Any) -> Any:
    """numpy scalars (Tune samples) → Python, so the schema and YAML accept them."""
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    if hasattr(v, "item") and callable(v.item) and type(v).__module__ == "numpy":
        return v.item()
    return v


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    return merge_dicts(copy.deepcopy(base), extra)


def apply_params(base: RunConfig | dict[str, Any], params: dict[str, Any]) -> RunConfig:
    """A validated copy of `base` with `params` (dotted or nested) applied.

    Goes through the schema (`config_from_dict`), so an unknown key or a value of the wrong
    type (say a float for `student.epochs`) fails with a ConfigError naming it.
    """
    data = base.to_dict() if isinstance(base, RunConfig) else base
    flat = {k: _plain(v) for k, v in flatten(params).items()}
    for key in flat:
        check_key(key)
    return config_from_dict(_deep_merge(data, nest(flat)))


def trial_config(
    base: RunConfig | dict[str, Any], params: dict[str, Any], out_dir: str | Path, workers: int
) -> RunConfig:
    """What one trial runs: the params applied, its own out_dir, `workers` Ray Train workers."""
    cfg = apply_params(base, params)
    cfg.out_dir = str(out_dir)
    cfg.student.num_workers = workers
    return cfg


def check_sweep(cfg: RunConfig) -> tuple[dict[str, Dist], str]:
    """Validate everything about the sweep before any work starts; return (space, metric)."""
    from raydistill.cluster.run import METHODS, check_methods

    s = cfg.sweep
    dists = parse_space(s.space)
    for d in dists.values():
        for v in d.examples():
            apply_params(cfg, {d.key: v})  # type errors, e.g. a float for an int field
    check_methods(cfg.experiment.methods)
    kd = any(METHODS[m][0] for m in cfg.experiment.methods)
    lwd = any(METHODS[m][1] for m in cfg.experiment.methods)
    for key in dists:
        if (key in _KD_KEYS and not kd) or (key in _LWD_KEYS and not lwd):
            need = "kd/lwd" if key in _KD_KEYS else "lwd/lwd+cod"
            raise ConfigError(
                f"sweep.space: {key} has no effect with experiment.methods="
                f"{cfg.experiment.methods} (only {need} methods read it); every trial would be "
                f"the same"
            )
    if {"student.beta", "experiment.lwd_beta"} <= set(dists):
        raise ConfigError(
            "sweep.space: student.beta and experiment.lwd_beta are the same β (a nonzero "
            "student.beta overrides lwd_beta); sweep one of them"
        )
    if s.metric not in DEV_METRICS:
        raise ConfigError(
            f"sweep.metric={s.metric!r}: sweeps select on dev metrics only "
            f"({', '.join(DEV_METRICS)}); test metrics are reported, never optimized"
        )
    if s.mode not in ("max", "min"):
        raise ConfigError(f"sweep.mode={s.mode!r}: expected max or min")
    if s.scheduler not in ("asha", "fifo"):
        raise ConfigError(f"sweep.scheduler={s.scheduler!r}: expected asha or fifo")
    if s.search_alg not in ("random", "optuna"):
        raise ConfigError(f"sweep.search_alg={s.search_alg!r}: expected random or optuna")
    for name in ("num_samples", "max_concurrent_trials", "workers_per_trial", "grace_period"):
        if getattr(s, name) < 1:
            raise ConfigError(f"sweep.{name} must be >= 1, got {getattr(s, name)}")
    if s.search_alg == "optuna":
        grids = [k for k, d in dists.items() if d.type == "grid"]
        if grids:
            raise ConfigError(
                f"sweep.search_alg=optuna cannot take grid dimensions ({', '.join(grids)}); "
                "use choice"
            )
        _require_optuna()
    return dists, DEV_METRICS[s.metric]


def _require_optuna() -> None:
    import importlib.util

    if importlib.util.find_spec("optuna") is None:
        raise ConfigError(
            "sweep.search_alg=optuna needs the optuna package (pip install optuna); "
            "or use search_alg: random"
        )


def jobs_per_trial(cfg: RunConfig) -> int:
    e = cfg.experiment
    return len(e.methods) * len(e.ks) * len(e.seeds)


# ------------------------------------------------------------------- the trial


@contextlib.contextmanager
def no_prepare():
    """Inside a trial, anything that would train a teacher or start an LLM pool raises."""
    from raydistill.cluster import run as run_mod
    from raydistill.training import teacher as teacher_mod

    def forbidden(what):
        def f(*_a, **_k):
            raise RuntimeError(f"sweep trial tried to {what}; trials must reuse the driver's prep")

        return f

    saved = (run_mod.prepare, run_mod.generate_cached, teacher_mod.ensure_teacher)
    run_mod.prepare = forbidden("run prepare()")
    run_mod.generate_cached = forbidden("generate counterfactuals")
    teacher_mod.ensure_teacher = forbidden("train a teacher")
    try:
        yield
    finally:
        run_mod.prepare, run_mod.generate_cached, teacher_mod.ensure_teacher = saved


def _pin_ray_address() -> None:
    """Give this trial's Train controller (and its placement-group cleaner) our address.

    When ASHA stops a trial, Tune kills the trial actor; its Train controller dies with it
    and a detached `PlacementGroupCleaner` must remove the worker group's placement group.
    That cleaner asks the State API (served by the dashboard) whether the controller is
    alive, and the State API finds the cluster by `RAY_ADDRESS` or, if unset, by looking
    for GCS processes on the machine. With the dashboard off, or with more than one Ray
    instance on the machine (parallel test runs, colleagues' clusters), that lookup fails,
    the placement group leaks and the next trial waits forever for its workers. Ray Train
    forwards only its own env vars to the controller, so add RAY_ADDRESS to that list.
    """
    import os

    import ray

    os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
    try:
        from ray.train.v2._internal import constants as train_constants

        train_constants.ENV_VARS_TO_PROPAGATE.add("RAY_ADDRESS")
    except (ImportError, AttributeError) as e:  # Ray internals moved: warn, keep going
        log.warning("could not forward RAY_ADDRESS to Ray Train: %s", e)


def _trial(
    params: dict[str, Any], *, base: dict[str, Any], prep_box: dict, sweep_dir: str, workers: int
) -> None:
    """The Tune function trainable: this trial's students, reported job by job."""
    import ray
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback
    from raydistill.cluster import run as run_mod

    _pin_ray_address()
    trial_id = tune.get_context().get_trial_id()
    out = Path(sweep_dir) / "trials" / trial_id
    cfg = trial_config(base, params, out, workers)
    prep = ray.get(prep_box["ref"])
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "config.yaml")
    t0 = time.perf_counter()
    with no_prepare():
        results = run_mod.train(cfg, prep=prep, callbacks=[TuneReportCallback()])
    (out / "trial.json").write_text(
        json.dumps(
            {
                "trial_id": trial_id,
                "params": flatten(params),
                "teacher_dir": prep.teacher_dir,
                "teacher_info": prep.teacher_info,
                "train_s": round(time.perf_counter() - t0, 2),
                "results": results,
            },
            indent=1,
            default=str,
        )
    )


def _asha(max_reports: int, grace_period: int):
    """ASHA over job reports that never stops a trial on its last report.

    Stock ASHA stops a trial when it reaches max_t, which kills the trial while its
    TorchTrainer is still finishing (results and checkpoints not yet written). Here the last
    report continues; it is still recorded in the rungs when the trial completes.
    """
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    class _LastReportASHA(ASHAScheduler):
        def on_trial_result(self, tune_controller, trial, result):
            if result.get(self._time_attr, 0) >= max_reports:
                return TrialScheduler.CONTINUE
            return super().on_trial_result(tune_controller, trial, result)

    return _LastReportASHA(
        time_attr="training_iteration",
        max_t=max(max_reports, grace_period),
        grace_period=grace_period,
        reduction_factor=2,
    )


# ------------------------------------------------------------------- the driver


def sweep(cfg: RunConfig, recipe_path: str | None = None) -> dict[str, Any]:
    """Prepare once, tune `cfg.sweep.space` with Ray Tune, write the sweep folder."""
    import ray
    from ray import tune
    from raydistill.cluster.run import Stopwatch, prepare
    from raydistill.cluster.runtime import ensure_ray

    dists, tune_metric = check_sweep(cfg)
    s = cfg.sweep
    n_jobs = jobs_per_trial(cfg)
    t0 = time.perf_counter()
    info = ensure_ray(cfg.cluster)
    if s.scheduler == "asha" and not info.get("dashboard"):
        # Verified on Ray 2.60: the placement group of a trial ASHA stops is only removed by
        # a cleaner that asks the dashboard's State API; without it the next trial waits for
        # workers forever. Fail now rather than hang.
        raise ConfigError(
            "sweep.scheduler=asha needs the Ray dashboard (its State API cleans up the workers "
            "of trials ASHA stops; without it the sweep hangs): set "
            "cluster.include_dashboard=true (and install ray[default]), or sweep.scheduler=fifo"
        )
    cpus = info.get("cpus") or 0
    if cpus and s.max_concurrent_trials * s.workers_per_trial > cpus:
        print(
            f"[raydistill] warning: {s.max_concurrent_trials} concurrent trials × "
            f"{s.workers_per_trial} workers > {cpus:g} CPUs; trials will wait for workers",
            flush=True,
        )
    out = Path(cfg.out_dir).resolve()
    sweep_dir = out / "sweep"
    sweep_dir.mkdir(parents=True, exist_ok=True)
    sw = Stopwatch()
    prep = prepare(cfg, sw)  # the only prepare: teacher, annotations, counterfactuals
    prep_ref = ray.put(prep)

    # Trials run with their working dir set by Tune: make every path absolute.
    base = cfg.to_dict()
    base["out_dir"] = str(out)
    base["cache_dir"] = str(cfg.resolved_cache_dir())
    trainable = tune.with_parameters(
        _trial,
        base=base,
        prep_box={"ref": prep_ref},
        sweep_dir=str(sweep_dir),
        workers=s.workers_per_trial,
    )
    # The trial function only waits on its TorchTrainer: no CPU (the Train workers take
    # them; the Train controller takes none), a little memory because Tune refuses an empty
    # request. Concurrency is capped by max_concurrent_trials, not by Tune's accounting.
    trainable = tune.with_resources(trainable, {"cpu": 0, "memory": TRIAL_MEMORY})
    if s.search_alg == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch(seed=s.seed)
        max_concurrent = s.max_concurrent_trials  # Tune wraps it in a ConcurrencyLimiter
    else:
        from ray.tune.search import BasicVariantGenerator

        # Tune ignores TuneConfig.max_concurrent_trials for a SearchGenerator passed in:
        # the limit has to go to the generator itself.
        search_alg = BasicVariantGenerator(
            max_concurrent=s.max_concurrent_trials, random_state=s.seed
        )
        max_concurrent = None
    if s.scheduler == "asha":
        scheduler = _asha(n_jobs, s.grace_period)
    else:
        from ray.tune.schedulers import FIFOScheduler

        scheduler = FIFOScheduler()
    tuner = tune.Tuner(
        trainable,
        param_space=tune_space(dists),
        tune_config=tune.TuneConfig(
            metric=tune_metric,
            mode=s.mode,
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=s.num_samples,
            max_concurrent_trials=max_concurrent,
            trial_dirname_creator=lambda t: t.trial_id,
            trial_name_creator=lambda t: t.trial_id,
        ),
        run_config=tune.RunConfig(
            name="tune",
            storage_path=str(sweep_dir / "ray_tune"),
            failure_config=tune.FailureConfig(max_failures=0),
            verbose=1,
        ),
    )
    with sw.stage("tune"):
        grid = tuner.fit()
    rows = collect_trials(grid, dists, n_jobs, sweep_dir)
    best = pick_best(rows, s.mode)
    sw.t["total"] = round(time.perf_counter() - t0, 2)
    summary = {
        "name": cfg.name,
        "recipe": recipe_path,
        "metric": s.metric,
        "tune_metric": tune_metric,
        "mode": s.mode,
        "scheduler": s.scheduler,
        "search_alg": s.search_alg,
        "space": {k: d.describe() for k, d in dists.items()},
        "jobs_per_trial": n_jobs,
        "teacher_dir": prep.teacher_dir,
        "teacher_info": prep.teacher_info,
        "timings": sw.t,
        "best_trial": best["trial_id"] if best else None,
        "trials": rows,
    }
    paths = write_outputs(cfg, summary, best, sweep_dir, recipe_path)
    summary["paths"] = paths
    print((sweep_dir / "trials.md").read_text(), flush=True)
    if best is None:
        raise RuntimeError(f"no trial of the sweep reported a result; see {sweep_dir}/trials.md")
    print(
        f"[raydistill] sweep written to {sweep_dir}; best config: {paths.get('best')}", flush=True
    )
    return summary


def _reports(result) -> list[dict[str, Any]]:
    """Every report of one trial, in order (Tune's result.json, else its dataframe)."""
    path = Path(result.path) / "result.json" if result.path else None
    if path is not None and path.exists():
        out = []
        for line in path.read_text().splitlines():
            if line.strip():
                with contextlib.suppress(json.JSONDecodeError):
                    out.append(json.loads(line))
        if out:
            return out
    df = result.metrics_dataframe
    if df is not None and len(df):
        return df.to_dict("records")
    return [result.metrics] if result.metrics else []


def _mean(xs: list[Any]) -> float | None:
    vals = [float(x) for x in xs if isinstance(x, int | float) and math.isfinite(float(x))]
    return round(sum(vals) / len(vals), 4) if vals else None


def collect_trials(grid, dists: dict[str, Dist], n_jobs: int, sweep_dir: Path) -> list[dict]:
    """One row per trial: params, mean dev/test accuracy over its jobs, status."""
    rows = []
    for result in grid:
        trial_id = Path(result.path).name if result.path else "?"
        params = {k: _plain(v) for k, v in flatten(result.config or {}).items() if k in dists}
        reports = [r for r in _reports(result) if "job" in r]
        jobs = {}
        for r in reports:
            jobs[r["job"]] = r  # one report per job
        if result.error is not None:
            status = "error"
        elif len(jobs) >= n_jobs:
            status = "completed"
        else:
            status = "early-stopped"
        rows.append(
            {
                "trial_id": trial_id,
                "params": params,
                "mean_dev_accuracy": _mean([r.get("dev_accuracy") for r in jobs.values()]),
                # Test accuracy per job, for reference only: selection never reads it.
                "mean_test_accuracy": _mean([r.get("accuracy") for r in jobs.values()]),
                "jobs_done": len(jobs),
                "jobs_total": n_jobs,
                "status": status,
                "error": (str(result.error).splitlines() or [""])[0][:300]
                if result.error
                else None,
                "out_dir": str(sweep_dir / "trials" / trial_id),
            }
        )
    rows.sort(key=lambda r: r["trial_id"])
    return rows


def pick_best(rows: list[dict[str, Any]], mode: str = "max") -> dict[str, Any] | None:
    """Best mean dev accuracy among completed trials (all trials if none completed)."""
    scored = [r for r in rows if r["mean_dev_accuracy"] is not None and r["status"] != "error"]
    done = [r for r in scored if r["status"] == "completed"] or scored
    if not done:
        return None
    sign = 1.0 if mode == "max" else -1.0
    # Ties go to the trial listed first (stable, reproducible).
    return max(done, key=lambda r: sign * r["mean_dev_accuracy"])


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
