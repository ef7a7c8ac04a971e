"""Stage timing and peak memory for a job, printed as it goes and kept for the report.

Memory is the node's memory in use (total − available) sampled every half second while
a stage runs: Ray's workers, the Serve replicas and the driver are separate processes, so
one process's RSS would miss most of it. On a multi-node cluster this is the driver's
node only (the report says so).
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)


def node_memory_used_mb() -> float:
    import psutil

    vm = psutil.virtual_memory()
    return (vm.total - vm.available) / 2**20


class _PeakSampler:
    def __init__(self, every_s: float, probe) -> None:
        self.every_s = every_s
        self.probe = probe
        self.peak = probe()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rd-mem-sampler")

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.peak = max(self.peak, self.probe())

    def __enter__(self) -> _PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.probe())


class Stopwatch:
    """`with sw.stage("teacher"): ...` → `sw.t["teacher"]` seconds, `sw.peak_mb["teacher"]`.

    Each stage is also a line on the progress console (`progress.py`): opened here, fed
    by whoever knows the counts (rows, requests, steps, students), closed here with the
    time and memory peak. The log file gets the same as a DEBUG line.
    """

    def __init__(self, sample_every_s: float = 0.5, probe=node_memory_used_mb) -> None:
        self.t: dict[str, float] = {}
        self.peak_mb: dict[str, float] = {}
        self.sample_every_s = sample_every_s
        self.probe = probe

    def stage(self, name: str):
        from raydistill.progress import console

        sw = self

        class _Stage:
            def __enter__(self):
                self.t0 = time.perf_counter()
                self.sampler = _PeakSampler(sw.sample_every_s, sw.probe).__enter__()
                log.debug("stage %s …", name)
                console().open(name)

            def __exit__(self, exc_type, *exc):
                self.sampler.__exit__(exc_type, *exc)
                took = time.perf_counter() - self.t0
                sw.t[name] = round(sw.t.get(name, 0.0) + took, 2)
                sw.peak_mb[name] = round(max(sw.peak_mb.get(name, 0.0), self.sampler.peak))
                summary = f"(node memory peak {sw.peak_mb[name] / 1024:.1f} GiB)"
                if exc_type is not None:
                    summary += f", failed: {exc_type.__name__}"
                log.debug("stage %s done in %.1fs %s", name, took, summary)
                console().close(name, summary)

        return _Stage()
