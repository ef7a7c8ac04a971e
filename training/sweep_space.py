"""The sweep's search space: parse `sweep.space`, check it against the recipe, apply a trial's
parameters to a copy of the config.

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
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from raydistill.config import (
    ConfigError,
    ExperimentConfig,
    RunConfig,
    StudentConfig,
    config_from_dict,
    merge_dicts,
)

log = logging.getLogger(__name__)


DIST_TYPES = ("grid", "choice", "uniform", "loguniform", "randint")
# Student fields that are resources, not hyperparameters (why, for the error message).
_NOT_SWEPT = {
    "num_workers": "set sweep.workers_per_trial",
    "use_gpu": "a resource setting, the same for every trial",
    "placement_strategy": "a resource setting, the same for every trial",
    "kind": "the student kind follows the task; trials share one prepared data set",
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
# Keys that only some arms read: sweeping them with no such arm is wasted compute.
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


def check_sweep(
    cfg: RunConfig, arms: Mapping[str, Any] | None = None
) -> tuple[dict[str, Dist], str]:
    """Validate everything about the sweep before any work starts; return (space, metric).

    `arms` is the method's arm registry (name → arm with `kd` / `lwd` flags): with it, a
    key that none of the run's arms reads is refused (every trial would be the same).
    """
    s = cfg.sweep
    dists = parse_space(s.space)
    for d in dists.values():
        for v in d.examples():
            apply_params(cfg, {d.key: v})  # type errors, e.g. a float for an int field
    if arms is not None:
        bad = [m for m in cfg.experiment.arms if m not in arms]
        if bad:
            raise ConfigError(f"experiment.arms: unknown arm(s) {bad}; known: {', '.join(arms)}")
    chosen = [arms[m] for m in cfg.experiment.arms] if arms is not None else []
    kd = arms is None or any(a.kd for a in chosen)
    lwd = arms is None or any(a.lwd for a in chosen)
    for key in dists:
        if (key in _KD_KEYS and not kd) or (key in _LWD_KEYS and not lwd):
            need = "kd/lwd" if key in _KD_KEYS else "lwd/lwd+cod"
            raise ConfigError(
                f"sweep.space: {key} has no effect with experiment.arms="
                f"{cfg.experiment.arms} (only {need} arms read it); every trial would be "
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
    return len(e.arms) * len(e.ks) * len(e.seeds)
