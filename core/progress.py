"""One progress line per stage of a run, on the driver's console.

`Progress` keeps a line per stage, `stage  done/total unit  rate  ETA  note`: redrawn in
place (tqdm) on a terminal; on anything else (CI, `ray job submit` logs, a file) printed
as plain lines when a stage opens, at most every `every_s` seconds while it runs, and
once when it closes, so a log keeps a readable trace instead of a line per step.

Who feeds the lines:
- work the driver sees itself calls `console().update(...)`: annotation rows as Ray Data
  hands them back (`pipelines/soft_labels.py`), LLM requests as the request layer receives
  their answers (`pipelines/llm_requests.py`), report files as they are written;
- Ray Train workers run in other processes, on other nodes on a cluster. Rank 0 bumps
  counters on a small named actor (`StageCounters`, started by `follow_workers`) and the
  driver polls it while `TorchTrainer.fit` blocks. Why an actor: the results ledger is
  written only after `fit` returns; Ray Train V2's callbacks run in the controller actor,
  not in the driver, and fire only on `ray.train.report` (once per student, no step
  counts); a worker's stdout reaches the driver only through `log_to_driver`, which is
  what the quiet console turns off. A named actor is reachable from every worker and from
  the driver on any cluster, holds a few counters, needs no CPU (`num_cpus=0`) and goes
  away with the driver's job. Only the driver that asked for it (`remote_counters`, set by
  the CLI) starts one; library callers and Tune trials get the driver-side lines only.

Plain classes hold the logic (`Progress`, `StageCounters`, `WorkerProgress`); Ray is
imported only inside the functions that create or reach the actor.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

log = logging.getLogger(__name__)

PREFIX = "[raydistill] "
COUNTERS_NAMESPACE = "raydistill"


# ------------------------------------------------------------------- formatting


def format_duration(seconds: float | None) -> str:
    """0:05, 12:34, 1:02:03; '?' when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _singular(unit: str) -> str:
    return unit[:-1] if unit.endswith("s") and len(unit) > 1 else unit


def format_rate(per_s: float | None, unit: str = "") -> str:
    """'12.3 rows/s' for fast work, '8.5 s/student' for slow (a student per minute reads
    better as seconds each than as 0.02/s); '?/s' before the first item is done."""
    if not per_s or per_s <= 0 or not math.isfinite(per_s):
        return "?/s"
    if per_s >= 1:
        return f"{per_s:.1f} {unit}/s".replace(" /s", "/s")
    return f"{1 / per_s:.1f} s/{_singular(unit) or 'it'}"


def format_line(
    stage: str,
    done: int,
    total: int | None,
    elapsed: float,
    unit: str = "",
    *,
    initial: int = 0,
    note: str = "",
) -> str:
    """`stage  done/total unit  rate  ETA m:ss  note`.

    The rate counts only this run's work (`done - initial`: students a rerun found in the
    ledger are not progress made now), so the ETA is what is left at the current pace.
    """
    count = f"{done}/{total}" if total is not None else f"{done}"
    rate = (done - initial) / elapsed if elapsed > 0 and done > initial else None
    eta = (total - done) / rate if rate and total is not None else None
    if total is not None and done >= total:
        eta = 0.0
    parts = [f"{stage:<9}", f"{count} {unit}".rstrip(), format_rate(rate, unit)]
    parts.append(f"ETA {format_duration(eta)}")
    if note:
        parts.append(note)
    return "  ".join(parts)


def format_done(
    stage: str, done: int, total: int | None, elapsed: float, unit: str = "", summary: str = ""
) -> str:
    """The line a stage leaves behind: `stage  done/total unit  done in 1:02  summary`."""
    parts = [f"{stage:<9}"]
    if total is not None or done:
        parts.append((f"{done}/{total}" if total is not None else f"{done}") + f" {unit}".rstrip())
    parts.append(f"done in {elapsed:.1f}s")
    if summary:
        parts.append(summary)
    return "  ".join(parts)


# ---------------------------------------------------------------- the reporter


@dataclass
class _Line:
    stage: str
    unit: str
    total: int | None
    done: int
    initial: int
    t0: float
    note: str = ""
    last_draw: float = -math.inf
    bar: Any = None  # a tqdm instance on a terminal


class Progress:
    """The stage lines of one driver. `tty=None` asks the stream (`isatty`).

    `every_s`: the least time between two plain lines of one stage when not on a
    terminal; on a terminal a line is redrawn at most every `redraw_s`. `clock` is
    injectable so tests drive the throttle without sleeping. `remote_counters`: start a
    counters actor for Ray Train workers (`follow_workers`); the CLI's driver sets it.
    """

    def __init__(
        self,
        stream: IO[str] | None = None,
        *,
        tty: bool | None = None,
        every_s: float = 10.0,
        redraw_s: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
        remote_counters: bool = False,
    ) -> None:
        self.stream = stream
        self.every_s = every_s
        self.redraw_s = redraw_s
        self.clock = clock
        self.remote_counters = remote_counters
        self._lines: dict[str, _Line] = {}
        self._lock = threading.RLock()
        if tty is None:
            isatty = getattr(self._out, "isatty", None)
            tty = bool(isatty and isatty())
        self.tty = tty

    @property
    def _out(self) -> IO[str]:
        # Looked up at write time, like logging's stderr handler: pytest and callers swap it.
        return self.stream if self.stream is not None else sys.stderr

    # .......................................................... public interface

    def current(self) -> str | None:
        """The stage opened last and not closed yet."""
        with self._lock:
            return next(reversed(self._lines), None)

    def open(self, stage: str, total: int | None = None, unit: str = "", initial: int = 0) -> None:
        with self._lock:
            if stage in self._lines:
                self.update(stage, total=total, unit=unit or None, done=initial or None)
                return
            line = _Line(stage, unit, total, initial, initial, self.clock())
            self._lines[stage] = line
            if self.tty:
                line.bar = self._bar()
                self._draw(line, force=True)
            else:
                self._emit(PREFIX + f"{stage} …")
                line.last_draw = line.t0

    def update(
        self,
        stage: str | None = None,
        *,
        done: int | None = None,
        advance: int = 0,
        total: int | None = None,
        add_total: int = 0,
        unit: str | None = None,
        initial: int | None = None,
        note: str | None = None,
    ) -> None:
        """Change a line (the current one when `stage` is None; a stage not open yet is
        opened). Nothing happens when no stage is open: library code may report
        progress whether or not anyone shows it."""
        with self._lock:
            stage = stage or self.current()
            if stage is None:
                return
            if stage not in self._lines:
                self.open(stage)
            line = self._lines[stage]
            if initial is not None:
                line.initial = int(initial)
                line.done = max(line.done, line.initial)
            if total is not None:
                line.total = int(total)
            if add_total:
                line.total = (line.total or 0) + int(add_total)
            if unit is not None:
                line.unit = unit
            if done is not None:
                line.done = int(done)
            line.done += int(advance)
            if note is not None:
                line.note = note
            self._draw(line)

    def complete(self, stage: str, done: int | None = None) -> None:
        """Mark an open stage's work all done (`done`, else its total), e.g. once
        `TorchTrainer.fit` returned: counter updates still in flight from workers that
        already exited must not leave the line short."""
        with self._lock:
            line = self._lines.get(stage)
            if line is not None:
                target = done if done is not None else line.total
                self.update(stage, done=target if target is not None else line.done, note="")

    def close(self, stage: str, summary: str = "") -> None:
        """Leave the stage's final line (`done in …s` and the summary) and drop it."""
        with self._lock:
            line = self._lines.pop(stage, None)
            if line is None:
                return
            text = format_done(
                stage, line.done, line.total, self.clock() - line.t0, line.unit, summary
            )
            if line.bar is not None:
                line.bar.set_description_str(PREFIX + text, refresh=True)
                line.bar.close()
            else:
                self._emit(PREFIX + text)

    def write(self, text: str) -> None:
        """A log line printed above any progress bar instead of through it."""
        with self._lock:
            if self.tty and any(line.bar is not None for line in self._lines.values()):
                from tqdm import tqdm

                tqdm.write(text, file=self._out)
            else:
                self._emit(text)

    # ................................................................ drawing

    def text(self, stage: str) -> str:
        line = self._lines[stage]
        return format_line(
            stage,
            line.done,
            line.total,
            self.clock() - line.t0,
            line.unit,
            initial=line.initial,
            note=line.note,
        )

    def _bar(self):
        from tqdm import tqdm

        # tqdm only draws: `bar_format="{desc}"` shows our own line, so a terminal and a
        # log file read the same; tqdm clears and redraws it in place and keeps log lines
        # written through `tqdm.write` above it.
        return tqdm(total=None, file=self._out, bar_format="{desc}", leave=True, mininterval=0)

    def _draw(self, line: _Line, force: bool = False) -> None:
        now = self.clock()
        wait = self.redraw_s if self.tty else self.every_s
        if not force and now - line.last_draw < wait:
            return
        line.last_draw = now
        text = PREFIX + self.text(line.stage)
        if line.bar is not None:
            line.bar.set_description_str(text, refresh=True)
        else:
            self._emit(text)

    def _emit(self, text: str) -> None:
        out = self._out
        out.write(text + "\n")
        with contextlib.suppress(Exception):
            out.flush()


_console: Progress | None = None


def console() -> Progress:
    """The process's progress reporter (created on first use, on stderr)."""
    global _console
    if _console is None:
        _console = Progress()
    return _console


def set_console(progress: Progress | None) -> Progress | None:
    """Install `progress` as the process's reporter (None: a fresh default on next use);
    returns the previous one."""
    global _console
    prev, _console = _console, progress
    return prev


# ------------------------------------------------- Ray Train workers → driver


class StageCounters:
    """What workers tell the driver about one stage: the job in flight, its step and step
    count, and the jobs finished (by name, so a worker group restarted by Ray Train does
    not count a job twice). Runs as a named actor; a plain class so it is testable."""

    def __init__(self) -> None:
        self._stages: dict[str, dict[str, Any]] = {}

    def _stage(self, stage: str) -> dict[str, Any]:
        return self._stages.setdefault(stage, {"job": None, "step": 0, "steps": 0, "finished": []})

    def step(self, stage: str, job: str, step: int, steps: int) -> None:
        self._stage(stage).update(job=job, step=int(step), steps=int(steps))

    def finish(self, stage: str, job: str) -> None:
        finished = self._stage(stage)["finished"]
        if job not in finished:
            finished.append(job)

    def reset(self, stage: str) -> None:
        self._stages.pop(stage, None)

    def snapshot(self, stage: str) -> dict[str, Any]:
        s = self._stage(stage)
        return {**s, "finished": list(s["finished"])}


def apply_snapshot(
    progress: Progress, stage: str, snap: dict[str, Any], by: str, initial: int = 0
) -> None:
    """Put a counters snapshot on the stage's line.

    `by="steps"` (one long job, the teacher): done/total are its steps. `by="jobs"` (the
    students): done/total are students finished, and the job in flight shows its step.
    """
    if by == "steps":
        if snap.get("steps"):
            progress.update(stage, done=snap["step"], total=snap["steps"], unit="steps")
        return
    finished = snap.get("finished") or []
    job = snap.get("job")
    note = ""
    if job and job not in finished and snap.get("steps"):
        note = f"{job} step {snap['step']}/{snap['steps']}"
    progress.update(stage, done=initial + len(finished), note=note)


_counters: dict[str, Any] = {}


def start_counters() -> tuple[str, Any]:
    """This driver's `StageCounters` actor: (name, handle), started on first use and kept
    for the next stage (one worker process per driver, not one per fit). The name is
    unique per driver, so two drivers on one cluster never share counters."""
    import ray

    key = ray.get_runtime_context().get_job_id()
    if key not in _counters:
        name = f"raydistill-progress-{uuid.uuid4().hex[:12]}"
        actor = (
            ray.remote(num_cpus=0)(StageCounters)
            .options(name=name, namespace=COUNTERS_NAMESPACE, max_restarts=0)
            .remote()
        )
        _counters.clear()
        _counters[key] = (name, actor)
    return _counters[key]


@contextlib.contextmanager
def follow_workers(
    stage: str | None, by: str = "jobs", initial: int = 0, poll_s: float = 1.0
) -> Iterator[str | None]:
    """While the body runs, poll the workers' counters onto `stage`'s line.

    Yields the counters actor's name for the workers (`WorkerProgress`), or None when
    nobody follows (no stage, a library caller, or the actor could not start): progress
    must never cost a job, so every failure here only loses the line's updates.
    """
    progress = console()
    if stage is None or not progress.remote_counters:
        yield None
        return
    import ray

    try:
        name, actor = start_counters()
        ray.get(actor.reset.remote(stage), timeout=60)  # a stage run twice starts at zero
    except Exception:
        log.debug("progress counters did not start", exc_info=True)
        _counters.clear()
        yield None
        return

    def poll_once() -> None:
        try:
            snap = ray.get(actor.snapshot.remote(stage), timeout=10)
        except Exception:
            log.debug("progress poll failed", exc_info=True)
            return
        apply_snapshot(progress, stage, snap, by, initial)

    stop = threading.Event()

    def run() -> None:
        while not stop.wait(poll_s):
            poll_once()

    thread = threading.Thread(target=run, daemon=True, name="rd-progress-poll")
    thread.start()
    try:
        yield name
    finally:
        stop.set()
        thread.join()
        poll_once()


class WorkerProgress:
    """Rank 0's side of the counters: fire-and-forget calls, at most one step update
    every `every_s` (and always the last step), so reporting costs a step nothing.
    With no actor name it does nothing."""

    def __init__(
        self,
        actor_name: str | None,
        stage: str | None,
        every_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.actor_name = actor_name if stage else None
        self.stage = stage
        self.every_s = every_s
        self.clock = clock
        self._actor: Any = None
        self._last = -math.inf

    def _handle(self) -> Any:
        if self._actor is None and self.actor_name:
            try:
                import ray

                self._actor = ray.get_actor(self.actor_name, namespace=COUNTERS_NAMESPACE)
            except Exception:
                log.debug("progress counters %s unreachable", self.actor_name, exc_info=True)
                self.actor_name = None  # do not look again every step
        return self._actor

    def step(self, job: str, step: int, steps: int) -> None:
        now = self.clock()
        if step < steps and now - self._last < self.every_s:
            return
        actor = self._handle()
        if actor is not None:
            self._last = now
            with contextlib.suppress(Exception):
                actor.step.remote(self.stage, job, step, steps)

    def finish(self, job: str) -> None:
        actor = self._handle()
        if actor is not None:
            with contextlib.suppress(Exception):
                actor.finish.remote(self.stage, job)
