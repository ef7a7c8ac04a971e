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


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray cluster shared by the integration tests (starting one costs ~10 s)."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    ray.init(
        num_cpus=4,
        object_store_memory=1_000_000_000,
        include_dashboard=False,
        runtime_env={"env_vars": {k: os.environ[k] for k in ("RAYDISTILL_CACHE", "RAYDISTILL_DATA_DIR", "TOKENIZERS_PARALLELISM", "HF_HUB_OFFLINE")}},
    )
    yield ray
    ray.shutdown()
