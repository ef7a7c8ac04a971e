"""Building a teacher pool (serving/teacher_pool.py) without starting it.

`make_pool` and its backends, the endpoint's URLs, the OpenAI-compatible pool's URL and
key, the Ray Serve LLM config a vLLM pool would deploy (CPU and GPU, tensor parallel),
and the host a pool binds to. Unit tests, without Ray: what a pool would deploy is
checked on the config it builds, so each backend's choices are tested in milliseconds;
serving them for real is test_teacher_pool_serve.py.
"""

from __future__ import annotations

import time

import pytest
from pool_endpoints import dead_endpoint as _dead_endpoint

from raydistill.config import PoolConfig
from raydistill.serving.teacher_pool import (
    BACKENDS,
    Endpoint,
    OpenAIPool,
    PoolStartError,
    VLLMPool,
    make_pool,
)

pytestmark = pytest.mark.timeout(900)


def test_make_pool_unknown_backend_lists_known_ones():
    with pytest.raises(ValueError) as e:
        make_pool(PoolConfig(backend="tgi"))
    msg = str(e.value)
    assert "tgi" in msg
    for name in ("vllm", "hf", "openai"):
        assert name in msg
    assert set(BACKENDS) == {"vllm", "hf", "openai"}


def test_make_pool_known_backends_construct_without_starting():
    for name in BACKENDS:
        pool = make_pool(PoolConfig(backend=name))
        assert hasattr(pool, "start") and hasattr(pool, "shutdown")


def test_endpoint_urls():
    ep = Endpoint("http://h:1/v1/", "m", {})
    assert ep.chat_url == "http://h:1/v1/chat/completions"
    assert ep.models_url == "http://h:1/v1/models"


def test_openai_pool_needs_url_and_reads_key(monkeypatch):
    with pytest.raises(PoolStartError, match="pool.url"):
        OpenAIPool(PoolConfig(backend="openai")).start()
    monkeypatch.setenv("RD_TEST_KEY", "sk-test")
    cfg = PoolConfig(backend="openai", url="http://127.0.0.1:9/v1/", api_key_env="RD_TEST_KEY")
    ep = OpenAIPool(cfg).endpoint()
    assert ep.headers == {"Authorization": "Bearer sk-test"}
    assert ep.base_url == "http://127.0.0.1:9/v1"
    monkeypatch.delenv("RD_TEST_KEY")
    assert OpenAIPool(cfg).endpoint().headers == {}


def test_openai_pool_unreachable_fails_fast_with_clear_message():
    dead = _dead_endpoint()
    cfg = PoolConfig(backend="openai", url=dead.base_url, startup_timeout_s=1.5)
    t0 = time.monotonic()
    with pytest.raises(PoolStartError) as e:
        make_pool(cfg).start()
    assert time.monotonic() - t0 < 15
    assert dead.base_url in str(e.value) and "did not answer" in str(e.value)


def test_vllm_llm_config_on_cpu_and_gpu():
    cpu = VLLMPool(PoolConfig(num_cpus=2, min_replicas=1, max_replicas=3)).llm_config_kwargs("/m")
    assert cpu["model_loading_config"] == {"model_id": "teacher", "model_source": "/m"}
    assert cpu["engine_kwargs"]["gpu_memory_utilization"] == 0.1
    assert cpu["engine_kwargs"]["max_model_len"] == 1024
    assert cpu["engine_kwargs"]["enforce_eager"] is True
    assert cpu["engine_kwargs"]["enable_chunked_prefill"] is False
    # A fixed KV cache on CPU, not a share of the node's RAM minus the engine's RSS.
    assert cpu["engine_kwargs"]["kv_cache_memory_bytes"] == 2**30
    assert cpu["deployment_config"]["ray_actor_options"] == {"num_cpus": 0}
    assert cpu["placement_group_config"]["bundles"] == [{"CPU": 2.0}]
    auto = cpu["deployment_config"]["autoscaling_config"]
    assert (auto["min_replicas"], auto["max_replicas"]) == (1, 3)
    # vLLM would keep a core out of its thread binding; the replica may use all it sees.
    assert cpu["runtime_env"] == {
        "env_vars": {
            "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
            "VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS": "1800",
        }
    }
    own = VLLMPool(PoolConfig(env_vars={"VLLM_CPU_NUM_OF_RESERVED_CPU": 1, "X": "y"}))
    assert own.llm_config_kwargs("/m")["runtime_env"]["env_vars"] == {
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "1",
        "VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS": "1800",
        "X": "y",
    }
    gpu = VLLMPool(
        PoolConfig(num_gpus=1, gpu_memory_utilization=0.9),
        engine_kwargs={"max_num_seqs": 8},
    ).llm_config_kwargs("/m")
    assert gpu["placement_group_config"]["bundles"] == [{"CPU": 1.0, "GPU": 1.0}]
    assert "enforce_eager" not in gpu["engine_kwargs"]
    assert "enable_chunked_prefill" not in gpu["engine_kwargs"]
    assert "kv_cache_memory_bytes" not in gpu["engine_kwargs"]
    assert "runtime_env" not in gpu
    compiled = VLLMPool(PoolConfig(), engine_kwargs={"enforce_eager": False})
    assert compiled.llm_config_kwargs("/m")["engine_kwargs"]["enforce_eager"] is False
    assert gpu["engine_kwargs"]["max_num_seqs"] == 8
    with pytest.raises(ValueError, match="min_replicas"):
        VLLMPool(PoolConfig(min_replicas=2, max_replicas=1)).llm_config_kwargs("/m")


def test_vllm_gpu_memory_default_is_per_device_and_tensor_parallel_bundles():
    one = VLLMPool(PoolConfig(num_gpus=1)).llm_config_kwargs("/m")
    assert one["engine_kwargs"]["gpu_memory_utilization"] == 0.85
    tp = VLLMPool(PoolConfig(num_gpus=1, num_cpus=4, tensor_parallel_size=2)).llm_config_kwargs(
        "/m"
    )
    assert tp["engine_kwargs"]["tensor_parallel_size"] == 2
    assert tp["placement_group_config"]["bundles"] == [{"CPU": 4.0, "GPU": 1.0}, {"GPU": 1.0}]
    with pytest.raises(ValueError, match="tensor_parallel_size"):
        VLLMPool(PoolConfig(tensor_parallel_size=2)).llm_config_kwargs("/m")
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        VLLMPool(PoolConfig(num_gpus=1, gpu_memory_utilization=1.5)).llm_config_kwargs("/m")


def test_bind_host_and_base_url_for_other_nodes():
    from raydistill.serving.teacher_pool import choose_bind_host, url_host

    # A laptop cluster this process started: loopback, nothing exposed.
    assert choose_bind_host(None, joined=False, node_hosts={"10.0.0.5"}) == "127.0.0.1"
    # Joined (ray job submit, KubeRay) or several machines: every interface, and the base
    # URL other nodes use carries the head's IP, never 127.0.0.1.
    assert choose_bind_host(None, joined=True, node_hosts={"10.0.0.5"}) == "0.0.0.0"
    assert choose_bind_host(None, joined=False, node_hosts={"10.0.0.5", "10.0.0.6"}) == "0.0.0.0"
    assert url_host("0.0.0.0", "10.0.0.5") == "10.0.0.5"
    assert choose_bind_host("10.1.2.3", joined=True, node_hosts=set()) == "10.1.2.3"
    assert url_host("10.1.2.3", "10.0.0.5") == "10.1.2.3"
