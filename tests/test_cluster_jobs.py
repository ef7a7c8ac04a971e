"""Real cluster shapes: `ray job submit` to a head node, and a 2-node cluster on one machine.

Both start their own Ray (a `ray start --head` process, or `ray.cluster_utils.Cluster`),
so they first disconnect from the session cluster; later tests reconnect lazily.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ray_heads import stop_processes_under

# Each starts a Ray cluster of its own and runs a smoke job (~2–4 min each on 2 cores):
# outside the 15-minute default run, run by CI's second step (`make test-slow`).
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def wheel_site(tmp_path_factory):
    """raydistill built as a wheel and installed (no deps) into a folder of its own.

    The venv's install is editable; a cluster's is not (launcher setup, Docker image).
    A head node started with this folder first on PYTHONPATH imports the wheel's copy,
    which is what `ray job submit` meets there, with the checkout as working dir on top.
    """
    wheels, site = tmp_path_factory.mktemp("wheels"), tmp_path_factory.mktemp("site")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(ROOT)], check=True, timeout=300)  # fmt: skip
    (wheel,) = wheels.glob("raydistill-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, timeout=300)  # fmt: skip
    return site


@pytest.fixture()
def head_node(tmp_path, no_session_ray, wheel_site):
    """`ray start --head` in its own temp dir, the wheel install first on its path."""
    gcs, dash = _free_port(), _free_port()
    env = dict(
        os.environ,
        PATH=f"{VENV_BIN}:{os.environ['PATH']}",
        RAY_AUTH_MODE="token",
        PYTHONPATH=str(wheel_site),
    )
    tmp = Path("/tmp") / f"rd{os.getpid()}"  # Ray's socket paths must stay short
    cmd = [
        str(VENV_BIN / "ray"), "start", "--head", f"--port={gcs}", "--num-cpus=4",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--temp-dir={tmp}",
        "--object-store-memory=1000000000", "--disable-usage-stats",
    ]  # fmt: skip
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=180)
    try:
        yield f"http://127.0.0.1:{dash}", env, wheel_site
    finally:
        stop_processes_under(tmp)


def test_job_submission_runs_smoke_job(head_node, tmp_path):
    """The CLI as a Ray job on a wheel install: `ray job submit --working-dir . -- …`.

    The checkout is the job's working dir (first on its PYTHONPATH); it must not shadow
    the installed package, and the job must run the wheel's code, not the checkout's.
    """
    from ray.job_submission import JobStatus, JobSubmissionClient

    address, env, site = head_node
    client = JobSubmissionClient(address)
    out, cache = tmp_path / "out", tmp_path / "cache"
    where = "import raydistill, raydistill.cluster.cli as c; print('RAYDISTILL_AT', c.__file__)"
    entry = (
        f'python -c "{where}" && '
        "raydistill run recipes/smoke-cod.yaml "
        f"out_dir={out} cache_dir={cache} data.teacher_train_rows=600 "
        "'experiment.arms=[kd]' student.epochs=5"
    )
    submit = dict(
        entrypoint=entry,
        runtime_env={
            "working_dir": str(ROOT),
            "excludes": [".venv", ".cache", "runs", ".git", "benchmarks/runs"],
            "env_vars": {
                "RAYDISTILL_DATA_DIR": os.environ["RAYDISTILL_DATA_DIR"],
                "RAYDISTILL_CACHE": os.environ["RAYDISTILL_CACHE"],
                "HF_HUB_OFFLINE": "1",
            },
        },
    )
    # The head's job agent comes up a little after `ray start` returns.
    # Up to 3 minutes: on a loaded 2-core machine the agent took over 60 s.
    for attempt in range(90):
        try:
            job_id = client.submit_job(**submit)
            break
        except RuntimeError as e:
            if "No available agent" not in str(e) or attempt == 89:
                raise
            time.sleep(2)
    deadline = time.time() + 600
    status = client.get_job_status(job_id)
    while (
        status not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED)
        and time.time() < deadline
    ):
        time.sleep(3)
        status = client.get_job_status(job_id)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert [r["arm"] for r in report["results"]] == ["kd"]
    assert "raydistill report: sst2" in logs
    at = next(line for line in logs.splitlines() if line.startswith("RAYDISTILL_AT"))
    assert at.split()[1].startswith(str(site)), at


def test_two_node_cluster_generation_and_training(no_session_ray, tmp_path):
    """Generation and 2-worker training spread over two Ray nodes on this machine."""
    import ray
    from ray.cluster_utils import Cluster

    from raydistill.config import load_config
    from raydistill.methods.cod import run

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "object_store_memory": 500_000_000},
    )
    cluster.add_node(num_cpus=2, object_store_memory=500_000_000)
    cluster.wait_for_nodes()
    try:
        ray.init(address=cluster.address)
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        cfg = load_config(
            ROOT / "recipes" / "smoke-cod.yaml",
            [
                f"out_dir={tmp_path / 'out'}",
                f"cache_dir={tmp_path / 'cache'}",
                "data.teacher_train_rows=600",
                "experiment.arms=[kd+cod]",
                "student.epochs=5",
                "student.placement_strategy=STRICT_SPREAD",
                "method.counterfactuals.rounds=1",
            ],
        )
        report = run(cfg)
        assert report["counterfactuals"]["seeds"] == 4
        rows = [
            json.loads(x) for x in (tmp_path / "out" / "results.jsonl").read_text().splitlines()
        ]
        assert len(rows) == 1
        assert len(rows[0]["worker_nodes"]) == 2, rows[0]["worker_nodes"]
    finally:
        ray.shutdown()
        cluster.shutdown()
