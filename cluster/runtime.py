"""Start or join a Ray cluster.

`RAY_ADDRESS` (set by `ray job submit`, or by a user pointing at a head node) wins over the
recipe: the same command then runs on the laptop's local cluster or on a real one.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from raydistill.config import ClusterConfig

log = logging.getLogger(__name__)


def runtime_env() -> dict[str, Any]:
    """Environment the workers need to find the same data, caches and models."""
    keep = ("RAYDISTILL_DATA_DIR", "RAYDISTILL_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    # Quiet, deterministic CPU workers: one BLAS pool per worker, no tokenizer threads.
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")  # weight-load reports drown the logs
    return {"env_vars": env}


def ensure_ray(cfg: ClusterConfig | None = None) -> dict[str, Any]:
    """Init Ray once per process; return a short description of the cluster."""
    import ray

    cfg = cfg or ClusterConfig()
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS") or cfg.address
        kwargs: dict[str, Any] = {"log_to_driver": True}
        if address:
            # Joining a cluster (e.g. under `ray job submit`): the job's own runtime_env
            # applies; passing another one here fails to merge with it.
            kwargs["address"] = address
        else:
            kwargs["runtime_env"] = runtime_env()
            # A small machine needs logical CPUs above its cores: a Serve replica, a Ray
            # Data stage and the HTTP actors deadlock on exactly 2 (see ray-notes.md).
            kwargs["num_cpus"] = cfg.num_cpus or max(4, 2 * (os.cpu_count() or 2))
            kwargs["include_dashboard"] = cfg.include_dashboard
            if cfg.object_store_memory:
                kwargs["object_store_memory"] = cfg.object_store_memory
        ray.init(**kwargs)
    ctx = ray.get_runtime_context()
    res = ray.cluster_resources()
    info = {
        "address": ctx.gcs_address,
        "nodes": len([n for n in ray.nodes() if n.get("Alive")]),
        "cpus": res.get("CPU", 0),
        "gpus": res.get("GPU", 0),
        "dashboard": getattr(ray, "_private", None) and _dashboard_url(),
    }
    log.info("ray cluster: %s", info)
    return info


def _dashboard_url() -> str | None:
    try:
        import ray

        return ray.worker.get_dashboard_url() or None  # type: ignore[attr-defined]
    except Exception:
        return None


def train_storage(cfg: Any) -> str:
    """Where Ray Train writes checkpoints for run config `cfg` (URI or absolute path)."""
    from raydistill.cluster.storage import train_storage_path

    return cfg.cluster.storage_path or train_storage_path(cfg.out_dir)


def check_storage(cfg: Any) -> list[str]:
    """Warnings, said up front, for paths a multi-node cluster cannot share.

    `out_dir` and `cache_dir` are read and written by actors on every node (the teacher
    folder, the materialized LLM, student checkpoints): on a cluster spanning machines a
    node-local path means files missing elsewhere, which otherwise surfaces much later as
    a confusing FileNotFoundError inside a replica. `out_dir` itself must be a path (the
    run folder holds the ledger and reports); object storage goes in
    `cluster.storage_path`.
    """
    import ray

    from raydistill.cluster.storage import is_remote, shared_storage_problems
    from raydistill.config import ConfigError

    for key in ("out_dir", "cache_dir"):
        value = getattr(cfg, key)
        if value and is_remote(value):
            raise ConfigError(
                f"{key}={value}: must be a path (local, or a mount every node shares); put "
                "checkpoints on object storage with cluster.storage_path=s3://…"
            )
    paths = {"out_dir": cfg.out_dir, "cache_dir": str(cfg.resolved_cache_dir())}
    if cfg.cluster.storage_path:
        paths["cluster.storage_path"] = cfg.cluster.storage_path
    problems = shared_storage_problems(paths, ray.nodes())
    for p in problems:
        log.warning(p)
        print(f"[raydistill] WARNING: {p}", flush=True)
    return problems
