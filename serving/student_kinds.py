"""Every student kind as a plain Python object with one batched `run(inputs)`.

A student folder says what it is in `raydistill_student.json` ("kind"; see the student
folder contract); a folder without that file is a sequence classifier, as every folder
was before the other kinds existed. The Serve app batches requests per model and calls
`run` once per batch, so each kind tokenizes and runs the model once per batch:

* `sequence_classification` → `StudentClassifier` (student_model.py): labels + probs.
* `token_classification` → `StudentTagger`: BIO tags per word (the prediction of each
  word's first sub-token, as the tagger was trained), entity spans with character offsets.
* `seq2seq` / `causal_lm` → `StudentGenerator`: greedy, batched `generate`; decoder-only
  models are left-padded so every row's continuation starts at the same position.

No Ray here: these are reusable in batch jobs and tested without Serve.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

META_FILE = "raydistill_student.json"
CLASSIFY = "sequence_classification"
TAG = "token_classification"
SEQ2SEQ = "seq2seq"
CAUSAL = "causal_lm"
KINDS = (CLASSIFY, TAG, SEQ2SEQ, CAUSAL)
GENERATIVE = (SEQ2SEQ, CAUSAL)
# Which endpoint serves which kind (the app's routes use these names).
ENDPOINT_OF_KIND = {CLASSIFY: "classify", TAG: "tag", SEQ2SEQ: "generate", CAUSAL: "generate"}
DEFAULT_MAX_NEW_TOKENS = 64

# Words of free text for tagging: runs of word characters (keeping inner hyphens and
# apostrophes, "state-of-the-art", "O'Neil") and single punctuation marks, as CoNLL-style
# corpora tokenize. Text made of tokens joined by spaces splits back into those tokens
# unless a token mixes letters and punctuation.
_WORD = re.compile(r"\w+(?:[-'’]\w+)*|[^\w\s]")


def read_meta(model_dir: str) -> dict[str, Any]:
    """The folder's raydistill_student.json, defaulted: no file = sequence classifier."""
    path = Path(model_dir) / META_FILE
    if not path.exists():
        return {"kind": CLASSIFY}
    meta = json.loads(path.read_text())
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object")
    kind = meta.get("kind") or CLASSIFY
    if kind not in KINDS:
        raise ValueError(f"{path}: kind {kind!r} is not one of {', '.join(KINDS)}")
    return {**meta, "kind": kind}


def student_kind(model_dir: str) -> str:
    return read_meta(model_dir)["kind"]


def load_student(model_dir: str, max_length: int = 128, *, device: str | None = None):
    """The right wrapper for the folder's kind; every one has `.kind`, `.run`, `.describe`."""
    meta = read_meta(model_dir)
    kind = meta["kind"]
    limit = int(meta.get("max_length") or max_length)
    if kind == CLASSIFY:
        from .student_model import StudentClassifier

        return StudentClassifier(model_dir, limit, device=device)
    if kind == TAG:
        return StudentTagger(model_dir, limit, device=device, meta=meta)
    return StudentGenerator(model_dir, limit, device=device, meta=meta)


def _device(device: str | None) -> str:
    """`device`, else what Ray assigned this replica: cuda only with a GPU assignment
    (`raydistill serve --num-gpus`), so a CPU replica never lands on a node's GPU."""
    from raydistill.training.devices import resolve_device

    return resolve_device(device)


def split_words(text: str) -> list[tuple[str, int, int]]:
    """(word, start_char, end_char exclusive) for each word of `text`."""
    return [(m.group(), m.start(), m.end()) for m in _WORD.finditer(text)]


def repair_bio(tags: list[str]) -> list[str]:
    """Model output made a valid BIO sequence: an I-X that does not continue an X entity
    starts one (what seqeval's lenient mode does), anything not B-/I- is O."""
    out: list[str] = []
    prev_type = None
    for tag in tags:
        if tag[:2] in ("B-", "I-") and len(tag) > 2:
            typ = tag[2:]
            if tag[0] == "I" and typ != prev_type:
                tag = f"B-{typ}"
            prev_type = typ
        else:
            tag, prev_type = "O", None
        out.append(tag)
    return out


class StudentTagger:
    """An HF token-classification folder (config.id2label = BIO tags): text → entities.

    `tag(texts)` returns, per text, `{"entities": [{type, start_char, end_char, text}],
    "words": [...], "tags": [...]}`. Words past `max_length` sub-tokens are tagged O.
    """

    kind = TAG

    def __init__(
        self,
        model_dir: str,
        max_length: int = 128,
        *,
        batch_size: int = 32,
        device: str | None = None,
        meta: Mapping[str, Any] | None = None,
    ):
        from transformers import AutoModelForTokenClassification, AutoTokenizer

        self.model_dir = str(model_dir)
        self.device = _device(device)
        self.batch_size = int(batch_size)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        if not self.tokenizer.is_fast:
            raise ValueError(f"{model_dir}: tagging needs a fast tokenizer (word ids)")
        self.model = AutoModelForTokenClassification.from_pretrained(
            self.model_dir, use_safetensors=True
        )
        if self.tokenizer.pad_token is None and self.tokenizer.eos_token is not None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.to(self.device).eval()
        cfg = self.model.config
        limit = getattr(cfg, "max_position_embeddings", None) or max_length
        self.max_length = int(min(max_length, limit))
        id2label = {int(k): str(v) for k, v in (cfg.id2label or {}).items()}
        self.labels = [id2label.get(i, "O") for i in range(cfg.num_labels)]
        self.meta = dict(meta or {})

    def tag(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        import torch

        from raydistill.pipelines.bio import tags_to_spans

        if isinstance(texts, str):
            raise TypeError("tag() takes a list of strings, not a single string")
        out: list[dict[str, Any]] = []
        for start in range(0, len(texts), self.batch_size):
            chunk = list(texts[start : start + self.batch_size])
            words = [split_words(t) for t in chunk]
            # Texts without a word still need one slot for the tokenizer; they tag nothing.
            enc = self.tokenizer(
                [[w for w, _, _ in ws] or [""] for ws in words],
                is_split_into_words=True,
                truncation=True,
                max_length=self.max_length,
                padding=True,
                return_tensors="pt",
            )
            with torch.no_grad():
                pred = self.model(**enc.to(self.device)).logits.argmax(-1).cpu().tolist()
            for i, (text, ws) in enumerate(zip(chunk, words, strict=True)):
                first: dict[int, int] = {}
                for pos, wid in enumerate(enc.word_ids(i)):
                    if wid is not None and wid not in first:
                        first[wid] = pred[i][pos]
                tags = repair_bio(
                    [self.labels[first[j]] if j in first else "O" for j in range(len(ws))]
                )
                entities = []
                for typ, a, b in tags_to_spans(tags):
                    s, e = ws[a][1], ws[b - 1][2]
                    entities.append(
                        {"type": typ, "start_char": s, "end_char": e, "text": text[s:e]}
                    )
                out.append({"entities": entities, "words": [w for w, _, _ in ws], "tags": tags})
        return out

    run = tag

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "labels": list(self.labels)}


def prompt_fields(prompt_format: str) -> list[str]:
    """Placeholder names of a prompt format ("summarize: {source}" → ["source"])."""
    return [f for _, f, _, _ in string.Formatter().parse(prompt_format) if f]


# Placeholders a plain string input fills (training's GenerativeKind.prompt reads the row's
# text for each of them); {task} is the serving side's own ("predict" / "explain").
TEXT_FIELDS = ("text", "source", "question")


def input_fields(prompt_format: str) -> list[str]:
    """The placeholders a request must supply (everything but {task})."""
    return [f for f in prompt_fields(prompt_format) if f != "task"]


def needs_object(prompt_format: str) -> list[str]:
    """Fields a plain string cannot fill (e.g. mcqa's {choices}): send an object."""
    return [f for f in input_fields(prompt_format) if f not in TEXT_FIELDS]


class StudentGenerator:
    """A seq2seq or decoder-only student folder: inputs → greedy continuations.

    An input is a string (it fills {text}/{source}/{question} of the folder's
    `prompt_format`, default "{text}") or an object naming each placeholder (a list value,
    e.g. mcqa `choices`, is joined with "; " as training joins it). `generate` returns,
    per input, `{"text": ...}`; at most `max_new_tokens` (raydistill_student.json, default
    64) new tokens are produced. mcqa students also return `answer` and `explanation`
    (and `choice`, the index of the named choice, when choices were sent), parsed by
    training's `task_metrics` so serving reads outputs exactly as evaluation does; a
    "multitask" student generates the answer ("predict") and the explanation ("explain")
    in two batched passes, joined as in training.
    """

    def __init__(
        self,
        model_dir: str,
        max_length: int = 128,
        *,
        batch_size: int = 16,
        device: str | None = None,
        meta: Mapping[str, Any] | None = None,
    ):
        from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

        self.meta = dict(meta or read_meta(model_dir))
        self.kind = self.meta["kind"]
        if self.kind not in GENERATIVE:
            raise ValueError(f"{model_dir} is a {self.kind} student, not a generative one")
        self.model_dir = str(model_dir)
        self.device = _device(device)
        self.batch_size = int(batch_size)
        self.max_new_tokens = int(self.meta.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS)
        self.prompt_format = str(self.meta.get("prompt_format") or "{text}")
        self.fields = input_fields(self.prompt_format)
        self.task_kind = self.meta.get("task_kind")
        self.mode = str(self.meta.get("mode") or "answer")
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        auto = AutoModelForSeq2SeqLM if self.kind == SEQ2SEQ else AutoModelForCausalLM
        self.model = auto.from_pretrained(self.model_dir, use_safetensors=True)
        if self.tokenizer.pad_token is None:
            if self.tokenizer.eos_token is None:
                raise ValueError(f"{model_dir}: the tokenizer has neither pad nor eos token")
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.kind == CAUSAL:
            # Left padding: every row's prompt ends at the last position, where generation
            # continues; left truncation keeps the end of a long prompt.
            self.tokenizer.padding_side = "left"
            self.tokenizer.truncation_side = "left"
        self.model.to(self.device).eval()
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if self.kind == CAUSAL and limit:
            limit = max(1, int(limit) - self.max_new_tokens)
        self.max_length = int(min(max_length, limit or max_length))

    def prompt(self, item: str | Mapping[str, Any], task: str = "predict") -> str:
        if isinstance(item, str):
            if missing := needs_object(self.prompt_format):
                raise KeyError(f"the prompt {self.prompt_format!r} needs an object with {missing}")
            values = {f: item for f in TEXT_FIELDS}
        else:
            if missing := [f for f in self.fields if f not in item]:
                raise KeyError(
                    f"input lacks field(s) {missing} of the prompt {self.prompt_format!r}"
                )
            values = {
                k: "; ".join(map(str, v)) if isinstance(v, list | tuple) else str(v)
                for k, v in item.items()
            }
        values["task"] = task
        return self.prompt_format.format(
            **{f: values.get(f, "") for f in prompt_fields(self.prompt_format)}
        )

    def _generate(self, prompts: list[str]) -> list[str]:
        import torch

        out: list[str] = []
        tok = self.tokenizer
        for start in range(0, len(prompts), self.batch_size):
            enc = tok(
                prompts[start : start + self.batch_size],
                truncation=True,
                max_length=self.max_length,
                padding=True,
                return_tensors="pt",
            ).to(self.device)
            with torch.no_grad():
                seqs = self.model.generate(
                    input_ids=enc["input_ids"],  # no token_type_ids: generate rejects them
                    attention_mask=enc["attention_mask"],
                    max_new_tokens=self.max_new_tokens,
                    do_sample=False,
                    num_beams=1,
                    pad_token_id=tok.pad_token_id,
                )
            if self.kind == CAUSAL:
                seqs = seqs[:, enc["input_ids"].shape[1] :]  # drop the (left-padded) prompt
            out.extend(t.strip() for t in tok.batch_decode(seqs, skip_special_tokens=True))
        return out

    def generate(self, inputs: Sequence[str | Mapping[str, Any]]) -> list[dict[str, Any]]:
        if isinstance(inputs, str):
            raise TypeError("generate() takes a list of inputs, not a single string")
        inputs = list(inputs)
        if not inputs:
            return []
        mcqa = self.task_kind == "mcqa"
        texts = self._generate([self.prompt(x, "predict") for x in inputs])
        if mcqa and self.mode == "multitask":
            from raydistill.training.task_metrics import BECAUSE

            whys = self._generate([self.prompt(x, "explain") for x in inputs])
            texts = [a + BECAUSE + e if e else a for a, e in zip(texts, whys, strict=True)]
        if not mcqa:
            return [{"text": t} for t in texts]
        from raydistill.training.task_metrics import parse_answer, split_explanation

        out = []
        for item, text in zip(inputs, texts, strict=True):
            answer, why = split_explanation(text)
            row: dict[str, Any] = {"text": text, "answer": answer, "explanation": why}
            choices = item.get("choices") if isinstance(item, Mapping) else None
            if isinstance(choices, list | tuple) and choices:
                row["choice"] = parse_answer(text, list(choices))
            out.append(row)
        return out

    run = generate

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "max_new_tokens": self.max_new_tokens,
            "prompt_format": self.prompt_format,
            "fields": list(self.fields),
        }
