"""`methods.stages.generator`: the pool starts on the first uncached request, and any
start that was attempted — even one that failed half-way — is shut down after the stage.

Ray-free: the pool is a stand-in recording its calls (a real pool's start and shutdown
are covered by the Serve tests); the client, cache and deferred endpoint are the real ones.
"""

from __future__ import annotations

import time

import pytest

from raydistill.config import RunConfig
from raydistill.methods import stages
from raydistill.pipelines.llm_requests import Sampling

MSGS = [{"role": "user", "content": "Opposite of 'fine':"}]


class RecordingPool:
    """A pool whose start fails half-way (replicas up, the app not)."""

    def __init__(self):
        self.calls = []

    def start(self):
        self.calls.append("start")
        time.sleep(0.05)  # the half-way start's cost, which the stage still reports
        raise RuntimeError("replicas up, app failed")

    def shutdown(self):
        self.calls.append("shutdown")


@pytest.fixture
def pool(monkeypatch):
    made = []

    def make_pool(cfg, cache_dir=None):
        made.append(RecordingPool())
        return made[-1]

    monkeypatch.setattr("raydistill.serving.teacher_pool.make_pool", make_pool)
    return made


def test_a_stage_without_requests_neither_starts_nor_shuts_down_the_pool(tmp_path, pool):
    with stages.generator(RunConfig(cache_dir=str(tmp_path))) as (_client, timing):
        pass
    assert pool[0].calls == [] and not timing.attempted and not timing.started


def test_a_start_that_failed_half_way_is_still_shut_down(tmp_path, pool):
    cfg = RunConfig(cache_dir=str(tmp_path))
    with (
        pytest.raises(RuntimeError, match="app failed"),
        stages.generator(cfg) as (client, timing),
    ):
        client.chat([{"messages": MSGS}], Sampling(n=1, max_tokens=8))
    assert pool[0].calls == ["start", "shutdown"]
    assert timing.attempted and not timing.started
    # One measure of the start-up: the stage reports what the client left out of its call.
    assert timing.seconds >= 0.05 and client.stats.pool_start_s == timing.seconds
