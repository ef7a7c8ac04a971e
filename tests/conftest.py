"""Shared fixtures: one real local Ray cluster per test session, tiny models, data paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("RAYDISTILL_DATA_DIR", ROOT.parent / "shared" / "data"))

os.environ.setdefault("RAYDISTILL_CACHE", str(ROOT / ".cache" / "raydistill"))
os.environ.setdefault("RAYDISTILL_DATA_DIR", str(DATA))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_configure(config):
    config.addinivalue_line("markers", "ray: starts a local Ray cluster")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA / "sst2" / "validation.tsv").exists():
        pytest.skip(f"shared data not found at {DATA}")
    return DATA


def start_local_ray():
    """Connect to the test session's local Ray cluster, starting it if needed.

    One cluster serves every integration test (starting one costs ~10 s); tests that need
    their own cluster shape shut it down and the next user starts it again. The dashboard
    is on: Ray Train's controller and Tune's ASHA rely on its state API.
    """
    import ray

    if not ray.is_initialized():
        env = (
            "RAYDISTILL_CACHE",
            "RAYDISTILL_DATA_DIR",
            "TOKENIZERS_PARALLELISM",
            "HF_HUB_OFFLINE",
        )
        ray.init(
            num_cpus=4,
            object_store_memory=1_000_000_000,
            include_dashboard=True,
            dashboard_port=None,
            runtime_env={
                "env_vars": {**{k: os.environ[k] for k in env}, "TRANSFORMERS_VERBOSITY": "error"}
            },
        )
    return ray


@pytest.fixture(scope="module")
def ray_session():
    yield start_local_ray()


@pytest.fixture()
def no_session_ray(monkeypatch):
    """For tests that start their own cluster shape (`ray start`, cluster_utils)."""
    import ray

    # Ray 2.60 enables token auth for local clusters once a token exists (~/.ray); the
    # clients in this process must then send it too.
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    if ray.is_initialized():
        ray.shutdown()
    yield
    if ray.is_initialized():
        ray.shutdown()
