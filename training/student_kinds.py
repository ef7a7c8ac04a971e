"""Student kinds behind one small protocol, so one Ray Train + DeepSpeed loop trains them all.

`training/loop.py:run_job` trains sequence classifiers on its own (tuned) path and hands
every other kind to one generic path that only talks to a `StudentKind`:

    kind = kind_for_job(job)                      # settings + KD knobs from the TrainJob
    tok = kind.tokenizer(job.backbone)
    model = kind.build(job)                       # an HF model, optionally truncated
    data = kind.encode(tok, rows, max_length)     # tensors, one row per example
    loss, parts = kind.loss(model_or_engine, kind.batch(data, idx))
    preds = kind.predict(model, tok, rows)        # tags per word, or generated text
    m = kind.metrics(preds, rows)                 # test metrics, incl. "score"
    score = kind.dev_score(model, tok, dev_rows)  # dev selection: "score", maybe cheaper
    kind.save(model, out_dir, tok)                # plain HF folder + raydistill_student.json

A saved folder says what it is in `raydistill_student.json` (`KindSettings`), so
`load_student` and `per_example_quality` rebuild the same prompts and metrics from the
folder alone. Generative kinds share prompt and target building and their metrics here.
"""

from __future__ import annotations

import importlib
import json
import string
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from raydistill.config import STUDENT_KINDS, STUDENT_MODES
from raydistill.training import task_metrics

MODES = STUDENT_MODES
SETTINGS_FILE = "raydistill_student.json"

# The kinds the generic path trains; sequence classification has its own path in loop.py.
_REGISTRY = {
    "token_classification": "raydistill.training.token_student:TokenClassificationKind",
    "seq2seq": "raydistill.training.seq2seq_student:Seq2SeqKind",
    "causal_lm": "raydistill.training.causal_student:CausalLMKind",
}
_DEFAULT_KIND = {
    "classification": "sequence_classification",
    "token_classification": "token_classification",
    "seq2seq": "seq2seq",
    "mcqa": "seq2seq",
}
_TASKS_OF = {
    "sequence_classification": ("classification",),
    "token_classification": ("token_classification",),
    "seq2seq": ("seq2seq", "mcqa"),
    "causal_lm": ("seq2seq", "mcqa"),
}
# {task}: "summarize" for seq2seq tasks; "predict" / "explain" for mcqa (multitask mode
# trains both, as in Distilling step-by-step). Causal prompts end in a cue the target
# follows, since a decoder-only model has no other boundary between input and output.
_PROMPTS = {
    ("seq2seq", "seq2seq"): "summarize: {source}",
    ("causal_lm", "seq2seq"): "{source}\nTL;DR:",
    ("seq2seq", "mcqa"): "{task}: {question} choices: {choices}",
    ("causal_lm", "mcqa"): "{task}: {question}\nchoices: {choices}\nanswer:",
}
PROMPT_FIELDS = ("text", "source", "question", "choices", "task")


def default_kind(task_kind: str) -> str:
    """The student kind a task kind gets when the recipe names none."""
    try:
        return _DEFAULT_KIND[task_kind]
    except KeyError:
        known = ", ".join(_DEFAULT_KIND)
        raise ValueError(f"unknown task kind {task_kind!r}; known: {known}") from None


def check_kind(kind: str, task_kind: str) -> None:
    """Raise ValueError unless a `kind` student can learn a `task_kind` task."""
    if kind not in STUDENT_KINDS:
        raise ValueError(f"unknown student kind {kind!r}; known: {', '.join(STUDENT_KINDS)}")
    if task_kind not in _TASKS_OF[kind]:
        raise ValueError(
            f"a {kind} student cannot learn a {task_kind} task "
            f"(it learns {', '.join(_TASKS_OF[kind])}; {task_kind} default: "
            f"{default_kind(task_kind)})"
        )


def default_prompt_format(kind: str, task_kind: str) -> str | None:
    return _PROMPTS.get((kind, task_kind))


def job_fields(student_cfg: Any, task_kind: str) -> dict[str, Any]:
    """TrainJob keyword arguments for a StudentConfig's kind fields on a `task_kind` task:
    kind (the task's default when the config names none), task_kind, mode,
    max_new_tokens and the concrete prompt format."""
    kind = getattr(student_cfg, "kind", None) or default_kind(task_kind)
    check_kind(kind, task_kind)
    prompt = getattr(student_cfg, "prompt_format", None) or default_prompt_format(kind, task_kind)
    fields = {
        "kind": kind,
        "task_kind": task_kind,
        "mode": getattr(student_cfg, "mode", "answer"),
        "max_new_tokens": int(getattr(student_cfg, "max_new_tokens", 32)),
        "prompt_format": prompt,
    }
    KindSettings(label_names=[], max_length=10**6, **fields).validate()
    return fields


@dataclass
class KindSettings:
    """What defines a student's inputs and outputs; saved as raydistill_student.json."""

    kind: str
    task_kind: str
    label_names: list[str] = field(default_factory=list)
    max_length: int = 64
    max_new_tokens: int = 32
    prompt_format: str | None = None
    mode: str = "answer"

    def __post_init__(self) -> None:
        if self.prompt_format is None:
            self.prompt_format = default_prompt_format(self.kind, self.task_kind)

    @classmethod
    def from_job(cls, job: Any) -> KindSettings:
        return cls(
            kind=job.kind,
            task_kind=job.task_kind,
            label_names=list(job.label_names),
            max_length=int(job.max_length),
            max_new_tokens=int(job.max_new_tokens),
            prompt_format=job.prompt_format,
            mode=job.mode,
        )

    @classmethod
    def from_dir(cls, path: str | Path) -> KindSettings:
        data = json.loads((Path(path) / SETTINGS_FILE).read_text())
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def validate(self) -> KindSettings:
        check_kind(self.kind, self.task_kind)
        if self.mode not in MODES:
            raise ValueError(f"student mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.kind in ("seq2seq", "causal_lm"):
            if not self.prompt_format:
                raise ValueError(f"a {self.kind} student needs a prompt_format")
            names = {f for _, f, _, _ in string.Formatter().parse(self.prompt_format) if f}
            if unknown := names - set(PROMPT_FIELDS):
                raise ValueError(
                    f"prompt_format {self.prompt_format!r} uses {sorted(unknown)}; "
                    f"fields: {', '.join('{' + f + '}' for f in PROMPT_FIELDS)}"
                )
            if self.mode == "multitask" and self.task_kind == "mcqa" and "task" not in names:
                raise ValueError("mode multitask needs {task} in prompt_format (predict/explain)")
            if self.max_new_tokens < 1:
                raise ValueError("max_new_tokens must be at least 1")
        return self

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        if self.kind not in ("seq2seq", "causal_lm"):
            for k in ("max_new_tokens", "prompt_format", "mode"):
                out.pop(k)
        return out


def kind_class(name: str) -> type[StudentKind]:
    if name == "sequence_classification":
        raise ValueError("sequence_classification is trained by loop.run_job's classifier path")
    if name not in _REGISTRY:
        raise ValueError(f"unknown student kind {name!r}; known: {', '.join(STUDENT_KINDS)}")
    module, cls = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def make_kind(
    settings: KindSettings, alpha: float = 0.0, temperature: float = 1.0, keep_examples: int = 0
) -> StudentKind:
    kind = kind_class(settings.kind)(settings.validate(), alpha=alpha, temperature=temperature)
    kind.keep_examples = int(keep_examples)
    return kind


def kind_for_job(job: Any) -> StudentKind:
    return make_kind(
        KindSettings.from_job(job),
        alpha=job.alpha,
        temperature=job.temperature,
        keep_examples=getattr(job, "keep_examples", 0),
    )


def depth_overrides(config: Any, num_layers: int | None, source: str) -> dict[str, int]:
    """Config keywords keeping the first `num_layers` layers (of encoder and decoder)."""
    if num_layers is None:
        return {}
    if hasattr(config, "num_decoder_layers"):  # T5 family
        keys = ("num_layers", "num_decoder_layers")
    elif hasattr(config, "encoder_layers") and hasattr(config, "decoder_layers"):  # BART family
        keys = ("encoder_layers", "decoder_layers")
    else:
        keys = ("num_hidden_layers",)
    for k in keys:
        total = getattr(config, k, None)
        if total is not None and num_layers > total:
            raise ValueError(f"student.num_layers={num_layers} but {source} has {total} ({k})")
    return dict.fromkeys(keys, num_layers)


class StudentKind:
    """One student kind: how its model is built, fed, trained, read out, scored and saved.

    Instances are cheap and hold only settings; the model, tokenizer and tensors are
    passed in, so the training loop owns the DeepSpeed engine and the ranks.
    """

    name: ClassVar[str]
    auto_class: ClassVar[str]  # the transformers Auto class that loads the saved folder
    # Generative mcqa students: `metrics` also returns the first N generations
    # ("examples") and every generated explanation ("explanations"), so a method can judge
    # and embed what the student wrote without a second generation pass.
    keep_examples: int = 0

    def __init__(self, settings: KindSettings, alpha: float = 0.0, temperature: float = 1.0):
        self.settings = settings
        self.alpha = alpha
        self.temperature = temperature

    # -- building
    def tokenizer(self, source: str):
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(source)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        return tok

    def _auto(self):
        import transformers

        return getattr(transformers, self.auto_class)

    def build(self, job: Any):
        """A fresh student from `job.backbone` (folder or Hub id), first `num_layers` kept."""
        import torch
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(job.backbone)
        depth = depth_overrides(cfg, job.num_layers, job.backbone)
        # fp32 master weights: transformers 5 otherwise loads a checkpoint in the dtype its
        # config names (SmolLM2: bfloat16), and DeepSpeed here trains without mixed precision.
        model = self._auto().from_pretrained(
            job.backbone, dtype=torch.float32, **depth, **self.head_kwargs()
        )
        if job.freeze_embeddings:
            # With tied input/output embeddings (T5, SmolLM2) this freezes the output
            # layer as well: the pretrained vocabulary stays, the layers above it learn.
            emb = getattr(model.base_model, "embeddings", None) or model.get_input_embeddings()
            emb.requires_grad_(False)
        return model

    def head_kwargs(self) -> dict[str, Any]:
        return {}

    # -- data
    def encode(self, tokenizer, rows: list[dict], max_length: int) -> dict[str, Any]:
        """Tensors with one row per training example (padded job-wide)."""
        raise NotImplementedError

    def count_examples(self, rows: list[dict]) -> int:
        """How many training examples `encode(rows)` makes."""
        return len(rows)

    def batch(self, data: dict[str, Any], idx) -> dict[str, Any]:
        """Rows `idx`, cut to the columns any of them uses (data is padded job-wide)."""
        return cut_to_used({k: v[idx] for k, v in data.items()}, "attention_mask")

    # -- training, read-out, scoring
    def loss(self, model, batch: dict[str, Any]) -> tuple[Any, dict[str, float]]:
        """(scalar loss to backpropagate, float parts for the history incl. "loss")."""
        raise NotImplementedError

    def predict(self, model, tokenizer, rows: list[dict]) -> list[Any]:
        raise NotImplementedError

    def metrics(self, preds: list[Any], rows: list[dict]) -> dict[str, float]:
        raise NotImplementedError

    def quality(self, preds: list[Any], rows: list[dict]) -> list[float]:
        """Per-row score in [0, 1] (what the weakness method's error values are made of)."""
        raise NotImplementedError

    def dev_score(self, model, tokenizer, rows: list[dict], rank: int = 0, world: int = 1) -> float:
        """The score dev selection reads ("score" of `metrics`), on sharded predictions.

        A kind may predict less here than at test when selection does not need it: an
        explaining mcqa student is selected on its answers, so writing explanations at
        every dev evaluation would only cost generation time.
        """
        return float(
            self.metrics(predict_sharded(self, model, tokenizer, rows, rank, world), rows)["score"]
        )

    # -- the folder serving loads
    def save(self, model, out_dir: str | Path, tokenizer) -> None:
        out = Path(out_dir)
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        (out / SETTINGS_FILE).write_text(json.dumps(self.settings.to_json(), indent=1))


def cut_to_used(batch: dict[str, Any], mask_key: str, exclude: tuple[str, ...] = ()) -> dict:
    """Drop the columns no row of `batch[mask_key]` uses, from every tensor as wide as it."""
    mask = batch[mask_key]
    used = mask.bool().any(dim=0).nonzero()
    if not len(used):
        return batch
    lo, hi, width = int(used.min()), int(used.max()) + 1, mask.shape[1]
    return {  # contiguous: some models .view() their inputs (T5's loss does)
        k: v[:, lo:hi].contiguous()
        if (k not in exclude and v.dim() >= 2 and v.shape[1] == width)
        else v
        for k, v in batch.items()
    }


def kind_param_groups(model, lr: float, head_lr: float | None) -> list[dict]:
    """The pretrained body at `lr`, parts outside `base_model` (new heads) at `head_lr`."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if head_lr is None or model.base_model is model:
        return [{"params": trainable, "lr": lr}]
    body_ids = {id(p) for p in model.base_model.parameters()}
    body = [p for p in trainable if id(p) in body_ids]
    head = [p for p in trainable if id(p) not in body_ids]
    return [g for g in ({"params": body, "lr": lr}, {"params": head, "lr": head_lr}) if g["params"]]


def predict_sharded(
    kind: StudentKind, model, tokenizer, rows: list[dict], rank: int, world: int, **kwargs
):
    """Every rank predicts rows[rank::world]; all ranks get all predictions in row order.

    No collective runs inside `predict`, so shards may differ in size and generation may
    stop at different steps on different ranks (the model must be unpartitioned).
    `kwargs` go to `kind.predict`.
    """
    mine = kind.predict(model, tokenizer, rows[rank::world], **kwargs) if rows[rank::world] else []
    if world == 1:
        return mine
    import torch.distributed as dist

    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, mine)
    out: list[Any] = [None] * len(rows)
    for r, part in enumerate(parts):
        out[r::world] = part
    return out


def length_sorted_batches(n_items: list[int], bs: int) -> list[list[int]]:
    """Indices in batches of `bs`, longest first, so a batch pads only to its own longest."""
    order = np.argsort([-n for n in n_items], kind="stable")
    return [list(order[i : i + bs]) for i in range(0, len(order), bs)]


# ------------------------------------------------------------------ generative kinds


class GenerativeKind(StudentKind):
    """Shared by seq2seq and causal LM students: prompts, targets, metrics.

    seq2seq tasks: prompt_format(source) → target. mcqa: the target is the answer text
    (mode "answer"), "<answer> because <explanation>" (mode "explain"), or two examples
    per row — "predict" → answer and "explain" → explanation (mode "multitask") — whose
    generations are joined the same way at prediction time. Subclasses implement
    `encode` over (prompt, target) pairs and `generate`.
    """

    gen_batch: ClassVar[int] = 32

    def prompt(self, row: dict, task: str) -> str:
        values = {
            "text": row.get("text", ""),
            "source": row.get("source", row.get("text", "")),
            "question": row.get("question", row.get("text", "")),
            "choices": "; ".join(map(str, row.get("choices") or [])),
            "task": task,
        }
        return self.settings.prompt_format.format(**values)

    def _tasks(self) -> list[str]:
        if self.settings.task_kind == "seq2seq":
            return ["summarize"]
        return ["predict", "explain"] if self.settings.mode == "multitask" else ["predict"]

    def pairs(self, rows: list[dict]) -> list[tuple[str, str]]:
        """(prompt, target) training examples, in row order."""
        s = self.settings
        out = []
        for r in rows:
            if s.task_kind == "seq2seq":
                out.append((self.prompt(r, "summarize"), str(r["target"])))
                continue
            answer = str(r["choices"][int(r["answer"])])
            why = str(r.get("explanation") or "").strip()
            if r.get("counterfactual"):
                # A wrong choice with its explanation (counterfactual mode): the student
                # learns to explain the choice its prompt names, never to answer with it.
                if why and s.mode != "answer":
                    out.append((self.prompt(r, "explain"), why))
                continue
            if s.mode == "answer" or (s.mode == "explain" and not why):
                out.append((self.prompt(r, "predict"), answer))
            elif s.mode == "explain":
                out.append((self.prompt(r, "predict"), answer + task_metrics.BECAUSE + why))
            else:
                out.append((self.prompt(r, "predict"), answer))
                if why:
                    out.append((self.prompt(r, "explain"), why))
        return out

    def count_examples(self, rows: list[dict]) -> int:
        return len(self.pairs(rows))

    def generate(self, model, tokenizer, prompts: list[str], stop: str | None = None) -> list[str]:
        """Greedy continuations of `prompts`; with `stop`, a row may end once its text
        ends with `stop` (greedy decoding: the text before it is what a full run writes)."""
        raise NotImplementedError

    def predict(self, model, tokenizer, rows: list[dict], answers_only: bool = False) -> list[str]:
        """Generated text per row ("<answer> because <explanation>" for multitask mcqa).

        `answers_only` (mcqa): generate what the answer needs and no explanation: the
        multitask "explain:" task is skipped, and an "explain"-mode student stops at its
        "because" (greedy: the answer part is unchanged).
        """
        import torch

        short = answers_only and self.settings.task_kind == "mcqa"
        tasks = ["predict"] if short else self._tasks()
        stop = task_metrics.BECAUSE.rstrip() if short and self.settings.mode == "explain" else None
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                outs = [
                    self.generate(model, tokenizer, [self.prompt(r, t) for r in rows], stop)
                    for t in tasks
                ]
        finally:
            if was_training:
                model.train()
        if len(outs) == 1:
            return outs[0]
        return [a + task_metrics.BECAUSE + e if e else a for a, e in zip(*outs, strict=True)]

    def dev_score(self, model, tokenizer, rows: list[dict], rank: int = 0, world: int = 1) -> float:
        if self.settings.task_kind != "mcqa":
            return super().dev_score(model, tokenizer, rows, rank, world)
        preds = predict_sharded(self, model, tokenizer, rows, rank, world, answers_only=True)
        return float(task_metrics.mcqa_scores(preds, rows, explanations=False)["answer_accuracy"])

    def metrics(self, preds: list[str], rows: list[dict]) -> dict[str, Any]:
        if self.settings.task_kind == "seq2seq":
            r = task_metrics.rouge_l(preds, [row["target"] for row in rows])
            score = float(np.mean(r)) if r else float("nan")
            return {"rougeL": score, "score": score}
        explains = self.settings.mode != "answer"
        m = task_metrics.mcqa_scores(preds, rows, explanations=explains)
        if self.keep_examples > 0:
            m["examples"] = task_metrics.kept_generations(preds, rows, self.keep_examples)
            if explains:
                m["explanations"] = [task_metrics.split_explanation(p)[1] for p in preds]
        return {**m, "score": m["answer_accuracy"]}

    def quality(self, preds: list[str], rows: list[dict]) -> list[float]:
        if self.settings.task_kind == "seq2seq":
            return task_metrics.rouge_l(preds, [row["target"] for row in rows])
        return [
            float(task_metrics.parse_answer(p, r["choices"]) == int(r["answer"]))
            for p, r in zip(preds, rows, strict=True)
        ]


# ------------------------------------------------------------------ saved students


def load_student(path: str | Path, device: str | None = None):
    """(kind, model, tokenizer) from a saved student folder, model in eval mode."""
    settings = KindSettings.from_dir(path)
    kind = make_kind(settings)
    tok = kind.tokenizer(str(path))
    model = kind._auto().from_pretrained(str(path)).eval()
    if device:
        model.to(device)
    return kind, model, tok


def per_example_quality(path: str | Path, rows: list[dict]) -> list[float]:
    """Per-row score in [0, 1] of a saved student: sentence entity F1 (token
    classification), ROUGE-L (seq2seq), answer correctness (mcqa)."""
    import torch

    kind, model, tok = load_student(path, "cuda" if torch.cuda.is_available() else None)
    return kind.quality(kind.predict(model, tok, rows), rows)
