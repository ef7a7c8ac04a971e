"""Student kinds on real local data: one Ray Train + DeepSpeed fit trains each kind briefly.

The tests prove every kind trains on tiny random models; this proves it on real ones:
- ner-minilm: all-MiniLM-L6-v2 (real weights) as a token classifier on 50 CoNLL-2003
  sentences, entity F1 (seqeval) on the test split;
- headlines-t5-tiny: a random 2-layer T5 on BBC article → headline (a plumbing check: a
  random model trained for seconds is expected to score near zero ROUGE-L);
- headlines-smollm2 / cqa-smollm2: SmolLM2-135M-Instruct as a causal-LM student on BBC
  headlines (ROUGE-L) and on CommonsenseQA answers (accuracy).
`untrained` is the same student scored before training (zero-shot for SmolLM2), on the
same test rows. Full sizes are for a GPU or an idle machine; `--quick` fits ~10 minutes
on 2 shared CPU cores. Writes benchmarks/results/student_kinds.{json,md}.

    python -m benchmarks.student_kinds [--quick] [--only ner-minilm,cqa-smollm2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "results" / "student_kinds"
SMOLLM2 = "smollm2-135m-instruct"

# name: (task, kind, backbone, sizes {train, dev, test, epochs, batch}, job knobs)
WORKLOADS: dict[str, dict[str, Any]] = {
    "ner-minilm": dict(
        task="conll2003",
        backbone="all-minilm-l6-v2",
        full=dict(train=50, dev=200, test=None, epochs=20, batch=8),
        quick=dict(train=50, dev=100, test=500, epochs=15, batch=8),
        job=dict(lr=1e-4, head_lr=3e-3, max_length=64, eval_every=5, freeze_embeddings=True),
        student={},
    ),
    "headlines-t5-tiny": dict(
        task="bbc_headlines",
        backbone="tiny-t5",
        full=dict(train=256, dev=32, test=None, epochs=10, batch=8),
        quick=dict(train=64, dev=16, test=50, epochs=8, batch=8),
        job=dict(lr=3e-3, max_length=128, eval_every=4, freeze_embeddings=False),
        student=dict(max_new_tokens=16),
    ),
    "headlines-smollm2": dict(
        task="bbc_headlines",
        backbone=SMOLLM2,
        full=dict(train=400, dev=32, test=None, epochs=1, batch=4),
        quick=dict(train=16, dev=8, test=24, epochs=2, batch=2),
        job=dict(lr=3e-5, max_length=160, eval_every=0, freeze_embeddings=True),
        student=dict(kind="causal_lm", max_new_tokens=16),
    ),
    "cqa-smollm2": dict(
        task="cqa_cose",
        backbone=SMOLLM2,
        full=dict(train=1600, dev=100, test=None, epochs=2, batch=8),
        quick=dict(train=40, dev=16, test=60, epochs=3, batch=4),
        job=dict(lr=3e-5, max_length=96, eval_every=1, freeze_embeddings=True),
        student=dict(kind="causal_lm", max_new_tokens=8, mode="answer"),
    ),
}


def tiny_t5(dest: Path) -> str:
    """A random 2-layer T5 (64 wide) over MiniLM's WordPiece vocabulary."""
    import torch
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    from raydistill.registry import resolve_minilm

    tok = AutoTokenizer.from_pretrained(resolve_minilm())
    torch.manual_seed(0)
    cfg = T5Config(
        vocab_size=len(tok),
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_heads=4,
        decoder_start_token_id=tok.pad_token_id,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.sep_token_id,
    )
    T5ForConditionalGeneration(cfg).save_pretrained(dest)
    tok.save_pretrained(dest)
    return str(dest)


def backbone_dir(name: str, tmp: Path) -> str:
    from raydistill.registry import resolve_model

    if name == "tiny-t5":
        return tiny_t5(tmp / "tiny-t5")
    if name == SMOLLM2:
        local = Path("~/.cache/raydistill/models").expanduser() / SMOLLM2
        if (local / "config.json").exists():
            return str(local)
    return resolve_model(name)


def sample(rows: list[dict], n: int | None, seed: int) -> list[dict]:
    return rows if n is None or n >= len(rows) else random.Random(seed).sample(rows, n)


def build_jobs(names: list[str], quick: bool, tmp: Path):
    from raydistill.config import DataConfig, StudentConfig
    from raydistill.pipelines.datasets import load_split
    from raydistill.pipelines.tasks import spec_for
    from raydistill.training.loop import TrainJob
    from raydistill.training.student_kinds import job_fields

    jobs = []
    for name in names:
        w = WORKLOADS[name]
        size = w["quick" if quick else "full"]
        data = DataConfig(task=w["task"])
        spec = spec_for(data)
        train = sample(load_split(data, "train"), size["train"], 0)
        dev = sample(load_split(data, "dev"), size["dev"], 1)
        test = sample(load_split(data, "test"), size["test"], 2)
        fields = job_fields(StudentConfig(**w["student"]), spec.kind)
        jobs.append(
            TrainJob(
                name=name,
                backbone=backbone_dir(w["backbone"], tmp),
                label_names=list(spec.label_names or []),
                train_rows=train,
                dev_rows=dev,
                test_rows=test,
                num_layers=None,
                epochs=size["epochs"],
                batch_size=size["batch"],
                zero_stage=2,
                seed=0,
                meta={"backbone_name": w["backbone"]},
                **w["job"],
                **fields,
            )
        )
    return jobs


def untrained(job) -> dict[str, float]:
    """The student before training, scored on the job's test rows (in this process)."""
    import torch

    from raydistill.training.student_kinds import kind_for_job

    t0 = time.perf_counter()
    kind = kind_for_job(job)
    tok = kind.tokenizer(job.backbone)
    torch.manual_seed(job.seed)
    model = kind.build(job).eval()
    m = kind.metrics(kind.predict(model, tok, job.test_rows), job.test_rows)
    return {"score": m["score"], "eval_s": round(time.perf_counter() - t0, 1)}


SCORE_NAME = {
    "token_classification": "entity F1",
    "seq2seq": "ROUGE-L F",
    "mcqa": "answer accuracy",
}


def render(res: dict[str, Any]) -> str:
    lines = [
        "# Student kinds on real local data (Ray Train + DeepSpeed ZeRO-2)",
        "",
        f"Command: `{res['command']}`  ",
        f"Mode: {'quick' if res['quick'] else 'full'}; {res['workers']} workers; "
        f"{res['machine']}; fit wall time {res['fit_wall_s']:.0f} s.",
        "",
        "| workload | student kind | backbone | train rows | steps | metric | chance | untrained | "
        "best dev | test | other test metrics | job wall s | step s |",
        "|---|---|---|---:|---:|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    skip = {"score", "dev_accuracy", "dev_score"}
    for r in res["results"]:
        m = r["metrics"]
        extra = ", ".join(
            f"{k} {v:.3f}"
            for k, v in r["metric_values"].items()
            if k not in skip and k != r["primary"]
        )
        base, chance = r.get("untrained"), r.get("chance")
        lines.append(
            f"| {r['name']} | {r['kind']} | {r['backbone']} | {m['train_rows']} | {m['steps']} | "
            f"{r['metric']} | {'' if chance is None else f'{chance:.3f}'} | "
            f"{'' if base is None else f'{base:.3f}'} | {m['dev_score']:.3f} | "
            f"{m['score']:.3f} | {extra} | {m['train_s']:.0f} | {m['step_s']:.0f} |"
        )
    lines += [
        "",
        "Test rows per workload: "
        + ", ".join(f"{r['name']} {r['test_rows']}" for r in res["results"])
        + ".",
        "`job wall s` is the job inside the worker group (build, tokenize, train, dev/test "
        "evaluation, save); `step s` the training steps alone. `untrained` is the same "
        "student before training on the same test rows (for SmolLM2: zero-shot with the "
        "student's prompt); `chance` is the expected accuracy of a uniform guess among the "
        "choices (mcqa). The tiny T5 is random: it checks the seq2seq path end to end, "
        "not summarization quality.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (~10 min on 2 CPU cores)")
    ap.add_argument("--only", default=None, help="comma-separated workload names")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-untrained", action="store_true", help="skip the before-training scores")
    ap.add_argument("--out", default=str(OUT), help="output path without suffix")
    ap.add_argument("--render-only", action="store_true", help="rewrite the .md from the .json")
    args = ap.parse_args(argv)
    if args.render_only:
        res = json.loads(Path(args.out).with_suffix(".json").read_text())
        Path(args.out).with_suffix(".md").write_text(render(res))
        print(render(res))
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    names = args.only.split(",") if args.only else list(WORKLOADS)
    if unknown := [n for n in names if n not in WORKLOADS]:
        ap.error(f"unknown workloads {unknown}; known: {', '.join(WORKLOADS)}")

    import ray
    import torch

    from raydistill.training.fit import fit_jobs

    torch.set_num_threads(max(1, (os.cpu_count() or 1)))
    with tempfile.TemporaryDirectory(prefix="rd-kinds-bench-") as tmp:
        jobs = build_jobs(names, args.quick, Path(tmp))
        env = {k: os.environ[k] for k in ("HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM")}
        env["TRANSFORMERS_VERBOSITY"] = "error"
        for k in ("RAYDISTILL_DATA_DIR", "RAYDISTILL_CACHE"):
            if k in os.environ:
                env[k] = os.environ[k]
        if not ray.is_initialized():
            ray.init(num_cpus=max(4, args.workers + 2), runtime_env={"env_vars": env})
        use_gpu = torch.cuda.is_available()
        t0 = time.perf_counter()
        results = fit_jobs(
            jobs,
            num_workers=args.workers,
            storage_path=str(Path(tmp) / "ray"),
            name="student-kinds-bench",
            use_gpu=use_gpu,
        )
        fit_wall = time.perf_counter() - t0
        before = {} if args.no_untrained else {j.name: untrained(j) for j in jobs}
    out = []
    for job, (m, _ckpt) in zip(jobs, results, strict=True):
        primary = {
            "token_classification": "entity_f1",
            "seq2seq": "rougeL",
            "mcqa": "answer_accuracy",
        }[job.task_kind]
        keys = [k for k in m if isinstance(m[k], float) and k in _METRIC_KEYS]
        out.append(
            {
                "name": job.name,
                "kind": job.kind,
                "task_kind": job.task_kind,
                "backbone": job.meta["backbone_name"],
                "metric": SCORE_NAME[job.task_kind],
                "primary": primary,
                "metric_values": {k: m[k] for k in keys},
                "untrained": before.get(job.name, {}).get("score"),
                "untrained_eval_s": before.get(job.name, {}).get("eval_s"),
                "test_rows": len(job.test_rows),
                "chance": (
                    sum(1 / len(r["choices"]) for r in job.test_rows) / len(job.test_rows)
                    if job.task_kind == "mcqa" and job.test_rows
                    else None
                ),
                "metrics": {
                    k: v for k, v in m.items() if k != "history" and not k.startswith("meta_")
                },
                "history": m.get("history"),
                "settings": {
                    "epochs": job.epochs,
                    "batch_size_per_worker": job.batch_size,
                    "lr": job.lr,
                    "head_lr": job.head_lr,
                    "max_length": job.max_length,
                    "max_new_tokens": job.max_new_tokens,
                    "prompt_format": job.prompt_format,
                    "mode": job.mode,
                    "freeze_embeddings": job.freeze_embeddings,
                    "zero_stage": job.zero_stage,
                },
            }
        )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    res = {
        "command": "python -m benchmarks.student_kinds "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "quick": args.quick,
        "workers": args.workers,
        "machine": (
            f"{os.cpu_count()} CPU cores{' + GPU' if use_gpu else ', no GPU'}, load average "
            f"{load:.1f} at the end, Python {platform.python_version()}"
        ),
        "fit_wall_s": round(fit_wall, 1),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "results": out,
    }
    dest = Path(args.out)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.with_suffix(".json").write_text(json.dumps(res, indent=1, default=str))
    dest.with_suffix(".md").write_text(render(res))
    print(render(res))
    return 0


_METRIC_KEYS = {
    "entity_f1",
    "entity_precision",
    "entity_recall",
    "token_accuracy",
    "rougeL",
    "answer_accuracy",
    "answer_parsed",
    "explanation_rougeL",
}

if __name__ == "__main__":
    raise SystemExit(main())
