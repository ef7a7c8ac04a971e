import itertools
import time

import psutil

from raydistill.timing import Stopwatch, node_memory_used_mb


def test_node_memory_reading_is_plausible():
    used = node_memory_used_mb()
    assert 0 < used < psutil.virtual_memory().total / 2**20


def test_stopwatch_keeps_the_peak_seen_while_a_stage_runs():
    # A scripted probe: the peak (900) happens mid-stage, between start and end readings.
    readings = itertools.chain([100, 400, 900, 300], itertools.repeat(200))
    sw = Stopwatch(sample_every_s=0.02, probe=lambda: next(readings))
    with sw.stage("gen"):
        time.sleep(0.2)
    assert sw.peak_mb["gen"] == 900
    assert sw.t["gen"] >= 0.2
    with sw.stage("gen"):  # a repeated stage adds time and keeps the larger peak
        time.sleep(0.05)
    assert sw.peak_mb["gen"] == 900
    assert sw.t["gen"] >= 0.25


def test_each_stage_is_a_progress_line_closed_with_its_time_and_peak():
    import io

    from raydistill.progress import Progress, set_console

    out = io.StringIO()
    prev = set_console(Progress(out, tty=False))
    try:
        sw = Stopwatch(sample_every_s=0.01, probe=lambda: 2048)
        with sw.stage("annotate"):
            pass
        try:
            with sw.stage("train"):
                raise RuntimeError("worker died")
        except RuntimeError:
            pass
    finally:
        set_console(prev)
    lines = out.getvalue().splitlines()
    assert lines[0] == "[raydistill] annotate …"
    assert "annotate" in lines[1] and "done in" in lines[1] and "peak 2.0 GiB" in lines[1]
    assert "failed: RuntimeError" in lines[3] and sw.t["train"] >= 0
