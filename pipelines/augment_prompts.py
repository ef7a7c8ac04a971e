"""Prompts that ask the LLM for new labelled samples like a seed, and their parsers.

One prompt shape for every task kind, as the weakness-targeted method describes it:
role ("text sample generator"), mission (write a new sample in the style of the seed that
carries these labels), the labels (classification: the label; NER: every entity with its
type; summarization: the summary's constraints) and the seed itself. The answer is asked
for as JSON — enforced by a JSON schema on backends with structured output — and parsed
defensively either way: a small model's answer is untrusted text, and every way it can be
unusable is a named reason the round counts.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from raydistill.pipelines.llm_output import clean_text, parse_json_object
from raydistill.pipelines.prompts import truncate

ROLE = (
    "You are a text sample generator. You write new, realistic training samples for a "
    "machine-learning task, in the style of the sample you are shown. You answer with a "
    "JSON object only."
)
PROMPT_VERSION = "augment-v1"  # the messages; schemas are part of each request key

# Reject reasons (counted per round; nothing is dropped silently).
R_LLM_ERROR = "llm_error"
R_NO_TEXT = "no_text"
R_BAD_FIELD = "bad_field"

CLASSIFICATION_SCHEMA = {
    "type": "object",
    "properties": {"text": {"type": "string"}},
    "required": ["text"],
}
NER_SCHEMA = {
    "type": "object",
    "properties": {
        "text": {"type": "string"},
        "entities": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"text": {"type": "string"}, "type": {"type": "string"}},
                "required": ["text", "type"],
            },
        },
    },
    "required": ["text", "entities"],
}
SUMMARY_SCHEMA = {
    "type": "object",
    "properties": {"document": {"type": "string"}, "summary": {"type": "string"}},
    "required": ["document", "summary"],
}

# Entity type codes → words the prompt uses (the model knows "person" better than "PER").
TYPE_WORDS = {"PER": "person", "ORG": "organization", "LOC": "location", "MISC": "miscellaneous"}


def schema_for(kind: str, entity_types: list[str] | None = None) -> dict[str, Any]:
    """The JSON schema sent as structured output. For NER the entity `type` is an enum of
    the task's types: without it small generators copy the prompt's "PER|ORG|LOC|MISC"
    template into the field (seen on CoNLL with SmolLM2-135M: 85 of 150 candidates of a
    round rejected as `wrong_type`), which a grammar-constrained decoder cannot do."""
    if kind == "token_classification" and entity_types:
        ner = copy.deepcopy(NER_SCHEMA)
        ner["properties"]["entities"]["items"]["properties"]["type"] = {
            "type": "string",
            "enum": list(entity_types),
        }
        return ner
    return {
        "classification": CLASSIFICATION_SCHEMA,
        "token_classification": NER_SCHEMA,
        "seq2seq": SUMMARY_SCHEMA,
    }[kind]


def _user(mission: str, labels: str, seed_text: str, answer: str) -> str:
    return f"{mission}\n\n{labels}\n\nSample:\n{seed_text}\n\nAnswer with JSON: {answer}"


def classification_messages(seed: dict[str, Any], spec: Any, max_chars: int = 600) -> list:
    label = spec.label_names[int(seed["label"])]
    mission = (
        f"Write one new {spec.noun} in the style of the sample, about as long, whose "
        f"{spec.label_meaning} is clearly {label}. Do not copy the sample."
    )
    text = truncate(seed["text"], max_chars)
    if seed.get("text_pair"):
        text = f"{text}\n(second text, kept as is: {seed['text_pair']})"
    return [
        {"role": "system", "content": ROLE},
        {
            "role": "user",
            "content": _user(mission, f"Label: {label}", text, '{"text": "..."}'),
        },
    ]


def ner_messages(seed: dict[str, Any], entities: list[tuple[str, str]]) -> list:
    """`entities`: (surface text, type code) of the seed, from its BIO tags."""
    if entities:
        listed = "; ".join(f"{t} ({TYPE_WORDS.get(k, k)})" for t, k in entities)
        labels = (
            f"Entities of the sample: {listed}. Use entities of the same types (you may "
            "use other names) and list every entity you use with its type."
        )
    else:
        labels = "The sample has no named entities; write a sentence without any."
    types = ", ".join(f"{k} = {w}" for k, w in TYPE_WORDS.items())
    mission = (
        "Write one new sentence in the style of the sample (news wire), about as long. "
        f"Entity types: {types}."
    )
    return [
        {"role": "system", "content": ROLE},
        {
            "role": "user",
            "content": _user(
                mission,
                labels,
                seed["text"],
                '{"text": "...", "entities": [{"text": "...", "type": "PER|ORG|LOC|MISC"}]}',
            ),
        },
    ]


def summary_instruction(target_words: int) -> str:
    """What the prompt asks of a summary (also what a generator that echoes the prompt
    writes as its "summary": `augment_verify.echoes_instruction` refuses that)."""
    return (
        f"The summary: one line of at most {max(4, target_words + 4)} words that states the "
        "document's main point (like the sample's summary), with no facts that are not in "
        "the document."
    )


def summary_messages(seed: dict[str, Any], max_doc_chars: int = 1200) -> list:
    target_words = len(str(seed["target"]).split())
    labels = summary_instruction(target_words)
    mission = (
        "Write one new short document on a different subject in the style of the sample, "
        "and its summary."
    )
    sample = f"{truncate(seed['source'], max_doc_chars)}\nSummary: {seed['target']}"
    return [
        {"role": "system", "content": ROLE},
        {
            "role": "user",
            "content": _user(mission, labels, sample, '{"document": "...", "summary": "..."}'),
        },
    ]


def prompt_hash(messages: list) -> str:
    """A short id of the prompt (lineage: which prompt wrote a sample)."""
    return hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:16]


def _field(obj: dict[str, Any], name: str) -> str | None:
    v = obj.get(name)
    if not isinstance(v, str):
        return None
    cleaned, _ = clean_text(v)
    return cleaned


def parse_sample(raw: str | None, kind: str) -> tuple[dict[str, Any] | None, str]:
    """An answer → (the sample's fields, "") or (None, reason). Never raises.

    classification → {text}; token_classification → {text, entities: [(text, type)]};
    seq2seq → {source, target}. A classification answer that is not JSON but is plain
    text is taken as the text (the hf backend has no structured output, and a small model
    often drops the braces); the other kinds need their structure.
    """
    obj, why = parse_json_object(raw)
    if kind == "classification":
        if obj is None:
            text, why2 = clean_text(raw if isinstance(raw, str) else None)
            # Braces mean a JSON attempt that failed (truncated, broken): never train on
            # its debris as if it were text.
            if text and "{" not in text and "}" not in text:
                return {"text": text}, ""
            return None, f"json_{why}" if why else (why2 or R_NO_TEXT)
        text = _field(obj, "text")
        return ({"text": text}, "") if text else (None, R_NO_TEXT)
    if obj is None:
        return None, f"json_{why}"
    if kind == "token_classification":
        text = _field(obj, "text")
        if not text:
            return None, R_NO_TEXT
        ents = obj.get("entities", [])
        if not isinstance(ents, list):
            return None, R_BAD_FIELD
        out = []
        for e in ents:
            if not isinstance(e, dict):
                return None, R_BAD_FIELD
            t, k = e.get("text"), e.get("type")
            if not isinstance(t, str) or not isinstance(k, str) or not t.strip():
                return None, R_BAD_FIELD
            out.append((t.strip(), k.strip()))
        return {"text": text, "entities": out}, ""
    if kind == "seq2seq":
        doc, summ = _field(obj, "document"), _field(obj, "summary")
        if not doc or not summ:
            return None, R_NO_TEXT
        return {"source": doc, "target": summ}, ""
    raise ValueError(f"no augmentation parser for task kind {kind!r}")
