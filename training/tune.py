"""Ray Tune sweeps over a recipe: one prepare in the driver, one Ray Train fit per trial.

The expensive, hyperparameter-independent part of a run (teacher classifier, the Ray Data
annotation pass, LLM counterfactuals) is computed once by `prepare()` in the driver and
shipped to every trial through the object store. A trial only applies its parameters to a
copy of the recipe and distills its students with `train()`, whose Ray Train reports reach
Tune through `TuneReportCallback` (Train V2 cannot be handed to a `Tuner` directly).

The search space lives in `sweep_space`, the written outputs in `sweep_outputs`.

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
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from raydistill.config import (
    ConfigError,
    RunConfig,
    dump_config,
)
from raydistill.training.sweep_outputs import (  # noqa: F401  (re-exported)
    best_config,
    plot_sweep,
    trials_markdown,
    write_best,
    write_outputs,
)
from raydistill.training.sweep_space import (  # noqa: F401  (re-exported)
    DEV_METRICS,
    DIST_TYPES,
    TRIAL_MEMORY,
    Dist,
    _plain,
    apply_params,
    check_key,
    check_sweep,
    flatten,
    grid_size,
    jobs_per_trial,
    nest,
    parse_dist,
    parse_space,
    sweepable_keys,
    trial_config,
    tune_space,
)

log = logging.getLogger(__name__)

# ------------------------------------------------------------------- the trial


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
    params: dict[str, Any],
    *,
    base: dict[str, Any],
    prep_box: dict,
    sweep_dir: str,
    workers: int,
    train: Callable[..., list[dict[str, Any]]],
) -> None:
    """The Tune function trainable: this trial's students, reported job by job.

    `train(cfg, prep=..., callbacks=...)` is the method's train stage; given the driver's
    prepared inputs it trains students only (no teacher, no LLM calls).
    """
    import ray
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    _pin_ray_address()
    trial_id = tune.get_context().get_trial_id()
    out = Path(sweep_dir) / "trials" / trial_id
    cfg = trial_config(base, params, out, workers)
    prep = ray.get(prep_box["ref"])
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "config.yaml")
    t0 = time.perf_counter()

    class _JobReports(TuneReportCallback):
        """One Tune report per finished job: a job's partial (mid-job) checkpoints are
        fault tolerance, not results, and would shift ASHA's rungs."""

        def after_report(self, run_context, metrics, checkpoint):
            if metrics and metrics[0].get("partial"):
                return
            super().after_report(run_context, metrics, checkpoint)

    results = train(cfg, prep=prep, callbacks=[_JobReports()])
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


def _connect() -> dict[str, Any]:
    """Join the running Ray (or start one); the facts `sweep` needs about it."""
    import ray

    if not ray.is_initialized():
        ray.init()
    return {
        "cpus": ray.cluster_resources().get("CPU", 0),
        "dashboard": bool(ray.get_runtime_context().dashboard_url),
    }


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


def sweep(
    cfg: RunConfig,
    recipe_path: str | None = None,
    *,
    prepare: Callable[..., Any],
    train: Callable[..., list[dict[str, Any]]],
    arms: Mapping[str, Any] | None = None,
    ensure_ray: Callable[[Any], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Prepare once, tune `cfg.sweep.space` with Ray Tune, write the sweep folder.

    The method hands in its stages: `prepare(cfg, sw)` runs once in the driver (teacher,
    annotations, generations) and its result goes to every trial through the object
    store; `train(cfg, prep=, callbacks=)` is what a trial runs; `arms` (name → arm with
    `kd` / `lwd` flags) lets the space be checked against what the arms read.
    `ensure_ray(cluster_cfg)` connects or starts Ray (default: `ray.init` if needed).
    """
    import ray
    from ray import tune

    from raydistill.timing import Stopwatch

    dists, tune_metric = check_sweep(cfg, arms)
    s = cfg.sweep
    n_jobs = jobs_per_trial(cfg)
    t0 = time.perf_counter()
    info = ensure_ray(cfg.cluster) if ensure_ray else _connect()
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
        train=train,
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
