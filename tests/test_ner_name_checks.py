"""The weakness loop's NER name checks, on hand-built samples.

The cases are the ones Qwen2.5-Coder-0.5B wrote on CoNLL-2003 and the presence check
accepted: common nouns and numbers stated as entities ("points", "332.66"), a seed entity
retyped ("Czech Republic" LOC → ORG), a seed entity written but left untagged ("Germany"),
and "..." as a whole sentence. Each is a named reject with the checks on and passes as
before with them off, so old generations keep their meaning.
"""

from pathlib import Path
from types import SimpleNamespace

import pytest

from raydistill.pipelines.augment_verify import (
    R_CONTRADICTS_SEED,
    R_NO_WORDS,
    R_NOT_A_NAME,
    R_SEED_ENTITY_UNTAGGED,
    ner_sample,
)

TYPES = ["PER", "ORG", "LOC", "MISC"]
RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.mark.parametrize(
    "text, ents, seed_ents, reason",
    [
        ("He scored 332.66 points .", [("332.66", "LOC")], [], R_NOT_A_NAME),
        ("A baby girl was born in Paris .", [("baby girl", "PER"), ("Paris", "LOC")], [],
         R_NOT_A_NAME),
        (". . .", [], [], R_NO_WORDS),
        ("The Czech Republic team won .", [("Czech Republic", "ORG")],
         [("Czech Republic", "LOC")], R_CONTRADICTS_SEED),
        # matched as tokens, whatever the case: "CZECH REPUBLIC" in a headline is the same
        ("CZECH REPUBLIC WIN .", [("CZECH REPUBLIC", "ORG")], [("Czech Republic", "LOC")],
         R_CONTRADICTS_SEED),
        ("Germany beat France 2-0 .", [("France", "LOC")], [("Germany", "LOC")],
         R_SEED_ENTITY_UNTAGGED),
        # stated with a capital, found only in lower case
        ("Most companies agreed .", [("Companies", "ORG")], [], R_NOT_A_NAME),
    ],
)  # fmt: skip
def test_name_checks_reject_by_reason_and_are_off_by_default(text, ents, seed_ents, reason):
    got, why = ner_sample(text, ents, TYPES, name_checks=True, seed_entities=seed_ents)
    assert got is None and why == reason
    # Off (the function's default): the checks before, which accepted every one of these.
    got, why = ner_sample(text, ents, TYPES, seed_entities=seed_ents)
    assert why == "" and got is not None


def test_name_checks_accept_what_agrees_with_the_seed():
    seed = [("Czech", "MISC"), ("US", "LOC"), ("Washington", "PER"), ("Washington", "LOC")]
    got, why = ner_sample(
        # "Czech" inside a tagged "Czech Republic" is tagged; "us" is not the seed's "US";
        # "Washington" has two types in the seed, so its type is not checked.
        "Tell us : the Czech Republic and Washington agreed in Prague .",
        [("Czech Republic", "LOC"), ("Washington", "ORG"), ("Prague", "LOC")],
        TYPES,
        name_checks=True,
        seed_entities=seed,
    )
    assert why == ""
    assert got["spans"] == [("LOC", 4, 6), ("ORG", 7, 8), ("LOC", 10, 11)]
    # Matching ignores case (a headline's "CHINA" is "China"), but with the name checks a
    # lower-case occurrence of a stated name stays untagged.
    got, why = ner_sample(
        "Companies said 27 percent of companies agreed .",
        [("Companies", "ORG")],
        TYPES,
        name_checks=True,
    )
    assert why == "" and got["spans"] == [("ORG", 0, 1)]
    got, why = ner_sample("CHINA WINS .", [("China", "LOC")], TYPES, name_checks=True)
    assert why == "" and got["spans"] == [("LOC", 0, 1)]
    # A sentence without names is fine when no seed entity is written in it.
    got, why = ner_sample("It rained all day .", [], TYPES, name_checks=True, seed_entities=seed)
    assert why == "" and set(got["tags"]) == {"O"}


def test_build_candidate_uses_the_seeds_own_entities():
    from raydistill.pipelines.augment import build_candidate
    from raydistill.pipelines.tasks import TASKS

    spec = TASKS["conll2003"]
    seed = {
        "id": "train-1",
        "text": "Germany beat Wales in Cardiff .",
        "tokens": ["Germany", "beat", "Wales", "in", "Cardiff", "."],
        "tags": ["B-LOC", "O", "B-LOC", "O", "B-LOC", "O"],
    }
    sample = {"text": "Germany lost to Spain on Sunday .", "entities": [("Spain", "LOC")]}
    row, why = build_candidate(sample, seed, spec, ner_name_checks=True)
    assert row is None and why == R_SEED_ENTITY_UNTAGGED
    row, why = build_candidate(sample, seed, spec)
    assert why == "" and row["tags"] == ["O", "O", "O", "B-LOC", "O", "O", "O"]
    fixed = {**sample, "entities": [("Spain", "LOC"), ("Germany", "LOC")]}
    row, why = build_candidate(fixed, seed, spec, ner_name_checks=True)
    assert why == "" and row["tags"][:4] == ["B-LOC", "O", "O", "B-LOC"]


def test_signature_moves_for_ner_only():
    """On for NER: other accepted samples, so other students. Off, and for every other
    task kind whatever its value, the signature is the one before the key existed."""
    from raydistill.config import load_config
    from raydistill.methods.weakness import signature

    def sig(recipe: str, kind: str, *overrides: str) -> str:
        cfg = load_config(RECIPES / recipe, list(overrides))
        return signature(cfg, SimpleNamespace(spec=SimpleNamespace(kind=kind), teacher=None))

    on = sig("conll-weakness.yaml", "token_classification")
    off = sig("conll-weakness.yaml", "token_classification", "method.ner_name_checks=false")
    assert on != off
    for recipe, kind in [("sst2-weakness.yaml", "classification"),
                         ("bbc-summary-weakness.yaml", "seq2seq")]:  # fmt: skip
        assert sig(recipe, kind) == sig(recipe, kind, "method.ner_name_checks=false")
