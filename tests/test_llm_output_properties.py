"""Bad input for everything that reads LLM output (issue 14): property tests.

Every parser and cleaner of untrusted answers must turn any text into a parsed value or
a counted reject reason, never an uncaught exception, and whatever it returns must be
writable (UTF-8: Arrow, SQLite and JSON files refuse lone surrogates, and one such value
fails the whole batch that stores it). Covered: `llm_output.clean_text` /
`parse_json_object` / `strip_quotes`, CoD's `counterfactual_checks.clean_candidate`, and
the request layer's response parsing (`llm_stage.parse_http_result`,
`parse_chat_response`, `normalize_messages`) and cache decoding. Fast, no Ray.

Bugs these found (fixed): a response body nested just below the JSON depth limit raised
RecursionError while building its error message; lone-surrogate escapes ("\\ud800") in an
answer or error body failed the Arrow batch; `strip_quotes` was quadratic (a run of 300k
backticks took 4 s); "Surely ..." / "Okra ..." lost their first letters to the "Sure" /
"Ok" chatter pattern, and "Result-oriented ..." / "Text-book ..." lost their first word
to the "Result -" / "Text -" label patterns.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from raydistill.pipelines.counterfactual_checks import (
    REJECT_ECHO,
    REJECT_NOT_MINIMAL,
    REJECT_TOO_LONG,
    clean_candidate,
    cut_trailer,
)
from raydistill.pipelines.edits import word_edit_distance, words
from raydistill.pipelines.llm_output import (
    _QUOTES,
    JSON_REJECTS,
    MAX_JSON_CHARS,
    REJECT_EMPTY,
    REJECT_REFUSAL,
    clean_text,
    parse_json_object,
    strip_quotes,
)
from raydistill.pipelines.llm_stage import (
    ERROR_KINDS,
    Sampling,
    normalize_messages,
    parse_chat_response,
    parse_http_result,
)
from raydistill.pipelines.request_cache import CachedAnswer, RequestCache, request_key

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CLEAN_REJECTS = {REJECT_EMPTY, REJECT_REFUSAL}
CANDIDATE_REJECTS = CLEAN_REJECTS | {REJECT_ECHO, REJECT_TOO_LONG, REJECT_NOT_MINIMAL}
SURROGATES = ["\ud800", "\udbff", "\udc00", "\udfff"]

# Any code point, lone surrogates included (hypothesis leaves them out by default).
ANY_CHAR = st.characters(exclude_categories=()) | st.sampled_from(SURROGATES)
ANY_TEXT = st.text(ANY_CHAR, max_size=300)
# Pieces of JSON, fences, escapes and chatter: broken and nested JSON is likely.
JSONISH = st.lists(
    st.sampled_from(
        [
            "{", "}", "[", "]", '"', "\\", ":", ",", " ", "\n", "1", "-", "true", "null",
            '"a"', '"k":', "\\u", "\\ud800", "\\udc00", "\\ud83d\\ude00", '\\"', "```",
            "```json\n", "Sure! ", "Here is the JSON:", "{curly}", "é", "\x00", "\u2028",
        ]
    ),
    max_size=60,
).map("".join)  # fmt: skip
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=False)
    | st.text(ANY_CHAR, max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(ANY_CHAR, max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)


def _writable(value) -> bool:
    """Can this value be stored as UTF-8 JSON (what Arrow/SQLite/JSON files need)?"""
    json.dumps(value, ensure_ascii=False).encode("utf-8")
    return True


def _no_surrogates(value):
    """What a lone surrogate becomes once the parsers have made a value writable."""
    if isinstance(value, str):
        return re.sub("[\ud800-\udfff]", "\ufffd", value)
    if isinstance(value, list):
        return [_no_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {_no_surrogates(k): _no_surrogates(v) for k, v in value.items()}
    return value


def _check_json_result(result) -> None:
    obj, why = result
    if obj is None:
        assert why in JSON_REJECTS
    else:
        assert isinstance(obj, dict) and why == "" and _writable(obj)


def _deep(n: int, f):
    """Call `f` `n` Python frames deeper: a parser runs inside Ray/asyncio stacks."""
    return f() if n == 0 else _deep(n - 1, f)


# =================================================================== parse_json_object


@FAST
@given(ANY_TEXT)
def test_json_any_unicode_is_an_object_or_a_reason(text):
    _check_json_result(parse_json_object(text))


@FAST
@given(JSONISH)
@example('{"a": "\\ud800"}')
@example('```json\n{"k": ["\\udc00", {"x": "\\ud83d\\ude00"}]}\n```')
def test_json_broken_and_nested_pieces_are_an_object_or_a_reason(text):
    _check_json_result(parse_json_object(text))


@FAST
@given(st.dictionaries(st.text(ANY_CHAR, max_size=6), JSON_VALUES, max_size=4), st.data())
def test_json_object_with_escaped_surrogates_comes_back_writable(obj, data):
    """json.dumps escapes lone surrogates ("\\udc00"); decoding brings them back, and the
    parser replaces them so the value can be stored."""
    body = json.dumps(obj)  # ASCII: every surrogate is an escape
    wrap = data.draw(st.sampled_from(["{}", "```json\n{}\n```", "Sure! {} Hope this helps."]))
    got = parse_json_object(wrap.replace("{}", body))
    assert got == (_no_surrogates(obj), "")
    _writable(got[0])


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 1200),
    st.integers(0, 40),
    st.sampled_from(['{"x":', "[", '{"x": ["']),
    st.booleans(),
)
def test_json_any_nesting_depth_at_any_stack_depth(depth, frames, opener, closed):
    closer = {'{"x":': "}", "[": "]", '{"x": ["': '"]}'}[opener]
    text = "Answer: " + opener * depth + "1" + (closer * depth if closed else "")
    _check_json_result(_deep(frames, lambda: parse_json_object(text)))


@pytest.mark.parametrize(
    "text",
    [
        "`" * MAX_JSON_CHARS,
        "{" * MAX_JSON_CHARS,
        '{"' * (MAX_JSON_CHARS // 2),
        "{a}" * (MAX_JSON_CHARS // 3),
        "```" * (MAX_JSON_CHARS // 3),
        '{"a": "' + "x" * (MAX_JSON_CHARS - 20) + '"}',
    ],
)
def test_json_long_adversarial_text_is_bounded(text):
    t0 = time.perf_counter()
    _check_json_result(parse_json_object(text))
    assert time.perf_counter() - t0 < 5.0


# =========================================================================== clean_text


@FAST
@given(ANY_TEXT)
def test_clean_text_any_unicode_is_text_or_a_reason(raw):
    text, why = clean_text(raw)
    if text is None:
        assert why in CLEAN_REJECTS
    else:
        assert why == "" and words(text) and text == text.strip() and "\r" not in text
        assert "\n\n\n" not in text


@pytest.mark.parametrize("raw", [None, b"bytes", 5, ["a list"], {"a": 1}])
def test_clean_text_and_candidate_non_text_is_empty(raw):
    assert clean_text(raw) == (None, REJECT_EMPTY)
    assert clean_candidate(raw, "a fine film") == (None, REJECT_EMPTY)


# Plain sentences: letters, digits, inner punctuation; never chatter, quotes or markup.
SENTENCE = (
    st.lists(
        st.text(st.characters(categories=["L", "Nd"], exclude_characters="ºª"), min_size=1, max_size=8),
        min_size=1,
        max_size=8,
    )
    .map(" ".join)
    .filter(lambda s: not re.match(r"(?i)(sure|okay|ok|certainly|of course|here|the|output|answer|result|response)\b", s))
    .filter(lambda s: clean_text(s) == (s, ""))
)  # fmt: skip
CHATTER = st.sampled_from(
    ["", "Sure! ", "Okay, ", "Here is the answer: ", "Answer: ", "Output - ", "Sure! Answer: "]
)
WRAP = st.sampled_from(["{}", '"{}"', "“{}”", "**{}**", "```\n{}\n```", "  {}\n\n", "'{}"])


@FAST
@given(SENTENCE, CHATTER, WRAP)
@example("Surely one of the best films", "", "{}")
@example("Okra soup", "Sure! ", "{}")
@example("Result-oriented directing", "", "{}")
def test_clean_text_recovers_a_sentence_from_chatter_and_markup(sentence, chatter, wrap):
    assert clean_text(chatter + wrap.replace("{}", sentence)) == (sentence, "")


# ====================================================================== strip_quotes


def _strip_quotes_by_slicing(s: str) -> str:
    """The original (quadratic) definition: the oracle for the index-based one."""
    s = s.strip()
    while len(s) >= 2 and s[0] in _QUOTES and s[-1] in _QUOTES:
        s = s[1:-1].strip()
    if s and s[0] in _QUOTES and s.count(s[0]) == 1:
        s = s[1:].strip()
    return s


@settings(max_examples=300, deadline=None)
@given(
    st.text(st.sampled_from([*_QUOTES, " ", "\t", "\n", "\u3000", "\x1c", "a", "b"]), max_size=30)
)
def test_strip_quotes_is_unchanged_by_the_linear_rewrite(s):
    assert strip_quotes(s) == _strip_quotes_by_slicing(s)


def test_strip_quotes_is_linear_on_a_long_run_of_quotes():
    t0 = time.perf_counter()
    assert strip_quotes("`" * 1_000_000) == ""
    assert strip_quotes('"' * 500_000 + "x" + '"' * 500_000) == "x"
    assert time.perf_counter() - t0 < 2.0  # was ~50 s


# ============================================================ counterfactual_checks


@FAST
@given(
    ANY_TEXT,
    ANY_TEXT,
    st.none() | st.text(ANY_CHAR, max_size=20),
    st.lists(st.text(ANY_CHAR, max_size=10), max_size=3),
    st.none() | st.floats(0.0, 1.0),
)
def test_clean_candidate_any_input_is_text_or_a_reason(raw, original, noun, labels, frac):
    text, why = clean_candidate(
        raw, original, noun=noun, label_names=labels, max_edit_fraction=frac
    )
    if text is None:
        assert why in CANDIDATE_REJECTS
        return
    assert why == "" and words(text) and "\n" not in text and text == text.strip()
    assert words(text) != words(original)
    assert len(text) <= 3.0 * max(len(original), 40)
    if frac is not None:
        assert word_edit_distance(original, text) <= max(3, int(frac * len(words(original))))


@FAST
@given(ANY_TEXT)
def test_cut_trailer_is_a_prefix(s):
    cut = cut_trailer(s)
    assert s.strip().startswith(cut) or cut == s


NOUN = st.sampled_from(["movie review", "sentence", "news article", "headline"])
LABELS = st.lists(
    st.sampled_from(["positive", "negative", "sport", "tech"]), min_size=1, max_size=3
)


@FAST
@given(SENTENCE, NOUN, LABELS, st.data())
def test_clean_candidate_prompt_echoes_are_stripped_or_rejected(original, noun, labels, data):
    label = data.draw(st.sampled_from(labels))
    frame = data.draw(
        st.sampled_from(
            [f"{noun} ({label}): ", f"Rewritten {noun} ({label}): ", f"({label}): ", f"{noun}: "]
        )
    )
    kw = dict(noun=noun, label_names=labels)
    # The original echoed back under the prompt's own framing: an echo, not an edit.
    assert clean_candidate(frame + original, original, **kw) == (None, REJECT_ECHO)
    # An edit under the framing (and quotes, chatter): the edit alone.
    edit = original + " not"
    assume(words(edit) != words(original))
    chatter = data.draw(st.sampled_from(["", "Sure! "]))
    assert clean_candidate(f'{chatter}{frame}"{edit}"', original, **kw) == (edit, "")
    # Only the framing: nothing left.
    assert clean_candidate(frame, original, **kw)[1] in (REJECT_EMPTY, REJECT_ECHO)


@pytest.mark.parametrize(
    "sentence",
    ["Surely the best film", "Okra and rice", "Result-oriented directing", "Text-book thriller"],
)
def test_clean_candidate_keeps_words_that_only_start_like_chatter(sentence):
    assert clean_candidate(sentence, "a dull film") == (sentence, "")


# ========================================================== responses on the wire


def _check_chat_result(res) -> None:
    assert isinstance(res.error, str) and isinstance(res.candidates, list)
    assert isinstance(res.generated_tokens, int) and res.generated_tokens >= 0
    assert isinstance(res.prompt_tokens, int) and res.prompt_tokens >= 0
    if res.error:
        assert res.error_kind in ERROR_KINDS and res.candidates == []
    else:
        assert res.error_kind == "" and res.candidates
    # What `chat_stage` builds from a result (a lone surrogate here failed the batch).
    pa.array([res.candidates], type=pa.list_(pa.string()))
    pa.array([res.error, res.error_kind], pa.string())


CHOICE = st.fixed_dictionaries(
    {},
    optional={
        "message": st.fixed_dictionaries(
            {}, optional={"content": JSON_VALUES, "role": st.just("assistant")}
        )
        | JSON_VALUES,
        "text": JSON_VALUES,
    },
)
RESPONSE = st.fixed_dictionaries(
    {},
    optional={
        "choices": st.lists(CHOICE | JSON_VALUES, max_size=4) | JSON_VALUES,
        "usage": st.dictionaries(
            st.sampled_from(["completion_tokens", "prompt_tokens"]), JSON_VALUES
        )
        | JSON_VALUES,
        "error": JSON_VALUES,
        "detail": JSON_VALUES,
    },
)


@FAST
@given(RESPONSE | JSON_VALUES)
@example({"choices": [{"message": {"content": "a\ud800"}}]})
@example({"error": {"message": "\udfff"}})
def test_parse_chat_response_any_json_is_a_result(obj):
    _check_chat_result(parse_chat_response(obj))


@FAST
@given(
    st.none() | st.integers(-5, 700),
    st.binary(max_size=300) | ANY_TEXT | JSONISH | RESPONSE.map(json.dumps),
)
@example(200, '{"choices": [{"text": "\\udc00"}]}')
@example(502, '{"detail": ["\\ud800"]}')
def test_parse_http_result_any_status_and_body_is_a_result(status, body):
    _check_chat_result(parse_http_result(status, body))


@pytest.mark.parametrize("frames", [0, 25])
@pytest.mark.parametrize("status", [200, 500])
def test_parse_http_result_deep_bodies_at_every_depth(status, frames):
    """Nested just below the decoder's limit, a body used to decode and then raise
    RecursionError one frame deeper, while its error message was being built. Which
    depth that is depends on the stack, so every depth up to the limit is tried."""
    for depth in range(600, 1010):
        inner = "[" * depth + "]" * depth
        for body in (
            '{"x":' * depth + "1" + "}" * depth,
            '{"error": ' + inner + "}",
            '{"error": {"message": ' + inner + "}}",
            '{"detail": ' + inner + "}",
        ):
            _check_chat_result(_deep(frames, lambda b=body: parse_http_result(status, b)))


def test_surrogates_in_answers_and_errors_become_replacement_characters():
    res = parse_http_result(200, '{"choices": [{"message": {"content": "a\\ud800b"}}]}')
    assert res.candidates == ["a\ufffdb"] and res.error == ""
    res = parse_http_result(503, '{"error": {"message": "bad \\udc00"}}')
    assert res.error == "HTTP 503: bad \ufffd" and res.error_kind == "http_5xx"


@FAST
@given(
    st.lists(
        st.fixed_dictionaries({"role": JSON_VALUES, "content": JSON_VALUES})
        | st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=3)
        | JSON_VALUES,
        max_size=4,
    )
    | JSON_VALUES
)
@example([{"role": "user", "content": "a\ud800"}])
@example([{"role": "\udc00", "content": "a"}])
def test_normalize_messages_gives_sendable_messages_or_value_error(messages):
    try:
        msgs = normalize_messages(messages)
    except ValueError:
        return
    assert msgs and all(set(m) == {"role", "content"} for m in msgs)
    request_key("m", msgs, Sampling())  # a lone surrogate here raised UnicodeEncodeError
    json.dumps(msgs, ensure_ascii=False).encode("utf-8")


# ================================================================== the request cache


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.text(st.characters(), max_size=40), min_size=1, max_size=4),
    st.integers(0, 2**40),
    ANY_TEXT | JSONISH,
)
def test_cache_round_trips_any_answer_and_a_damaged_value_is_a_miss(cands, tokens, junk):
    with RequestCache(":memory:") as cache:
        answer = CachedAnswer(cands, tokens, tokens // 2)
        cache.put_many([("k", "m", answer)])
        assert cache.get_many(["k"]) == {"k": answer}
        try:
            with cache._db:
                cache._db.execute("UPDATE answers SET candidates = ?", (junk,))
        except (sqlite3.Error, UnicodeEncodeError):
            return  # not storable at all: nothing to read back
        got = cache.get_many(["k"])
        assert got == {} or (
            got["k"].candidates and all(isinstance(c, str) for c in got["k"].candidates)
        )
