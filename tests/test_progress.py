"""The driver's console: stage progress lines, the quiet log set-up, `--verbose`.

Fast and without a cluster: the reporter runs on a fake clock and a string stream, the
workers' counters as the plain class their actor wraps, logging on private loggers.
One slow end-to-end test runs `raydistill run` on the smoke recipe and reads its console.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from raydistill.progress import (
    Progress,
    StageCounters,
    WorkerProgress,
    apply_snapshot,
    format_duration,
    format_line,
    format_rate,
    set_console,
)

ROOT = Path(__file__).resolve().parents[1]


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def plain():
    """A non-TTY reporter on a fake clock, installed as the process's console."""
    clock, out = Clock(), io.StringIO()
    p = Progress(out, tty=False, every_s=10.0, clock=clock)
    prev = set_console(p)
    yield p, clock, out
    set_console(prev)


# ------------------------------------------------------------------ formatting


def test_line_shows_done_total_rate_and_eta():
    line = format_line("annotate", 50, 200, 10.0, "rows")
    assert line.split() == ["annotate", "50/200", "rows", "5.0", "rows/s", "ETA", "0:30"]


def test_slow_work_reads_as_seconds_per_item_and_long_etas_get_hours():
    line = format_line("train", 2, 24, 120.0, "students", note="kd-k8-s2 step 3/40")
    assert "2/24 students" in line and "60.0 s/student" in line
    assert "ETA 22:00" in line and line.endswith("kd-k8-s2 step 3/40")
    assert format_duration(3 * 3600 + 62) == "3:01:02"
    assert format_rate(0.5, "steps") == "2.0 s/step"


def test_rate_counts_only_this_runs_work_and_unknowns_say_so():
    # 20 of 24 students came from the ledger: 2 more in 60 s is 30 s each, 2 left → 1:00.
    assert "ETA 1:00" in format_line("train", 22, 24, 60.0, "students", initial=20)
    line = format_line("teacher", 0, None, 5.0, "steps")
    assert "?/s" in line and "ETA ?" in line
    assert "ETA 0:00" in format_line("report", 3, 3, 0.2, "files")


# ------------------------------------------------------------------ throttling


def test_non_tty_prints_at_open_every_10s_and_at_close(plain):
    p, clock, out = plain
    p.open("train", total=24, unit="students")
    for second in range(1, 26):
        clock.t = float(second)
        p.update("train", done=second // 2)
    p.close("train", "(node memory peak 1.0 GiB)")
    lines = out.getvalue().splitlines()
    assert lines[0] == "[raydistill] train …"
    assert len(lines) == 4, lines  # open, t=10, t=20, close: not one per update
    assert "5/24 students" in lines[1] and "10/24 students" in lines[2]
    assert "12/24 students  done in 25.0s  (node memory peak 1.0 GiB)" in lines[3]
    assert "\r" not in out.getvalue()


def test_tty_redraws_one_line_in_place():
    clock, out = Clock(), io.StringIO()
    p = Progress(out, tty=True, clock=clock)
    p.open("annotate", total=4, unit="rows")
    for _ in range(4):
        clock.t += 1
        p.update("annotate", advance=1)
    p.write("WARNING raydistill: a log line")
    p.close("annotate")
    text = out.getvalue()
    assert text.count("\n") == 2  # the log line, and the final line left behind
    assert "4/4 rows  done in 4.0s" in text and "\r" in text


def test_updates_go_to_the_open_stage_and_are_ignored_when_none_is(plain):
    p, clock, out = plain
    p.update(advance=5)  # library code reporting with nobody watching
    assert out.getvalue() == "" and p.current() is None
    p.open("generate")
    p.update(add_total=8, unit="requests")
    p.update(advance=3)
    clock.t = 11
    p.update(add_total=4, advance=1)
    assert "4/12 requests" in out.getvalue().splitlines()[-1]


# ------------------------------------------------------- workers → driver counters


def test_counters_count_each_student_once_and_show_the_one_in_flight(plain):
    p, clock, out = plain
    c = StageCounters()
    p.open("train", total=4, unit="students", initial=1)
    c.step("train", "kd-k8-s0", 3, 10)
    c.finish("train", "kd-k8-s0")
    c.finish("train", "kd-k8-s0")  # a restarted worker group reports it again
    c.step("train", "lwd-k8-s0", 4, 10)
    apply_snapshot(p, "train", c.snapshot("train"), "jobs", initial=1)
    clock.t = 10
    p.update("train")
    assert "2/4 students" in out.getvalue() and "lwd-k8-s0 step 4/10" in out.getvalue()


def test_a_finished_fit_completes_the_line_whatever_counters_were_lost(plain):
    p, clock, out = plain
    p.open("train", total=4, unit="students")
    p.update("train", done=3, note="lwd-k8-s0 step 9/10")  # the last finish() never came
    p.complete("train", 4)
    p.close("train")
    assert "4/4 students  done in" in out.getvalue().splitlines()[-1]
    p.open("teacher", unit="steps")
    p.update("teacher", done=480, total=500)
    p.complete("teacher")
    assert p.text("teacher").split()[1] == "500/500"
    p.complete("not-open")  # nothing to do


def test_teacher_line_counts_steps():
    p = Progress(io.StringIO(), tty=False, clock=Clock())
    c = StageCounters()
    apply_snapshot(p, "teacher", c.snapshot("teacher"), "steps")  # nothing reported yet
    c.step("teacher", "teacher", 120, 500)
    apply_snapshot(p, "teacher", c.snapshot("teacher"), "steps")
    assert "120/500 steps" in p.text("teacher")


def test_worker_sends_a_step_at_most_every_second_and_always_the_last():
    sent = []

    class Method:
        def __init__(self, name):
            self.name = name

        def remote(self, *args):
            sent.append((self.name, *args))

    class FakeActor:
        step, finish = Method("step"), Method("finish")

    clock = Clock()
    w = WorkerProgress("counters", "train", every_s=1.0, clock=clock)
    w._actor = FakeActor()
    for step, t in [(1, 0.0), (2, 0.4), (3, 0.9), (4, 1.1), (5, 1.5), (6, 1.6)]:
        clock.t = t
        w.step("kd-k8-s0", step, 6)
    w.finish("kd-k8-s0")
    assert [s[3] for s in sent if s[0] == "step"] == [1, 4, 6]
    assert sent[-1] == ("finish", "train", "kd-k8-s0")


def test_worker_without_counters_does_nothing():
    w = WorkerProgress(None, "train")
    w.step("job", 1, 2)
    w.finish("job")  # no actor, no Ray call, no error


# ---------------------------------------------------- quiet console and log file


@pytest.fixture
def clean_logging(plain):
    """Restore the root logger and this module's state after a test that sets them up."""
    from raydistill import console as con

    root = logging.getLogger()
    saved = (list(root.handlers), root.level, logging.getLogger("raydistill").level)
    yield plain
    con.close_log_file()
    con.set_verbose(None)
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    logging.getLogger("raydistill").setLevel(saved[2])


def _library_logger(name: str, stream: io.StringIO) -> logging.Logger:
    """A logger set up the way DeepSpeed's and Ray's are: own console handler, no
    propagation, INFO enabled."""
    lg = logging.getLogger(name)
    lg.handlers[:] = [logging.StreamHandler(stream)]
    lg.setLevel(logging.INFO)
    lg.propagate = False
    return lg


def test_library_info_goes_to_the_log_file_not_the_console(clean_logging, tmp_path):
    from raydistill.console import log_to_file, setup_console

    _, _, console_out = clean_logging
    lib_console = io.StringIO()
    lib = _library_logger("rdtest_deepspeed", lib_console)
    child = logging.getLogger("rdtest_transformers.modeling")  # propagates to the root
    setup_console(verbose=False)
    path = log_to_file(tmp_path / "logs" / "driver.log")
    lib.info("[Rank 0] DeepSpeed info: version=0.19")
    child.info("loading weights")
    lib.warning("gradient overflow")
    logging.getLogger("raydistill.methods.stages").info("4 students already trained")
    logging.getLogger("raydistill.methods.stages").debug("a debug detail")
    text = path.read_text()
    for msg in ("DeepSpeed info", "loading weights", "gradient overflow", "already trained"):
        assert msg in text
    assert "a debug detail" in text  # raydistill's own records at every level
    shown = console_out.getvalue() + lib_console.getvalue()
    assert "DeepSpeed info" not in shown and "loading weights" not in shown
    assert "[raydistill] 4 students already trained" in console_out.getvalue()
    assert "gradient overflow" in lib_console.getvalue()  # warnings still reach the console
    assert "a debug detail" not in shown


def test_the_console_and_log_file_survive_serve_llm_taking_the_root_logger(
    clean_logging, tmp_path, capsys
):
    """Importing Ray Serve LLM replaces the root's handlers with a JSON console handler
    (its real `_configure_stdlib_logging`, run here as the import runs it): the next
    `quiet_libraries` (the teacher pool calls it right after that import) puts ours back,
    so the pool's readiness polls print nothing and the log file keeps receiving."""
    from ray.llm._internal.serve.observability.logging.setup import _configure_stdlib_logging

    from raydistill.console import log_to_file, quiet_libraries, setup_console

    _, _, console_out = clean_logging
    setup_console(verbose=False)
    path = log_to_file(tmp_path / "driver.log")
    _configure_stdlib_logging()
    root = logging.getLogger()
    assert path.read_text() == "" and len(root.handlers) == 1  # ours are gone
    quiet_libraries()
    logging.getLogger("httpx").info('HTTP Request: GET /v1/models "HTTP/1.1 503"')
    logging.getLogger("raydistill.methods.stages").debug("stage generate …")
    logging.getLogger("raydistill.methods.stages").info("pool ready")
    err = capsys.readouterr().err
    assert "asctime" not in err and "HTTP Request" not in err  # no JSON console left
    assert "[raydistill] pool ready" in console_out.getvalue()
    assert "HTTP Request" not in console_out.getvalue()
    text = path.read_text()
    assert "stage generate" in text and "HTTP Request" in text and "pool ready" in text


def test_verbose_brings_library_info_back(clean_logging, tmp_path):
    from raydistill.console import log_to_file, setup_console

    _, _, console_out = clean_logging
    lib_console = io.StringIO()
    lib = _library_logger("rdtest_ray", lib_console)
    setup_console(verbose=True)
    log_to_file(tmp_path / "driver.log")
    lib.info("Started a local Ray instance")
    logging.getLogger("rdtest_datasets").info("map: 100%")
    assert "Started a local Ray instance" in lib_console.getvalue()
    assert "map: 100%" in console_out.getvalue()


def test_errors_reach_the_console_with_their_traceback(clean_logging):
    from raydistill.console import setup_console

    _, _, console_out = clean_logging
    setup_console(verbose=False)
    try:
        raise RuntimeError("Training failed due to worker errors:\n[Rank 0] ValueError: boom")
    except RuntimeError:
        logging.getLogger("raydistill.cli").error("raydistill run failed", exc_info=True)
    text = console_out.getvalue()
    assert "Traceback" in text and "[Rank 0] ValueError: boom" in text


# ------------------------------------------------------------------------ CLI


@pytest.mark.parametrize(
    "argv, verbose",
    [
        (["run", "r.yaml", "a=1"], False),
        (["run", "r.yaml", "a=1", "--verbose"], True),
        (["run", "--verbose", "r.yaml", "a=1"], True),
        (["-v", "train", "r.yaml"], True),
        (["generate", "r.yaml", "-v"], True),
        (["report", "runs/x", "--verbose"], True),
    ],
)
def test_verbose_flag_before_or_after_the_command(argv, verbose, monkeypatch):
    from raydistill.cluster.cli import build_parser, verbose_wanted

    monkeypatch.delenv("RAYDISTILL_VERBOSE", raising=False)
    args = build_parser().parse_args(argv)
    assert verbose_wanted(args) is verbose
    if "overrides" in args:
        assert "--verbose" not in args.overrides and "-v" not in args.overrides


def test_verbose_from_the_environment(monkeypatch):
    from raydistill.cluster.cli import build_parser, verbose_wanted

    monkeypatch.setenv("RAYDISTILL_VERBOSE", "1")
    assert verbose_wanted(build_parser().parse_args(["run", "r.yaml"]))


def test_local_workers_print_once():
    """The cause of doubled worker lines: Ray Train V2 patches `print` to log through the
    root logger and, because Ray replaces sys.stdout in its workers, print as well."""
    from raydistill.cluster.runtime import runtime_env

    assert runtime_env()["env_vars"]["RAY_TRAIN_ENABLE_PRINT_PATCH"] == "0"
    from ray.train.v2._internal.logging.patch_print import redirected_print

    stdout, logged = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    handler = logging.StreamHandler(logged)
    root.addHandler(handler)
    old_level, old_stdout = root.level, sys.stdout
    root.setLevel(logging.INFO)
    sys.stdout = stdout  # what a Ray worker process does at start
    try:
        redirected_print("[teacher] step 50/500")
    finally:
        sys.stdout = old_stdout
        root.removeHandler(handler)
        root.setLevel(old_level)
    assert "step 50/500" in stdout.getvalue() and "step 50/500" in logged.getvalue()


def test_training_progress_is_logged_not_printed(capsys, caplog):
    from raydistill.training.loop import _progress

    seen = []
    with caplog.at_level(logging.INFO, logger="raydistill.training.loop"):
        _progress("teacher", 0, 50, 500, 0.5, 0.0, lambda *a: seen.append(a))
        _progress("teacher", 1, 50, 500, 0.5, 0.0, lambda *a: seen.append(a))  # not rank 0
    assert capsys.readouterr().out == ""
    assert "[teacher] step 50/500" in caplog.text
    assert seen == [("teacher", 50, 500)]


# ------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_run_console_is_quiet_with_a_train_line_per_student(tmp_path, data_dir):
    """`raydistill run` on the smoke recipe (4 students) as a user sees it."""
    exe = ROOT / ".venv" / "bin" / "raydistill"
    out = tmp_path / "run"
    cmd = [str(exe), "run", "recipes/smoke-cod.yaml", f"out_dir={out}"]
    env = dict(os.environ, RAYDISTILL_DATA_DIR=str(data_dir))
    env.pop("RAYDISTILL_VERBOSE", None)
    env.pop("RAY_ADDRESS", None)
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    console = p.stdout + p.stderr
    assert p.returncode == 0, console[-5000:]
    train = [ln for ln in console.splitlines() if ln.startswith("[raydistill] train ")]
    assert train, console[-5000:]
    assert any("/4 students" in ln for ln in train), train
    assert any("4/4 students  done in" in ln for ln in train), train
    assert "(RayTrainWorker pid=" not in console
    assert "DeepSpeed info" not in console and "[INFO] [" not in console
    assert "[raydistill] annotate" in console and "[raydistill] report" in console
    logs = out / "logs"
    assert (logs / "driver.log").stat().st_size > 0
    assert "Ray session folder" in (logs / "README.md").read_text()
    # A rerun resumes everything; --verbose after the command is accepted.
    p2 = subprocess.run(
        [*cmd, "--verbose"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert p2.returncode == 0, (p2.stdout + p2.stderr)[-5000:]
    assert "4 students already trained, 0 to go" in p2.stdout + p2.stderr
