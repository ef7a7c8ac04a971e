"""Start or join a Ray cluster.

`RAY_ADDRESS` (set by `ray job submit`, or by a user pointing at a head node) wins over the
recipe: the same command then runs on the laptop's local cluster or on a real one.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from raydistill.config import ClusterConfig

log = logging.getLogger(__name__)
_session: dict[str, Any] = {"started_here": False}


def runtime_env() -> dict[str, Any]:
    """Environment the workers need to find the same data, caches and models."""
    keep = ("RAYDISTILL_DATA_DIR", "RAYDISTILL_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    # Quiet, deterministic CPU workers: one BLAS pool per worker, no tokenizer threads.
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")  # weight-load reports drown the logs
    # Ray Train V2 patches `print` on its workers to log through the root logger and, since
    # Ray itself replaces sys.stdout in every worker, also to print it: every line a
    # worker printed (ours before, DeepSpeed's still) reached its .out and .err logs, and the
    # driver's console under log_to_driver, twice. Unpatched, a print is written once.
    env.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    return {"env_vars": env}


def ensure_ray(cfg: ClusterConfig | None = None) -> dict[str, Any]:
    """Init Ray once per process; return a short description of the cluster."""
    import ray
    import ray.data  # installs its console handler now, so it is quieted below

    from raydistill.console import is_verbose, quiet_libraries

    cfg = cfg or ClusterConfig()
    verbose = is_verbose()
    quiet_libraries()
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS") or cfg.address
        # Quiet by default: workers' stdout/stderr stay in the Ray session's logs (and the
        # dashboard); progress reaches the driver through counters (raydistill.progress),
        # errors as the exceptions Ray raises on the driver. --verbose echoes them again.
        kwargs: dict[str, Any] = {"log_to_driver": verbose}
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
        _session["started_here"] = not address
    if not verbose:
        # Ray Data's own bars would draw over the stage lines (`annotate`, `generate`).
        ray.data.DataContext.get_current().enable_progress_bars = False
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


def save_session_logs(logs_dir: str | Path, copy_limit_mb: float = 256) -> Path | None:
    """Where this run's Ray logs are, written into `logs_dir` (the run's `out_dir/logs`):
    a README naming the Ray session folder, its logs folder, the job id and the dashboard;
    for a cluster this process started (its session folder is on this machine and
    nobody else's jobs are in it) also a copy of the session's logs under
    `ray/<session>/`, unless they exceed `copy_limit_mb`. Called at the end of a command
    and on failure; never raises (the logs must not hide the run's own error)."""
    try:
        import ray

        if not ray.is_initialized():
            return None
        logs_dir = Path(logs_dir)
        logs_dir.mkdir(parents=True, exist_ok=True)
        node = getattr(ray._private.worker, "_global_node", None)
        session = Path(node.get_session_dir_path()) if node is not None else None
        ray_logs = Path(node.get_logs_dir_path()) if node is not None else None
        lines = [
            "# Logs of this run",
            "",
            "- `driver.log`: the driver's log, every level of raydistill and INFO and above "
            "of the libraries (Ray, Ray Data, Serve, DeepSpeed, transformers), one block per "
            "command run into this folder.",
            f"- Ray job id: `{ray.get_runtime_context().get_job_id()}`",
            f"- Ray dashboard: {_dashboard_url() or 'not running'} (Jobs, Logs, Metrics tabs)",
            f"- Ray session folder (on the head node): `{session}`",
            f"- Ray logs, workers' stdout/stderr included (`worker-*.out/.err`, "
            f"`train/`, `ray-data/`, `serve/`): `{ray_logs}`",
        ]
        if _session["started_here"] and ray_logs is not None and ray_logs.is_dir():
            size = sum(f.stat().st_size for f in ray_logs.rglob("*") if f.is_file())
            dest = logs_dir / "ray" / (session.name if session else "session")
            if size <= copy_limit_mb * 2**20:
                try:
                    shutil.copytree(
                        ray_logs, dest, dirs_exist_ok=True, ignore_dangling_symlinks=True
                    )
                    lines.append(
                        f"- A copy of those Ray logs, taken as the command ended: `{dest}`"
                    )
                except (shutil.Error, OSError) as e:  # a log rotated away mid-copy
                    lines.append(f"- A partial copy of those Ray logs: `{dest}` ({str(e)[:200]})")
            else:
                lines.append(
                    f"- Not copied here: {size / 2**20:.0f} MiB is over the "
                    f"{copy_limit_mb:.0f} MiB limit; the session folder keeps them until "
                    "the machine's temp folder is cleaned."
                )
        else:
            lines.append(
                "- This run joined a cluster: the Ray logs stay on its nodes; read them on "
                "the dashboard or with `ray logs` / `ray job logs <submission id>`."
            )
        readme = logs_dir / "README.md"
        readme.write_text("\n".join(lines) + "\n")
        return readme
    except Exception as e:  # a partial copy (a log rotated away mid-copy) included
        log.warning("could not save the Ray session's logs to %s: %s", logs_dir, e)
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
        log.warning(p)  # on the console too (WARNING passes the quiet filter)
    return problems
