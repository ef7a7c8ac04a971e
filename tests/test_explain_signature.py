"""Explain students' resume signatures: what retrains a student and what does not."""

from pathlib import Path


def test_turning_the_judge_on_keeps_the_students_signature():
    from raydistill.config import load_config
    from raydistill.methods.explain import signature

    root = Path(__file__).resolve().parents[1]
    a = load_config(root / "recipes" / "smoke-explain.yaml", [])
    b = load_config(
        root / "recipes" / "smoke-explain.yaml", ["method.judge=true", "method.judge_examples=3"]
    )
    c = load_config(root / "recipes" / "smoke-explain.yaml", ["method.max_revision_ratio=2.0"])
    assert signature(a, None) == signature(b, None) != signature(c, None)


def test_students_that_read_no_llm_output_keep_their_signature_when_the_chain_changes():
    from types import SimpleNamespace

    from raydistill.config import load_config
    from raydistill.methods.explain import signature

    root = Path(__file__).resolve().parents[1]
    a = load_config(root / "recipes" / "smoke-explain.yaml", [])
    chain = ["method.max_revision_ratio=2.0", "method.temperature=0.9", "pool.model=other"]
    b = load_config(root / "recipes" / "smoke-explain.yaml", chain)
    student = load_config(root / "recipes" / "smoke-explain.yaml", ["student.lr=0.5"])

    def job(mode, source):
        return SimpleNamespace(meta={"mode": mode, "source": source})

    for mode, source in [("answer", "human"), ("multitask", "human")]:
        assert signature(a, None, job(mode, source)) == signature(b, None, job(mode, source))
        assert signature(a, None, job(mode, source)) != signature(student, None, job(mode, source))
    for mode, source in [("multitask", "revised"), ("multitask", "original"), ("cf", "human")]:
        assert signature(a, None, job(mode, source)) == signature(a, None)
        assert signature(a, None, job(mode, source)) != signature(b, None, job(mode, source))
