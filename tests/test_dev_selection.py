"""Dev selection of explaining mcqa students generates answers only.

An explaining student is selected on its answer accuracy, so writing explanations at each
dev evaluation is pure generation cost. These tests pin that the shortcut selects on the
same score the full prediction gives: the multitask student skips its "explain:" task,
and an "explain"-mode student stops at its "because", with the answer text unchanged.
"""

from __future__ import annotations

import pytest
import torch

from raydistill.registry import resolve_model
from raydistill.training.student_kinds import KindSettings, make_kind
from raydistill.training.task_metrics import parse_answer, split_explanation

ROWS = [
    {
        "id": f"q{i}",
        "question": q,
        "choices": ["bank", "library", "beer"],
        "answer": a,
        "explanation": "libraries lend books",
    }
    for i, (q, a) in enumerate(
        [("Where are books?", 1), ("Where is money kept?", 0), ("What do anglers drink?", 2)]
    )
]


def _kind(mode: str):
    return make_kind(KindSettings("causal_lm", "mcqa", [], 64, 12, None, mode))


class Counting:
    """Wraps a kind's `generate` to record the prompts and stop of every call."""

    def __init__(self, kind):
        self.calls: list[tuple[list[str], str | None]] = []
        inner = kind.generate

        def generate(model, tok, prompts, stop=None):
            self.calls.append((list(prompts), stop))
            return inner(model, tok, prompts, stop)

        kind.generate = generate


@pytest.fixture(scope="module")
def tiny():
    from transformers import AutoModelForCausalLM

    path = resolve_model("tiny-llama")
    torch.manual_seed(0)
    return path, AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def test_multitask_dev_skips_the_explain_task_and_scores_the_same(tiny):
    path, model = tiny
    kind = _kind("multitask")
    tok = kind.tokenizer(path)
    spy = Counting(kind)
    full = kind.predict(model, tok, ROWS)
    assert [c[0][0].split(":")[0] for c in spy.calls] == ["predict", "explain"]
    spy.calls.clear()
    short = kind.predict(model, tok, ROWS, answers_only=True)
    assert [c[0][0].split(":")[0] for c in spy.calls] == ["predict"]
    assert short == [split_explanation(f)[0] for f in full]
    spy.calls.clear()
    assert kind.dev_score(model, tok, ROWS) == kind.metrics(full, ROWS)["score"]
    assert len(spy.calls) == 1


def _overfit(path, kind, tok, steps: int = 120):
    """A tiny LM that answers every prompt with "library because libraries lend books"
    (greedy): the explain-mode target of ROWS with the answer set to "library"."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    data = kind.encode(tok, [dict(r, answer=1) for r in ROWS], 64)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        loss, _ = kind.loss(model, data)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_explain_mode_dev_stops_at_because_with_the_same_answer(tiny):
    path, _ = tiny
    kind = _kind("explain")
    tok = kind.tokenizer(path)
    target = "library because libraries lend books"
    model = _overfit(path, kind, tok)
    full = kind.predict(model, tok, ROWS)
    if full != [target] * len(ROWS):
        pytest.fail(f"the tiny model did not learn its one answer: {full}")
    spy = Counting(kind)
    short = kind.predict(model, tok, ROWS, answers_only=True)
    assert spy.calls[0][1] == " because"
    # stopped right after "because": the explanation was never written
    assert all(s.endswith("because") and "lend" not in s for s in short), short
    assert [parse_answer(s, r["choices"]) for s, r in zip(short, ROWS, strict=True)] == [1, 1, 1]
    assert (
        kind.dev_score(model, tok, ROWS)
        == kind.metrics(full, ROWS)["score"]
        == pytest.approx(1 / 3)
    )
