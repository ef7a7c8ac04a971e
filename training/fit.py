"""The Ray Train edge of the distillation loop: one TorchTrainer fit over a list of jobs.

`training/loop.py` trains one job on one rank; this module is what Ray Train runs on
every worker (`train_loop_per_worker`) and what drivers call (`fit_jobs`). It owns the
fault tolerance: a worker-group failure (a killed worker, a lost node) is survived up to
`max_failures` times; the restarted group skips the jobs whose checkpoints were reported
and resumes the job in flight from its latest partial checkpoint
(training/train_state.py), so a failure costs at most the steps since that checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import numpy as np
import torch

from raydistill.progress import WorkerProgress, console, follow_workers
from raydistill.training.loop import TrainJob, run_job

log = logging.getLogger(__name__)


def _restart_point(jobs: list[TrainJob]) -> tuple[int, int | None, Any, list[float]]:
    """Where a (re)started worker group begins: (first job index, index of the job to
    resume from a partial checkpoint or None, that checkpoint, dev scores so far).

    Ray Train hands a restarted group its latest reported checkpoint. Jobs run in order,
    so a finished job's checkpoint means every job up to it is done; a partial one means
    its job resumes mid-way.
    """
    import ray.train

    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return 0, None, None, []
    with ckpt.as_directory() as d, open(os.path.join(d, "raydistill_train.json")) as f:
        info = json.load(f)
    i = int(info["job_index"])
    if not 0 <= i < len(jobs) or jobs[i].name != info["job"]:
        raise RuntimeError(
            f"restart checkpoint names job {info.get('job')!r} at index {i}, which is not "
            f"this fit's job {i}: refusing to resume a different job list"
        )
    scores = [float(x) for x in info.get("dev_scores", [])]
    # Logged, not printed: see loop._progress for why worker lines are not prints.
    log.warning(
        "worker group restarted: resuming at job %d/%d (%s%s)",
        i + 1,
        len(jobs),
        info["job"],
        f", step {info['step']}" if info.get("partial") else ", done",
    )
    if info.get("partial"):
        return i, i, ckpt, scores
    return i + 1, None, None, scores


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry: run every job in order on this worker group (from the restart
    point when Ray Train restarted the group after a worker failure)."""
    import uuid

    import ray.train
    import torch.distributed as dist
    from ray.train import Checkpoint

    from raydistill.training.devices import (
        assigned_gpu_ids,
        available_cpus,
        deepspeed_accelerator_name,
        use_deepspeed_accelerator,
    )
    from raydistill.training.train_state import JobCheckpoints

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    # Threads and accelerator from this worker's node and Ray assignment, not the
    # driver's: a driver on a head node without GPUs would otherwise size threads by its
    # own cores, and DeepSpeed picks CUDA on any GPU node, even for a CPU-only worker.
    threads = config.get("threads_per_worker")
    if not threads:
        threads = max(1, available_cpus() // max(1, ctx.get_local_world_size()))
    torch.set_num_threads(int(threads))
    use_deepspeed_accelerator(deepspeed_accelerator_name(assigned_gpu_ids()))
    # Where the workers ran, reported with every job (multi-node runs are checked on it).
    node = ray.get_runtime_context().get_node_id()
    nodes = [node] * world
    # One token per worker-group start names its partial checkpoints: every rank's files
    # must land in the same folder, and a restarted group must not reuse a name.
    token = [uuid.uuid4().hex[:8]]
    if world > 1 and dist.is_initialized():
        dist.all_gather_object(nodes, node)
        dist.broadcast_object_list(token, src=0)
    jobs: list[TrainJob] = config["jobs"]
    first, resume_index, resume_ckpt, dev_scores = _restart_point(jobs)
    # Rank 0 tells the driver's progress line where it is (a no-op without counters).
    counters = config.get("progress") or {}
    tell = WorkerProgress(counters.get("actor") if rank == 0 else None, counters.get("stage"))

    def provenance(ckpt_dir: str, index: int, **extra) -> None:
        # Next to the weights (Ray keeps only scalar-friendly metrics): where it ran and,
        # for a restart, which job it belongs to and the scores so far.
        info = {
            "worker_nodes": sorted(set(nodes)),
            "world_size": world,
            "job": jobs[index].name,
            "job_index": index,
            "dev_scores": list(dev_scores),
            **extra,
        }
        with open(os.path.join(ckpt_dir, "raydistill_train.json"), "w") as f:
            json.dump(info, f)

    def reporter(index: int):
        def report(metrics, ckpt_dir, history):
            # The running mean over the jobs done so far lets Tune's ASHA stop a trial
            # after its first seeds instead of only at the end.
            dev_scores.append(metrics["dev_accuracy"])
            metrics = dict(
                metrics,
                history=history,
                mean_dev_accuracy=float(np.mean(dev_scores)),
                jobs_done=len(dev_scores),
                job_index=index,
                _keep=1e12 + index,  # finished jobs rank above every partial checkpoint
            )
            if ckpt_dir is not None:
                provenance(ckpt_dir, index)
                ray.train.report(
                    metrics,
                    checkpoint=Checkpoint.from_directory(ckpt_dir),
                    delete_local_checkpoint_after_upload=True,
                )
            else:
                ray.train.report(metrics)
            tell.finish(jobs[index].name)

        def report_partial(step: int, ckpt_dir: str) -> None:
            if rank == 0:
                provenance(ckpt_dir, index, partial=True, step=step)
            ray.train.report(
                {
                    "job": jobs[index].name,
                    "partial": True,
                    "job_index": index,
                    "step": step,
                    "_keep": index * 1e7 + step,
                },
                checkpoint=Checkpoint.from_directory(ckpt_dir),
                checkpoint_dir_name=f"partial_{index:04d}_{step:07d}_{token[0]}",
                delete_local_checkpoint_after_upload=True,
            )

        return report, report_partial

    for index in range(first, len(jobs)):
        job = jobs[index]
        report, report_partial = reporter(index)
        if index == resume_index:
            with resume_ckpt.as_directory() as d:
                ckpts = JobCheckpoints(
                    job.checkpoint_every, rank, job.zero_stage, report_partial, resume_dir=d
                )
                run_job(job, rank, world, report, ckpts, on_step=tell.step)
        else:
            ckpts = JobCheckpoints(job.checkpoint_every, rank, job.zero_stage, report_partial)
            run_job(job, rank, world, report, ckpts, on_step=tell.step)


def fit_jobs(
    jobs: list[TrainJob],
    *,
    num_workers: int,
    storage_path: str,
    name: str,
    use_gpu: bool = False,
    threads_per_worker: int | None = None,
    run_callbacks: list | None = None,
    placement_strategy: str = "PACK",
    max_failures: int = 1,
    progress_stage: str | None = None,
    progress_by: str = "jobs",
    progress_initial: int = 0,
) -> list[tuple[dict[str, Any], Any]]:
    """Run jobs in one TorchTrainer; return [(metrics, Checkpoint)] in job order.

    `threads_per_worker=None`: each worker uses its node's cores divided by the workers
    on that node. `progress_stage`: the driver's progress line the workers feed while
    `fit` runs, counting jobs finished (`progress_by="jobs"`, plus `progress_initial`
    done before) or the steps of a single long job (`"steps"`); see raydistill.progress.

    Up to `max_failures` worker-group failures (a killed worker, a lost node) are
    survived: Ray Train restarts the group and it continues from the latest checkpoint
    (`_restart_point`). Partial checkpoints are pruned to the latest; every finished
    job's checkpoint is kept.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    with follow_workers(progress_stage, progress_by, progress_initial) as counters:
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={
                "jobs": jobs,
                "threads_per_worker": threads_per_worker,
                "progress": {"actor": counters, "stage": progress_stage} if counters else None,
            },
            scaling_config=ScalingConfig(
                num_workers=num_workers, use_gpu=use_gpu, placement_strategy=placement_strategy
            ),
            run_config=RunConfig(
                name=name,
                storage_path=storage_path,
                checkpoint_config=CheckpointConfig(
                    num_to_keep=len(jobs) + 1,
                    checkpoint_score_attribute="_keep",
                    checkpoint_score_order="max",
                ),
                failure_config=FailureConfig(max_failures=max_failures),
                callbacks=run_callbacks,
            ),
        )
        # A worker's failure comes back here as the exception Ray Train raises, with the
        # worker's traceback in its message: the console shows it even though workers'
        # output is not echoed (cluster/cli.py prints uncaught errors in full).
        result = trainer.fit()
    if result.error:
        raise result.error
    got = list(result.best_checkpoints or [])
    by_job = {m["job"]: (m, c) for c, m in got if not m.get("partial")}
    missing = [j.name for j in jobs if j.name not in by_job]
    if missing:
        raise RuntimeError(f"training finished without checkpoints for jobs {missing}")
    if progress_stage is not None:
        console().complete(
            progress_stage, None if progress_by == "steps" else progress_initial + len(jobs)
        )
    return [by_job[j.name] for j in jobs]
