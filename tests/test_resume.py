"""A driver killed mid-run (SIGKILL) and the same command run again: it resumes.

The driver is `raydistill run` in a subprocess, joined to a `ray start --head` cluster
that outlives it (as under `ray job submit`, where the cluster is not the driver's). It is
killed twice — once in the middle of counterfactual generation, once after the first
student of the training stage has finished — and the third run finishes without training
that student again. The generator is a scripted
OpenAI-compatible server that counts requests, so "finished requests are not sent
again" is checked on the wire, and the ledger and report must show what was reused.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ray_heads import stop_processes_under

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
WORDS = ["awful", "wonderful", "terrible", "brilliant", "dull", "moving"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _slow_swaps(payload):
    """Swap answers, slowly enough that a kill lands inside generation."""
    from scripted_llm import completion

    time.sleep(0.4)
    n = int((payload or {}).get("n") or 1)
    return 200, completion([WORDS[i % len(WORDS)] for i in range(n)])


@pytest.fixture()
def head(tmp_path, monkeypatch):
    import ray

    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    if ray.is_initialized():
        ray.shutdown()
    gcs = _free_port()
    env = dict(os.environ, PATH=f"{VENV_BIN}:{os.environ['PATH']}", RAY_AUTH_MODE="token")
    tmp = Path("/tmp") / f"rr{os.getpid()}"  # Ray's socket paths must stay short
    cmd = [
        str(VENV_BIN / "ray"), "start", "--head", f"--port={gcs}", "--num-cpus=4",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={_free_port()}", f"--temp-dir={tmp}",
        "--object-store-memory=1000000000", "--disable-usage-stats",
    ]  # fmt: skip
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=180)
    try:
        yield dict(env, RAY_ADDRESS=f"127.0.0.1:{gcs}")
    finally:
        stop_processes_under(tmp)  # not `ray stop`: it kills every Ray cluster here


def _request_key(payload: dict) -> str:
    return json.dumps(
        {k: payload.get(k) for k in ("messages", "n", "seed", "temperature", "max_tokens")},
        sort_keys=True,
    )


def _run_until(cmd, env, log: Path, until) -> int | None:
    """Run the driver; SIGKILL it as soon as `until()` holds. None = it was killed."""
    with log.open("w") as f:
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 600
        while p.poll() is None and time.monotonic() < deadline:
            if until is not None and until():
                p.send_signal(signal.SIGKILL)
                p.wait()
                return None
            time.sleep(0.2)
        if p.poll() is None:
            p.kill()
            raise AssertionError(f"driver did not finish: {log.read_text()[-3000:]}")
        return p.returncode


def _finished_students(out: Path) -> dict[str, list[str]]:
    """Students' Ray Train checkpoints that the controller registered (named in its
    snapshot) and that hold a finished job (not a partial one): job → folder names."""
    found: dict[str, list[str]] = {}
    for run in (out / "ray_train").glob("students-*"):
        snap = run / "checkpoint_manager_snapshot.json"
        try:
            registered = snap.read_text()
        except OSError:
            continue
        for info in run.glob("checkpoint_*/raydistill_train.json"):
            try:
                meta = json.loads(info.read_text())
            except (OSError, ValueError):
                continue
            if not meta.get("partial") and info.parent.name in registered:
                found.setdefault(meta["job"], []).append(info.parent.name)
    return found


def test_driver_killed_twice_then_rerun_resumes(head, tmp_path, data_dir):
    from scripted_llm import ScriptedLLM

    out, cache = tmp_path / "out", tmp_path / "cache"
    with ScriptedLLM(_slow_swaps) as llm:
        cmd = [
            str(VENV_BIN / "raydistill"), "run", "recipes/smoke-cod.yaml",
            f"out_dir={out}", f"cache_dir={cache}", "data.teacher_train_rows=800",
            "student.epochs=4", "pool.backend=openai", f"pool.url={llm.base_url}",
            "pool.model=scripted", "pool.batch_size=2",
        ]  # fmt: skip
        env = dict(head, RAYDISTILL_DATA_DIR=str(data_dir))
        # 1: killed once some generation requests have been answered (and cached).
        assert _run_until(cmd, env, tmp_path / "run1.log", lambda: llm.count >= 4) is None
        first = llm.count
        # 2: killed once the students' Ray Train run has finished (and registered) its
        # first student: the ledger has no row yet (rows land when the fit returns).
        one_done = lambda: len(_finished_students(out)) >= 1  # noqa: E731
        assert _run_until(cmd, env, tmp_path / "run2.log", one_done) is None
        second = llm.count
        trained_before = _finished_students(out)
        assert not (out / "results.jsonl").exists() or not (out / "results.jsonl").read_text()
        # 3: runs to the end.
        rc = _run_until(cmd, env, tmp_path / "run3.log", None)
        log3 = (tmp_path / "run3.log").read_text()
        assert rc == 0, log3[-3000:]
        assert llm.count == second, "run 3 sent requests although generation had finished"
        keys = [_request_key(p) for p in llm.payloads if p]
    print(f"\nrequests: run1 {first}, run2 {second - first}, run3 0; distinct {len(set(keys))}")
    # A request sent twice must have been in flight when run 1 died (at most one batch per
    # Ray Data task); everything answered before the kill came from the cache.
    assert len(keys) - len(set(keys)) <= 4
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["job"] for r in rows) == sorted(
        f"{a}-k8-s0" for a in ("kd", "kd+cod", "lwd", "lwd+cod")
    )
    # Run 3 picked up run 2's Ray Train run (same name) and did not train its finished
    # student again: one finished checkpoint per student, the early one(s) kept.
    assert len(list((out / "ray_train").glob("students-*"))) == 1
    finished = _finished_students(out)
    assert sorted(finished) == sorted(r["job"] for r in rows), finished
    assert all(len(v) == 1 for v in finished.values()), finished
    for job, folders in trained_before.items():
        assert finished[job] == folders, f"{job} was trained again by run 3"
    report = json.loads((out / "report.json").read_text())
    assert report["reused"]["teacher"] is True
    assert report["reused"]["counterfactual_seeds"] == "4 of 4"
    assert "Reused from earlier runs" in (out / "report.md").read_text()
