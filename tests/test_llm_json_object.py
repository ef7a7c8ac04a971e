"""The JSON parser for untrusted answers (llm_output.parse_json_object).

An LLM's answer may wrap its JSON object in chatter or code fences, cut it off, or give
no object at all: `parse_json_object` finds the first complete object or names a reject
reason, and never raises. Examples pin the cases that matter; Hypothesis checks the
promises over arbitrary text (never raises, recovers an object from chatter, never
returns part of a truncated object). Fast, no Ray. More adversarial input for all the
parsers of LLM output is in test_llm_output_properties.py.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raydistill.pipelines.llm_output import JSON_REJECTS, parse_json_object


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"text": "a dull film", "changed": 1}', {"text": "a dull film", "changed": 1}),
        ('```json\n{"text": "x"}\n```', {"text": "x"}),
        ('Sure! Here is the JSON:\n```\n{"text": "x"}\n```\nHope this helps.', {"text": "x"}),
        (
            'Here you go: {"a": {"b": [1, {"c": "}"}]}} -- done {"later": 1}',
            {"a": {"b": [1, {"c": "}"}]}},
        ),
        ('Use {curly} braces: {"text": "y"}', {"text": "y"}),
        (
            '{"answer": "B", "explanation": "because \\"quoted\\" {x}"}',
            {"answer": "B", "explanation": 'because "quoted" {x}'},
        ),
    ],
)
def test_parse_json_object_finds_the_object(text, expected):
    assert parse_json_object(text) == (expected, "")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (None, "empty"),
        ("  \n", "empty"),
        ("no json here", "no_json"),
        ('{"text": "a dull fi', "truncated"),
        ('Sure: {"a": {"b": 1}', "truncated"),  # the inner object is a fragment
        ('```json\n{"text": "x", ', "truncated"),
        ("[1, 2, 3]", "not_object"),
        ('"just a string"', "not_object"),
        ("```json\n[1, 2]\n```", "not_object"),
        ('{"a": 1,}', "invalid_json"),
        ("{not: json}", "invalid_json"),
        ("[" * 50_000 + "]" * 50_000, "no_json"),  # too deep to decode: no RecursionError
        ("{" * 50_000, "truncated"),
        ("x" * 300_000, "too_long"),
    ],
)
def test_parse_json_object_rejects_with_a_reason(text, reason):
    assert parse_json_object(text) == (None, reason)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=400))
def test_parse_json_object_never_raises_on_arbitrary_unicode(text):
    obj, why = parse_json_object(text)
    assert (isinstance(obj, dict) and why == "") or (obj is None and why in JSON_REJECTS)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)
_CHATTER = st.text(alphabet=st.characters(blacklist_characters='{}[]"`'), max_size=40)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=8), _JSON, max_size=4), _CHATTER, _CHATTER)
def test_parse_json_object_recovers_an_object_from_chatter(obj, before, after):
    text = before + json.dumps(obj, ensure_ascii=False) + after
    assert parse_json_object(text) == (obj, "")


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=8), _JSON, min_size=1, max_size=4), st.data())
def test_parse_json_object_never_returns_part_of_a_truncated_object(obj, data):
    full = json.dumps(obj)
    cut = data.draw(st.integers(min_value=1, max_value=len(full) - 1))
    assert parse_json_object("Answer: " + full[:cut]) == (None, "truncated")
