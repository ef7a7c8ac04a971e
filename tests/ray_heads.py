"""Stopping a `ray start --head` node that a test started, and nothing else."""

from __future__ import annotations

import contextlib
from pathlib import Path


def stop_processes_under(temp_dir: Path) -> None:
    """Stop this head node's processes only. `ray stop` (with or without --force) kills
    every Ray process on the machine, including other users' clusters and jobs (a test
    run beside a `raydistill run` killed its raylet); the processes of this head all name
    its own --temp-dir on their command lines."""
    import psutil

    mine = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(str(temp_dir) in part for part in p.info["cmdline"] or []):
                mine.append(p)
        except psutil.Error:
            continue
    for p in mine:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(mine, timeout=20)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
