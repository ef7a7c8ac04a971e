"""Fault 2: a Ray Train worker killed mid-student.

The fit survives (`FailureConfig(max_failures>=1)`), skips the jobs already reported, and
resumes the job in flight from its latest partial checkpoint, ending with the result an
uninterrupted fit gets. The round trip of the training state itself is checked without
Ray first: a resumed loop must take exactly the steps the uninterrupted one takes.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from raydistill.config import ConfigError, DataConfig, StudentConfig
from raydistill.pipelines.datasets import load_split
from raydistill.registry import resolve_model
from raydistill.training.train_state import (
    JobCheckpoints,
    LoopState,
    checkpoint_steps,
    load_partial,
    save_partial,
)


def _toy(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return model, opt


def _steps(model, opt, rng, n: int) -> None:
    for _ in range(n):
        x = torch.from_numpy(rng.standard_normal((4, 6)).astype(np.float32))
        loss = model(x).pow(2).mean()  # dropout draws from the torch RNG
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_partial_checkpoint_resumes_the_exact_trajectory(tmp_path):
    ref, ref_opt = _toy()
    rng = np.random.default_rng(3)
    _steps(ref, ref_opt, rng, 5)
    best = {k: v.clone() for k, v in ref.state_dict().items()}
    save_partial(
        str(tmp_path),
        0,
        weights=ref.state_dict(),
        best=best,
        optimizer=ref_opt,
        state=LoopState(step=5, best_score=0.5, best_step=5, history=[{"step": 5}]),
        rng_state=rng.bit_generator.state,
        perm=torch.tensor([2, 0, 1]),
    )
    _steps(ref, ref_opt, rng, 7)  # the uninterrupted run goes on

    model, opt = _toy(seed=99)  # a fresh process: other weights, no optimizer state
    rng2 = np.random.default_rng(0)
    got = load_partial(str(tmp_path), 0, model=model, optimizer=opt, rng=rng2)
    assert got.state.step == 5 and got.state.best_step == 5 and got.optimizer_restored
    assert got.perm.tolist() == [2, 0, 1]
    assert set(got.best) == set(best)
    _steps(model, opt, rng2, 7)
    for (k, a), b in zip(ref.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    # Without the optimizer state the trajectory differs: the test above can fail.
    model3, opt3 = _toy(seed=99)
    load_partial(str(tmp_path), 0, model=model3, optimizer=None, rng=np.random.default_rng(0))
    _steps(model3, opt3, np.random.default_rng(0), 7)
    assert not torch.equal(model3[0].weight, ref[0].weight)
    # Safetensors and JSON only: nothing in a partial checkpoint is a pickle.
    assert sorted(p.suffix for p in tmp_path.iterdir()) == sorted(
        [".safetensors"] * 4 + [".json"] * 3
    )


def test_checkpoint_cadence_and_config():
    assert checkpoint_steps(0, 10, 100) == 0
    assert checkpoint_steps(2, 10, 100) == 20
    assert checkpoint_steps(0.5, 3, 100) == 2
    assert checkpoint_steps(20, 10, 100) == 0  # not before the job's own end
    assert JobCheckpoints(5, 0, 0, report_partial=None).every_epochs == 0  # no reporter, no saves
    with pytest.raises(ConfigError, match="student.max_failures"):
        StudentConfig(max_failures=-1)
    with pytest.raises(ConfigError, match="student.checkpoint_every"):
        StudentConfig(checkpoint_every="often")


# --------------------------------------------------------------- real Ray Train


def _jobs(rows: list[dict], checkpoint_every: float):
    from raydistill.training.loop import TrainJob

    def job(name: str, epochs: int, every: float):
        return TrainJob(
            name=name,
            backbone=resolve_model("tiny-bert"),
            label_names=["negative", "positive"],
            train_rows=rows,
            dev_rows=rows[:32],
            test_rows=rows[32:],
            num_layers=None,
            lr=3e-3,
            epochs=epochs,
            batch_size=8,
            max_length=32,
            eval_every=20,
            zero_stage=0,
            seed=1,
            checkpoint_every=every,
        )

    # Job 0 finishes before the kill; job 1 is long (4 steps/epoch/worker, 480 steps)
    # and checkpoints every 20 epochs; job 2 has not started.
    return [job("first", 20, 0), job("long", 120, checkpoint_every), job("last", 20, 0)]


def _train_workers() -> list:
    """This test process's Ray Train worker processes (the local cluster is our child;
    other sessions' workers on the machine are left alone)."""
    import psutil

    out = []
    for p in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(p.cmdline()):
                out.append(p)
        except psutil.Error:
            continue
    return out


def _registered_partial(storage: Path, name: str, job_index: int = 1) -> str | None:
    """Wait for a partial checkpoint of job `job_index` that the controller has
    registered; return its folder name (None after 10 minutes). Files in storage are not
    enough: every rank uploads before the report reaches the controller, and a fault in
    between rightly resumes from the checkpoint before (CI hit exactly that). The
    controller's snapshot names what is registered."""
    deadline = time.time() + 600
    snapshot = storage / name / "checkpoint_manager_snapshot.json"
    while time.time() < deadline:
        try:
            registered = snapshot.read_text()
        except OSError:
            registered = ""
        for d in (storage / name).glob(f"partial_{job_index:04d}_*"):
            if d.name in registered:
                return d.name
        time.sleep(0.05)
    return None


def _kill_after_partial(storage: Path, name: str, fired: dict) -> None:
    """SIGKILL one Train worker once job 1 has a registered partial checkpoint."""
    partial = _registered_partial(storage, name)
    deadline = time.time() + 60
    while partial and time.time() < deadline:
        workers = _train_workers()
        if workers:
            fired["partial"] = partial
            fired["pid"] = workers[-1].pid
            fired["at"] = time.time()
            workers[-1].kill()
            return
        time.sleep(0.05)


def _weights(ckpt, dest: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    d = Path(ckpt.to_directory(str(dest)))
    return load_file(str(d / "model.safetensors"))


@pytest.mark.slow
@pytest.mark.ray
def test_worker_killed_mid_student_resumes_to_the_same_result(ray_session, tmp_path):
    from raydistill.training.fit import fit_jobs

    rows = [r for r in load_split(DataConfig(task="sst2"), "train") if len(r["text"]) < 120][:96]
    tmp = Path(tempfile.gettempdir())

    def ours() -> set[Path]:  # final-checkpoint folders of these jobs' names
        return {p for j in ("first", "long", "last") for p in tmp.glob(f"rd-{j}-*")}

    tmp_before = ours()

    def fit(name: str, every: float):
        return fit_jobs(
            _jobs(rows, every),
            num_workers=2,
            storage_path=str(tmp_path / "ray"),
            name=name,
            threads_per_worker=1,
            max_failures=1,
        )

    plain = fit("plain", 0)
    with_ckpts = fit("ckpts", 20)
    fired: dict = {}
    killer = threading.Thread(
        target=_kill_after_partial, args=(tmp_path / "ray", "killed", fired), daemon=True
    )
    killer.start()
    t0 = time.time()
    killed = fit("killed", 20)
    killer.join(timeout=5)
    assert fired.get("pid"), "the worker was never killed: the test proved nothing"
    m_long = killed[1][0]
    print(
        f"FAULT worker-kill: killed worker {fired['pid']} after {fired['partial']}; fit "
        f"{time.time() - t0:.1f}s; long job resumed from step {m_long['resumed_from_step']} "
        f"of {m_long['steps']}"
    )

    names = [m["job"] for m, _ in killed]
    assert names == ["first", "long", "last"]  # every job once, in order
    assert 0 < m_long["resumed_from_step"] < m_long["steps"], m_long
    assert m_long["optimizer_restored"] is True
    assert killed[0][0]["resumed_from_step"] == 0  # finished before the kill: not redone
    # It resumed from the checkpoint the kill came after (or a later one): what the
    # failure cost is the steps since then, fewer than the cadence (20 epochs x 4 steps).
    assert m_long["resumed_from_step"] >= int(fired["partial"].split("_")[2])

    for i, ((mp, cp), (mc, _cc), (mk, ck)) in enumerate(
        zip(plain, with_ckpts, killed, strict=True)
    ):
        assert mp["accuracy"] == mc["accuracy"] == mk["accuracy"], (i, mp, mk)
        assert mp["dev_accuracy"] == mk["dev_accuracy"] and mp["best_step"] == mk["best_step"]
        wp = _weights(cp, tmp_path / "out" / f"p{i}")
        wk = _weights(ck, tmp_path / "out" / f"k{i}")
        diff = max((wp[k] - wk[k]).abs().max().item() for k in wp)
        assert diff < 1e-5, (i, diff)

    # Partial checkpoints are pruned to the latest; finished jobs are all kept.
    left = sorted(p.name for p in (tmp_path / "ray" / "killed").glob("partial_*"))
    assert len(left) <= 2, left  # the latest committed one (+ the kill's torn upload)
    # Workers' temporary checkpoint folders are removed after upload.
    assert ours() <= tmp_before, sorted(ours() - tmp_before)[:5]


def _provenance(ckpt) -> dict:
    import json

    with ckpt.as_directory() as d:
        return json.loads((Path(d) / "raydistill_train.json").read_text())


@pytest.mark.slow
def test_node_leaving_mid_student_the_fit_finishes_on_the_remaining_node(no_session_ray, tmp_path):
    """Fault 4: a 2-node cluster loses the node of one Train worker mid-job. The group
    restarts on the node that is left (it has the CPUs for both workers) and resumes the
    job in flight from its registered partial checkpoint."""
    import ray
    from ray.cluster_utils import Cluster

    from raydistill.training.fit import fit_jobs

    rows = [r for r in load_split(DataConfig(task="sst2"), "train") if len(r["text"]) < 120][:96]
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "object_store_memory": 500_000_000},
    )
    leaving = cluster.add_node(num_cpus=2, object_store_memory=500_000_000)
    cluster.wait_for_nodes()
    fired: dict = {}

    def remove_after_partial() -> None:
        partial = _registered_partial(tmp_path / "ray", "node-loss")
        if partial:
            fired["partial"] = partial
            fired["at"] = time.time()
            cluster.remove_node(leaving, allow_graceful=False)

    try:
        ray.init(address=cluster.address)
        head_id = ray.get_runtime_context().get_node_id()
        assert leaving.node_id != head_id
        killer = threading.Thread(target=remove_after_partial, daemon=True)
        killer.start()
        t0 = time.time()
        got = fit_jobs(
            _jobs(rows, 20),
            num_workers=2,
            storage_path=str(tmp_path / "ray"),
            name="node-loss",
            threads_per_worker=1,
            max_failures=1,
            placement_strategy="SPREAD",  # one worker per node, and still placeable on one
        )
        killer.join(timeout=5)
        assert fired.get("at"), "the node was never removed: the test proved nothing"
        alive = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
        assert alive == [head_id]
        print(
            f"FAULT node-loss: removed {leaving.node_id[:8]} after {fired['partial']}; "
            f"fit {time.time() - t0:.1f}s; long job resumed from step "
            f"{got[1][0]['resumed_from_step']} of {got[1][0]['steps']}"
        )
    finally:
        ray.shutdown()
        cluster.shutdown()

    assert [m["job"] for m, _ in got] == ["first", "long", "last"]
    first, long, last = (_provenance(c) for _, c in got)
    # Before: one worker on each node (so the removal hit the group); after: the head only.
    assert sorted(first["worker_nodes"]) == sorted([head_id, leaving.node_id]), first
    assert long["worker_nodes"] == [head_id] and last["worker_nodes"] == [head_id]
    m_long = got[1][0]
    assert int(fired["partial"].split("_")[2]) <= m_long["resumed_from_step"] < m_long["steps"]
    assert got[0][0]["resumed_from_step"] == 0
    assert all(0.0 <= m["accuracy"] <= 1.0 for m, _ in got)
